"""Replay windows found by binary search over a status chain's revisions: where the window lies, days
skipped by ``last_prev_day_rev``, compacted history, several chains, and how many reads it takes.

The chains are written as pyaviso writes them (one transaction: data key + status record with
``date_time``, ``prev_rev`` and ``last_prev_day_rev``), with chosen times, on an etcd of this module's
own (the compaction tests compact its history).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from etcd_helpers import running_etcd

from aviso_workflows import Store
from aviso_workflows.etcd import put_op
from aviso_workflows.status_chain import STATUS_TIME_FORMAT, replay, revision_window

T0 = dt.datetime(2020, 3, 1, 6, 0)
_destinations = itertools.count()


@pytest.fixture(scope="module")
def private_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An etcd of this module's own: compacting its history touches no other test."""
    with running_etcd(tmp_path_factory.mktemp("etcd-replay")) as info:
        yield info.client_url


@pytest.fixture
def chain_store(private_etcd: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.setenv("AVISO_WORKFLOWS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("AVISO_WORKFLOWS_CONFIG", str(tmp_path / "no-config.yaml"))
    return Store([private_etcd])


@dataclass
class Chain:
    """A status chain written with chosen times: its status key and (revision, time, step) of each post."""

    destination: str
    posts: list[tuple[int, dt.datetime, int]]

    @property
    def status_key(self) -> str:
        return f"/ec/diss/{self.destination}/"

    def expected(self, start: dt.datetime, end: dt.datetime | None) -> tuple[int, int] | None:
        inside = [r for r, when, _ in self.posts if when >= start and (end is None or when < end)]
        return (inside[0], inside[-1]) if inside else None

    def steps(self, start: dt.datetime, end: dt.datetime | None) -> list[str]:
        return [str(s) for _, when, s in self.posts if when >= start and (end is None or when < end)]


def data_key(destination: str, step: int) -> str:
    return (f"/ec/diss/{destination}/date=20200301,target=E1,class=od,expver=0001,domain=g,time=00,"
            f"stream=oper,step={step}")


def write_chains(store: Store, times: list[dt.datetime], count: int = 1) -> list[Chain]:
    """``count`` chains posted in turns, each at ``times`` (so revisions of one chain are not contiguous)."""
    chains = [Chain(f"R{next(_destinations)}", []) for _ in range(count)]
    previous: dict[str, tuple[int, dict[str, Any]]] = {}
    for step, when in enumerate(times):
        for chain in chains:
            record = status_record(previous.get(chain.destination), when)
            answer = store.gateway.txn([], [put_op(data_key(chain.destination, step), f"loc{step}"),
                                            put_op(chain.status_key, json.dumps(record))])
            revision = int(answer["header"]["revision"])
            previous[chain.destination] = (revision, record)
            chain.posts.append((revision, when, step))
    return chains


def status_record(previous: tuple[int, dict[str, Any]] | None, when: dt.datetime) -> dict[str, Any]:
    """pyaviso's status record: ``last_prev_day_rev`` from the first status of a day on, carried that day."""
    record: dict[str, Any] = {"date_time": when.strftime(STATUS_TIME_FORMAT), "engine": "ETCD_REST"}
    if previous is None:
        return record
    revision, old = previous
    record["prev_rev"] = revision
    if dt.datetime.strptime(old["date_time"], STATUS_TIME_FORMAT).date() != when.date():
        record["last_prev_day_rev"] = revision
    elif "last_prev_day_rev" in old:
        record["last_prev_day_rev"] = old["last_prev_day_rev"]
    return record


def count_reads(store: Store, monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """Counts the reads the store sends from now on (each still goes to etcd): its gets and ranges, the methods
    both transports have (over gRPC a get does not go through the gateway-shaped ``range``)."""
    calls = [0]

    def counting(name: str) -> None:
        real = getattr(store.gateway, name)

        def counted(*args: Any, **options: Any) -> Any:
            calls[0] += 1
            return real(*args, **options)

        monkeypatch.setattr(store.gateway, name, counted)

    counting("get")
    counting("range_all")
    return lambda: calls[0]


def minutes(n: float) -> dt.timedelta:
    return dt.timedelta(minutes=n)


EVERY_FIVE_MINUTES = [T0 + minutes(5 * i) for i in range(200)]


@pytest.mark.parametrize(("where", "start", "end"), [
    ("before the first post", T0 - minutes(60), T0 + minutes(12)),
    ("at the start, exactly on a post", T0, T0 + minutes(10)),
    ("in the middle, between posts", T0 + minutes(333), T0 + minutes(401)),
    ("in the middle, end exactly on a post", T0 + minutes(300), T0 + minutes(400)),
    ("at the end, open", T0 + minutes(980), None),
    ("at the end, past the last post", T0 + minutes(990), T0 + minutes(2000)),
    ("everything", T0 - minutes(1), None),
])
def test_window_anywhere_in_history(chain_store: Store, monkeypatch: pytest.MonkeyPatch, where: str,
                                    start: dt.datetime, end: dt.datetime | None) -> None:
    chain, _ = write_chains(chain_store, EVERY_FIVE_MINUTES, count=2)
    reads = count_reads(chain_store, monkeypatch)
    assert revision_window(chain_store, chain.status_key, start, end) == chain.expected(start, end), where
    # two bisections over the store's revisions, and the newest status
    assert 0 < reads() <= 2 * math.ceil(math.log2(chain.posts[-1][0])) + 3, where


@pytest.mark.parametrize(("start", "end"), [
    (T0 - minutes(1), T0),  # ends where the first post is
    (T0 + minutes(1), T0 + minutes(4)),  # between two posts
    (T0 + minutes(2000), None),  # after the last post
])
def test_empty_windows(chain_store: Store, start: dt.datetime, end: dt.datetime | None) -> None:
    chain, = write_chains(chain_store, EVERY_FIVE_MINUTES[:40])
    assert revision_window(chain_store, chain.status_key, start, end) is None


def test_replay_gives_the_window_posts_in_write_order(chain_store: Store) -> None:
    chains = write_chains(chain_store, EVERY_FIVE_MINUTES[:60], count=3)
    start, end = T0 + minutes(52), T0 + minutes(120)
    request = chain_store.request({"event": "dissemination", "destination": [c.destination for c in chains],
                                   "target": "E1", "class": "od", "expver": 1, "domain": "g", "date": "20200301",
                                   "time": 0, "stream": "oper"})
    found = replay(chain_store, [request], start, end)
    expected = [(c.destination, s) for s in chains[0].steps(start, end) for c in chains]
    assert [(n.request["destination"], n.request["step"]) for n in found] == expected
    assert [n.location for n in found[:3]] == ["loc11"] * 3


# days 1, 2 and 5 of a month, a post every hour from 06 to 18: the chain jumps days with last_prev_day_rev
DAYS = [dt.datetime(2020, 3, day, hour) for day in (1, 2, 5) for hour in range(6, 19)]


@pytest.mark.parametrize(("start", "end"), [
    (dt.datetime(2020, 3, 1, 17, 30), dt.datetime(2020, 3, 2, 7, 30)),  # across a night
    (dt.datetime(2020, 3, 3), dt.datetime(2020, 3, 4)),  # a day without posts
    (dt.datetime(2020, 3, 2, 12), dt.datetime(2020, 3, 5, 8)),  # across the days without posts
    (dt.datetime(2020, 3, 5), None),  # the last day
    (dt.datetime(2020, 3, 1), dt.datetime(2020, 3, 2)),  # the first day
])
def test_chain_with_day_jumps(chain_store: Store, start: dt.datetime, end: dt.datetime | None) -> None:
    chain, = write_chains(chain_store, DAYS)
    assert revision_window(chain_store, chain.status_key, start, end) == chain.expected(start, end)


def test_compacted_history_is_said_once_and_the_rest_replayed(chain_store: Store,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    chain, = write_chains(chain_store, EVERY_FIVE_MINUTES[:40])
    boundary = chain.posts[20][0] + 1  # the 21st status's own revision is compacted, the 22nd's is not
    chain_store.gateway.compact(boundary)
    with caplog.at_level(logging.WARNING, logger="aviso_workflows.status_chain"):
        window = revision_window(chain_store, chain.status_key, T0, T0 + minutes(150))
    assert window == (chain.posts[21][0], chain.posts[29][0]), "from the first status whose posts can be read"
    warnings = [r for r in caplog.records if "compacted" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert "compacted" in warnings[0].getMessage()


def test_window_entirely_compacted_is_empty_and_said(chain_store: Store, caplog: pytest.LogCaptureFixture) -> None:
    chain, = write_chains(chain_store, EVERY_FIVE_MINUTES[:40])
    chain_store.gateway.compact(chain.posts[30][0])
    with caplog.at_level(logging.WARNING, logger="aviso_workflows.status_chain"):
        assert revision_window(chain_store, chain.status_key, T0, T0 + minutes(100)) is None
    assert len([r for r in caplog.records if "compacted" in r.getMessage()]) == 1


def test_window_after_a_compaction_is_whole_and_silent(chain_store: Store, caplog: pytest.LogCaptureFixture) -> None:
    chain, = write_chains(chain_store, EVERY_FIVE_MINUTES[:40])
    chain_store.gateway.compact(chain.posts[10][0])
    start, end = T0 + minutes(100), T0 + minutes(150)
    with caplog.at_level(logging.WARNING, logger="aviso_workflows.status_chain"):
        assert revision_window(chain_store, chain.status_key, start, end) == chain.expected(start, end)
    assert not [r for r in caplog.records if "compacted" in r.getMessage()]
    assert [n.request["step"] for n in replay(chain_store, [chain_request(chain_store, chain)], start, end)] == \
        chain.steps(start, end)


def chain_request(store: Store, chain: Chain) -> Any:
    return store.request({"event": "dissemination", "destination": chain.destination, "target": "E1", "class": "od",
                          "expver": 1, "domain": "g", "date": "20200301", "time": 0, "stream": "oper"})


def test_a_status_that_is_not_a_record_counts_as_before_the_window(chain_store: Store) -> None:
    """Another writer's value on the status key (not JSON) cannot stop the search past it."""
    first, = write_chains(chain_store, EVERY_FIVE_MINUTES[:10])
    chain_store.gateway.txn([], [put_op(first.status_key, "not a status")])
    later = Chain(first.destination, [])
    previous = None
    for step, when in enumerate(EVERY_FIVE_MINUTES[20:30], start=100):
        record = status_record(previous, when)
        answer = chain_store.gateway.txn([], [put_op(data_key(later.destination, step), "x"),
                                              put_op(later.status_key, json.dumps(record))])
        previous = (int(answer["header"]["revision"]), record)
        later.posts.append((previous[0], when, step))
    start = EVERY_FIVE_MINUTES[22]
    assert revision_window(chain_store, first.status_key, start, None) == later.expected(start, None)
