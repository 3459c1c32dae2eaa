"""The Aviso 2 HTTP API over our store, as an ASGI app: ``create_app(store, options)``.

Routes: ``POST /api/v1/notification``, ``POST /api/v1/watch`` and ``POST /api/v1/replay`` (SSE),
``GET /api/v1/schema[/{event}]``, ``GET /health`` and ``GET /metrics`` (Prometheus). Every response
carries ``X-Request-ID``; every refusal is Aviso 2's JSON error object. A notify writes exactly what
``Store.notify`` writes (data keys, status chain, admin key), so pyaviso 1.x, ecFlow's poller and our
waits see it. Other routers (a board) can be mounted on the app this returns.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse, Response
from fastapi.sse import ServerSentEvent
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import MutableHeaders

from ..errors import PermissionDenied, StoreError
from ..etcd import range_op
from ..position import Position
from ..status_chain import revision_windows
from ..store import Store
from ..watch import one_line
from .admin import admin_router, removed
from .auth import refusal
from .board import board_router
from .protocol import SEQUENCE_SLOTS, ApiError, ApiRequest, filter_request, notify_request, parse_body, stream_time
from .schemas import event_schema_body, schema_body
from .state import Metrics, ServeOptions, ServeState
from .streams import EventStream, Stream, StreamPlan

log = logging.getLogger(__name__)
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class RequestIds:
    """ASGI middleware: a fresh ``X-Request-ID`` on every response, request counts by route, and Aviso 2's
    500 body (with the id) for an unexpected failure."""

    def __init__(self, app: Any, state: ServeState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = str(uuid.uuid4())
        scope.setdefault("state", {})["request_id"] = request_id
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                MutableHeaders(scope=message).append("X-Request-ID", request_id)
                route = scope.get("route")
                self.state.metrics.requests.labels(getattr(route, "path", "unmatched"), scope["method"],
                                                   str(message["status"])).inc()
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as error:  # noqa: BLE001 - answered as Aviso 2 answers, with the id
            if started:  # a stream whose client went away: nothing to answer
                log.debug("request %s ended: %s", request_id, one_line(error))
                return
            log.error("request %s failed: %s", request_id, one_line(error))
            if not started:
                failure = ApiError(500, "INTERNAL_ERROR", "internal_error", "the server failed to answer")
                await JSONResponse(failure.body(request_id), 500)(scope, receive, send_with_id)


def _request_id(request: HttpRequest) -> str:
    return str(getattr(request.state, "request_id", "") or uuid.uuid4())


async def _api_error(request: HttpRequest, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    return JSONResponse(error.body(_request_id(request)), error.status, headers=error.headers)


def create_app(store: Store, options: ServeOptions | None = None) -> FastAPI:
    """The ASGI app serving ``store`` (``app.state.serve`` holds its :class:`ServeState`)."""
    state = ServeState(store, options or ServeOptions())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.loop = asyncio.get_running_loop()
        yield
        state.begin_shutdown()
        state.hub.stop()

    app = FastAPI(title="aviso-workflows", summary="The Aviso 2 API over an Aviso etcd store", lifespan=lifespan)
    app.state.serve = state
    app.add_exception_handler(ApiError, _api_error)
    app.add_middleware(RequestIds, state=state)
    _add_routes(app, state)
    app.include_router(admin_router(state))
    app.include_router(board_router(state))  # /board, its stream and files; its lifespan runs the checker
    return app


def _add_routes(app: FastAPI, state: ServeState) -> None:
    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/v1/schema")
    async def schema() -> dict[str, Any]:
        return schema_body(state.schemas, state.events)

    @app.get("/api/v1/schema/{event}")
    async def schema_of(event: str, request: HttpRequest) -> Response:
        status, body = event_schema_body(state.schemas, event, _request_id(request), state.events)
        return JSONResponse(body, status)

    @app.post("/api/v1/notification")
    async def notify(request: HttpRequest) -> dict[str, Any]:
        return await _notify(state, request)

    async def watch_plan(request: HttpRequest) -> StreamPlan:
        return await _plan(state, request, "watch")

    async def replay_plan(request: HttpRequest) -> StreamPlan:
        return await _plan(state, request, "replay")

    @app.post("/api/v1/watch", response_class=EventStream)
    async def watch(plan: StreamPlan = Depends(watch_plan)) -> EventStream:
        return EventStream(_stream(state, plan))

    @app.post("/api/v1/replay", response_class=EventStream)
    async def replay(plan: StreamPlan = Depends(replay_plan)) -> EventStream:
        return EventStream(_stream(state, plan))


# -- notify --------------------------------------------------------------------------------------
async def _notify(state: ServeState, request: HttpRequest) -> dict[str, Any]:
    counted = state.metrics.notifications
    try:
        api = parse_body(await request.body(), "notification", state.registry)
    except ApiError:
        counted.labels("unknown", "error").inc()
        raise
    try:
        store = state.auth.store_for(request.headers.get("authorization"), api.event_type, "write")
        posting, location = notify_request(api, state.registry, state.events)
        await asyncio.to_thread(store.notify, posting, location=location)
    except ApiError as error:
        counted.labels(api.event_type, "rejected" if error.status in (401, 403) else "error").inc()
        raise
    except PermissionDenied as error:
        counted.labels(api.event_type, "rejected").inc()
        raise refusal(error) from None
    except StoreError as error:
        counted.labels(api.event_type, "error").inc()
        raise ApiError(500, "NOTIFICATION_STORAGE_FAILED", "Notification Storage Failed",
                       "the store could not be written", details=one_line(error)) from None
    counted.labels(api.event_type, "success").inc()
    return {"status": "success", "request_id": _request_id(request), "processed_at": stream_time()}


# -- watch and replay ----------------------------------------------------------------------------
async def _plan(state: ServeState, request: HttpRequest, kind: str) -> StreamPlan:
    """Check a watch or replay before its stream starts: refusals are HTTP errors, not stream events."""
    api = parse_body(await request.body(), kind, state.registry)
    following, wanted = filter_request(api, state.registry, state.events)
    store = state.auth.store_for(request.headers.get("authorization"), api.event_type, "read")
    try:
        if state.auth.mode == "etcd":
            await asyncio.to_thread(_may_read, store, state.hub.prefix)
        start = await asyncio.to_thread(_start, store, following, api)
        hidden = await asyncio.to_thread(removed, store, following.schema) if start is not None else None
    except PermissionDenied as error:
        raise refusal(error) from None
    except StoreError as error:
        raise ApiError(500, "SSE_STREAM_INITIALIZATION_FAILED", "SSE stream creation failed",
                       "the store could not be read", details=one_line(error)) from None
    return StreamPlan(kind, f"/api/v1/{kind}", store, following, _request_id(request), start, api.from_id,
                      api.from_date, to_id=api.to_id, to_date=api.to_date, spatial=wanted,
                      enveloped=api.event_type in state.events, removed=hidden)


def _may_read(store: Store, prefix: str) -> None:
    """Raise PermissionDenied unless the store's user may read every notification (a stream watches them all)."""
    body = range_op(prefix, prefix_of=prefix, limit=1)
    body["keys_only"] = True
    store.gateway.range(body)


