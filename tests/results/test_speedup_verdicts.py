"""Speedup intervals and verdicts in reports, from stored latency samples (a real SQLite store, real report files)."""

from __future__ import annotations

import numpy as np
import pytest

from dlcbench.measure.timing import NO_DIFFERENCE, statistics
from dlcbench.measure.trackers import latency_metric
from dlcbench.results.report import speedup_comparisons, speedups, write_report
from dlcbench.results.store import ResultsStore


def _row(backend: str, samples_s, batch: int = 1, threads: int = 1, target: str = "cpu") -> dict:
    metric = latency_metric("latency", list(samples_s), statistics(samples_s, batch), clock="host")
    return {"model": "mlp", "backend": backend, "target": target, "precision": "fp32", "batch": batch,
            "threads": threads, "status": "ok", "metrics": [metric.to_dict()]}


@pytest.fixture
def db(tmp_path):
    """Four backends against onnxruntime (1 ms): one clearly faster, one clearly slower, one with the very same
    samples in another order, and one 3 % faster on paper from too few samples to tell; and a thread sweep."""
    rng = np.random.default_rng(0)
    path = tmp_path / "r.sqlite"
    base = rng.normal(1e-3, 2e-5, 3000)
    rows = [_row("onnxruntime", base),
            _row("tvm", rng.normal(0.8e-3, 2e-5, 3000)),
            _row("tensorflow", rng.normal(1.3e-3, 2e-5, 3000)),
            _row("xla", rng.permutation(base)),
            _row("torch", rng.normal(0.97e-3, 1e-4, 5)),
            _row("onnxruntime", rng.normal(0.6e-3, 1e-5, 3000), threads=2),
            _row("tvm", rng.normal(0.4e-3, 1e-5, 3000), threads=2)]
    with ResultsStore(path) as store:
        store.ensure_experiment("e", {})
        for i, row in enumerate(rows):
            store.add_result("e", f"k{i}", row)
    return path


def test_verdicts_come_from_the_interval_not_the_point_estimate(db):
    with ResultsStore(db, readonly=True) as store:
        rows = store.results("e")
    found = {(c["backend"], c["threads"]): c for c in speedup_comparisons(rows, "onnxruntime")}
    assert set(found) == {("tvm", 1), ("tensorflow", 1), ("xla", 1), ("torch", 1), ("tvm", 2)}  # same threads only
    assert found[("tvm", 1)]["verdict"] == "faster" and found[("tvm", 1)]["speedup"] == pytest.approx(1.25, rel=0.01)
    assert found[("tvm", 2)]["verdict"] == "faster" and found[("tvm", 2)]["speedup"] == pytest.approx(1.5, rel=0.01)
    assert found[("tensorflow", 1)]["verdict"] == "slower" and found[("tensorflow", 1)]["ci"][1] < 1
    assert found[("xla", 1)]["verdict"] == NO_DIFFERENCE
    lo, hi = found[("xla", 1)]["ci"]
    assert lo < 1 < hi and hi - lo < 0.01
    torch = found[("torch", 1)]
    assert torch["verdict"] == NO_DIFFERENCE and torch["ci"][1] - torch["ci"][0] > 0.05
    models, backends, grid = speedups(rows, "onnxruntime")  # the heatmap's point: batch 1, one thread
    assert grid[0, backends.index("tvm")] == pytest.approx(1.25, rel=0.01)
    assert grid[0, backends.index("onnxruntime")] == 1.0


@pytest.mark.slow
def test_report_lists_every_speedup_with_its_interval_and_verdict(db, tmp_path):
    text = write_report(db, "e", tmp_path / "report").read_text()
    table = text[text.index("## Speedups relative to onnxruntime"):text.index("## Plots")]
    cells = [line.strip("| ").split(" | ") for line in table.splitlines() if line.startswith("| mlp |")]
    verdicts = {(threads, backend): (speedup, verdict) for _, _, threads, backend, speedup, _, verdict, _ in cells}
    assert {cell[-1] for cell in cells} == {"pooled runs"}  # timed without --rounds
    assert verdicts[("1", "tvm")] == ("1.249x", "faster") and verdicts[("2", "tvm")] == ("1.500x", "faster")
    assert verdicts[("1", "tensorflow")][1] == "slower" and verdicts[("1", "xla")] == ("1.000x", NO_DIFFERENCE)
    assert verdicts[("1", "torch")][1] == NO_DIFFERENCE and len(verdicts) == 5
    assert "1 unstable timing(s)" in text  # torch's 5 noisy samples; spread and cv columns in percent
    assert "| threads |" in text and "latency_spread_pct | latency_cv_pct" in text
    assert (tmp_path / "report" / "scaling.png").stat().st_size > 1000


