"""Model-based test of the listener promise, against a real etcd:

every post after the listener's start position is delivered, in write order, and only the
notification in hand at a stop may come twice.

Hypothesis interleaves posts (single keys, one transaction of several keys, more than 128 keys in two
transactions, overwrites, re-runs of the same post), compactions and etcd restarts, and changes of the
latency between the listener and etcd. After each of them the listener, which reads through a delaying
proxy, either stays stopped or runs from its cursor and is stopped at a random point: after k
notifications (also in the middle of one transaction's keys), by closing its generator with the last
one in hand or by its stop flag. Every rule may run the listener, not only ``run_listener`` (which
resumes with nothing new): Hypothesis turns a random part of the rules off in each example (swarm
testing), and a listener that ran only in a rule of its own would often not run before the end.

The model is the list of posts in write order; each run must deliver exactly the posts after its
cursor's position. Where history was compacted past that position, the engine delivers the state at
the compaction revision (a key posted several times there comes once, with its latest post up to the
compaction) and says so in a WARNING.

``AVISO_MODEL_EXAMPLES`` sets how many interleavings are tried (default 50).
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import math
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule, run_state_machine_as_test
from tcp_proxy import TcpProxy
from threads import joined, run_in_thread

from aviso_workflows import Notification, Store, server
from aviso_workflows.listen import Cursor, Position, listen

EXAMPLES = int(os.environ.get("AVISO_MODEL_EXAMPLES", "50"))
BOUND = 60.0  # seconds one run of the listener may take: generous for two busy cores and 0.2 s of latency
DELAYS = (0.0, 0.05, 0.2)
MAX_RESTARTS = 1  # per example: an etcd restart costs over a second, the budget of the whole run is ~2 minutes
STEPS = st.integers(0, 300)
FIRST_DAY = dt.date(1990, 1, 1)  # dates of this test only: one fresh date per example, so keys never collide
_days = itertools.count()
#: A place in history as the model sees it: (revision, step); ``math.inf`` is past the whole revision.
Place = tuple[int, float]


@dataclass(frozen=True, order=True)
class Post:
    """One key as posted (or delivered): ordered the way the listener must deliver it."""

    revision: int
    step: int
    location: str

    @property
    def place(self) -> Place:
        return self.revision, self.step

    @classmethod
    def of(cls, notification: Notification) -> Post:
        return cls(notification.revision, int(notification.request["step"]), str(notification.location))


@dataclass(frozen=True)
class Stop:
    """A run of the listener: it stops after ``after`` notifications, or ``short_of`` notifications before
    the last one due (None for both: once it delivered everything up to now), by closing the generator
    with the last one in hand (``close``: it may come again), or by setting its stop flag and asking for
    the next one, so that the last one was handled (``flag``)."""

    after: int | None
    how: str
    short_of: int | None = None

    def count(self, due: int) -> int | None:
        """How many notifications to take when ``due`` are expected (None: all of them)."""
        return max(1, due - self.short_of) if self.short_of is not None else self.after


HOWS = st.sampled_from(["close", "flag"])
STOPS = st.one_of(st.builds(Stop, st.none() | st.integers(1, 12) | st.integers(13, 250), HOWS),
                  # just before the end: inside the last transaction, with nothing posted after it
                  st.builds(Stop, st.none(), HOWS, st.integers(1, 12)))
#: After each rule's action the listener runs for a while from its cursor, or (2 times in 3, so that posts
#: and faults pile up while it is stopped) stays stopped.
RUNS = st.one_of(st.none(), st.none(), STOPS)


@dataclass
class Run:
    """What one run of the listener delivered, and whether it stopped with the last one in hand."""

    delivered: list[Post]
    in_hand: bool


@dataclass
class Etcd:
    """The test's own etcd, with a delaying proxy in front for the listener; shared by the examples."""

    root: Path
    port: int = field(default_factory=server.free_port)
    compacted: int = 0  # etcd refuses a compaction at or below the last one
    proxy: TcpProxy | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        server.start(self.root, port=self.port)
        self.proxy = self.proxy or TcpProxy.start(self.url)

    def restart(self) -> None:
        server.stop(self.root)
        server.start(self.root, port=self.port)  # same port: the proxy and the writer find it again

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        server.stop(self.root)


