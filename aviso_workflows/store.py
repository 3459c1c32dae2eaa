"""The notification store: the public face of one store, whatever its backend.

A ``Store`` validates requests against the schemas and opens its backend once, from its endpoint
(:func:`~aviso_workflows.backends.open_backend`): etcd with pyaviso 1.x's key layout and status chain
(backends/etcd.py), or an aviso-server (backends/aviso_server.py). Waits and listeners (wait.py,
listen.py) use the backend's contract (backends/protocol.py), never which backend it is.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from .backends import Backend, NotifyResult, open_backend
from .config import StoreConfig, resolve_config
from .etcd import EtcdGateway, KeyValue
from .listen import listen
from .notification import NO_PAYLOAD, Notification
from .position import Position
from .request import Request, check_location, check_timeout, check_ttl, split_event
from .schema import EventSchema, SchemaRegistry
from .status_chain import STATUS_TIME_FORMAT, replay, revision_window
from .wait import wait

#: The layout of ``date_time`` in a status record (kept here for code that imports it from the store).
DATE_FORMAT = STATUS_TIME_FORMAT


class Store:
    """An Aviso-compatible notification store in etcd.

    ``Store()`` uses ``AVISO_WORKFLOWS_ENDPOINTS``, the config file, or the embedded server's address;
    ``Store(["http://10.0.0.1:2379", ...], username=..., password=...)`` names them.
    """

    def __init__(self, endpoints: Sequence[str] | str | None = None, *, config: StoreConfig | None = None,
                 schemas: SchemaRegistry | None = None, **settings: Any) -> None:
        self.config = config or resolve_config(endpoints, **settings)
        self.schemas = schemas or SchemaRegistry()
        for path in self.config.schema_files:
            self.schemas.add_file(path)
        #: What the store is kept in (etcd or an aviso-server), opened once from the endpoint.
        self.backend: Backend = open_backend(self.config, _StatusChainHistory(self))

    def __repr__(self) -> str:
        return f"Store({self.config!r})"

    @property
    def gateway(self) -> EtcdGateway:
        """etcd's HTTP gateway, for etcd-only features (a CapabilityError on an aviso-server)."""
        return self.backend.etcd("etcd's key-value API").gateway

    def close(self) -> None:
        """Release the backend's connections."""
        self.backend.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests --------------------------------------------------------------------------------
    def request(self, event: str | Request | Mapping[str, Any], raw: Mapping[str, Any] | None = None) -> Request:
        """A validated request: ``request("mars", {...})``, ``request({"event": "mars", ...})`` or a Request."""
        if isinstance(event, Request):
            return event
        if isinstance(event, Mapping):
            name, fields = split_event(event)
        else:
            name, fields = split_event(raw or {}, event)
        return Request.build(name, fields, self.schemas)

    def schema(self, event: str) -> EventSchema:
        """The schema of a known event."""
        return self.schemas[event]

    # -- notify ----------------------------------------------------------------------------------
    def notify(self, event: str | Request | Mapping[str, Any], raw: Mapping[str, Any] | None = None, *,
               location: str | None = None, ttl: int | str | None = None,
               message: str | None = None) -> NotifyResult:
        """Post every key of a complete request: one transaction per base and per ``max_txn_ops`` operations.

        ``event`` is a Request, an event name with its fields in ``raw``, or fields with an ``event``
        entry. ``location`` (or a ``location`` entry among the fields) is stored as the value; ``ttl``
        makes the keys expire. Bad input raises ValidationError before anything is written.
        """
        request, location, ttl = self._posting(event, raw, location, ttl)
        request.require_complete("notify")
        return self.backend.notify(request, location, ttl, message)

    def _posting(self, event: str | Request | Mapping[str, Any], raw: Mapping[str, Any] | None,
                 location: Any, ttl: Any) -> tuple[Request, str | None, int | None]:
        """The request to post, its location and its ttl: the one place that takes them out of the fields."""
        fields: dict[str, Any] = {}
        if not isinstance(event, Request):
            name, fields = split_event(event) if isinstance(event, Mapping) else split_event(raw or {}, event)
        location = check_location(location if location is not None else fields.pop("location", None))
        ttl = check_ttl(ttl if ttl is not None else fields.pop("ttl", None))
        request = event if isinstance(event, Request) else Request.build(name, fields, self.schemas)
        return request, location, ttl

    # -- reads -----------------------------------------------------------------------------------
    def read(self, request: Request, *, min_revision: int = 0) -> tuple[int, list[Notification]]:
        """Notifications that exist now for ``request`` (modified at or after ``min_revision``).

        Returns the revision read and the notifications in store order. Ranges are read 128 per
        transaction, every one pinned to the revision of the first: one consistent snapshot.
        """
        return self.backend.read(request, min_revision)

    def read_many(self, requests: Sequence[Request], *,
                  min_revision: int = 0) -> list[tuple[int, list[Notification]]]:
        """:meth:`read` of several requests at once: their ranges share transactions (for many waiters)."""
        return self.backend.read_many(requests, min_revision)

    def read_prefixes(self, prefixes: Sequence[str], *, min_revision: int = 0,
                      revision: int = 0) -> tuple[int, list[KeyValue]]:
        """Every key under ``prefixes`` as etcd held them at one revision (``revision``, else now); etcd only."""
        return self.backend.etcd("reading key prefixes").read_prefixes(prefixes, min_revision=min_revision,
                                                                         revision=revision)

    def get(self, event: str | Request | Mapping[str, Any], raw: Mapping[str, Any] | None = None) -> list[Notification]:
        """Notifications that exist now for a request (wildcards allowed except the base fields)."""
        return self.read(self.request(event, raw))[1]

    def value(self, event: str | Request | Mapping[str, Any],
              raw: Mapping[str, Any] | None = None) -> dict[str, str | None]:
        """The stored value of every key of a complete request (None where the key does not exist)."""
        request = self.request(event, raw)
        request.require_complete("value")
        existing = {n.key: n for n in self.read(request)[1]}
        return {key: existing[key].value if key in existing else None for key in request.keys()}

    def current_revision(self) -> int:
        """The store's revision now (an aviso-server has none: see :meth:`now`)."""
        return self.backend.current_revision()

    def now(self) -> Position:
        """The position of now: a listener starting here gets every post after this call (on an
        aviso-server, every post from the current second on)."""
        return self.backend.now()

    def first_after(self, requests: Sequence[Request], moment: dt.datetime) -> Position:
        """The position just before the first post at or after ``moment`` (UTC) that the requests may match."""
        return self.backend.first_after(requests, moment)

    def replay_window(self, requests: Sequence[Request], start: dt.datetime,
                      end: dt.datetime | None = None) -> list[Notification]:
        """Every post in [start, end) (UTC, naive) that the requests match, in write order."""
        return self.backend.replay_window(requests, start, end)

    # -- waiting and listening (see listen.py) ---------------------------------------------------
    def wait(self, event: str | Request | Mapping[str, Any], raw: Mapping[str, Any] | None = None, *,
             mode: str = "all", timeout: float | None = None,
             on_progress: Callable[[int, int, Notification], None] | None = None) -> list[Notification]:
        """Block until every key of the request exists (``mode="any"``: one matching key); see listen.wait."""
        return wait(self, self.request(event, raw), mode=mode, timeout=check_timeout(timeout),
                    on_progress=on_progress)

    def listen(self, requests: Request | Iterable[Request], **options: Any) -> Iterator[Notification]:
        """Notifications as they are written, in store order; see listen.listen."""
        return listen(self, [requests] if isinstance(requests, Request) else list(requests), **options)


class _StatusChainHistory:
    """Times placed on etcd's revisions through the status chains (status_chain.py), for the etcd backend."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def first_after(self, requests: Sequence[Request], moment: dt.datetime) -> Position:
        windows = [window for request in requests for key in request.status_keys()
                   if (window := revision_window(self.store, key, moment)) is not None]
        if not windows:
            return self.store.now()
        return Position(min(window[0] for window in windows) - 1)

    def replay_window(self, requests: Sequence[Request], start: dt.datetime,
                      end: dt.datetime | None) -> list[Notification]:
        return replay(self.store, list(requests), start, end)


__all__ = ["DATE_FORMAT", "NO_PAYLOAD", "Notification", "NotifyResult", "Store"]
