#!/usr/bin/env python3
"""Load the results JSON of a stage's run.py into the results database, with that machine's environment record (same as ``dlcbench import-results``)."""

from dlcbench.cli.import_results import cli

if __name__ == "__main__":
    cli()
