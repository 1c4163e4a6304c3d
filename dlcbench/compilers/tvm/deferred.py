"""A deferred MetaSchedule tuning round: candidates sampled and built here, measured there, committed here.

MetaSchedule measures each batch of candidates before it samples the next, on a machine that has TVM. A GPU
machine reached through a stage has only ``tvm_ffi`` and TVM's runtime libraries, and this machine cannot run
CUDA code; so one round is split in three:

1. :func:`export_round` (here, with TVM): the model's tasks are extracted as :func:`dlcbench.compilers.tvm.tuning.
   tune_module` extracts them; for each, MetaSchedule's own search (the post-order-apply space generator and the
   search strategy, evolutionary by default, its cost model first trained on the database's records of the task)
   samples ``trials_per_task`` candidates, which MetaSchedule's builder interface compiles and links into shared
   libraries (the target machine cannot link). The round directory holds ``round.json`` and the libraries.
2. :func:`measure_round` (there, without TVM): each library is loaded with ``tvm_ffi``, given random arguments of
   its ``args_info`` and timed with ``runtime.RPCTimeEvaluator`` (:meth:`Runtime.time_function`), one task per
   worker process by default, so a candidate that crashes costs only itself; the times go to ``measurements.json``.
3. :func:`commit_round` (here, with TVM): each measured candidate becomes a ``TuningRecord`` of the database, as
   MetaSchedule's ``AddToDatabase`` callback would have written it (failures with its 1e10 s stub), so the next
   round's search and the tuned compile (:func:`dlcbench.compilers.tvm.tuning.apply_database`) pick the best.

``round.json`` (``dlcbench-tuning-round/1``)::

    {"format", "round_id", "tvm_version", "target": {target dict}, "device": "cpu"|"cuda", "threads",
     "trials_per_task", "strategy", "cost_model", "population", "generations", "seed",
     "tasks": [{"index", "name", "weight", "flops", "error": null|str,
                "workload": {"shash": "0x...", "mod": tvm.ir.save_json(IRModule)},
                "baseline": null | {"id", "library", "entry", "args_info"},   # the unscheduled task, for reference
                "candidates": [{"id", "library": "candidates/<id>.so"|null, "build_error": null|str,
                                "entry": "main", "trace": Trace.as_json(), "args_info": [ArgInfo.as_json()...]}]}]}

``measurements.json`` (``dlcbench-tuning-measurements/1``)::

    {"format", "round_id", "device", "device_id", "device_name", "repeat", "number", "min_repeat_ms", "seconds",
     "candidates": {"<id>": {"run_secs": [float...]} | {"error": "one line"}}}

Only :func:`measure_round` and what it imports run on the target: this module imports no ``tvm`` at its top.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dlcbench.cpus import restore_affinity, worker_env
from dlcbench.compilers.tvm.tuning import SEARCH_GENERATIONS, SEARCH_POPULATION
from dlcbench.errors import BadInputError, CompileError, DlcbenchError, one_line

ROUND_FORMAT = "dlcbench-tuning-round/1"
MEASUREMENTS_FORMAT = "dlcbench-tuning-measurements/1"
ROUND_FILE = "round.json"
MEASUREMENTS_FILE = "measurements.json"
CANDIDATE_DIR = "candidates"
#: MetaSchedule's stand-in run time of a candidate that failed (``SortTuningRecordByMeanRunSecs::kMaxMeanTime``).
FAILED_RUN_SECS = 1e10


# --------------------------------------------------------------------------------------------------------------
# Here: sample and build


def _model_module(model, input_shapes, separate_params: bool, fast_math: bool, conv_layout: str | None = None):
    """A Relax IRModule of ``model`` as the adapter's ``_compile`` builds it before tuning (``conv_layout``: as
    :func:`~dlcbench.compilers.tvm.tuning.convert_conv_layout` for a cpu target, None for others)."""
    import tvm

    if isinstance(model, tvm.IRModule):
        mod = model
    else:
        import onnx

        from dlcbench.compilers.tvm.adapter import import_onnx

        if hasattr(model, "onnx_path") and hasattr(model, "meta"):  # an ExportedModel
            if input_shapes is None:
                if model.meta.get("fixed_shapes"):
                    input_shapes = {i["name"]: list(i["shape"]) for i in model.meta["inputs"]}
                else:
                    input_shapes = {i["name"]: [model.batch, *i["shape"][1:]] for i in model.meta["inputs"]}
            model = model.onnx_path
        proto = onnx.load(str(model)) if isinstance(model, (str, os.PathLike)) else model
        if input_shapes is None:
            input_shapes = _static_onnx_shapes(proto)
        mod, _params = import_onnx(proto, input_shapes, separate_params)
        if conv_layout:
            from dlcbench.compilers.tvm.tuning import convert_conv_layout

            mod, _params, _layout = convert_conv_layout(mod, _params, conv_layout)
    if fast_math:
        from tvm import relax

        mod = relax.transform.FastMathTransform()(mod)
    # Parameter names become kernel argument names: ONNX's ("dense/kernel:0") are no C identifiers, which nvcc
    # refuses (the CUDA compile renames them too; structural equality of the tasks ignores names).
    from dlcbench.compilers.tvm.cuda import sanitize_param_names

    return sanitize_param_names(mod)


def _static_onnx_shapes(proto) -> dict[str, list[int]]:
    initializers = {i.name for i in proto.graph.initializer}
    shapes = {}
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
        if any(d is None or d <= 0 for d in dims):
            raise BadInputError(f"ONNX input {value.name} has dynamic dimensions {dims}: give input_shapes")
        shapes[value.name] = dims
    return shapes


def _fresh_dir(out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise BadInputError(f"round directory {out_dir} exists and is not empty; give a new one")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def _build_shared(mod, target):
    """Builds a candidate into a linked shared library (MetaSchedule's ``default_build`` exports a tar of objects
    for a runner that links; the target machine cannot link). CUDA device code goes through ``nvcc``."""
    import tvm
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    path = os.path.join(tempfile.mkdtemp(prefix="dlcbench-deferred-"), "candidate.so")
    if target.kind.name == "cuda":
        from dlcbench.compilers.tvm.cuda import scoped_env, ensure_cuda_codegen, find_nvcc

        import tvm.support.nvcc  # noqa: F401  registers tvm_callback_cuda_compile

        nvcc = find_nvcc()
        if nvcc is None:
            raise RuntimeError("nvcc (CUDA toolkit) not found; needed to build CUDA candidates")
        ensure_cuda_codegen()
        path_env = os.path.dirname(nvcc) + os.pathsep + os.environ.get("PATH", "")
        # nvcc's arch comes from the current target (``-arch=sm_XX``), as in cuda.compile_cuda.
        with scoped_env(TVM_CUDA_COMPILE_MODE="nvcc", TVM_COMPILE_FORCE_FALLBACK=None, PATH=path_env), target:
            lib = tvm.compile(mod, target=target)
    else:
        lib = tvm.compile(mod, target=target)
    lib.export_library(path)
    return path


def _plain(value):
    """TVM containers and immediates (``Array``, ``Map``, ``IntImm``) as plain JSON values, other objects as their
    ``tvm.ir.save_json`` string."""
    import tvm_ffi
    from tvm.tirx import FloatImm, IntImm

    if isinstance(value, (IntImm, FloatImm)):
        return value.value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (list, tuple, tvm_ffi.Array)):
        return [_plain(v) for v in value]
    if isinstance(value, (dict, tvm_ffi.Map)):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tvm_ffi.Object):
        # What MetaSchedule's JSON database writes for an object in a trace (an IndexMap of TransformLayout): its
        # JSON graph as a string, which the trace's reader parses back.
        import tvm

        return tvm.ir.save_json(value)
    return value


def _entry_name(mod) -> str:
    names = [gv.name_hint for gv in mod.functions]
    return "main" if "main" in names or len(names) != 1 else names[0]


def _cost_model(kind: str, ctx, database):
    """The search's cost model, first trained on the database's measured records of the task (warm start)."""
    from tvm.s_tir import meta_schedule as ms

    extra = {"num_tuning_cores": 1} if kind == "xgb" else {}
    model = ms.cost_model.CostModel.create(kind, **extra)
    if kind == "random" or not database.has_workload(ctx.mod):
        return model, 0
    records = database.get_top_k(database.commit_workload(ctx.mod), 100_000)
    if not records:
        return model, 0
    candidates, results = [], []
    for record in records:
        try:
            candidates.append(record.as_measure_candidate())
        except Exception:  # a record whose trace no longer applies
            continue
        results.append(ms.runner.RunnerResult(run_secs=record.run_secs, error_msg=None))
    if candidates:
        model.update(ctx, candidates, results)
    return model, len(candidates)


def export_round(model, target_dict: dict[str, Any], database_dir: Path, trials_per_task: int, out_dir: Path, *,
                 input_shapes: dict[str, list[int]] | None = None, prepared: bool = False,
                 separate_params: bool = True, fast_math: bool = True, strategy: str = "evolutionary",
                 cost_model: str = "xgb", population: int = SEARCH_POPULATION,
                 generations: int = SEARCH_GENERATIONS, seed: int = 0,
                 baseline: bool = True, builder_timeout_s: float = 120.0, workers: int | None = None,
                 max_tasks: int | None = None, conv_layout: str = "NHWC",
                 progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Samples and builds one round of candidates per task into a fresh ``out_dir`` (see the module docstring).

    Args:
        model: An :class:`~dlcbench.models.export.ExportedModel`, an ONNX path or ``ModelProto`` (imported as the
            TVM adapter imports it, with ``separate_params`` and ``fast_math`` as its options), or a Relax
            ``IRModule`` (``prepared``: already through :func:`~dlcbench.compilers.tvm.tuning.prepare_module`).
        target_dict: The target as dlcbench builds it (``cpu_target(...)``, or ``{"kind": "cuda", "arch": ...}``
            with MetaSchedule's CUDA attributes, e.g. a ``tag``).
        database_dir: The MetaSchedule database to warm-start from and later commit into (created if absent).
        trials_per_task: Candidates sampled per task.
        out_dir: The round directory; must not exist or be empty.
        strategy, cost_model, population, generations: The search, as
            :class:`~dlcbench.compilers.tvm.tuning.TuningConfig` takes them.
        baseline: Also build each task unscheduled (what an untuned compile runs), measured for reference only.
        max_tasks: Only the heaviest tasks by FLOPs (None: all).
        conv_layout: Convolution layout of a cpu target's module (the TVM adapter's ``conv_layout`` option: the
            compile that applies the round must use the same one).

    Returns:
        The ``round.json`` content.

    Raises:
        BadInputError: a non-empty ``out_dir``, a bad budget, or a database of another target.
    """
    if trials_per_task <= 0:
        raise BadInputError("trials_per_task must be positive")
    out_dir = _fresh_dir(out_dir)
    say = progress or (lambda line: None)
    try:
        return _export_round(model, target_dict, Path(database_dir), trials_per_task, out_dir, say,
                             input_shapes=input_shapes, prepared=prepared, separate_params=separate_params,
                             fast_math=fast_math, strategy=strategy, cost_model=cost_model, population=population,
                             generations=generations, seed=seed, baseline=baseline,
                             builder_timeout_s=builder_timeout_s, workers=workers, max_tasks=max_tasks,
                             conv_layout=conv_layout)
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)  # no half-written round to measure
        raise


