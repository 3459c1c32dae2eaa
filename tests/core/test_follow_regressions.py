"""Regressions of the follow engine, one test per case of the bug report, each against a real etcd.

Cases: (1) catch-up reads at mixed revisions, (2) a re-post after a stop inside a transaction, (3) a named
cursor that never moved, (4) state instead of history, (5) joining a shared watch as its last subscriber
leaves, (6) listen_async by polling and re-posts, (7) bounded memory of a slow listener, (8) idle watches
that never move on, (9) keys of one transaction in numeric order, (10) an outage at a wait's first read.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import pytest
from core_helpers import QuietSubscriber, destination_for, diss, joined, security_helpers
from etcd_helpers import running_etcd
from tcp_proxy import TcpProxy
from threads import run_in_thread
from waiting import counting_reads, eventually, until_following

import aviso_workflows.listen as listen_module
from aviso_workflows import Notification, Request, Store, server
from aviso_workflows.config import StoreConfig
from aviso_workflows.follow import Follower
from aviso_workflows.listen import Cursor, Position, listen, listen_async
from aviso_workflows.runtime import runtime_for
from aviso_workflows.status_chain import replay
from aviso_workflows.watch import Channel, HistorySource

BOUND = 10.0  # seconds: the longest any single step below may take


# -- helpers ---------------------------------------------------------------------------------------
def days_from(date: str, count: int) -> list[str]:
    """``count`` consecutive dates of the test's own, far from the dates other tests get (``unique_date``
    hands out one day each from 2001 on): its admin keys must not land under another test's date."""
    index = (dt.datetime.strptime(date, "%Y%m%d").date() - dt.date(2001, 1, 1)).days
    first = dt.date(2400, 1, 1) + dt.timedelta(days=index * count)
    return [(first + dt.timedelta(days=i)).strftime("%Y%m%d") for i in range(count)]


def any_of(dates: list[str]) -> str:
    """A request's list of dates (``a/b/c``)."""
    return "/".join(dates)


def steps(notifications: Sequence[Notification]) -> list[str]:
    return [n.request["step"] for n in notifications]


def placed(notifications: Sequence[Notification]) -> list[tuple[int, str]]:
    return [(n.revision, n.key) for n in notifications]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def within(what: str, check: Callable[[], Any], seconds: float = BOUND) -> Any:
    """Poll ``check()`` until it returns something true; fail after ``seconds``."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"not within {seconds:g} s: {what}")


def consume(store: Store, requests_: list[Request], count: int, **options: Any) -> list[Notification]:
    """Listen, handle ``count`` notifications, then stop the listener (a cursor then holds the last one)."""
    stop = threading.Event()
    stream = listen(store, requests_, stop=stop, **options)

    def body() -> list[Notification]:
        taken = [next(stream) for _ in range(count)]
        stop.set()  # asked for once the last one is handled: the listener saves it and ends at once
        assert list(stream) == []
        return taken

    thread, outcome = run_in_thread(body)
    try:
        taken: list[Notification] = joined(thread, outcome, BOUND)
        return taken
    finally:
        stop.set()  # a listener still blocked (the test failed) ends too


def listen_until(store: Store, requests_: list[Request], until: int, **options: Any) -> list[Notification]:
    """Everything a listener delivers up to revision ``until`` (bounded)."""
    thread, outcome = run_in_thread(lambda: list(listen(store, requests_, until_revision=until, **options)))
    delivered: list[Notification] = joined(thread, outcome, BOUND)
    return delivered


@pytest.fixture
def own_etcd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[server.ServerInfo]:
    """An etcd of the test's own (stopped and started at will) that reports progress every second."""
    monkeypatch.setattr(server, "PROGRESS_INTERVAL", "1s")
    with running_etcd(tmp_path / "own-etcd") as info:
        yield info


def store_on(url: str, **settings: Any) -> Store:
    """A store on ``url`` only, whatever the environment says."""
    return Store(config=StoreConfig(endpoints=(url,), **settings))


