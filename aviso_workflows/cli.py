"""The ``aviso-workflows`` command: notify, wait, listen, key, value, schema and the embedded server.

Exit codes: 0 done (released), 1 timed out, 2 bad input or the store could not be used, 130 interrupted,
143 ended by SIGTERM (wait).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, NoReturn

import yaml

from . import __version__, server
from .config import resolve_config, state_dir
from .documents import read_document
from .errors import AvisoWorkflowsError, ValidationError, WaitTimeout
from .listen import Cursor, Position, listen, start_position
from .listeners import DeadLetters, Listener, Runtime, Stopped, dispatch, load_listener_file
from .request import Request, check_timeout, parse_pairs
from .schema import to_pyaviso_document
from .store import Notification, Store
from .wait import Progress, WaitResult, describe_missing
from .wait import wait as wait_for_keys
from .waiters import format_waiter, list_waiters, parse_filters, register

log = logging.getLogger("aviso_workflows")
EXIT_OK, EXIT_TIMEOUT, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
#: Entry point group of adapters' subcommands: each names a function ``add_commands(subparsers, common)``.
COMMANDS_GROUP = "aviso_workflows.commands"
PROGRESS_COMMAND_SECONDS = 60


# -- building blocks shared by the subcommands ---------------------------------------------------
def store_from_args(args: argparse.Namespace) -> Store:
    """The store named by ``--endpoint``/``--config``/``--schema`` (else environment, config file, default)."""
    config = resolve_config(args.endpoint or None, config_file=args.config,
                            schema_files=tuple(args.schema) if args.schema else None, **_auth_settings(args))
    return Store(config=config)


def request_from_args(store: Store, args: argparse.Namespace) -> tuple[Request, dict[str, Any]]:
    """The request of ``PAIRS`` or ``--request-file``, and the non-key entries (location, ttl) given with it."""
    if bool(args.pairs) == bool(getattr(args, "request_file", None)):
        raise ValidationError("request", args.pairs or None, "give either k=v pairs or --request-file, not both")
    raw = parse_pairs(args.pairs) if args.pairs else read_request_file(args.request_file)
    extras = {name: raw.pop(name) for name in ("location", "ttl") if name in raw}
    return store.request(raw), extras


def read_request_file(path: str) -> dict[str, Any]:
    """A request from YAML: ``event: mars`` plus fields, or ``{event: ..., request: {...}}``."""
    document = read_document(path, "request-file")
    if not isinstance(document, dict):
        raise ValidationError("request-file", path, "expected a mapping such as 'event: mars' and the fields")
    nested = document.pop("request", None)
    if nested is not None and not isinstance(nested, dict):
        raise ValidationError("request-file", path, "'request' holds a mapping of fields such as {class: od}")
    clashes = sorted(set(nested or {}) & set(document), key=str)
    if clashes:
        raise ValidationError("request-file", path, f"{clashes[0]!r} is given both inside and outside 'request'")
    document.update(nested or {})
    return document


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("store")
    group.add_argument("--endpoint", action="append", metavar="URL",
                       help="etcd endpoint (repeatable); default: $AVISO_WORKFLOWS_ENDPOINTS, the config file, "
                            "or the embedded server")
    group.add_argument("--config", metavar="FILE", help="config file (default ~/.config/aviso-workflows/config.yaml)")
    group.add_argument("--schema", action="append", metavar="FILE", help="extra event schema file (YAML or JSON)")
    group.add_argument("-v", "--verbose", action="store_true", help="log what is done")
    _auth_arguments(common.add_argument_group("authentication and TLS (secrets: prefer the environment, "
                                              "since other users can see command lines)"))
    return common


def _auth_arguments(group: argparse._ArgumentGroup) -> None:
    for option, text in (("--username", "etcd user ($AVISO_WORKFLOWS_USERNAME)"),
                         ("--password", "etcd user's password ($AVISO_WORKFLOWS_PASSWORD)"),
                         ("--token", "send 'Authorization: Bearer TOKEN', for Aviso's auth proxy "
                                     "($AVISO_WORKFLOWS_TOKEN)"),
                         ("--auth-type", "X-Auth-Type sent with --token: ecmwf (default) or openid"),
                         ("--email", "send 'Authorization: EmailKey EMAIL:KEY' ($AVISO_WORKFLOWS_EMAIL)"),
                         ("--key", "the key of --email ($AVISO_WORKFLOWS_KEY)"),
                         ("--ca-cert", "CA certificate (PEM) that signed etcd's certificate"),
                         ("--client-cert", "client certificate (PEM) for etcd's --client-cert-auth"),
                         ("--client-key", "private key (PEM) of --client-cert")):
        group.add_argument(option, help=text)


def _auth_settings(args: argparse.Namespace) -> dict[str, Any]:
    names = ("username", "password", "token", "auth_type", "email", "key", "ca_cert", "client_cert", "client_key")
    return {name: getattr(args, name, None) for name in names}


def _request_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pairs", nargs="?", metavar="event=E,k=v,...",
                        help="the request: pyaviso-style k=v pairs; lists a/b/c, ranges a/to/b/by/n")
    parser.add_argument("--request-file", metavar="FILE", help="the request as YAML instead of k=v pairs")


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


# -- wait ----------------------------------------------------------------------------------------
class _Progress:
    """Shows ``3/5 available`` on a terminal and runs the --progress-command hooks.

    The hooks run one at a time in a thread of their own, for the newest count only: a slow hook (an
    ``ecflow_client`` call takes tens of milliseconds) never slows the wait, and a catch-up of N keys runs
    them a few times instead of N times. :meth:`close` runs them for the final count before the command
    exits; :meth:`cancel` ends a running hook at once (a killed job must not update ecFlow afterwards).
    """

    def __init__(self, commands: Sequence[str], show: bool) -> None:
        self.commands = [_command_line(command) for command in commands]
        self.show = show
        self._lock = threading.Condition()
        self._pending: dict[str, Any] | None = None
        self._closed = self._cancelled = False
        self._running: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None

    def __call__(self, progress: Progress) -> None:
        found, total, ready, last = progress.found, progress.total, progress.ready, progress.last_ready
        if self.show:
            end = "\n" if found == total else ""
            shown = f"{ready}/{total} ready" + (f", {found} found" if found != ready else "")
            print(f"\r{shown} (latest ready: {_brief(last) if last else '-'})", end=end, file=sys.stderr, flush=True)
        if not self.commands:
            return
        values = _placeholders(progress)
        with self._lock:
            self._pending = values
            if self._thread is None:
                self._thread = threading.Thread(target=self._drain, name="progress-commands", daemon=True)
                self._thread.start()
            self._lock.notify()

    def close(self) -> None:
        """Run the hooks for the newest count if they have not yet, then stop the thread."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join()

    def cancel(self) -> None:
        """Forget counts not yet shown and end a running hook now."""
        with self._lock:
            self._cancelled, self._pending, running = True, None, self._running
        if running is not None:
            running.kill()
            running.wait()

    def _drain(self) -> None:
        while True:
            with self._lock:
                while self._pending is None and not (self._closed or self._cancelled):
                    self._lock.wait()
                values, self._pending = self._pending, None
            if values is None or self._cancelled:
                return
            for argv in self.commands:
                self._run([_fill(argument, values) for argument in argv])

    def _run(self, argv: list[str]) -> None:
        with self._lock:
            if self._cancelled:
                return
            try:
                process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            except OSError as error:
                print(f"aviso-workflows: progress command {argv[0]} failed: {error}", file=sys.stderr)
                return
            self._running = process
        try:
            _, error_output = process.communicate(timeout=PROGRESS_COMMAND_SECONDS)
        except subprocess.TimeoutExpired as error:
            process.kill()
            process.wait()
            print(f"aviso-workflows: progress command {argv[0]} failed: {error}", file=sys.stderr)
            return
        finally:
            with self._lock:
                self._running = None
        if process.returncode > 0:
            detail = error_output.decode(errors="replace").strip().splitlines()
            print(f"aviso-workflows: progress command {argv[0]} exited {process.returncode}"
                  + (f": {detail[-1]}" if detail else ""), file=sys.stderr)


