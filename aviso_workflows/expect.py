"""Expected arrivals and lateness: which data should be there by when, and what to do when it is not.

```yaml
expectations:
  - name: oper 00 forecast
    event: mars
    request: {class: od, expver: 1, domain: g, stream: oper, time: 0, step: 0/to/240/by/6}
    at: "05:40"          # UTC, on the data date: when step 0 is due
    per_step: 2m         # step N is due at 05:40 + N x 2 min (the step field is ``step_field``, default step)
    grace: 10m           # late once due + grace passes without the data
    triggers:            # the actions of listener files: command, post, log, airflow, ecflow ...
      - {type: log, path: ~/late.log}
```

Every key of the request, for each date checked, has a state: ``expected``, ``arrived`` (with its time and
location), ``late`` (due + grace passed, not there) or ``arrived-late``. The triggers run once when a key
becomes late and once more when it arrives after that ("arrived late by 7 min"); the notification they get
is the key's, plus an ``expectation`` entry (state, due time, message, lateness in seconds). What was fired
is kept in a state file, so a restarted checker does not fire it again.

Dates: by default today and yesterday (UTC), moving on at midnight; or a fixed list. The checker reads what
exists once, then follows the store with the listener engine (one watch for all keys; no polling per key).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import queue
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .documents import read_document
from .errors import HistoryCompacted, StoreError, ValidationError
from .listen import listen
from .listeners import Action, Dispatcher, _build_actions, _located
from .notification import Notification
from .position import Position
from .request import Request
from .status_chain import STATUS_TIME_FORMAT, status_record
from .store import Store

log = logging.getLogger(__name__)
ENTRIES = ("name", "event", "request", "at", "day", "per_step", "step_field", "grace", "date_field", "triggers",
           "actions")
STATES = ("expected", "arrived", "late", "arrived-late")
DURATION = re.compile(r"\A(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?\Z")
TIME_OF_DAY = re.compile(r"\A(\d{1,2}):(\d{2})(?::(\d{2}))?\Z")
#: Longest pause of the checker between two looks at the clock (seconds).
TICK = 1.0
#: Most days a checker looks back.
MAX_DAYS = 31
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


# -- the file ------------------------------------------------------------------------------------
def parse_duration(where: str, value: Any) -> dt.timedelta:
    """``90`` (seconds), ``"90s"``, ``"2m"``, ``"1h30m"``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 10 * 86400:
        return dt.timedelta(seconds=value)
    match = DURATION.match(value.strip()) if isinstance(value, str) and value.strip() else None
    if match is None:
        raise ValidationError(where, value, "expected a duration such as 90s, 2m, 1h30m or a number of seconds")
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return dt.timedelta(hours=hours, minutes=minutes, seconds=seconds)


def parse_time_of_day(where: str, value: Any) -> dt.timedelta:
    """``"05:40"`` or ``"05:40:30"`` (UTC) as the time after midnight."""
    match = TIME_OF_DAY.match(value.strip()) if isinstance(value, str) else None
    if match is None or int(match.group(1)) > 23 or int(match.group(2)) > 59 or int(match.group(3) or 0) > 59:
        raise ValidationError(where, value, "expected a UTC time of day such as '05:40' or '05:40:30' (quoted)")
    return dt.timedelta(hours=int(match.group(1)), minutes=int(match.group(2)), seconds=int(match.group(3) or 0))


@dataclass
class Expectation:
    """One entry of an expectation file: a request (without its date) and when each of its keys is due."""

    name: str
    request: Request
    at: dt.timedelta
    per_step: dt.timedelta = dt.timedelta(0)
    grace: dt.timedelta = dt.timedelta(0)
    day: int = 0
    step_field: str | None = "step"
    date_field: str = "date"
    actions: list[tuple[str, Action]] = field(default_factory=list)

    def for_date(self, date: str) -> Request:
        """The complete request of one data date."""
        return Request(self.request.schema, {**self.request.values, self.date_field: (date,)})

    def due(self, date: str, fields: Mapping[str, str]) -> dt.datetime:
        """When the key of ``fields`` is due (UTC, naive)."""
        moment = dt.datetime.strptime(date, "%Y%m%d") + dt.timedelta(days=self.day) + self.at
        if self.step_field and self.per_step:
            moment += int(fields.get(self.step_field, "0")) * self.per_step
        return moment


