"""A notify whose transaction committed but whose answer was lost is not written a second time.

The gateway re-sends a transaction that timed out to the next endpoint; the re-sent one fails its compare
(the status key moved: by our own commit). The notify then finds its own status on the chain by its
``notify_id`` and stops, instead of writing the keys again on top of the new status.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from etcd_helpers import running_etcd
from slow_proxy import SlowTxnProxy, slow_proxy_fixture  # noqa: F401 - the slow_proxy fixture

from aviso_workflows import Store
from aviso_workflows.backends import etcd as store_module
from aviso_workflows.etcd import KeyValue

MARS_STATUS = "/ec/mars/"


def mars(date: str, step: int | str) -> dict[str, Any]:
    return {"event": "mars", "class": "od", "expver": 1, "domain": "g", "date": date, "time": 0,
            "stream": "oper", "step": step}


def diss(date: str, step: int | str) -> dict[str, Any]:
    """A dissemination on the test's own destination: its own status key, which no other test writes."""
    return {**mars(date, step), "event": "dissemination", "destination": f"R{date}", "target": "E1"}


def diss_status(date: str) -> str:
    return f"/ec/diss/R{date}/"


def record(status: KeyValue) -> dict[str, Any]:
    return dict(json.loads(status.value))


def chain_since(store: Store, status_key: str, before: KeyValue | None) -> list[KeyValue]:
    """The statuses written after ``before``, oldest first, walking prev_rev back from the current one.

    Also checks that every put of the status key since ``before`` is on the chain (its version counts
    the puts), so a status written beside the chain cannot hide from the test.
    """
    floor = before.mod_revision if before is not None else 0
    chain: list[KeyValue] = []
    _, status = store.gateway.get(status_key)
    newest = status
    while status is not None and status.mod_revision > floor:
        chain.append(status)
        prev_rev = record(status).get("prev_rev")
        status = store.gateway.get(status_key, revision=prev_rev)[1] if prev_rev else None
    puts = (newest.version if newest else 0) - (before.version if before else 0)
    assert puts == len(chain), "the status key was written beside its chain"
    return chain[::-1]


def with_message(chain: list[KeyValue], message: str) -> list[KeyValue]:
    return [status for status in chain if record(status)["message"] == message]


