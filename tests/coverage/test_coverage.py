"""ONNX operator coverage: real node tests through real adapters, each in a worker process with a time limit."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from dlcbench.errors import BadInputError
from dlcbench.coverage import VERSION_REFUSAL, CoverageConfig, compare_outputs, discover, run_coverage, select_tests
from dlcbench.results.store import SCHEMA_VERSION, ResultsStore
from dlcbench_test_support import run_script
from dlcbench_faulty_adapters import REGISTRATION

FAKE_ENV = {"cpu": {"model": "test"}, "cores": 2}


@pytest.fixture(scope="module")
def node_tests():
    return discover()


def test_node_tests_are_generated_from_the_onnx_package(node_tests):
    names = {t.name: t for t in node_tests}
    assert len(node_tests) > 1000 and not any(t.expanded for t in node_tests)
    assert names["test_relu"].op == "Relu" and names["test_relu"].opset and names["test_celu"].op == "Celu"
    assert names["test_ai_onnx_ml_binarizer"].qualified_op == "ai.onnx.ml.Binarizer"
    subset = select_tests(node_tests, subset=12)
    assert len(subset) == 12 and len({t.op for t in subset}) == 12  # spread over operators, deterministic
    assert subset == select_tests(node_tests, subset=12)
    assert {t.name for t in select_tests(node_tests, ops=["celu"])} == {"test_celu", "test_celu_bfloat16", "test_celu_float16"}
    with pytest.raises(BadInputError, match="no node tests for operator"):
        select_tests(node_tests, ops=["NoSuchOp"])


def test_outputs_are_compared_like_onnx_runner():
    ref = {"y": np.array([1.0, np.nan, 3.0], dtype=np.float32)}
    assert compare_outputs({"y": np.array([1.0005, np.nan, 3.0], dtype=np.float32)}, ref)[0]
    passed, message, err = compare_outputs({"y": np.array([1.1, np.nan, 3.0], dtype=np.float32)}, ref)
    assert not passed and "1 of 3 values off" in message and err == pytest.approx(0.1, rel=1e-3)
    assert "dtype float64" in compare_outputs({"y": ref["y"].astype(np.float64)}, ref)[1]
    assert "shape [1, 3]" in compare_outputs({"y": ref["y"][None]}, ref)[1]
    assert "no output 'y'" in compare_outputs({}, ref)[1]
    assert compare_outputs({"s": np.array(["a", "b"], dtype=object)}, {"s": np.array([b"a", b"b"], dtype=object)})[0]


def test_coverage_script_gives_expected_statuses(tmp_path):
    db, md = tmp_path / "r.sqlite", tmp_path / "coverage.md"
    proc = run_script("scripts/coverage.py", "--ops", "Celu,Relu,Swish", "--backends", "onnxruntime,tvm,openvino,torch",
                      "--db", str(db), "--markdown", str(md), "--run", "ci", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {(r[0], r[1]): (r[2], r[3] or "") for r in sqlite3.connect(db).execute(
        "SELECT test, backend, status, message FROM coverage WHERE run='ci'")}
    # TVM 0.27's Relax importer has no Celu and no Swish converter; Relu works everywhere.
    assert rows[("test_celu", "tvm")][0] == "unsupported" and "Celu" in rows[("test_celu", "tvm")][1]
    assert rows[("test_swish", "tvm")][0] == "unsupported" and "Swish" in rows[("test_swish", "tvm")][1]
    assert all(rows[("test_relu", b)][0] == "pass" for b in ("onnxruntime", "tvm", "openvino", "torch"))
    assert rows[("test_swish", "onnxruntime")][0] == "pass" and rows[("test_swish", "openvino")][0] == "pass"
    # onnx 1.23 writes Celu's tests with opset 28 / IR 14, which ONNX Runtime 1.31 refuses as a model version.
    assert rows[("test_celu", "onnxruntime")] [0] == "unsupported"
    assert rows[("test_celu", "onnxruntime")][1].startswith(VERSION_REFUSAL)
    assert rows[("test_celu", "torch")][0] == "unsupported" and "onnx2torch" in rows[("test_celu", "torch")][1]
    text = md.read_text()
    assert "| Relu | 14 | pass 1/1 | pass 1/1 | pass 1/1 | pass 1/1 |" in text
    assert "| Celu | 28 | unsupported† 0/3 | unsupported 0/3 |" in text
    assert "| Swish | 24 | pass 1/1 | unsupported 0/1 | pass 1/1 |" in text
    assert "ONNX Backend Scoreboard" in text
    assert "tvm          ops: 1 all tests pass, 0 some, 2 none (of 3)" in proc.stdout


def test_crash_timeout_and_wrong_result_do_not_stop_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("DLCBENCH_BACKENDS", REGISTRATION)
    config = CoverageConfig(run="faulty", backends=["abort", "hang", "wrong", "onnxruntime"],
                            tests=["test_abs", "test_relu"], db=tmp_path / "r.sqlite", timeout_s=8)
    result = run_coverage(config, progress=lambda _: None, environment=FAKE_ENV)
    tests = result["summary"]
    assert tests["abort"]["tests"]["crash"] == 2  # the worker restarted after the first crash
    assert tests["hang"]["tests"]["timeout"] == 2
    assert tests["wrong"]["tests"]["wrong_result"] == 2 and tests["onnxruntime"]["tests"]["pass"] == 2
    with ResultsStore(config.db) as store:
        rows = {(r["test"], r["backend"]): r for r in store.coverage("faulty")}
        assert "SIGABRT" in rows[("test_abs", "abort")]["message"]
        assert rows[("test_relu", "wrong")]["max_abs_err"] == pytest.approx(1.0)
        assert store.coverage_done("faulty", "onnxruntime") == {"test_abs", "test_relu"}
    # A rerun resumes: everything is recorded, so no worker starts and nothing changes.
    again = run_coverage(config, progress=lambda _: None, environment=FAKE_ENV)
    assert again["summary"] == result["summary"]


def test_coverage_table_is_additive_to_schema_1(tmp_path):
    path = tmp_path / "old.sqlite"
    with ResultsStore(path) as store:
        store._db.execute("DROP TABLE coverage")  # a database written before the coverage table existed
    with ResultsStore(path) as store:
        store.add_coverage("r", {"test": "test_relu", "op": "Relu", "domain": "", "opset": 14, "backend": "tvm",
                                 "status": "pass", "expanded": False})
        assert store.coverage("r")[0]["status"] == "pass" and store.coverage_runs() == ["r"]
        assert store._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION) == "2"
