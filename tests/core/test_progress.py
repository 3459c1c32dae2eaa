"""Progress of a multi-key wait is the contiguous prefix in request order, never the plain count.

Producers post out of order (parallel post-processing, a retried step). With steps 0, 6, 12, 18 and 30 of
0/to/48/by/6 posted, a wait has found 5 keys but only 4 are *ready*: a trigger on "5 steps" must wait for
step 24. Every consumer (the CLI's --progress-command, the ecFlow meter built on it, the sensor's log, the
waiters' registry) shows ``ready``; ``found`` stays the plain count.
"""

from __future__ import annotations

import datetime as dt
import itertools
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from core_helpers import WAIT_BOUND, mars, mars_key
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from threads import run_in_thread

from aviso_workflows import Store, WaitTimeout
from aviso_workflows.cli import main
from aviso_workflows.request import ready_prefix
from aviso_workflows.wait import Progress, wait
from aviso_workflows.waiters import list_waiters

STEPS = list(range(0, 49, 6))
OUT_OF_ORDER = [0, 6, 12, 18, 30]
#: Dates of this module's examples: far from the shared fixture's (2001 on), one per example.
_dates = (dt.date(1950, 1, 1) + dt.timedelta(days=n) for n in itertools.count())


def fresh_date() -> str:
    return next(_dates).strftime("%Y%m%d")


class Recorder:
    """Collects a wait's Progress reports; :meth:`until` waits (bounded) for one that satisfies a condition."""

    def __init__(self) -> None:
        self.seen: list[Progress] = []
        self.changed = threading.Condition()

    def __call__(self, progress: Progress) -> None:
        with self.changed:
            self.seen.append(progress)
            self.changed.notify_all()

    def until(self, condition: Callable[[Progress], bool], what: str) -> Progress:
        deadline = time.monotonic() + WAIT_BOUND
        with self.changed:
            while not (self.seen and condition(self.seen[-1])):
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"no progress report with {what}; seen {self.seen[-3:]}"
                self.changed.wait(remaining)
            return self.seen[-1]


def model_prefix(keys: list[str], posted: set[str]) -> int:
    """The model: the index of the first key not posted (all of them if none is missing)."""
    return next((index for index, key in enumerate(keys) if key not in posted), len(keys))


def test_ready_prefix_is_the_run_of_found_keys_from_the_start() -> None:
    keys = [f"k{step}" for step in STEPS]
    assert ready_prefix(keys, {f"k{s}" for s in OUT_OF_ORDER}) == 4
    assert ready_prefix(keys, {"k6", "k12"}) == 0
    assert ready_prefix(keys, set(keys)) == len(keys)
    assert ready_prefix(keys, {f"k{s}" for s in OUT_OF_ORDER} | {"k24"}, start=4) == 6


def test_a_later_step_posted_early_does_not_count_until_the_gap_is_filled(store: Store, unique_date: str) -> None:
    """The bug: with 0, 6, 12, 18 and 30 posted, progress said 5 and ``latest step=30``."""
    request = store.request(mars(unique_date, step="0/to/48/by/6"))
    store.notify(mars(unique_date, step="/".join(map(str, OUT_OF_ORDER))))
    recorder = Recorder()
    with pytest.raises(WaitTimeout):
        wait(store, request, timeout=0.5, on_ready=recorder)
    last = recorder.seen[-1]
    assert (last.found, last.ready, last.total) == (5, 4, 9)
    assert last.last_ready is not None and last.last_ready.request["step"] == "18"
    assert [p.ready for p in recorder.seen] == [1, 2, 3, 4, 4]