def _export_round(model, target_dict, database_dir, trials_per_task, out_dir, say, *, input_shapes, prepared,
                  separate_params, fast_math, strategy, cost_model, population, generations, seed, baseline,
                  builder_timeout_s, workers, max_tasks, conv_layout):
    from importlib import metadata

    import tvm
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.relax_integration import extract_tasks

    from dlcbench.compilers.tvm import tuning

    target = tvm.target.Target(target_dict)
    mod = model if prepared else tuning.prepare_module(
        _model_module(model, input_shapes, separate_params, fast_math,
                      conv_layout if target_dict.get("kind") == "llvm" else None), target)
    database = tuning.open_database(database_dir, target_dict, create=True)
    tasks = extract_tasks(mod, target)
    plans = tuning.plan_tasks(tasks, database)
    order = sorted(range(len(tasks)), key=lambda i: -plans[i].flops)
    tunable = [i for i in order if not tasks[i].mod.attrs.get("tirx.is_scheduled", False)]
    if max_tasks is not None:
        tunable = tunable[:max_tasks]
    config = tuning.TuningConfig(trials=trials_per_task, db=database_dir, strategy=strategy, cost_model=cost_model,
                                 population=population, generations=generations, seed=seed,
                                 builder_timeout_s=builder_timeout_s)
    if cost_model == "xgb" or strategy == "evolutionary":
        tuning.require_tuning_deps(cost_model)
    restore_affinity()
    cores = workers or os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="dlcbench-deferred-"))
    entries: list[dict[str, Any]] = []
    jobs: list[tuple[dict[str, Any], Any]] = []  # (entry to fill, scheduled IRModule)
    try:
        contexts = tuning.tune_contexts([tasks[i] for i in tunable], work, config, cores, target_dict)
        tuning.quiet_meta_schedule()
        for i, ctx in zip(tunable, contexts):
            task, plan = tasks[i], plans[i]
            workload = task.dispatched[0]
            entry: dict[str, Any] = {
                "index": i, "name": task.task_name, "weight": int(task.weight), "flops": plan.flops,
                "records_before": plan.existing, "error": None,
                "workload": {"shash": f"0x{tvm_ffi.structural_hash(workload) & (2**64 - 1):016x}",
                             "mod": tvm.ir.save_json(workload)},
                "baseline": None, "candidates": [],
            }
            entries.append(entry)
            tag = f"t{len(entries) - 1:02d}"
            if baseline:
                base = {"id": f"{tag}-default", "entry": _entry_name(workload), "args_info": [
                    _plain(a.as_json()) for a in ms.arg_info.ArgInfo.from_prim_func(workload[_entry_name(workload)])]}
                entry["baseline"] = base
                jobs.append((base, workload))
            try:
                spaces = ctx.generate_design_space()
                model_, warm = _cost_model(cost_model, ctx, database)
                ctx.pre_tuning(max_trials=trials_per_task, num_trials_per_iter=trials_per_task,
                               design_spaces=spaces, database=database, cost_model=model_)
                candidates = list(ctx.generate_measure_candidates() or [])
                ctx.post_tuning()
            except Exception as err:  # a task MetaSchedule cannot schedule keeps its default schedule
                entry["error"] = one_line(err, 300)
                say(f"round: task {task.task_name} has no candidates: {entry['error']}")
                continue
            entry["warm_start_records"] = warm
            for c, cand in enumerate(candidates):
                # As a database record holds them (the trace with its postprocessing), for commit_round to read back.
                info = {"id": f"{tag}-c{c:03d}", "entry": _entry_name(cand.sch.mod),
                        "trace": _plain(cand.sch.trace.as_json(remove_postproc=False)),
                        "args_info": [_plain(a.as_json()) for a in cand.args_info]}
                entry["candidates"].append(info)
                jobs.append((info, cand.sch.mod))
            say(f"round: task {task.task_name}: {len(candidates)} candidates")
        _build_all(jobs, target, out_dir, cores, builder_timeout_s, say)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    round_doc = {
        "format": ROUND_FORMAT, "round_id": uuid.uuid4().hex, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "tvm_version": metadata.version("apache-tvm"), "target": target_dict,
        "device": "cuda" if target.kind.name == "cuda" else "cpu", "threads": int(target_dict.get("num-cores", 0)),
        "trials_per_task": trials_per_task, "strategy": strategy, "cost_model": cost_model,
        "population": population, "generations": generations, "seed": seed,
        "database": str(database_dir), "tasks": entries,
    }
    (out_dir / ROUND_FILE).write_text(json.dumps(round_doc, indent=1))
    return round_doc


