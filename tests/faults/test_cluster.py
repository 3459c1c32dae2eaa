"""A 3-member etcd cluster loses its leader under load: nothing is lost, nothing is repeated."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from cluster import Cluster, Listener, Producer, Waiters, diss, shared_watch, steps_of, store_on, until, watch_records

from aviso_workflows import Notification
from aviso_workflows.listen import Position

NOTIFICATIONS = 1000
WAITS = 200
KEYS_PER_WAIT = NOTIFICATIONS // WAITS
BOUND = 300.0  # seconds: generous for two loaded cores; the whole test takes about a minute


@pytest.mark.slow
def test_killing_the_leader_under_load_loses_and_repeats_nothing(cluster: Cluster, tmp_path: Path,
                                                                 unique_date: str,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="aviso_workflows")
    leader = cluster.leader()
    endpoints = [leader.client_url] + [m.client_url for m in cluster.others(leader)]  # clients start on the leader
    store = store_on(endpoints, tmp_path)
    destination = f"K{unique_date}"
    everything = store.request(diss(unique_date, destination))
    listener = Listener(store, everything, tmp_path / "cursors", start=Position(store.current_revision()))
    try:
        requests = [store.request(diss(unique_date, destination, "/".join(map(str, range(i, i + KEYS_PER_WAIT)))))
                    for i in range(0, NOTIFICATIONS, KEYS_PER_WAIT)]
        waiters = Waiters(store, requests, in_threads=WAITS // 2, timeout=BOUND)
        watch = shared_watch(store, everything, subscribers=WAITS, seconds=BOUND)
        assert watch.gateway.endpoint == leader.client_url

        producer = Producer(store, unique_date, destination, range(NOTIFICATIONS))
        until("300 notifications posted", lambda: producer.reached(300), BOUND)
        cluster.kill(leader)
        until("600 notifications posted", lambda: producer.reached(600), BOUND)
        cluster.restart(leader)
        producer.joined(BOUND)

        outcomes = waiters.joined(BOUND)
        failed = {i: outcome for i, outcome in outcomes.items() if isinstance(outcome, BaseException)}
        assert not failed, f"{len(failed)} waits failed, e.g. {next(iter(failed.values()))!r}"
        assert {i: steps_of(outcomes[i]) for i in range(WAITS)} == {  # type: ignore[arg-type]
            i: list(range(i * KEYS_PER_WAIT, (i + 1) * KEYS_PER_WAIT)) for i in range(WAITS)}

        store.notify(diss(unique_date, destination, NOTIFICATIONS))  # the last one: all before it were delivered
        until("the listener reached the last notification", lambda: listener.has_seen(NOTIFICATIONS), BOUND)
        listener.close()
        assert steps_of(listener.seen) == list(range(NOTIFICATIONS + 1))  # each once, in the order posted
        assert _revisions_increase(listener.seen)
    finally:
        listener.close()

    restarted = store_on([leader.client_url], tmp_path)  # the killed member kept and caught up everything
    assert steps_of(restarted.get(diss(unique_date, destination))) == list(range(NOTIFICATIONS + 1))

    assert watch.gateway.endpoint != leader.client_url  # the watch failed over
    assert len(watch_records(caplog.records, watch.prefix, logging.WARNING)) == 1
    assert len([m for m in watch_records(caplog.records, watch.prefix, logging.INFO) if " resumed at " in m]) == 1
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []


def _revisions_increase(notifications: list[Notification]) -> bool:
    return all(a.revision < b.revision for a, b in zip(notifications, notifications[1:]))
