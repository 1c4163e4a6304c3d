"""benchmarks/tvm_vs_onnxruntime.py end to end on a tiny model: table, JSON, curves, time to parity, --resume."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from dlcbench.errors import BadInputError, ExitCode
from dlcbench_test_support import ROOT, assert_one_line_error, run_script

SCRIPT = "benchmarks/tvm_vs_onnxruntime.py"
TINY = ["--models", "mlp", "--preset", "tiny", "--threads", "1", "--batches", "1", "--tune-minutes", "1.5",
        "--tune-population", "64", "--tune-generations", "2", "--rounds", "2", "--min-seconds", "0.2",
        "--max-seconds", "1"]


def _module():
    spec = importlib.util.spec_from_file_location("tvm_vs_onnxruntime", ROOT / SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_one_point_then_resume_refusals(tmp_path):
    out = tmp_path / "bench.md"
    run = run_script(SCRIPT, *TINY, "--work", str(tmp_path / "work"), "--out", str(out), timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    data = json.loads(out.with_suffix(".json").read_text())
    [point] = data["points"]
    assert point["tvm"]["region"] == point["onnxruntime"]["region"] == "resident"
    tuning = point["tuning"]
    assert tuning["new_trials"] > 0 and tuning["inherited_records"] == 0
    assert {"build", "measure"} <= set(tuning["stage_seconds"])
    # the evolutionary search's time by its steps, which together are the search stage
    search = tuning["search_seconds"]
    assert search.get("SampleInitPopulation", 0) > 0 and search.get("Evolve/PredictNormalizedScore", 0) > 0, search
    assert sum(search.values()) == pytest.approx(tuning["stage_seconds"]["search"], abs=0.05)
    # The curve ends with every task measured; parity is read from it, scaled to the measured latency.
    assert tuning["curve"][-1]["measured_tasks"] == sum(1 for t in tuning["tasks"] if not t.get("failed"))
    module = _module()
    curve = module.scaled_curve(point)
    assert curve and curve[-1][1] == pytest.approx(point["tvm"]["median_ms"])
    parity = point["parity"]["minutes"]
    ort = point["onnxruntime"]["median_ms"]
    assert parity == next((m for m, ms in curve if ms <= ort), None)
    text = out.read_text()
    assert "| parity min | % peak |" in text and "tuning time:" in text and "s per trial" in text
    assert "search time (MetaSchedule's scopes): " in text
    assert "Evolutionary search: population 64, generations per round 2." in text
    assert data["settings"]["tune_population"] == 64 and data["settings"]["tune_generations"] == 2
    assert data["environment"]["peak_gflops_by_threads"]["1"] > 0
    assert point["peak_gflops"] > 0 and module.point_peak(point, data["environment"]) == point["peak_gflops"]
    assert (tmp_path / "bench_curves.png").stat().st_size > 5000

    # Resuming with everything measured runs nothing and keeps the point.
    again = run_script(SCRIPT, *TINY, "--work", str(tmp_path / "work"), "--out", str(out), "--resume", timeout=600)
    revision = data["environment"]["git_revision"]
    if revision and not revision.endswith("-dirty"):
        assert again.returncode == 0, again.stderr[-3000:]
        assert "== mlp" not in again.stderr
        assert json.loads(out.with_suffix(".json").read_text())["points"] == [point]
    else:  # a checkout with uncommitted changes is not one commit: refused
        assert_one_line_error(again, ExitCode.BAD_INPUT, "a run is of one clean commit")

    # Another revision, a dirty checkout, other settings, another machine: refused.
    settings = data["settings"]
    env = {**data["environment"], "git_revision": "abc1234"}
    clean = json.loads(out.with_suffix(".json").read_text())
    clean["environment"]["git_revision"] = "abc1234"
    out.with_suffix(".json").write_text(json.dumps(clean))
    run_file = out.with_suffix(".json")
    points, seconds, sittings = module.resumed(module.load_run(run_file), run_file, env, settings)
    assert points == [point] and seconds > 0 and sittings == 2
    with pytest.raises(BadInputError, match="revision abc1234, this checkout is def5678"):
        module.resumed(module.load_run(run_file), run_file, {**env, "git_revision": "def5678"}, settings)
    with pytest.raises(BadInputError, match="other settings \\(tune_minutes\\)"):
        module.resumed(module.load_run(run_file), run_file, env, {**settings, "tune_minutes": 15.0})
    upgraded = {**env, "packages": {**env["packages"], "apache-tvm": "0.99"}}
    with pytest.raises(BadInputError, match="another apache-tvm"):
        module.resumed(module.load_run(run_file), run_file, upgraded, settings)
    earlier = module.load_run(out.with_suffix(".json"))
    with pytest.raises(BadInputError, match="measured on"):
        module.resumed(earlier, out.with_suffix(".json"), {**env, "cpu": {"model": "another CPU"}}, settings)
    # The same vague name on another generation (AVX-512 or not): another machine.
    other = {**env["cpu"], "flags": [f for f in env["cpu"]["flags"] if f != "avx2"] + ["avx512f"]}
    with pytest.raises(BadInputError, match="a run is of one machine"):
        module.resumed(earlier, out.with_suffix(".json"), {**env, "cpu": other}, settings)
    clean["environment"]["git_revision"] = "abc1234-dirty"
    out.with_suffix(".json").write_text(json.dumps(clean))
    with pytest.raises(BadInputError, match="one clean commit"):
        module.resumed(module.load_run(out.with_suffix(".json")), out.with_suffix(".json"),
                       {**env, "git_revision": "abc1234-dirty"}, settings)


def test_resume_without_results_is_one_line(tmp_path):
    run = run_script(SCRIPT, *TINY, "--out", str(tmp_path / "none.md"), "--resume", timeout=300)
    assert_one_line_error(run, ExitCode.BAD_INPUT, "none.json")


COMMITTED = ROOT / "benchmarks" / "results" / "tvm-15min-avx2" / "tvm_vs_onnxruntime.json"


def test_render_rewrites_a_run_and_keeps_the_best_peak(tmp_path):
    """--render measures no point: it writes the table again from the JSON, with the peak merged by maximum."""
    from dlcbench.results.env import cpu_info

    run = json.loads(COMMITTED.read_text())
    elsewhere = tmp_path / "elsewhere.md"  # a run of another machine keeps its own peaks: this one's would not do
    elsewhere.with_suffix(".json").write_text(json.dumps(run))
    done = run_script(SCRIPT, "--out", str(elsewhere), "--render", timeout=300)
    assert done.returncode == 0 and "not measuring the peak" in done.stderr, done.stderr[-3000:]
    kept = json.loads(elsewhere.with_suffix(".json").read_text())["environment"]
    assert kept["peak_gflops_by_threads"] == run["environment"]["peak_gflops_by_threads"]

    run["environment"]["cpu"] = cpu_info()  # as if measured here
    run["environment"]["peak_gflops_by_threads"] = {"1": 1e6, "2": 1.0}  # one unbeatable, one beaten at once
    run["environment"].pop("peak_sittings", None)
    out = tmp_path / "run.md"
    out.with_suffix(".json").write_text(json.dumps(run))
    done = run_script(SCRIPT, "--out", str(out), "--render", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    again = json.loads(out.with_suffix(".json").read_text())
    rescored = ("ratio", "onnxruntime", "tvm", "parity")  # parity is read against the rescored medians
    assert ([{**p, **dict.fromkeys(rescored)} for p in again["points"]]
            == [{**p, **dict.fromkeys(rescored)} for p in run["points"]])
    assert again["settings"] == {"tune_population": 128, "tune_generations": 4, **run["settings"]}
    for before, after in zip(run["points"], again["points"]):  # rescored from the round medians
        pooled = before["ratio"].get("pooled_ci", before["ratio"]["ci"])  # a run rendered before kept its own
        assert after["ratio"]["method"] == "paired rounds" and after["ratio"]["pooled_ci"] == pooled
        assert after["ratio"]["ci"][0] <= pooled[0] and after["ratio"]["ci"][1] >= pooled[1]
        for backend in ("onnxruntime", "tvm"):  # each median's interval too, over its rounds
            old, new = before[backend], after[backend]
            pooled_ms = old.get("pooled_ci_ms", old["ci_ms"])
            assert new["pooled_ci_ms"] == pooled_ms
            assert new["pooled_median_ms"] == old.get("pooled_median_ms", old["median_ms"])
            assert new["median_ms"] == pytest.approx(float(np.exp(np.median(np.log(old["round_medians_ms"])))))
            assert new["ci_ms"][0] <= pooled_ms[0] and new["ci_ms"][1] >= pooled_ms[1]
    assert again["environment"]["git_revision"] == run["environment"]["git_revision"]  # still the run's revision
    peaks = again["environment"]["peak_gflops_by_threads"]
    [sitting] = again["environment"]["peak_sittings"]
    assert peaks["1"] == 1e6 and peaks["2"] == sitting["gflops"]["2"] > 1.0
    text = out.read_text()
    assert text.count("| resnet50 |") == len(run["points"])
    assert "2 thread(s) " + str(peaks["2"]) in text
    targets = text[text.index("## Against the targets"):text.index("## Where the tuned TVM time goes")]
    t1b1 = next(p for p in run["points"] if (p["threads"], p["batch"]) == (1, 1))
    assert f"missed on {t1b1['model']} t1 b1 {t1b1['ratio']['tvm_over_ort']:.2f}x" in targets

    # A second rendering adds its own sitting; the best figure stays.
    assert run_script(SCRIPT, "--out", str(out), "--render", timeout=300).returncode == 0
    twice = json.loads(out.with_suffix(".json").read_text())["environment"]
    assert len(twice["peak_sittings"]) == 2 and twice["peak_gflops_by_threads"]["1"] == 1e6
    assert twice["peak_gflops_by_threads"]["2"] == max(s["gflops"]["2"] for s in twice["peak_sittings"])
    assert "(of 2 measurements at sittings' starts and renderings)" in out.read_text()


def test_points_are_held_against_their_own_sittings_peak():
    """A VM's speed can change between sittings: a point's % peak uses the peak measured after its rounds, or for
    older points the last sitting's measurement before it finished, and a large change is said in the table."""
    module = _module()
    env = {"peak_gflops_by_threads": {"2": 300.0},
           "peak_sittings": [{"collected": "2026-01-01T10:00:00Z", "gflops": {"2": 100.0}},
                             {"collected": "2026-01-01T12:00:00Z", "gflops": {"2": 300.0}}]}
    task = {"tuning": {"tasks": [{"flops": 1e9}]}, "tvm": {"median_ms": 10.0}}  # 100 GFLOP/s
    old = {"model": "a", "threads": 2, "batch": 1, "finished": "2026-01-01T11:00:00Z", "sitting": 1, **task}
    new = {"model": "b", "threads": 2, "batch": 1, "finished": "2026-01-01T13:00:00Z", "sitting": 2,
           "peak_gflops": 250.0, **task}
    early = {"model": "c", "threads": 2, "batch": 1, "finished": "2026-01-01T09:00:00Z", **task}
    assert [module.point_peak(p, env) for p in (old, new, early)] == [100.0, 250.0, 300.0]
    assert module.share_of_peak(old, "tvm", env) == pytest.approx(1.0)
    assert module.share_of_peak(new, "tvm", env) == pytest.approx(0.4)
    [line] = module.sitting_lines([old, new], env)
    assert line.startswith("- **Sittings**: 1 (2026-01-01, peak 100 GFLOP/s at 2 thread(s)): a t2 b1; 2 (")
    assert "(2.5x between the peaks its points are held against at 2 thread(s))" in line and "not comparable" in line
    drifting = {**old, "model": "d", "sitting": 1, "finished": "2026-01-01T11:30:00Z", "peak_gflops": 150.0}
    [line] = module.sitting_lines([old, drifting], env)  # one sitting whose speed moved: said too
    assert line.startswith("- **Sittings**: 1 (2026-01-01, peak 100-150 GFLOP/s at 2 thread(s)): a t2 b1, d t2 b1.")
    assert "changed during the run** (1.5x between" in line
    steady = {**new, "peak_gflops": 110.0}
    [line] = module.sitting_lines([old, steady], env)
    assert "changed" not in line
    assert module.sitting_lines([old], env) == []
    targets = module.target_lines([{**old, "model": "resnet50", "batch": 8}], env)
    assert ("resnet50 batch 8, 2 thread(s): tuned TVM at >= 50 % of the measured fp32 peak**: met (100 %)"
            in targets[1])


