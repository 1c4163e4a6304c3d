#!/usr/bin/env python3
"""Start, stop or inspect a TVM RPC device farm (same as ``dlcbench rpc``)."""

from dlcbench.cli.rpc import cli

if __name__ == "__main__":
    cli()
