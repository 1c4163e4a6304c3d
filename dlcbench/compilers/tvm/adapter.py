"""Apache TVM (Relax): ``from_onnx`` -> ``tvm.compile`` -> ``relax.VirtualMachine``.

TVM 0.27 has no Relay, AutoTVM or graph executor. Targets are JSON dicts; the
CPU target carries the host ``mcpu`` (a plain ``{"kind": "llvm"}`` is a generic
CPU without AVX-512) and ``num-cores``. Weights are kept apart from the code
(``params.npz``) so artifacts stay small and code can be shared across weights.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from dlcbench import jsonio
from dlcbench.config import positive_int, positive_seconds
from dlcbench.cpus import pin_apart_from_pinned_threads
from dlcbench.errors import (
    BackendRuntimeError,
    BackendUnavailableError,
    BadInputError,
    CompileError,
    DlcbenchError,
    UnsupportedOpError,
    one_line,
)

from dlcbench.compilers.base import Adapter, Availability, CompileOptions, Manifest, Session
from dlcbench.compilers.tvm.tuning import SEARCH_GENERATIONS, SEARCH_POPULATION

CUDA_ARCHS = ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120")


@dataclass
class TvmOptions(CompileOptions):
    """TVM options.

    Attributes:
        mcpu: LLVM CPU name for the ``cpu`` target; ``None`` = this host's CPU.
        arch: CUDA architecture for the ``cuda`` target (``sm_90`` for H100/H200).
        separate_params: Keep weights in ``params.npz`` instead of baking them into the library.
        tune_trials: MetaSchedule trials for this model (0 = no tuning); records already in the database count.
        tune_minutes: MetaSchedule time budget; tuning stops cleanly with the best so far.
        tuning_db: MetaSchedule database directory to use (import/export); default: one per target under the cache.
            Given without a budget, its records are applied without tuning.
        tune_strategy: MetaSchedule search strategy (``evolutionary``, ``replay-trace``, ``replay-func``).
        tune_cost_model: ``xgb``, ``mlp`` or ``random``.
        tune_population, tune_generations: The evolutionary search's population and generations per round
            (:class:`dlcbench.compilers.tvm.tuning.TuningConfig`'s ``population`` and ``generations``).
        fast_math: On the cpu target, erf, exp, tanh and softmax use TOPI's vectorisable polynomial
            approximations (``relax.transform.FastMathTransform``), as ONNX Runtime's MLAS kernels do;
            outputs are still checked against the reference. Exact libm ``erff`` made BERT's GELU a fifth
            of its tuned latency.
        conv_layout: Layout of 2-D convolutions when tuning for the cpu target: ``NHWC`` (default; weights
            transposed once at compile time; quantized models keep NCHW) or ``NCHW`` as imported. A tuning
            database only applies to modules of the layout it was tuned with. The manifest's ``conv_layout``
            says which one a model with convolutions was tuned in (absent with ``NCHW``).
        rpc_tracker, rpc_key: Measure on TVM RPC servers instead of this machine (``HOST:PORT`` of a tracker and
            the servers' key, both or neither; :mod:`dlcbench.compilers.tvm.rpc`): MetaSchedule builds here and
            measures its candidates on every server of the key in parallel, and the artifact is then uploaded,
            checked and timed on a server. The code is built for ``mcpu`` (give the remote CPU's; default: this
            host's).
    """

    mcpu: str | None = None
    arch: str = "sm_90"
    separate_params: bool = True
    tune_trials: int = 0
    tune_minutes: float = 0.0
    tuning_db: str | None = None
    tune_strategy: str = "evolutionary"
    tune_cost_model: str = "xgb"
    tune_population: int = SEARCH_POPULATION
    tune_generations: int = SEARCH_GENERATIONS
    fast_math: bool = True
    conv_layout: str = "NHWC"
    rpc_tracker: str | None = None
    rpc_key: str | None = None

    def __post_init__(self):
        super().__post_init__()
        from dlcbench.compilers.tvm.rpc import parse_tracker

        if parse_tracker(self.rpc_tracker, self.rpc_key) is not None and self.target != "cpu":
            raise BadInputError("--rpc-tracker measures cpu targets only (cuda artifacts go through a stage)")
        if self.arch not in CUDA_ARCHS:
            raise BadInputError(f"unknown CUDA arch {self.arch!r}; valid: {', '.join(CUDA_ARCHS)}")
        if self.tune_trials < 0:
            raise BadInputError(f"tune_trials must be non-negative, got {self.tune_trials}")
        positive_seconds("tune_minutes", self.tune_minutes, allow_zero=True)
        positive_int("tune_population", self.tune_population)
        if isinstance(self.tune_generations, bool) or not isinstance(self.tune_generations, int) \
                or self.tune_generations < 0:
            raise BadInputError(f"tune_generations must be an integer of 0 or more, got {self.tune_generations!r}")
        from dlcbench.compilers.tvm.tuning import CONV_LAYOUTS

        if self.conv_layout not in CONV_LAYOUTS:
            raise BadInputError(f"unknown conv_layout {self.conv_layout!r}; valid: {', '.join(CONV_LAYOUTS)}")
        if not isinstance(self.fast_math, bool):
            raise BadInputError(f"fast_math must be true or false, got {self.fast_math!r}")
        if self.target == "cuda" and (self.tune_trials or self.tune_minutes):
            raise BadInputError("MetaSchedule cannot measure cuda candidates on this machine: tune through a stage's "
                                "deferred round (dlcbench stage --tuning-trials N), then give its database as tuning_db")

    @property
    def tracker(self):
        """The :class:`dlcbench.compilers.tvm.rpc.Tracker` to measure on, or None (this machine)."""
        from dlcbench.compilers.tvm.rpc import parse_tracker

        return parse_tracker(self.rpc_tracker, self.rpc_key)

    @property
    def tuning(self) -> bool:
        """Whether MetaSchedule is involved (a budget or a database was given)."""
        return bool(self.tune_trials or self.tune_minutes or self.tuning_db)


def host_cpu() -> str:
    """The LLVM name of this machine's CPU (``znver4``, ``sapphirerapids``...)."""
    import tvm

    return str(tvm.target.codegen.llvm_get_system_cpu())


def host_cpu_features() -> list[str]:
    """This machine's CPU features as LLVM ``mattr`` entries (``+avx2``, ``-avx512f``...), as CPUID reports them.

    The CPU name alone is not enough: a virtual machine on a ``znver4`` host may hide AVX-512, and code built
    for the name's default features then dies with SIGILL.
    """
    import tvm_ffi

    features = tvm_ffi.get_global_func("tvm.codegen.llvm.GetHostCPUFeatures")()
    return sorted(("+" if on else "-") + str(name) for name, on in features.items())


def cpu_target(threads: int, mcpu: str | None = None) -> dict[str, Any]:
    """The LLVM target dict with ``num-cores`` = ``threads``: this host's CPU and features unless ``mcpu`` is given."""
    if mcpu:
        return {"kind": "llvm", "mcpu": mcpu, "num-cores": int(threads)}
    return {"kind": "llvm", "mcpu": host_cpu(), "mattr": host_cpu_features(), "num-cores": int(threads)}


def unsupported_ops(onnx_model) -> list[str]:
    """Operators of ``onnx_model`` that TVM's Relax ONNX importer has no converter for."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    known = _get_convert_map()
    return sorted({node.op_type for node in onnx_model.graph.node if node.op_type not in known})


SMALL_PARAM_ELEMENTS = 16


def _relax_op_clip(frontend):
    """TVM's ONNX ``Clip`` converter, emitting ``relax.op.maximum``/``minimum`` instead of opaque ``call_tir``.

    TVM imports ``Clip`` as ``emit_te(topi.maximum/minimum)``: PrimFuncs that ``ConvertLayout`` cannot see
    through, so each ReLU6 of a channels-last convnet is wrapped in two activation transposes. The Relax
    ops lower to the same ``topi`` computations and have a layout rule when the bound is a scalar; bounds of
    one element become rank 0 (ONNX requires scalars; a ``[1]`` bound would also broadcast a scalar input).
    NaN bounds stay unbounded, as in TVM's converter.
    """
    import numpy
    from tvm import relax

    def scalar(bb, bound, for_min: bool):
        bound = frontend.Clip._sanitize_nan_clip_bound(bb, bound, for_min=for_min)
        shape = getattr(bound.ty, "shape", None)
        if isinstance(shape, relax.ShapeExpr) and len(shape) > 0 \
                and all(hasattr(d, "value") for d in shape.values) and int(numpy.prod([int(d) for d in shape.values])) == 1:
            bound = bb.normalize(relax.op.reshape(bound, ()))
        return bound

    class Clip(frontend.Clip):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            dtype = inputs[0].ty.dtype
            result = bb.normalize(relax.op.maximum(inputs[0], relax.const(float(attr.get("min", -numpy.inf)), dtype)))
            return bb.normalize(relax.op.minimum(result, relax.const(float(attr.get("max", numpy.inf)), dtype)))

        @classmethod
        def _impl_v13(cls, bb, inputs, attr, params):
            result = inputs[0]
            if inputs[1] is not None:
                result = bb.normalize(relax.op.maximum(result, scalar(bb, inputs[1], for_min=True)))
            if inputs[2] is not None:
                result = bb.normalize(relax.op.minimum(result, scalar(bb, inputs[2], for_min=False)))
            return result

    return Clip


@contextmanager
def _clip_as_relax_ops():
    """Within the block, TVM's ONNX importer converts ``Clip`` with :func:`_relax_op_clip`.

    The importer looks its converters up through the module function ``_get_convert_map`` at every node; a
    TVM without it (or without ``Clip._sanitize_nan_clip_bound``) keeps its own converter.
    """
    from tvm.relax.frontend.onnx import onnx_frontend as frontend

    original = getattr(frontend, "_get_convert_map", None)
    if original is None or not hasattr(getattr(frontend, "Clip", None), "_sanitize_nan_clip_bound"):
        yield
        return
    clip = _relax_op_clip(frontend)

    def convert_map():
        table = original()
        table["Clip"] = clip
        return table

    frontend._get_convert_map = convert_map
    try:
        yield
    finally:
        frontend._get_convert_map = original


def import_onnx(onnx_model, input_shapes: dict[str, list[int]], separate_params: bool):
    """Imports an ONNX model into Relax; returns ``(IRModule, list of numpy params)``."""
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    missing = unsupported_ops(onnx_model)
    if missing:
        raise UnsupportedOpError("tvm", missing, "no Relax ONNX converter")
    try:
        with _clip_as_relax_ops():
            mod = from_onnx(onnx_model, shape_dict=input_shapes, keep_params_in_input=separate_params)
    except Exception as err:
        raise CompileError(f"TVM's ONNX importer failed: {one_line(err, 300)}") from None
    params: list[np.ndarray] = []
    if separate_params:
        mod, detached = relax.frontend.detach_params(mod)
        weights = [p.numpy() for p in detached.get("main", [])]
        main = mod["main"]
        param_vars = list(main.params)[int(main.attrs["num_input"]):]
        # Small ones (Clip bounds, shapes) stay constants: folded, ONNX Clip's NaN guards disappear
        # instead of being fused into every convolution, where MetaSchedule cannot schedule them
        # (a reverse-compute-at ScheduleError on each depthwise conv + ReLU6).
        small = {var: tvm.runtime.tensor(w) for var, w in zip(param_vars, weights) if w.size <= SMALL_PARAM_ELEMENTS}
        if small:
            mod = relax.transform.BindParams("main", small)(mod)
        params = [w for w in weights if w.size > SMALL_PARAM_ELEMENTS]
    return mod, params


def _to_numpy(value) -> np.ndarray:
    """A VM result as numpy: tensors via ``.numpy()``, shape tuples (ONNX ``Shape``) as int64 arrays."""
    if hasattr(value, "numpy"):
        return value.numpy()
    return np.asarray([int(v) for v in value], dtype=np.int64)


def size_thread_pool(threads: int) -> None:
    """Makes TVM's CPU thread pool of the calling thread run ``threads`` workers, or says why it cannot.

    TVM keeps one pool per OS thread, created at its first use with ``TVM_NUM_THREADS`` workers and never
    grown: ``runtime.config_threadpool`` only chooses how many of them run. A pool is therefore created with
    room for every core (or ``threads``, if more), then set to ``threads`` with TVM's default placement (the
    calling thread bound to the first ``threads`` cores, as a pool created at that size binds it).
    ``TVM_NUM_THREADS`` is left at ``threads``: TVM reads it at every parallel launch, and runs a kernel
    serially when it is 1, so sessions of different thread counts in one process are used one after another.
    TVM pins each worker to one core and leaves the calling thread, which runs the first share of every
    parallel loop, free over all of them: on a worker's core the two took turns (2x slower, and up to a
    scheduler time slice per call), so the calling thread is then bound to the core no worker holds.
    A pool created smaller elsewhere (by code that set ``TVM_NUM_THREADS`` itself) raises
    :class:`BackendRuntimeError` rather than run, and be recorded, on fewer threads than asked.
    """
    import tvm

    num_threads = tvm.get_global_func("runtime.NumThreads", allow_missing=True)
    config = tvm.get_global_func("runtime.config_threadpool", allow_missing=True)
    os.environ["TVM_NUM_THREADS"] = str(max(threads, os.cpu_count() or 1))
    try:
        if num_threads is not None:
            num_threads()  # creates this thread's pool if it has none yet
    finally:
        os.environ["TVM_NUM_THREADS"] = str(threads)
    if config is None or num_threads is None:
        return
    config(1, threads)  # 1: TVM's "big cores" placement (x86: the first ``threads`` cores), ``threads`` workers
    running = int(num_threads())
    if running != threads:
        raise BackendRuntimeError(
            f"tvm: this thread's TVM pool can run {running} of the {threads} threads asked (TVM sizes a thread's "
            f"pool once, at its first use); load the session in a new process or thread")
    if threads > 1:
        pin_apart_from_pinned_threads()


def _has_function(vm, name: str) -> bool:
    try:
        vm[name]
        return True
    except Exception:
        return False


class TvmSession(Session):
    """A Relax VirtualMachine over the artifact's library, weights uploaded once.

    The resident region calls ``main`` on inputs copied to the device once and synchronises the device; the
    outputs stay device tensors.
    """

    native_timer_name = "tvm.time_evaluator"
    resident_region = True

    def __init__(self, manifest: Manifest, lib, device, params: list[np.ndarray], transform_params: bool = True):
        import tvm
        from tvm import relax

        super().__init__(manifest)
        self._tvm = tvm
        self._device = device
        self._vm = relax.VirtualMachine(lib, device)
        self._params = [tvm.runtime.tensor(p, device) for p in params]
        if transform_params and self._params and _has_function(self._vm, "main_transform_params"):
            # Tuned CPU builds prepack weights into the layouts MetaSchedule chose; once, like ORT at load.
            self._params = list(self._vm["main_transform_params"](self._params))
        self._staged: list | None = None

    def _args(self, inputs):
        return [self._tvm.runtime.tensor(x, self._device) for x in self.checked_inputs(inputs)]

    def _outputs(self, result) -> dict[str, np.ndarray]:
        values = [result] if hasattr(result, "numpy") else list(result)
        if len(self.output_names) == 1 and not hasattr(result, "numpy") and not all(hasattr(v, "numpy") for v in values):
            values = [result]  # a single output that is a shape tuple (ONNX Shape), not a tuple of outputs
        return {name: _to_numpy(v) for name, v in zip(self.output_names, values)}

    def run(self, inputs):
        args = self._args(inputs)
        try:
            result = self._vm["main"](*args, *self._params)
        except Exception as err:
            raise BackendRuntimeError(f"tvm run failed: {one_line(err, 300)}") from None
        return self._outputs(result)

    def prepare(self, inputs):
        self._staged = self._args(inputs) + self._params

    def run_prepared(self):
        self._vm["main"](*self._staged)
        self._device.sync()

    def native_time(self, inputs, repeat, number=1):
        evaluator = self._vm.time_evaluator("main", self._device, number=number, repeat=repeat)
        return [float(x) for x in evaluator(*self._args(inputs), *self._params).results]

    def profile(self, inputs, repeat: int = 5) -> list[dict[str, Any]]:
        """Where one inference spends its time: wall time per called function, largest first.

        Every VM call is timed through ``set_instrument`` (a Python hook, a few microseconds each,
        so shares of many tiny calls are overstated). Returns dicts with ``name``, ``calls`` per
        inference, ``ms`` per inference and ``share`` of the instrumented total.
        """
        import time

        args = self._args(inputs) + self._params
        self._vm["main"](*args)
        spent: dict[str, list[float]] = {}
        started: dict[str, int] = {}

        def hook(_func, symbol, before_run, _ret, *_args):
            if before_run:
                started[symbol] = time.perf_counter_ns()
            else:
                entry = spent.setdefault(symbol, [0.0, 0])
                entry[0] += (time.perf_counter_ns() - started[symbol]) / 1e6
                entry[1] += 1
            return 0

        self._vm.set_instrument(hook)
        try:
            for _ in range(repeat):
                self._vm["main"](*args)
        finally:
            self._vm.set_instrument(lambda *_: 0)
        total = sum(ms for ms, _ in spent.values()) or 1.0
        rows = [{"name": name, "calls": calls // repeat, "ms": ms / repeat, "share": ms / total}
                for name, (ms, calls) in spent.items()]
        return sorted(rows, key=lambda r: -r["ms"])

    #: The RPC session of an artifact run on a remote server (:class:`RemoteTvmSession`), else None.
    remote = None

    def close(self):
        self._vm = None
        self._params = []
        self._staged = None
        self.remote = None  # after everything that lives on the server


class RemoteTvmSession(TvmSession):
    """A :class:`TvmSession` on a TVM RPC server.

    RPC passes tensors but not arrays or tuples, so ``main`` is called the stateful way (``set_input``,
    ``invoke_stateful``, ``get_outputs``), and prepacked weights are transformed before they are sent.
    The resident region stages the inputs on the server once; each timed call is one ``invoke_stateful`` round
    trip, awaited by a device sync (the host clock here includes the RPC transport; the native timer is the
    server's ``time_evaluator``).
    """

    def __init__(self, manifest: Manifest, lib, device, params: list[np.ndarray], remote):
        super().__init__(manifest, lib, device, params, transform_params=False)
        self.remote = remote

    def _call(self, args) -> None:
        self._vm.set_input("main", *args)
        self._vm.invoke_stateful("main")

    def run(self, inputs):
        args = self._args(inputs)
        try:
            self._call(args + self._params)
            result = self._vm.get_outputs("main")
        except Exception as err:
            raise BackendRuntimeError(f"tvm run on the RPC server failed: {one_line(err, 300)}") from None
        values = [result] if hasattr(result, "numpy") else list(result)
        return {name: _to_numpy(v) for name, v in zip(self.output_names, values)}

    def prepare(self, inputs):
        self._vm.set_input("main", *(self._args(inputs) + self._params))

    def run_prepared(self):
        self._vm.invoke_stateful("main")
        self._device.sync()

    def native_time(self, inputs, repeat, number=1):
        self._vm.set_input("main", *(self._args(inputs) + self._params))
        evaluator = self._vm.time_evaluator("invoke_stateful", self._device, number=number, repeat=repeat)
        return [float(x) for x in evaluator("main").results]

    def profile(self, inputs, repeat: int = 5):
        raise BackendRuntimeError("profiling runs a Python hook in the VM: not over RPC")


def transformed_params(library: Path, params: list[np.ndarray]) -> list[np.ndarray]:
    """The weights after the module's ``main_transform_params`` (the layouts the tuner chose), computed on this
    machine; the weights as they are when the module has no such function."""
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(library)), tvm.cpu(0))
    if not params or not _has_function(vm, "main_transform_params"):
        return params
    return [p.numpy() for p in vm["main_transform_params"]([tvm.runtime.tensor(p) for p in params])]


class TvmAdapter(Adapter):
    """Apache TVM Relax, for the host CPU (LLVM) or an NVIDIA GPU (CUDA, cross-compiled with nvcc)."""

    name = "tvm"
    source = "onnx-folded"
    targets = ("cpu", "cuda")
    #: fp16: ``relax.transform.ToMixedPrecision`` (fp16 compute, fp32 accumulation; slow on CPUs without fp16
    #: arithmetic). int8: the ONNX Runtime QDQ model (:mod:`dlcbench.compilers.quantize`), which TVM 0.27 imports as
    #: dequantize -> float op -> quantize: int8 emulated in float, no int8 arithmetic (the manifest says so).
    precisions = ("fp32", "fp16", "int8")
    Options = TvmOptions
    cross_compiles = True

    @staticmethod
    def progress(line: str) -> None:
        """Tuning progress goes to stderr, one line per round."""
        print(line, file=sys.stderr, flush=True)

    @classmethod
    def available(cls) -> Availability:
        from dlcbench.compilers.tvm.runtime_only import runtime_dir

        if runtime_dir() is not None:  # a stage's run: its own runtime, whatever TVM is installed here
            return Availability(True, "runtime only: loads artifacts built elsewhere, cannot compile")
        try:
            version = metadata.version("apache-tvm")
        except metadata.PackageNotFoundError:
            return Availability(False, "apache-tvm is not installed")
        if not version.startswith("0.27"):
            return Availability(False, f"dlcbench needs apache-tvm 0.27, found {version}")
        return Availability(True)

    def version(self) -> str:
        try:
            return metadata.version("apache-tvm")
        except metadata.PackageNotFoundError:
            return "runtime only"

    def _compile(self, model, options: TvmOptions, out_dir: Path) -> dict[str, Any]:
        import onnx

        precision_note: dict[str, Any] = {}
        source = model.onnx_path
        if options.precision == "int8":
            from dlcbench.compilers.quantize import quantize_qdq, rebatch

            source = out_dir / "model.qdq.onnx"
            precision_note["int8"] = {
                **quantize_qdq(model.onnx_path, source, rebatch(model.calibration_batches(), model.batch)),
                "arithmetic": "emulated in float: TVM 0.27 imports QDQ as dequantize -> float op -> quantize "
                              "(no int8 kernels)"}
        onnx_model = onnx.load(str(source))
        if source != model.onnx_path:
            source.unlink()
        shapes = self.input_shapes(model, options)
        mod, params = import_onnx(onnx_model, shapes, options.separate_params)
        if options.precision == "fp16":
            from tvm import relax

            mod = relax.transform.ToMixedPrecision(out_dtype="float32")(mod)
            precision_note["fp16"] = "relax.transform.ToMixedPrecision: fp16 compute, fp32 accumulation"
        if options.target == "cpu" and options.tuning and options.conv_layout != "NCHW":
            from dlcbench.compilers.tvm.tuning import convert_conv_layout

            mod, params, used = convert_conv_layout(mod, params, options.conv_layout)
            if used:
                precision_note["conv_layout"] = used
        if options.target == "cuda":
            from dlcbench.compilers.tvm.cuda import compile_cuda, device_code_archs

            code: dict[str, Any] = {}
            database = None
            if options.tuning_db:
                from dlcbench.compilers.tvm.cuda import cuda_tuning_target
                from dlcbench.compilers.tvm.tuning import measured_places, open_database

                database = open_database(Path(options.tuning_db), cuda_tuning_target(options.arch), create=False)
            executable = compile_cuda(mod, options.arch, code_report=code, database=database)
            target_detail: Any = {"kind": "cuda", "arch": options.arch}
            # Whether dlight's schedules use tensor cores (its Matmul rule tensorizes fp16 matmuls whose every
            # non-batch extent is above 64): what the generated CUDA source says.
            extra: dict[str, Any] = {"tensor_cores": code["tensor_cores"], "cuda_kernels": code["kernels"],
                                     "tensor_core_kernels": code["tensor_core_kernels"]}
            if database is not None:  # records of deferred rounds applied; dlight scheduled the rest
                extra["tuning"] = {"db": str(options.tuning_db), "tuned_functions": code["tuned_functions"],
                                   "records_measured_on": measured_places(Path(options.tuning_db))}
        else:
            executable, target_detail, extra = self._compile_cpu(mod, options)
        executable.export_library(str(out_dir / "model.so"))
        files = {"library": "model.so"}
        if extra.get("tuning", {}).get("curve"):
            (out_dir / "tuning_curve.json").write_text(jsonio.dumps(extra["tuning"]["curve"]))
            files["tuning_curve"] = "tuning_curve.json"
            try:
                from dlcbench.compilers.tvm.tuning import plot_curve

                plot_curve(extra["tuning"]["curve"], out_dir / "tuning_curve.png")
                files["tuning_curve_plot"] = "tuning_curve.png"
            except ImportError:
                pass  # matplotlib is optional
        if options.target == "cuda":
            extra["device_code_archs"] = device_code_archs(out_dir / "model.so")
            if options.arch not in extra["device_code_archs"]:
                raise CompileError(f"the CUDA library holds no {options.arch} device code")
        if options.separate_params:
            np.savez(out_dir / "params.npz", *params)
            files["params"] = "params.npz"
        if options.tracker is not None:  # run, checked and timed there: see _load
            tracker = options.tracker
            extra["rpc"] = {"tracker": f"{tracker.host}:{tracker.port}", "key": tracker.key}
        return {"files": files, "target_detail": target_detail, "extra": {**extra, **precision_note}}

    def _compile_cpu(self, mod, options: TvmOptions):
        import tvm

        target_dict = cpu_target(options.threads, options.mcpu)
        target = tvm.target.Target(target_dict)
        if options.fast_math:
            from tvm import relax

            mod = relax.transform.FastMathTransform()(mod)
        if not options.tuning:
            return tvm.compile(mod, target=target), target_dict, {}
        from dlcbench.compilers.tvm import tuning as tvm_tuning

        config = tvm_tuning.TuningConfig(
            trials=options.tune_trials, minutes=options.tune_minutes,
            db=Path(options.tuning_db) if options.tuning_db else None,
            strategy=options.tune_strategy, cost_model=options.tune_cost_model, rpc=options.tracker,
            population=options.tune_population, generations=options.tune_generations,
        )
        mod = tvm_tuning.prepare_module(mod, target)
        database, report = tvm_tuning.tune_module(mod, target_dict, config, progress=self.progress)
        mod = tvm_tuning.apply_database(mod, target, database)
        extra = {"tuning_seconds": report.seconds, "tuning": report.to_dict()}
        return tvm.compile(mod, target=target), target_dict, extra

    def _load(self, artifact_dir: Path, manifest: Manifest) -> Session:
        from dlcbench.compilers.tvm.runtime_only import RuntimeOnlySession, get_runtime, runtime_dir

        if runtime_dir() is not None and not (manifest.extra or {}).get("rpc"):
            # A stage's run: the runtime it carries, not an installed TVM (the target machine has none).
            return RuntimeOnlySession(manifest, artifact_dir, get_runtime(manifest.threads))
        import tvm

        threads = manifest.threads
        if (manifest.extra or {}).get("rpc"):
            return self._load_remote(artifact_dir, manifest)
        try:
            size_thread_pool(threads)
            device = tvm.cuda(0) if manifest.target == "cuda" else tvm.cpu(0)
            if manifest.target == "cuda" and not device.exist:
                raise BackendUnavailableError("no CUDA GPU on this machine to run a tvm cuda artifact")
            lib = tvm.runtime.load_module(str(artifact_dir / manifest.files["library"]))
            params: list[np.ndarray] = []
            if "params" in manifest.files:
                with np.load(artifact_dir / manifest.files["params"]) as data:
                    params = [data[f"arr_{i}"] for i in range(len(data.files))]
            return TvmSession(manifest, lib, device, params)
        except DlcbenchError:
            raise
        except Exception as err:
            raise BackendRuntimeError(f"tvm could not load {artifact_dir}: {one_line(err, 300)}") from None

    def _load_remote(self, artifact_dir: Path, manifest: Manifest) -> Session:
        """The artifact on a server of its RPC tracker: library uploaded, weights and inputs sent there, the
        server's thread pool set to the manifest's threads (its calling thread on a core of its own on dlcbench's
        server); outputs come back through RPC."""
        from dlcbench.compilers.tvm.rpc import configure_remote_pool, parse_tracker, request_session

        rpc = manifest.extra["rpc"]
        tracker = parse_tracker(rpc["tracker"], rpc["key"])
        remote = request_session(tracker)
        try:
            try:
                configure_remote_pool(remote, manifest.threads)
            except BackendRuntimeError as err:
                raise BackendRuntimeError(f"tvm: {err}") from None
            library = artifact_dir / manifest.files["library"]
            remote.upload(str(library))
            lib = remote.load_module(library.name)
            params: list[np.ndarray] = []
            if "params" in manifest.files:
                with np.load(artifact_dir / manifest.files["params"]) as data:
                    params = [data[f"arr_{i}"] for i in range(len(data.files))]
            try:  # here, where arrays can be passed: the library is built for this host's CPU family
                params = transformed_params(library, params)
            except Exception as err:
                raise BackendRuntimeError(f"tvm could not prepack the weights of {library.name} on this machine "
                                          f"before sending them to the RPC server: {one_line(err, 200)}") from None
            return RemoteTvmSession(manifest, lib, remote.cpu(0), params, remote)
        except DlcbenchError:
            raise
        except Exception as err:
            raise BackendRuntimeError(f"tvm could not load {artifact_dir} on {tracker}: {one_line(err, 300)}") from None