def test_ratio_interval_counts_the_drift_between_rounds():
    """A committed point whose rounds disagreed (TVM / ORT of 0.84 to 1.76 from round to round) was called slower
    from the pooled runs' interval; over its rounds it is no significant difference. One whose rounds agreed keeps
    its verdict."""
    module = _module()
    run = json.loads((ROOT / "benchmarks" / "results" / "tvm-15min-znver5" / "tvm_vs_onnxruntime.json").read_text())
    drifting = next(p for p in run["points"] if (p["model"], p["threads"]) == ("mlp", 2))
    steady = next(p for p in run["points"] if (p["model"], p["threads"]) == ("mobilenetv2", 1))
    ratio = module.point_ratio(drifting)
    rounds = [t / o for o, t in zip(drifting["onnxruntime"]["round_medians_ms"], drifting["tvm"]["round_medians_ms"])]
    assert max(rounds) / min(rounds) > 1.5 and ratio["round_ratios"] == pytest.approx(rounds)
    assert ratio["verdict"] == "no significant difference" and ratio["ci"][0] < 1 < ratio["ci"][1]
    # The ratio is the median of the rounds' (every round weighs the same); the pooled medians' is kept beside it.
    assert ratio["tvm_over_ort"] == pytest.approx(float(np.exp(np.median(np.log(rounds)))))
    pooled = {b: drifting[b].get("pooled_median_ms", drifting[b]["median_ms"]) for b in ("onnxruntime", "tvm")}
    assert ratio["pooled_ratio"] == pytest.approx(pooled["tvm"] / pooled["onnxruntime"])
    assert module.point_ratio(steady)["verdict"] == "slower" and module.point_ratio(steady)["ci"][0] > 1.5
    # Rescoring is idempotent: the pooled runs' interval is kept beside the paired one.
    assert module.point_ratio({**drifting, "ratio": ratio}) == ratio
    single = {**steady, "onnxruntime": {**steady["onnxruntime"], "round_medians_ms": [1.0]}}
    assert module.point_ratio(single)["method"] == "pooled runs"


