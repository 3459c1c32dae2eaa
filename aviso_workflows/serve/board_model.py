"""What the availability board shows, without I/O: the grid a query asks for and the state of each cell.

A board query is a request filter in a URL's query string (``/board?event=mars&class=od&stream=oper&
time=00&step=0/to/48/by/6``): rows are data dates (or cycles, date and time, when the query gives several
times or none), columns are steps. :class:`BoardModel` is fed arrivals (notifications with their post
time), expectation states and waiter changes, and says which cells changed; each cell is a plain dict that
the page renders as it is.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ValidationError
from ..notification import Notification
from ..request import Request
from ..schema import EventSchema, SchemaRegistry
from ..waiters import Waiter, WaiterChange

#: Query parameters of the board itself; every other one is a field of the request filter.
BOARD_PARAMETERS = ("event", "days")
DEFAULT_EVENT = "mars"
#: With no ``date`` in the query: today and the days before it (UTC).
DEFAULT_DAYS = 3
MAX_DAYS = 31
#: The most cells a grid may have (rows x columns given in the query).
MAX_CELLS = 5000
#: Lateness entries the side list shows at most.
LATENESS_SHOWN = 30
DATE_FIELD, TIME_FIELD, STEP_FIELD = "date", "time", "step"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


# -- the query -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class BoardQuery:
    """A checked board query: the request filter and the grid's axes."""

    request: Request
    row_fields: tuple[str, ...]
    column_field: str | None
    #: Rows and columns the query names; fields it leaves open add the values seen.
    rows: tuple[tuple[str, ...], ...]
    columns: tuple[str, ...]
    text: str

    @property
    def event(self) -> str:
        return self.request.event

    def place(self, fields: Mapping[str, str]) -> tuple[tuple[str, ...], str] | None:
        """The (row, column) of a key's fields, or None when the filter does not match them."""
        if not self.request.matches(fields):
            return None
        row = tuple(fields.get(name, "") for name in self.row_fields)
        column = fields.get(self.column_field, "") if self.column_field else ""
        return row, column

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.event, "text": self.text, "row_fields": list(self.row_fields),
                "column_field": self.column_field, "filter": self.request.as_dict()}


def parse_board_query(pairs: Iterable[tuple[str, str]], schemas: SchemaRegistry,
                      today: dt.date | None = None) -> BoardQuery:
    """The board of a query string's ``(name, value)`` pairs; a bad one raises ValidationError naming it.

    A field given several times, or as ``a,b,c``, takes every value; ``a/b/c`` and ``a/to/b/by/n`` work as in
    requests. ``event`` (default mars) names the event; ``days`` (default 3) how many days up to today are
    rows when the query gives no date.
    """
    raw: dict[str, list[str]] = {}
    for name, value in pairs:
        raw.setdefault(name, []).extend(part.strip() for part in value.split(",") if part.strip())
    event = _single(raw, "event") or DEFAULT_EVENT
    try:
        schema = schemas[event]
    except (KeyError, ValidationError):
        raise ValidationError("event", event, "expected one of " + ", ".join(schemas.names())) from None
    if DATE_FIELD not in schema.key_fields:
        raise ValidationError("event", event, f"the board needs an event whose keys have a {DATE_FIELD!r} field")
    days = _days(_single(raw, "days"))
    fields = {name: values for name, values in raw.items() if name not in BOARD_PARAMETERS}
    for name, values in fields.items():
        if not values:
            raise ValidationError(name, "", "expected a value (several as a,b,c or a/b/c)")
    if DATE_FIELD not in fields:
        now = today or dt.datetime.now(dt.UTC).date()
        fields[DATE_FIELD] = [(now - dt.timedelta(days=back)).strftime("%Y%m%d") for back in range(days)]
    request = Request.build_filter(schema, {name: _one_or_list(values) for name, values in fields.items()})
    request.status_keys()  # the fields that choose where keys are stored must be given
    return _axes(schema, request, fields)


def _single(raw: Mapping[str, list[str]], name: str) -> str | None:
    values = raw.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise ValidationError(name, ",".join(values), "expected one value")
    return values[0]


def _days(text: str | None) -> int:
    if text is None:
        return DEFAULT_DAYS
    if not text.isdigit() or not 1 <= int(text) <= MAX_DAYS:
        raise ValidationError("days", text, f"expected a whole number of days from 1 to {MAX_DAYS}")
    return int(text)


def _one_or_list(values: list[str]) -> Any:
    return values[0] if len(values) == 1 else values


