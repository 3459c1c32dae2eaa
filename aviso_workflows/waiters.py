"""Who waits for what: every waiter's entry in etcd while it waits, and the APIs that list and follow them.

A waiter (a CLI wait, a sensor, a trigger, a listener) registers itself under
``/aviso-workflows/waiting/<id>``, outside Aviso's own prefixes, so pyaviso and ecFlow's poller never see
it. The entry holds the request, who waits (``who``: fields its adapter fills, such as a DAG's ids or an
ecFlow path; the core names no scheduler), host, pid, since when, and how many keys were found of how
many: ``found`` in any order, ``ready`` in request order with none missing before them (the progress
shown). It is put with an etcd lease: it vanishes when the waiter ends, or within the lease's TTL when
the waiter dies.

The waiters of one process share one lease and one thread that keeps it alive and does every write:
registering costs one put, progress is written at most once per ``PROGRESS_INTERVAL`` (the newest count
only, never a read), and leaving costs one delete (the last one revokes the lease instead); the entries
that register or leave together go in shared transactions. A waiter therefore never blocks on these
writes, which suits asyncio triggers, and a store that refuses them (a user who may only read ``/ec/``)
costs one INFO line and nothing more: the wait goes on unregistered.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .backends.protocol import CapabilityError
from .errors import PermissionDenied, StoreError, StoreUnavailable, ValidationError
from .etcd import EtcdGateway, KeyValue, WatchBatch, delete_op, put_op
from .runtime import runtime_for

if TYPE_CHECKING:
    from .request import Request
    from .storelike import StoreLike

log = logging.getLogger(__name__)
#: Where waiters register (outside Aviso's ``/ec/`` keys: Aviso clients never read it).
WAITING_PREFIX = "/aviso-workflows/waiting/"
#: Seconds a dead waiter's entry outlives it (the lease's TTL); the environment variable overrides it.
DEFAULT_TTL = 30
TTL_VARIABLE = "AVISO_WORKFLOWS_WAITER_TTL"
#: The shortest TTL etcd grants with its default timing (it raises shorter ones to this).
MIN_TTL = 2
#: Seconds between two writes of one waiter's progress (the newest count is written; counts between are not).
PROGRESS_INTERVAL = 1.0
#: Longest pause of the keeper thread between two looks at its work (seconds).
KEEPER_TICK = 1.0
#: How long a process's last waiter waits at its end for its entry to be removed (seconds).
CLOSE_SECONDS = 3.0
#: Seconds an entry that closed waits for others closing after it, to leave with them in one transaction
#: (ten thousand triggers fired by one post would otherwise each cost a write racing the others' releases);
#: once no entry is left open, the lease is revoked at once instead. A list of waiters is as fresh as the
#: counts in it (``PROGRESS_INTERVAL``), and the removals of a burst of releases come after it, not during it.
LEAVE_GATHER = PROGRESS_INTERVAL
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime(TIME_FORMAT)


def waiter_ttl(ttl: int | None = None) -> int:
    """The lease TTL to use: ``ttl``, else ``$AVISO_WORKFLOWS_WAITER_TTL``, else 30 s (0: do not register)."""
    if ttl is None:
        text = os.environ.get(TTL_VARIABLE, "").strip()
        if not text:
            return DEFAULT_TTL
        if not text.isdigit():
            raise ValidationError(TTL_VARIABLE, text, "expected a whole number of seconds (0: waiters do not "
                                  "register)")
        ttl = int(text)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 0:
        raise ValidationError("ttl", ttl, "expected a whole number of seconds (0: waiters do not register)")
    return ttl if ttl == 0 else max(ttl, MIN_TTL)


def check_who(who: Mapping[str, Any] | None) -> dict[str, str]:
    """``who`` as text fields: names are letters, digits, '_' and '-'; values are text, numbers or None."""
    checked: dict[str, str] = {}
    for name, value in (who or {}).items():
        if not isinstance(name, str) or not name or not all(c.isalnum() or c in "_-" for c in name):
            raise ValidationError("who", name, "field names are letters, digits, '_' and '-'")
        if value is None:
            continue
        if isinstance(value, (dict, list, tuple, set, bytes)):
            raise ValidationError(f"who.{name}", value, "expected text or a number")
        checked[name] = str(value)
    return checked


# -- the entries ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Waiter:
    """One registered waiter as listed."""

    id: str
    event: str
    request: dict[str, Any]
    who: dict[str, str]
    host: str
    pid: int
    since: str
    found: int | None
    total: int | None
    mode: str = "all"
    deadline: str | None = None
    updated: str | None = None
    revision: int = 0
    #: Keys found in request order with none missing before them (None: an entry written without it).
    ready: int | None = None

    @classmethod
    def from_record(cls, record: Mapping[str, Any], revision: int = 0) -> Waiter:
        """From the JSON stored in etcd (unknown entries are ignored, missing ones get defaults)."""
        return cls(id=str(record.get("id", "")), event=str(record.get("event", "")),
                   request=dict(record.get("request") or {}), who=dict(record.get("who") or {}),
                   host=str(record.get("host", "")), pid=int(record.get("pid") or 0),
                   since=str(record.get("since", "")),
                   found=_optional_int(record.get("found")), total=_optional_int(record.get("total")),
                   mode=str(record.get("mode", "all")), deadline=record.get("deadline"),
                   updated=record.get("updated"), revision=revision, ready=_optional_int(record.get("ready")))

    @classmethod
    def from_kv(cls, kv: KeyValue) -> Waiter | None:
        """The waiter of a stored key (None if it does not hold one)."""
        try:
            record = json.loads(kv.value)
        except ValueError:
            return None
        return cls.from_record(record, kv.mod_revision) if isinstance(record, dict) else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-native data (what ``waiting --json`` prints and the record stored)."""
        return {"id": self.id, "event": self.event, "request": self.request, "mode": self.mode, "who": self.who,
                "host": self.host, "pid": self.pid, "since": self.since, "found": self.found, "ready": self.ready,
                "total": self.total, "deadline": self.deadline, "updated": self.updated}

    @property
    def progress_text(self) -> str:
        """``ready/total`` (``found/total`` for an entry without ``ready``; ``-`` and ``?`` when unknown)."""
        shown = self.ready if self.ready is not None else self.found
        return f"{'-' if shown is None else shown}/{'?' if self.total is None else self.total}"

    @property
    def request_text(self) -> str:
        """The request as ``event=E,k=v,...`` (lists as ``a/b/c``)."""
        parts = [f"event={self.event}"]
        for name, value in self.request.items():
            parts.append(f"{name}={'/'.join(map(str, value)) if isinstance(value, list) else value}")
        return ",".join(parts)

    def matches(self, filters: Mapping[str, str], store: StoreLike | None = None) -> bool:
        """True when every ``name=value`` filter holds: on the waiter's own fields, its ``who``, or its request
        (a request field matches a value the request waits for; a field the request leaves open matches any)."""
        return all(self._matches_one(name, value, store) for name, value in filters.items())

    def _matches_one(self, name: str, value: str, store: StoreLike | None) -> bool:
        own = {"id": self.id, "event": self.event, "host": self.host, "pid": str(self.pid), "mode": self.mode}
        if name in own:
            return own[name] == value
        if name in self.who:
            return self.who[name] == value
        if name not in self.request:
            return name not in own and self._is_request_field(name, store)
        wanted = self.request[name]
        values = [str(v) for v in wanted] if isinstance(wanted, list) else [str(wanted)]
        return _canonical(store, self.event, name, value) in values

    def _is_request_field(self, name: str, store: StoreLike | None) -> bool:
        """An open field of the waiter's event matches any value; a name the event does not have, none."""
        if store is None:
            return False
        try:
            return name in store.schema(self.event).key_fields
        except (KeyError, ValidationError):
            return False


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _canonical(store: StoreLike | None, event: str, name: str, value: str) -> str:
    if store is None:
        return value
    try:
        return store.schema(event).field(name).canonical(value)
    except (KeyError, ValidationError, ValueError):
        return value


