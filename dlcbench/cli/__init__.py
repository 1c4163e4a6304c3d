"""The ``dlcbench`` command: one subcommand per tool, each also a script under ``scripts/``.

Every subcommand module has ``main(argv) -> int`` (argparse, then one library call) and ``cli()``, which runs
``main`` with dlcbench's one-line errors and documented exit codes (:func:`dlcbench.errors.run_cli`).
"""

from __future__ import annotations

import importlib
import sys

from dlcbench.errors import BadInputError, ExitCode, run_cli

#: subcommand -> (module under dlcbench.cli, one-line description)
COMMANDS = {
    "compile": ("compile", "export, compile, check and time one model on one backend"),
    "bisect": ("bisect", "name the first ONNX node whose output a backend computes differently from ONNX Runtime"),
    "compare": ("compare", "run a models x backends x batches experiment into the results database"),
    "report": ("report", "Markdown report, plots and exports of an experiment"),
    "tune": ("tune", "tune a model with TVM MetaSchedule"),
    "coverage": ("coverage", "ONNX operator coverage of every backend"),
    "stage": ("stage", "build a stage: jobs to check and time on another machine (a GPU machine) with dlcbench's code"),
    "import-results": ("import_results", "load a stage's results JSON into the results database"),
    "models": ("models", "list the zoo or export a model to ONNX"),
    "rpc": ("rpc", "start, stop or inspect a TVM RPC tracker and servers (a device farm for tuning and runs)"),
}


def usage() -> str:
    """The top-level help text."""
    lines = ["usage: dlcbench COMMAND [options]   (dlcbench COMMAND --help for each)", "", "commands:"]
    lines += [f"  {name:<15} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines) + "\n\n" + ExitCode.help_text()


def main(argv: list[str] | None = None) -> int:
    """Dispatches ``argv[0]`` to its subcommand's ``main``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return ExitCode.OK
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        raise BadInputError(f"unknown command {name!r}; valid: {', '.join(COMMANDS)}")
    module = importlib.import_module(f"dlcbench.cli.{COMMANDS[name][0]}")
    return module.main(rest)


def cli() -> None:
    """Console entry point of ``dlcbench``."""
    run_cli(main)
