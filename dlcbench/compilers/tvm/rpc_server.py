"""TVM's RPC server that also places the thread running the work: ``python -m dlcbench.compilers.tvm.rpc_server``.

TVM's pool pins each worker to one core and leaves the calling thread, which runs the first share of every
parallel loop, free over all of them, so it can share a worker's core (:mod:`dlcbench.cpus`). On an RPC server
that caller is the session's serving thread, out of a client's reach. This server is TVM's own
(``tvm.rpc.Server``; the options of ``tvm.exec.rpc_server`` but ``--through-proxy``, and ``--host`` defaults to
127.0.0.1) with one function more, :data:`PIN_FUNCTION`, registered in the process its sessions fork from;
clients call it after sizing the pool (:func:`dlcbench.compilers.tvm.rpc.configure_remote_pool`). A plain
``tvm.exec.rpc_server`` still works: the caller then keeps TVM's placement.
"""

from __future__ import annotations

import argparse

from dlcbench.errors import ExitCode, run_cli

PIN_FUNCTION = "dlcbench.rpc.pin_apart_from_pinned_threads"


def register_functions() -> None:
    """Registers :data:`PIN_FUNCTION` in this process: it binds the calling thread (the session's serving
    thread) to a core no pinned thread holds and returns that core, or -1 where it changed nothing.

    Sessions are forked unless ``--no-fork`` chose spawn (then they start without it); fork is asked for
    explicitly, as Python's default on Linux moves to forkserver."""
    import multiprocessing

    import tvm

    from dlcbench.cpus import pin_apart_from_pinned_threads

    def pin() -> int:
        cpu = pin_apart_from_pinned_threads()
        return -1 if cpu is None else cpu

    tvm.register_global_func(PIN_FUNCTION, pin, override=True)
    if multiprocessing.get_start_method(allow_none=True) != "spawn":
        multiprocessing.set_start_method("fork", force=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dlcbench.compilers.tvm.rpc_server",
        description="TVM's RPC server (tvm.exec.rpc_server) with dlcbench's placement of the session's calling "
                    "thread on a core of its own. Size its TVM pool with TVM_NUM_THREADS (its cores).")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9090, help="first port to try (default 9090)")
    parser.add_argument("--port-end", type=int, default=9199, help="last port to try (default 9199)")
    parser.add_argument("--tracker", help="HOST:PORT of a tracker to register with")
    parser.add_argument("--key", default="", help="the key to register under")
    parser.add_argument("--custom-addr", help="the address the tracker hands to clients, if not --host")
    parser.add_argument("--load-library", help="additional libraries to load, separated by ':'")
    parser.add_argument("--no-fork", action="store_true",
                        help="start sessions by spawn, not fork (their calling thread then keeps TVM's placement)")
    parser.add_argument("--silent", action="store_true", help="log less")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Serves until ended (SIGTERM or Ctrl-C); a bad ``--tracker`` or ``--key``, or a tracker without a key, is
    one line on stderr (exit 2)."""
    args = build_parser().parse_args(argv)
    tracker = None
    if args.tracker:  # a key alone is allowed: clients connecting directly must then give it
        from dlcbench.compilers.tvm.rpc import parse_tracker

        parsed = parse_tracker(args.tracker, args.key, flags=("--tracker", "--key"))
        tracker = (parsed.host, parsed.port)
    elif args.key:
        from dlcbench.compilers.tvm.rpc import check_key

        check_key(args.key)
    from tvm import rpc

    # By reference, even when this file runs as __main__: the server's worker imports it and calls it there.
    from dlcbench.compilers.tvm.rpc_server import register_functions as callback

    server = rpc.Server(args.host, args.port, args.port_end, key=args.key, tracker_addr=tracker,
                        load_library=args.load_library, custom_addr=args.custom_addr, silent=args.silent,
                        no_fork=args.no_fork, server_init_callback=callback)
    server.proc.join()
    return ExitCode.OK


if __name__ == "__main__":
    run_cli(main)