def parse_expectations(store: Store, document: Any, source: str = "expectation file") -> list[Expectation]:
    """Expectations from a parsed document (``{expectations: [...]}``); an error names the entry and field."""
    if not isinstance(document, Mapping) or not isinstance(document.get("expectations"), list):
        raise ValidationError(source, type(document).__name__, "expected 'expectations:' with a list of entries")
    with _located(source):
        expectations = [_expectation(store, index, entry) for index, entry in enumerate(document["expectations"])]
    if not expectations:
        raise ValidationError(source, [], "the file holds no expectation")
    return expectations


def _expectation(store: Store, index: int, entry: Any) -> Expectation:
    where = f"expectations[{index}]"
    if not isinstance(entry, Mapping):
        raise ValidationError(where, entry, "expected a mapping with event, request, at and triggers")
    unknown = sorted((name for name in entry if name not in ENTRIES), key=str)
    if unknown:
        raise ValidationError(f"{where}.{unknown[0]}", entry[unknown[0]],
                              "an expectation takes: " + ", ".join(ENTRIES))
    for name in ("event", "request", "at"):
        if entry.get(name) is None:
            raise ValidationError(f"{where}.{name}", None, f"an expectation needs '{name}'")
    with _located(where):
        schema = store.schema(entry["event"])
    date_field = str(entry.get("date_field", "date"))
    if date_field not in schema.key_fields:
        raise ValidationError(f"{where}.date_field", date_field, f"event {schema.name!r} has the fields "
                              + ", ".join(schema.key_fields))
    raw = entry["request"]
    if not isinstance(raw, Mapping):
        raise ValidationError(f"{where}.request", raw, "expected a mapping of fields to values")
    if date_field in raw:
        raise ValidationError(f"{where}.request.{date_field}", raw[date_field], "leave the date out: the checker "
                              "fills in each date it checks (--dates, default today and yesterday)")
    with _located(f"{where}.request"):
        request = store.request(schema.name, raw)
        Expectation("", request, dt.timedelta(0), date_field=date_field).for_date("20000101").require_complete(
            "an expectation")
    step_field = entry.get("step_field", "step" if "step" in schema.key_fields else None)
    per_step = parse_duration(f"{where}.per_step", entry["per_step"]) if "per_step" in entry else dt.timedelta(0)
    if per_step and step_field not in schema.key_fields:
        raise ValidationError(f"{where}.step_field", step_field, "per_step needs a numeric key field such as step")
    day = entry.get("day", 0)
    if isinstance(day, bool) or not isinstance(day, int) or not 0 <= day <= 30:
        raise ValidationError(f"{where}.day", day, "expected a whole number of days after the data date, 0 to 30")
    specs = entry.get("triggers", entry.get("actions"))
    name = entry.get("name", where)
    if not isinstance(name, str) or not name.strip():
        raise ValidationError(f"{where}.name", name, "expected non-empty text")
    return Expectation(name=name, request=request, at=parse_time_of_day(f"{where}.at", entry["at"]),
                       per_step=per_step, grace=parse_duration(f"{where}.grace", entry.get("grace", 0)), day=day,
                       step_field=step_field, date_field=date_field,
                       actions=_build_actions(where, request, specs))


def load_expectation_file(store: Store, path: str | Path) -> list[Expectation]:
    """Expectations from a YAML (or JSON) file, checked whole before anything runs."""
    return parse_expectations(store, read_document(path, "expectation file"), str(path))


# -- states --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Lateness(Notification):
    """What the triggers of an expectation get: the key's notification plus the expectation's verdict."""

    name: str = ""
    state: str = "late"
    expected_by: str = ""
    late_by_seconds: float | None = None
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["expectation"] = {"name": self.name, "state": self.state, "expected_by": self.expected_by,
                               "late_by_seconds": self.late_by_seconds, "message": self.message}
        return data


