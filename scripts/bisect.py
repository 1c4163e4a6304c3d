#!/usr/bin/env python3
"""Find the first ONNX node whose output a backend computes beyond tolerance from ONNX Runtime (same as ``dlcbench bisect``)."""

from dlcbench.cli.bisect import cli

if __name__ == "__main__":
    cli()