def _build_all(jobs, target, out_dir: Path, workers: int, timeout_s: float, say) -> None:
    """Builds every job through MetaSchedule's builder interface (a pooled ``PyBuilder``), into ``candidates/``."""
    from tvm.s_tir.meta_schedule.builder import BuilderInput

    from dlcbench.compilers.tvm import tuning

    (out_dir / CANDIDATE_DIR).mkdir()
    if not jobs:
        return
    builder = tuning.make_builder(workers=workers, timeout_s=timeout_s, build=_build_shared)
    try:
        results = builder.build([BuilderInput(mod, target) for _, mod in jobs])
    finally:
        builder.shutdown()
    failed = 0
    for (info, _), result in zip(jobs, results):
        if result.error_msg is not None or not result.artifact_path:
            flat = " ".join(str(result.error_msg).split())
            info["library"], info["build_error"] = None, flat if len(flat) <= 400 else "..." + flat[-397:]  # the cause
            failed += 1
            continue
        rel = f"{CANDIDATE_DIR}/{info['id']}.so"
        shutil.move(result.artifact_path, out_dir / rel)
        shutil.rmtree(os.path.dirname(result.artifact_path), ignore_errors=True)
        info["library"], info["build_error"] = rel, None
    say(f"round: built {len(jobs) - failed} of {len(jobs)} libraries")