# -- registering ---------------------------------------------------------------------------------
def _renew_identity() -> tuple[str, itertools.count[int], str]:
    """This process's host name, id counter and id prefix (random: ids of processes never meet)."""
    return socket.gethostname(), itertools.count(), uuid.uuid4().hex[:8]


#: Asked once per process, not once per waiter: both calls leave the interpreter, and with the keeper and
#: reader threads busy each costs a hand-over of the interpreter lock (thousands of triggers arm at once).
_HOST, _IDS, _ID_PREFIX = _renew_identity()


def _after_fork() -> None:
    """A forked child gets ids of its own (it would repeat its parent's counter under the same prefix)."""
    global _HOST, _IDS, _ID_PREFIX
    _HOST, _IDS, _ID_PREFIX = _renew_identity()


os.register_at_fork(after_in_child=_after_fork)


def _new_id() -> str:
    """16 hex characters: the process's random prefix and its count of waiters."""
    return f"{_ID_PREFIX}{next(_IDS) & 0xFFFFFFFF:08x}"


@dataclass(slots=True, eq=False)
class Registration:
    """One waiter's entry while it waits: :meth:`progress` records counts (written coalesced),
    :meth:`close` removes the entry. Neither blocks on etcd (except ``close(wait=...)``)."""

    id: str
    key: str
    record: dict[str, Any]
    keeper: _Keeper | None
    #: The record changed since it was last written.
    dirty: bool = True
    written: bool = False
    closed: bool = False
    last_write: float = 0.0
    #: The entry is removed (the keeper's ``removed`` condition tells who waits for it: none per waiter).
    done: bool = False

    def progress(self, found: int, total: int | None = None, ready: int | None = None) -> None:
        """Record ``found`` (of ``total``) keys, ``ready`` of them in request order with no gap (default: all
        found); the keeper writes the newest counts within a second or so."""
        if self.keeper is None or self.closed:
            return
        ready = found if ready is None else ready
        with self.keeper.lock:
            if self.closed:
                return
            if self.record.get("found") == found and self.record.get("ready") == ready \
                    and (total is None or self.record.get("total") == total):
                return
            self.record["found"] = found
            self.record["ready"] = ready
            if total is not None:
                self.record["total"] = total
            self.dirty = True
            self.keeper.changed[self.id] = self
        self.keeper.wake()

    def close(self, wait: float | None = None) -> None:
        """Remove the entry; with ``wait``, block up to that many seconds until it is removed."""
        if self.keeper is None or self.closed:
            return
        self.keeper.leave(self)
        if wait:
            with self.keeper.lock:
                self.keeper.removed.wait_for(lambda: self.done, wait)

    def __enter__(self) -> Registration:
        return self

    def __exit__(self, *_: object) -> None:
        self.close(wait=CLOSE_SECONDS if self.keeper is not None and self.keeper.last_one(self) else None)