def _command_line(command: str) -> list[str]:
    """A --progress-command split into its arguments (no shell)."""
    try:
        argv = shlex.split(command)
    except ValueError as error:  # an unclosed quote, a trailing backslash
        raise ValidationError("progress-command", command, f"cannot be split into arguments ({error})") from None
    if not argv or "\x00" in command:
        raise ValidationError("progress-command", command, "expected a command such as 'echo {found}/{total}'")
    return argv


def _fill(argument: str, values: dict[str, Any]) -> str:
    """Substitute ``{name}`` placeholders in one argument (unknown names are left as they are)."""
    for name, value in values.items():
        argument = argument.replace("{" + name + "}", str(value))
    return argument


def cmd_wait(args: argparse.Namespace) -> int:
    store = store_from_args(args)
    request, _ = request_from_args(store, args)
    mode = "any" if args.any else "all"
    if mode == "all":
        request.require_complete("wait (without --any)")
    timeout = check_timeout(args.timeout)
    progress = _Progress(args.progress_command or [], show=sys.stderr.isatty() and not args.quiet)
    partial_commands = [_command_line(command) for command in args.partial_command or []]
    if partial_commands and args.min_found is None:
        raise ValidationError("partial-command", args.partial_command[0], "runs only with --min-found")
    _end_on_sigterm(progress)
    try:
        found = wait_for_keys(store, request, mode=mode, timeout=timeout, on_ready=progress,
                              min_found=args.min_found, who={"kind": "cli", **who_of(args)})
    except WaitTimeout as timeout:
        progress.close()
        print(f"aviso-workflows: {timeout}", file=sys.stderr)
        _print_notifications(timeout.found, args.json)
        return EXIT_TIMEOUT
    progress.close()
    if found.partial:
        _released_short(request, found, partial_commands)
    if not args.quiet:
        _print_notifications(found, args.json)
    return EXIT_OK


