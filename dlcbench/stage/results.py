"""A stage's results JSON (written by its ``run.py``, :mod:`dlcbench.stage.runner`) into the results database, and
the comparison table of an imported stage.

Each job's record already holds a results-store row made where it ran, by dlcbench's trackers (latency on the
host clock with its samples, the native timer's, compile time, the check's verdict and metrics): importing adds
the job's identity (model, backend, target, precision, batch, threads), the stage's id and the machine's
environment record, all rows in one transaction. The report (``dlcbench report``) then compares backends as it
does on the CPU; GPU rows are compared with GPU rows of the same machine only.

Results of the bundles that came before stages are still imported (:mod:`dlcbench.stage.legacy`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from dlcbench.errors import BadInputError, one_line
from dlcbench.stage.runner import FORMAT

#: The round ids a MetaSchedule database has had committed from stages (one a line), so none is committed twice.
COMMITTED_ROUNDS_FILE = "dlcbench-committed-rounds.txt"


def load_results(path: Path) -> dict[str, Any]:
    """Reads and validates a stage's results JSON.

    Raises:
        BadInputError: missing, not JSON, not a stage's run results (a self-check report is refused).
    """
    from dlcbench import jsonio

    path = Path(path)
    data = jsonio.load_file(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else None
        raise BadInputError(f"{path} is not a dlcbench stage results file (format {found!r})")
    if data.get("mode") != "run":
        raise BadInputError(f"{path} is a {data.get('mode')} report, not run results")
    for key in ("environment", "results", "stage"):
        if key not in data:
            raise BadInputError(f"{path} has no {key!r}")
    for i, record in enumerate(data["results"]):
        if not isinstance(record, dict) or not {"id", "job", "row"} <= record.keys() or "status" not in record["row"]:
            raise BadInputError(f"{path}: result {i} is incomplete")
    return data


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def default_experiment(data: dict[str, Any]) -> str:
    """``gpu-<gpu name>`` (e.g. ``gpu-nvidia-h200``) for a CUDA stage, ``stage-cpu-<cpu model>`` otherwise."""
    env = data["environment"]
    gpus = env.get("gpus") or []
    if data["stage"].get("target") == "cuda":
        name = gpus[0].get("name") if gpus else ((env.get("torch_gpu") or {}).get("device") or {}).get("name")
        return "gpu-" + _slug(name or "unknown")
    return "stage-cpu-" + _slug((env.get("cpu") or {}).get("model") or env.get("hostname") or "unknown")


def stage_job_key(job: dict[str, Any]) -> str:
    """The job's key in the results database: :func:`dlcbench.orchestrate.experiment.job_key` of its configuration."""
    from dlcbench.measure.job import JobConfig
    from dlcbench.orchestrate.experiment import job_key
    from dlcbench.stage.build import JOB_FIELDS

    return job_key(JobConfig(**{k: job[k] for k in JOB_FIELDS}, out_dir=Path("unused")))


