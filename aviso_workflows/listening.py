"""The listener runtime: one listener run from typed options, as ``aviso-workflows listen`` runs it.

The command parses its arguments into :class:`ListenOptions` and calls :func:`run_listener`; the ecFlow
bridge builds the options itself (its listener file, its cursor, who it is) and calls the same function.
A run reads what was posted after its start (a cursor, ``--from``) and then follows the store, handing each
notification to the listeners' triggers (or printing it), until stopped (SIGTERM, SIGINT, ``stop``), a
count is reached, or a replay window ``start``..``until`` ends.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .commandline import EXIT_OK, EXIT_TIMEOUT, format_notification
from .config import state_dir
from .errors import ValidationError
from .listen import Cursor, Position, listen, start_position
from .listeners import DeadLetters, Dispatcher, Listener, Stopped, dispatch
from .request import Request
from .store import Notification, Store
from .waiters import register

log = logging.getLogger("aviso_workflows")


@dataclass(frozen=True)
class ListenOptions:
    """What one listener follows, from where, and what it does with each notification.

    ``listeners`` (a listener file's, named by ``listener_file``) run their triggers; without them each
    notification is printed. ``start`` places a first start (a revision, or the first post at or after a
    time; a saved ``cursor`` wins); with a time ``start`` and ``until`` the run replays that window and ends.
    """

    requests: tuple[Request, ...]
    listeners: tuple[Listener, ...] = ()
    listener_file: str | None = None
    start: dt.datetime | int | None = None
    until: dt.datetime | None = None
    cursor: str | None = None
    count: int | None = None
    as_json: bool = False
    dry_run: bool = False
    dead_letters: Literal["list", "replay"] | None = None
    dead_letter_file: Path | None = None
    report_actions: bool = False
    who: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of_listeners(cls, listeners: Sequence[Listener], listener_file: str | None = None,
                     **options: Any) -> ListenOptions:
        """The options of a listener file's listeners (their requests are what the run follows)."""
        return cls(tuple(listener.request for listener in listeners), tuple(listeners), listener_file, **options)

    def dead_letter_path(self) -> Path:
        """``dead_letter_file``, else one per cursor (or per listener file) in the state directory."""
        if self.dead_letter_file is not None:
            return self.dead_letter_file
        name = self.cursor or Path(self.listener_file or "listener").stem
        return state_dir() / "dead-letters" / f"{name}.jsonl"


def run_listener(store: Store, options: ListenOptions, *, stop: threading.Event | None = None) -> int:
    """Run one listener until it stops; the command's exit status (dead letters still failing: 1)."""
    report = (lambda line: print(line, flush=True)) if options.report_actions else None
    dispatcher = Dispatcher(list(options.listeners), DeadLetters(options.dead_letter_path())
                            if options.listeners else None, stop=stop or threading.Event(), report=report)
    if options.dead_letters:
        return _dead_letters(options, dispatcher)
    handle = _handler(dispatcher, options)
    if isinstance(options.start, dt.datetime) and options.until is not None:  # a finite replay, no cursor
        for handled, notification in enumerate(store.replay_window(list(options.requests), options.start,
                                                                   options.until), 1):
            handle(notification)
            if options.count and handled >= options.count:
                break
        return EXIT_OK
    cursor = Cursor(options.cursor) if options.cursor else None
    after = _first_start(store, list(options.requests), cursor, options.start)
    if cursor is not None and options.dry_run:  # a dry run starts from the cursor but never moves it
        after, cursor = after or cursor.load(), None
    stop_on_signals(dispatcher.stop)
    if cursor is not None:  # saved now: a listener stopped before its first notification misses nothing
        after = start_position(store, after, cursor)
    if report is not None:
        report(f"listening after revision {after.revision if after else store.now().revision}")
    with _registered(store, options):
        return _follow(store, options, after, cursor, dispatcher, handle)


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT let the notification in hand finish (or end its wait for an outage), then stop."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: Any) -> None:
        log.info("signal %s: stopping after the current notification", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _registered(store: Store, options: ListenOptions) -> contextlib.ExitStack:
    """Each request of a listener among the registered waiters while it listens."""
    who = {"kind": "listener", "cursor": options.cursor, **options.who}
    if options.listener_file:
        who.setdefault("file", options.listener_file)
    stack = contextlib.ExitStack()
    for request in options.requests:
        stack.enter_context(register(store, request, who=who, mode="any", found=None, total=None))
    return stack


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


def _follow(store: Store, options: ListenOptions, after: Position | None, cursor: Cursor | None,
            dispatcher: Dispatcher, handle: Callable[[Notification], object]) -> int:
    handled = 0
    try:
        for notification in listen(store, list(options.requests), after=after, cursor=cursor, stop=dispatcher.stop):
            handle(notification)
            handled += 1
            if options.count and handled >= options.count:
                if cursor is not None:
                    cursor.save(Position(notification.revision, notification.key))
                break
    except Stopped as stopped:  # the position stays before the notification in hand
        log.warning("stopped while %s waited; it runs again at the next start", stopped)
    finally:
        _log_summary(dispatcher, handled)
    return EXIT_OK


def _log_summary(dispatcher: Dispatcher, handled: int) -> None:
    """One INFO line as a listener stops: the notifications it handled and what actions that count say they did."""
    summaries = [(kind, getattr(action, "summary", None)) for listener in dispatcher.listeners
                 for kind, action in listener.actions]
    said = [f"{kind}: {summary()}" for kind, summary in summaries if callable(summary)]
    log.info("listener stops after %d notification(s)%s", handled, "".join(f"; {line}" for line in said))


def _dead_letters(options: ListenOptions, dispatcher: Dispatcher) -> int:
    letters = dispatcher.dead_letters
    if letters is None:
        raise ValidationError("dead-letters", options.listener_file, "dead letters belong to a listener file with "
                              "triggers")
    if options.dead_letters == "list":
        for entry in letters.entries():
            notification = Notification.from_dict(entry["notification"])
            print(f"{entry['time']} listeners[{entry['listener']}] trigger {entry['trigger']} ({entry['type']}) "
                  f"[{notification.revision}] {notification.key}: {entry['error']}", flush=True)
        return EXIT_OK
    done, failing = dispatcher.replay()
    print(f"replayed {done + failing} dead letter(s) of {letters.path}: {done} done, {failing} still failing")
    return EXIT_OK if not failing else EXIT_TIMEOUT


def _handler(dispatcher: Dispatcher, options: ListenOptions) -> Callable[[Notification], object]:
    if dispatcher.listeners and options.dry_run:
        return lambda notification: dispatch(dispatcher.listeners, notification, dry_run=True)
    if dispatcher.listeners:
        return dispatcher.handle
    return lambda notification: print(format_notification(notification, options.as_json), flush=True)
