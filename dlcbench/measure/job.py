"""One job end to end: export (cached), compile, load, check against the reference, time.

:func:`run_job` is what every job runs inside its isolated worker process
(:mod:`dlcbench.orchestrate.worker`), for ``dlcbench compile`` and for experiments alike.
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from dlcbench import jsonio
from dlcbench.config import positive_int
from dlcbench.cpus import current_cpus, restore_affinity
from dlcbench.compilers.base import REGIONS
from dlcbench.cpus import default_threads
from dlcbench.models.export import names_a_file
from dlcbench.errors import BadInputError, one_line
from dlcbench.measure.check import (check_outputs, check_override_outputs, join_batches, joinable,
                                    parse_tolerance_overrides)
from dlcbench.measure.machine import cpu_snapshot, machine_load, worst_load
from dlcbench.measure.timing import (TimingConfig, ci_target_met, measure, rounds_interval, rounds_median,
                                     statistics)

#: What ``--region`` accepts: one timed region, or ``both`` in one job.
REGION_CHOICES = (*REGIONS, "both")


def check_region(region: str) -> str:
    """Returns ``region`` if it is one of :data:`REGION_CHOICES`; raises :class:`BadInputError` naming them if not."""
    if region not in REGION_CHOICES:
        raise BadInputError(f"unknown region {region!r}; valid: {', '.join(REGION_CHOICES)}")
    return region


@dataclass
class JobConfig:
    """Everything one (model, backend, configuration) job needs.

    Attributes:
        backend: Registered backend name (see ``--list-backends``).
        model: Zoo name or model file path.
        preset: Zoo size preset.
        params: Zoo parameter overrides.
        target: ``cpu`` or ``cuda``.
        precision: ``fp32``, ``fp16``, ``bf16`` or ``int8``.
        batch: Batch size.
        threads: CPU threads for the backend (one count per comparison).
        out_dir: Where the artifact and ``result.json`` go.
        backend_options: Backend-specific options (fields of the adapter's Options class).
        tolerances: Tolerance overrides, ``[OUTPUT:]abs=..,rel=..,cosine=..`` strings.
        timing: Warm-up and measurement rules.
        seed: Seed of the weights and inputs.
        opset: ONNX opset of the export.
        compile_only: Stop after writing the artifact (cross-compiling for a device this machine lacks).
        force_export: Rebuild the model's export cache entry instead of reusing it.
        region: The timed region (:data:`dlcbench.compilers.base.REGIONS`): ``resident`` (for comparisons),
            ``end_to_end`` (numpy in, numpy out: what an application sees) or ``both`` (each timed in turn).
        input_shapes: Full shapes fixing inputs' dynamic dimensions (``--input-shape``; see
            :class:`dlcbench.models.export.ExportConfig`).
        input_ranges: ``[low, high)`` of integer inputs (``--input-range``).
        inputs_file: An ``.npz`` of real inputs to check and time on (``--inputs``).
        accuracy: Also measure top-1 accuracy on the held-out split of the model's dataset (``--accuracy``; zoo
            models trained on labelled data); a drop beyond the precision's budget fails the job
            (:mod:`dlcbench.measure.accuracy`).
        export_dir: A model exported elsewhere (a stage's copy of an export: ``meta.json``, sample inputs,
            references and the model file the backend compiles from), used as it is instead of exporting
            ``model`` (see :func:`dlcbench.models.export.open_export`).
        prebuilt: ``out_dir`` already holds the job's artifact, built elsewhere (a stage): load it, do not compile.
    """

    backend: str
    model: str
    preset: str = "default"
    params: dict[str, Any] = field(default_factory=dict)
    target: str = "cpu"
    precision: str = "fp32"
    batch: int = 1
    threads: int = field(default_factory=default_threads)
    out_dir: Path | None = None
    backend_options: dict[str, Any] = field(default_factory=dict)
    tolerances: list[str] = field(default_factory=list)
    timing: TimingConfig = field(default_factory=TimingConfig)
    seed: int = 0
    opset: int = 17
    compile_only: bool = False
    force_export: bool = False
    region: str = "resident"
    input_shapes: dict[str, list[int]] | list[str] = field(default_factory=dict)
    input_ranges: dict[str, list[int]] | list[str] = field(default_factory=dict)
    inputs_file: str | None = None
    accuracy: bool = False
    export_dir: str | None = None
    prebuilt: bool = False

    def __post_init__(self):
        from dlcbench.models.inputs import parse_input_ranges, parse_input_shapes

        positive_int("batch", self.batch)
        self.input_shapes = {k: list(v) for k, v in parse_input_shapes(self.input_shapes).items()}
        self.input_ranges = {k: list(v) for k, v in parse_input_ranges(self.input_ranges).items()}
        if self.inputs_file is not None:
            self.inputs_file = os.path.abspath(os.path.expanduser(str(self.inputs_file)))
        positive_int("threads", self.threads)
        check_region(self.region)
        parse_tolerance_overrides(self.tolerances)  # validate early
        if self.out_dir is None:
            stem = Path(self.model).stem if names_a_file(self.model) else self.model
            self.out_dir = Path("out") / f"{stem}-{self.backend}-{self.target}-{self.precision}-b{self.batch}"
        self.out_dir = Path(self.out_dir)


@dataclass
class JobResult:
    """What a job produced; ``to_dict`` is what ``result.json`` holds."""

    config: dict[str, Any]
    manifest: dict[str, Any]
    model: dict[str, Any]
    check: dict[str, Any]
    timing: dict[str, Any]
    native_timing: dict[str, Any] | None
    compile_seconds: float
    export_seconds: float
    artifact_bytes: int
    peak_rss_mb: float
    passed: bool
    failure_message: str = ""
    #: The ``end_to_end`` timing when the job timed both regions (``timing`` is then the ``resident`` one).
    timing_end_to_end: dict[str, Any] | None = None
    #: The check cannot discriminate: some output is the same for every distinct input (not a failure).
    trivial_check: bool = False
    #: Top-1 accuracy on labelled data (``JobConfig.accuracy``): see :func:`dlcbench.measure.accuracy.measure_accuracy`.
    accuracy: dict[str, Any] | None = None
    #: Why the job failed when not its output check (``accuracy_drop``); empty otherwise.
    failure_category: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_for(adapter, config: JobConfig):
    """Exports the job's model in the variant the adapter compiles from (or opens ``config.export_dir``)."""
    from dlcbench.models.export import ExportConfig, export_model, open_export

    if config.export_dir:
        return open_export(Path(config.export_dir))

    folded = adapter.source == "onnx-folded"
    return export_model(
        ExportConfig(
            model=config.model, preset=config.preset, params=dict(config.params), batch=config.batch,
            seed=config.seed, opset=config.opset, static=folded, fold=folded, force=config.force_export,
            input_shapes=dict(config.input_shapes), input_ranges=dict(config.input_ranges),
            inputs_file=config.inputs_file,
        )
    )


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def run_job(config: JobConfig, progress=None) -> JobResult:
    """Exports, compiles, checks and times one job; writes the artifact and ``result.json``.

    A failed output check is returned (``passed=False``), not raised, so the
    timing is still reported; every other problem raises a
    :class:`dlcbench.errors.DlcbenchError`. The artifact is published whole
    (see :meth:`dlcbench.compilers.base.Adapter.compile`); an existing
    ``out_dir`` that is not an earlier artifact is refused before the export.
    """
    with open_job(config, progress) as job:
        return job.compiled if config.compile_only else job.finish([job.time_round()])