def every_batch_starts_on_the_slow_endpoint(producer: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway stays on the endpoint it failed over to: send the first transaction of each batch to the
    first endpoint (the slow one) again, so that every batch of a notify has its answer lost once."""
    commit = producer.backend._commit  # type: ignore[attr-defined]

    def commit_from_the_first_endpoint(*args: Any) -> int:
        producer.gateway._current = 0
        return commit(*args)

    monkeypatch.setattr(producer.backend, "_commit", commit_from_the_first_endpoint)


def test_a_notify_whose_answer_was_lost_is_written_once(
        store: Store, unique_date: str, etcd_url: str, slow_proxy: SlowTxnProxy) -> None:
    message = f"lost answer {uuid.uuid4().hex}"
    _, before = store.gateway.get(MARS_STATUS)
    producer = Store([slow_proxy.url, etcd_url], timeout=1.0)

    result = producer.notify(mars(unique_date, 0), location="file:///a", message=message)

    assert slow_proxy.delayed == 1, "the notify did not go through the slow endpoint first"
    _, data = store.gateway.get(result.keys[0])
    assert data is not None and data.value == "file:///a"
    assert data.version == 1, "the retried transaction wrote the key a second time"
    (status,) = with_message(chain_since(store, MARS_STATUS, before), message)
    assert result.revisions == [status.mod_revision] == [data.mod_revision]
    assert len(record(status)["notify_id"]) == 32


def test_a_batch_of_two_transactions_whose_answers_were_lost_writes_every_key_once(
        store: Store, unique_date: str, etcd_url: str, slow_proxy: SlowTxnProxy,
        monkeypatch: pytest.MonkeyPatch) -> None:
    message = f"lost answers {uuid.uuid4().hex}"
    _, before = store.gateway.get(MARS_STATUS)
    producer = Store([slow_proxy.url, etcd_url], timeout=1.0)
    every_batch_starts_on_the_slow_endpoint(producer, monkeypatch)

    result = producer.notify(mars(unique_date, "0/to/240"), location="loc", message=message)

    assert slow_proxy.delayed == 2, "each transaction should have gone through the slow endpoint first"
    kvs = store.gateway.range_all(f"/ec/mars/date={unique_date},")[1]
    assert len(kvs) == 241 and sorted(kv.key for kv in kvs) == sorted(result.keys)
    assert [kv.key for kv in kvs if kv.version != 1] == [], "keys written more than once"
    first, second = result.revisions
    assert sorted(kv.mod_revision for kv in kvs) == [first] * 127 + [second] * 114
    ours = with_message(chain_since(store, MARS_STATUS, before), message)
    assert [status.mod_revision for status in ours] == [first, second]
    assert record(ours[1])["prev_rev"] == first
    ids = [record(status)["notify_id"] for status in ours]
    assert len(set(ids)) == 2 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_a_notifier_whose_status_was_moved_by_another_one_still_writes(
        store: Store, unique_date: str, etcd_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    one, other = Store([etcd_url]), Store([etcd_url])
    first = one.notify(diss(unique_date, 0)).revisions[0]
    other.notify(diss(unique_date, 6))
    moved = other.notify(diss(unique_date, 12)).revisions[0]   # ``one`` still compares against ``first``
    transactions: list[bool] = []
    txn = one.gateway.put_if_unchanged
    monkeypatch.setattr(one.gateway, "put_if_unchanged", lambda *a: transactions.append(True) or txn(*a))

    last = one.notify(diss(unique_date, 18)).revisions[0]

    assert len(transactions) == 2, "the stale compare should fail once, then the notify is written"
    chain = chain_since(store, diss_status(unique_date), None)
    assert [status.mod_revision for status in chain][0] == first and chain[-1].mod_revision == last
    assert len(chain) == 4 and record(chain[-1])["prev_rev"] == moved
    assert len({record(status)["notify_id"] for status in chain}) == 4
    kvs = store.gateway.range_all(f"/ec/diss/R{unique_date}/date=")[1]
    assert sorted((kv.mod_revision, kv.version) for kv in kvs) == [(s.mod_revision, 1) for s in chain]


def test_two_concurrent_notifiers_on_one_status_key_both_get_written(
        store: Store, unique_date: str, etcd_url: str) -> None:
    revisions: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def notifier(first_step: int) -> None:
        writer = Store([etcd_url])
        try:
            start.wait(10)
            for step in range(first_step, first_step + 10):
                revisions.extend(writer.notify(diss(unique_date, step)).revisions)
        except BaseException as error:  # noqa: BLE001 - reported by the test thread
            errors.append(error)

    threads = [threading.Thread(target=notifier, args=(first,)) for first in (0, 100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert errors == [] and len(revisions) == 20
    chain = chain_since(store, diss_status(unique_date), None)
    assert [status.mod_revision for status in chain] == sorted(revisions)
    kvs = store.gateway.range_all(f"/ec/diss/R{unique_date}/date=")[1]
    assert len(kvs) == 20 and {kv.version for kv in kvs} == {1}


# -- when the chain cannot be walked, the notify is written and a warning says a repeat is possible ---------
@pytest.fixture(scope="module")
def own_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Compaction affects the whole store: an etcd of these tests' own."""
    with running_etcd(tmp_path_factory.mktemp("etcd-notify-retry")) as info:
        yield info.client_url


def unverifiable(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING and "cannot be ruled out" in r.getMessage()]


def test_a_compacted_chain_is_taken_as_not_ours_with_one_warning(
        store: Store, unique_date: str, own_etcd: str, caplog: pytest.LogCaptureFixture) -> None:
    one, other = Store([own_etcd]), Store([own_etcd])
    one.notify(diss(unique_date, 0))
    for moves, step in (((6, 12), 18), ((24, 30), 36)):   # the second time, the warning is not repeated
        for moved in moves:
            other.notify(diss(unique_date, moved))
        other.gateway.compact(other.current_revision())   # the status ``one`` would walk through is gone
        one.notify(diss(unique_date, step))

    assert len(unverifiable(caplog)) == 1
    kvs = one.gateway.range_all(f"/ec/diss/R{unique_date}/date=")[1]
    assert len(kvs) == 7 and {kv.version for kv in kvs} == {1}


def test_a_chain_longer_than_the_walk_is_taken_as_not_ours(
        store: Store, unique_date: str, etcd_url: str, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "STATUS_WALK_LIMIT", 2)
    one, other = Store([etcd_url]), Store([etcd_url])
    one.notify(diss(unique_date, 0))
    for step in (6, 12, 18, 24):
        other.notify(diss(unique_date, step))

    one.notify(diss(unique_date, 30))

    assert len(unverifiable(caplog)) == 1
    kvs = store.gateway.range_all(f"/ec/diss/R{unique_date}/date=")[1]
    assert len(kvs) == 6 and {kv.version for kv in kvs} == {1}
