#!/usr/bin/env python3
"""Write a Markdown report with PNG plots for an experiment, or export its rows as CSV/JSON/Markdown (same as ``dlcbench report``)."""

from dlcbench.cli.report import cli

if __name__ == "__main__":
    cli()
