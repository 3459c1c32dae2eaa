"""The availability board of ``serve``: ``GET /board`` and its live stream, ``GET /board/events``.

The page is plain HTML, CSS and JavaScript shipped in the package (``serve/static/``); it opens an
EventSource on ``/board/events`` with its own query string. That stream is built on the same machinery as
``POST /api/v1/watch``: a :class:`~aviso_workflows.serve.streams.Stream` on the server's shared feed gives
the arrivals (with their post times, heartbeats, ``max_duration`` and ``server_shutdown``); the board
adds what the registered waiters and the expectation checker (``serve --expect FILE``) say. The first event
is ``snapshot`` (the whole board), then ``cells``, ``waiters`` and ``lateness`` as things change, and
``store`` when etcd stops or starts answering (what the shared watch of the server says).

One :class:`BoardHub` per server follows the waiters (one etcd watch, started while a board is open) and
runs the expectation checker (from start to stop, so its triggers fire whether or not anyone looks).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi import Request as HttpRequest
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent

from ..errors import HistoryCompacted, PermissionDenied, StoreError, ValidationError
from ..etcd import WatchIdle
from ..notification import Notification
from ..status_chain import STATUS_TIME_FORMAT, status_record
from ..waiters import WaiterChange, watch_waiters
from ..watch import one_line
from .auth import refusal
from .board_model import TIME_FORMAT, BoardModel, BoardQuery, StoreHealth, parse_board_query
from .protocol import ApiError
from .streams import Stream, StreamPlan

if TYPE_CHECKING:
    from ..expect import ExpectationChecker
    from ..store import Store
    from .state import ServeState

log = logging.getLogger(__name__)
ROUTE = "/board/events"
#: Files the page loads from ``/board/static/``.
STATIC_FILES = {"board.css": "text/css", "board.js": "text/javascript"}
#: Seconds between two looks at the expectation checker's states.
EXPECT_POLL = 0.5
#: Arrivals whose post time the first read looks up at most (one read of a status record each).
MAX_TIMED = 2000
#: Changes a board's stream may have unsent before it is cut off (it reconnects and starts afresh).
QUEUE_SIZE = 10_000


# -- the hub -------------------------------------------------------------------------------------
@dataclass(eq=False)
class Listener:
    """One board stream's queue of ``(kind, item)`` from the hub."""

    queue: asyncio.Queue[tuple[str, Any]] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))

    def offer(self, kind: str, item: Any) -> None:
        try:
            self.queue.put_nowait((kind, item))
        except asyncio.QueueFull:
            log.warning("a board stream fell behind; it is closed and the page reconnects")
            self.queue = asyncio.Queue(1)
            self.queue.put_nowait(("cut", None))