def _axes(schema: EventSchema, request: Request, given: Mapping[str, list[str]]) -> BoardQuery:
    times = request.values.get(TIME_FIELD)
    row_fields: tuple[str, ...] = (DATE_FIELD,)
    if TIME_FIELD in schema.key_fields and (times is None or len(times) > 1):
        row_fields = (DATE_FIELD, TIME_FIELD)
    column_field = STEP_FIELD if STEP_FIELD in schema.key_fields else None
    dates = sorted(request.values[DATE_FIELD], reverse=True)  # newest first: what operators look at
    if len(row_fields) == 2 and times is None:  # every cycle of the day the field knows, else those seen
        known = getattr(schema.field(TIME_FIELD), "values", None)
        times = tuple(schema.field(TIME_FIELD).canonical(v) for v in known) if known else ()
    rows = tuple((d, t) for d in dates for t in times or ()) if len(row_fields) == 2 else tuple((d,) for d in dates)
    columns = tuple(sorted(request.values.get(column_field, ()), key=_number)) if column_field else ("",)
    if len(rows) * max(len(columns), 1) > MAX_CELLS:
        raise ValidationError("step", len(rows) * len(columns), f"the board shows at most {MAX_CELLS} cells "
                              "(dates x times x steps); ask for fewer")
    text = "&".join(f"{name}={'/'.join(values)}" for name, values in
                    [("event", [schema.name]), *((n, list(v)) for n, v in request.values.items())])
    del given  # the canonical values are what the board shows
    return BoardQuery(request, row_fields, column_field, rows, columns, text)


def _number(text: str) -> tuple[float, str]:
    try:
        return float(text), text
    except ValueError:
        return float("inf"), text


# -- the cells -----------------------------------------------------------------------------------
def cell_id(row: Sequence[str], column: str) -> str:
    """The id of a cell's element: ``c-<date>[_<time>]-<step>``."""
    return "c-" + "_".join(row) + ("-" + column if column else "")


def utc_text(moment: dt.datetime | None) -> str | None:
    return moment.strftime(TIME_FORMAT) if moment is not None else None


@dataclass
class Arrival:
    """One key that arrived: where and when (None: posted before anyone looked, time unknown)."""

    key: str
    fields: dict[str, str]
    location: str | None
    at: str | None