def test_rounds_below_two_are_one_line(tmp_path):
    run = run_script(SCRIPT, *TINY[:-6], "--rounds", "1", "--out", str(tmp_path / "x.md"), timeout=300)
    assert_one_line_error(run, ExitCode.BAD_INPUT, "--rounds must be at least 2")
    run = run_script(SCRIPT, *TINY, "--tune-population", "0", "--out", str(tmp_path / "y.md"), timeout=300)
    assert_one_line_error(run, ExitCode.BAD_INPUT, "--tune-population must be at least 1")


def test_render_of_something_else_is_one_line(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"rows": []}))
    run = run_script(SCRIPT, "--out", str(tmp_path / "x.md"), "--render", timeout=300)
    assert_one_line_error(run, ExitCode.BAD_INPUT, "not a run of this benchmark")


def test_targets_read_the_interval():
    """Met: the whole interval at or below the bound; not ruled out: only its lower end; missed: neither, or failed."""
    module = _module()

    def point(model, threads, batch, lo, hi):
        return {"model": model, "threads": threads, "batch": batch,
                "ratio": {"tvm_over_ort": (lo + hi) / 2, "ci": [lo, hi]}, "parity": {"minutes": 3.0 if hi < 1 else None}}

    points = [point("a", 1, 1, 0.90, 0.95), point("b", 1, 1, 0.98, 1.03), point("c", 1, 1, 1.10, 1.15),
              {"model": "d", "threads": 1, "batch": 1}, point("a", 2, 8, 1.20, 1.30)]
    lines = module.target_lines(points, {})
    assert "met on 1 of 4 points; not ruled out on b t1 b1 1.00x; missed on c t1 b1 1.12x, d t1 b1 (failed)" in lines[0]
    assert "met on 3 of 4 points; missed on d t1 b1 (failed)" in lines[1]
    assert "met on 0 of 1 points; not ruled out on a t2 b8 1.25x" in lines[2]
    assert lines[-1] == "- **Time to parity** within the budget: 1 of 5 points (a t1 b1 3.0 min)."


