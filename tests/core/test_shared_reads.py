"""Shared first reads: the waits of a burst share few reads; a lone wait is read at once, also right after another."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from core_helpers import mars
from threads import joined, run_in_thread
from waiting import BOUND, eventually

import aviso_workflows.shared_reads as shared_reads_module
from aviso_workflows import Store

HALF = 10


def test_a_lone_wait_right_after_another_is_read_at_once(store: Store, unique_date: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # The read worker keeps its queue GATHER seconds after a read only for a burst under way. Made a minute here:
    # a lone wait that had to sit that window out after the previous wait's read would not be released in time.
    monkeypatch.setattr(shared_reads_module, "GATHER", 60.0)
    store.notify(mars(unique_date, step="0/6/12"))
    for step in (0, 6, 12):  # each released by its first read, one after the other
        thread, outcome = run_in_thread(lambda step=step: store.wait(mars(unique_date, step=step), timeout=BOUND))
        assert [n.request["step"] for n in joined(thread, outcome, BOUND)] == [str(step)]


def test_waiters_coming_during_a_read_and_after_it_share_the_next_read(store: Store, unique_date: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shared_reads_module, "GATHER", 2.0)  # far longer than the burst below lasts
    store.notify(mars(unique_date, step=f"0/to/{2 * HALF}"))
    reads: list[int] = []
    reading, may_end = threading.Event(), threading.Event()
    read_many = store.read_many

    def counted(requests: Any, **options: Any) -> Any:
        if not reads:  # the first read lasts until the next waiters queued behind it
            reading.set()
            may_end.wait(BOUND)
        reads.append(len(requests))
        return read_many(requests, **options)

    store.read_many = counted  # type: ignore[method-assign]
    waits = [run_in_thread(lambda: steps(store, unique_date, 0))]
    eventually(reading.is_set, what="the first wait's read under way")
    waits += [run_in_thread(lambda step=step: steps(store, unique_date, step)) for step in range(1, HALF + 1)]
    eventually(lambda: queued(store) == HALF, what=f"{HALF} waits queued behind the first read")
    may_end.set()
    for step in range(HALF + 1, 2 * HALF + 1):  # a burst's pace: threads that start one after the other
        waits.append(run_in_thread(lambda step=step: steps(store, unique_date, step)))
        time.sleep(0.01)
    assert [joined(thread, outcome, BOUND) for thread, outcome in waits] == [[str(s)] for s in range(2 * HALF + 1)]
    assert reads == [1, 2 * HALF], reads  # without the gathering, the waiters after the burst's second read one by one


def steps(store: Store, date: str, step: int) -> list[str]:
    return [n.request["step"] for n in store.wait(mars(date, step=step), timeout=BOUND)]


def queued(store: Store) -> int:
    """Reads waiting in the shared reads' queues (the unit under test: its queue is looked at directly)."""
    reads = shared_reads_module.shared_reads(store)
    with reads._condition:
        return sum(len(queue.entries) for queue in reads._queues.values())
