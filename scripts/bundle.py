#!/usr/bin/env python3
"""Build a self-contained bundle of TVM artifacts to run, check and time on a machine that has no TVM (same as ``dlcbench bundle``)."""

from dlcbench.cli.bundle import cli

if __name__ == "__main__":
    cli()
