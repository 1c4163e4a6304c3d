#!/usr/bin/env python3
"""Run a models x backends x batches comparison; resumable; results go to SQLite (same as ``dlcbench compare``)."""

from dlcbench.cli.compare import cli

if __name__ == "__main__":
    cli()
