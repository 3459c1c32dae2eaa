"""The Aviso 2 client on its own: endpoints, filters, starts, and frames from a scripted real HTTP server."""

from __future__ import annotations

import base64
import logging
import threading
import time

import pytest
from scripted_server import ScriptedServer, cloud_event, control, frame, heartbeat

from aviso_workflows import Store, ValidationError
from aviso_workflows.aviso2 import (
    AvisoRefused,
    AvisoServerError,
    ReplayLimitReached,
    identifier_filter,
    since_of,
    start_of,
    wait_start,
)
from aviso_workflows.config import StoreConfig
from aviso_workflows.errors import PermissionDenied
from aviso_workflows.position import Position

FIELDS = {"class": "od", "expver": "0001", "domain": "g", "stream": "oper", "time": "00"}
IDENTIFIER = {**FIELDS, "date": "20260101", "step": "6"}


def test_endpoints_are_normalised_and_never_mixed() -> None:
    assert StoreConfig(endpoints=("aviso+https://aviso.example.int",)).endpoints == ("aviso+https://aviso.example.int:443",)
    assert StoreConfig(endpoints=("AVISO+HTTP://127.0.0.1:8000/prefix/",)).endpoints == \
        ("aviso+http://127.0.0.1:8000/prefix",)
    with pytest.raises(ValidationError) as mixed:
        StoreConfig(endpoints=("aviso+http://127.0.0.1:8000", "http://127.0.0.1:2379"))
    assert mixed.value.field == "endpoints" and "not both" in str(mixed.value)
    with pytest.raises(ValidationError, match="endpoint.*credentials go in"):
        StoreConfig(endpoints=("aviso+http://user:secret@127.0.0.1:8000",))
    with pytest.raises(ValidationError, match="replay_lookback_hours"):
        StoreConfig(endpoints=("aviso+http://127.0.0.1:8000",), replay_lookback_hours=-1)


#: The identifier handlers of aviso-server 0.7.1's configuration/config.yaml.example, mars event.
EXAMPLE_HANDLERS = {"class": {"type": "StringHandler", "required": True}, "date": {"type": "DateHandler"},
                    "domain": {"type": "EnumHandler", "values": list("abcdefghijklmnopqrstuvwxyz")},
                    "expver": {"type": "ExpverHandler"}, "step": {"type": "IntHandler"},
                    "stream": {"type": "StringHandler"}, "time": {"type": "TimeHandler"}}


def test_identifier_covers_every_request_in_forms_the_server_accepts() -> None:
    """aviso-server 0.7.1 (aviso-validators/src/constraints.rs, src/notification/processor.rs): constraint
    objects on int/enum fields only (numbers for int), scalars elsewhere; free strings keep their case there,
    so they are matched here; a required one is sent as the wildcard ``*``."""
    store = Store(["aviso+http://127.0.0.1:1"])
    one = store.request("mars", {**FIELDS, "date": "20260101", "step": "0/to/12"})
    assert identifier_filter([one], EXAMPLE_HANDLERS) == ("mars", {
        "class": "*", "date": "20260101", "domain": "g", "expver": "0001", "time": "0000",
        "step": {"between": [0, 12]}})
    two = store.request("mars", {**FIELDS, "date": "20260102", "step": "0/6", "time": "0/12"})
    event, identifier = identifier_filter([store.request("mars", {**FIELDS, "date": "20260101", "step": 24}), two],
                                          EXAMPLE_HANDLERS)
    assert "date" not in identifier and "time" not in identifier and identifier["step"] == {"in": [0, 6, 24]}
    domains = store.request("mars", {**FIELDS, "domain": "g/m", "date": "20260101"})
    assert identifier_filter([domains], EXAMPLE_HANDLERS)[1]["domain"] == {"in": ["g", "m"]}
    open_step = store.request("mars", {**FIELDS, "date": "20260101"})
    assert "step" not in identifier_filter([one, open_step], EXAMPLE_HANDLERS)[1]
    # Without the server's schema: our enums may be its free strings, so they are left to our side.
    assert identifier_filter([one]) == ("mars", {"date": "20260101", "expver": "0001", "time": "0000",
                                                 "step": {"between": [0, 12]}})
    # A server that requires one date cannot be asked for two: said at once, naming the field.
    with pytest.raises(ValidationError, match="requires one value of date"):
        identifier_filter([store.request("mars", {**FIELDS, "date": "20260101/20260102"})],
                          {**EXAMPLE_HANDLERS, "date": {"type": "DateHandler", "required": True}})
    with pytest.raises(ValidationError, match="one event"):
        identifier_filter([one, store.request("dissemination", {**FIELDS, "destination": "X", "date": "20260101",
                                                                  "target": "t", "step": 0})])