@dataclass
class Expected:
    """One key of one date of one expectation, and where it stands."""

    expectation: Expectation
    date: str
    key: str
    fields: dict[str, str]
    due: dt.datetime
    state: str = "expected"
    arrived_at: dt.datetime | None = None
    location: str | None = None
    revision: int = 0

    @property
    def late_at(self) -> dt.datetime:
        return self.due + self.expectation.grace

    def to_dict(self) -> dict[str, Any]:
        """JSON-native state, for a board."""
        return {"name": self.expectation.name, "date": self.date, "key": self.key, "request": self.fields,
                "state": self.state, "expected_by": _text(self.due), "late_at": _text(self.late_at),
                "arrived_at": _text(self.arrived_at) if self.arrived_at else None, "location": self.location}


def _text(moment: dt.datetime) -> str:
    return moment.strftime(TIME_FORMAT)


def _minutes(delta: dt.timedelta) -> str:
    seconds = max(0, round(delta.total_seconds()))
    return f"{seconds // 60} min" if seconds >= 60 else f"{seconds} s"


@dataclass(frozen=True)
class Firing:
    """A transition that runs the expectation's triggers: ``late`` or ``arrived-late``."""

    item: Expected
    kind: str
    notification: Lateness

    @property
    def identity(self) -> str:
        return f"{self.item.expectation.name}|{self.item.key}|{self.kind}"


class Board:
    """The states of every expected key of the dates checked; fed arrivals and the clock, it says what fires.

    No I/O inside: :class:`ExpectationChecker` drives it from the store and a clock.
    """

    def __init__(self, expectations: Sequence[Expectation]) -> None:
        self.expectations = list(expectations)
        self.items: dict[tuple[str, str], Expected] = {}  # (expectation name, key) -> state
        self.dates: list[str] = []

    def set_dates(self, dates: Iterable[str]) -> list[str]:
        """Check these dates (forget others); returns the dates added."""
        wanted = list(dict.fromkeys(dates))
        added = [d for d in wanted if d not in self.dates]
        self.items = {k: v for k, v in self.items.items() if v.date in wanted}
        for date in added:
            for expectation in self.expectations:
                request = expectation.for_date(date)
                for fields in request.concrete():
                    key = request.schema.format_key(fields)
                    self.items[(expectation.name, key)] = Expected(expectation, date, key, fields,
                                                                   expectation.due(date, fields))
        self.dates = wanted
        return added

    def requests(self, dates: Iterable[str] | None = None) -> list[Request]:
        """The complete requests of ``dates`` (default: every date checked)."""
        return [e.for_date(d) for d in (self.dates if dates is None else dates) for e in self.expectations]

    def arrived(self, notification: Notification, at: dt.datetime | None) -> list[Firing]:
        """A key was posted (at ``at``; None: some time before the checker started)."""
        firings = []
        for expectation in self.expectations:
            item = self.items.get((expectation.name, notification.key))
            if item is None or item.state in ("arrived", "arrived-late"):
                continue
            item.location, item.revision, item.arrived_at = notification.location, notification.revision, at
            if item.state == "late" or (at is not None and at > item.late_at):
                was_late = item.state == "late"
                item.state = "arrived-late"
                if was_late:
                    firings.append(self._firing(item, "arrived-late", notification))
            else:
                item.state = "arrived"
        return firings

    def tick(self, now: dt.datetime) -> list[Firing]:
        """Keys whose due time and grace have passed without them become late."""
        firings = []
        for item in self.items.values():
            if item.state == "expected" and now > item.late_at:
                item.state = "late"
                firings.append(self._firing(item, "late", None, now))
        return firings

    def next_change(self) -> dt.datetime | None:
        """When the next expected key becomes late."""
        return min((i.late_at for i in self.items.values() if i.state == "expected"), default=None)

    def states(self) -> list[Expected]:
        """Every expected key, by date, expectation and due time."""
        return sorted(self.items.values(), key=lambda i: (i.date, i.expectation.name, i.due, i.key))

    @staticmethod
    def _firing(item: Expected, kind: str, notification: Notification | None,
                now: dt.datetime | None = None) -> Firing:
        name, due = item.expectation.name, _text(item.due)
        expectation = item.expectation
        shown = [expectation.date_field, expectation.step_field,
                 *(k for k, v in expectation.request.values.items() if len(v) > 1)]
        brief = ",".join(f"{k}={item.fields[k]}" for k in dict.fromkeys(shown) if k in item.fields)
        if kind == "late":
            message = (f"{name}: {brief} late: expected by {due} (grace {_minutes(item.expectation.grace)}), "
                       f"not arrived at {_text(now or item.late_at)}")
            late_by = None
        else:
            arrived = item.arrived_at or item.late_at
            late_by = (arrived - item.due).total_seconds()
            message = f"{name}: {brief} arrived late by {_minutes(arrived - item.due)} (expected by {due})"
        base = notification or Notification(item.expectation.request.event, dict(item.fields), None, item.key, 0)
        lateness = Lateness(base.event, dict(base.request), base.location, base.key, base.revision, name=name,
                            state=kind, expected_by=due, late_by_seconds=late_by, message=message)
        return Firing(item, kind, lateness)


