#!/usr/bin/env python3
"""Tune a model's TVM tasks with MetaSchedule into the persistent tuning database (no check, no timing) (same as ``dlcbench tune``)."""

from dlcbench.cli.tune import cli

if __name__ == "__main__":
    cli()