class OpenJob:
    """A job built, loaded and checked, its session open: timed in one round or several (:meth:`time_round`),
    then :meth:`finish` pools the rounds into the :class:`JobResult`. Made by :func:`open_job`.

    Interleaved comparisons keep one open job per backend and alternate their rounds, so that drift (another
    process, frequency, heat) lands on every backend alike instead of on whichever ran last.
    """

    def __init__(self, config: JobConfig, adapter, manifest, model, export_seconds: float, say):
        self.config, self.adapter, self.manifest, self.model = config, adapter, manifest, model
        self.export_seconds, self.say = export_seconds, say
        self.compiled: JobResult | None = None  # the result of a compile-only job
        self.session = None
        self.report = None
        self.inputs: dict[str, Any] = {}
        self.rounds: list[list[dict[str, Any]]] = []
        self.accuracy: dict[str, Any] | None = None

    def check(self) -> None:
        """Loads the artifact and checks its outputs on every check batch against the reference."""
        config = self.config
        batches = self.model.check_batches()
        self.inputs = batches[0][0]
        self.say("checking outputs")
        self.session = self.adapter.load(config.out_dir)
        self.session.__enter__()
        # The sample batch and the export's extra check batches, joined into rows: enough distinct inputs
        # to flag outputs that do not depend on them (copies: a session may reuse its output buffers).
        runs = [{k: np.array(v) for k, v in self.session.run(x).items()} for x, _ in batches]
        references = [ref for _, ref in batches]

        def check(got, expected, inputs):
            return check_outputs(got, expected, config.precision, parse_tolerance_overrides(config.tolerances),
                                 classifier=self.model.meta.get("task") == "classifier", inputs=inputs)

        if joinable(runs) and joinable(references):
            self.report = check(join_batches(runs), join_batches(references), join_batches([x for x, _ in batches]))
        else:  # an output's shape changes with the input: each batch on its own, the first failure reported
            reports = [check(got, ref, x) for got, ref, (x, _) in zip(runs, references, batches)]
            self.report = next((r for r in reports if not r.passed), reports[0])
            self.report.note = (f"checked batch by batch ({len(reports)} batches): an output's shape changes "
                                "with the input")
        if config.accuracy:
            from dlcbench.measure.accuracy import measure_accuracy

            self.say("measuring accuracy on the held-out split")
            self.accuracy = measure_accuracy(self.session, self.model, config.batch, config.precision)

    def time_round(self, timing: TimingConfig | None = None) -> list[dict[str, Any]]:
        """Times one round of the job's region(s) (:func:`time_regions`); kept for :meth:`finish` and returned."""
        self.say("timing" if not self.rounds else f"timing round {len(self.rounds) + 1}")
        timings = time_regions(self.session, self.inputs, self.config.region, timing or self.config.timing,
                               self.config.batch)
        self.rounds.append(timings)
        return timings

    def finish(self, rounds: list[list[dict[str, Any]]] | None = None) -> JobResult:
        """The job's result from its timed rounds (default: every round timed so far), pooled by
        :func:`pool_rounds`; times the backend's native timer; writes ``result.json``."""
        config = self.config
        timings = pool_rounds(rounds if rounds is not None else self.rounds, config.timing, config.batch)
        timing = timings[0]
        native = None
        samples = self.session.native_time(self.inputs, repeat=native_repeat(config.timing, timing["stats"]["median_ms"]))
        if samples:
            native = {"timer": self.session.native_timer_name, "samples_s": samples,
                      "stats": statistics(samples, config.batch)}
            native["host_over_native"] = timing["stats"]["median_ms"] / max(native["stats"]["median_ms"], 1e-12)
        report = self.report
        failure, category = (one_line(report.failure_message(), 2000), "") if not report.passed else ("", "")
        if report.passed and self.accuracy and not self.accuracy["within_budget"]:
            from dlcbench.measure.accuracy import ACCURACY_DROP, accuracy_failure

            failure, category = accuracy_failure(self.accuracy, config.precision), ACCURACY_DROP
        result = JobResult(
            **_built(config, self.manifest, self.model, self.export_seconds, config.out_dir),
            check=report.to_dict(),
            timing=timing,
            timing_end_to_end=timings[1] if len(timings) > 1 else None,
            native_timing=native,
            passed=report.passed and not category,
            failure_message=failure,
            trivial_check=report.trivial_check,
            accuracy=self.accuracy,
            failure_category=category,
        )
        (config.out_dir / "result.json").write_text(jsonio.dumps(result.to_dict(), indent=2, default=str))
        return result

    def close(self) -> None:
        """Closes the session (idempotent)."""
        session, self.session = self.session, None
        if session is not None:
            session.__exit__(None, None, None)


