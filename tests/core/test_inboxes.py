"""A wait's inbox of shared-watch feeds, for a thread or an asyncio loop: in order, and bounded — a waiter too far
behind forgets the feeds and is told to read again (a resync), which loses nothing, as a read finds every key."""

from __future__ import annotations

import asyncio
import threading

from aviso_workflows.backends.etcd import INBOX_LIMIT, _AsyncInbox, _Inbox
from aviso_workflows.etcd import KeyValue
from aviso_workflows.follow import Feed, FeedKind


def put(key: str, revision: int) -> KeyValue:
    return KeyValue(key, "None", revision)


def test_an_asyncio_inbox_hands_feeds_in_order_and_wakes_its_waiter() -> None:
    async def scenario() -> list[Feed]:
        inbox = _AsyncInbox(asyncio.get_running_loop())
        waiting = asyncio.ensure_future(inbox.aget())
        await asyncio.sleep(0)  # not a synchronisation: lets the waiter block on its empty inbox first
        assert not waiting.done()
        # the watch's thread puts the feeds
        thread = threading.Thread(target=lambda: [inbox.on_puts([put(f"k{n}", n)], n) for n in (1, 2, 3)])
        thread.start()
        await asyncio.to_thread(thread.join, 10)
        return [await asyncio.wait_for(waiting, 10), await inbox.aget(), await inbox.aget()]

    feeds = asyncio.run(scenario())
    assert [(f.kind, f.revision, [kv.key for kv in f.puts]) for f in feeds] == [
        (FeedKind.EVENTS, n, [f"k{n}"]) for n in (1, 2, 3)]


def test_an_asyncio_inbox_too_far_behind_asks_for_a_read_then_goes_on() -> None:
    async def scenario() -> list[Feed]:
        inbox = _AsyncInbox(asyncio.get_running_loop())
        for n in range(INBOX_LIMIT + 2):
            inbox.queue_up(Feed(FeedKind.EVENTS, n + 1, [put(f"k{n}", n + 1)]))
        taken = []
        while inbox.feeds:
            taken.append(await inbox.aget())
        return taken

    feeds = asyncio.run(scenario())
    assert [f.kind for f in feeds] == [FeedKind.RESYNC, FeedKind.EVENTS]  # the rest was forgotten, then one more
    assert feeds[1].revision == INBOX_LIMIT + 2


def test_a_thread_inbox_too_far_behind_asks_for_a_read_then_goes_on() -> None:
    inbox = _Inbox()
    for n in range(INBOX_LIMIT + 2):
        inbox.on_puts([put(f"k{n}", n + 1)], n + 1)
    feeds = [inbox.get(1.0) for _ in range(2)]
    assert [f.kind for f in feeds if f is not None] == [FeedKind.RESYNC, FeedKind.EVENTS]
    assert inbox.get(0.05) is None
