#!/usr/bin/env python3
"""Load the results JSON of a GPU bundle's run.py into the results database, with the GPU's environment record (same as ``dlcbench import-results``)."""

from dlcbench.cli.import_results import cli

if __name__ == "__main__":
    cli()
