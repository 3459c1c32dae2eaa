"""Replays read each chain's window at its last status (ranged reads), with the meaning of a watch of the window:
every post of it, a key posted twice given twice in write order, a key deleted after its post still given.

Chains are written as pyaviso writes them (one transaction: data key + status record with chosen times), on
the session's etcd over both of its transports; each test posts to destinations of its own.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aviso_workflows import Store, status_chain
from aviso_workflows.etcd import put_op
from aviso_workflows.listen import listen
from aviso_workflows.notification import Notification
from aviso_workflows.position import Position
from aviso_workflows.request import Request
from aviso_workflows.status_chain import STATUS_TIME_FORMAT, replay, revision_windows

T0 = dt.datetime(2020, 4, 1, 6, 0)
_destinations = itertools.count()


@pytest.fixture(scope="module", params=["gateway", "grpc"])
def chain_store(request: pytest.FixtureRequest, etcd_url: str,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """A store on the session's etcd over one transport (module scope: the property test shares it)."""
    state = tmp_path_factory.mktemp("replay-windows")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AVISO_WORKFLOWS_STATE_DIR", str(state / "state"))
        patch.setenv("AVISO_WORKFLOWS_CONFIG", str(state / "no-config.yaml"))
        yield Store([etcd_url], transport=request.param)


@dataclass
class Chain:
    """One destination's chain: what was posted (time, step, location), in write order."""

    store: Store
    destination: str = field(default_factory=lambda: f"W{next(_destinations)}")
    posts: list[tuple[dt.datetime, int, str]] = field(default_factory=list)
    last_status: tuple[int, dict[str, Any]] | None = None

    @property
    def status_key(self) -> str:
        return f"/ec/diss/{self.destination}/"

    def key(self, step: int) -> str:
        return (f"/ec/diss/{self.destination}/date=20200401,target=E1,class=od,expver=0001,domain=g,time=00,"
                f"stream=oper,step={step}")

    def post(self, step: int) -> None:
        """A notify: the data key and the next status in one transaction, a minute after the previous post."""
        when = T0 + dt.timedelta(minutes=len(self.posts))
        location = f"loc{len(self.posts)}"
        record: dict[str, Any] = {"date_time": when.strftime(STATUS_TIME_FORMAT), "engine": "ETCD_REST"}
        if self.last_status is not None:
            record["prev_rev"] = self.last_status[0]
        answer = self.store.gateway.txn([], [put_op(self.key(step), location),
                                             put_op(self.status_key, json.dumps(record))])
        self.last_status = (int(answer["header"]["revision"]), record)
        self.posts.append((when, step, location))

    def delete(self, step: int) -> None:
        """The data key gone (as when its lease expires): no status is written."""
        self.store.gateway.delete(self.key(step))

    def request(self) -> Request:
        return self.store.request({"event": "dissemination", "destination": self.destination, "target": "E1",
                                   "class": "od", "expver": 1, "domain": "g", "date": "20200401", "time": 0,
                                   "stream": "oper"})

    def expected(self, start: int, end: int) -> list[tuple[str, str | None]]:
        """(step, location) of the posts from the ``start``-th to before the ``end``-th, as posted."""
        return [(str(step), location) for _, step, location in self.posts[start:end]]

    def window(self, start: int, end: int) -> tuple[dt.datetime, dt.datetime]:
        """The times of the posts from the ``start``-th to before the ``end``-th."""
        return T0 + dt.timedelta(minutes=start), T0 + dt.timedelta(minutes=end)


def later_posts(store: Store, count: int = 30) -> None:
    """Posts of another chain after a window, so that window lies far from the head (read by ranges)."""
    chain = Chain(store)
    for step in range(count):
        chain.post(step)


def seen(found: list[Notification]) -> list[tuple[str, str | None]]:
    return [(n.request["step"], n.location) for n in found]