def test_a_wait_replays_from_its_earliest_date_and_a_position_resumes_after_it() -> None:
    store = Store(["aviso+http://127.0.0.1:1"])
    request = store.request("mars", {**FIELDS, "date": ["20260103", "20260102"], "step": 0})
    assert since_of(wait_start(request, 0)) == "2026-01-02T00:00:00Z"
    assert since_of(wait_start(request, 6)) == "2026-01-01T18:00:00Z"
    assert wait_start(store.request("mars", {**FIELDS, "step": 0}), 0) == Position(0)
    assert start_of(Position(0)) == {"from_id": "1"}
    assert start_of(Position(41)) == {"from_id": "42"}
    assert start_of(Position(41, "/ec/mars/date=...")) == {"from_id": "41"}  # inside it: the follower drops the rest


def test_notify_errors_carry_the_servers_code_and_message_and_credentials_are_sent() -> None:
    with ScriptedServer() as server:
        server.notify_answers += [(400, {"code": "INVALID_NOTIFICATION_REQUEST", "message": "step is bad",
                                         "request_id": "r-1"}),
                                  (401, {"code": "UNAUTHORIZED", "message": "Authentication is required"}),
                                  (200, {"status": "success"})]
        store = Store([server.endpoint], username="reader", password="s3cret-pw")
        with pytest.raises(AvisoServerError) as refused:
            store.notify("mars", IDENTIFIER, location="file:///a")
        assert refused.value.code == "INVALID_NOTIFICATION_REQUEST" and "step is bad" in str(refused.value)
        assert "r-1" in str(refused.value) and "s3cret" not in str(refused.value)
        with pytest.raises(AvisoRefused) as unauthorized:
            store.notify("mars", IDENTIFIER)
        assert isinstance(unauthorized.value, PermissionDenied) and "UNAUTHORIZED" in str(unauthorized.value)
        assert store.notify("mars", IDENTIFIER, location="file:///b").keys
        assert server.bodies[-1] == {"event_type": "mars", "identifier": IDENTIFIER, "payload": "file:///b"}
        assert server.headers[-1]["authorization"] == "Basic " + base64.b64encode(b"reader:s3cret-pw").decode()
        bearer = Store([server.endpoint], token="tok-123")
        bearer.notify("mars", IDENTIFIER)
        assert server.headers[-1]["authorization"] == "Bearer tok-123"
        assert "tok-123" not in repr(bearer) and "s3cret" not in repr(store)
        with pytest.raises(ValidationError, match="ttl"):
            store.notify("mars", IDENTIFIER, ttl=60)


def _listen(store: Store, after: Position, stop: threading.Event) -> list[object]:
    got: list[object] = []
    try:
        for notification in store.listen(store.request("mars", IDENTIFIER), after=after, stop=stop):
            got.append(notification)
    except Exception as error:  # noqa: BLE001 - the test looks at what ended the listener
        got.append(error)
    return got


def test_a_replay_cut_at_the_servers_cap_is_an_error_that_says_so() -> None:
    with ScriptedServer() as server:
        server.streams.append([control("replay_started", from_sequence=5), cloud_event(5, IDENTIFIER, "file:///5"),
                               control("notification_replay_limit_reached", max_allowed=1), 30.0])
        got = _listen(Store([server.endpoint]), Position(4), threading.Event())
    assert [n.revision for n in got[:-1]] == [5]  # type: ignore[attr-defined]
    assert isinstance(got[-1], ReplayLimitReached)
    assert "cap of 1" in str(got[-1]) and "after sequence 5" in str(got[-1])
    assert server.bodies[0]["from_id"] == "5"


def test_a_silent_stream_is_reopened_from_the_last_notification(caplog: pytest.LogCaptureFixture) -> None:
    """Heartbeats every 0.2 s, then silence: after three periods the stream counts as cut."""
    with ScriptedServer() as server:
        server.streams.append([control("replay_started", from_sequence=1), cloud_event(7, IDENTIFIER),
                               heartbeat(), 0.2, heartbeat(), 0.2, heartbeat(), 30.0])
        server.streams.append([control("replay_started", from_sequence=8),
                               frame("error", {"error": "CloudEvent creation failed", "message": "bad topic",
                                               "sequence": 8}),
                               cloud_event(9, IDENTIFIER, kind="live-notification"), 30.0])
        stop = threading.Event()
        store = Store([server.endpoint])
        started = time.monotonic()
        got = []
        with caplog.at_level(logging.WARNING, logger="aviso_workflows"):
            for notification in store.listen(store.request("mars", IDENTIFIER), after=Position(0), stop=stop):
                got.append(notification.revision)
                if len(got) == 2:
                    break
        elapsed = time.monotonic() - started
    assert got == [7, 9]
    assert 1.0 < elapsed < 10.0
    # Reopened from the server's time of the last notification seen (sequence 7), not from sequence 8: a
    # restarted server numbers from 1 again, and only the time tells what came after (see test_source.py).
    assert [(body.get("from_id"), body.get("from_date")) for body in server.bodies] == \
        [("1", None), (None, "2026-12-01T00:00:00Z")]
    assert "could not send notification mars@8" in caplog.text and "interrupted" in caplog.text
