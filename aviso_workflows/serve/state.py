"""What the routes of serve share (``ServeState``): the store, the options, the authenticator, the shared feeds,
the open streams and the metrics. Its own module, below app.py, admin.py and board.py that all take it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge

from ..schema import SchemaRegistry
from ..store import Store
from .auth import Authenticator, Grant
from .feeds import FeedHub
from .server_config import ServerEvent
from .streams import Stream, StreamSettings


@dataclass(frozen=True)
class ServeOptions:
    """How the server behaves: its public URL (CloudEvent ``source``), stream timings, limits and auth."""

    base_url: str = "http://127.0.0.1:8000"
    heartbeat: float = 10.0
    max_duration: float = 3600.0
    replay_limit: int = 10_000
    #: Feeds a live stream may have waiting before it is cut off as too slow.
    queue_size: int = 1000
    auth: str = "none"
    tokens: dict[str, Grant] = field(default_factory=dict)
    #: An expectation file checked while serving (the board shows expected and late keys); its data dates.
    expect: str | None = None
    expect_dates: tuple[str, ...] = ()
    #: The events of an aviso-server configuration file (``--aviso-server-config``): served instead of ours.
    server_events: Mapping[str, ServerEvent] | None = None


class Metrics:
    """The server's Prometheus metrics (one registry per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("aviso_http_requests_total", "HTTP requests by route, method and status",
                                ["route", "method", "status_code"], registry=self.registry)
        self.streams = Gauge("aviso_sse_connections_active", "Open SSE streams", ["route", "event_type"],
                             registry=self.registry)
        self.events = Counter("aviso_sse_events_sent_total", "Notifications sent on SSE streams",
                              ["route", "event_type"], registry=self.registry)
        self.stream_errors = Counter("aviso_sse_stream_errors_total", "Error events sent on SSE streams",
                                     ["route", "event_type"], registry=self.registry)
        self.notifications = Counter("aviso_notifications_total", "Notify requests by outcome",
                                     ["event_type", "status"], registry=self.registry)
        self.watches = Gauge("aviso_shared_watches_active", "etcd watches shared by the live streams",
                             registry=self.registry)


class ServeState:
    """What the routes share: the store, options, authenticator, shared feeds, open streams, metrics."""

    def __init__(self, store: Store, options: ServeOptions) -> None:
        self.store = store
        self.options = options
        self.events: Mapping[str, ServerEvent] = options.server_events or {}
        self.registry = SchemaRegistry({name: event.schema for name, event in self.events.items()}, builtin=False) \
            if self.events else store.schemas
        self.schemas = list(self.registry)
        self.auth = Authenticator(store, options.auth, options.tokens)
        self.hub = FeedHub(self.schemas, options.queue_size)
        self.metrics = Metrics()
        self.metrics.watches.set_function(lambda: self.hub.watches)
        self.settings = StreamSettings(options.base_url.rstrip("/"), options.heartbeat, options.max_duration,
                                       options.replay_limit)
        self.streams: set[Stream] = set()
        self.shutting_down = False
        self.loop: asyncio.AbstractEventLoop | None = None

    def begin_shutdown(self) -> None:
        """Send ``connection-closing`` ``server_shutdown`` on every open stream (from any thread)."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._close_streams)

    def _close_streams(self) -> None:
        self.shutting_down = True
        for stream in list(self.streams):
            stream.stop("server_shutdown")