def stage_rows(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``job key -> results-store row`` of every record (see the module docstring)."""
    from dlcbench.stage.build import JOB_FIELDS

    rows = {}
    for record in data["results"]:
        job = record["job"]
        row = dict(record["row"])
        row.update(model=job["model"], backend=job["backend"], target=job["target"], precision=job["precision"],
                   batch=int(job["batch"]), threads=int(job["threads"]),
                   config={**{k: job.get(k) for k in JOB_FIELDS}, "job_id": record["id"], "source": "stage",
                           "stage_id": data["stage"].get("stage_id"), "built_here": bool(job.get("artifact")),
                           "wall_seconds": record.get("seconds")})
        rows[stage_job_key(job)] = row
    return rows


def commit_tuning(data: dict[str, Any], stage_dir: Path, tuning_db: Path | None = None) -> list[dict[str, Any]]:
    """Commits the measured tuning rounds of a stage's results into the MetaSchedule database (``tuning_db``, or
    the one each round was sampled from); returns one summary per round (:func:`~dlcbench.compilers.tvm.deferred.commit_round`'s).

    Raises:
        BadInputError: results of another stage, or measurements of another round.
    """
    import tempfile

    from dlcbench.compilers.tvm.deferred import commit_round
    from dlcbench.stage.build import read_stage_index
    from dlcbench.stage.runner import unpack_file

    index = read_stage_index(stage_dir)
    if index["stage_id"] != data["stage"].get("stage_id"):
        raise BadInputError(f"the results are of stage {data['stage'].get('stage_id')}, {stage_dir} is stage "
                            f"{index['stage_id']}")
    jobs = {j["id"]: j for j in index["jobs"]}
    summaries = []
    for job_id, measurements in (data.get("tuning") or {}).items():
        job = jobs.get(job_id)
        if job is None or not job.get("tuning_round"):
            raise BadInputError(f"stage {index['stage_id']} has no tuning round for {job_id}")
        if "error" in measurements:
            summaries.append({"job": job_id, "error": measurements["error"], "committed": 0, "failed": 0})
            continue
        database = Path(tuning_db or job["tuning_db"])
        ledger = database / COMMITTED_ROUNDS_FILE
        done = set(ledger.read_text().split()) if ledger.is_file() else set()
        if measurements.get("round_id") in done:  # a re-import commits nothing twice
            summaries.append({"job": job_id, "database": str(database), "already_committed": True, "committed": 0,
                              "failed": 0, "tasks": []})
            continue
        with tempfile.TemporaryDirectory(prefix="dlcbench-round-") as tmp:
            unpack_file(Path(stage_dir), index, f"{job['tuning_round']}/round.json", Path(tmp) / "round.json")
            summary = commit_round(Path(tmp), measurements, database)
        with open(ledger, "a") as fh:
            fh.write(f"{measurements['round_id']}\n")
        summaries.append({"job": job_id, "database": str(database), **summary})
    return summaries


def import_results(path: Path, db: Path, experiment: str | None = None, stage_dir: Path | None = None,
                   tuning_db: Path | None = None) -> dict[str, Any]:
    """Stores a results file's rows with its environment record (a stage's, or an earlier bundle's); with
    ``stage_dir`` (the stage it ran), also commits its measured tuning rounds (:func:`commit_tuning`).

    A re-import replaces the rows of the same jobs. Returns ``{"experiment", "rows", "ok", "failed",
    "environment_id", "tuning"}``.
    """
    from dlcbench.results.store import ResultsStore
    from dlcbench.stage import legacy

    try:
        fmt = json.loads(Path(path).read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        fmt = None
    if fmt in legacy.BUNDLE_FORMATS:
        return {**legacy.import_bundle_results(path, db, experiment), "legacy": True}
    data = load_results(path)
    if stage_dir is not None:  # before any row is stored: a wrong --stage imports nothing
        from dlcbench.stage.build import read_stage_index

        if read_stage_index(stage_dir)["stage_id"] != data["stage"].get("stage_id"):
            raise BadInputError(f"the results are of stage {data['stage'].get('stage_id')}, {stage_dir} is stage "
                                f"{read_stage_index(stage_dir)['stage_id']}")
    name = experiment or default_experiment(data)
    environment = {**data["environment"], "stage": data["stage"], "results_file": Path(path).name}
    rows = stage_rows(data)
    with ResultsStore(db) as store:  # all rows or none
        env_id = store.add_results(name, {"source": "stage", "stage": data["stage"], "timing": data.get("timing_config"),
                                          "results_file": str(path)}, environment, rows)
    ok = sum(r["status"] == "ok" for r in rows.values())
    tuning = commit_tuning(data, stage_dir, tuning_db) if stage_dir is not None and data.get("tuning") else []
    return {"experiment": name, "rows": len(rows), "ok": ok, "failed": len(rows) - ok, "environment_id": env_id,
            "tuning": tuning, "tuning_not_committed": sorted(data.get("tuning") or {}) if stage_dir is None else []}


def _fmt(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _max_abs(check: dict[str, Any] | None) -> float | None:
    values = [(o.get("metrics") or {}).get("max_abs") for o in (check or {}).get("outputs") or []]
    values = [v for v in values if v is not None]
    return max(values) if values else None


def _verdict(row: dict[str, Any]) -> str:
    if row["status"] == "ok":
        return "PASS"
    return "FAIL" if row.get("category") == "accuracy_fail" else (row.get("category") or "failed").upper()


#: The first line of a table :func:`render_table` (or an earlier bundle's table) writes: ``--table`` replaces only a
#: file that starts with it.
TABLE_TITLE = re.compile(r"# (.+: a dlcbench stage on \S+|TVM \S+ artifacts on .+)$")


def render_table(db: Path, experiment: str, baseline: str | None = None) -> str:
    """Markdown: the machine, then per model, batch and precision every backend's check verdict, latency with its
    95 % interval, native timer, compile time and where it compiled, speedup over ``baseline`` (default: PyTorch
    eager at fp32 on the stage's target) with its interval and verdict, and tensor-core use where recorded."""
    from dlcbench.measure.trackers import metric_of
    from dlcbench.results.report import machine_name, series, speedup_comparisons
    from dlcbench.results.store import ResultsStore

    with ResultsStore(db, readonly=True) as store:
        rows = [r for r in store.results(experiment) if (r.get("config") or {}).get("source") == "stage"]
        if not rows:
            raise BadInputError(f"experiment {experiment!r} has no stage rows")
        env_ids = sorted({r["environment_id"] for r in rows if r["environment_id"]})
        environments = {i: store.environment(i) for i in env_ids}
    for row in rows:
        row["machine"] = machine_name(environments.get(row["environment_id"]) or {})
    target = rows[0]["target"]
    baseline = baseline or ("torch" if target == "cpu" else "torch@cuda")
    comparisons = {(c["model"], c["batch"], c["backend"], c["machine"]): c
                   for c in speedup_comparisons([r for r in rows if r["status"] == "ok"], baseline)}
    lines = [f"# {experiment}: a dlcbench stage on {target}", ""]
    for env in environments.values():
        gpus = ", ".join(f"{g.get('name')} (driver {g.get('driver')}, {g.get('memory')}, max SM clock "
                         f"{g.get('max_sm_clock')})" for g in env.get("gpus") or []) or "none"
        torch_gpu = env.get("torch_gpu") or {}
        cuda = f"; PyTorch {torch_gpu.get('torch')} CUDA {torch_gpu.get('torch_cuda')} cuDNN {torch_gpu.get('cudnn')}" \
            if torch_gpu.get("torch_cuda") else ""
        stage = env.get("stage") or {}
        lines.append(f"- {machine_name(env)}: {env.get('cores', '?')} cores; GPUs: {gpus}{cuda}; Python "
                     f"{env.get('python', '?')}; stage {stage.get('stage_id', '?')} built at git "
                     f"{stage.get('git_revision') or '?'} (TVM {stage.get('tvm_version') or '-'}), run {env.get('collected', '?')}")
    lines += [
        "- latency: resident region (inputs on the device once, outputs left there, the device synchronised after each "
        "run), host clock, median with its 95 % interval; native: the backend's own timer (TVM time_evaluator, CUDA "
        "events for PyTorch on a GPU); check: outputs against the Keras reference with dlcbench's tolerances for the "
        "precision.",
        f"- speedup: {baseline} median / backend median (>1 = faster), 95 % bootstrap interval from the samples; "
        "compile: seconds, here (cross-compiled before the run) or there (on the target, JIT backends).", "",
        "| model | batch | precision | backend | check | max abs err | median ms | 95 % interval | native ms | compile s |"
        f" speedup vs {baseline} | interval | verdict | tensor cores |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = sorted(rows, key=lambda r: (Path(r["model"]).stem, r["batch"], r["precision"], r["backend"]))
    for r in order:
        latency, native = metric_of(r, "latency"), metric_of(r, "latency_native")
        compile_s = metric_of(r, "compile_time")
        detail = (latency or {}).get("detail") or {}
        ci = detail.get("median_ci_ms")
        comparison = comparisons.get((Path(r["model"]).stem, r["batch"], series(r), r["machine"]))
        where = "here" if (r.get("config") or {}).get("built_here") else "there"
        extra = (r.get("manifest") or {}).get("extra") or {}
        tensor_cores = extra.get("tensor_cores")
        tc = "" if tensor_cores is None else ("yes" if tensor_cores else "no")
        max_abs = _max_abs(r.get("check_metrics"))
        speedup = interval = verdict = ""
        if comparison:
            speedup, verdict = f"{comparison['speedup']:.3f}x", comparison["verdict"]
            interval = f"{comparison['ci'][0]:.3f}-{comparison['ci'][1]:.3f}" if comparison["ci"] else ""
        error = "" if max_abs is None else f"{max_abs:.2g}"
        latency_ci = f"{ci[0]:.4f}-{ci[1]:.4f}" if ci else ""
        compiled = f"{_fmt(compile_s['value'], 1)} {where}" if compile_s else ""
        lines.append(
            f"| {Path(r['model']).stem} | {r['batch']} | {r['precision']} | {r['backend']} | {_verdict(r)} | {error} | "
            f"{_fmt(latency and latency['value'])} | {latency_ci} | {_fmt(native and native['value'])} | {compiled} | "
            f"{speedup} | {interval} | {verdict} | {tc} |")
    failures = [r for r in rows if r["status"] != "ok"]
    if failures:
        lines.append("")
    for r in failures:
        lines.append(f"- {Path(r['model']).stem} b{r['batch']} {r['precision']} {r['backend']}: **{r.get('category')}**: "
                     f"{one_line(r.get('message') or '', 300)}")
    skipped = [s for env in environments.values() for s in (env.get("stage") or {}).get("skipped") or []]
    for s in skipped:
        lines.append(f"- not in the stage: {s['what']}: {s['reason']}")
    return "\n".join(lines) + "\n"