def who_of(args: argparse.Namespace) -> dict[str, str]:
    """The ``--who NAME=VALUE`` fields that say who waits (a scheduler's ids: an ecFlow path, a job id)."""
    return parse_filters(getattr(args, "who", None) or [])


def _released_short(request: Request, found: WaitResult, commands: list[list[str]]) -> None:
    """Run the --partial-command hooks with the missing keys (the wait's WARNING has named them)."""
    values = {"found": len(found), "total": request.count, "missing": describe_missing(request, found.missing),
              "missing_keys": " ".join(found.missing)}
    for argv in commands:
        try:
            subprocess.run([_fill(argument, values) for argument in argv], stdout=subprocess.DEVNULL, check=False,
                           timeout=PROGRESS_COMMAND_SECONDS)
        except (OSError, subprocess.TimeoutExpired) as error:
            print(f"aviso-workflows: partial command {argv[0]} failed: {error}", file=sys.stderr)


def _end_on_sigterm(progress: _Progress) -> None:
    """On SIGTERM (a scheduler's kill) end the wait and any running progress command, exit 143."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread

    def terminate(signum: int, _frame: Any) -> None:
        progress.cancel()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)


def _placeholders(progress: Progress) -> dict[str, Any]:
    """The --progress-command placeholders: the key, location and request fields are those of the last key
    ready (in request order, none missing before it; empty while the first is missing), so ``{step}`` never
    names a step whose predecessors are still missing; ``{newest_key}`` is the key just found."""
    last = progress.last_ready
    fields = dict.fromkeys(progress.newest.request, "")
    if last is not None:
        fields.update(last.request)
    return {"found": progress.found, "total": progress.total, "ready": progress.ready,
            "key": last.key if last else "", "revision": last.revision if last else "",
            "location": (last.location or "") if last else "", "event": progress.newest.event,
            "newest_key": progress.newest.key, **fields}


def _brief(notification: Notification) -> str:
    last = list(notification.request.items())[-1]
    return f"{last[0]}={last[1]}"


def _print_notifications(notifications: Sequence[Notification], as_json: bool) -> None:
    for notification in notifications:
        print(format_notification(notification, as_json), flush=True)


def format_notification(notification: Notification, as_json: bool) -> str:
    """One line: JSON, or ``revision event fields location``."""
    if as_json:
        return json.dumps(notification.to_dict())
    fields = ",".join(f"{k}={v}" for k, v in notification.request.items())
    where = f" {notification.location}" if notification.location is not None else ""
    return f"[{notification.revision}] {notification.event} {fields}{where}"


# -- listen --------------------------------------------------------------------------------------
def parse_moment(field: str, text: str | None) -> dt.datetime | None:
    """A UTC moment from ``2026-11-22``, ``2026-11-22T06:00:00`` or pyaviso's ``...T06:00:00.000Z``."""
    if text is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        if moment.tzinfo is not None:
            moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
    except (ValueError, OverflowError):  # OverflowError: a time zone moves it out of years 1 to 9999
        raise ValidationError(field, text, "expected an ISO date or time such as 2026-11-22 or "
                              "2026-11-22T06:00:00Z (UTC)") from None
    return moment


def listen_requests(store: Store, args: argparse.Namespace) -> tuple[list[Request], list[Listener]]:
    """Requests from k=v pairs or a listener file (with the listeners' triggers)."""
    source = args.pairs
    if source and Path(source).suffix in (".yaml", ".yml", ".json") and "=" not in source:
        listeners = load_listener_file(store, source)
        return [listener.request for listener in listeners], listeners
    request, _ = request_from_args(store, args)
    return [request], []


