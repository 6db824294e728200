"""``tsm-serve REPO``: serve a Triton model repository (``tsm-export --target triton``) on this machine.

Thin on purpose: the work is in :class:`online_tsm.runtimes.triton.server.TritonServer`.
"""
from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from online_tsm.console.cli_util import add_debug_flag, port_number, positive_int, run_cli

from online_tsm.errors import UserError


def parser() -> argparse.ArgumentParser:
    from online_tsm.runtimes.triton.server import DEFAULT_PORTS

    p = argparse.ArgumentParser(
        prog="tsm-serve", description="Serve a Triton model repository written by 'tsm-export --target triton' "
        "with the Triton Inference Server bundled in nvidia-pytriton (python backend); every camera is one "
        "sequence. Stops cleanly on Ctrl-C or SIGTERM.")
    p.add_argument("repository", help="the model repository folder (tsm-export --target triton -o REPO)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    for name in ("grpc", "http", "metrics"):
        p.add_argument(f"--{name}-port", type=port_number, default=DEFAULT_PORTS[name],
                       help=f"{name} port (default {DEFAULT_PORTS[name]}; 0: any free port)")
    p.add_argument("--instances", type=positive_int, help="model instances, each with its own sequence slots "
                                                       "(default: the repository's config, 1)")
    p.add_argument("--log", help="keep the server's log in this file (default: a temporary file, removed on exit)")
    p.add_argument("--ready-timeout", type=float, default=120.0, help="seconds to wait for the models (default 120)")
    add_debug_flag(p)
    return p


def run(args: argparse.Namespace) -> int:
    from online_tsm.runtimes.base import BackendUnavailable
    from online_tsm.runtimes.triton.server import ServerError, TritonServer, find_triton, free_port

    try:
        find_triton()
    except BackendUnavailable as exc:
        raise UserError(str(exc)) from None
    ports = {name: getattr(args, f"{name}_port") or free_port(args.host) for name in ("grpc", "http", "metrics")}
    server = TritonServer(Path(args.repository), host=args.host, grpc_port=ports["grpc"], http_port=ports["http"],
                          metrics_port=ports["metrics"], instances=args.instances,
                          log_path=Path(args.log) if args.log else None)
    stop = {"signal": None}

    def on_signal(signum: int, _frame: Any) -> None:
        stop["signal"] = signum

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            server.start()
            for note in server.skipped:
                print(f"note: not serving {note}", file=sys.stderr)
            server.wait_ready(args.ready_timeout)
        except ServerError as exc:
            raise UserError(str(exc)) from None
        print(f"serving {args.repository} (models {', '.join(server.served)}): gRPC {server.grpc_address}, "
              f"HTTP {args.host}:{server.http_port}, metrics {args.host}:{server.metrics_port}", flush=True)
        print(f"clients: open_runtime({str(args.repository)!r}, backend='triton', address='{server.grpc_address}'); "
              "Ctrl-C stops", flush=True)
        while stop["signal"] is None:
            if server.process is not None and server.process.poll() is not None:
                tail = server.log_tail()
                raise UserError(f"tritonserver stopped by itself (code {server.process.returncode}): {tail}")
            time.sleep(0.2)
        code = server.stop()
        print(f"stopped (tritonserver exit code {code})", flush=True)
        return 0
    finally:
        server.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(run, parser(), list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
