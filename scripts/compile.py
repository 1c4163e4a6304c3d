#!/usr/bin/env python3
"""Compile a model with one backend, check its outputs against the reference and time it (same as ``dlcbench compile``)."""

from dlcbench.cli.compile import cli

if __name__ == "__main__":
    cli()
