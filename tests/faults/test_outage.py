"""etcd goes away and comes back: waits and listeners get everything, and say so in one line per outage."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from cluster import (
    Cluster,
    Listener,
    Producer,
    Waiters,
    diss,
    shared_watch,
    steps_of,
    store_on,
    until,
    watch_records,
)
from threads import joined, run_in_thread

from aviso_workflows import Store, StoreUnavailable, server
from aviso_workflows.listen import Position, PrefixWatch

OUTAGE_SECONDS = 10.0
BOUND = 120.0  # seconds: generous for two loaded cores


def _clients(store: Store, date: str, destination: str, steps: range,
             cursor_dir: Path) -> tuple[PrefixWatch, Listener, Waiters]:
    """A listener on every step of the destination, and one wait per step (half in threads, half async)."""
    everything = store.request(diss(date, destination))
    listener = Listener(store, everything, cursor_dir, start=Position(store.current_revision()))
    waiters = Waiters(store, [store.request(diss(date, destination, step)) for step in steps],
                      in_threads=len(steps) // 2, timeout=BOUND)
    return shared_watch(store, everything, subscribers=len(steps), seconds=BOUND), listener, waiters


def _assert_all_released(waiters: Waiters, steps: range) -> None:
    outcomes = waiters.joined(BOUND)
    assert {i: steps_of(o) if isinstance(o, list) else repr(o) for i, o in outcomes.items()} == {
        i: [step] for i, step in enumerate(steps)}


def _assert_listened_once(listener: Listener, store: Store, date: str, destination: str, expected: list[int]) -> None:
    """Post one more notification; once it arrived, everything before it did: each once, in order."""
    last = max(expected) + 1
    store.notify(diss(date, destination, last))
    until("the listener reached the last notification", lambda: listener.has_seen(last), BOUND)
    listener.close()
    assert steps_of(listener.seen) == [*expected, last]


def _assert_one_line_per_outage(caplog: pytest.LogCaptureFixture, prefix: str, outages: int) -> None:
    warnings = watch_records(caplog.records, prefix, logging.WARNING)
    assert len(warnings) == outages, warnings
    resumed = [m for m in watch_records(caplog.records, prefix, logging.INFO) if " resumed at revision " in m]
    assert len(resumed) == outages, resumed
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []  # no stack traces


@pytest.mark.slow
def test_a_single_etcd_stopped_for_ten_seconds(tmp_path: Path, unique_date: str,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="aviso_workflows")
    data_dir = tmp_path / "etcd"
    info = server.start(data_dir, port=server.free_port())
    try:
        store = store_on([info.client_url], tmp_path)
        destination = f"O{unique_date}"
        before, after = range(0, 5), range(5, 45)
        watch, listener, waiters = _clients(store, unique_date, destination, after, tmp_path / "cursors")
        try:
            Producer(store, unique_date, destination, before).joined(BOUND)
            until("the listener saw the first notifications", lambda: listener.has_seen(before[-1]), BOUND)

            assert server.stop(data_dir)  # by the pid it was started with
            time.sleep(OUTAGE_SECONDS)  # the outage itself, not a measurement
            server.start(data_dir, port=info.port)
            Producer(store, unique_date, destination, after).joined(BOUND)  # right after etcd is back

            _assert_all_released(waiters, after)
            _assert_listened_once(listener, store, unique_date, destination, [*before, *after])
        finally:
            listener.close()
        _assert_one_line_per_outage(caplog, watch.prefix, outages=1)
    finally:
        server.stop(data_dir)


@pytest.mark.slow
def test_the_watched_member_stops_twice_and_the_others_carry_on(cluster: Cluster, tmp_path: Path, unique_date: str,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="aviso_workflows")
    store = store_on(cluster.endpoints, tmp_path)
    destination = f"M{unique_date}"
    steps = range(0, 40)
    watch, listener, waiters = _clients(store, unique_date, destination, steps, tmp_path / "cursors")
    try:
        for outage in range(2):  # the second outage is reported too: the first one's state was reset
            watched = cluster.member_at(watch.gateway.endpoint)
            cluster.stop(watched)
            others = store_on([m.client_url for m in cluster.others(watched)], tmp_path)
            posted = steps[outage * 20:(outage + 1) * 20]
            Producer(others, unique_date, destination, posted).joined(BOUND)
            until("the listener saw what was posted during the outage",
                  lambda last=posted[-1]: listener.has_seen(last), BOUND)
            assert watch.gateway.endpoint != watched.client_url
            cluster.restart(watched)

        _assert_all_released(waiters, steps)
        _assert_listened_once(listener, store, unique_date, destination, list(steps))
    finally:
        listener.close()
    _assert_one_line_per_outage(caplog, watch.prefix, outages=2)


@pytest.mark.slow
def test_without_a_leader_a_notify_fails_in_bounded_time_or_is_written_when_a_leader_is_back(
        cluster: Cluster, tmp_path: Path, unique_date: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="aviso_workflows.etcd")
    alone, *stopped = cluster.members
    for member in stopped:
        cluster.stop(member)
    impatient = Producer(store_on([alone.client_url], tmp_path, timeout=3), unique_date, f"N{unique_date}", [0])
    with pytest.raises(StoreUnavailable, match=alone.client_url):
        impatient.joined(BOUND)

    store = store_on([alone.client_url], tmp_path, timeout=60)
    destination = f"Q{unique_date}"
    patient = Producer(store, unique_date, destination, [0])
    until("etcd answering that it cannot serve the notify now (after its own 7 s request timeout)",
          lambda: any(" is busy (" in r.getMessage() for r in caplog.records), BOUND)
    assert not patient.reached(1)  # still trying, not failed: no leader can be elected yet
    cluster.restart(stopped[0])
    patient.joined(BOUND)

    written = store.get(diss(unique_date, destination))
    assert [(n.request["step"], n.location) for n in written] == [("0", "file:///data/0")]


def test_an_idle_watch_reconnects_quietly(store: Store, unique_date: str, monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    caplog.set_level(logging.DEBUG, logger="aviso_workflows")
    monkeypatch.setattr("aviso_workflows.watch.IDLE_TIMEOUT", 0.5)  # the session etcd reports progress every 30 s
    destination = f"I{unique_date}"
    everything = store.request(diss(unique_date, destination))
    listener = Listener(store, everything, tmp_path / "cursors", start=Position(store.current_revision()))
    waiter, outcome = run_in_thread(lambda: store.wait(diss(unique_date, destination, 0), timeout=BOUND))
    try:
        watch = shared_watch(store, everything)
        until("three reconnections of the idle watch", lambda: watch.connections_opened >= 4, BOUND)
        store.notify(diss(unique_date, destination, 0))
        until("the listener saw the notification", lambda: listener.has_seen(0), BOUND)
        assert steps_of(joined(waiter, outcome, BOUND)) == [0]
    finally:
        listener.close()

    assert steps_of(listener.seen) == [0]
    assert watch_records(caplog.records, watch.prefix, logging.WARNING) == []
    assert watch_records(caplog.records, watch.prefix, logging.DEBUG)  # each reconnection is still on record
