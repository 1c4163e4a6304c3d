"""``python -m dlcbench.models list|export`` (same as ``dlcbench models``)."""

from dlcbench.cli.models import cli

if __name__ == "__main__":
    cli()