class Warnings(logging.Handler):
    """Collects the engine's WARNINGs, to check that compacted history is reported."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def mars(date: str, **extra: Any) -> dict[str, Any]:
    return {"event": "mars", "class": "od", "expver": 1, "domain": "g", "date": date, "time": 0,
            "stream": "oper", **extra}


def compacted_view(posts: list[Post], position: Place, compacted: int) -> list[Post]:
    """The posts after ``position`` that a listener resuming there must deliver, ``compacted`` being the last
    compaction revision: history up to it is gone, so of the posts in (position, compacted] only each key's
    latest comes (the state at the compaction revision); everything after it comes in full."""
    after = [post for post in posts if post.place > position]
    latest = {post.step: post for post in after if post.revision <= compacted}  # later posts replace earlier
    return sorted(latest.values()) + [post for post in after if post.revision > compacted]


def without_stop_repeats(runs: list[Run]) -> list[Post]:
    """All runs' deliveries joined, less the one allowed repeat: the notification in hand at a stop
    coming again first in the next run."""
    joined_runs: list[Post] = []
    in_hand: Post | None = None
    for run in runs:
        delivered = run.delivered[1:] if in_hand is not None and run.delivered[:1] == [in_hand] else run.delivered
        joined_runs += delivered
        in_hand = run.delivered[-1] if run.in_hand else None
    return joined_runs


class FollowModel(RuleBasedStateMachine):
    """One listener with a cursor, one writer, one date; the model is the list of posts in write order."""

    def __init__(self, etcd: Etcd, workdir: Path, warnings: Warnings) -> None:
        super().__init__()
        assert etcd.proxy is not None
        etcd.proxy.set_delay(0.0)  # each example starts fast; a rule slows it down
        self.etcd = etcd
        self.warnings = warnings
        self.date = (FIRST_DAY + dt.timedelta(days=next(_days))).strftime("%Y%m%d")
        self.writer = Store([etcd.url])  # writes go straight to etcd, reads of the listener through the proxy
        self.reader = Store([etcd.proxy.url])
        self.cursor = Cursor("model", workdir / self.date)
        self.posts: list[Post] = []
        self.locations = itertools.count()
        #: Where the listener's cursor stands as far as the model knows: after its last handled notification
        #: (None while it was never saved: the first start saves it at "now").
        self.position: Place | None = None
        self.start: Place | None = None
        self.in_hand: Post | None = None  # the notification in hand at the last stop: it may come again
        self.compacted = 0  # the last compaction revision of this example
        self.runs: list[Run] = []
        self.restarts = 0

    # -- the start -------------------------------------------------------------------------------
    @initialize(saved=st.booleans())
    def cursor_saved_before_any_post(self, saved: bool) -> None:
        """Either a cursor saved now (posts before the first run are due), or one never saved (it starts
        at its first run and what came before is not due)."""
        if saved:
            revision = self.writer.current_revision()
            self.cursor.save(Position(revision))
            self.position = self.start = (revision, math.inf)

    # -- posts: each rule then lets the listener run for a while, or not -----------------------------
    def _notify(self, step: str, location: str | None = None) -> list[Post]:
        """Post ``step`` (one key or a list) and add its keys to the model, with the revision each got."""
        location = location or f"/data/{self.date}/{next(self.locations)}"
        result = self.writer.notify(mars(self.date, step=step), location=location)
        _, found = self.writer.read(self.writer.request(mars(self.date)), min_revision=result.revisions[0])
        posted = sorted(Post.of(n) for n in found)  # only this notify wrote since its first revision
        assert {p.revision for p in posted} == set(result.revisions)
        assert len(posted) == len(result.keys) and all(p.location == location for p in posted)
        self.posts += posted
        return posted

    def _posted_step(self, data: st.DataObject) -> int:
        return data.draw(st.sampled_from(sorted({post.step for post in self.posts})), label="step")

    @rule(step=STEPS, then_listen=RUNS)
    def notify_one_key(self, step: int, then_listen: Stop | None) -> None:
        self._notify(str(step))
        self._listen(then_listen)

    @rule(steps=st.lists(STEPS, min_size=2, max_size=12, unique=True), then_listen=RUNS)
    def notify_one_transaction(self, steps: list[int], then_listen: Stop | None) -> None:
        """Several keys in one revision, listed in any order: they must come out by step."""
        posted = self._notify("/".join(map(str, steps)))
        assert len({post.revision for post in posted}) == 1
        self._listen(then_listen)

    @rule(first=st.integers(0, 50), count=st.integers(129, 200), then_listen=RUNS)
    def notify_two_transactions(self, first: int, count: int, then_listen: Stop | None) -> None:
        """More than 128 keys: one transaction holds at most 127 of them and the status key."""
        posted = self._notify(f"{first}/to/{first + count - 1}/by/1")
        assert len({post.revision for post in posted}) == 2
        self._listen(then_listen)

    @precondition(lambda self: bool(self.posts))
    @rule(data=st.data(), then_listen=RUNS)
    def overwrite(self, data: st.DataObject, then_listen: Stop | None) -> None:
        """An existing key with a new location."""
        self._notify(str(self._posted_step(data)))
        self._listen(then_listen)

    @precondition(lambda self: bool(self.posts))
    @rule(data=st.data(), then_listen=RUNS)
    def rerun(self, data: st.DataObject, then_listen: Stop | None) -> None:
        """The same key with the same location again (a re-run): a new post, delivered again."""
        step = self._posted_step(data)
        self._notify(str(step), [post for post in self.posts if post.step == step][-1].location)
        self._listen(then_listen)

    # -- faults while the listener is stopped ------------------------------------------------------
    @rule(then_listen=RUNS)
    def compact(self, then_listen: Stop | None) -> None:
        """Compact all history up to now (etcd refuses the same revision twice: then nothing happens)."""
        revision = self.writer.current_revision()
        if revision > self.etcd.compacted:
            self.writer.gateway.compact(revision)
            self.etcd.compacted = self.compacted = revision
        self._listen(then_listen)

    @precondition(lambda self: self.restarts < MAX_RESTARTS)
    @rule(then_listen=RUNS)
    def restart_etcd(self, then_listen: Stop | None) -> None:
        self.etcd.restart()
        self.restarts += 1
        self._listen(then_listen)

    @rule(delay=st.sampled_from(DELAYS), then_listen=RUNS)
    def set_delay(self, delay: float, then_listen: Stop | None) -> None:
        """Latency between the listener and etcd: answers and watch events come late."""
        assert self.etcd.proxy is not None
        self.etcd.proxy.set_delay(delay)
        self._listen(then_listen)

    # -- the listener ------------------------------------------------------------------------------
    @rule(run=STOPS)
    def run_listener(self, run: Stop) -> None:
        """A run with nothing new since the last one: it resumes exactly where that one stopped."""
        self._listen(run)

    def _listen(self, run: Stop | None) -> None:
        """Run the listener from its cursor up to now, stopped as ``run`` says, and check what it delivered."""
        if run is None:  # it stays stopped for now
            return
        until = self.writer.current_revision()
        if self.position is None:  # the first start of a never-saved cursor: it starts now
            self.position = self.start = (until, math.inf)
        expected = compacted_view(self.posts, self.position, self.compacted)
        warned = len(self.warnings.records)
        after = run.count(len(expected))
        delivered, in_hand = self._consume(until, after, run.how)
        self.runs.append(Run(delivered, in_hand))
        handled = self._check(expected, delivered, after, in_hand)
        if expected != compacted_view(self.posts, self.position, 0):  # the compaction cost posts: said once
            assert any("compacted" in r.getMessage() for r in self.warnings.records[warned:]), "no WARNING"
        self._move(expected, handled, delivered[-1] if in_hand else None, until)

    def _consume(self, until: int, after: int | None, how: str) -> tuple[list[Post], bool]:
        """One run of the listener in a thread, bounded in time; returns what it delivered and whether
        it stopped with the last one in hand."""
        stop = threading.Event()

        def body() -> tuple[list[Post], bool]:
            notifications = listen(self.reader, [self.reader.request(mars(self.date))], cursor=self.cursor,
                                   stop=stop, until_revision=until)
            got: list[Post] = []
            try:
                for notification in notifications:
                    got.append(Post.of(notification))
                    if len(got) == after:
                        break
                else:
                    return got, False  # history reached ``until``: everything was handled
                if how == "close":
                    return got, True
                stop.set()
                assert next(notifications, None) is None, "a notification after the stop flag was set"
                return got, False
            finally:
                notifications.close()

        thread, outcome = run_in_thread(body)
        try:
            result: tuple[list[Post], bool] = joined(thread, outcome, BOUND)
        finally:
            stop.set()  # a run that overran ends at its next look at the flag
        return result

    def _check(self, expected: list[Post], delivered: list[Post], after: int | None, in_hand: bool) -> int:
        """Delivered must be the expected posts from the cursor on, in write order: all of them, or the first
        ``after``. Only the notification in hand at the last stop may be left out (it was delivered
        already). Returns how many of ``expected`` the listener has handled now."""
        again = self.in_hand is not None and expected[:1] == [self.in_hand]
        skip = 1 if again and delivered[:1] != expected[:1] else 0
        due = expected[skip:] if after is None else expected[skip:skip + after]
        assert delivered == due, self._explain(expected, delivered)
        return skip + len(delivered) - (1 if in_hand else 0)

    def _move(self, expected: list[Post], handled: int, in_hand: Post | None, until: int) -> None:
        """The model's cursor after a run: past the last handled notification, or past ``until`` when the
        run handled everything (the engine may then stand anywhere up to ``until``: nothing is due there)."""
        if handled == len(expected):
            self.position = (until, math.inf)
        elif handled:
            self.position = expected[handled - 1].place
        self.in_hand = in_hand

    def _explain(self, expected: list[Post], delivered: list[Post]) -> str:
        return (f"date {self.date}, cursor at {self.position}, in hand {self.in_hand}, compacted at "
                f"{self.compacted}:\n expected  {_short(expected)}\n delivered {_short(delivered)}")

    # -- the end -----------------------------------------------------------------------------------
    def teardown(self) -> None:
        """Listen up to now once more; then every run together must be every post after the start, less
        the repeats allowed at stops (and, after compactions, less what they took)."""
        if sys.exc_info()[1] is not None:  # a rule failed already: that is the report
            return
        self._listen(Stop(None, "close"))
        joined_runs = without_stop_repeats(self.runs)
        assert self.start is not None
        due = [post for post in self.posts if post.place > self.start]
        if not self.compacted:
            assert joined_runs == due, self._explain(due, joined_runs)
            return
        assert joined_runs == sorted(set(joined_runs)), "not in write order, or repeated"
        assert set(joined_runs) <= set(due), "delivered what was not posted after the start"
        assert set(joined_runs) >= {post for post in due if post.revision > self.compacted}


def _short(posts: list[Post]) -> str:
    return ", ".join(f"{p.revision}:{p.step}" for p in posts[:40]) + (" ..." if len(posts) > 40 else "")


@pytest.fixture
def model_etcd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Etcd]:
    """The test's own etcd (compactions and restarts would disturb other tests), stopped by pid after."""
    monkeypatch.setenv("AVISO_WORKFLOWS_CONFIG", str(tmp_path / "no-config.yaml"))
    monkeypatch.setenv("AVISO_WORKFLOWS_STATE_DIR", str(tmp_path / "state"))
    etcd = Etcd(tmp_path / "etcd")
    try:
        etcd.start()
        yield etcd
    finally:
        etcd.close()


@pytest.fixture
def engine_warnings() -> Iterator[Warnings]:
    handler = Warnings()
    logger = logging.getLogger("aviso_workflows")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.mark.slow
def test_every_post_after_the_cursor_comes_once_in_write_order(model_etcd: Etcd, tmp_path: Path,
                                                               engine_warnings: Warnings) -> None:
    run_state_machine_as_test(
        lambda: FollowModel(model_etcd, tmp_path / "cursors", engine_warnings),
        settings=settings(max_examples=EXAMPLES, stateful_step_count=20, deadline=None))
