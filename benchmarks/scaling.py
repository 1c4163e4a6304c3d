#!/usr/bin/env python3
"""What scale-out costs and gains on this machine: the Ray executor's per-job overhead against the local one, and
MetaSchedule's trials per minute measuring on 1 and on 2 local TVM RPC servers against measuring locally.

Both run the same work both ways in one run: a matrix of tiny jobs (``compare`` local, then ``--executor ray``),
and the same tuning budget with a fresh database each time. Writes ``benchmarks/results/scaling.md`` and ``.json``.

Example:
    python benchmarks/scaling.py --jobs-models mlp,cnn --trials 64
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(argv: list[str], cwd: Path, timeout: float = 3600) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:2])} failed ({proc.returncode}): {proc.stderr[-1500:]}")
    return seconds, proc


def executor_overhead(args, work: Path) -> dict:
    """Wall seconds per job of one small matrix, local executor against a private local Ray instance."""
    matrix = ["--models", args.jobs_models, "--backends", "onnxruntime,openvino", "--batch", "1,2", "--preset", "tiny",
              "--threads", "1", "--min-seconds", "0.2", "--min-iters", "20"]
    result = {}
    # A first pass fills the export cache, so neither executor pays for the exports the other then reuses.
    _run([str(ROOT / "scripts" / "compare.py"), "--name", "warm-up", *matrix, "--db", str(work / "warm.sqlite")], work)
    for executor in ("local", "ray"):
        seconds, proc = _run([str(ROOT / "scripts" / "compare.py"), "--name", f"overhead-{executor}", *matrix,
                              "--db", str(work / f"{executor}.sqlite"), "--executor", executor], work)
        jobs = int(re.match(r"\S+: (\d+) ok", proc.stdout).group(1))
        result[executor] = {"seconds": round(seconds, 1), "jobs": jobs, "seconds_per_job": round(seconds / jobs, 2)}
    result["ray_overhead_s_per_job"] = round(result["ray"]["seconds_per_job"] - result["local"]["seconds_per_job"], 2)
    return result


def _free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tuning_throughput(args, work: Path) -> dict:
    """Trials per minute of the same tuning budget: measured locally, then on 1 and on 2 RPC servers."""
    result = {}
    for servers in (0, 1, 2):
        port = _free_port()
        extra: list[str] = []
        if servers:
            _run([str(ROOT / "scripts" / "rpc.py"), "start", "--servers", str(servers), "--key", "scaling",
                  "--port", str(port)], work)
            extra = ["--rpc-tracker", f"127.0.0.1:{port}", "--rpc-key", "scaling"]
        try:
            label = f"{servers} rpc server(s)" if servers else "local runner"
            seconds, proc = _run([str(ROOT / "scripts" / "tune.py"), "--model", args.tune_model, "--preset",
                                  args.tune_preset, "--trials", str(args.trials), "--threads", "1",
                                  "--tuning-db", str(work / f"db-{servers}"), "--out", str(work / f"tuned-{servers}"),
                                  *extra], work)
            match = re.search(r"tuning\s+(\d+) new trials in ([\d.]+) s", proc.stdout)
            trials, tuned_s = int(match.group(1)), float(match.group(2))
            result[label] = {"trials": trials, "tuning_seconds": tuned_s, "command_seconds": round(seconds, 1),
                             "trials_per_minute": round(trials / tuned_s * 60, 1)}
        finally:
            if servers:
                subprocess.run([sys.executable, str(ROOT / "scripts" / "rpc.py"), "stop", "--port", str(port)],
                               capture_output=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs-models", default="mlp,cnn", help="models of the executor matrix (tiny preset)")
    parser.add_argument("--tune-model", default="mlp")
    parser.add_argument("--tune-preset", default="default")
    parser.add_argument("--trials", type=int, default=64, help="trials of each tuning run")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scaling.md")
    args = parser.parse_args()
    from dlcbench.results.env import environment

    env = environment(1, peak=False)
    with tempfile.TemporaryDirectory(prefix="dlcbench-scaling-") as tmp:
        work = Path(tmp)
        overhead = executor_overhead(args, work)
        throughput = tuning_throughput(args, work)
    lines = [
        "# Scale-out on this machine: Ray executor overhead, tuning on RPC servers", "",
        f"Machine: {env['cpu']['model']}, {env['cores']} cores; git {env.get('git_revision')}; one run of "
        f"`benchmarks/scaling.py` ({' '.join(sys.argv[1:]) or 'defaults'}).", "",
        "## Executor overhead", "",
        f"The same matrix ({args.jobs_models} tiny x onnxruntime, openvino x batch 1, 2; each job a fresh worker "
        "process that loads its export from the cache, compiles, checks and times) run by each executor after a "
        "first pass that filled the export cache; wall seconds of the whole `compare` command. The Ray figure "
        "includes starting and stopping the private local instance; both collect an environment record with the "
        "measured matmul peak (the local executor once, Ray once per worker process).", "",
        "| executor | jobs | seconds | seconds per job |", "|---|---|---|---|",
        *(f"| {name} | {r['jobs']} | {r['seconds']} | {r['seconds_per_job']} |"
          for name, r in overhead.items() if isinstance(r, dict)),
        "", f"Difference, Ray minus local: {overhead['ray_overhead_s_per_job']:+.2f} s per job (timing jobs run one "
        "at a time on a node either way: the timing resource).", "",
        "## Tuning throughput", "",
        f"MetaSchedule on `{args.tune_model}` ({args.tune_preset}), {args.trials} trials, a fresh database each "
        "time, candidates built here by the pooled builder and measured by the runner named. Servers are local "
        f"processes on this {env['cores']}-core machine, so they share its cores with the builder.", "",
        "| measured by | trials | tuning seconds | trials per minute |", "|---|---|---|---|",
        *(f"| {name} | {r['trials']} | {r['tuning_seconds']} | {r['trials_per_minute']} |"
          for name, r in throughput.items()),
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    args.out.with_suffix(".json").write_text(json.dumps({"executor": overhead, "tuning": throughput,
                                                         "environment": env, "argv": sys.argv[1:]}, indent=2))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
