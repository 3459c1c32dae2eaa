"""The wait state machine, driven directly: random posts, compactions, outages and passing time against a model.

No store and no clock: the test plays the store and the feeds, answers each command of the machine the way a
driver would, and checks the promises against what it posted: a wait is released exactly when what it waits
for was handed to it (nothing lost, even across a compaction or an outage), with each key once, in history
order; a timeout comes only at the deadline, with what was found; an outage is ridden out until then.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from core_helpers import mars
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aviso_workflows.errors import StoreUnavailable, WaitTimeout
from aviso_workflows.etcd import KeyValue
from aviso_workflows.follow import (
    AwaitReady,
    Fed,
    Feed,
    FeedKind,
    Found,
    Listen,
    Pause,
    Paused,
    ReadDone,
    ReadFailed,
    Readied,
    ReadState,
    Release,
    WaitCommand,
    WaitEvent,
    WaitMachine,
)
from aviso_workflows.notification import Notification, notification_from_kv
from aviso_workflows.request import Request
from aviso_workflows.schema import MARS

STEPS = ("0", "6", "12")
def _request(date: str, step: str) -> Request:
    return Request.build(MARS, {k: v for k, v in mars(date, step=step).items() if k != "event"})


REQUEST = _request("20240101", "/".join(STEPS))
WANTED = REQUEST.keys()
OTHER = _request("20240102", "0").keys()[0]  # a key of the prefix the wait does not want
#: What the world may do while the machine waits for its command's answer.
ACTIONS = st.sampled_from(["post", "post", "post other", "nothing", "compact", "outage", "mend", "flood"])
MAX_STEPS = 80
START = 100.0


@dataclass
class World:
    """The store and the feeds, as the model sees them."""

    now: float = START
    revision: int = 10
    kvs: dict[str, KeyValue] = field(default_factory=dict)
    #: Feeds the watch has for the wait and not handed over yet.
    inbox: list[Feed[KeyValue]] = field(default_factory=list)
    watching: bool = False
    down: bool = False
    #: Keys the machine was handed (by a read or a feed) and the revision of each post handed.
    handed: dict[str, int] = field(default_factory=dict)

    def post(self, key: str) -> None:
        self.revision += 1
        kv = KeyValue(key, "None", self.revision, version=self.kvs[key].version + 1 if key in self.kvs else 1)
        self.kvs[key] = kv
        if self.watching:  # the shared watch sees every post from its start on
            self.inbox.append(Feed(FeedKind.EVENTS, self.revision, [kv]))

    def act(self, action: str, step: int) -> None:
        if action == "post":
            self.post(WANTED[step % len(WANTED)])
        elif action == "post other":
            self.post(OTHER)
        elif action == "compact":  # the watch lost history: what it had queued is gone, the wait must read
            if self.watching:
                self.inbox = [Feed(FeedKind.RESYNC, 0)]
        elif action == "flood":  # the inbox overflowed: forgotten, replaced by a resync
            if self.inbox:
                self.inbox = [Feed(FeedKind.RESYNC, 0)]
        elif action == "outage":
            self.down = True
        elif action == "mend":
            self.down = False

    def unknown(self) -> set[str]:
        """Keys posted that the machine was not handed and that no pending feed brings (a pending resync
        brings everything: the machine reads again)."""
        if any(feed.kind is FeedKind.RESYNC for feed in self.inbox):
            return set()
        pending = {kv.key for feed in self.inbox for kv in feed.puts}
        return {key for key, kv in self.kvs.items() if self.handed.get(key, -1) < kv.mod_revision} - pending

    def _hand(self, kvs: Sequence[KeyValue]) -> None:
        """Record what the machine is handed; a stale feed (older than a read it already had) hands nothing new."""
        for kv in kvs:
            self.handed[kv.key] = max(self.handed.get(kv.key, -1), kv.mod_revision)

    def answer(self, command: WaitCommand) -> WaitEvent:
        """What a driver would hand back."""
        if isinstance(command, AwaitReady):
            if self.down:
                self.now += max(command.timeout, 0.01)
                return Readied(False, StoreUnavailable("down"))
            self.watching = True
            return Readied(True)
        if isinstance(command, ReadState):
            if self.down:
                return ReadFailed(StoreUnavailable("down"))
            found = [kv for kv in self.kvs.values() if kv.mod_revision >= command.min_revision]
            self._hand(found)
            return ReadDone(self.revision, _notifications(found))
        if isinstance(command, Pause):
            self.now += command.seconds
            return Paused()
        assert isinstance(command, Listen)
        if self.inbox:
            feed = self.inbox.pop(0)
            self._hand(feed.puts)
            return Fed(feed)
        self.now += command.timeout if command.timeout is not None else 1.0
        return Fed(None, StoreUnavailable("down") if self.down else None)


def _notifications(kvs: list[KeyValue]) -> list[Notification]:
    found = [notification_from_kv(REQUEST, kv) for kv in kvs]
    return sorted([n for n in found if n is not None], key=lambda n: n.order)


def _released(world: World, mode: str) -> bool:
    wanted_handed = [key for key in WANTED if key in world.handed]
    return len(wanted_handed) == len(WANTED) if mode == "all" else bool(wanted_handed)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), mode=st.sampled_from(["all", "any"]), timeout=st.sampled_from([None, 0.5, 3.0, 30.0]),
       blocking=st.booleans(), posted_before=st.integers(0, 3))
def test_the_wait_machine_keeps_its_promises(data: st.DataObject, mode: str, timeout: float | None, blocking: bool,
                                            posted_before: int) -> None:
    # The machine's stale-read warnings would flood the report; tests/conftest.py puts the level back after.
    logging.getLogger("aviso_workflows.follow").setLevel(logging.ERROR)
    world = World()
    for step in range(posted_before):
        world.post(WANTED[(step * 2) % len(WANTED)])
    progress: list[int] = []
    found = Found(REQUEST, mode, on_progress=lambda p: progress.append(p.found))
    machine = WaitMachine(found, timeout=timeout, reads_state=True, patience=1.0, now=world.now, blocking=blocking)
    command = machine.start(world.now)
    for step in range(MAX_STEPS):
        if isinstance(command, Release):
            break
        if isinstance(command, Listen):  # waiting for more: it knows all that exists, and that does not release it
            assert not _released(world, mode)
            assert world.unknown() == set(), "nothing lost: what exists was handed over, or is on its way"
        world.act(data.draw(ACTIONS), step)
        try:
            command = machine.handle(world.answer(command), world.now)
        except WaitTimeout as timed_out:
            assert timeout is not None and world.now >= START + timeout, "not before the deadline"
            assert not _released(world, mode), "what releases it was never handed to it"
            assert {n.key for n in timed_out.found} <= set(world.handed)
            return
    if not isinstance(command, Release):  # still waiting after MAX_STEPS: within its time
        assert timeout is None or world.now < START + max(timeout, 1.0) + 2.0
        return
    keys = [n.key for n in command.found]
    assert _released(world, mode), "released only with what it waits for"
    assert len(keys) == len(set(keys)), "each key once"
    assert set(keys) <= set(world.handed) and set(keys) <= set(WANTED)
    if mode == "all":
        assert set(keys) == set(WANTED), "nothing lost"
    assert [n.order for n in command.found] == sorted(n.order for n in command.found), "in history order"
    assert progress == list(range(1, len(keys) + 1)), "one progress report per key found"


def test_a_wait_that_cannot_read_times_out_at_its_deadline_naming_the_outage() -> None:
    found = Found(REQUEST, "all")
    machine = WaitMachine(found, timeout=2.0, reads_state=True, patience=1.0, now=0.0)
    command = machine.handle(Readied(True), 0.0)
    assert command == ReadState(1)
    now, pauses = 0.0, []
    with pytest.raises(WaitTimeout, match="could not be read: down"):
        while True:
            command = machine.handle(ReadFailed(StoreUnavailable("down")), now)
            assert isinstance(command, Pause)
            pauses.append(command.seconds)
            now += command.seconds
            command = machine.handle(Paused(), now)
            assert isinstance(command, ReadState), "after a pause, read again"
    assert pauses[:3] == [0.1, 0.25, 0.5] and now >= 2.0


def test_a_resync_reads_again_from_the_frontier() -> None:
    found = Found(REQUEST, "all")
    machine = WaitMachine(found, timeout=None, reads_state=True, patience=1.0, now=0.0)
    machine.handle(Readied(True), 0.0)
    first = KeyValue(WANTED[0], "None", 20)
    assert machine.handle(ReadDone(20, _notifications([first])), 0.0) == Listen(1.0)
    assert machine.handle(Fed(Feed(FeedKind.RESYNC, 0)), 0.0) == ReadState(21)
