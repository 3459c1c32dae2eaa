"""``aviso-workflows serve``: the Aviso 2 HTTP API over the store, on uvicorn.

Added to the main command through the entry point group ``aviso_workflows.commands``. SIGTERM and
SIGINT end every open stream with ``connection-closing`` ``server_shutdown`` before the server stops.
"""

from __future__ import annotations

import argparse
from types import FrameType
from typing import Any

#: Seconds uvicorn waits for streams to finish after a shutdown was asked for.
GRACEFUL_SECONDS = 10


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


__all__ = ["add_commands", "make_server", "serve", "shutdown"]
