"""The follower without any I/O: feed it what a source would produce, check what ``pop()`` gives."""

from __future__ import annotations

import pytest
from core_helpers import mars, mars_key

from aviso_workflows.errors import StoreUnavailable
from aviso_workflows.etcd import KeyValue
from aviso_workflows.follow import Feed, Follower
from aviso_workflows.notification import Notification
from aviso_workflows.position import Position
from aviso_workflows.request import Request, split_event

DATE = "20240301"
OTHER_DATE = "20240302"
STATUS_KEY = "/ec/mars/"


def request(**fields: object) -> Request:
    return Request.build(*split_event(mars(DATE, step=None, **fields)))


def put(revision: int, step: int | str, value: str = "None", date: str = DATE) -> KeyValue:
    return KeyValue(mars_key(date, step), value, revision)


def follower(start: Position = Position(10), **options: object) -> Follower:
    return Follower([request()], start, **options)  # type: ignore[arg-type]


def take_all(follow: Follower) -> list[Notification]:
    """Pop and handle every queued notification, as a consumer does."""
    taken: list[Notification] = []
    while (notification := follow.pop()) is not None:
        taken.append(notification)
        follow.handled(notification)
    return taken


def steps(notifications: list[Notification]) -> list[tuple[int, str]]:
    return [(n.revision, n.request["step"]) for n in notifications]


def test_keys_of_one_revision_come_by_their_values_numbers_numerically() -> None:
    follow = follower()
    follow.feed(Feed("events", 11, [put(11, s) for s in (120, 12, 0, 108, 24)]))
    assert steps(take_all(follow)) == [(11, "0"), (11, "12"), (11, "24"), (11, "108"), (11, "120")]


def test_revisions_in_order_whatever_order_the_puts_come_in() -> None:
    follow = follower()
    follow.feed(Feed("events", 13, [put(13, 0), put(11, 6), put(12, 3)]))
    assert steps(take_all(follow)) == [(11, "6"), (12, "3"), (13, "0")]


def test_a_key_posted_twice_is_two_notifications() -> None:
    follow = follower()
    follow.feed(Feed("events", 12, [put(11, 0, "a"), put(12, 0, "b")]))
    assert [(n.revision, n.location) for n in take_all(follow)] == [(11, "a"), (12, "b")]


def test_nothing_at_or_before_the_start_position() -> None:
    follow = follower(Position(10))
    follow.feed(Feed("events", 11, [put(9, 0), put(10, 6), put(11, 12)]))
    assert steps(take_all(follow)) == [(11, "12")]


def test_a_start_inside_a_revision_resumes_at_its_next_key() -> None:
    """A cursor saved after the first key of a transaction: the rest of that transaction comes next."""
    follow = follower(Position(11, mars_key(DATE, 12)))
    follow.feed(Feed("events", 12, [put(11, s) for s in (0, 12, 108, 24)] + [put(12, 0)]))
    assert steps(take_all(follow)) == [(11, "24"), (11, "108"), (12, "0")]


def test_feeding_overlapping_history_again_delivers_nothing_twice() -> None:
    follow = follower()
    follow.feed(Feed("events", 12, [put(11, 0), put(12, 6)]))
    first = take_all(follow)
    follow.feed(Feed("events", 13, [put(11, 0), put(12, 6), put(13, 12)]))  # a source restarted earlier
    assert steps(first) == [(11, "0"), (12, "6")]
    assert steps(take_all(follow)) == [(13, "12")]


def test_a_snapshot_after_history_delivers_only_what_is_newer() -> None:
    follow = follower()
    follow.feed(Feed("events", 12, [put(12, 0)]))
    take_all(follow)
    follow.feed(Feed("snapshot", 15, [put(12, 0), put(14, 6), put(15, 0, "again")]))
    assert [(n.revision, n.request["step"], n.location) for n in take_all(follow)] == [
        (14, "6", None), (15, "0", "again")]


def test_keys_that_do_not_match_are_dropped_but_pass_the_frontier() -> None:
    follow = follower()
    follow.feed(Feed("events", 13, [put(11, 0, date=OTHER_DATE), KeyValue(STATUS_KEY, "{}", 12),
                                    KeyValue("/ec/mars/not-a-data-key", "x", 13)]))
    assert follow.pop() is None
    assert follow.frontier == Position(13) and follow.position == Position(13)


def test_position_moves_as_the_consumer_handles_notifications() -> None:
    follow = follower()
    follow.feed(Feed("events", 14, [put(11, 0), put(11, 6), put(12, 0)]))
    first = follow.pop()
    assert first is not None
    assert follow.position == Position(10), "nothing handled yet"
    follow.handled(first)
    assert follow.position == Position(11, mars_key(DATE, 0))
    take_all(follow)
    assert follow.position == Position(14), "with the queue empty, everything fed is handled"