def test_trial_cost_splits_the_first_pass_from_later_thirds():
    module = _module()
    curve = [{"trials": 0, "seconds": 0.0, "measured_tasks": 0}, {"trials": 16, "seconds": 8.0, "measured_tasks": 1},
             {"trials": 32, "seconds": 12.0, "measured_tasks": 2}]  # first pass: 12 s for 32 trials
    for i, cost in enumerate([1.0, 1.0, 2.0, 2.0, 0.5, 0.5]):  # later thirds: 1, 2 and 0.5 s per trial
        curve.append({"trials": 48 + 16 * i, "seconds": curve[-1]["seconds"] + 16 * cost, "measured_tasks": 2})
    found = module.trial_cost({"tuning": {"curve": curve}})
    assert found["first_pass"] == pytest.approx(12 / 32) and found["later"] == pytest.approx([1.0, 2.0, 0.5])
    assert module.trial_cost({"tuning": {"curve": curve[:4]}})["later"] == []


def test_rounds_where_the_machine_was_busy_are_named():
    module = _module()
    busy = {"others_cpu_pct": 45.0, "steal_pct": 3.0, "seconds": 1.0}
    quiet = {"others_cpu_pct": 1.0, "steal_pct": 2.0, "seconds": 1.0}
    points = [{"model": "mlp", "threads": 2, "batch": 8,
               "onnxruntime": {"machine_load": quiet, "round_machine_load": [quiet, quiet]},
               "tvm": {"machine_load": busy, "round_machine_load": [quiet, busy]}},
              {"model": "cnn", "threads": 1, "batch": 1, "onnxruntime": {}, "tvm": {}}]
    [line] = module.load_lines(points)
    assert "1 of 2 points" in line and "at most 45 %" in line and "at most 3 %" in line
    assert "mlp t2 b8 tvm round 2 (45 % others, 3 % steal)" in line and "onnxruntime round" not in line
    [old] = module.load_lines(points[1:])
    assert "not recorded" in old