# -- the checker ---------------------------------------------------------------------------------
def checked_dates(days: int = 2, now: dt.datetime | None = None) -> list[str]:
    """Today and the ``days - 1`` days before it (UTC), newest first."""
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise ValidationError("days", days, f"expected a whole number of days from 1 to {MAX_DAYS}")
    today = (now or dt.datetime.now(dt.UTC).replace(tzinfo=None)).date()
    return [(today - dt.timedelta(days=back)).strftime("%Y%m%d") for back in range(days)]


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class FiredLog:
    """Which transitions already fired (a small JSON file), so a restarted checker fires none twice."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.fired: dict[str, str] = {}
        if path is not None and path.exists():
            try:
                self.fired = dict(json.loads(path.read_text()))
            except (ValueError, TypeError) as error:
                raise ValidationError("state-file", str(path), f"unreadable ({error})") from None

    def __contains__(self, identity: str) -> bool:
        return identity in self.fired

    def add(self, identity: str, dates: Sequence[str]) -> None:
        self.fired[identity] = _text(_utc_now())
        self.fired = {k: v for k, v in self.fired.items() if any(f"date={d}" in k for d in dates)}
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps(self.fired))
            os.replace(temporary, self.path)


class ExpectationChecker:
    """Follows the store and the clock for a list of expectations, runs their triggers, keeps their states.

    ``dates``: a fixed list of data dates, else today and the ``days - 1`` before (UTC), moving on at
    midnight. ``on_firing`` is told of each transition that fired (a board can show it). :meth:`states` may
    be called from any thread while :meth:`run` runs.
    """

    def __init__(self, store: Store, expectations: Sequence[Expectation], *, dates: Sequence[str] | None = None,
                 days: int = 2, state_file: Path | None = None, clock: Callable[[], dt.datetime] = _utc_now,
                 on_firing: Callable[[Firing], None] | None = None) -> None:
        store.backend.etcd("expectations (arrival times come from etcd's status records)")
        self.store = store
        self.board = Board(expectations)
        self.fixed_dates = [self._date(d) for d in dates] if dates else None
        self.days = days
        checked_dates(days)  # checks the number
        self.clock = clock
        self.fired = FiredLog(state_file)
        self.on_firing = on_firing
        self.lock = threading.Lock()
        self._post_times: dict[tuple[str, int], dt.datetime | None] = {}

    def _date(self, text: str) -> str:
        try:
            return dt.datetime.strptime(str(text), "%Y%m%d").strftime("%Y%m%d")
        except ValueError:
            raise ValidationError("dates", text, "expected dates as YYYYMMDD") from None

    def dates(self) -> list[str]:
        return self.fixed_dates or checked_dates(self.days, self.clock())

    def states(self) -> list[Expected]:
        """A copy of every expected key's state."""
        with self.lock:
            return [dataclasses.replace(item) for item in self.board.states()]

    def start(self) -> int:
        """Take the dates to check and read what exists; returns the revision read (listen after it)."""
        with self.lock:
            added = self.board.set_dates(self.dates())
            self._restore(added)
        return self._read(added)

    def _restore(self, dates: Sequence[str]) -> None:
        """Keys found late by an earlier run stay late: their arrival fires (once) as it would have."""
        for item in self.board.items.values():
            if item.date in dates and f"{item.expectation.name}|{item.key}|late" in self.fired:
                item.state = "late"

    def _read(self, dates: Sequence[str]) -> int:
        requests = self.board.requests(dates)
        answers = self.store.read_many(requests) if requests else []
        revision = answers[0][0] if answers else self.store.current_revision()
        for _, notifications in answers:
            for notification in notifications:
                self.arrived(notification, self._post_time(notification))
        return revision

    def _post_time(self, notification: Notification) -> dt.datetime | None:
        """When a key found by the first read was posted: the time in its transaction's status record."""
        schema = next((e.request.schema for e in self.board.expectations if e.request.event == notification.event),
                      None)
        if schema is None:
            return None
        status_key = schema.status_key(notification.request)
        cached = (status_key, notification.revision)
        if cached not in self._post_times:
            try:
                _, status = self.store.gateway.get(status_key, revision=notification.revision)
                stamp = status_record(status).get("date_time") if status is not None else None
                self._post_times[cached] = dt.datetime.strptime(stamp, STATUS_TIME_FORMAT) if stamp else None
            except (HistoryCompacted, StoreError, ValueError, TypeError):
                self._post_times[cached] = None
        return self._post_times[cached]

    def arrived(self, notification: Notification, at: dt.datetime | None = None) -> None:
        """A key was posted (now, unless ``at`` says when)."""
        with self.lock:
            firings = self.board.arrived(notification, at if at is not None else self.clock())
        self._fire(firings)

    def tick(self) -> None:
        """Look at the clock: the dates to check, and keys that became late."""
        with self.lock:
            added = self.board.set_dates(self.dates())
            self._restore(added)
        if added:
            self._read(added)
        with self.lock:
            firings = self.board.tick(self.clock())
        self._fire(firings)

    def _fire(self, firings: list[Firing]) -> None:
        for firing in firings:
            if firing.identity in self.fired:
                continue
            log.warning("%s", firing.notification.message)
            runtime = Dispatcher([], transient_tries=3)
            for number, (kind, action) in enumerate(firing.item.expectation.actions):
                error = runtime.run(f"{firing.item.expectation.name} trigger {number} ({kind})", action,
                                    firing.notification)
                if error:
                    log.error("%s trigger %d (%s) failed for %s: %s", firing.item.expectation.name, number, kind,
                              firing.item.key, error)
            self.fired.add(firing.identity, self.board.dates)
            if self.on_firing is not None:
                self.on_firing(firing)

    def pause(self) -> float:
        """How long until the clock must be looked at again."""
        upcoming = self.board.next_change()
        if upcoming is None:
            return TICK
        return max(0.0, min(TICK, (upcoming - self.clock()).total_seconds() + 0.01))

    def run(self, stop: threading.Event) -> None:
        """Check until ``stop`` is set: the first read, then one listener on every expectation's keys."""
        revision = self.start()
        self.tick()
        arrivals: queue.Queue[Notification] = queue.Queue()
        requests = [e.request for e in self.board.expectations]  # every date: the board keeps those it checks
        follower = threading.Thread(target=self._follow, args=(requests, revision, stop, arrivals),
                                    name="aviso-expect", daemon=True)
        follower.start()
        try:
            while not stop.is_set():
                try:
                    notification = arrivals.get(timeout=self.pause())
                    self.arrived(notification)
                except queue.Empty:
                    pass
                self.tick()
        finally:
            stop.set()
            follower.join(10)

    def _follow(self, requests: list[Request], revision: int, stop: threading.Event,
                arrivals: queue.Queue[Notification]) -> None:
        try:
            for notification in listen(self.store, requests, after=Position(revision), stop=stop):
                arrivals.put(notification)
        except Exception:  # noqa: BLE001 - the checker must say why it stopped following
            log.exception("the expectation checker stopped following the store")
            stop.set()


__all__ = ["Board", "Expectation", "ExpectationChecker", "Expected", "Firing", "Lateness", "STATES",
           "checked_dates", "load_expectation_file", "parse_duration", "parse_expectations", "parse_time_of_day"]