@dataclass
class BoardModel:
    """The state of one board: arrivals, expectation states and waiters, and the cells they make."""

    query: BoardQuery
    arrivals: dict[str, Arrival] = field(default_factory=dict)
    expected: dict[str, dict[str, Any]] = field(default_factory=dict)
    waiters: dict[str, Waiter] = field(default_factory=dict)
    extra_rows: set[tuple[str, ...]] = field(default_factory=set)
    extra_columns: set[str] = field(default_factory=set)
    #: The keys of the arrivals and expectations of each cell (a cell's look-up stays small on a big grid).
    _arrived_in: dict[str, set[str]] = field(default_factory=dict)
    _expected_in: dict[str, set[str]] = field(default_factory=dict)

    # -- what it is fed ------------------------------------------------------------------------
    def arrived(self, notification: Notification, at: str | None) -> set[str]:
        """A key was posted at ``at`` (UTC text); returns the ids of the cells that changed."""
        place = self.query.place(notification.request)
        if place is None:
            return set()
        known = self.arrivals.get(notification.key)
        when = at if known is None or known.at is None else known.at  # the first post is when it arrived
        self.arrivals[notification.key] = Arrival(notification.key, dict(notification.request),
                                                  notification.location, when)
        cell = self._see(*place)
        self._arrived_in.setdefault(cell, set()).add(notification.key)
        return {cell}

    def set_expected(self, items: Iterable[Mapping[str, Any]]) -> set[str]:
        """The expectation checker's states (``Expected.to_dict()``); returns the cells that changed."""
        changed: set[str] = set()
        seen: dict[str, dict[str, Any]] = {}
        index: dict[str, set[str]] = {}
        for item in items:
            place = self.query.place(item["request"])
            if place is None:
                continue
            seen[item["key"]] = dict(item)
            cell = self._see(*place)
            index.setdefault(cell, set()).add(item["key"])
            if self.expected.get(item["key"]) != item:
                changed.add(cell)
        for key in set(self.expected) - set(seen):
            place = self.query.place(self.expected[key]["request"])
            if place is not None:
                changed.add(cell_id(*place))
        self.expected, self._expected_in = seen, index
        return changed

    def waiter_changed(self, change: WaiterChange) -> set[str]:
        """A waiter came, made progress or left; returns the cells it covers (before or after)."""
        before = self.waiters.pop(change.waiter.id, None)
        if change.kind != "removed" and self.overlaps(change.waiter):
            self.waiters[change.waiter.id] = change.waiter
            self._see_waiter(change.waiter)
        return {cell for w in (before, self.waiters.get(change.waiter.id)) if w is not None
                for cell in self.covered(w)}

    # -- what it says --------------------------------------------------------------------------
    def rows(self) -> list[list[str]]:
        rows = set(self.query.rows) | self.extra_rows
        return [list(r) for r in sorted(rows, key=lambda r: (r[0], *r[1:]), reverse=True)]

    def columns(self) -> list[str]:
        return sorted(set(self.query.columns) | self.extra_columns, key=_number)

    def cells(self) -> dict[str, dict[str, Any]]:
        """Every cell of the grid, by id."""
        return {cell_id(row, column): self.cell(tuple(row), column) for row in self.rows() for column in
                self.columns()}

    def cell(self, row: tuple[str, ...], column: str) -> dict[str, Any]:
        """One cell: its state and what the page shows of it (see the module's docstring)."""
        here = cell_id(row, column)
        arrivals = [self.arrivals[k] for k in sorted(self._arrived_in.get(here, ()))]
        expected = [self.expected[k] for k in sorted(self._expected_in.get(here, ()))]
        waiting = [w for w in self.waiters.values() if self._covers(w, row, column)]
        arrived_keys = {a.key for a in arrivals}
        missing = [e for e in expected if e["key"] not in arrived_keys and e["state"] not in ("arrived",
                                                                                              "arrived-late")]
        late = [e for e in missing if e["state"] == "late"]
        cell: dict[str, Any] = {"id": here, "row": list(row), "column": column,
                                "arrived": len(arrivals), "expected": len(expected)}
        if late:
            first = min(late, key=lambda e: e["expected_by"])
            cell.update(state="late", expected_by=first["expected_by"], late_at=first["late_at"])
        elif arrivals and not missing:
            last = max(arrivals, key=lambda a: a.at or "")
            cell.update(state=self._arrival_state(last, expected), arrived_at=last.at, location=last.location,
                        key=last.key)
            if cell["state"] == "arrived-late":
                item = next(e for e in expected if e["key"] == last.key)
                cell["expected_by"] = item["expected_by"]
        elif waiting:
            cell["state"] = "waited"
        elif missing:
            cell["state"] = "expected"
        else:
            cell["state"] = "arrived" if arrivals else "none"
        if missing and "expected_by" not in cell:
            cell["expected_by"] = min(e["expected_by"] for e in missing)
        if arrivals and "arrived_at" not in cell:
            last = max(arrivals, key=lambda a: a.at or "")
            cell.update(arrived_at=last.at, location=last.location)
        if cell["state"] not in ("arrived", "arrived-late"):
            cell["waiters"] = [waiter_summary(w) for w in waiting]
        return cell

    def waiter_list(self) -> list[dict[str, Any]]:
        """The waiters whose requests overlap the board's filter, oldest first."""
        return [waiter_summary(w) for w in sorted(self.waiters.values(), key=lambda w: (w.since, w.id))]

    def lateness(self) -> list[dict[str, Any]]:
        """Keys of the grid that are late or arrived late, the latest first."""
        items = [e for e in self.expected.values() if e["state"] in ("late", "arrived-late")
                 or (e["state"] == "expected" and e["key"] in self.arrivals and self._arrived_late(e))]
        items.sort(key=lambda e: (e["late_at"], e["key"]), reverse=True)
        shown = []
        for item in items[:LATENESS_SHOWN]:
            arrival = self.arrivals.get(item["key"])
            arrived_at = item.get("arrived_at") or (arrival.at if arrival else None)
            shown.append({"name": item["name"], "key": item["key"], "request": item["request"],
                          "state": "arrived-late" if arrived_at else "late", "expected_by": item["expected_by"],
                          "late_at": item["late_at"], "arrived_at": arrived_at})
        return shown

    def snapshot(self) -> dict[str, Any]:
        """Everything the page needs to draw the board."""
        return {"query": self.query.to_dict(), "rows": self.rows(), "columns": self.columns(),
                "cells": list(self.cells().values()), "waiters": self.waiter_list(), "lateness": self.lateness()}

    # -- waiters and cells -----------------------------------------------------------------------
    def overlaps(self, waiter: Waiter) -> bool:
        """True when the waiter may wait for a key of the board: same event, and no field of the filter
        that both constrain has no value in common."""
        if waiter.event != self.query.event:
            return False
        for name, allowed in self.query.request.values.items():
            wanted = _values(waiter.request.get(name))
            if wanted is not None and not set(wanted) & set(allowed):
                return False
        return True

    def covered(self, waiter: Waiter) -> set[str]:
        return {cell_id(row, column) for row in map(tuple, self.rows()) for column in self.columns()
                if self._covers(waiter, row, column)}

    def _covers(self, waiter: Waiter, row: tuple[str, ...], column: str) -> bool:
        if waiter.id not in self.waiters:
            return False
        axes = dict(zip(self.query.row_fields, row))
        if self.query.column_field:
            axes[self.query.column_field] = column
        for name, value in axes.items():
            wanted = _values(waiter.request.get(name))
            if wanted is not None and value not in wanted:
                return False
        return True

    def _see(self, row: tuple[str, ...], column: str) -> str:
        """Note a row or column the query left open."""
        if row not in self.query.rows:
            self.extra_rows.add(row)
        if column not in self.query.columns:
            self.extra_columns.add(column)
        return cell_id(row, column)

    def _see_waiter(self, waiter: Waiter) -> None:
        """Times and steps a waiter names, where the query leaves them open, become rows and columns."""
        column_field = self.query.column_field
        if column_field and column_field not in self.query.request.values:
            self.extra_columns.update(_values(waiter.request.get(column_field)) or ())
        if len(self.query.row_fields) == 2 and TIME_FIELD not in self.query.request.values:
            dates = _values(waiter.request.get(DATE_FIELD)) or ()
            times = _values(waiter.request.get(TIME_FIELD)) or ()
            self.extra_rows.update((d, t) for d in dates for t in times
                                   if d in self.query.request.values[DATE_FIELD])

    def _arrival_state(self, arrival: Arrival, expected: list[dict[str, Any]]) -> str:
        item = next((e for e in expected if e["key"] == arrival.key), None)
        if item is None:
            return "arrived"
        if item["state"] in ("arrived", "arrived-late"):
            return str(item["state"])
        return "arrived-late" if item["state"] == "late" or self._arrived_late(item) else "arrived"

    def _arrived_late(self, item: Mapping[str, Any]) -> bool:
        arrival = self.arrivals.get(item["key"])
        return bool(arrival and arrival.at and arrival.at > item["late_at"])