def test_progress_moves_a_quiet_follower_on() -> None:
    follow = follower()
    follow.feed(Feed("progress", 50))
    assert follow.frontier == Position(50) and follow.position == Position(50)
    follow.feed(Feed("progress", 40))  # an older report changes nothing
    assert follow.frontier == Position(50)
    follow.feed(Feed("events", 51, [put(50, 0), put(51, 6)]))  # up to 50 is passed
    assert steps(take_all(follow)) == [(51, "6")]


def test_progress_does_not_move_the_position_past_a_notification_in_hand() -> None:
    follow = follower()
    follow.feed(Feed("events", 11, [put(11, 0)]))
    in_hand = follow.pop()
    assert in_hand is not None
    follow.feed(Feed("progress", 20))
    assert follow.position == Position(10), "the consumer has not handled step 0 yet"
    follow.handled(in_hand)
    assert follow.position == Position(20)


def test_capacity_holds_the_rest_of_a_feed_until_the_queue_empties() -> None:
    follow = follower(capacity=2)
    follow.feed(Feed("events", 12, [put(11, s) for s in (0, 6, 12)] + [put(12, 0)]))
    assert follow.pending == 2, "no more than the capacity is queued"
    assert follow.frontier == Position(11, mars_key(DATE, 6)), "the frontier is the last one queued"
    follow.feed(Feed("progress", 30))
    assert follow.frontier == Position(11, mars_key(DATE, 6)), "held notifications keep the frontier back"
    first = [follow.pop(), follow.pop()]
    assert None not in first and follow.pending == 0
    for notification in first:
        assert notification is not None
        follow.handled(notification)
    assert follow.position == Position(11, mars_key(DATE, 6)), "the held rest is not handled yet"
    rest = take_all(follow)
    assert steps([n for n in first if n is not None] + rest) == [(11, "0"), (11, "6"), (11, "12"), (12, "0")]
    assert follow.frontier == Position(12) and follow.position == Position(12)


def test_until_ends_a_finite_follow() -> None:
    follow = follower(until=12)
    follow.feed(Feed("events", 13, [put(11, 0), put(12, 6), put(13, 12)]))
    assert not follow.finished, "two notifications are still queued"
    assert steps(take_all(follow)) == [(11, "0"), (12, "6")]
    assert follow.finished


def test_a_quiet_finite_follow_finishes_with_progress() -> None:
    follow = follower(until=12)
    assert not follow.finished
    follow.feed(Feed("progress", 12))
    assert follow.finished


def test_found_notifications_are_ordered_and_deduplicated_against_the_frontier() -> None:
    """A wait's first read hands matched notifications; the shared watch may repeat some later."""
    follow = follower(capacity=None)
    found = [Notification("mars", {"step": s}, None, mars_key(DATE, s), 11) for s in ("12", "0", "108")]
    follow.on_found(found, 11)
    follow.feed(Feed("events", 12, [put(11, 0), put(12, 6)]))
    assert [n.request["step"] for n in follow.drain()] == ["0", "12", "108", "6"]
    assert follow.position == Position(12)


def test_several_requests_share_one_order() -> None:
    follow = Follower([request(time=0), request(time=12)], Position(10))
    follow.feed(Feed("events", 12, [put(12, 0), KeyValue(mars_key(DATE, 6, "12"), "None", 11),
                                    KeyValue(mars_key(DATE, 0, "06"), "None", 11)]))
    assert [(n.revision, n.request["time"]) for n in take_all(follow)] == [(11, "12"), (12, "00")]


def test_a_compaction_report_is_only_a_report_the_snapshot_does_the_work() -> None:
    follow = follower()
    follow.feed(Feed("compacted", 20))
    assert follow.pop() is None and follow.frontier == Position(10)
    follow.feed(Feed("snapshot", 20, [put(15, 0), put(20, 6)]))
    assert steps(take_all(follow)) == [(15, "0"), (20, "6")]


def test_a_failure_raises_its_error_and_unknown_feeds_are_refused() -> None:
    follow = follower()
    with pytest.raises(StoreUnavailable, match="gone"):
        follow.feed(Feed("failure", 0, error=StoreUnavailable("gone")))
    with pytest.raises(ValueError, match="rumour"):
        follow.feed(Feed("rumour", 1))


def test_a_finite_follow_resumed_inside_its_last_revision_is_not_finished_before_the_rest() -> None:
    follow = follower(Position(12, mars_key(DATE, 0)), until=12)
    assert not follow.finished, "the rest of revision 12 is still to come"
    follow.feed(Feed("events", 12, [put(12, s) for s in (0, 6, 12)]))
    assert steps(take_all(follow)) == [(12, "6"), (12, "12")]
    assert follow.finished
