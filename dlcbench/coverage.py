"""ONNX operator coverage: the ONNX backend node tests through every adapter that takes ONNX.

Each node test is a one-operator model with inputs and expected outputs
(``model.onnx``, ``test_data_set_0/input_N.pb``/``output_N.pb``, the layout of
``onnx/backend/test/data/node``). The onnx wheel ships the test definitions
(``onnx.backend.test.case.node``) but, since 1.17, not the generated files, so
they are generated once into the dlcbench cache, exactly as ONNX's
``backend-test-tools generate-data`` writes them.

Every test goes through the adapter interface (compile into a temporary
directory, load, run, compare) inside one worker process per backend that runs
tests one after another; the parent gives each test a time limit, kills and
restarts the worker after a hang or a crash, records it, and goes on. Outcomes:
``pass``, ``wrong_result`` (ran, but shape, dtype or values differ beyond
ONNX's own runner tolerance, rtol 1e-3 / atol 1e-7), ``unsupported`` (the
backend says it lacks the operator), ``error`` (any other compile or run
failure), ``crash`` (the worker died), ``timeout``, ``skipped`` (sequence,
optional or map values, which dlcbench sessions cannot exchange).
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from queue import Queue
from typing import Any, Callable, Iterable

import numpy as np

from dlcbench.config import cache_dir, positive_int, positive_seconds
from dlcbench.errors import BadInputError, DlcbenchError, UnsupportedOpError, one_line
from dlcbench.outputs import check_file_replaceable, write_file_atomically
from dlcbench.results.store import DEFAULT_DB
from dlcbench.orchestrate.launcher import (
    become_worker, classify_exit, end_group, owned_mkdtemp, remove_owned, start_worker,
)

STATUSES = ("pass", "wrong_result", "unsupported", "error", "crash", "timeout", "skipped")
#: ONNX's backend test runner compares with these (every node test uses the defaults).
RTOL, ATOL = 1e-3, 1e-7
DEFAULT_MARKDOWN = Path("benchmarks") / "results" / "coverage.md"


@dataclass(frozen=True)
class NodeTest:
    """One ONNX node test directory."""

    name: str
    op: str
    domain: str
    opset: int | None
    expanded: bool
    path: str

    @property
    def qualified_op(self) -> str:
        return f"{self.domain}.{self.op}" if self.domain not in ("", "ai.onnx") else self.op


# --------------------------------------------------------------------------- the tests


def onnx_version() -> str:
    return metadata.version("onnx")


def default_data_dir() -> Path:
    return cache_dir() / "onnx-node-tests" / f"onnx-{onnx_version()}"


def _write_value(path: Path, value, type_proto, name: str) -> None:
    from onnx import TensorProto, numpy_helper

    if type_proto.HasField("map_type"):
        proto = numpy_helper.from_dict(value, name)
    elif type_proto.HasField("sequence_type"):
        proto = numpy_helper.from_list(value, name)
    elif type_proto.HasField("optional_type"):
        proto = numpy_helper.from_optional(value, name)
    elif isinstance(value, TensorProto):
        proto = value
    else:
        proto = numpy_helper.from_array(value, name)
    path.write_bytes(proto.SerializeToString())


def generate_node_tests(dest: Path | None = None) -> Path:
    """Writes the ONNX node tests shipped as definitions in the onnx package into ``dest`` (once)."""
    dest = Path(dest or default_data_dir())
    if (dest / ".complete").is_file():
        return dest
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from onnx.backend.test.case import node

        cases = node.collect_testcases(None)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-node-tests-", dir=dest.parent))
    try:
        for case in cases:
            case_dir = tmp / case.name
            data_dir = case_dir / "test_data_set_0"
            data_dir.mkdir(parents=True)
            (case_dir / "model.onnx").write_bytes(case.model.SerializeToString())
            inputs, outputs = case.data_sets[0]
            graph = case.model.graph
            for j, value in enumerate(inputs):
                _write_value(data_dir / f"input_{j}.pb", value, graph.input[j].type, graph.input[j].name)
            for j, value in enumerate(outputs):
                _write_value(data_dir / f"output_{j}.pb", value, graph.output[j].type, graph.output[j].name)
        (tmp / ".complete").write_text(f"onnx {onnx_version()}: {len(cases)} node tests\n")
        if dest.exists() and not (dest / ".complete").is_file():
            shutil.rmtree(dest)  # an interrupted earlier generation
        try:
            os.rename(tmp, dest)  # atomic: readers see all the tests or none
        except OSError:
            if not (dest / ".complete").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _opset(model, domain: str) -> int | None:
    wanted = ("", "ai.onnx") if domain in ("", "ai.onnx") else (domain,)
    versions = [o.version for o in model.opset_import if o.domain in wanted]
    return max(versions) if versions else None


def discover(directory: Path | None = None, expanded: bool = False) -> list[NodeTest]:
    """The node tests in ``directory`` (default: generated into the cache), sorted by name.

    Args:
        expanded: Also return the ``*_expanded`` variants, which run an operator's
            function body (other operators) instead of the operator itself.
    """
    import onnx

    directory = Path(directory) if directory else generate_node_tests()
    if (directory / "node").is_dir():  # onnx/backend/test/data rather than .../data/node
        directory = directory / "node"
    if not directory.is_dir():
        raise BadInputError(f"no ONNX node tests in {directory} (expected test_*/model.onnx directories)")
    direct: dict[str, tuple[str, str]] = {}
    found: list[tuple[str, Path, Any]] = []
    for case_dir in sorted(directory.iterdir()):
        if not (case_dir / "model.onnx").is_file():
            continue
        model = onnx.load(str(case_dir / "model.onnx"), load_external_data=False)
        found.append((case_dir.name, case_dir, model))
        if "_expanded" not in case_dir.name and len(model.graph.node) == 1:
            node = model.graph.node[0]
            direct[case_dir.name] = (node.op_type, node.domain)
    if not found:
        raise BadInputError(f"no ONNX node tests in {directory} (expected test_*/model.onnx directories)")
    tests = []
    for name, case_dir, model in found:
        is_expanded = "_expanded" in name
        if is_expanded and not expanded:
            continue
        if is_expanded:
            op, domain = direct.get(name.split("_expanded")[0], ("?", ""))
        elif name in direct:
            op, domain = direct[name]
        else:
            op, domain = model.graph.node[0].op_type if model.graph.node else "?", ""
        tests.append(NodeTest(name, op, domain, _opset(model, domain), is_expanded, str(case_dir)))
    return tests


def select_tests(tests: list[NodeTest], ops: Iterable[str] | None = None, names: Iterable[str] | None = None,
           subset: int | None = None) -> list[NodeTest]:
    """Narrows the tests: by operator names, by test names, or to ``subset`` tests spread over the operators.

    ``subset`` takes the first test of evenly spaced operators (deterministic), so N
    tests cover N different operators when there are that many.
    """
    chosen = list(tests)
    if ops:
        wanted = {o.strip().lower() for o in ops if o.strip()}
        known = {t.op.lower() for t in tests} | {t.qualified_op.lower() for t in tests}
        unknown = sorted(wanted - known)
        if unknown:
            raise BadInputError(f"no node tests for operator(s) {', '.join(unknown)} in onnx {onnx_version()}; "
                                f"e.g. {', '.join(sorted({t.op for t in tests})[:12])}, ...")
        chosen = [t for t in chosen if t.op.lower() in wanted or t.qualified_op.lower() in wanted]
    if names:
        wanted_names = {n.strip() for n in names if n.strip()}
        unknown = sorted(wanted_names - {t.name for t in tests})
        if unknown:
            raise BadInputError(f"unknown node test(s): {', '.join(unknown)}")
        chosen = [t for t in chosen if t.name in wanted_names]
    if subset is not None:
        if subset <= 0:
            raise BadInputError(f"--subset must be a positive number of tests, got {subset}")
        groups: dict[str, list[NodeTest]] = defaultdict(list)
        for test in chosen:
            groups[test.qualified_op].append(test)
        order = sorted(groups)
        picked: list[NodeTest] = []
        rank = 0
        while len(picked) < subset and any(len(g) > rank for g in groups.values()):
            remaining = [op for op in order if len(groups[op]) > rank]
            need = subset - len(picked)
            if need < len(remaining):
                remaining = [remaining[(i * len(remaining)) // need] for i in range(need)]
            picked += [groups[op][rank] for op in remaining]
            rank += 1
        chosen = sorted(picked, key=lambda t: t.name)
    return chosen


# --------------------------------------------------------------------------- one test, inside a worker


def _read_tensor(path: Path) -> np.ndarray:
    from onnx import TensorProto, numpy_helper

    proto = TensorProto()
    proto.ParseFromString(path.read_bytes())
    return numpy_helper.to_array(proto)


def _as_text(array: np.ndarray) -> list:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(array, dtype=object).ravel()]


def compare_outputs(outputs: dict[str, np.ndarray], expected: dict[str, np.ndarray],
                    rtol: float = RTOL, atol: float = ATOL) -> tuple[bool, str, float | None]:
    """Compares like ONNX's backend test runner: same names, shapes, dtypes; values within rtol/atol.

    Returns:
        ``(passed, message, max_abs_err)``.
    """
    worst: float | None = None
    for name, ref in expected.items():
        if name not in outputs:
            return False, f"no output {name!r} (got {', '.join(outputs) or 'none'})", None
        out = np.asarray(outputs[name])
        if ref.dtype.kind in "OSU" or out.dtype.kind in "OSU":
            if out.shape != ref.shape or _as_text(out) != _as_text(ref):
                return False, f"{name}: strings differ", None
            continue
        if out.shape != ref.shape:
            return False, f"{name}: shape {list(out.shape)}, expected {list(ref.shape)}", None
        if out.dtype != ref.dtype:
            return False, f"{name}: dtype {out.dtype}, expected {ref.dtype}", None
        if ref.dtype.kind in "biu":
            if not np.array_equal(out, ref):
                diff = int(np.count_nonzero(out != ref))
                return False, f"{name}: {diff} of {ref.size} values differ", None
            continue
        kind = np.complex128 if ref.dtype.kind == "c" else np.float64
        a, b = out.astype(kind), ref.astype(kind)
        if ref.size:
            both = ~(np.isnan(a) & np.isnan(b)) if kind is np.float64 else np.ones(a.shape, bool)
            err = float(np.max(np.abs(a - b)[both], initial=0.0))
            worst = err if worst is None else max(worst, err)
        try:
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, equal_nan=True)
        except AssertionError:
            bad = int(np.count_nonzero(~np.isclose(a, b, rtol=rtol, atol=atol, equal_nan=True)))
            return False, f"{name}: {bad} of {ref.size} values off (max abs error {worst:.3g})", worst
    return True, "", worst


def _describe(err: BaseException) -> str:
    cause = err.__cause__
    if isinstance(err, DlcbenchError) and cause is not None and not isinstance(cause, DlcbenchError):
        err = cause  # Adapter.compile wraps the library's exception in a shortened CompileError
    text = one_line(str(err), 100_000)
    if not isinstance(err, DlcbenchError):
        text = f"{type(err).__name__}: {text}"
    # Backends put the reason last, after paths and C++ signatures: keep both ends.
    return text if len(text) <= 500 else f"{text[:200]} ... {text[-290:]}"


#: How a refusal of the model's IR or opset version (not of the operator) starts its message.
VERSION_REFUSAL = "model version refused"
#: Messages of backends refusing the model's IR or opset version rather than failing on it.
_VERSION_REFUSALS = re.compile(
    r"Unsupported model IR version|max supported IR version|opset \d+ is under development|"
    r"[Oo]pset \d+ (is )?not supported|Unsupported opset|onnx opset version .* is not supported"
)


def node_test_adapter(backend: str):
    """The adapter a worker runs node tests with."""
    from dlcbench.compilers.registry import get_adapter

    return get_adapter(backend)


def run_node_test(adapter, test_dir: Path, scratch: Path, threads: int = 1) -> dict[str, Any]:
    """Compiles, loads and runs one node test through ``adapter``; never raises for a backend failure."""
    import onnx

    from dlcbench.models.export import wrap_onnx

    start = time.perf_counter()

    def outcome(status: str, message: str | None = None, max_abs_err: float | None = None) -> dict[str, Any]:
        return {"status": status, "message": message or None, "max_abs_err": max_abs_err,
                "seconds": round(time.perf_counter() - start, 4)}

    test_dir = Path(test_dir)
    model = onnx.load(str(test_dir / "model.onnx"))
    graph = model.graph
    if any(not v.type.HasField("tensor_type") for v in [*graph.input, *graph.output]):
        return outcome("skipped", "sequence, optional or map values: dlcbench sessions exchange tensors only")
    data = test_dir / "test_data_set_0"
    inputs = {v.name: _read_tensor(data / f"input_{j}.pb") for j, v in enumerate(graph.input)}
    expected = {v.name: _read_tensor(data / f"output_{j}.pb") for j, v in enumerate(graph.output)}
    work = Path(tempfile.mkdtemp(prefix=f"{test_dir.name}-", dir=scratch))
    try:
        try:
            wrapped = wrap_onnx(model, work / "model", test_dir.name, inputs=inputs, reference=expected)
            options = adapter.make_options(threads=threads, batch=max(1, int(wrapped.meta["batch"] or 1)))
            adapter.compile(wrapped, options, work / "artifact")
        except UnsupportedOpError as err:
            return outcome("unsupported", str(err))
        except Exception as err:
            message = _describe(err)
            refusal = _VERSION_REFUSALS.search(message)
            if refusal:
                opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None)
                return outcome("unsupported", f"{VERSION_REFUSAL} (IR {model.ir_version}, opset {opset}): "
                                              f"{message[refusal.start():][:240]}")
            return outcome("error", f"compile: {message}")
        try:
            with adapter.load(work / "artifact") as session:
                outputs = session.run(inputs)
        except UnsupportedOpError as err:
            return outcome("unsupported", str(err))
        except Exception as err:
            return outcome("error", f"run: {_describe(err)}")
        passed, message, max_abs_err = compare_outputs(outputs, expected)
        return outcome("pass" if passed else "wrong_result", message, max_abs_err)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def worker_main(backend: str, threads: int, scratch: str) -> int:
    """``python -m dlcbench.coverage --worker BACKEND``: reads test directories on stdin, writes JSON lines."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # libraries that print (TVM, OpenVINO) must not corrupt the protocol
    sys.stdout = sys.stderr
    try:
        adapter = node_test_adapter(backend)
        adapter.require_available()
        hello: dict[str, Any] = {"ready": True, "version": adapter.version()}
    except Exception as err:
        hello = {"ready": False, "reason": _describe(err)}
    protocol.write(json.dumps(hello) + "\n")
    if not hello["ready"]:
        return 0
    Path(scratch).mkdir(parents=True, exist_ok=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        print(f"=== {job['path']}", file=sys.stderr, flush=True)
        try:
            result = run_node_test(adapter, Path(job["path"]), Path(scratch), threads)
        except Exception as err:  # the harness itself failed on this test (unreadable data)
            result = {"status": "error", "message": f"harness: {_describe(err)}", "max_abs_err": None, "seconds": 0}
        protocol.write(json.dumps(result, default=str) + "\n")
    return 0


# --------------------------------------------------------------------------- the parent side


class _WorkerGone(Exception):
    pass


class Worker:
    """One worker process for one backend (a :mod:`dlcbench.orchestrate.launcher` worker speaking JSON lines);
    restarted after a crash or a timeout.

    Start, run and stop it from one thread (the worker dies with the thread that started it); :meth:`close`
    may come from any thread.
    """

    def __init__(self, backend: str, threads: int, scratch: Path, startup_timeout: float = 300.0):
        self.backend, self.threads, self.scratch = backend, threads, Path(scratch)
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self.version: str | None = None
        self.log_path = self.scratch / f"{backend}-worker.log"
        self.closed = False
        self._buf = b""

    def start(self) -> dict[str, Any]:
        if self.closed:
            return {"ready": False, "reason": "closed"}
        (self.scratch / "tmp").mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        env = {"PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "TMPDIR": str(self.scratch / "tmp")}
        try:
            self.proc = start_worker(
                ["-m", "dlcbench.coverage", "--worker", self.backend, "--threads", str(self.threads),
                 "--scratch", str(self.scratch / "work")],
                env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
            )
        finally:
            log.close()
        self._buf = b""
        try:
            hello = self._readline(self.startup_timeout)
        except (TimeoutError, _WorkerGone) as err:
            self.kill()
            return {"ready": False, "reason": f"worker did not start: {err or type(err).__name__}; {self.log_tail()}"}
        self.version = hello.get("version")
        return hello

    def _readline(self, timeout: float) -> dict[str, Any]:
        assert self.proc and self.proc.stdout
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no answer after {timeout:g} s")
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise _WorkerGone()
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return json.loads(line)

    def log_tail(self, chars: int = 300) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        text = text.rsplit("\n=== ", 1)[-1].partition("\n")[2] if "\n=== " in text else text
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(("W0000", "I0000"))]
        return one_line(" | ".join(lines[-4:]), chars)

    def kill(self) -> None:
        """Ends the worker's process group at once."""
        proc, self.proc = self.proc, None
        if proc:
            end_group(proc, grace_s=0)
            for pipe in (proc.stdin, proc.stdout):
                try:
                    pipe.close()
                except (OSError, ValueError):
                    pass

    def stop(self) -> None:
        """Lets the worker finish (end of its input), then ends its group."""
        if self.proc and self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()

    def close(self) -> None:
        """From any thread: ends the worker now and keeps it from restarting."""
        self.closed = True
        proc = self.proc
        if proc:
            end_group(proc, grace_s=0)

    def run(self, test: NodeTest, timeout: float) -> dict[str, Any]:
        """Runs one test; a hang or a dead worker becomes a ``timeout`` or ``crash`` row and the worker restarts."""
        if self.proc is None or self.proc.poll() is not None:
            hello = self.start()
            if not hello.get("ready"):
                return {"status": "crash", "message": hello.get("reason"), "seconds": 0}
        start = time.perf_counter()
        try:
            self.proc.stdin.write((json.dumps({"path": test.path}) + "\n").encode())
            self.proc.stdin.flush()
            return self._readline(timeout)
        except TimeoutError:
            self.kill()
            return {"status": "timeout", "message": f"no result after {timeout:g} s; worker killed",
                    "seconds": round(time.perf_counter() - start, 3)}
        except (_WorkerGone, BrokenPipeError, OSError):
            code = self.proc.wait() if self.proc else None
            tail = self.log_tail()
            self.kill()
            return {"status": "crash", "message": f"worker {classify_exit(code).message}. {tail}".strip(),
                    "seconds": round(time.perf_counter() - start, 3)}


@dataclass
class CoverageConfig:
    """A coverage run.

    Attributes:
        run: Name of the run in the results database (a rerun resumes it).
        backends: Backends to test (default: every available one that takes ONNX and runs on CPU).
        ops: Only these operators.
        tests: Only these node tests.
        subset: Only this many tests, spread over the operators.
        expanded: Include the ``*_expanded`` function-body variants.
        data_dir: Node test directory (default: generated into the cache).
        db: Results database.
        timeout_s: Per-test time limit.
        threads: Threads each backend may use.
        jobs: Backends tested at the same time (one worker process each).
        force: Rerun tests already recorded.
        markdown: Where the Markdown table goes (None: not written).
    """

    run: str = ""
    backends: list[str] = field(default_factory=list)
    ops: list[str] = field(default_factory=list)
    tests: list[str] = field(default_factory=list)
    subset: int | None = None
    expanded: bool = False
    data_dir: Path | None = None
    db: Path = DEFAULT_DB
    timeout_s: float = 60.0
    threads: int = 1
    jobs: int = 1
    force: bool = False
    markdown: Path | None = None

    def __post_init__(self):
        self.run = self.run or f"onnx-{onnx_version()}"
        positive_int("threads", self.threads)
        positive_int("jobs", self.jobs)
        positive_seconds("the per-test timeout", self.timeout_s)
        if self.markdown is not None:  # before any test runs: never over a file dlcbench did not write
            self.markdown = check_file_replaceable(Path(self.markdown), MARKDOWN_TITLE, "a coverage table")


def onnx_backends(names: list[str] | None = None, say: Callable[[str], None] = lambda s: None) -> list[str]:
    """Backends that take ONNX and run on CPU: the named ones (checked) or every available one."""
    from dlcbench.compilers.registry import availability, backend_names, get_adapter_class

    known = backend_names()
    if names:
        chosen = []
        for name in names:
            if name not in known:
                raise BadInputError(f"unknown backend {name!r}; valid: {', '.join(known)}")
            cls = get_adapter_class(name)
            if cls.source not in ("onnx", "onnx-folded"):
                raise BadInputError(f"backend {name} compiles {cls.source} models, not ONNX")
            if "cpu" not in cls.targets:
                raise BadInputError(f"backend {name} has no cpu target")
            status = availability(name)
            if not status:
                from dlcbench.errors import BackendUnavailableError

                raise BackendUnavailableError(f"backend {name} is not available: {status.reason}")
            chosen.append(name)
        return chosen
    chosen = []
    for name in known:
        try:
            cls = get_adapter_class(name)
        except BadInputError:
            continue
        if cls.source not in ("onnx", "onnx-folded") or "cpu" not in cls.targets:
            continue
        status = availability(name)
        if status:
            chosen.append(name)
        else:
            say(f"skipping {name}: {status.reason}")
    return chosen


def _backend_thread(worker: Worker, tests: list[NodeTest], config: CoverageConfig, out: Queue) -> None:
    backend = worker.backend
    try:
        hello = worker.start()
        if not hello.get("ready"):
            for test in tests:
                out.put((backend, None, test, {"status": "error", "message": f"backend unusable: {hello.get('reason')}"}))
            return
        for test in tests:
            if worker.closed:
                break
            row = worker.run(test, config.timeout_s)
            out.put((backend, worker.version, test, row))
    except BaseException as err:  # never leave the parent waiting
        out.put((backend, None, None, {"status": "error", "message": _describe(err)}))
    finally:
        worker.stop()
        out.put((backend, None, None, None))


def run_coverage(config: CoverageConfig, progress: Callable[[str], None] | None = None,
                 environment: dict[str, Any] | None = None) -> dict[str, Any]:
    """Runs the selected node tests through the selected backends; stores every outcome as it arrives.

    Returns:
        ``{"run", "tests", "backends", "summary", "markdown"}``; summary is :func:`summarize`'s.
    """
    from dlcbench.results.env import environment as collect_environment
    from dlcbench.results.store import ResultsStore

    say = progress or (lambda line: print(line, file=sys.stderr))
    tests = select_tests(discover(config.data_dir, config.expanded), config.ops, config.tests, config.subset)
    if not tests:
        raise BadInputError("no node tests selected")
    backends = onnx_backends(config.backends, say)
    if not backends:
        raise BadInputError("no available backend takes ONNX here (see scripts/compile.py --list-backends)")
    say(f"{config.run}: {len(tests)} node tests x {len(backends)} backends ({', '.join(backends)})")
    with ResultsStore(config.db) as store:
        env_id = store.add_environment(environment or collect_environment(config.threads, peak=False))
        todo = {}
        for backend in backends:
            done = set() if config.force else store.coverage_done(config.run, backend)
            todo[backend] = [t for t in tests if t.name not in done]
            if len(todo[backend]) < len(tests):
                say(f"{backend}: {len(tests) - len(todo[backend])} tests already recorded (--force reruns them)")
        queue: Queue = Queue()
        scratch = owned_mkdtemp("dlcbench-coverage-")
        pending = [b for b in backends if todo[b]]
        workers: list[Worker] = []
        active, finished, counts = 0, 0, Counter()
        total = sum(len(todo[b]) for b in backends)
        started = time.perf_counter()
        try:
            while pending or active:
                while pending and active < config.jobs:
                    backend = pending.pop(0)
                    workers.append(Worker(backend, config.threads, scratch / backend))
                    threading.Thread(target=_backend_thread, daemon=True,
                                     args=(workers[-1], todo[backend], config, queue)).start()
                    active += 1
                backend, version, test, row = queue.get()
                if row is None:  # that backend's thread is done
                    active -= 1
                    continue
                if test is None:
                    say(f"{backend}: {row['message']}")
                    continue
                store.add_coverage(config.run, {
                    **asdict(test), "test": test.name, "backend": backend, "backend_version": version, **row,
                }, env_id)
                finished += 1
                counts[row["status"]] += 1
                if row["status"] in ("crash", "timeout") or finished % 100 == 0 or finished == total:
                    note = f"; {test.name} on {backend}: {row['status']}" if row["status"] in ("crash", "timeout") else ""
                    say(f"[{finished}/{total}] {time.perf_counter() - started:.0f} s "
                        f"{dict(sorted(counts.items()))}{note}")
        finally:
            for worker in workers:  # on an interrupt, before their directories go
                worker.close()
            remove_owned(scratch)
        names = {t.name for t in tests}
        rows = [r for r in store.coverage(config.run) if r["test"] in names and r["backend"] in backends]
    summary = summarize(rows, backends)
    markdown = None
    if config.markdown:
        markdown = check_file_replaceable(Path(config.markdown), MARKDOWN_TITLE, "a coverage table")
        write_file_atomically(markdown, render_markdown(rows, backends, config, tests))
    return {"run": config.run, "tests": len(tests), "backends": backends, "summary": summary,
            "markdown": str(markdown) if markdown else None}


# --------------------------------------------------------------------------- reports


def summarize(rows: list[dict[str, Any]], backends: list[str]) -> dict[str, dict[str, Any]]:
    """Per backend: test counts by status, and operator counts (all / some / no direct tests pass)."""
    out: dict[str, dict[str, Any]] = {}
    for backend in backends:
        mine = [r for r in rows if r["backend"] == backend]
        per_op: dict[str, list[str]] = defaultdict(list)
        for r in mine:
            if not r["expanded"] and r["status"] != "skipped":
                per_op[_op_label(r)].append(r["status"])
        all_pass = sorted(op for op, s in per_op.items() if all(x == "pass" for x in s))
        some = sorted(op for op, s in per_op.items() if "pass" in s and op not in all_pass)
        none = sorted(op for op, s in per_op.items() if "pass" not in s)
        out[backend] = {
            "version": next((r["backend_version"] for r in mine if r.get("backend_version")), None),
            "tests": {s: sum(1 for r in mine if r["status"] == s) for s in STATUSES},
            "ops_tested": len(per_op), "ops_all_pass": len(all_pass), "ops_some_pass": len(some),
            "ops_none_pass": len(none), "ops_with_a_pass": len(all_pass) + len(some),
            "unsupported_ops": sorted({_op_label(r) for r in mine if r["status"] == "unsupported"
                                       and _op_label(r) in none}),
        }
    return out


def _op_label(row: dict[str, Any]) -> str:
    return f"{row['domain']}.{row['op']}" if row["domain"] not in ("", "ai.onnx") else row["op"]


def format_coverage_summary(summary: dict[str, dict[str, Any]]) -> str:
    lines = []
    for backend, s in summary.items():
        t = s["tests"]
        ran = sum(t.values()) - t["skipped"]
        lines.append(
            f"{backend:<12} ops: {s['ops_all_pass']} all tests pass, {s['ops_some_pass']} some, "
            f"{s['ops_none_pass']} none (of {s['ops_tested']}); tests: {t['pass']}/{ran} pass, "
            f"{t['wrong_result']} wrong, {t['unsupported']} unsupported, {t['error']} error, "
            f"{t['crash']} crash, {t['timeout']} timeout, {t['skipped']} skipped"
        )
    return "\n".join(lines)


_SHORT = {"wrong_result": "wrong", "unsupported": "unsupported", "error": "error", "crash": "crash",
          "timeout": "timeout"}


def _cell(statuses: list[str], version_only: bool = False) -> str:
    ran = [s for s in statuses if s != "skipped"]
    if not ran:
        return "skipped" if statuses else ""
    passed = ran.count("pass")
    if passed == len(ran):
        return f"pass {passed}/{len(ran)}"
    failures = Counter(s for s in ran if s != "pass")
    if passed == 0 and len(failures) == 1:
        status = next(iter(failures))
        mark = "†" if status == "unsupported" and version_only else ""
        return f"{_SHORT[status]}{mark} 0/{len(ran)}"
    detail = ", ".join(f"{n} {_SHORT[s]}" for s, n in failures.most_common())
    return f"{passed}/{len(ran)} ({detail})"


SCOREBOARD_NOTE = """\
## Compared with the ONNX Backend Scoreboard

The ONNX Backend Scoreboard (onnx.ai/backend-scoreboard, repository onnx/backend-scoreboard) ran the same node
tests through each backend's `onnx.backend` implementation and published the share that passed. It counted the
`_expanded` variants and the model tests too and skipped CUDA-only tests. For ONNX Runtime it showed about 74 %
of tests until a 2025 fix of its skip list (onnx/backend-scoreboard issue 70: "closer to 88 %"), and from 2026
an operator score, 84 % (186 of 221 operators; pull request 96). TVM's Relay-era run of the suite (apache/tvm
pull request 10393, 2022) passed 71-77 % of 1992 tests with 298 skipped. Here only direct node tests count,
outputs are compared as ONNX's runner does, each backend runs through its dlcbench adapter (the path a
benchmark takes: compile an artifact, load it, run it), and an explicit "not supported" is kept apart from
other failures; so the percentages below are comparable in kind, not to the digit.
"""


#: The first line of :func:`render_markdown`'s table: ``--markdown`` replaces only a file that starts with it.
MARKDOWN_TITLE = re.compile(r"# ONNX operator coverage$")


def render_markdown(rows: list[dict[str, Any]], backends: list[str], config: CoverageConfig | None = None,
                    tests: list[NodeTest] | None = None) -> str:
    """The coverage matrix as Markdown: summary, operator x backend table, failures by backend."""
    summary = summarize(rows, backends)
    direct = [r for r in rows if not r["expanded"]]
    n_tests = len({r["test"] for r in rows})
    n_ops = len({_op_label(r) for r in direct})
    when = max((r["created"] for r in rows), default=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    limit = f"{config.timeout_s:g} s" if config else "a time limit"
    lines = [
        "# ONNX operator coverage",  # MARKDOWN_TITLE
        "",
        f"The node tests of onnx {onnx_version()} ({n_tests} tests over {n_ops} operators"
        f"{'' if config is None or config.expanded else ', function-expanded variants excluded'}), each compiled,"
        f" loaded and run on CPU through the dlcbench adapter in a worker process with {limit} per test, outputs"
        f" compared as ONNX's backend test runner does (same shape and dtype, rtol {RTOL:g}, atol {ATOL:g})."
        f" Run `{config.run if config else ''}`, last result {when}; regenerate with `python scripts/coverage.py --all`.",
        "",
        "| backend | version | ops: every test passes | ops: some pass | ops: none pass | tests pass | wrong result"
        " | unsupported | error | crash | timeout | skipped |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for backend, s in summary.items():
        t = s["tests"]
        ran = sum(t.values()) - t["skipped"]
        lines.append(
            f"| {backend} | {s['version'] or ''} | {s['ops_all_pass']}/{s['ops_tested']} | {s['ops_some_pass']} |"
            f" {s['ops_none_pass']} | {t['pass']}/{ran} | {t['wrong_result']} | {t['unsupported']} | {t['error']} |"
            f" {t['crash']} | {t['timeout']} | {t['skipped']} |"
        )
    lines += [
        "",
        "A cell reads `pass n/n` (every test of the operator passes), `unsupported 0/n` (the backend says it lacks"
        " the operator; `unsupported† 0/n`: it refused the model's IR or opset version, which the operator's"
        " newest schema sets, not the operator), `error`, `wrong`, `crash` or `timeout 0/n`, or `k/n (...)` for a"
        " mix. Sequence, optional and map tests are `skipped`: dlcbench sessions exchange tensors only.",
        "",
        "## Matrix",
        "",
        "| operator | opset | " + " | ".join(backends) + " |",
        "|---|---|" + "---|" * len(backends),
    ]
    by_op: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    opsets: dict[str, set] = defaultdict(set)
    other_unsupported: set[tuple[str, str]] = set()
    for r in direct:
        by_op[_op_label(r)][r["backend"]].append(r["status"])
        if r["status"] == "unsupported" and not (r["message"] or "").startswith(VERSION_REFUSAL):
            other_unsupported.add((_op_label(r), r["backend"]))
        if r["opset"] is not None:
            opsets[_op_label(r)].add(int(r["opset"]))
    for op in sorted(by_op, key=lambda o: (o.count("."), o.lower())):
        cells = [_cell(by_op[op].get(b, []), (op, b) not in other_unsupported) for b in backends]
        lines.append(f"| {op} | {', '.join(str(v) for v in sorted(opsets[op]))} | " + " | ".join(cells) + " |")
    lines += ["", SCOREBOARD_NOTE,
              "| backend | tests passing | operators, every test passing | operators, at least one passing |",
              "|---|---|---|---|"]
    for backend, s in summary.items():
        ran = sum(s["tests"].values()) - s["tests"]["skipped"]
        ops = s["ops_tested"] or 1
        lines.append(f"| {backend} | {100 * s['tests']['pass'] / (ran or 1):.0f} % | {100 * s['ops_all_pass'] / ops:.0f} %"
                     f" | {100 * s['ops_with_a_pass'] / ops:.0f} % |")
    lines += ["", "## Why tests fail", "",
              "One row per operator with failing tests: how many, and the first failing test's message"
              " (every test's outcome and message is in the `coverage` table of the results database).", ""]
    for backend in backends:
        bad = [r for r in direct if r["backend"] == backend and r["status"] not in ("pass", "skipped")]
        per_op: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in sorted(bad, key=lambda r: r["test"]):
            per_op[_op_label(r)].append(r)
        lines += [f"<details><summary>{backend}: {len(bad)} tests of {len(per_op)} operators not passing</summary>",
                  "", "| operator | failing | statuses | first failing test | message |", "|---|---|---|---|---|"]
        for op in sorted(per_op, key=str.lower):
            group = per_op[op]
            statuses = ", ".join(f"{n} {s}" for s, n in Counter(r["status"] for r in group).most_common())
            message = one_line(group[0]["message"] or "", 200).replace("|", "\\|")
            lines.append(f"| {op} | {len(group)}/{len(by_op[op][backend])} | {statuses} | {group[0]['test']} |"
                         f" {message} |")
        lines += ["", "</details>", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m dlcbench.coverage --worker BACKEND ...``: a coverage worker (started by :class:`Worker`)."""
    import argparse

    become_worker()
    parser = argparse.ArgumentParser(prog="python -m dlcbench.coverage")
    parser.add_argument("--worker", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--scratch", required=True)
    args = parser.parse_args(argv)
    return worker_main(args.worker, args.threads, args.scratch)


if __name__ == "__main__":
    sys.exit(main())