class BoardHub:
    """The waiters (followed while a board is open) and the expectation checker of one server."""

    def __init__(self, state: ServeState) -> None:
        self.state = state
        self.listeners: set[Listener] = set()
        self.waiters: dict[str, WaiterChange] = {}
        self.expected: list[dict[str, Any]] = []
        self.checker: ExpectationChecker | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters_stop: threading.Event | None = None
        self._checker_stop = threading.Event()
        self._checker_thread: threading.Thread | None = None
        self._poll: asyncio.Task[None] | None = None
        #: Whether etcd answers, as the shared watch the boards' streams are fed by says (it tells, while a
        #: board is open).
        self.health = StoreHealth()
        self._told_health = False

    @asynccontextmanager
    async def running(self, _: FastAPI) -> AsyncIterator[None]:
        """The server's lifespan: the expectation checker runs from start to stop."""
        self._loop = asyncio.get_running_loop()
        self._start_checker()
        try:
            yield
        finally:
            self._checker_stop.set()
            if self._waiters_stop is not None:
                self._waiters_stop.set()
            if self._poll is not None:
                self._poll.cancel()
            self._stop_health()
            thread = self._checker_thread
            if thread is not None:
                await asyncio.to_thread(thread.join, 10)

    # -- expectations ----------------------------------------------------------------------------
    def _start_checker(self) -> None:
        options = self.state.options
        path = getattr(options, "expect", None)
        if not path:
            return
        self.checker = expectation_checker(self.state.store, path, list(getattr(options, "expect_dates", ()) or ()))
        self._checker_thread = threading.Thread(target=self._check, name="aviso-board-expect", daemon=True)
        self._checker_thread.start()
        self._poll = asyncio.ensure_future(self._poll_states())

    def _check(self) -> None:
        assert self.checker is not None
        try:
            self.checker.run(self._checker_stop)
        except Exception:  # noqa: BLE001 - serve goes on; the board shows no new states
            log.exception("the expectation checker of the board stopped")

    async def _poll_states(self) -> None:
        """Hand the checker's states to the boards whenever they change (they are few; a copy is cheap)."""
        assert self.checker is not None
        while not self._checker_stop.is_set():
            states = [item.to_dict() for item in self.checker.states()]
            if states != self.expected:
                self.expected = states
                for listener in list(self.listeners):
                    listener.offer("expected", states)
            await asyncio.sleep(EXPECT_POLL)

    # -- waiters ---------------------------------------------------------------------------------
    def join(self) -> Listener:
        """A board stream's subscription; the first one starts following the waiters."""
        listener = Listener()
        self.listeners.add(listener)
        if self._waiters_stop is None:
            self._waiters_stop = threading.Event()
            threading.Thread(target=self._follow_waiters, args=(self._waiters_stop, asyncio.get_running_loop()),
                             name="aviso-board-waiters", daemon=True).start()
        if not self._told_health:
            self._told_health = True
            self.state.hub.add_health_listener(self._health_changed)
            self._health_changed()  # what holds now; from here on the shared feeds tell
        return listener

    def health_now(self) -> dict[str, Any]:
        """The store's health as the boards get it."""
        return self.health.to_dict(_now())

    def _health_changed(self) -> None:
        """A shared feed lost etcd or has it again (told on the loop): tell the boards if reachability changed."""
        now = _now()
        if self.health.update(watch_failure(self.state), now):
            (log.warning if not self.health.reachable else log.info)("board: %s", self.health.to_dict(now)["message"])
            for listener in list(self.listeners):
                listener.offer("store", self.health.to_dict(now))

    def _stop_health(self) -> None:
        if self._told_health:
            self._told_health = False
            self.state.hub.remove_health_listener(self._health_changed)

    def leave(self, listener: Listener) -> None:
        """The last board stream gone, the waiters are no longer followed."""
        self.listeners.discard(listener)
        if not self.listeners:
            self._stop_health()
        if not self.listeners and self._waiters_stop is not None:
            self._waiters_stop.set()
            self._waiters_stop = None
            self.waiters.clear()

    def _follow_waiters(self, stop: threading.Event, loop: asyncio.AbstractEventLoop) -> None:
        try:
            for change in watch_waiters(self.state.store, stop):
                loop.call_soon_threadsafe(self._waiter_changed, stop, change)
        except PermissionDenied as error:
            log.info("the board shows no waiters: the store refuses to list them (%s)", error)
        except Exception:  # noqa: BLE001 - the board goes on without waiters
            log.exception("the board stopped following the waiters")

    def _waiter_changed(self, stop: threading.Event, change: WaiterChange) -> None:
        if stop.is_set():  # a change from a watch that has ended
            return
        if change.kind == "removed":
            self.waiters.pop(change.waiter.id, None)
        else:
            self.waiters[change.waiter.id] = change
        for listener in list(self.listeners):
            listener.offer("waiter", change)


def watch_failure(state: ServeState) -> str | None:
    """Why the server's shared watch of etcd fails now (None: it works, or there is none).

    An idle watch being reconnected is routine, not an outage."""
    for error in state.hub.failures():
        if not isinstance(error, WatchIdle):
            return one_line(error)
    return None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def expectation_checker(store: Store, path: str | Path, dates: list[str]) -> ExpectationChecker:
    """The checker of an expectation file, as ``aviso-workflows expect FILE`` runs it (same state file)."""
    from ..config import state_dir
    from ..expect import ExpectationChecker, load_expectation_file

    expectations = load_expectation_file(store, path)
    state_file = state_dir() / "expect" / f"{Path(path).stem}.json"
    return ExpectationChecker(store, expectations, dates=dates or None, state_file=state_file)


