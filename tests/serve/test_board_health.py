"""The board's record of etcd's reachability (no I/O: the moments are given, as the server gives them)."""

from __future__ import annotations

import datetime as dt

from aviso_workflows.serve.board_model import HEALTH_EVENTS_KEPT, StoreHealth

T0 = dt.datetime(2026, 12, 6, 3, 0, 5)


def test_an_outage_is_reported_once_with_its_start_and_its_end_with_its_duration() -> None:
    health = StoreHealth()
    assert health.update(None, T0) is False and health.to_dict(T0)["message"] == ""
    assert health.update("socket closed", T0) is True
    assert health.update("connection refused", T0 + dt.timedelta(seconds=3)) is False  # the same outage
    down = health.to_dict(T0 + dt.timedelta(seconds=7))
    assert down["reachable"] is False and down["since"] == "2026-12-06T03:00:05Z" and down["down_for_s"] == 7
    assert down["error"] == "socket closed"
    assert down["message"].startswith("etcd unreachable since 03:00:05 UTC (7 s) — waits ride it out until "
                                      "their timeout")
    assert health.update(None, T0 + dt.timedelta(seconds=20)) is True
    back = health.to_dict(T0 + dt.timedelta(seconds=21))
    assert back["reachable"] is True and back["message"] == "etcd reachable again after 20 s"
    assert [e["kind"] for e in back["events"]] == ["reachable", "unreachable"]
    assert back["events"][0]["since"] == down["since"]


def test_only_the_latest_outages_are_kept() -> None:
    health = StoreHealth()
    for n in range(HEALTH_EVENTS_KEPT):
        health.update("down", T0 + dt.timedelta(minutes=2 * n))
        health.update(None, T0 + dt.timedelta(minutes=2 * n + 1))
    events = health.to_dict(T0)["events"]
    assert len(events) == HEALTH_EVENTS_KEPT
    assert events[0]["at"] == (T0 + dt.timedelta(minutes=2 * HEALTH_EVENTS_KEPT - 1)).strftime("%Y-%m-%dT%H:%M:%SZ")