@contextmanager
def open_job(config: JobConfig, progress=None) -> Iterator[OpenJob]:
    """Exports and compiles ``config``'s job, then loads and checks it, keeping the session open inside the block.

    A compile-only job stops after writing the artifact: its result is the :class:`OpenJob`'s ``compiled``.
    Raises what :func:`run_job` raises; the session is closed on the way out.
    """
    from dlcbench.compilers.base import ARTIFACT
    from dlcbench.compilers.registry import get_adapter
    from dlcbench.outputs import check_replaceable, staged_output

    say = progress or (lambda message: None)
    restore_affinity()  # an earlier job in this process may have left this thread on one core (TVM's pool)
    adapter = get_adapter(config.backend)
    adapter.require_available()
    if config.prebuilt:  # built elsewhere with its own options (the manifest has them)
        job = _open_prebuilt(config, adapter, say)
        try:
            job.check()
            yield job
        finally:
            job.close()
        return
    options = adapter.make_options(
        target=config.target, precision=config.precision, threads=config.threads, batch=config.batch,
        backend_options=config.backend_options,
    )
    final = check_replaceable(config.out_dir, ARTIFACT)
    source = Path(config.model)
    if names_a_file(config.model) and source.exists() and (final == source.resolve() or final in source.resolve().parents):
        raise BadInputError(f"the output directory {config.out_dir} holds the model {config.model}; choose another --out")
    say(f"exporting {config.model}")
    t0 = time.perf_counter()
    model = export_for(adapter, config)
    export_seconds = time.perf_counter() - t0
    if adapter.source == "keras" and model.keras_path is None:
        raise BadInputError(f"backend {adapter.name} needs a Keras or TensorFlow model, not an .onnx file")
    check_override_outputs(parse_tolerance_overrides(config.tolerances), [o["name"] for o in model.meta["outputs"]])
    say(f"compiling with {adapter.name} ({config.target}, {config.precision})")
    job = OpenJob(config, adapter, None, model, export_seconds, say)
    with staged_output(config.out_dir, ARTIFACT) as staging:
        job.manifest = adapter.compile_into(model, options, staging)
        if config.compile_only:
            job.compiled = _compile_only_result(config, job.manifest, model, export_seconds, staging)
    try:
        if not config.compile_only:
            job.check()
        yield job
    finally:
        job.close()


