"""Results of the GPU bundles that came before stages (``dlcbench-gpu-results/1`` and ``/2``): still read,
imported and rendered, so the committed H200 run (``benchmarks/results/gpu-h200.json``) stays usable.

New runs are stages' (:mod:`dlcbench.stage.results`).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from dlcbench.errors import BadInputError, one_line

RESULTS_FORMAT = "dlcbench-gpu-results/2"
RESULTS_FORMAT_V1 = "dlcbench-gpu-results/1"
BUNDLE_FORMATS = (RESULTS_FORMAT, RESULTS_FORMAT_V1)


def load_bundle_results(path: Path) -> dict[str, Any]:
    """Reads and validates a results JSON file written by a bundle's ``run.py``.

    A file of the first runner (:data:`RESULTS_FORMAT_V1`) is read too: its records' ``host`` and ``native``
    timings become ``timing`` and ``native_timing``, as :data:`RESULTS_FORMAT` has them.

    Raises:
        BadInputError: missing, not JSON, not a results file, or a self-check report.
    """
    from dlcbench import jsonio

    path = Path(path)
    data = jsonio.load_file(path)
    if not isinstance(data, dict) or data.get("format") not in (RESULTS_FORMAT, RESULTS_FORMAT_V1):
        raise BadInputError(f"{path} is not a dlcbench GPU results file (format {data.get('format') if isinstance(data, dict) else None!r})")
    if data.get("mode") != "run":
        raise BadInputError(f"{path} is a {data.get('mode')} report, not run results")
    for key in ("environment", "results", "bundle"):
        if key not in data:
            raise BadInputError(f"{path} has no {key!r}")
    for i, r in enumerate(data["results"]):
        missing = [k for k in ("model", "batch", "status") if k not in r]
        if missing:
            raise BadInputError(f"{path}: result {i} lacks {', '.join(missing)}")
        if data["format"] == RESULTS_FORMAT_V1:
            r["timing"], r["native_timing"] = r.pop("host", None) or {}, r.pop("native", None)
        if isinstance(r.get("timing"), dict) and r["timing"]:
            r["timing"].setdefault("region", "resident")  # the runner has always timed the resident region
    return data


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def default_experiment(data: dict[str, Any]) -> str:
    """``gpu-<gpu name>`` (e.g. ``gpu-nvidia-h200``), or ``gpu-<target>`` without a GPU record."""
    gpus = data["environment"].get("gpus") or []
    name = gpus[0].get("name") if gpus else None
    return "gpu-" + (_slug(name) if name else _slug(data["bundle"].get("target") or "unknown"))


def result_job_key(record: dict[str, Any]) -> str:
    ident = {k: record.get(k) for k in ("model", "preset", "batch", "backend", "target", "precision", "arch")}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:20]


def result_row(record: dict[str, Any], bundle: dict[str, Any]) -> dict[str, Any]:
    """A results-store row from one runner record (as :func:`load_bundle_results` returns it).

    A record has a CPU job's keys (``timing``, ``native_timing``, ``compile_seconds``, ``manifest``...) but for
    ``model``, the model's name; with the model's summary there instead, dlcbench's trackers read it as they
    read a job's ``result.json``.
    """
    from dlcbench.measure.trackers import collect_metrics

    manifest = record.get("manifest") or {}
    as_result = {**record, "model": {"summary": {"flops": record.get("flops"), "parameters": record.get("parameters")}}}
    return {
        "model": record["model"], "backend": record.get("backend") or "tvm", "target": record.get("target") or "cuda",
        "precision": record.get("precision") or "fp32", "batch": int(record["batch"]),
        "threads": int((manifest.get("options") or {}).get("threads") or 1),
        "status": record["status"], "category": record.get("category"), "message": record.get("message") or None,
        "check_metrics": record.get("check"), "manifest": manifest,
        "config": {"model": record["model"], "preset": record.get("preset"), "batch": record["batch"],
                   "arch": record.get("arch"), "gpu_arch": record.get("gpu_arch"), "load_seconds": record.get("load_seconds"),
                   "bundle_id": bundle.get("bundle_id"), "source": "gpu bundle"},
        "metrics": [m.to_dict() for m in collect_metrics(as_result)],
    }


def import_bundle_results(path: Path, db: Path, experiment: str | None = None) -> dict[str, Any]:
    """Stores a results file's rows (with its environment record) in the results database.

    A re-import replaces the rows of the same (model, preset, batch, target, arch).
    Returns ``{"experiment", "rows", "ok", "failed", "environment_id"}``.
    """
    from dlcbench.results.store import ResultsStore

    data = load_bundle_results(path)
    name = experiment or default_experiment(data)
    environment = {**data["environment"], "bundle": data["bundle"], "results_file": Path(path).name}
    rows = {result_job_key(record): result_row(record, data["bundle"]) for record in data["results"]}
    with ResultsStore(db) as store:  # all rows or none
        env_id = store.add_results(name, {"source": "gpu bundle", "bundle": data["bundle"],
                                          "timing": data.get("timing_config"), "results_file": str(path)},
                                   environment, rows)
    ok = sum(r["status"] == "ok" for r in data["results"])
    return {"experiment": name, "rows": len(data["results"]), "ok": ok, "failed": len(data["results"]) - ok,
            "environment_id": env_id}


def _fmt(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _max_abs(check: dict[str, Any]) -> float | None:
    """The largest absolute error over a check's outputs (``CheckReport.to_dict()``), None if none was measured."""
    values = [(o.get("metrics") or {}).get("max_abs") for o in check.get("outputs") or []]
    values = [v for v in values if v is not None]
    return max(values) if values else None


