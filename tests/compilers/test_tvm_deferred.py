"""A deferred MetaSchedule round with real TVM on the cpu target: sampled and built here, measured in another
Python process that cannot import ``tvm`` (as on a stage's GPU machine), committed into the database here."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dlcbench.errors import BadInputError

pytest.importorskip("tvm")

# The "remote" side: tvm is made unimportable before anything is imported; the runtime directory comes in argv.
MEASURE = textwrap.dedent("""
    import json, sys
    sys.modules["tvm"] = None
    from pathlib import Path
    from dlcbench.compilers.tvm.deferred import measure_round
    from dlcbench.compilers.tvm.runtime_only import Runtime

    out = measure_round(Path(sys.argv[1]), Runtime(Path(sys.argv[2]), threads=1), repeat=3, number=1,
                        min_repeat_ms=10)
    loaded = sorted(m for m in sys.modules if m.startswith("tvm."))
    print(json.dumps({"tvm_blocked": sys.modules.get("tvm", 0) is None, "tvm_loaded": loaded,
                      "result": out}))
""")

# A library whose loading kills the process: the worker that loads it dies by SIGABRT.
ABORTING_LIBRARY = "#include <stdlib.h>\n__attribute__((constructor)) static void boom(void) { abort(); }\n"


@pytest.fixture(scope="module")
def mlp():
    from dlcbench.models.export import ExportConfig, export_model

    return export_model(ExportConfig(model="mlp", preset="tiny", batch=1, static=True, fold=True))


def _measure_elsewhere(round_dir: Path) -> dict:
    from dlcbench.stage.files import tvm_lib_dir

    proc = subprocess.run([sys.executable, "-c", MEASURE, str(round_dir), str(tvm_lib_dir())],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["tvm_blocked"] and report["tvm_loaded"] == [], report["tvm_loaded"]
    return report["result"]


def _break(round_dir: Path, library: str, tmp_path: Path, abort: bool) -> None:
    target = round_dir / library
    if abort:
        source = tmp_path / "boom.c"
        source.write_text(ABORTING_LIBRARY)
        target.unlink()
        subprocess.run(["cc", "-shared", "-fPIC", "-o", str(target), str(source)], check=True)
    else:
        target.write_bytes(b"not a shared library")


@pytest.mark.slow
def test_round_is_built_here_measured_without_tvm_and_committed(mlp, tmp_path):
    from dlcbench.compilers.tvm import tuning
    from dlcbench.compilers.tvm.adapter import cpu_target
    from dlcbench.compilers.tvm.deferred import (MEASUREMENTS_FILE, ROUND_FORMAT, commit_round, export_round,
                                                 read_round)

    target = cpu_target(1)
    db, round_dir = tmp_path / "db", tmp_path / "round1"
    doc = export_round(mlp, target, db, trials_per_task=4, out_dir=round_dir, seed=1)

    # round.json: every tunable task of the MLP, each with its workload, 4 built candidates and its default.
    assert read_round(round_dir) == doc and doc["format"] == ROUND_FORMAT and doc["device"] == "cpu"
    tasks = doc["tasks"]
    assert len(tasks) >= 2 and all(t["error"] is None for t in tasks)
    for task in tasks:
        assert task["workload"]["shash"].startswith("0x") and task["workload"]["mod"]
        assert len(task["candidates"]) == 4 and task["baseline"]["library"]
        for cand in task["candidates"]:
            assert (round_dir / cand["library"]).is_file() and cand["entry"] == "main"
            assert cand["trace"] and cand["args_info"][0][0] == "TENSOR"
    heavy = max(tasks, key=lambda t: t["flops"])
    assert heavy["name"].startswith("fused_matmul")

    # Two candidates of a light task broken on purpose: one kills its worker process, one does not load.
    light = min(tasks, key=lambda t: t["flops"])
    killer, unloadable = light["candidates"][0], light["candidates"][1]
    _break(round_dir, killer["library"], tmp_path, abort=True)
    _break(round_dir, unloadable["library"], tmp_path, abort=False)

    meas = _measure_elsewhere(round_dir)
    assert json.loads((round_dir / MEASUREMENTS_FILE).read_text()) == meas
    results = meas["candidates"]
    assert "worker died (signal 6)" in results[killer["id"]]["error"]
    assert "error" in results[unloadable["id"]]
    broken = {killer["id"], unloadable["id"]}
    every = [c["id"] for t in tasks for c in [t["baseline"], *t["candidates"]]]
    assert all("run_secs" in results[i] and len(results[i]["run_secs"]) == 3 for i in every if i not in broken)

    # The matmul, default schedule against the best candidate, both timed in the same measuring process:
    # MetaSchedule's schedules of its 1x784 @ 784x64 matmul + bias + ReLU ran 4-15x faster than the naive
    # loop nest here (the best of 4 about 15x); asserted: more than 2x.
    default = min(results[heavy["baseline"]["id"]]["run_secs"])
    best = min(min(results[c["id"]]["run_secs"]) for c in heavy["candidates"])
    assert best < default / 2, (best, default)

    summary = commit_round(round_dir, meas, db)
    n_candidates = sum(len(t["candidates"]) for t in tasks)
    assert summary["committed"] == n_candidates - 2 and summary["failed"] == 2 and summary["skipped"] == 0
    row = next(r for r in summary["tasks"] if r["name"] == heavy["name"])
    assert row["best_secs"] < row["default_secs"]
    lines = (db / "database_tuning_record.json").read_text().splitlines()
    assert len(lines) == n_candidates  # failures too, with MetaSchedule's 1e10 s stub
    assert json.loads((db / tuning.MEASURED_ON_FILE).read_text())[0].startswith("deferred cpu ")

    # The tuned compile's view: the same tasks, extracted again, find their best record in the database.
    import tvm
    from tvm.s_tir.meta_schedule.relax_integration import extract_tasks

    from dlcbench.compilers.tvm.deferred import _model_module

    tvm_target = tvm.target.Target(target)
    mod = tuning.prepare_module(_model_module(mlp, None, True, True), tvm_target)
    database = tuning.open_database(db, target, create=False)
    found = {t.task_name: tuning._best_seconds(database, t) for t in extract_tasks(mod, tvm_target)}
    assert found[heavy["name"]] == pytest.approx(row["best_secs"], rel=1e-6)
    applied = tuning.apply_database(mod, tvm_target, database)
    assert any(f.attrs and f.attrs.get("tirx.is_scheduled") and gv.name_hint.startswith(heavy["name"])
               for gv, f in applied.functions.items())

    # A second round starts its cost model from the first round's records of the task.
    again = export_round(mlp, target, db, trials_per_task=2, out_dir=tmp_path / "round2", max_tasks=1, seed=2,
                         population=32, generations=2)
    assert (doc["population"], doc["generations"], again["population"], again["generations"]) == (128, 1, 32, 2)
    assert [t["name"] for t in again["tasks"]] == [heavy["name"]]
    assert again["tasks"][0]["warm_start_records"] == 4 and len(again["tasks"][0]["candidates"]) == 2
    with pytest.raises(BadInputError, match="do not belong to round"):
        commit_round(tmp_path / "round2", meas, db)


def test_round_directory_must_be_fresh(tmp_path):
    from dlcbench.compilers.tvm.deferred import export_round

    (tmp_path / "round").mkdir()
    (tmp_path / "round" / "old.txt").write_text("x")
    with pytest.raises(BadInputError, match="not empty"):
        export_round(None, {"kind": "llvm"}, tmp_path / "db", 4, tmp_path / "round")
    with pytest.raises(BadInputError, match="positive"):
        export_round(None, {"kind": "llvm"}, tmp_path / "db", 0, tmp_path / "other")


def test_measure_refuses_what_is_not_a_round(tmp_path):
    from dlcbench.compilers.tvm.deferred import measure_round

    with pytest.raises(BadInputError, match="no round.json"):
        measure_round(tmp_path, runtime=None)
    (tmp_path / "round.json").write_text(json.dumps({"format": "something/2"}))
    with pytest.raises(BadInputError, match="not a dlcbench-tuning-round/1"):
        measure_round(tmp_path, runtime=None)
