"""Bad values on the command line: exit 2 with one error line that names what is wrong and what is valid.

Also the installed entry points (``dlcbench``, ``dlcbench-compile``) and ``DLCBENCH_DEBUG=1``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dlcbench.errors import ExitCode
from dlcbench_broken_plugins import REGISTRATION
from dlcbench_test_support import ROOT, WORKDIR_ENV, assert_one_line_error, run_script

ORT_MLP = ["--backend", "onnxruntime", "--model", "mlp", "--preset", "tiny", "--batch", "2", "--threads", "1",
           "--warmup", "1", "--min-iters", "2", "--min-seconds", "0"]


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--param", "hidden=abc"], ["parameter 'hidden'", "must be an integer", "'abc'", "valid: classes, features, hidden (all int)"]),
        (["--param", "hidden=[1,2]"], ["parameter 'hidden'", "must be an integer", "[1, 2]", "valid: classes, features"]),
        (["--param", "hidden=1.7"], ["parameter 'hidden'", "must be an integer", "1.7", "(all int)"]),
        (["--param", "hidden=NaN"], ["parameter 'hidden'", "must be an integer", "nan"]),
        (["--param", "depth=2"], ["unknown parameter 'depth'", "valid: classes, features, hidden (all int)"]),
        (["--option", "inter_op_threads=abc"], ["option inter_op_threads", "must be an integer", "'abc'"]),
        (["--option", "inter_op_threads=2.5"], ["option inter_op_threads", "must be an integer", "2.5"]),
        (["--option", "opt_level=3"], ["option opt_level", "must be a string", "got 3"]),
        (["--option", "batch=4"], ["batch is not a backend option", "use --batch"]),
        (["--option", "precision=fp16"], ["precision is not a backend option", "use --precision"]),
        (["--option", "threads=1"], ["use --threads"]),
        (["--option", "target=cpu"], ["use --target"]),
        (["--tolerance", "nope:abs=1"], ["unknown output(s) 'nope'", "valid outputs: probs"]),
    ],
)
def test_bad_value_exits_two_with_one_line(args, fragments, tmp_path):
    proc = run_script("scripts/compile.py", *ORT_MLP, *args, "--out", str(tmp_path / "a"), timeout=300)
    assert_one_line_error(proc, ExitCode.BAD_INPUT, *fragments)
    assert not (tmp_path / "a").exists()


def test_good_values_of_the_same_kinds_still_pass(tmp_path):
    proc = run_script("scripts/compile.py", *ORT_MLP, "--param", "hidden=64", "--option", "inter_op_threads=2",
                      "--tolerance", "probs:abs=1e-3", "--out", str(tmp_path / "a"), timeout=300)
    assert proc.returncode == ExitCode.OK, proc.stderr[-3000:]
    assert "check     PASS" in proc.stdout


def _installed(name: str) -> str:
    """The console script ``name`` of this interpreter's environment (``pip install -e .`` puts it there)."""
    path = Path(sys.executable).parent / name
    found = str(path) if path.is_file() else shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed (pip install -e .)")
    return found


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), cwd=os.environ[WORKDIR_ENV], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ))


@pytest.mark.parametrize("command", [["dlcbench-compile"], ["dlcbench", "compile"]])
def test_entry_points_give_one_line_and_exit_two(command):
    proc = _run(_installed(command[0]), *command[1:], "--backend", "nope", "--model", "mlp")
    assert_one_line_error(proc, ExitCode.BAD_INPUT, "unknown backend 'nope'", "valid: tvm, onnxruntime")
    assert proc.stdout == ""


def test_entry_point_matches_its_script():
    script = run_script("scripts/compile.py", "--backend", "nope", "--model", "mlp")
    entry = _run(_installed("dlcbench-compile"), "--backend", "nope", "--model", "mlp")
    assert (entry.returncode, entry.stdout, entry.stderr) == (script.returncode, script.stdout, script.stderr)


def test_dlcbench_help_lists_the_commands():
    from dlcbench.cli import COMMANDS

    proc = _run(_installed("dlcbench"), "--help")
    assert proc.returncode == 0 and proc.stderr == ""
    listed = [line.split()[0] for line in proc.stdout.splitlines() if line.startswith("  ") and line.split()]
    assert set(COMMANDS) <= set(listed), proc.stdout
    bad = _run(_installed("dlcbench"), "nope")
    assert_one_line_error(bad, ExitCode.BAD_INPUT, "unknown command 'nope'", "compile")


@pytest.mark.parametrize("debug", ["", "1"])
def test_unexpected_error_exits_four_with_or_without_debug(debug, tmp_path):
    """An unclassified exception in a backend (a plugin's bug): exit 4; DLCBENCH_DEBUG=1 adds the traceback only."""
    env = {"DLCBENCH_BACKENDS": REGISTRATION, "DLCBENCH_DEBUG": debug}
    proc = run_script("scripts/compile.py", *ORT_MLP, "--backend", "runraises", "--out", str(tmp_path / "a"),
                      env=env, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == ExitCode.BACKEND_ERROR, proc.stderr[-3000:]
    assert len(errors) == 1 and "unexpected ZeroDivisionError" in errors[0], proc.stderr[-3000:]
    assert ("Traceback" in proc.stderr) == bool(debug), proc.stderr[-3000:]
    assert ("DLCBENCH_DEBUG=1 for details" in errors[0]) != bool(debug)


@pytest.mark.parametrize("debug", ["", "1"])
def test_run_cli_keeps_the_exit_code_under_debug(debug):
    """run_cli itself (what every script ends in), for an error in the command's own process."""
    code = ("from dlcbench.errors import BadInputError, run_cli\n"
            "def fail(): raise KeyError('k')\n"
            "def bad(): raise BadInputError('bad thing')\n"
            "import sys; run_cli(fail if sys.argv[1] == 'unexpected' else bad)\n")
    unexpected = run_script("-c", code, "unexpected", env={"DLCBENCH_DEBUG": debug})
    assert unexpected.returncode == ExitCode.BACKEND_ERROR, unexpected.stderr
    assert unexpected.stderr.strip().splitlines()[-1].startswith("error: unexpected KeyError: 'k'")
    assert ("Traceback" in unexpected.stderr) == bool(debug)
    known = run_script("-c", code, "known", env={"DLCBENCH_DEBUG": debug})
    assert known.returncode == ExitCode.BAD_INPUT, known.stderr
    assert known.stderr.strip().splitlines()[-1] == "error: bad thing"
    assert ("Traceback" in known.stderr) == bool(debug)