@pytest.fixture
def watches(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The status keys of each chain the replay had to watch (the ranged read could not show every post)."""
    calls: list[list[str]] = []
    real = status_chain._watched_posts

    def recorded(store: Store, requests: list[Request], windows: dict[str, tuple[int, int]]) -> list[Notification]:
        calls.append(sorted(windows))
        return real(store, requests, windows)

    monkeypatch.setattr(status_chain, "_watched_posts", recorded)
    return calls


def test_a_key_posted_twice_in_the_window_is_given_twice_in_order(chain_store: Store,
                                                                  watches: list[list[str]]) -> None:
    chain = Chain(chain_store)
    for step in (1, 1, 2, 1, 3, 2, 1):
        chain.post(step)
    later_posts(chain_store)
    found = replay(chain_store, [chain.request()], *chain.window(1, 7))
    assert seen(found) == chain.expected(1, 7)
    assert [n.revision for n in found] == sorted(n.revision for n in found)
    assert watches == [], "read with ranged reads: far from the head, nothing deleted"


def test_an_early_window_among_later_posts(chain_store: Store, watches: list[list[str]]) -> None:
    chains = [Chain(chain_store), Chain(chain_store)]
    for step in range(40):
        for chain in chains:
            chain.post(step % 7)
    requests = [chain.request() for chain in chains]
    found = replay(chain_store, requests, *chains[0].window(3, 12))
    assert [(n.request["destination"], n.request["step"], n.location) for n in found] == \
        [(c.destination, step, location) for pair in zip(*(c.expected(3, 12) for c in chains), strict=True)
         for c, (step, location) in zip(chains, pair, strict=True)]
    assert watches == []


def test_a_key_deleted_after_its_post_in_the_window_is_still_given(chain_store: Store,
                                                                   watches: list[list[str]]) -> None:
    chain = Chain(chain_store)
    for step in (1, 2, 3):
        chain.post(step)
    chain.delete(2)
    chain.post(4)
    later_posts(chain_store)
    assert seen(replay(chain_store, [chain.request()], *chain.window(0, 4))) == chain.expected(0, 4)
    assert watches == [[chain.status_key]], "the snapshot lacks the deleted key: that chain is watched"


def test_a_window_near_the_head_is_watched(chain_store: Store, watches: list[list[str]]) -> None:
    chain = Chain(chain_store)
    for step in range(12):
        chain.post(step % 3)
    assert seen(replay(chain_store, [chain.request()], *chain.window(4, 12))) == chain.expected(4, 12)
    assert watches == [[chain.status_key]], "a watch from the window's start reads little more than the window"


def watched(store: Store, requests: list[Request], start: dt.datetime, end: dt.datetime) -> list[Notification]:
    """The window's posts from a watch of its revisions (what replays gave before they read ranges)."""
    windows = revision_windows(store, sorted({k for r in requests for k in r.status_keys()}), start, end)
    if not windows:
        return []
    first, last = min(w[0] for w in windows.values()), max(w[1] for w in windows.values())
    return [n for n in listen(store, requests, after=Position(first - 1), until_revision=last)
            if status_chain._inside(windows, n)]


#: A history: each item posts a step (True, step) or deletes its key (False, step); steps 0-3 repeat often.
HISTORIES = st.lists(st.tuples(st.booleans(), st.integers(0, 3)), min_size=1, max_size=12)


@settings(max_examples=12, deadline=None)
@given(history=HISTORIES, edges=st.tuples(st.integers(0, 12), st.integers(0, 12)))
def test_ranged_replay_equals_the_watched_one(chain_store: Store, history: list[tuple[bool, int]],
                                              edges: tuple[int, int]) -> None:
    chain = Chain(chain_store)
    for is_post, step in history:
        if is_post:
            chain.post(step)
        else:
            chain.delete(step)
    start, end = sorted(edges)
    window = chain.window(start, end)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(status_chain, "WATCH_SPAN", 0)  # every window is tried with ranged reads first
        found = seen(replay(chain_store, [chain.request()], *window))
    assert found == chain.expected(start, end)
    assert found == seen(watched(chain_store, [chain.request()], *window))

