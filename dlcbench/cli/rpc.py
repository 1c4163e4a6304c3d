"""Start, stop or inspect a TVM RPC device farm: TVM's tracker, and TVM's servers with dlcbench's thread placement.

`start` returns once every server is registered and leaves the tracker and servers running in the background
(their process groups are recorded under the dlcbench cache); `stop --port PORT` ends exactly those. Servers
on other machines join with `python -m dlcbench.compilers.tvm.rpc_server --tracker HOST:PORT --key KEY --host
THEIR_ADDRESS` (or TVM's own `tvm.exec.rpc_server`, without the placement; docs/scaling.md). Then
`dlcbench tune --model M` or `dlcbench compile --backend tvm --model M`, each with `--rpc-tracker HOST:PORT
--rpc-key KEY`.
"""

from __future__ import annotations

import argparse
import json

from dlcbench.errors import ExitCode, run_cli


def main(argv: list[str] | None = None) -> int:
    from dlcbench.compilers.tvm import rpc

    parser = argparse.ArgumentParser(prog="dlcbench rpc", description=__doc__, epilog=ExitCode.help_text(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    start = sub.add_parser("start", help="start a tracker and N servers in the background")
    start.add_argument("--servers", type=int, default=1, help="servers to start (default: 1)")
    start.add_argument("--key", required=True, help="the servers' key (letters, digits, '_', '.', '-')")
    stop = sub.add_parser("stop", help="stop what `start` started on --port")
    status = sub.add_parser("status", help="what the tracker on --host:--port knows")
    for action in (start, stop, status):
        action.add_argument("--port", type=int, default=rpc.DEFAULT_PORT, help=f"tracker port (default: {rpc.DEFAULT_PORT})")
    for action in (start, status):
        action.add_argument("--host", default=rpc.DEFAULT_HOST,
                            help=f"address to bind and query (default: {rpc.DEFAULT_HOST}; TVM's own is 0.0.0.0)")
    start.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the servers to register")
    args = parser.parse_args(argv)
    if args.action == "start":
        state = rpc.start_farm(args.servers, args.key, args.host, args.port, args.timeout)
        print(f"tracker {args.host}:{args.port}, {args.servers} server(s) with key {args.key}; "
              f"stop with: dlcbench rpc stop --port {args.port}")
        print(f"log {state['log']}")
    elif args.action == "stop":
        state = rpc.stop_farm(args.port)
        print(f"stopped the tracker and {len(state.get('processes', [])) - 1} server(s) on port {args.port}")
    else:
        print(json.dumps(rpc.farm_status(args.host, args.port), indent=2))
    return ExitCode.OK


def cli() -> None:
    """Console entry point: :func:`main` with dlcbench's one-line errors and exit codes."""
    run_cli(main)