def _start(store: Store, following: Any, api: ApiRequest) -> Position | None:
    """Where history is replayed from: the revision of ``from_id``, or the first post at or after ``from_date``."""
    if api.from_id is not None:
        return Position(max(api.from_id // SEQUENCE_SLOTS - 1, 0))
    if api.from_date is None:
        return None
    return _date_start(store, following.status_keys(), api.from_date)


def _date_start(store: Store, status_keys: list[str], moment: dt.datetime) -> Position:
    # The revision is read before the search: a post landing during the search is then after it, not lost.
    now = store.current_revision()
    windows = revision_windows(store, status_keys, moment)
    if not windows:  # nothing posted since: the replay starts now
        return Position(now)
    return Position(min(first for first, _ in windows.values()) - 1)


async def _stream(state: ServeState, plan: StreamPlan) -> AsyncIterator[ServerSentEvent]:
    event_type = plan.request.event

    counters: dict[str, Any] = {}  # each labelled series looked up once per stream, not once per event

    def count(label: str) -> None:
        counter = counters.get(label)
        if counter is None:
            metric = state.metrics.stream_errors if label == "error" else state.metrics.events
            counter = counters[label] = metric.labels(plan.route, event_type)
        counter.inc()

    stream = Stream(plan, state.settings, state.hub, count)
    state.streams.add(stream)
    active = state.metrics.streams.labels(plan.route, event_type)
    active.inc()
    if state.shutting_down:
        stream.stop("server_shutdown")
    try:
        async for event in stream.events():
            yield event
    finally:
        active.dec()
        state.streams.discard(stream)


__all__ = ["Metrics", "ServeOptions", "ServeState", "create_app"]
