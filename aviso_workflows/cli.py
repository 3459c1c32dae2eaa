"""The ``aviso-workflows`` command: notify, wait, listen, key, value, schema and the embedded server.

It parses arguments, calls the runtime (``waiting``, ``listening``, the store) and prints. Exit codes:
0 done (released), 1 timed out, 2 bad input or the store could not be used, 130 interrupted, 143 ended by
SIGTERM (wait).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import yaml

from . import __version__, server
from .commandline import (
    COMMANDS_GROUP,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TIMEOUT,
    OneLineErrorParser,
    add_adapter_commands,
    add_request_arguments,
    add_who_argument,
    common_options,
    format_notification,
    listen_requests,
    listen_window,
    one_line,
    request_from_args,
    store_from_args,
    who_of,
)
from .config import state_dir
from .errors import AvisoWorkflowsError, ValidationError
from .listening import ListenOptions, run_listener, stop_on_signals
from .request import check_timeout
from .schema import to_pyaviso_document
from .store import Store
from .waiters import format_waiter, list_waiters, parse_filters
from .waiting import WaitOptions, run_wait

__all__ = ["COMMANDS_GROUP", "EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_TIMEOUT", "build_parser", "main"]


# -- notify, key, value --------------------------------------------------------------------------
def cmd_notify(args: argparse.Namespace) -> int:
    store = store_from_args(args)
    request, extras = request_from_args(store, args)
    location = args.location if args.location is not None else extras.get("location")
    ttl = args.ttl if args.ttl is not None else extras.get("ttl")
    result = store.notify(request, location=location, ttl=ttl)
    batches = len(result.revisions)
    if result.revisions:
        print(f"notified {len(result.keys)} key(s) in {batches} transaction(s), revision {result.revisions[-1]}")
    else:  # an aviso-server answers a notify without a sequence
        print(f"notified {len(result.keys)} key(s)")
    for key in result.keys if args.verbose or len(result.keys) <= 10 else ():
        print(f"  {key}")
    return EXIT_OK


def cmd_key(args: argparse.Namespace) -> int:
    store = store_from_args(args)
    request, _ = request_from_args(store, args)
    request.require_complete("key")
    for key in request.keys():
        print(key)
    return EXIT_OK


def cmd_value(args: argparse.Namespace) -> int:
    store = store_from_args(args)
    request, _ = request_from_args(store, args)
    missing = 0
    for key, value in store.value(request).items():
        print(f"{key} {value if value is not None else '(not posted)'}")
        missing += value is None
    return EXIT_OK if not missing else EXIT_TIMEOUT


def cmd_schema(args: argparse.Namespace) -> int:
    store = store_from_args(args)
    schemas = [store.schemas[name] for name in (args.event or store.schemas.names())]
    if args.format == "pyaviso":
        print(json.dumps(to_pyaviso_document(schemas), indent=2))
    else:
        print(yaml.safe_dump({"events": {s.name: s.to_config() for s in schemas}}, sort_keys=False))
    return EXIT_OK

# -- wait, listen, waiting, expect ---------------------------------------------------------------
def cmd_wait(args: argparse.Namespace) -> int:
    store = store_from_args(args)
    request, _ = request_from_args(store, args)
    if not args.any:
        request.require_complete("wait (without --any)")
    options = WaitOptions(mode="any" if args.any else "all", timeout=check_timeout(args.timeout),
                          min_found=args.min_found, progress_commands=tuple(args.progress_command or ()),
                          partial_commands=tuple(args.partial_command or ()),
                          show_progress=sys.stderr.isatty() and not args.quiet, who=who_of(args))
    outcome = run_wait(store, request, options)
    if outcome.timed_out is not None:
        print(f"aviso-workflows: {outcome.timed_out}", file=sys.stderr)
    if outcome.timed_out is not None or not args.quiet:
        for notification in outcome.found:
            print(format_notification(notification, args.json), flush=True)
    return EXIT_TIMEOUT if outcome.timed_out is not None else EXIT_OK


def cmd_listen(args: argparse.Namespace) -> int:
    store = store_from_args(args)
    requests, listeners = listen_requests(store, args)
    start, end = listen_window(args)
    if args.dead_letters and not listeners:
        raise ValidationError("dead-letters", args.pairs, "dead letters belong to a listener file with triggers")
    options = ListenOptions(tuple(requests), tuple(listeners), args.pairs if listeners else None, start=start,
                            until=end, cursor=args.cursor, count=args.count, as_json=args.json,
                            dry_run=args.dry_run, dead_letters=args.dead_letters,
                            dead_letter_file=Path(args.dead_letter_file) if args.dead_letter_file else None,
                            who=who_of(args))
    return run_listener(store, options)


def cmd_waiting(args: argparse.Namespace) -> int:
    store = store_from_args(args)
    store.backend.etcd("waiting (the registry of waiters is kept in etcd)")
    for waiter in list_waiters(store, parse_filters(args.filters)):
        print(json.dumps(waiter.to_dict()) if args.json else format_waiter(waiter), flush=True)
    return EXIT_OK


def cmd_expect(args: argparse.Namespace) -> int:
    from .expect import ExpectationChecker, load_expectation_file

    store = store_from_args(args)
    expectations = load_expectation_file(store, args.file)
    dates = [d for text in args.dates or [] for d in text.split(",") if d.strip()]
    state_file = Path(args.state_file) if args.state_file else state_dir() / "expect" / f"{Path(args.file).stem}.json"
    checker = ExpectationChecker(store, expectations, dates=dates or None, days=args.days, state_file=state_file)
    if args.once:
        checker.start()
        checker.tick()
        for item in checker.states():
            state = item.to_dict()
            arrived = f", arrived {state['arrived_at']}" if state["arrived_at"] else ""
            print(json.dumps(state) if args.json else f"{state['date']} {state['name']} {item.key} {state['state']} "
                  f"(expected by {state['expected_by']}{arrived})", flush=True)
        return EXIT_OK
    stop = threading.Event()
    stop_on_signals(stop)
    print(f"expect: {args.file}, {len(expectations)} expectation(s), dates {', '.join(checker.dates())}", flush=True)
    checker.run(stop)
    return EXIT_OK


# -- server --------------------------------------------------------------------------------------
def cmd_server(args: argparse.Namespace) -> int:
    data_dir = args.data_dir or server.default_data_dir()
    if args.action == "start":
        info = server.start(data_dir, args.port)
        print(f"etcd running at {info.client_url} (pid {info.pid}, data in {info.data_dir})")
        print(f"use it with: export AVISO_WORKFLOWS_ENDPOINTS={info.client_url}")
        return EXIT_OK
    if args.action == "stop":
        stopped = server.stop(data_dir)
        print("stopped" if stopped else f"no server running on {data_dir}")
        return EXIT_OK
    running = server.status(data_dir)
    if running is None:
        print(f"not running (data dir {data_dir})")
        return EXIT_TIMEOUT
    revision = Store([running.client_url]).current_revision()
    print(f"running at {running.client_url} (pid {running.pid}, data in {running.data_dir}, revision {revision})")
    return EXIT_OK


# -- parser --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The full command-line parser (adapters add their subcommands)."""
    common = common_options()
    parser: argparse.ArgumentParser = OneLineErrorParser(
        prog="aviso-workflows", description="Aviso-compatible data-availability notifications in etcd.")
    parser.add_argument("--version", action="version", version=f"aviso-workflows {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    notify = commands.add_parser("notify", parents=[common], help="post notifications (one transaction per 128 keys)")
    add_request_arguments(notify)
    notify.add_argument("--location", help="payload stored as the value (the data's URL)")
    notify.add_argument("--ttl", type=int, metavar="SECONDS", help="delete the keys after this many seconds")
    notify.set_defaults(run=cmd_notify)

    wait = commands.add_parser("wait", parents=[common], help="block until every requested key exists")
    add_request_arguments(wait)
    wait.add_argument("--any", action="store_true", help="release on the first matching key")
    wait.add_argument("--timeout", type=float, metavar="SECONDS", help="give up after this long (exit 1)")
    wait.add_argument("--json", action="store_true", help="print notifications as JSON lines")
    wait.add_argument("--quiet", action="store_true", help="print nothing when released")
    wait.add_argument("--min-found", type=int, metavar="K",
                      help="at the timeout, release (exit 0, WARNING naming the missing keys) if at least K keys "
                           "exist; fewer: time out as usual")
    wait.add_argument("--partial-command", action="append", metavar="CMD",
                      help="with --min-found: run CMD (no shell) when released with part of the keys; placeholders "
                           "{missing} (such as 'step=3 step=5'), {missing_keys}, {found}, {total}")
    add_who_argument(wait)
    wait.add_argument("--progress-command", action="append", metavar="CMD",
                      help="run CMD (no shell) as keys are found, for the newest count (a slow CMD is not run "
                           "for every key, and runs once more for the final count); placeholders {ready}: keys "
                           "found in request order with none missing before them (trigger on this), {found}: keys "
                           "found in any order, {total}; {key} {location} {revision} and request fields such as "
                           "{step}: those of the last ready key (empty while the first is missing); {event}; "
                           "{newest_key}: the key just found")
    wait.set_defaults(run=cmd_wait)

    listen_parser = commands.add_parser("listen", parents=[common], help="print notifications as they arrive")
    add_request_arguments(listen_parser)
    listen_parser.add_argument("--from", dest="from_", metavar="TIME|REVISION",
                               help="first start: from this UTC time or store revision (a saved cursor wins)")
    listen_parser.add_argument("--to", metavar="TIME", help="with --from TIME: replay until this UTC time, then exit")
    listen_parser.add_argument("--cursor", metavar="NAME", help="resume where the listener of this name stopped")
    listen_parser.add_argument("--count", type=int, metavar="N", help="exit after N notifications")
    listen_parser.add_argument("--json", action="store_true", help="print notifications as JSON lines")
    listen_parser.add_argument("--dry-run", action="store_true", help="show what the listeners' actions would do")
    listen_parser.add_argument("--dead-letters", choices=("list", "replay"),
                               help="list the notifications whose triggers failed for good, or run them again")
    listen_parser.add_argument("--dead-letter-file", metavar="FILE",
                               help="where failed notifications go (default: STATE_DIR/dead-letters/CURSOR.jsonl)")
    add_who_argument(listen_parser)
    listen_parser.set_defaults(run=cmd_listen)

    waiting = commands.add_parser("waiting", parents=[common], help="list who waits for what now")
    waiting.add_argument("filters", nargs="*", metavar="NAME=VALUE",
                         help="only waiters matching: a request field (step=3: waits for step 3), a field of who "
                              "waits (dag_id=..., ecflow_path=..., kind=cli), host or pid")
    waiting.add_argument("--json", action="store_true", help="one JSON object per waiter")
    waiting.set_defaults(run=cmd_waiting)

    expect = commands.add_parser("expect", parents=[common], help="check expected arrivals: fire triggers when data "
                                 "is late and when it arrives late")
    expect.add_argument("file", metavar="FILE", help="expectation file (YAML): expectations with event, request, at, "
                        "per_step, grace, triggers")
    expect.add_argument("--dates", action="append", metavar="YYYYMMDD[,...]",
                        help="data dates to check (default: today and the days before it, --days, moving at midnight)")
    expect.add_argument("--days", type=int, default=2, help="with no --dates: today and N-1 days before (UTC); 2")
    expect.add_argument("--state-file", metavar="FILE",
                        help="what already fired (default STATE_DIR/expect/FILE-STEM.json)")
    expect.add_argument("--once", action="store_true", help="print every expected key's state now and exit "
                        "(firing what is due)")
    expect.add_argument("--json", action="store_true", help="with --once: one JSON object per key")
    expect.set_defaults(run=cmd_expect)

    for name, function, text in (("key", cmd_key, "show the keys of a request"),
                                 ("value", cmd_value, "show the stored values of a request's keys")):
        sub = commands.add_parser(name, parents=[common], help=text)
        add_request_arguments(sub)
        sub.set_defaults(run=function)

    schema = commands.add_parser("schema", parents=[common], help="print event schemas")
    schema.add_argument("event", nargs="*", help="events to print (default: all)")
    schema.add_argument("--format", choices=("yaml", "pyaviso"), default="yaml",
                        help="this project's YAML, or pyaviso 1.x's event_listener_schema.json")
    schema.set_defaults(run=cmd_schema)

    srv = commands.add_parser("server", help="start, stop or check the embedded etcd")
    srv.add_argument("action", choices=("start", "stop", "status"))
    srv.add_argument("--port", type=int, help="client port on 127.0.0.1 (default 2379, or a free one)")
    srv.add_argument("--data-dir", help=f"data directory (default {server.default_data_dir()})")
    srv.set_defaults(run=cmd_server, verbose=False)

    add_adapter_commands(commands, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aviso-workflows`` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="aviso-workflows: %(message)s")
    try:
        return int(args.run(args))
    except AvisoWorkflowsError as error:
        print(f"aviso-workflows: {one_line(str(error))}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