#: A registration that writes nothing (registering turned off).
def _unregistered(record: dict[str, Any]) -> Registration:
    return Registration(id=record["id"], key="", record=record, keeper=None, done=True)


class _Keeper:
    """The thread that writes a process's entries for one store and keeps their shared lease alive."""

    def __init__(self, store: StoreLike, ttl: int) -> None:
        self.gateway: EtcdGateway = store.gateway
        self.max_ops = max(1, store.config.max_txn_ops)
        self.ttl = ttl
        self.lock = threading.Lock()
        self._work = threading.Condition(self.lock)
        #: Notified when entries are removed (their ``done`` set).
        self.removed = threading.Condition(self.lock)
        #: Work was handed to the thread since it last took some: a new hand-over need not wake it again
        #: (thousands of waiters registering at once wake it once, not once each).
        self.pending = False
        self.entries: dict[str, Registration] = {}
        #: The open entries to write (new, or with progress not yet written) and the closed ones, by id: a step
        #: looks at these only, so ten thousand waiters ending one after another are not ten thousand scans of all.
        self.changed: dict[str, Registration] = {}
        self.closing: dict[str, Registration] = {}
        self.closing_since = 0.0
        self.lease: str | None = None
        self.next_renewal = 0.0
        self.refused = False
        self.failing = False
        self.thread: threading.Thread | None = None

    def add(self, registration: Registration) -> None:
        with self.lock:
            self.entries[registration.id] = registration
            self.changed[registration.id] = registration
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="aviso-waiters", daemon=True)
                self.thread.start()
            self._hand_over()

    def wake(self) -> None:
        with self.lock:
            self._hand_over()

    def leave(self, registration: Registration) -> None:
        """Close ``registration``: the thread removes it with those closing within ``LEAVE_GATHER``."""
        with self.lock:
            registration.closed = True
            self.changed.pop(registration.id, None)  # a closed entry is never written again
            self.closing[registration.id] = registration
            if len(self.closing) == 1:
                self.closing_since = time.monotonic()
            elif len(self.closing) < len(self.entries):
                return  # the thread wakes for the first of them already
            self._hand_over()

    def _leaving_now(self, now: float) -> bool:  # holding the lock
        return bool(self.closing) and (len(self.closing) == len(self.entries)
                                       or now >= self.closing_since + LEAVE_GATHER)

    def _hand_over(self) -> None:  # holding the lock
        if not self.pending:
            self.pending = True
            self._work.notify()

    def close(self) -> None:
        """The runtime closes: the entries go as their waiters close them (the thread ends with the last),
        and the lease expires by itself if the process ends first; wake the thread to write what changed."""
        self.wake()

    def last_one(self, registration: Registration) -> bool:
        with self.lock:
            return all(r is registration or r.closed for r in self.entries.values())

    def _run(self) -> None:
        while True:  # ends once no entry is left (a new one starts the thread again)
            with self.lock:
                if not self.entries:
                    self.thread = None
                    return
                if not self.pending:
                    self._work.wait(self._pause())
                self.pending = False
            try:
                self._step()
                if self.failing:
                    log.info("waiters are registered in etcd again")
                self.failing = False
            except PermissionDenied as error:
                self._refused(error)
            except StoreError as error:
                if not self.failing:
                    log.info("waiters cannot be registered in etcd now (%s); trying again", error)
                self.failing = True
                time.sleep(KEEPER_TICK)

    def _pause(self) -> float:
        now = time.monotonic()
        if self._leaving_now(now):
            return 0.0
        leaving = [self.closing_since + LEAVE_GATHER - now] if self.closing else []
        if self.refused:  # nothing more to write: sleep until entries close
            return max(0.0, min([KEEPER_TICK, *leaving]))
        if any(not r.written for r in self.changed.values()):
            return 0.0
        dirty = [r.last_write + PROGRESS_INTERVAL - now for r in self.changed.values()]
        renewal = self.next_renewal - now if self.lease else KEEPER_TICK
        return max(0.0, min([KEEPER_TICK, renewal, *dirty, *leaving]))

    def _step(self) -> None:
        now = time.monotonic()
        with self.lock:
            closing = list(self.closing.values()) if self._leaving_now(now) else []
            if closing:
                self.closing.clear()
            due = [r for r in self.changed.values() if not r.written or now - r.last_write >= PROGRESS_INTERVAL]
            for registration in due:
                registration.record["updated"] = _now()
            writing = [(r, json.dumps(r.record)) for r in due]
            remaining = len(self.entries) - len(closing)
        if self.refused:
            writing = []
        self._remove(closing, revoke=remaining == 0)
        if writing:
            self._write(writing)
        if self.lease and remaining and time.monotonic() >= self.next_renewal:
            self._renew()

    def _remove(self, closing: list[Registration], revoke: bool) -> None:
        if not closing:
            return
        if revoke and self.lease:
            lease, self.lease = self.lease, None
            self.gateway.revoke_lease(lease)
        elif self.lease:
            written = [delete_op(r.key) for r in closing if r.written]
            for start in range(0, len(written), self.max_ops):  # a transaction of deletes, not one call each
                self.gateway.txn([], written[start:start + self.max_ops])
        with self.lock:
            for registration in closing:
                self.entries.pop(registration.id, None)
                registration.done = True
            self.removed.notify_all()

    def _write(self, writing: list[tuple[Registration, str]]) -> None:
        if self.lease is None:
            self.lease = self.gateway.grant_lease(self.ttl)
            self.next_renewal = time.monotonic() + self.ttl / 3
        for start in range(0, len(writing), self.max_ops):
            chunk = writing[start:start + self.max_ops]
            self.gateway.txn([], [put_op(r.key, text, self.lease) for r, text in chunk])
            with self.lock:
                for registration, text in chunk:
                    registration.written = True
                    registration.last_write = time.monotonic()
                    registration.dirty = json.dumps(registration.record) != text
                    if not registration.dirty:
                        self.changed.pop(registration.id, None)

    def _renew(self) -> None:
        assert self.lease is not None
        if self.gateway.keep_lease_alive(self.lease) > 0:
            self.next_renewal = time.monotonic() + self.ttl / 3
            return
        # The lease expired (etcd unreachable for longer than the TTL): its keys are gone; write them again.
        log.info("the lease of this process's waiter entries expired; registering them again")
        self.lease = None
        with self.lock:
            for registration in self.entries.values():
                registration.dirty, registration.written = True, False
            self.changed.update((i, r) for i, r in self.entries.items() if not r.closed)

    def _refused(self, error: PermissionDenied) -> None:
        """The store refuses our entries (a user who may only read Aviso's keys): wait unregistered."""
        if not self.refused:
            log.info("waiters are not registered in etcd: the credentials in use may not write %s (%s)",
                     WAITING_PREFIX, error)
        self.refused = True
        lease, self.lease = self.lease, None
        if lease:
            try:
                self.gateway.revoke_lease(lease)
            except StoreError:
                pass  # it expires by itself
        with self.lock:
            for registration in self.entries.values():
                registration.dirty = registration.written = False
            self.changed.clear()
            for registration in self.closing.values():
                self.entries.pop(registration.id, None)
                registration.done = True
            self.closing.clear()
            self.removed.notify_all()