# -- 1. catch-up reads at mixed revisions ------------------------------------------------------------
def test_a_read_of_many_prefixes_sees_one_revision(store: Store, etcd_url: str, unique_date: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A post landing between the transactions of one read is in none of them: it is after the read."""
    destination = destination_for(unique_date, "P")
    dates = days_from(unique_date, 300)
    request = store.request(diss(any_of(dates), destination=destination, step="0/6"))
    prefixes = request.read_prefixes()
    assert len(prefixes) == 300 and store.config.max_txn_ops == 128, "three read transactions"
    early = [store.notify(diss(dates[i], destination=destination, step=0)) for i in (0, 200, 299)]
    late = diss(dates[290], destination=destination, step=6)  # read by the third transaction
    producer = store_on(etcd_url)  # its own gateway: its transactions are not the wrapped ones
    posted: list[int] = []
    read_ranges = store.gateway.ranges_in_txn

    def read_then_post(prefixes: Sequence[str], **options: Any) -> Any:
        answer = read_ranges(prefixes, **options)
        if not posted:
            posted.append(producer.notify(late).revisions[-1])
        return answer

    monkeypatch.setattr(store.gateway, "ranges_in_txn", read_then_post)
    revision, kvs = store.read_prefixes(prefixes)
    assert posted, "the post landed after the first read transaction"
    assert posted[0] > revision >= max(result.revisions[-1] for result in early)
    assert sorted(kv.key for kv in kvs) == sorted(key for result in early for key in result.keys)
    assert all(kv.mod_revision <= revision for kv in kvs)
    found_now = store.read(request)[1]
    assert store.request(late).keys()[0] in {n.key for n in found_now}, "the post exists: the next read has it"


def test_a_slow_read_of_many_prefixes_is_one_snapshot_while_posts_go_on(store: Store, unique_date: str,
                                                                       delaying_proxy: TcpProxy) -> None:
    """The same without touching the store: each answer of a read comes late, while a producer posts."""
    destination = destination_for(unique_date, "Q")
    dates = days_from(unique_date, 300)
    prefixes = store.request(diss(any_of(dates), destination=destination, step="0/6")).read_prefixes()
    assert len(prefixes) == 300
    delaying_proxy.set_delay(0.2)  # three transactions, each answered late: posts land between them
    reader = store_on(delaying_proxy.url)
    reading = threading.Event()

    def produce() -> int:
        count = 0
        while reading.is_set() and count < 500:
            store.notify(diss(dates[count * 7 % 300], destination=destination, step=0))  # early and late dates
            count += 1
        return count

    reading.set()
    producer, produced = run_in_thread(produce)
    try:
        revision, kvs = reader.read_prefixes(prefixes)
    finally:
        reading.clear()
    assert joined(producer, produced, BOUND) > 10
    _, snapshot = store.read_prefixes(prefixes, revision=revision)
    assert sorted((kv.key, kv.mod_revision) for kv in kvs) == sorted((kv.key, kv.mod_revision) for kv in snapshot)
    newer = [kv for kv in store.read_prefixes(prefixes)[1] if kv.mod_revision > revision]
    assert len({kv.key for kv in newer}) > 10, "posts went on during the read, into many prefixes"


def test_a_cursor_listener_restarted_while_a_producer_posts_loses_nothing(store: Store, unique_date: str) -> None:
    destination = destination_for(unique_date, "R")
    dates = days_from(unique_date, 300)
    request = store.request(diss(any_of(dates), destination=destination, step="0/6"))
    cursor = Cursor("restarted-often")
    cursor.save(Position(store.current_revision()))
    posts = [(dates[(i * 37) % 300], "0/6" if i % 3 == 0 else i % 2 * 6) for i in range(30)]  # early and late dates
    expected: list[tuple[int, str]] = []

    def produce() -> None:
        for date, step in posts:
            result = store.notify(diss(date, destination=destination, step=step))  # one transaction each
            expected.extend((result.revisions[-1], key) for key in result.keys)
            time.sleep(0.01)

    total = sum(2 if step == "0/6" else 1 for _, step in posts)
    producer, produced = run_in_thread(produce)
    delivered: list[Notification] = []
    restarts = 0
    while len(delivered) < total:  # each round delivers at least one or fails: bounded
        delivered += consume(store, [request], min(5, total - len(delivered)), cursor=cursor)
        restarts += 1
    joined(producer, produced, BOUND)
    assert restarts >= 5
    assert placed(delivered) == expected, "every post once, in write order"


# -- 2. re-post after a stop inside a transaction ------------------------------------------------------
def _handle_first(store: Store, request: Request, cursor: Cursor, ending: str) -> Notification:
    """One notification handled, then the listener ended by its stop event or by closing the generator."""
    if ending == "stop":
        (first,) = consume(store, [request], 1, cursor=cursor)
        return first

    def take_one_and_close() -> Notification:
        stream = cast(Generator[Notification, None, None], listen(store, [request], cursor=cursor))
        first = next(stream)
        stream.close()
        return first

    thread, outcome = run_in_thread(take_one_and_close)
    handled: Notification = joined(thread, outcome, BOUND)
    return handled


@pytest.mark.parametrize("ending", ["stop", "close"])
def test_a_repost_after_a_stop_inside_a_transaction(store: Store, unique_date: str, ending: str) -> None:
    destination = destination_for(unique_date, "M")
    request = store.request(diss(unique_date, destination=destination, step=None))
    cursor = Cursor(f"mid-transaction-{ending}")
    cursor.save(Position(store.current_revision()))
    first_post = store.notify(diss(unique_date, destination=destination, step="0/6/12")).revisions
    assert len(first_post) == 1, "the three keys are one transaction"
    handled = _handle_first(store, request, cursor, ending)
    assert (handled.revision, steps([handled])) == (first_post[0], ["0"])
    saved = cursor.load()
    assert saved is not None and saved.order <= handled.order, "the cursor holds at most the first key"
    if ending == "stop":
        assert saved == Position(handled.revision, handled.key), "stopped after step 0: saved inside the transaction"
    repost = store.notify(diss(unique_date, destination=destination, step="0/6/12")).revisions[-1]
    resumed = listen_until(store, [request], repost, cursor=cursor)
    again = ["0"] if saved.order < handled.order else []  # closed before it was handled: delivered again
    assert [(n.revision, n.request["step"]) for n in resumed] == (
        [(first_post[0], s) for s in [*again, "6", "12"]] + [(repost, s) for s in ("0", "6", "12")])


# -- 3. a named cursor that never moved --------------------------------------------------------------
@pytest.mark.parametrize("ended_by", ["stop", "until_revision"])
def test_a_cursor_that_never_moved_resumes_from_its_first_start(store: Store, unique_date: str, ended_by: str) -> None:
    destination = destination_for(unique_date, "N")
    request = store.request(diss(unique_date, destination=destination, step=None))
    cursor = Cursor(f"never-moved-{ended_by}")
    if ended_by == "stop":
        stop = threading.Event()
        thread, outcome = run_in_thread(lambda: list(listen(store, [request], cursor=cursor, stop=stop)))
        time.sleep(0.3)  # the listener runs and hears nothing
        stop.set()
    else:  # nothing was posted for this destination yet: the listen ends at once
        thread, outcome = run_in_thread(lambda: list(listen(store, [request], cursor=cursor,
                                                            until_revision=store.current_revision())))
    assert joined(thread, outcome, BOUND) == []
    store.notify(diss(unique_date, destination=destination, step=6))
    assert steps(consume(store, [request], 1, cursor=cursor)) == ["6"]


# -- 4. state, not history --------------------------------------------------------------------------------
def test_a_key_posted_twice_while_away_is_delivered_twice(store: Store, unique_date: str) -> None:
    destination = destination_for(unique_date, "S")
    request = store.request(diss(unique_date, destination=destination, step=None))
    cursor = Cursor("away")
    cursor.save(Position(store.current_revision()))
    started = utc_now() - dt.timedelta(minutes=1)
    store.notify(diss(unique_date, destination=destination, step=0), location="file:///first")
    store.notify(diss(unique_date, destination=destination, step=6))
    last = store.notify(diss(unique_date, destination=destination, step=0), location="file:///second").revisions[-1]
    expected = [("0", "file:///first"), ("6", None), ("0", "file:///second")]
    resumed = listen_until(store, [request], last, cursor=cursor)
    assert [(n.request["step"], n.location) for n in resumed] == expected
    window = replay(store, [request], started, utc_now() + dt.timedelta(minutes=1))
    assert [(n.request["step"], n.location) for n in window] == expected


# -- 5. joining a shared watch as its last subscriber leaves ------------------------------------------------

def test_a_join_right_after_the_last_leave_gets_a_live_watch(store: Store, unique_date: str) -> None:
    prefix = f"/ec/diss/{destination_for(unique_date, 'H')}/"
    first, second, third = QuietSubscriber(), QuietSubscriber(), QuietSubscriber()
    watch = runtime_for(store).hub.join(store.config, prefix, first, None)
    ended = runtime_for(store).hub.leave(store.config, prefix, first)
    assert ended is watch, "the last one out gets the watch to stop"
    joined_after = runtime_for(store).hub.join(store.config, prefix, second, None)  # before the ended watch is stopped
    assert joined_after is not watch and joined_after.alive
    ended.stop()
    assert not watch.alive and joined_after.alive
    assert joined_after.wait_ready(BOUND)
    assert runtime_for(store).hub.join(store.config, prefix, third, None) is joined_after, "one watch is shared"
    assert runtime_for(store).hub.leave(store.config, prefix, third) is None
    last = runtime_for(store).hub.leave(store.config, prefix, second)
    assert last is joined_after
    last.stop()
    again = runtime_for(store).hub.join(store.config, prefix, first, None)  # after the stop: a new one
    try:
        assert again is not joined_after and again.alive
    finally:
        stopped = runtime_for(store).hub.leave(store.config, prefix, first)
        assert stopped is again
        stopped.stop()


def test_short_waits_racing_with_joins_and_leaves_all_return(store: Store, unique_date: str) -> None:
    destination = destination_for(unique_date, "J")
    raw = diss(unique_date, destination=destination, step="0/6")
    store.notify(raw)
    prefix = f"/ec/diss/{destination}/"
    durations: list[float] = []
    waiters_done = threading.Event()

    def waiter() -> None:
        for _ in range(15):
            started = time.monotonic()
            assert len(store.wait(raw, timeout=3)) == 2
            durations.append(time.monotonic() - started)

    def joiner() -> int:
        """Joins and leaves as fast as it can, so that waits often start or end a watch."""
        rounds = 0
        while not waiters_done.is_set() and rounds < 2_000:
            subscriber = QuietSubscriber()
            watch = runtime_for(store).hub.join(store.config, prefix, subscriber, None)
            assert watch.wait_ready(BOUND) and watch.alive
            ended = runtime_for(store).hub.leave(store.config, prefix, subscriber)
            if ended is not None:
                ended.stop()
            rounds += 1
        return rounds

    waiters = [run_in_thread(waiter) for _ in range(8)]
    joiners = [run_in_thread(joiner) for _ in range(2)]
    deadline = time.monotonic() + 30
    try:
        for thread, outcome in waiters:
            joined(thread, outcome, max(0.1, deadline - time.monotonic()))
    finally:
        waiters_done.set()
    assert all(joined(thread, outcome, BOUND) > 0 for thread, outcome in joiners)
    assert len(durations) == 8 * 15 and max(durations) < 2.5, "no wait hung until its timeout"
    assert not [w for w in runtime_for(store).watches() if w.prefix == prefix], "the last one out stopped the watch"


def test_a_join_racing_with_the_last_leave_never_gets_a_watch_that_is_stopped(store: Store, unique_date: str) -> None:
    """Round after round, one subscriber leaves (the last one) while another joins at the same moment:
    the joiner's watch gets ready and stays alive for as long as it is subscribed."""
    prefix = f"/ec/diss/{destination_for(unique_date, 'K')}/"
    rounds = 60
    barrier = threading.Barrier(2, timeout=BOUND)

    def leave(subscriber: QuietSubscriber) -> None:
        ended = runtime_for(store).hub.leave(store.config, prefix, subscriber)
        if ended is not None:
            ended.stop()

    def last_out() -> None:
        for _ in range(rounds):
            subscriber = QuietSubscriber()
            assert runtime_for(store).hub.join(store.config, prefix, subscriber, None).wait_ready(BOUND)
            barrier.wait()  # alone on the watch: this leave is the last one, racing with the join
            leave(subscriber)
            barrier.wait()

    def joiner() -> None:
        for index in range(rounds):
            subscriber = QuietSubscriber()
            barrier.wait()
            time.sleep(index % 5 * 0.0003)  # land before, inside and after the leave
            watch = runtime_for(store).hub.join(store.config, prefix, subscriber, None)
            assert watch.wait_ready(BOUND)
            time.sleep(0.005)  # subscribed a while: the racing leave has stopped whatever it took out
            assert watch.alive, f"round {index}: the watch was stopped under a subscriber"
            leave(subscriber)
            barrier.wait()

    threads = [run_in_thread(last_out), run_in_thread(joiner)]
    for thread, outcome in threads:
        joined(thread, outcome, 30)
    assert not [w for w in runtime_for(store).watches() if w.prefix == prefix]


# -- 6. listen_async by polling delivers re-posts ----------------------------------------------------------
async def test_listen_async_by_polling_delivers_reposts_of_a_key(store: Store, etcd_url: str,
                                                                 unique_date: str) -> None:
    destination = destination_for(unique_date, "A")
    raw = diss(unique_date, destination=destination, step=0)
    with security_helpers().AuthProxy(etcd_url, tokens=["reader"]) as proxy:
        reader = store_on(proxy.url, poll_interval=0.1, token="reader", transport="gateway")  # an HTTP proxy
        start = Position(await asyncio.to_thread(store.current_revision))
        stream = listen_async(reader, [reader.request(diss(unique_date, destination=destination, step=None))],
                              after=start)
        heard: list[Notification] = []
        try:
            # each re-post once the previous one was heard: a poll sees only the latest post of a key
            for location in ("file:///a", "file:///b", "file:///c"):
                await asyncio.to_thread(store.notify, raw, location=location)
                heard.append(await asyncio.wait_for(anext(stream), BOUND))
        finally:
            await stream.aclose()
    assert [n.location for n in heard] == ["file:///a", "file:///b", "file:///c"]
    assert [n.revision for n in heard] == sorted({n.revision for n in heard})
    assert "/v3/watch" in proxy.paths(403), "the listener polled because the watch was refused"


# -- 7. bounded memory -------------------------------------------------------------------------------------------
@pytest.fixture
def most_queued(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many notifications the listeners' followers held at most, in its only item."""
    most: list[int] = [0]

    class Watched(Follower):
        def pop(self) -> Notification | None:
            most[0] = max(most[0], self.pending)
            return super().pop()

    monkeypatch.setattr(listen_module, "Follower", Watched)
    return most


def test_a_slow_listener_with_a_small_capacity_gets_a_burst_in_order(store: Store, unique_date: str,
                                                                      most_queued: list[int]) -> None:
    destination = destination_for(unique_date, "C")
    request = store.request(diss(unique_date, destination=destination, step=None))
    start = Position(store.current_revision())
    stop = threading.Event()

    def slow_consumer() -> list[Notification]:
        taken: list[Notification] = []
        for notification in listen(store, [request], after=start, stop=stop, capacity=5):
            taken.append(notification)
            time.sleep(0.004)
            if len(taken) == 200:
                stop.set()
        return taken

    thread, outcome = run_in_thread(slow_consumer)
    try:
        posted = store.notify(diss(unique_date, destination=destination, step="0/to/199"))
        taken = joined(thread, outcome, 30)
    finally:
        stop.set()
    assert len(posted.revisions) == 2, "127 keys, then 73: two transactions"
    assert steps(taken) == [str(s) for s in range(200)]
    assert most_queued[0] <= 5, "the follower held the rest of each answer instead of queuing it"


def test_a_listener_far_behind_with_a_small_capacity_gets_all_of_history_in_order(
        store: Store, unique_date: str, most_queued: list[int]) -> None:
    """etcd answers a watch far behind with hundreds of revisions at once: the follower queues ``capacity``
    of them and holds the rest of the answer, never more."""
    destination = destination_for(unique_date, "F")
    start = Position(store.current_revision())
    for date in days_from(unique_date, 60):  # 60 transactions of 127 keys: one answer of etcd
        store.notify(diss(date, destination=destination, step="0/to/126"))
    request = store.request(diss(unique_date, destination=destination, step=None, date=None))
    thread, outcome = run_in_thread(lambda: list(listen(store, [request], after=start, capacity=50,
                                                        until_revision=store.current_revision())))
    heard = joined(thread, outcome, 60)
    assert [(n.request["date"], int(n.request["step"])) for n in heard] == [
        (date, step) for date in days_from(unique_date, 60) for step in range(127)]
    assert most_queued[0] <= 50


# -- 8. idle watches move on with the store ------------------------------------------------------------------------
def test_a_quiet_watch_moves_on_with_progress_notifications(own_etcd: server.ServerInfo, tmp_path: Path) -> None:
    store = store_on(own_etcd.client_url)
    date = "20240101"
    quiet = store.request(diss(date, destination="QUIET", step=None))
    channel = Channel()
    source = HistorySource(store.config, "/ec/diss/QUIET/", store.current_revision() + 1, channel, "quiet",
                           lambda prefix, since, revision: store.read_prefixes([prefix], min_revision=since,
                                                                               revision=revision))
    cursor = Cursor("quiet", tmp_path / "cursors")
    stop = threading.Event()
    with source:
        listener, listened = run_in_thread(lambda: list(listen(store, [quiet], cursor=cursor, stop=stop)))
        try:
            within("the listener saved its start", cursor.load)
            busy_last = max(store.notify(diss(date, destination="BUSY", step=s)).revisions[-1] for s in range(20))
            progress = None
            until = time.monotonic() + 8  # progress comes every second
            while progress is None and time.monotonic() < until:
                feed = channel.get(0.2)
                if feed is not None:
                    assert feed.kind == "progress", "nothing happens under the quiet prefix"
                    progress = feed if feed.revision >= busy_last else None
            assert progress is not None, "no progress notification reached the quiet watch"
            assert source.connections_opened == 1, "moved on without reconnecting"
            assert source.next_revision > busy_last
            within("the quiet listener's cursor moved past the busy posts",
                   lambda: (saved := cursor.load()) is not None and saved.revision >= busy_last)
        finally:
            stop.set()
        assert joined(listener, listened, BOUND) == []


# -- 9. order inside a transaction ----------------------------------------------------------------------------------
def test_keys_of_one_transaction_come_in_numeric_order_everywhere(store: Store, unique_date: str) -> None:
    destination = destination_for(unique_date, "O")
    raw = diss(unique_date, destination=destination, step="0/to/120/by/12")
    expected = [str(s) for s in range(0, 121, 12)]  # as text 108 would come before 12
    request = store.request(diss(unique_date, destination=destination, step=None))
    stop = threading.Event()
    stream = listen(store, [request], after=Position(store.current_revision()), stop=stop)
    listener, listened = run_in_thread(lambda: [next(stream) for _ in expected])  # from a revision before the post
    progress_live: list[str] = []
    reads = counting_reads(store)
    waiter, waited = run_in_thread(lambda: store.wait(raw, timeout=BOUND,
                                                      on_progress=lambda _d, _t, n: progress_live.append(
                                                          n.request["step"])))
    until_following(store, raw)  # the wait follows the store and has read what exists: the post comes live
    eventually(lambda: reads[0] >= 1, what="the wait's first read")
    try:
        assert len(store.notify(raw).revisions) == 1, "one transaction"
        heard = joined(listener, listened, BOUND)
    finally:
        stop.set()
    assert steps(heard) == expected and heard[-1].request["step"] == "120"
    assert steps(joined(waiter, waited, BOUND)) == expected
    assert progress_live == expected
    progress_read: list[str] = []  # a wait that finds them already posted
    assert steps(store.wait(raw, timeout=BOUND, on_progress=lambda _d, _t, n: progress_read.append(
        n.request["step"]))) == expected
    assert progress_read == expected
    assert steps(store.get(raw)) == expected


# -- 10. an outage at a wait's first read --------------------------------------------------------------------------
@pytest.mark.parametrize("watch", ["new", "following"])
def test_a_wait_started_while_etcd_is_down_is_released_once_it_is_back(own_etcd: server.ServerInfo,
                                                                        watch: str) -> None:
    """``new``: the wait starts the shared watch, which cannot learn its start; ``following``: another
    subscriber holds a watch that is ready, so the wait goes straight to its first read, which fails."""
    store = store_on(own_etcd.client_url)
    raw = diss("20240101", destination="OUTAGE", step=0)
    prefix, holder = "/ec/diss/OUTAGE/", QuietSubscriber()
    if watch == "following":
        assert runtime_for(store).hub.join(store.config, prefix, holder, None).wait_ready(BOUND)
    try:
        server.stop(own_etcd.data_dir)
        thread, outcome = run_in_thread(lambda: store.wait(raw, timeout=20))
        time.sleep(1.0)  # not a synchronisation: the outage lasts a while, and the wait must not end in it
        assert thread.is_alive(), "the wait rides the outage out"
        server.start(own_etcd.data_dir, port=own_etcd.port)
        store.notify(raw)
        found = joined(thread, outcome, 20)
    finally:
        ended = runtime_for(store).hub.leave(store.config, prefix, holder)
        if ended is not None:
            ended.stop()
    assert [n.key for n in found] == store.request(raw).keys()