# --------------------------------------------------------------------------------------------------------------
# There: measure with tvm_ffi and the runtime libraries only


def read_round(round_dir: Path) -> dict[str, Any]:
    """``round.json`` of ``round_dir``, checked for its format."""
    file = Path(round_dir) / ROUND_FILE
    try:
        doc = json.loads(file.read_text())
    except FileNotFoundError:
        raise BadInputError(f"no {ROUND_FILE} in {round_dir}") from None
    except (OSError, ValueError) as err:
        raise BadInputError(f"unreadable {file}: {one_line(err, 200)}") from None
    if doc.get("format") != ROUND_FORMAT:
        raise BadInputError(f"{file} is not a {ROUND_FORMAT} file (format {doc.get('format')!r})")
    return doc


def _arguments(runtime, args_info: list, dev, rng: np.random.Generator) -> list:
    """Random tensors of the candidate's ``args_info`` (``["TENSOR", dtype, shape]``) on ``dev``.

    Floats are uniform in [-1, 1); integers and booleans are zero, which every index is valid for (random indices
    of a gather would read out of bounds).
    """
    args = []
    for info in args_info:
        if not (isinstance(info, list) and len(info) == 3 and info[0] == "TENSOR"):
            raise BadInputError(f"unsupported argument info {info!r}")
        dtype, shape = str(info[1]), [int(d) for d in info[2]]
        if dtype.startswith(("float", "bfloat")):
            host = rng.uniform(-1, 1, size=shape).astype("float32")
            if dtype != "float32":
                host = host.astype(dtype) if dtype != "bfloat16" else None
            if host is None:  # numpy has no bfloat16: its bits are the top half of float32's
                bits = rng.uniform(-1, 1, size=shape).astype("float32").view(np.uint32) >> 16
                tensor = runtime._alloc(runtime.ffi.Shape(shape), runtime.ffi.dtype(dtype), dev, None)
                data = np.ascontiguousarray(bits.astype(np.uint16))
                runtime._copy_from(tensor, data.ctypes.data, data.nbytes)
                args.append(tensor)
                continue
        else:
            host = np.zeros(shape, dtype="bool" if dtype == "bool" else dtype)
        args.append(runtime.to_device(host, dev))
    return args


