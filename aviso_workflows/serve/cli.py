"""``aviso-workflows serve``: the Aviso 2 HTTP API over the store, on uvicorn.

Added to the main command through the entry point group ``aviso_workflows.commands``. SIGTERM and
SIGINT end every open stream with ``connection-closing`` ``server_shutdown`` before the server stops.

Every start of the app goes through :func:`make_server`: :func:`serve` runs it in the foreground (the
command), :func:`start_serve` in a thread of the caller (tests, the board's demo), and
:func:`start_serve_process` runs the command itself as a child process (demos, tests that kill it).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

#: Seconds uvicorn waits for streams to finish after a shutdown was asked for.
GRACEFUL_SECONDS = 10
#: Seconds a started server has to answer, and a stopped one to end.
START_SECONDS = STOP_SECONDS = 30.0


def add_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``serve`` to the ``aviso-workflows`` command."""
    serve = subparsers.add_parser("serve", parents=[common],
                                  help="serve the Aviso 2 HTTP API (notify, watch, replay, schema) over the store")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    serve.add_argument("--base-url", metavar="URL",
                       help="the server's public URL, the CloudEvents' source (default http://HOST:PORT)")
    serve.add_argument("--heartbeat", type=float, default=10.0, metavar="SECONDS",
                       help="heartbeat period of watch streams (default 10)")
    serve.add_argument("--max-duration", type=float, default=3600.0, metavar="SECONDS",
                       help="a watch stream is closed after this long, max_duration_reached (default 3600)")
    serve.add_argument("--replay-limit", type=int, default=10_000, metavar="N",
                       help="notifications a replay sends at most (default 10000)")
    serve.add_argument("--queue-size", type=int, default=1000, metavar="N",
                       help="transactions a live stream may have unsent before it is cut off (default 1000)")
    auth = serve.add_mutually_exclusive_group()
    auth.add_argument("--etcd-auth", action="store_true",
                      help="clients' Basic credentials sign in to etcd as that user (etcd's roles decide), and "
                           "their Bearer tokens are passed on to etcd's endpoint")
    auth.add_argument("--tokens", metavar="FILE",
                      help="YAML or JSON 'tokens: {TOKEN: {read: [EVENT...], write: [EVENT...]}}' ('*': every "
                           "event); clients send Authorization: Bearer TOKEN")
    serve.add_argument("--aviso-server-config", metavar="FILE",
                       help="serve the events of this aviso-server configuration file (its notification_schema) "
                            "with aviso-server 0.7.1's rules, instead of our built-in events")
    serve.add_argument("--expect", metavar="FILE",
                       help="check this expectation file while serving (as 'aviso-workflows expect FILE' does): its "
                            "triggers fire, and the board at /board shows expected and late keys")
    serve.add_argument("--expect-dates", action="append", metavar="YYYYMMDD[,...]",
                       help="with --expect: the data dates to check (default today and yesterday, UTC)")
    serve.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from ..commandline import store_from_args
    from ..errors import ValidationError
    from .app import ServeOptions
    from .auth import load_tokens

    for name in ("heartbeat", "max_duration"):
        if not getattr(args, name) > 0:
            raise ValidationError(name.replace("_", "-"), getattr(args, name), "expected a positive number of seconds")
    for name in ("replay_limit", "queue_size"):
        if getattr(args, name) < 1:
            raise ValidationError(name.replace("_", "-"), getattr(args, name), "expected a whole number of at least 1")
    if not 0 < args.port < 65536:
        raise ValidationError("port", args.port, "expected a port number from 1 to 65535")
    mode = "tokens" if args.tokens else "etcd" if args.etcd_auth else "none"
    events = None
    if args.aviso_server_config:  # the whole file is checked before the server starts
        from .server_config import load_server_config

        events = load_server_config(args.aviso_server_config)
    store = store_from_args(args)
    dates = tuple(d.strip() for text in args.expect_dates or [] for d in text.split(",") if d.strip())
    if dates and not args.expect:
        raise ValidationError("expect-dates", ",".join(dates), "needs --expect FILE")
    if args.expect:  # the whole file is checked before the server starts
        from .board import expectation_checker

        expectation_checker(store, args.expect, list(dates))
    options = ServeOptions(base_url=args.base_url or f"http://{args.host}:{args.port}", heartbeat=args.heartbeat,
                           max_duration=args.max_duration, replay_limit=args.replay_limit,
                           queue_size=args.queue_size, auth=mode,
                           tokens=load_tokens(args.tokens) if args.tokens else {}, expect=args.expect,
                           expect_dates=dates, server_events=events)
    serve(store, options, args.host, args.port, verbose=args.verbose)
    return 0