def parse_start(text: str | None) -> dt.datetime | int | None:
    """``--from``: a revision (a whole number) or a UTC time."""
    if text is None:
        return None
    if text.strip().isdigit():
        return int(text)
    return parse_moment("from", text)


def dead_letters_of(args: argparse.Namespace) -> DeadLetters:
    """The dead-letter file: ``--dead-letter-file``, else one per cursor (or per listener file) in the state dir."""
    if args.dead_letter_file:
        return DeadLetters(Path(args.dead_letter_file))
    name = args.cursor or Path(args.pairs or "listener").stem
    return DeadLetters(state_dir() / "dead-letters" / f"{name}.jsonl")


def cmd_listen(args: argparse.Namespace) -> int:
    store = store_from_args(args)
    requests, listeners = listen_requests(store, args)
    start, end = parse_start(args.from_), parse_moment("to", args.to)
    _check_listen_options(args, start, end)
    report = (lambda line: print(line, flush=True)) if getattr(args, "report_actions", False) else None
    runtime = Runtime(listeners, dead_letters_of(args) if listeners else None, stop=threading.Event(),
                      report=report)
    if args.dead_letters:
        return _dead_letters(args, runtime)
    handle = _handler(runtime, args)
    if isinstance(start, dt.datetime) and end is not None:  # a finite replay, no cursor
        posts = store.replay_window(requests, start, end)
        for handled, notification in enumerate(posts, 1):
            handle(notification)
            if args.count and handled >= args.count:
                break
        return EXIT_OK
    cursor = Cursor(args.cursor) if args.cursor else None
    after = _first_start(store, requests, cursor, start)
    if cursor is not None and args.dry_run:  # a dry run starts from the cursor but never moves it
        after, cursor = after or cursor.load(), None
    stop_on_signals(runtime.stop)
    if cursor is not None:  # saved now: a listener stopped before its first notification misses nothing
        after = start_position(store, after, cursor)
    if runtime.report is not None:
        runtime.report(f"listening after revision {after.revision if after else store.now().revision}")
    with _registered(store, requests, args):
        return _follow(store, requests, after, cursor, runtime, handle, args.count)


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


def _who_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--who", action="append", metavar="NAME=VALUE",
                        help="say who waits, in the list of waiters (repeatable): a job id, an ecFlow path ...")


def cmd_waiting(args: argparse.Namespace) -> int:
    store = store_from_args(args)
    store.backend.etcd("waiting (the registry of waiters is kept in etcd)")
    for waiter in list_waiters(store, parse_filters(args.filters)):
        print(json.dumps(waiter.to_dict()) if args.json else format_waiter(waiter), flush=True)
    return EXIT_OK


def _registered(store: Store, requests: list[Request], args: argparse.Namespace) -> contextlib.ExitStack:
    """Each request of a listener among the registered waiters while it listens."""
    who = {"kind": "listener", "cursor": args.cursor, **who_of(args)}
    source = args.pairs if args.pairs and "=" not in args.pairs else None
    if source:
        who.setdefault("file", source)
    stack = contextlib.ExitStack()
    for request in requests:
        stack.enter_context(register(store, request, who=who, mode="any", found=None, total=None))
    return stack


def _check_listen_options(args: argparse.Namespace, start: dt.datetime | int | None, end: dt.datetime | None) -> None:
    if args.count is not None and args.count < 1:
        raise ValidationError("count", args.count, "expected a number of notifications of at least 1")
    if end is not None and not isinstance(start, dt.datetime):
        raise ValidationError("to", args.to, "--to needs --from TIME")
    if isinstance(start, dt.datetime) and end is not None and end <= start:
        raise ValidationError("to", args.to, "must be later than --from")


def _first_start(store: Store, requests: list[Request], cursor: Cursor | None,
                 start: dt.datetime | int | None) -> Position | None:
    """Where a first start begins: after ``--from`` (a revision, or the first post at or after a time).

    A cursor that was saved before wins: ``--from`` only places a listener that never ran.
    """
    if start is None or (cursor is not None and cursor.load() is not None):
        if start is not None:
            log.warning("--from %s ignored: cursor %s resumes where it stopped", start, cursor and cursor.name)
        return None
    if isinstance(start, int):
        return Position(max(start - 1, 0))
    return store.first_after(requests, start)