def render_bundle_table(data: dict[str, Any]) -> str:
    """Markdown: GPU, driver, CUDA, then per model and batch the latencies and the check verdict."""
    env, bundle = data["environment"], data.get("bundle") or {}
    gpus = env.get("gpus") or []
    gpu = gpus[0] if gpus else {}
    cuda = env.get("cuda") or {}
    runtime = cuda.get("runtime_version")
    runtime_text = f"{runtime // 1000}.{runtime % 1000 // 10}" if isinstance(runtime, int) else "?"
    cuda_target = bundle.get("target", "cuda") == "cuda"
    where = (gpu.get("name") or "no GPU") if cuda_target else env.get("cpu", {}).get("model", "?")
    lines = [f"# TVM {bundle.get('target', 'cuda').upper()} artifacts on {where}", ""]
    if cuda_target:
        lines.append(
            f"- GPU: {gpu.get('name', '?')}, driver {gpu.get('driver', '?')}, memory {gpu.get('memory', '?')}, "
            f"compute capability {gpu.get('compute_cap') or cuda.get('compute_version') or '?'}; CUDA runtime {runtime_text}")
    lines += [
        f"- Host: {env.get('cpu', {}).get('model', '?')}, {env.get('cores', '?')} cores; Python {env.get('python', '?')}; "
        f"numpy {env.get('packages', {}).get('numpy', '?')}",
        f"- Bundle {bundle.get('bundle_id', '?')}: TVM {bundle.get('tvm_version', '?')} runtime, tvm_ffi "
        f"{bundle.get('tvm_ffi_version', '?')}, {'device code' if cuda_target else 'CPU'} {bundle.get('arch', '?')}, "
        f"built at git {bundle.get('git_revision') or '?'}; run {env.get('collected', '?')}",
        f"- host: wall clock per inference including launches{' and a device synchronisation' if cuda_target else ''}; "
        f"native: TVM time_evaluator{' (CUDA events)' if cuda_target else ''}; check: outputs against the Keras "
        "reference with dlcbench's fp32 tolerances (abs 1e-4 + rel 1e-3, cosine >= 0.999)", "",
        "| model | preset | batch | check | max abs err | host median ms | host p90 ms | host p99 ms | "
        "native median ms | items/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(data["results"], key=lambda r: (r["model"], r.get("preset") or "", r["batch"])):
        host = (r.get("timing") or {}).get("stats") or {}
        native = (r.get("native_timing") or {}).get("stats") or {}
        worst = _max_abs(r.get("check") or {})
        if r["status"] == "ok":
            verdict = "PASS"
        elif r.get("category") == "accuracy_fail":
            verdict = "FAIL"
        else:
            verdict = f"{(r.get('category') or 'failed').upper()}"
        max_abs = "" if worst is None else f"{worst:.2g}"
        lines.append(f"| {r['model']} | {r.get('preset') or ''} | {r['batch']} | {verdict} | {max_abs} | "
                     f"{_fmt(host.get('median_ms'))} | {_fmt(host.get('p90_ms'))} | {_fmt(host.get('p99_ms'))} | "
                     f"{_fmt(native.get('median_ms'))} | {_fmt(host.get('throughput_per_s'), 1)} |")
    failures = [r for r in data["results"] if r["status"] != "ok"]
    skipped = bundle.get("skipped") or []
    if failures or skipped:
        lines.append("")
    for r in failures:
        lines.append(f"- {r['model']} batch {r['batch']}: **{r.get('category')}**: {one_line(r.get('message', ''), 300)}")
    for s in skipped:
        lines.append(f"- not in the bundle: {s['model']}: {s['reason']}")
    return "\n".join(lines) + "\n"


def results_from_store(db: Path, experiment: str) -> dict[str, Any]:
    """Rebuilds a results dict (as :func:`render_bundle_table` takes) from an imported experiment."""
    from dlcbench.results.store import ResultsStore

    with ResultsStore(db, readonly=True) as store:
        rows = [r for r in store.results(experiment) if (r.get("config") or {}).get("source") == "gpu bundle"]
        if not rows:
            raise BadInputError(f"experiment {experiment!r} has no GPU bundle rows")
        if any(r["target"] == "cuda" for r in rows):  # the table is about the GPU rows when there are some
            rows = [r for r in rows if r["target"] == "cuda"]
        env_ids = [r["environment_id"] for r in rows if r["environment_id"]]
        environment = store.environment(max(set(env_ids), key=env_ids.count)) if env_ids else {}
    def stats(metric: dict[str, Any] | None) -> dict[str, Any] | None:
        return {"median_ms": metric["value"], **metric["detail"]} if metric else None

    results = []
    for r in rows:
        config = r.get("config") or {}
        host, native = stats(r["metrics"].get("latency")), stats(r["metrics"].get("latency_native"))
        results.append({"model": r["model"], "preset": config.get("preset"), "batch": r["batch"], "status": r["status"],
                        "category": r["category"], "message": r["message"], "check": r.get("check_metrics") or {},
                        "timing": {"stats": host} if host else {},
                        "native_timing": {"stats": native, "timer": native.get("timer")} if native else None})
    return {"format": RESULTS_FORMAT, "mode": "run", "environment": environment,
            "bundle": environment.get("bundle") or {}, "results": results}