def _measure_one(runtime, round_dir: Path, cand: dict[str, Any], dev, repeat: int, number: int,
                 min_repeat_ms: int, rng) -> dict[str, Any]:
    if not cand.get("library"):
        return {"error": f"not built: {cand.get('build_error') or 'no library'}"}
    try:
        module = runtime.ffi.load_module(str(Path(round_dir) / cand["library"]))
        args = _arguments(runtime, cand["args_info"], dev, rng)
        secs = runtime.time_function(module, cand.get("entry") or "main", dev, args, repeat, number, min_repeat_ms)
        runtime.sync(dev)
    except DlcbenchError as err:
        return {"error": str(err)}
    except Exception as err:  # tvm_ffi raises RuntimeError subclasses; a bad kernel, a CUDA error
        return {"error": f"{type(err).__name__}: {one_line(err, 300)}"}
    if not secs or any(not np.isfinite(s) or s <= 0 for s in secs):
        return {"error": f"bad timings {secs}"}
    return {"run_secs": [float(s) for s in secs]}


def _candidates_of(task: dict[str, Any]) -> list[dict[str, Any]]:
    return ([task["baseline"]] if task.get("baseline") else []) + list(task.get("candidates", []))


def measure_round(round_dir: Path, runtime, repeat: int = 3, number: int = 1, min_repeat_ms: int = 20,
                  device_id: int = 0, isolate: bool = True, timeout_s: float = 600.0, write: bool = True,
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Times every candidate of a round with the TVM runtime alone (see the module docstring).

    Args:
        round_dir: What :func:`export_round` wrote.
        runtime: A :class:`dlcbench.compilers.tvm.runtime_only.Runtime`.
        repeat, number, min_repeat_ms: ``runtime.RPCTimeEvaluator``'s: ``repeat`` times are returned, each the
            mean of ``number`` runs, ``number`` grown until a repeat takes ``min_repeat_ms``.
        isolate: Each task in a worker process (this Python, ``tvm`` kept out); one that dies costs the candidate
            it was timing, and a fresh worker goes on with the rest. False: all in this process, exceptions caught.
        timeout_s: A worker's limit per task.
        write: Also write ``measurements.json`` into ``round_dir``.

    Returns:
        The ``measurements.json`` content.
    """
    round_dir = Path(round_dir)
    doc = read_round(round_dir)
    say = progress or (lambda line: None)
    start = time.perf_counter()
    if doc.get("device") != "cuda" and doc.get("threads"):
        runtime.set_threads(int(doc["threads"]))
    results: dict[str, dict[str, Any]] = {}
    for t, task in enumerate(doc["tasks"]):
        cands = _candidates_of(task)
        if not cands:
            continue
        if isolate:
            results.update(_measure_task_isolated(runtime, round_dir, t, cands, doc, device_id, repeat, number,
                                                  min_repeat_ms, timeout_s))
        else:
            dev = runtime.device(doc.get("device", "cpu"), device_id)
            rng = np.random.default_rng(t)
            for cand in cands:
                results[cand["id"]] = _measure_one(runtime, round_dir, cand, dev, repeat, number, min_repeat_ms, rng)
        ok = [min(results[c["id"]]["run_secs"]) for c in cands if "run_secs" in results.get(c["id"], {})]
        say(f"measured task {task['name']}: {len(cands)} candidates, best {min(ok) * 1e6:.1f} us" if ok else
            f"measured task {task['name']}: no candidate ran")
    out = {"format": MEASUREMENTS_FORMAT, "round_id": doc["round_id"], "device": doc.get("device", "cpu"),
           "device_id": device_id, "device_name": _device_name(runtime, doc.get("device", "cpu"), device_id),
           "repeat": repeat, "number": number, "min_repeat_ms": min_repeat_ms,
           "seconds": round(time.perf_counter() - start, 3), "candidates": results}
    if write:
        (round_dir / MEASUREMENTS_FILE).write_text(json.dumps(out, indent=1))
    return out


def _device_name(runtime, device: str, device_id: int) -> str:
    """The GPU's name, or this host's name and CPU model."""
    import platform

    if device == "cuda":
        return str(runtime.cuda_info(device_id).get("device_name") or f"cuda:{device_id}")
    model = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()} ({model})"


def _measure_task_isolated(runtime, round_dir: Path, t: int, cands, doc, device_id, repeat, number, min_repeat_ms,
                           timeout_s) -> dict[str, dict[str, Any]]:
    """Runs :func:`_worker` on the task's candidates until each has a result; a worker that dies (a segfault,
    a CUDA context lost) is charged to the candidate it had started, and a new one takes the rest."""
    results: dict[str, dict[str, Any]] = {}
    todo = [c["id"] for c in cands]
    with tempfile.TemporaryDirectory(prefix="dlcbench-measure-") as tmp:
        while todo:
            log = Path(tmp) / f"task{t}-{len(results)}.jsonl"
            spec = {"round_dir": str(round_dir), "task": t, "ids": todo, "lib_dir": str(runtime.lib_dir),
                    "threads": doc.get("threads") or None, "device": doc.get("device", "cpu"),
                    "device_id": device_id, "repeat": repeat, "number": number, "min_repeat_ms": min_repeat_ms,
                    "log": str(log)}
            code = ("import sys; sys.modules['tvm'] = None\n"
                    "from dlcbench.compilers.tvm.deferred import _worker\n"
                    "_worker(sys.argv[1])\n")
            restore_affinity()  # set_threads may have bound this thread to one core: the worker gets all of ours
            try:
                proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True,
                                      timeout=timeout_s, env={**os.environ, **worker_env()})
                died = proc.returncode != 0
                how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
                last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
                why = f"worker died ({how}): {one_line(last, 200)}" if last else f"worker died ({how})"
            except subprocess.TimeoutExpired:
                died, why = True, f"worker timed out after {timeout_s:g} s"
            started = None
            if log.is_file():
                for line in log.read_text().splitlines():
                    try:
                        item = json.loads(line)
                    except ValueError:
                        continue
                    if "start" in item:
                        started = item["start"]
                    else:
                        results[item["id"]] = item["result"]
                        started = None
            todo = [i for i in todo if i not in results]
            if not todo:
                break
            if not died:  # finished without reporting some: should not happen, but never loop forever
                for i in todo:
                    results[i] = {"error": "the worker reported no result"}
                break
            victim = started if started in todo else todo[0]
            results[victim] = {"error": why}
            todo = [i for i in todo if i != victim]
    return results


def _worker(spec_json: str) -> None:
    """A worker process's task: measure ``ids``, appending ``{"start": id}`` then ``{"id", "result"}`` lines."""
    from dlcbench.compilers.tvm.runtime_only import Runtime

    spec = json.loads(spec_json)
    round_dir = Path(spec["round_dir"])
    doc = read_round(round_dir)
    task = doc["tasks"][spec["task"]]
    by_id = {c["id"]: c for c in _candidates_of(task)}
    runtime = Runtime(Path(spec["lib_dir"]), spec.get("threads"))
    if spec["device"] != "cuda" and spec.get("threads"):
        runtime.set_threads(int(spec["threads"]))
    dev = runtime.device(spec["device"], spec["device_id"])
    rng = np.random.default_rng(spec["task"])
    with open(spec["log"], "a") as log:
        for cid in spec["ids"]:
            log.write(json.dumps({"start": cid}) + "\n")
            log.flush()
            result = _measure_one(runtime, round_dir, by_id[cid], dev, spec["repeat"], spec["number"],
                                  spec["min_repeat_ms"], rng)
            log.write(json.dumps({"id": cid, "result": result}) + "\n")
            log.flush()