# -- the routes ----------------------------------------------------------------------------------
def board_router(state: ServeState) -> APIRouter:
    """The board's routes; including the router in the app also runs the hub with the app's lifespan."""
    hub = BoardHub(state)
    router = APIRouter(lifespan=hub.running)
    state.board = hub  # type: ignore[attr-defined]  # for tests and metrics to look at

    def query_of(request: HttpRequest) -> BoardQuery:
        try:
            return parse_board_query(request.query_params.multi_items(), state.store.schemas)
        except ValidationError as error:
            raise ApiError(400, "INVALID_BOARD_REQUEST", "Invalid Board Request", str(error)) from None

    @router.get("/board", response_class=HTMLResponse, include_in_schema=False)
    async def board(request: HttpRequest) -> Response:
        try:
            query = parse_board_query(request.query_params.multi_items(), state.store.schemas)
        except ValidationError as error:
            return HTMLResponse(page("Invalid board request", error=str(error)), 400)
        return HTMLResponse(page(query.text))

    @router.get("/board/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in STATIC_FILES:
            return Response("not found", 404, media_type="text/plain")
        return Response(static_text(name), media_type=STATIC_FILES[name],
                        headers={"Cache-Control": "no-cache"})

    @router.get("/board/state")
    async def board_state(request: HttpRequest, query: BoardQuery = Depends(query_of)) -> JSONResponse:
        """The whole board now, as JSON (what the stream's first event holds)."""
        store = _reader(state, request, query)
        model = BoardModel(query)
        try:
            await _fill(model, hub, store, hub.waiters.values())
        except ApiError as error:
            if error.code != "BOARD_READ_FAILED":
                raise
            return JSONResponse(_unreachable(model, hub, str(error.details)), 503)
        if not hub.waiters and hub._waiters_stop is None:  # nobody follows them now: one read
            from ..waiters import list_waiters

            for waiter in await asyncio.to_thread(list_waiters, state.store):
                model.waiter_changed(WaiterChange("added", waiter))
        if not hub.listeners:  # no board follows the watch: this read is the news that etcd answers
            hub.health.update(None, _now())
        return JSONResponse({**model.snapshot(), "store": hub.health_now()})

    async def stream_plan(request: HttpRequest, query: BoardQuery = Depends(query_of)) -> tuple[BoardQuery,
                                                                                                StreamPlan]:
        store = _reader(state, request, query)
        request_id = str(getattr(request.state, "request_id", "") or uuid.uuid4())
        return query, StreamPlan("watch", ROUTE, store, query.request, request_id)

    @router.get(ROUTE, response_class=EventSourceResponse)
    async def board_events(planned: tuple[BoardQuery, StreamPlan] = Depends(stream_plan)) \
            -> AsyncIterator[ServerSentEvent]:
        async for event in board_stream(state, hub, *planned):
            yield event

    return router


def _unreachable(model: BoardModel, hub: BoardHub, error: str) -> dict[str, Any]:
    """What ``/board/state`` answers when etcd cannot be read: the waiters last known, and since when it fails
    (the open boards' outage, else this read's)."""
    health = hub.health if not hub.health.reachable else StoreHealth(events=list(hub.health.events))
    if health.reachable:
        health.update(error, _now())
    for change in list(hub.waiters.values()):
        model.waiter_changed(change)
    return {**model.snapshot(), "store": health.to_dict(_now()), "stale": True}


def _reader(state: ServeState, request: HttpRequest, query: BoardQuery) -> Store:
    """The store the board reads as the caller (with ``--tokens`` or ``--etcd-auth``, their credentials)."""
    try:
        return state.auth.store_for(request.headers.get("authorization"), query.event, "read")
    except PermissionDenied as error:
        raise refusal(error) from None


@dataclass
class Sent:
    """What a board stream told its page last, to send only what changed."""

    rows: list[list[str]] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    waiters: list[dict[str, Any]] = field(default_factory=list)
    lateness: list[dict[str, Any]] = field(default_factory=list)


async def board_stream(state: ServeState, hub: BoardHub, query: BoardQuery,
                       plan: StreamPlan) -> AsyncIterator[ServerSentEvent]:
    """One page's stream: ``snapshot``, then ``cells``/``waiters``/``lateness`` as they change."""
    listener = hub.join()
    stream = Stream(plan, state.settings, state.hub, _counter(state, plan))
    state.streams.add(stream)
    if state.shutting_down:
        stream.stop("server_shutdown")
    events: asyncio.Queue[ServerSentEvent | None] = asyncio.Queue()
    pump = asyncio.ensure_future(_pump(stream, events))
    try:
        first = await events.get()  # connection_established: the shared feed holds every post from here on
        if first is None or first.event != "live-notification":
            if first is not None:
                yield first
            return
        model = BoardModel(query)
        await _fill(model, hub, plan.store, list(hub.waiters.values()))
        sent = Sent()
        yield ServerSentEvent(event="snapshot", data={**_remember(sent, model.snapshot()),
                                                      "store": hub.health_now()})
        async for event in _updates(model, sent, events, listener):
            yield event
    finally:
        pump.cancel()
        hub.leave(listener)
        state.streams.discard(stream)


async def _pump(stream: Stream, events: asyncio.Queue[ServerSentEvent | None]) -> None:
    try:
        async for event in stream.events():
            await events.put(event)
    finally:
        await events.put(None)


async def _updates(model: BoardModel, sent: Sent, events: asyncio.Queue[ServerSentEvent | None],
                   listener: Listener) -> AsyncIterator[ServerSentEvent]:
    """Arrivals from the stream and changes from the hub, as events of what changed."""
    stream_next = asyncio.ensure_future(events.get())
    hub_next = asyncio.ensure_future(listener.queue.get())
    try:
        for _ in range(10**12):  # bounded by the stream, which ends at its max duration or on shutdown
            done, _pending = await asyncio.wait({stream_next, hub_next}, return_when=asyncio.FIRST_COMPLETED)
            changed: set[str] = set()
            if hub_next in done:
                kind, item = hub_next.result()
                if kind == "cut":
                    return
                if kind == "store":
                    yield ServerSentEvent(event="store", data=item)
                else:
                    changed |= model.waiter_changed(item) if kind == "waiter" else model.set_expected(item)
                hub_next = asyncio.ensure_future(listener.queue.get())
            if stream_next in done:
                event = stream_next.result()
                if event is None:
                    return
                if event.event == "live-notification" and isinstance(event.data, dict) and "specversion" in \
                        event.data:
                    changed |= model.arrived(*_arrival(model.query, event.data))
                elif event.event != "live-notification":
                    yield event  # heartbeat, error, connection-closing: as on /api/v1/watch
                stream_next = asyncio.ensure_future(events.get())
            for update in _changes(model, sent, changed):
                yield update
    finally:
        stream_next.cancel()
        hub_next.cancel()


def _changes(model: BoardModel, sent: Sent, changed: set[str]) -> list[ServerSentEvent]:
    updates = []
    rows, columns = model.rows(), model.columns()
    if changed or rows != sent.rows or columns != sent.columns:
        cells = model.cells()
        grid_changed = rows != sent.rows or columns != sent.columns
        shown = list(cells.values()) if grid_changed else [cells[c] for c in sorted(changed) if c in cells]
        sent.rows, sent.columns = rows, columns
        if shown:
            updates.append(ServerSentEvent(event="cells", data={"rows": rows, "columns": columns, "cells": shown}))
    waiters, lateness = model.waiter_list(), model.lateness()
    if waiters != sent.waiters:
        sent.waiters = waiters
        updates.append(ServerSentEvent(event="waiters", data={"waiters": waiters}))
    if lateness != sent.lateness:
        sent.lateness = lateness
        updates.append(ServerSentEvent(event="lateness", data={"lateness": lateness}))
    return updates


def _remember(sent: Sent, snapshot: dict[str, Any]) -> dict[str, Any]:
    sent.rows, sent.columns = snapshot["rows"], snapshot["columns"]
    sent.waiters, sent.lateness = snapshot["waiters"], snapshot["lateness"]
    return snapshot


def _arrival(query: BoardQuery, cloud_event: dict[str, Any]) -> tuple[Notification, str | None]:
    """The notification of a CloudEvent of the stream, and its post time."""
    data = cloud_event["data"]
    fields = {str(k): str(v) for k, v in data["identifier"].items()}
    schema = query.request.schema
    key = schema.format_key(fields)
    revision = int(str(cloud_event["id"]).rsplit("@", 1)[-1]) // 1000
    return Notification(query.event, fields, data.get("payload"), key, revision), _utc(cloud_event.get("time"))


def _utc(text: Any) -> str | None:
    """A CloudEvent or status time as ``YYYY-MM-DDTHH:MM:SSZ``."""
    if not isinstance(text, str):
        return None
    for pattern in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ", STATUS_TIME_FORMAT):
        try:
            return dt.datetime.strptime(text, pattern).strftime(TIME_FORMAT)
        except ValueError:
            continue
    return None


def _counter(state: ServeState, plan: StreamPlan) -> Callable[[str], None]:
    def count(label: str) -> None:
        metric = state.metrics.stream_errors if label == "error" else state.metrics.events
        metric.labels(plan.route, plan.request.event).inc()

    return count


# -- the first read ------------------------------------------------------------------------------
async def _fill(model: BoardModel, hub: BoardHub, store: Store, waiters: Any) -> None:
    """What exists now: arrivals (with their post times), expectation states, waiters."""
    try:
        arrivals = await asyncio.to_thread(read_arrivals, store, model.query)
    except PermissionDenied as error:
        raise refusal(error) from None
    except StoreError as error:
        raise ApiError(500, "BOARD_READ_FAILED", "Board read failed", "the store could not be read",
                       details=one_line(error)) from None
    for notification, at in arrivals:
        model.arrived(notification, at)
    if hub.expected:
        model.set_expected(hub.expected)
    for change in list(waiters):
        model.waiter_changed(change)


def read_arrivals(store: Store, query: BoardQuery) -> list[tuple[Notification, str | None]]:
    """The board's keys that exist now, each with its post time (from the status record written with it)."""
    _, notifications = store.read(query.request)
    times: dict[tuple[str, int], str | None] = {}
    found = []
    for number, notification in enumerate(notifications):
        status_key = query.request.schema.status_key(notification.request)
        cached = (status_key, notification.revision)
        if cached not in times and number < MAX_TIMED:
            times[cached] = _post_time(store, status_key, notification.revision)
        found.append((notification, times.get(cached)))
    return found


def _post_time(store: Store, status_key: str, revision: int) -> str | None:
    try:
        _, status = store.gateway.get(status_key, revision=revision)
    except (HistoryCompacted, StoreError):
        return None
    if status is None:
        return None
    return _utc(status_record(status).get("date_time"))


# -- the page ------------------------------------------------------------------------------------
def static_text(name: str) -> str:
    """A file of the page, from the package."""
    return resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")


def page(title: str, *, error: str | None = None) -> str:
    """The board's HTML (the script fills it from the stream); with ``error``, the refusal instead."""
    body = static_text("board.html")
    notice = "" if error is None else f'<p class="refusal" role="alert">{html.escape(error)}</p>'
    return body.replace("{{title}}", html.escape(title)).replace("{{error}}", notice) \
        .replace("{{live}}", "false" if error else "true")


__all__ = ["BoardHub", "board_router", "board_stream", "expectation_checker", "page", "read_arrivals"]