def _keeper(store: StoreLike, ttl: int) -> _Keeper:
    """The keeper of the store's runtime for entries of ``ttl`` (one per runtime and ttl)."""
    return runtime_for(store).part(("waiters", ttl), lambda: _Keeper(store, ttl))


def register(store: StoreLike, request: Request, *, who: Mapping[str, Any] | None = None, mode: str = "all",
             found: int | None = 0, total: int | None = None, timeout: float | None = None,
             ttl: int | None = None, ready: int | None = None) -> Registration:
    """Register a waiter for ``request`` (never blocks, never raises for the store's sake).

    ``who`` holds the fields an adapter fills (``kind`` such as ``cli``/``sensor``/``listener``, a DAG's ids,
    an ecFlow path ...); host and pid are added here. ``ttl`` (default ``$AVISO_WORKFLOWS_WAITER_TTL`` or 30 s,
    0: do not register) is how long the entry outlives a waiter that dies. ``ready`` (default ``found``):
    the keys found in request order with none missing before them.
    """
    who_fields, ttl_seconds = check_who(who), waiter_ttl(ttl)
    deadline = None
    if timeout is not None:
        deadline = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=timeout)).strftime(TIME_FORMAT)
    waiter_id = _new_id()
    if total is None:
        total = request.count if request.is_complete and mode == "all" else None
    record = Waiter(id=waiter_id, event=request.event, request=request.as_dict(), who=who_fields,
                    host=_HOST, pid=os.getpid(), since=_now(), found=found, total=total, mode=mode,
                    deadline=deadline, ready=found if ready is None else ready).to_dict()
    if ttl_seconds == 0 or not _keeps_registry(store):
        return _unregistered(record)
    keeper = _keeper(store, ttl_seconds)
    registration = Registration(id=waiter_id, key=WAITING_PREFIX + waiter_id, record=record, keeper=keeper)
    keeper.add(registration)
    return registration


