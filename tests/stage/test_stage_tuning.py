"""The deferred tuning round through a stage, ``--target cpu``: candidates sampled and built here, timed by the
stage's ``run.py`` in another process (TVM's runtime alone), committed back by ``import-results --stage``, and a
next stage built with that database applies the records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dlcbench.stage.build import read_stage_index
from dlcbench_test_support import assert_one_line_error, run_script

pytestmark = pytest.mark.slow

TRIALS = 4


def _stage(out: Path, *extra: str) -> None:
    proc = run_script("scripts/stage.py", "-o", str(out), "--target", "cpu", "--models", "mlp:tiny", "--backends", "tvm",
                      "--batch", "1", "--threads", "1", *extra, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_a_tuning_round_is_timed_there_and_committed_here(tmp_path):
    database = tmp_path / "tuning-db"
    stage, results = tmp_path / "stage", tmp_path / "results.json"
    _stage(stage, "--tuning-trials", str(TRIALS), "--tuning-db", str(database))
    index = read_stage_index(stage)
    [job] = index["jobs"]
    assert job["tuning_round"] == f"tuning/{job['id']}" and job["tuning_candidates"] >= 2 * TRIALS
    assert any(e["path"].startswith(f"{job['tuning_round']}/candidates/") and e["path"].endswith(".so")
               for e in index["files"])
    proc = run_script(str(stage / "run.py"), "--out", str(results), "--min-seconds", "0.1", "--max-seconds", "1",
                      cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(results.read_text())
    measured = data["tuning"][job["id"]]
    assert measured["round_id"] == job["tuning_round_id"] and measured["device"] == "cpu"
    timed = [c for c in measured["candidates"].values() if "run_secs" in c]
    assert len(timed) >= job["tuning_candidates"]  # every candidate, and each task's default schedule
    assert not (database / "database_tuning_record.json").exists() or \
        (database / "database_tuning_record.json").read_text().strip() == ""  # nothing committed yet
    # back here: the rows, and the round committed into the database it was sampled from
    db = tmp_path / "r.sqlite"
    proc = run_script("scripts/import_results.py", str(results), "--db", str(db), "--stage", str(stage))
    assert proc.returncode == 0, proc.stderr
    assert f"tuning round of {job['id']}: {job['tuning_candidates']} record(s) committed, 0 failed" in proc.stdout
    records = [line for line in (database / "database_tuning_record.json").read_text().splitlines() if line.strip()]
    assert len(records) == job["tuning_candidates"]
    # a re-import commits nothing twice; without --stage it says how to commit
    proc = run_script("scripts/import_results.py", str(results), "--db", str(db), "--stage", str(stage))
    assert proc.returncode == 0 and "already committed" in proc.stdout, proc.stdout + proc.stderr
    assert len([ln for ln in (database / "database_tuning_record.json").read_text().splitlines() if ln.strip()]) == len(records)
    proc = run_script("scripts/import_results.py", str(results), "--db", str(db))
    assert proc.returncode == 0 and "give --stage DIR" in proc.stdout, proc.stdout
    assert "deferred cpu" in (database / "dlcbench-measured-on.json").read_text()
    # the matmul task: its best candidate beats its default (untuned) schedule, both timed in one process there
    from dlcbench.stage.runner import unpack_file

    unpack_file(stage, index, f"{job['tuning_round']}/round.json", tmp_path / "round.json")
    tasks = json.loads((tmp_path / "round.json").read_text())["tasks"]
    matmul = next(t for t in tasks if "matmul" in t["name"])  # heaviest first
    median = lambda cid: sorted(measured["candidates"][cid]["run_secs"])[1]  # noqa: E731
    best = min(median(c["id"]) for c in matmul["candidates"])
    assert best < median(matmul["baseline"]["id"]), (best, median(matmul["baseline"]["id"]))
    # a next stage applies the database: its TVM job is built from the committed records, and passes
    stage2, results2 = tmp_path / "stage2", tmp_path / "results2.json"
    _stage(stage2, "--backend-option", f"tvm:tuning_db={database}")
    [job2] = read_stage_index(stage2)["jobs"]
    tuning = job2["manifest"]["extra"]["tuning"]
    assert tuning["db"] == str(database) and tuning["new_trials"] == 0
    assert any(p.startswith("deferred cpu") for p in tuning["records_measured_on"]), tuning["records_measured_on"]
    applied = [t for t in tuning["tasks"] if "matmul" in t["name"]]
    assert applied and all(t["existing"] >= TRIALS and t["best_ms"] for t in applied), tuning["tasks"]
    proc = run_script(str(stage2 / "run.py"), "--out", str(results2), "--min-seconds", "0.1", "--max-seconds", "1",
                      cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert json.loads(results2.read_text())["results"][0]["row"]["status"] == "ok"
    # results imported with another stage's directory: one line, and nothing stored
    proc = run_script("scripts/import_results.py", str(results), "--db", str(tmp_path / "fresh.sqlite"), "--stage", str(stage2))
    assert_one_line_error(proc, 2, f"the results are of stage {index['stage_id']}")
    assert not (tmp_path / "fresh.sqlite").exists()


def test_tuning_round_refusals(tmp_path):
    proc = run_script("scripts/stage.py", "-o", str(tmp_path / "s"), "--target", "cpu", "--models", "mlp:tiny",
                      "--backends", "onnxruntime", "--tuning-trials", "2")
    assert_one_line_error(proc, 2, "a tuning round needs the tvm backend")
    proc = run_script("scripts/stage.py", "-o", str(tmp_path / "s"), "--target", "cpu", "--models", "mlp:tiny",
                      "--backends", "tvm", "--precision", "fp16", "--tuning-trials", "2")
    assert_one_line_error(proc, 2, "add fp32 to the precisions")
    proc = run_script("scripts/stage.py", "-o", str(tmp_path / "s"), "--target", "cpu", "--models", "mlp:tiny",
                      "--backends", "tvm", "--tuning-trials", "-1")
    assert_one_line_error(proc, 2, "tuning_trials must be a non-negative integer")
    assert not (tmp_path / "s").exists()


def test_a_cuda_round_builds_sm90_candidates_and_a_tuned_cuda_build_applies_its_database(tmp_path):
    """CUDA, compiled here without a GPU: the round's candidates hold sm_90 device code (their timing waits for a
    GPU machine); the CUDA build takes the round's database (nothing measured yet, so dlight schedules everything,
    and the manifest says so)."""
    from dlcbench.compilers.tvm.cuda import device_code_archs, find_nvcc
    from dlcbench.stage.runner import unpack_file

    if find_nvcc() is None:
        pytest.skip("nvcc (CUDA toolkit) not found; needed to build CUDA device code")
    database, stage = tmp_path / "cuda-db", tmp_path / "stage"
    proc = run_script("scripts/stage.py", "-o", str(stage), "--target", "cuda", "--arch", "sm_90", "--models", "mlp:tiny",
                      "--backends", "tvm", "--batch", "1", "--threads", "1", "--tuning-trials", "2",
                      "--tuning-max-tasks", "1", "--tuning-db", str(database), timeout=900)
    if proc.returncode == 3:
        pytest.skip(f"CUDA build unavailable here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    index = read_stage_index(stage)
    [job] = index["jobs"]
    unpack_file(stage, index, f"{job['tuning_round']}/round.json", tmp_path / "round.json")
    round_doc = json.loads((tmp_path / "round.json").read_text())
    assert round_doc["device"] == "cuda" and round_doc["target"]["arch"] == "sm_90"
    [task] = round_doc["tasks"]
    assert len(task["candidates"]) == 2 and all(c["library"] and not c["build_error"] for c in task["candidates"])
    for cand in task["candidates"]:
        unpack_file(stage, index, f"{job['tuning_round']}/{cand['library']}", tmp_path / "cand.so")
        assert device_code_archs(tmp_path / "cand.so") == ["sm_90"]
    proc = run_script("scripts/compile.py", "--backend", "tvm", "--target", "cuda", "--model", "mlp", "--preset", "tiny",
                      "--compile-only", "--tuning-db", str(database), "--out", str(tmp_path / "tuned"), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((tmp_path / "tuned" / "manifest.json").read_text())
    assert manifest["extra"]["tuning"]["db"] == str(database) and manifest["extra"]["tuning"]["tuned_functions"] == 0
    assert manifest["extra"]["device_code_archs"] == ["sm_90"]
    proc = run_script("scripts/compile.py", "--backend", "tvm", "--target", "cuda", "--model", "mlp", "--preset", "tiny",
                      "--compile-only", "--tune-trials", "8", "--out", str(tmp_path / "x"))
    assert_one_line_error(proc, 2, "MetaSchedule cannot measure cuda candidates on this machine", "--tuning-trials")