def test_progress_command_placeholders_show_the_prefix(store: Store, unique_date: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """``{ready}`` and ``{step}`` follow the prefix, ``{found}`` the plain count; the last report holds the final
    counts (the command runs once more for them when the wait ends)."""
    store.notify(mars(unique_date, step="/".join(map(str, OUT_OF_ORDER))))
    out = tmp_path / "progress.txt"
    hook = f"{sys.executable} -c \"import sys; open(sys.argv[1], 'a').write(' '.join(sys.argv[2:]) + chr(10))\""
    request = ",".join(f"{k}={v}" for k, v in mars(unique_date, step="0/to/48/by/6").items())
    code = main(["wait", request, "--timeout", "0.5", "--quiet", "--progress-command",
                 f"{hook} {out} ready={{ready}} found={{found}} total={{total}} step={{step}} newest={{newest_key}}"])
    capsys.readouterr()
    assert code == 1
    assert out.read_text().splitlines()[-1] == f"ready=4 found=5 total=9 step=18 newest={mars_key(unique_date, 30)}"


def test_the_waiters_registry_shows_ready_and_found(store: Store, unique_date: str) -> None:
    request = store.request(mars(unique_date, step="0/to/48/by/6"))
    store.notify(mars(unique_date, step="/".join(map(str, OUT_OF_ORDER))))
    recorder = Recorder()
    thread, outcome = run_in_thread(lambda: wait(store, request, timeout=WAIT_BOUND, on_ready=recorder,
                                                 who={"kind": "test", "case": unique_date}))
    recorder.until(lambda p: p.found == 5, "5 found")
    deadline = time.monotonic() + WAIT_BOUND
    while True:  # the registry is written coalesced, within about a second
        listed = list_waiters(store, {"case": unique_date})
        if listed and listed[0].found == 5:
            break
        assert time.monotonic() < deadline, f"the registry never showed 5 found: {listed}"
        time.sleep(0.05)
    assert (listed[0].ready, listed[0].total, listed[0].progress_text) == (4, 9, "4/9")
    store.notify(mars(unique_date, step="24/36/42/48"))
    thread.join(WAIT_BOUND)
    assert not thread.is_alive() and "error" not in outcome
    assert [p.ready for p in recorder.seen][-5:] == [4, 6, 7, 8, 9]


# -- the model ------------------------------------------------------------------------------------
#: Two varying fields: time varies slower than step (key order), so the request order is
#: time 00 steps 0..18, then time 12 steps 0..18.
MODEL_TIMES, MODEL_STEPS = ("0", "12"), ("0", "6", "12", "18")
MODEL_KEYS = len(MODEL_TIMES) * len(MODEL_STEPS)


@st.composite
def posting_plans(draw: st.DrawFn) -> tuple[list[int], int]:
    """Every key once in a random order, some posted again (a retried step), and how many posts are made
    before the wait starts (the catch-up read finds those)."""
    order = draw(st.permutations(range(MODEL_KEYS)))
    posts: list[int] = []
    for index in order:
        posts.append(index)
        posts += draw(st.lists(st.sampled_from(posts), max_size=1))  # a repeat of a key posted already
    return posts, draw(st.integers(0, len(posts)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(plan=posting_plans())
def test_progress_is_the_contiguous_prefix_whatever_the_order(store: Store, plan: tuple[list[int], int]) -> None:
    """After each post, the wait's ready count (through the real wait on a real etcd) equals the model's
    prefix, and its last ready key is the prefix's last key; repeats and catch-up reads change nothing."""
    posts, before = plan
    date = fresh_date()
    request = store.request(mars(date, time="/".join(MODEL_TIMES), step="/".join(MODEL_STEPS)))
    keys = request.keys()
    assert keys[len(MODEL_STEPS)] == mars_key(date, 0, "12"), "time varies slower than step"

    def post(index: int) -> None:
        time_, step = MODEL_TIMES[index // len(MODEL_STEPS)], MODEL_STEPS[index % len(MODEL_STEPS)]
        store.notify(mars(date, time=time_, step=step))
        posted.add(keys[index])

    def check(progress: Progress) -> None:
        ready = model_prefix(keys, posted)
        assert progress.ready == ready, f"posted {sorted(posted)}"
        assert (progress.last_ready.key if progress.last_ready else None) == (keys[ready - 1] if ready else None)

    posted: set[str] = set()
    for index in posts[:before]:
        post(index)
    recorder = Recorder()
    thread, outcome = run_in_thread(lambda: wait(store, request, timeout=WAIT_BOUND * 3, on_ready=recorder))
    if posted:
        check(recorder.until(lambda p: p.found == len(posted), f"{len(posted)} found by the catch-up read"))
    for index in posts[before:]:
        post(index)
        check(recorder.until(lambda p: p.found == len(posted), f"{len(posted)} found"))
    thread.join(WAIT_BOUND)
    assert not thread.is_alive() and "error" not in outcome, outcome.get("error")
    readies = [p.ready for p in recorder.seen]
    assert readies == sorted(readies) and readies[-1] == MODEL_KEYS