def _values(value: Any) -> list[str] | None:
    """A waiter's request value as a list (None: the field is open)."""
    if value is None:
        return None
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def waiter_summary(waiter: Waiter) -> dict[str, Any]:
    """What the page shows of a waiter: who (a DAG and task, an ecFlow path, a command), where, since when."""
    who = dict(waiter.who)
    kind = who.pop("kind", "")
    if "dag_id" in who:
        label = "/".join(who[k] for k in ("dag_id", "task_id") if k in who)
    elif "ecflow_path" in who:
        label = who["ecflow_path"]
    else:
        label = " ".join(f"{k}={v}" for k, v in who.items()) or kind or "waiter"
    return {"id": waiter.id, "kind": kind, "label": label, "who": waiter.who, "host": waiter.host,
            "pid": waiter.pid, "where": f"{waiter.host}:{waiter.pid}", "since": waiter.since,
            "progress": waiter.progress_text, "request": waiter.request_text, "mode": waiter.mode,
            "deadline": waiter.deadline, "updated": waiter.updated}


# -- the store's health -------------------------------------------------------------------------
#: Outage and recovery entries the board keeps (the newest first).
HEALTH_EVENTS_KEPT = 10


@dataclass
class StoreHealth:
    """Whether the store the board reads answers, since when not, and the recent outages and recoveries.

    Fed by the server with what its shared watch says (``update``); ``to_dict`` is what the stream's
    ``store`` event, the snapshot and ``/board/state`` carry.
    """

    since: dt.datetime | None = None
    error: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def reachable(self) -> bool:
        return self.since is None

    def update(self, error: str | None, now: dt.datetime) -> bool:
        """The watch's failure now (None: it works); True when reachability changed."""
        if error is not None and self.since is None:
            self.since, self.error = now, error
            self._keep({"kind": "unreachable", "at": utc_text(now), "error": error})
            return True
        if error is None and self.since is not None:
            seconds = round((now - self.since).total_seconds())
            self._keep({"kind": "reachable", "at": utc_text(now), "after_s": seconds,
                        "since": utc_text(self.since)})
            self.since, self.error = None, None
            return True
        return False

    def _keep(self, entry: dict[str, Any]) -> None:
        self.events = [entry, *self.events][:HEALTH_EVENTS_KEPT]

    def to_dict(self, now: dt.datetime) -> dict[str, Any]:
        """Reachability with a sentence for people (``message``) and the recent outages."""
        if self.since is not None:
            seconds = max(0, round((now - self.since).total_seconds()))
            message = (f"etcd unreachable since {self.since.strftime('%H:%M:%S')} UTC ({seconds} s) — waits ride "
                       "it out until their timeout; the board shows the last known state")
            return {"reachable": False, "since": utc_text(self.since), "down_for_s": seconds,
                    "error": self.error, "message": message, "events": self.events}
        last = self.events[0] if self.events else None
        message = f"etcd reachable again after {last['after_s']} s" if last and last["kind"] == "reachable" else ""
        return {"reachable": True, "since": None, "down_for_s": None, "error": None, "message": message,
                "events": self.events}


__all__ = ["Arrival", "BoardModel", "BoardQuery", "DEFAULT_DAYS", "StoreHealth", "cell_id", "parse_board_query",
           "utc_text", "waiter_summary"]