def _follow(store: Store, requests: list[Request], after: Position | None, cursor: Cursor | None, runtime: Runtime,
            handle: Callable[[Notification], object], count: int | None) -> int:
    handled = 0
    try:
        for notification in listen(store, requests, after=after, cursor=cursor, stop=runtime.stop):
            handle(notification)
            handled += 1
            if count and handled >= count:
                if cursor is not None:
                    cursor.save(Position(notification.revision, notification.key))
                break
    except Stopped as stopped:  # the position stays before the notification in hand
        log.warning("stopped while %s waited; it runs again at the next start", stopped)
    finally:
        _log_summary(runtime, handled)
    return EXIT_OK


def _log_summary(runtime: Runtime, handled: int) -> None:
    """One INFO line as a listener stops: the notifications it handled and what actions that count say they did."""
    summaries = [(kind, getattr(action, "summary", None)) for listener in runtime.listeners
                 for kind, action in listener.actions]
    said = [f"{kind}: {summary()}" for kind, summary in summaries if callable(summary)]
    log.info("listener stops after %d notification(s)%s", handled, "".join(f"; {line}" for line in said))


def _dead_letters(args: argparse.Namespace, runtime: Runtime) -> int:
    letters = runtime.dead_letters
    if letters is None:
        raise ValidationError("dead-letters", args.pairs, "dead letters belong to a listener file with triggers")
    if args.dead_letters == "list":
        for entry in letters.entries():
            notification = Notification.from_dict(entry["notification"])
            print(f"{entry['time']} listeners[{entry['listener']}] trigger {entry['trigger']} ({entry['type']}) "
                  f"[{notification.revision}] {notification.key}: {entry['error']}", flush=True)
        return EXIT_OK
    done, failing = runtime.replay()
    print(f"replayed {done + failing} dead letter(s) of {letters.path}: {done} done, {failing} still failing")
    return EXIT_OK if not failing else EXIT_TIMEOUT


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT let the notification in hand finish (or end its wait for an outage), then stop."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: Any) -> None:
        log.info("signal %s: stopping after the current notification", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _handler(runtime: Runtime, args: argparse.Namespace) -> Callable[[Notification], object]:
    if runtime.listeners and args.dry_run:
        return lambda notification: dispatch(runtime.listeners, notification, dry_run=True)
    if runtime.listeners:
        return runtime.handle
    return lambda notification: print(format_notification(notification, args.json), flush=True)


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
class OneLineErrorParser(argparse.ArgumentParser):
    """Bad usage is reported like every other error: one line on standard error, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def one_line(text: str, limit: int = 1000) -> str:
    """``text`` on one line (any run of whitespace becomes a space), shortened in the middle beyond ``limit``."""
    text = " ".join(text.split())
    return text if len(text) <= limit else f"{text[:limit - 60]} ... {text[-40:]}"


def build_parser() -> argparse.ArgumentParser:
    """The full command-line parser (adapters add their subcommands)."""
    common = _common()
    parser: argparse.ArgumentParser = OneLineErrorParser(
        prog="aviso-workflows", description="Aviso-compatible data-availability notifications in etcd.")
    parser.add_argument("--version", action="version", version=f"aviso-workflows {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    notify = commands.add_parser("notify", parents=[common], help="post notifications (one transaction per 128 keys)")
    _request_arguments(notify)
    notify.add_argument("--location", help="payload stored as the value (the data's URL)")
    notify.add_argument("--ttl", type=int, metavar="SECONDS", help="delete the keys after this many seconds")
    notify.set_defaults(run=cmd_notify)

    wait = commands.add_parser("wait", parents=[common], help="block until every requested key exists")
    _request_arguments(wait)
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
    _who_argument(wait)
    wait.add_argument("--progress-command", action="append", metavar="CMD",
                      help="run CMD (no shell) as keys are found, for the newest count (a slow CMD is not run "
                           "for every key, and runs once more for the final count); placeholders {ready}: keys "
                           "found in request order with none missing before them (trigger on this), {found}: keys "
                           "found in any order, {total}; {key} {location} {revision} and request fields such as "
                           "{step}: those of the last ready key (empty while the first is missing); {event}; "
                           "{newest_key}: the key just found")
    wait.set_defaults(run=cmd_wait)

    listen_parser = commands.add_parser("listen", parents=[common], help="print notifications as they arrive")
    _request_arguments(listen_parser)
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
    _who_argument(listen_parser)
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
        _request_arguments(sub)
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


def add_adapter_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Subcommands of installed adapters: entry points of ``aviso_workflows.commands``, each a function
    ``add_commands(subparsers, common)``."""
    for point in entry_points(group=COMMANDS_GROUP):
        try:
            add_commands = point.load()
        except ImportError as error:  # an adapter whose scheduler is not installed adds no command
            log.debug("commands of %s not available: %s", point.value, error)
            continue
        add_commands(commands, common)


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
