"""``python -m dlcbench COMMAND ...`` (same as the ``dlcbench`` command)."""

from dlcbench.cli import cli

if __name__ == "__main__":
    cli()