def _two_machine_report(tmp_path, machines, tvm_over_ort: float, seed: int):
    """A report of ORT and TVM rows from each ``(environment, scale)`` of ``machines``, as an experiment run on a Ray
    cluster stores them: each row with its node's environment record. Returns the report's text, its speedup
    table and that table's rows, split into cells."""
    rng = np.random.default_rng(seed)
    path = tmp_path / "r.sqlite"
    with ResultsStore(path) as store:
        store.ensure_experiment("e", {})
        for number, (environment, scale) in enumerate(machines):
            env = store.add_environment(environment)
            store.add_result("e", f"ort-{number}", _row("onnxruntime", rng.normal(1e-3 * scale, 1e-5, 500)), env)
            store.add_result("e", f"tvm-{number}", _row("tvm", rng.normal(1e-3 * tvm_over_ort * scale, 1e-5, 500)),
                             env)
    text = write_report(path, "e", tmp_path / "report").read_text()
    table = text[text.index("## Speedups relative to onnxruntime"):text.index("## Plots")]
    return text, table, [line.strip("| ").split(" | ") for line in table.splitlines() if line.startswith("| mlp |")]


@pytest.mark.slow
def test_cpu_rows_from_two_machines_are_never_compared(tmp_path):
    machines = [({"hostname": host, "cpu": {"model": "test"}, "cores": 2}, scale)
                for host, scale in (("node-a", 1.0), ("node-b", 2.0))]
    text, table, cells = _two_machine_report(tmp_path, machines, 0.5, seed=1)
    assert "| machine |" in table and len(cells) == 2  # one per machine: never node-a's tvm against node-b's ort
    assert sorted(c[3].split(" ")[0] for c in cells) == ["node-a", "node-b"]
    assert all(float(c[5].rstrip("x")) == pytest.approx(2.0, rel=0.03) for c in cells)  # not 1x or 4x: same machine
    # Each machine has its own plots, named in the report; none mixes the two.
    out = tmp_path / "report"
    for number, host in ((1, "node-a"), (2, "node-b")):
        assert any(line.startswith("### ") and line.endswith(f", on {host} (test)") for line in text.splitlines())
        for plot in ("latency", "speedup", "scaling", "roofline"):
            assert (out / f"{plot}_m{number}.png").stat().st_size > 1000
            assert f"]({plot}_m{number}.png)" in text
    assert not (out / "latency.png").exists() and "each has its own plots" in text


@pytest.mark.slow
def test_two_cpu_generations_under_one_name_are_two_machines(tmp_path):
    """Two VMs both called 'vm' with an 'AMD EPYC', one of them with AVX-512: told apart by family and model."""
    machines = [({"hostname": "vm", "cpu": {"model": "AMD EPYC", "family": family, "model_number": 1}, "cores": 2},
                 scale) for family, scale in ((25, 1.0), (26, 0.5))]
    _, _, cells = _two_machine_report(tmp_path, machines, 2.0, seed=2)
    assert sorted(c[3] for c in cells) == ["vm (AMD EPYC 25/1)", "vm (AMD EPYC 26/1)"]
    assert all(float(c[5].rstrip("x")) == pytest.approx(0.5, rel=0.03) for c in cells)  # never 0.25x or 1x


def _rounds_row(backend: str, round_speeds, rng) -> dict:
    """A row timed in interleaved rounds, as the tracker stores one: pooled runs plus each round's median."""
    rounds = [1e-3 * s * (1 + rng.normal(0, 0.05, 300)) for s in round_speeds]
    samples = np.concatenate(rounds)
    metric = latency_metric("latency", list(samples), statistics(samples), clock="host",
                            round_medians_ms=[statistics(r)["median_ms"] for r in rounds])
    return {"model": "cnn", "backend": backend, "target": "cpu", "precision": "fp32", "batch": 1, "threads": 1,
            "status": "ok", "metrics": [metric.to_dict()]}


def test_rows_timed_in_the_same_rounds_are_compared_round_by_round(tmp_path):
    """The machine sped up and slowed down between rounds (the same code, each round timed back to back): the pooled
    runs' bootstrap calls tvm slower; the paired rounds see no difference. Rows of two experiments are not paired."""
    rng = np.random.default_rng(0)
    speeds = np.exp(rng.normal(0, 0.2, 6))
    nearby = speeds * np.exp(rng.normal(0, 0.1, 6))
    ort, tvm = _rounds_row("onnxruntime", speeds, rng), _rounds_row("tvm", nearby, rng)
    path = tmp_path / "r.sqlite"
    with ResultsStore(path) as store:
        for experiment in ("same", "other"):
            store.ensure_experiment(experiment, {})
        store.add_result("same", "ort", ort)
        store.add_result("same", "tvm", tvm)
        store.add_result("other", "tvm", tvm)
    with ResultsStore(path, readonly=True) as store:
        same, other = store.results("same"), store.results("same") + store.results("other")
    [paired] = speedup_comparisons(same, "onnxruntime")
    assert paired["method"] == "paired rounds" and paired["rounds"] == 6
    assert paired["verdict"] == NO_DIFFERENCE and paired["ci"][0] < 1 < paired["ci"][1]
    pooled = [c for c in speedup_comparisons(other, "onnxruntime") if c["method"] == "pooled runs"]
    assert len(pooled) == 1 and pooled[0]["verdict"] == "slower"
    assert pooled[0]["speedup"] == pytest.approx(paired["pooled_speedup"])  # the paired one keeps the pooled ratio
    assert pooled[0]["ci"][1] - pooled[0]["ci"][0] < (paired["ci"][1] - paired["ci"][0]) / 5