def _keeps_registry(store: StoreLike) -> bool:
    """True for an etcd store; another backend (an aviso-server) keeps no registry of waiters."""
    try:
        store.backend.etcd("the waiting registry")
    except CapabilityError:
        return False
    return True


# -- listing and following -----------------------------------------------------------------------
def list_waiters(store: StoreLike, filters: Mapping[str, str] | None = None) -> list[Waiter]:
    """The waiters registered now (those matching every ``name=value`` filter), oldest first."""
    _, kvs = store.gateway.range_all(WAITING_PREFIX)
    waiters = [w for w in (Waiter.from_kv(kv) for kv in kvs) if w is not None]
    return sorted((w for w in waiters if w.matches(filters or {}, store)), key=lambda w: (w.since, w.id))


@dataclass(frozen=True)
class WaiterChange:
    """A change of the registered waiters: ``added``, ``updated`` (progress) or ``removed`` (then ``waiter``
    is the last state seen)."""

    kind: str
    waiter: Waiter


def watch_waiters(store: StoreLike, stop: threading.Event, *, idle_timeout: float = 30.0,
                  snapshot: bool = True) -> Iterator[WaiterChange]:
    """Every change of the registered waiters until ``stop`` is set: first ``added`` for each waiter
    registered now (``snapshot``), then changes as etcd reports them. After a lost watch it reads the list
    again and reports the difference, so nothing is missed."""
    known: dict[str, Waiter] = {}
    first = True
    for _ in range(1_000_000_000):  # bounded by ``stop``; each round is one watch
        if stop.is_set():
            return
        try:
            revision, kvs = store.gateway.range_all(WAITING_PREFIX)
            yield from _differences(known, kvs, report=snapshot or not first)
            first = False
            yield from _follow(store, known, revision + 1, stop, idle_timeout)
        except (StoreUnavailable, StoreError) as error:
            if isinstance(error, PermissionDenied):
                raise
            log.debug("watch of waiters lost (%s); reading them again", error)
            if stop.wait(KEEPER_TICK):
                return