def serve(store: Any, options: Any, host: str, port: int, *, verbose: bool = False) -> None:
    """Run the server until SIGTERM or SIGINT (streams get ``server_shutdown`` first)."""
    server = make_server(store, options, host, port, verbose=verbose)
    server.run()


def make_server(store: Any, options: Any, host: str, port: int, *, verbose: bool = False) -> Any:
    """A uvicorn server of the app; ``server.run()`` serves, ``shutdown(server)`` stops it from another thread."""
    import uvicorn

    from .app import create_app

    app = create_app(store, options)
    config = uvicorn.Config(app, host=host, port=port, log_level="info" if verbose else "warning",
                            timeout_graceful_shutdown=GRACEFUL_SECONDS, lifespan="on")

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            app.state.serve.begin_shutdown()  # streams end with server_shutdown, so the connections close
            super().handle_exit(sig, frame)

    return Server(config)


def shutdown(server: Any) -> None:
    """Stop a server run in another thread as a signal would: streams first, then the server."""
    server.config.app.state.serve.begin_shutdown()
    server.should_exit = True


class ServeFailed(RuntimeError):
    """A serve did not start, or did not stop, within its bound (the end of its log, if any, is in the message)."""


@dataclass
class ServeThread:
    """A serve run in a thread of this process by :func:`start_serve`; :meth:`stop` ends it as SIGTERM does."""

    url: str
    uvicorn: Any
    thread: threading.Thread

    @property
    def state(self) -> Any:
        """The app's shared state (streams, shared watches)."""
        return self.uvicorn.config.app.state.serve

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        """Streams get ``server_shutdown``, then the server ends; raises if it did not within ``timeout``."""
        if self.thread.is_alive():
            shutdown(self.uvicorn)
            self.thread.join(timeout)
        if self.thread.is_alive():
            raise ServeFailed(f"serve at {self.url} did not stop within {timeout:g} s")

    def __enter__(self) -> ServeThread:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()


def start_serve(store: Any, options: Any, host: str = "127.0.0.1", port: int | None = None, *,
                verbose: bool = False, timeout: float = START_SECONDS) -> ServeThread:
    """Serve ``store`` in a thread (uvicorn, the app's lifespan) on ``port`` (default: a free one); returns once
    it accepts connections."""
    from ..server import free_port

    port = port or free_port()
    server = make_server(store, options, host, port, verbose=verbose)
    thread = threading.Thread(target=server.run, name=f"serve {port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:  # uvicorn sets it once its socket listens; it offers nothing to wait on
        if not thread.is_alive() or time.monotonic() > deadline:
            raise ServeFailed(f"serve on {host}:{port} did not start within {timeout:g} s")
        time.sleep(0.02)
    return ServeThread(f"http://{host}:{port}", server, thread)


@dataclass
class ServeProcess:
    """``aviso-workflows serve`` run as a child process by :func:`start_serve_process`."""

    url: str
    process: subprocess.Popen[bytes]

    def stop(self, timeout: float = STOP_SECONDS) -> int:
        """SIGTERM (streams get ``server_shutdown``), then SIGKILL after ``timeout``; the exit status."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                return self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait(timeout=timeout)

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()


def start_serve_process(endpoint: str, port: int, arguments: Sequence[str] = (), *, log: Path | None = None,
                        env: Mapping[str, str] | None = None, timeout: float = START_SECONDS) -> ServeProcess:
    """``aviso-workflows serve --port PORT --endpoint ENDPOINT ARGUMENTS`` on 127.0.0.1, once ``/health`` answers.

    Its output is appended to ``log`` (else shared with this process); a serve that exits or does not answer
    within ``timeout`` is stopped and raises :class:`ServeFailed` with the end of its log.
    """
    argv = [sys.executable, "-m", "aviso_workflows.cli", "serve", "--port", str(port), "--endpoint", endpoint,
            *arguments]
    if log is None:
        process = subprocess.Popen(argv, env=None if env is None else dict(env))
    else:
        with log.open("ab") as output:
            process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT,
                                       env=None if env is None else dict(env))
    served = ServeProcess(f"http://127.0.0.1:{port}", process)
    deadline = time.monotonic() + timeout
    while not _healthy(served.url):
        if process.poll() is not None or time.monotonic() > deadline:
            served.stop()
            tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
            raise ServeFailed(f"serve on port {port} did not answer /health within {timeout:g} s"
                                  + (f"; its log:\n{tail}" if tail else ""))
        time.sleep(0.1)
    return served


def _healthy(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/health", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


__all__ = ["ServeFailed", "ServeProcess", "ServeThread", "add_commands", "make_server", "serve", "shutdown",
           "start_serve", "start_serve_process"]