def _open_prebuilt(config: JobConfig, adapter, say) -> "OpenJob":
    """The :class:`OpenJob` of an artifact built elsewhere (``config.prebuilt``), its model from ``export_dir``."""
    from dlcbench.compilers.base import Manifest

    if config.compile_only:
        raise BadInputError("a prebuilt artifact has nothing to compile (prebuilt with compile_only)")
    manifest = Manifest.read(config.out_dir)
    if manifest.backend != adapter.name:
        raise BadInputError(f"{config.out_dir} holds a {manifest.backend} artifact, not {adapter.name}")
    model = export_for(adapter, config)
    say(f"loading the {adapter.name} artifact in {config.out_dir}")
    return OpenJob(config, adapter, manifest, model, 0.0, say)


def round_timing(timing: TimingConfig, rounds: int) -> TimingConfig:
    """The timing of one of ``rounds`` interleaved rounds: the minimums and caps shared out between the rounds
    (warm-up and the interval target kept: each round warms up again and sharpens its own median)."""
    positive_int("rounds", rounds)
    min_iters = max(1, -(-timing.min_iters // rounds))
    return replace(timing, min_iters=min_iters, min_seconds=timing.min_seconds / rounds,
                   max_seconds=timing.max_seconds / rounds, max_iters=max(min_iters, -(-timing.max_iters // rounds)))


def pool_rounds(rounds: list[list[dict[str, Any]]], timing: TimingConfig, batch: int) -> list[dict[str, Any]]:
    """One timing per region from the rounds of :meth:`OpenJob.time_round` (each a list of region timings).

    One round is returned as it is. Several are pooled: every sample is kept and the run statistics (percentiles,
    spread, mean) are over all of them, but the median is the median of the round medians
    (:func:`~dlcbench.measure.timing.rounds_median`: every round weighs the same; the pooled runs' median, which
    weighs a round by how many runs fitted in its time, is kept as ``pooled_median_ms``) and its interval
    ``median_ci_ms`` is taken over the rounds (:func:`~dlcbench.measure.timing.rounds_interval`, the pooled
    runs' bootstrap kept as ``pooled_median_ci_ms``); whether the interval target was met is read from them.
    ``rounds`` lists each round's median, count, interval and machine load, ``stats["round_spread"]`` is
    (largest - smallest round median) / median, the drift between rounds, and ``stats["machine_load"]`` the
    largest load over the rounds (:func:`dlcbench.measure.machine.worst_load`).
    """
    if not rounds:
        raise BadInputError("no timed round to report")
    if len(rounds) == 1:
        return rounds[0]
    pooled = []
    for index, first in enumerate(rounds[0]):
        parts = [r[index] for r in rounds]
        samples = [s for part in parts for s in part["samples_s"]]
        stats = statistics(samples, batch)
        medians = [p["stats"]["median_ms"] for p in parts]
        stats["pooled_median_ms"] = stats["median_ms"]
        stats["median_ms"] = rounds_median(medians)
        stats["throughput_per_s"] = batch / (stats["median_ms"] / 1e3)
        stats["pooled_median_ci_ms"] = stats["median_ci_ms"]
        stats["median_ci_ms"] = rounds_interval(medians, pooled_ci=stats["pooled_median_ci_ms"])
        stats["ci_target"] = timing.ci_target or None
        stats["ci_target_met"] = ci_target_met(stats, timing.ci_target) if timing.ci_target else None
        stats["round_spread"] = (max(medians) - min(medians)) / stats["median_ms"] if stats["median_ms"] > 0 else 0.0
        load = worst_load([p["stats"].get("machine_load") for p in parts])
        if load:
            stats["machine_load"] = load
        entry = {key: value for key, value in first.items() if key not in ("samples_s", "warmup_runs", "stats")}
        pooled.append({**entry, "samples_s": samples, "warmup_runs": sum(p["warmup_runs"] for p in parts),
                       "stats": stats,
                       "rounds": [{"round": i + 1, "median_ms": p["stats"]["median_ms"], "count": p["stats"]["count"],
                                   "median_ci_ms": p["stats"].get("median_ci_ms"),
                                   **({"machine_load": p["stats"]["machine_load"]}
                                      if p["stats"].get("machine_load") else {})}
                                  for i, p in enumerate(parts)]})
    return pooled


def native_repeat(timing: TimingConfig, median_ms: float) -> int:
    """How many runs a backend's native timer gets: ``max(min_iters, 10)``, fewer when that would take more than a
    quarter of ``max_seconds`` at the host-timed median (a slow model is timed by the host clock already), never
    fewer than 3."""
    fits = int(timing.max_seconds / 4 / max(median_ms / 1e3, 1e-9))
    return max(3, min(max(timing.min_iters, 10), fits))


def time_regions(session, inputs: dict[str, Any], region: str, timing: TimingConfig, batch: int) -> list[dict[str, Any]]:
    """Times ``session`` on ``inputs`` in ``region`` (one of :data:`REGION_CHOICES`), one region after the other.

    ``resident`` times :meth:`~dlcbench.compilers.base.Session.run_prepared` after one
    :meth:`~dlcbench.compilers.base.Session.prepare`; ``end_to_end`` times :meth:`~dlcbench.compilers.base.Session.run`.
    A session without a resident region (``resident_region = False``) is timed end to end instead, and says so.

    Returns:
        One dict per region timed, ``resident`` first: :meth:`dlcbench.measure.timing.TimingResult.to_dict` plus
        ``region`` (and ``region_note`` when the region asked for could not be timed).
    """
    wanted = REGIONS if check_region(region) == "both" else (region,)
    note = {}
    if "resident" in wanted and "resident" not in session.regions:
        note = {"region_note": f"{type(session).__name__} has no resident region (resident_region = False); "
                               "timed end to end"}
        wanted = ("end_to_end",)
    timings = []
    for name in wanted:
        if name == "resident":
            session.prepare(inputs)
            run = session.run_prepared
        else:
            def run():
                return session.run(inputs)
        before = cpu_snapshot()
        result = measure(run, timing, batch=batch)
        load = machine_load(before, cpu_snapshot())
        if load:
            result.stats["machine_load"] = load
        cpus = current_cpus()  # where it ran: a thread pinned by its backend shows here
        timings.append({**result.to_dict(), "region": name, **note, **({"cpus": sorted(cpus)} if cpus else {})})
    return timings


def _built(config: JobConfig, manifest, model, export_seconds: float, artifact_dir: Path) -> dict[str, Any]:
    """The :class:`JobResult` fields of what was built: configuration, manifest, model, sizes and times."""
    from dlcbench.compilers.base import artifact_size

    return {
        "config": {**asdict(config), "out_dir": str(config.out_dir)}, "manifest": asdict(manifest),
        "model": {"name": model.name, "reference_source": model.meta["reference_source"],
                  "summary": model.meta["summary"], "inputs": model.meta.get("inputs", []),
                  "input_data": bool(model.meta.get("input_data")),
                  "export_dir": str(model.directory), "cache_hit": model.cache_hit},
        "compile_seconds": manifest.compile_seconds, "export_seconds": round(export_seconds, 4),
        "artifact_bytes": artifact_size(artifact_dir), "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def _compile_only_result(config: JobConfig, manifest, model, export_seconds: float, directory: Path) -> JobResult:
    """The result of a ``compile_only`` job; writes it, the inputs and the reference into the staged ``directory``."""
    result = JobResult(**_built(config, manifest, model, export_seconds, directory), check={}, timing={},
                       native_timing=None, passed=True)
    # The sample inputs and reference travel with the artifact, so it can be checked where it runs.
    shutil.copyfile(model.directory / "inputs.npz", directory / "inputs.npz")
    shutil.copyfile(model.directory / "reference.npz", directory / "reference.npz")
    (directory / "result.json").write_text(jsonio.dumps(result.to_dict(), indent=2, default=str))
    return result


def _ranges_line(inputs: list[dict]) -> list[str]:
    """The ``inputs`` summary line: each drawn integer input's range and where it came from (none: no line)."""
    ranged = [f"{i['name']} {i['dtype']} in [{i['range'][0]}, {i['range'][1]}) ({i['range_source']})"
              for i in inputs if i.get("range")]
    return ["inputs    " + "; ".join(ranged)] if ranged else []


def format_summary(result: JobResult) -> str:
    """A short human summary of a job."""
    if not result.timing:
        extra = result.manifest.get("extra") or {}
        archs = f"; device code: {', '.join(extra['device_code_archs'])}" if extra.get("device_code_archs") else ""
        return (f"backend   {result.manifest['backend']} {result.manifest['backend_version']} "
                f"({result.manifest['target']}, {result.manifest['precision']}, batch {result.manifest['batch']})\n"
                f"compile   {result.compile_seconds:.2f} s; artifact {result.artifact_bytes / 1e6:.2f} MB{archs}\n"
                f"check     skipped (--compile-only)")
    stats = result.timing["stats"]
    invalid = result.check.get("category") == "invalid_reference"
    verdict = "PASS" if result.passed else ("INVALID REFERENCE" if invalid else "FAIL")
    max_abs = max((o["metrics"].get("max_abs", 0.0) for o in result.check["outputs"]), default=0.0)
    trivial = "; ".join(f"output {o['name']}: {o['trivial']}" for o in result.check["outputs"] if o.get("trivial"))
    lines = [
        f"backend   {result.manifest['backend']} {result.manifest['backend_version']} "
        f"({result.manifest['target']}, {result.manifest['precision']}, batch {result.manifest['batch']})",
        f"model     {result.model['name']} (reference: {result.model['reference_source']})",
        *([] if result.model.get("input_data") else _ranges_line(result.model.get("inputs") or [])),
        f"compile   {result.compile_seconds:.2f} s; artifact {result.artifact_bytes / 1e6:.2f} MB",
        f"check     {verdict}; max abs error {max_abs:.3g}" + (f"; TRIVIAL CHECK ({trivial})" if trivial else "")
        + (f"; {result.check['note']}" if result.check.get("note") else ""),
        f"latency   median {stats['median_ms']:.4f} ms{_interval_text(stats)}, p90 {stats['p90_ms']:.4f} ms over "
        f"{stats['count']} runs; {stats['throughput_per_s']:.1f} items/s",
        _spread_text(stats),
    ]
    lines += _region_lines(result)
    if result.accuracy:
        a = result.accuracy
        lines.append(f"accuracy  top-1 {a['top1'] * 100:.2f}% (Keras {a['reference_top1'] * 100:.2f}%) on {a['rows']} "
                     f"held-out {a['dataset']} rows; drop {a['drop_points']:.2f} points (budget {a['budget_points']:g})")
    if result.native_timing:
        n = result.native_timing
        lines.append(
            f"native    {n['timer']}: median {n['stats']['median_ms']:.4f} ms (host/native {n['host_over_native']:.2f}x)"
        )
    if not result.passed:
        lines.append(f"failure   {result.failure_message}")
    return "\n".join(lines)


#: What each timed region includes, for the summary.
_REGION_TEXT = {"resident": "inputs staged once, outputs left in the backend",
                "end_to_end": "numpy in, numpy out, conversions and copies included"}


def _region_lines(result: JobResult) -> list[str]:
    """Which region the latency above is, and the end-to-end median when the job timed both."""
    region = result.timing.get("region")
    if region is None:
        return []
    note = f"; {result.timing['region_note']}" if result.timing.get("region_note") else ""
    lines = [f"region    {region} ({_REGION_TEXT.get(region, '?')}){note}"]
    other = result.timing_end_to_end
    if other:
        s = other["stats"]
        lines.append(f"e2e       median {s['median_ms']:.4f} ms{_interval_text(s)}, p90 {s['p90_ms']:.4f} ms over "
                     f"{s['count']} runs (end_to_end: {_REGION_TEXT['end_to_end']})")
    return lines


def _interval_text(stats: dict) -> str:
    """`` (95% CI lo-hi ms)``, with whether the interval target was met, where the stats have them."""
    if not stats.get("median_ci_ms"):
        return ""
    lo, hi = stats["median_ci_ms"]
    target = stats.get("ci_target")
    missed = f", wider than the +-{target * 100:g}% target" if target and stats.get("ci_target_met") is False else ""
    return f" (95% CI {lo:.4f}-{hi:.4f}{missed})"


def _spread_text(stats: dict) -> str:
    """The stability line: robust spread (what UNSTABLE is read from) and the coefficient of variation, in percent."""
    from dlcbench.measure.timing import SPREAD_FLAG

    spread = f"(p90-p10)/median {stats['spread'] * 100:.1f}%, " if "spread" in stats else ""
    flag = f"; UNSTABLE (spread above {SPREAD_FLAG * 100:g}%)" if stats["unstable"] else ""
    load = stats.get("machine_load")
    busy = (f"; meanwhile other processes used {load['others_cpu_pct']:.0f}% of the machine's CPU time and the "
            f"hypervisor took {load['steal_pct']:.0f}%" if load else "")
    return f"spread    {spread}cv (std/mean) {stats['cv'] * 100:.1f}%{flag}{busy}"