def _differences(known: dict[str, Waiter], kvs: Sequence[KeyValue], report: bool) -> Iterator[WaiterChange]:
    now = {w.id: w for w in (Waiter.from_kv(kv) for kv in kvs) if w is not None}
    changes = [WaiterChange("removed", known[i]) for i in known if i not in now]
    for waiter_id, waiter in now.items():
        before = known.get(waiter_id)
        if before is None:
            changes.append(WaiterChange("added", waiter))
        elif before.revision != waiter.revision:
            changes.append(WaiterChange("updated", waiter))
    known.clear()
    known.update(now)
    if report:
        yield from changes


def _follow(store: StoreLike, known: dict[str, Waiter], start: int, stop: threading.Event,
            idle_timeout: float) -> Iterator[WaiterChange]:
    stream = store.gateway.watch(WAITING_PREFIX, start, idle_timeout=idle_timeout)
    finished = threading.Event()

    def close_on_stop() -> None:  # a stream blocks in a read: closing it from here ends that read
        while not finished.wait(0.2):
            if stop.is_set():
                stream.close()
                return

    threading.Thread(target=close_on_stop, name="aviso-waiters-watch", daemon=True).start()
    try:
        for batch in stream:
            yield from _changes(known, batch)
            if stop.is_set():
                return
    finally:
        finished.set()
        stream.close()


def _changes(known: dict[str, Waiter], batch: WatchBatch) -> Iterator[WaiterChange]:
    """What one watch response changed, in history order: an entry written and removed in one response (a reader
    behind) is gone, and one removed and written again (its lease expired, its keeper registered it anew) is there."""
    events: list[tuple[int, str, KeyValue | None]] = [(kv.mod_revision, kv.key, kv) for kv in batch.puts]
    events += [(revision, key, None) for key, revision in batch.deleted]
    for _, key, kv in sorted(events, key=lambda event: event[0]):
        if kv is None:
            gone = known.pop(key[len(WAITING_PREFIX):], None)
            if gone is not None:
                yield WaiterChange("removed", gone)
            continue
        waiter = Waiter.from_kv(kv)
        if waiter is not None:
            kind = "updated" if waiter.id in known else "added"
            known[waiter.id] = waiter
            yield WaiterChange(kind, waiter)


def format_waiter(waiter: Waiter) -> str:
    """One line: since, progress (ready/total), request, who, host:pid."""
    progress = waiter.progress_text
    who = " ".join(f"{k}={v}" for k, v in waiter.who.items())
    return f"{waiter.since} {progress:>9} {waiter.request_text} {who} {waiter.host}:{waiter.pid}".replace("  ", " ")


def parse_filters(pairs: Sequence[str]) -> dict[str, str]:
    """``name=value`` filters of ``waiting`` (also ``a=1,b=2`` in one argument)."""
    filters: dict[str, str] = {}
    for argument in pairs:
        for pair in argument.split(","):
            name, sep, value = pair.partition("=")
            if not sep or not name.strip():
                raise ValidationError("filter", pair, "expected name=value, such as step=3 or dag_id=forecast")
            filters[name.strip()] = value.strip()
    return filters


__all__ = ["DEFAULT_TTL", "WAITING_PREFIX", "Registration", "Waiter", "WaiterChange", "check_who",
           "format_waiter", "list_waiters", "parse_filters", "register", "waiter_ttl", "watch_waiters"]
