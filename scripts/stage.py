#!/usr/bin/env python3
"""Build a stage of jobs to check and time on another machine (same as ``dlcbench stage``)."""

from dlcbench.cli.stage import cli

if __name__ == "__main__":
    cli()