# --------------------------------------------------------------------------------------------------------------
# Here: commit


def read_measurements(source) -> dict[str, Any]:
    """A measurements dict, or ``measurements.json`` read from a file or round directory."""
    if isinstance(source, dict):
        doc = source
    else:
        path = Path(source)
        path = path / MEASUREMENTS_FILE if path.is_dir() else path
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise BadInputError(f"unreadable measurements {path}: {one_line(err, 200)}") from None
    if doc.get("format") != MEASUREMENTS_FORMAT:
        raise BadInputError(f"not a {MEASUREMENTS_FORMAT} document (format {doc.get('format')!r})")
    return doc


def commit_round(round_dir: Path, measurements, database_dir: Path, measured_on: str | None = None) -> dict[str, Any]:
    """Commits a measured round into the MetaSchedule database.

    Every candidate with a measurement becomes a ``TuningRecord`` (its trace replayed on the committed workload,
    ``run_secs``, the round's target and ``args_info``); a failed one is committed with MetaSchedule's 1e10 s stub,
    as ``AddToDatabase`` does, so that it counts as a trial spent and is never chosen. Baselines are not committed.

    Args:
        measurements: :func:`measure_round`'s dict, or a path to ``measurements.json`` or to the round directory.
        measured_on: Where the times come from, added to the database's ``dlcbench-measured-on.json``
            (default: ``deferred <device> <device_name>``, as the measurements name it).

    Returns:
        ``{"committed", "failed", "skipped", "tasks": [{"name", "measured", "failed", "best_secs", "default_secs",
        "best_id"}]}``: ``committed`` counts the records with times, ``failed`` those with the stub, ``skipped``
        the candidates the measurements do not mention (not committed).

    Raises:
        BadInputError: measurements of another round, or a database of another target.
    """
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from dlcbench.compilers.tvm import tuning

    doc = read_round(round_dir)
    meas = read_measurements(measurements)
    if meas.get("round_id") != doc["round_id"]:
        raise BadInputError(f"measurements of round {meas.get('round_id')} do not belong to round {doc['round_id']}")
    database = tuning.open_database(Path(database_dir), doc["target"], create=True)
    target = tvm.target.Target(doc["target"])
    target_json = target.export()
    results = meas["candidates"]
    summary: dict[str, Any] = {"committed": 0, "failed": 0, "skipped": 0, "tasks": []}
    for task in doc["tasks"]:
        row = {"name": task["name"], "measured": 0, "failed": 0, "best_secs": None, "best_id": None,
               "default_secs": None, "error": task.get("error")}
        base = task.get("baseline")
        if base and "run_secs" in results.get(base["id"], {}):
            row["default_secs"] = float(np.mean(results[base["id"]]["run_secs"]))
        if task.get("candidates"):
            workload = database.commit_workload(tvm.ir.load_json(task["workload"]["mod"]))
        for cand in task.get("candidates", []):
            result = results.get(cand["id"])
            if result is None:
                summary["skipped"] += 1
                continue
            ok = "run_secs" in result
            run_secs = [float(s) for s in result["run_secs"]] if ok else [FAILED_RUN_SECS]
            try:
                record = ms.database.TuningRecord.from_json(
                    [cand["trace"], run_secs, target_json, cand["args_info"]], workload)
            except Exception as err:  # a trace that does not replay on the workload
                raise CompileError(f"candidate {cand['id']} of {task['name']} does not replay on its workload: "
                                   f"{one_line(err, 300)}") from None
            database.commit_tuning_record(record)
            if ok:
                summary["committed"] += 1
                row["measured"] += 1
                mean = float(np.mean(run_secs))
                if row["best_secs"] is None or mean < row["best_secs"]:
                    row["best_secs"], row["best_id"] = mean, cand["id"]
            else:
                summary["failed"] += 1
                row["failed"] += 1
        summary["tasks"].append(row)
    if summary["committed"] or summary["failed"]:
        tuning.record_measured_on(Path(database_dir),
                                  measured_on or f"deferred {meas.get('device', 'cpu')} {meas.get('device_name', '?')}")
    return summary


__all__ = ["export_round", "measure_round", "commit_round", "read_round", "read_measurements",
           "ROUND_FORMAT", "MEASUREMENTS_FORMAT"]
