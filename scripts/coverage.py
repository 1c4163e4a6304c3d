#!/usr/bin/env python3
"""Run the ONNX backend node tests through every adapter that takes ONNX: an operator x backend matrix (same as ``dlcbench coverage``)."""

from dlcbench.cli.coverage import cli

if __name__ == "__main__":
    cli()
