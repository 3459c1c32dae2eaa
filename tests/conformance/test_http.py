"""aviso-server's HTTP rules, case by case, against each server under test (see conftest.SERVERS).

Every case is written from aviso-server 0.7.1's source (ecmwf/aviso-server, commit 8b99d73); the file each
rule comes from is named in the case's docstring.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from server_under_test import ServerUnderTest
from sse import notifications, read_frames

MARS = {"class": "od", "expver": "1", "domain": "g", "stream": "oper", "time": "12", "step": "6"}


def notify(url: str, event: str, identifier: dict[str, Any], payload: Any = None) -> httpx.Response:
    body: dict[str, Any] = {"event_type": event, "identifier": identifier}
    if payload is not None:
        body["payload"] = payload
    return httpx.post(f"{url}/api/v1/notification", json=body, timeout=10)


def refused(url: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = httpx.post(f"{url}{path}", json=body, timeout=10)
    return response.status_code, response.json()


def test_notify_answers_success_and_stores_canonical_forms(aviso_server_url: str, day: str) -> None:
    """aviso-validators/src/{time,expver,string,enum_handler}.rs, src/routes/notify.rs (0.7.1): time ``12`` is
    stored ``1200`` and ``0`` ``0000``, expver ``1`` ``0001``, an enum lower-cased, a free string (class,
    destination) kept as posted; the answer is ``{status: success, request_id, processed_at}``."""
    answer = notify(aviso_server_url, "mars", {**MARS, "date": day, "class": "OD", "domain": "G"})
    assert answer.status_code == 200 and answer.json()["status"] == "success"
    assert set(answer.json()) == {"status", "request_id", "processed_at"}
    assert notify(aviso_server_url, "dissemination", {**MARS, "date": day, "time": "0", "destination": "scl",
                                                      "target": "E1"}, "loc").status_code == 200
    frames = read_frames(aviso_server_url, "/api/v1/replay", {"event_type": "mars", "identifier": {
        "class": "OD", "date": day}, "from_id": "1"})
    (posted,) = notifications(frames)
    assert posted["data"]["identifier"] == {"class": "OD", "expver": "0001", "domain": "g", "date": day,
                                            "time": "1200", "stream": "oper", "step": "6"}
    frames = read_frames(aviso_server_url, "/api/v1/replay", {"event_type": "dissemination", "identifier": {
        "class": "od", "destination": "scl", "date": day}, "from_id": "1"})
    (posted,) = notifications(frames)
    assert posted["data"]["identifier"]["destination"] == "scl" and posted["data"]["identifier"]["time"] == "0000"
    assert posted["data"]["payload"] == "loc"


def test_free_strings_match_exactly_and_star_is_a_wildcard(aviso_server_url: str, day: str) -> None:
    """src/notification/wildcard_matcher.rs (0.7.1): topic tokens compare exactly (``SCL`` is not ``scl``);
    a ``*`` token matches any value, so a required free-string field may be given as ``*``."""
    assert notify(aviso_server_url, "dissemination", {**MARS, "date": day, "destination": "scl",
                                                      "target": "E1"}, "x").status_code == 200
    body = {"event_type": "dissemination", "identifier": {"class": "od", "destination": "SCL", "date": day},
            "from_id": "1"}
    assert notifications(read_frames(aviso_server_url, "/api/v1/replay", body)) == []
    body["identifier"] = {"class": "*", "destination": "*", "date": day}
    assert len(notifications(read_frames(aviso_server_url, "/api/v1/replay", body))) == 1


def test_an_identifier_field_the_schema_does_not_know_is_a_500(aviso_server_url: str, day: str) -> None:
    """src/notification/processor.rs + src/handlers/notification_processor.rs (0.7.1): "Unknown field 'x'
    provided for notify operation" is not classed as validation, so the answer is 500
    NOTIFICATION_PROCESSING_FAILED."""
    status, body = refused(aviso_server_url, "/api/v1/notification",
                           {"event_type": "mars", "identifier": {**MARS, "date": day, "levtype": "sfc"}})
    assert status == 500 and body["code"] == "NOTIFICATION_PROCESSING_FAILED"
    assert "levtype" in body["message"] and {"code", "error", "message", "details", "request_id"} <= set(body)


@pytest.mark.parametrize(("identifier", "words"), [
    ({"step": "x"}, "must be a valid integer"),
    ({"time": "25"}, "invalid hours"),
    ({"date": "2025-02-30"}, "Failed to parse date value"),
    ({"class": "odd"}, "exceeds maximum length"),
    ({"domain": "gg"}, "invalid value"),
])
def test_notify_validation_failures_are_400(aviso_server_url: str, day: str, identifier: dict[str, str],
                                            words: str) -> None:
    """aviso-validators/src/{int,time,date,string,enum_handler}.rs (0.7.1): 400 INVALID_NOTIFICATION_REQUEST
    with the validator's message (``message`` the first of the error chain, ``details`` the last)."""
    status, body = refused(aviso_server_url, "/api/v1/notification",
                           {"event_type": "mars", "identifier": {**MARS, "date": day, **identifier}})
    assert status == 400 and body["code"] == "INVALID_NOTIFICATION_REQUEST" and words in body["message"]


def test_notify_needs_every_field_and_a_required_payload(aviso_server_url: str, day: str) -> None:
    """src/notification/processor.rs ``process_notify_request`` (0.7.1): every identifier field of the schema is
    needed on notify; the dissemination schema requires a payload."""
    identifier = {**MARS, "date": day}
    del identifier["step"]
    status, body = refused(aviso_server_url, "/api/v1/notification", {"event_type": "mars", "identifier": identifier})
    assert status == 400 and "Required field 'step' missing" in body["message"]
    status, body = refused(aviso_server_url, "/api/v1/notification", {"event_type": "dissemination", "identifier": {
        **MARS, "date": day, "destination": "SCL", "target": "E1"}})
    assert status == 400 and "Payload is required" in body["message"]


@pytest.mark.parametrize(("identifier", "words"), [
    ({"step": {"in": ["0", "6"]}}, "Field 'step' operator 'in' expects integer value"),
    ({"time": {"in": ["0000", "1200"]}}, "Field 'time' does not support constraint filters"),
    ({"date": {"in": ["20250101", "20250102"]}}, "Field 'date' does not support constraint filters"),
    ({"class": {"in": ["od", "rd"]}}, "Field 'class' does not support constraint filters"),
    ({"expver": {"eq": "0001"}}, "Field 'expver' does not support constraint filters"),
    ({"domain": {"gt": "a"}}, "Allowed for enum constraints: eq,in"),
    ({"step": {"in": []}}, "expects"),
    ({"step": [0, 6]}, "got array"),
])
def test_watch_takes_constraints_only_on_int_float_and_enum_fields(aviso_server_url: str, identifier: dict,
                                                                   words: str) -> None:
    """aviso-validators/src/constraints.rs and src/notification/processor.rs ``parse_identifier_constraint``
    (0.7.1): constraint objects on int/float/enum fields only, int operands JSON integers, scalars elsewhere."""
    for path, code in (("/api/v1/watch", "INVALID_WATCH_REQUEST"), ("/api/v1/replay", "INVALID_REPLAY_REQUEST")):
        status, body = refused(aviso_server_url, path, {"event_type": "mars", "from_id": "1",
                                                        "identifier": {"class": "od", **identifier}})
        assert status == 400 and body["code"] == code and words in body["message"], body


@pytest.mark.parametrize(("constraint", "steps"), [
    ({"in": [0, 12]}, [0, 12]), ({"between": [6, 12]}, [6, 12]), ({"gt": 6}, [12, 24]), ({"lte": 6}, [0, 6]),
    ({"eq": 24}, [24]),
])
def test_int_constraints_select_what_they_say(aviso_server_url: str, day: str, constraint: dict,
                                              steps: list[int]) -> None:
    """aviso-validators/src/constraints.rs ``matches_numeric`` (0.7.1)."""
    for step in (0, 6, 12, 24):
        assert notify(aviso_server_url, "mars", {**MARS, "date": day, "step": str(step)}).status_code == 200
    frames = read_frames(aviso_server_url, "/api/v1/replay", {"event_type": "mars", "from_id": "1", "identifier": {
        "class": "od", "date": day, "step": constraint}})
    assert [int(n["data"]["identifier"]["step"]) for n in notifications(frames)] == steps


def test_enum_constraints_ignore_case(aviso_server_url: str, day: str) -> None:
    """aviso-validators/src/constraints.rs ``parse_enum_constraint`` (0.7.1): enum operands are lower-cased."""
    for domain in ("g", "m", "z"):
        assert notify(aviso_server_url, "mars", {**MARS, "date": day, "domain": domain}).status_code == 200
    frames = read_frames(aviso_server_url, "/api/v1/replay", {"event_type": "mars", "from_id": "1", "identifier": {
        "class": "od", "date": day, "domain": {"in": ["G", "z"]}}})
    assert sorted(n["data"]["identifier"]["domain"] for n in notifications(frames)) == ["g", "z"]


@pytest.mark.parametrize(("body", "status", "code", "words"), [
    ({"to_id": "5"}, 400, "UNKNOWN_FIELD", "to_id"),
    ({"to_date": "2031-01-01T00:00:00Z"}, 400, "UNKNOWN_FIELD", "to_date"),
    ({"from_id": "1", "from_date": "2031-01-01T00:00:00Z"}, 400, "INVALID_REPLAY_REQUEST", "Cannot specify both"),
    ({"from_id": "x"}, 400, "INVALID_REPLAY_REQUEST", "from_id must be a valid positive integer"),
    ({"from_id": 1}, 400, "INVALID_REQUEST_SHAPE", ""),
    ({}, 400, "INVALID_REPLAY_REQUEST", "requires either from_id or from_date"),
])
def test_replay_starting_points(aviso_server: ServerUnderTest, aviso_server_url: str, body: dict, status: int,
                                code: str, words: str) -> None:
    """src/types/request.rs (0.7.1): top-level fields are event_type, identifier, from_id (a string),
    from_date, payload — no ``to_id``/``to_date``; one start at most; a replay needs one."""
    if code == "UNKNOWN_FIELD" and getattr(aviso_server, "takes_replay_end", False):
        pytest.skip("this server takes to_id/to_date as newer aviso-servers do (for pyaviso 2.4.2's replay --until)")
    got, answer = refused(aviso_server_url, "/api/v1/replay",
                          {"event_type": "mars", "identifier": {"class": "od"}, **body})
    assert (got, answer["code"]) == (status, code) and words in answer["message"]


def test_watch_needs_required_fields_and_a_known_event(aviso_server_url: str) -> None:
    """src/notification/processor.rs ``process_streaming_request`` and src/routes/streaming.rs
    ``enforce_known_event_type`` (0.7.1)."""
    status, body = refused(aviso_server_url, "/api/v1/watch", {"event_type": "mars", "identifier": {"step": "6"}})
    assert status == 400 and "Required field 'class' missing for watch operation" in body["message"]
    status, body = refused(aviso_server_url, "/api/v1/watch", {"event_type": "nope", "identifier": {}})
    assert status == 400 and body["code"] == "UNKNOWN_EVENT_TYPE"


def test_replay_frames_and_cloudevents(aviso_server_url: str, day: str) -> None:
    """src/sse/{types,helpers,replay}.rs and src/cloudevents/mod.rs (0.7.1): ``replay_started``, history as
    ``replay`` frames, ``replay_completed``, ``connection-closing`` ``end_of_stream``; no SSE ``id:`` lines;
    CloudEvent ``id`` ``<event>@<sequence>``, ``type`` ``int.ecmwf.aviso.<event>``, payload as posted."""
    assert notify(aviso_server_url, "mars", {**MARS, "date": day}, {"path": "/a", "n": 1}).status_code == 200
    frames = read_frames(aviso_server_url, "/api/v1/replay", {"event_type": "mars", "from_id": "1", "identifier": {
        "class": "od", "date": day}})
    assert [f.event for f in frames] == ["replay-control", "replay", "replay-control", "connection-closing"]
    assert frames[0].data["type"] == "replay_started" and frames[2].data["type"] == "replay_completed"
    assert frames[-1].data["reason"] == "end_of_stream"
    assert not any(line.startswith("id:") for frame in frames for line in frame.lines)
    event = frames[1].data
    event_name, _, sequence = event["id"].partition("@")
    assert event_name == "mars" and int(sequence) >= 1 and event["type"] == "int.ecmwf.aviso.mars"
    assert event["data"]["payload"] == {"path": "/a", "n": 1} and "time" in event


def test_live_watch_starts_established_then_beats_and_delivers(aviso_server_url: str, day: str) -> None:
    """src/sse/live.rs and src/sse/helpers.rs (0.7.1): a live-only watch opens with a ``live-notification``
    ``connection_established``, heartbeats come at once and every interval, posts come as
    ``live-notification``."""
    posted: list[bool] = []

    def until(frames: list) -> bool:
        if not posted and any(f.event == "heartbeat" for f in frames):
            posted.append(notify(aviso_server_url, "mars", {**MARS, "date": day}).status_code == 200)
        return bool(notifications(frames))

    frames = read_frames(aviso_server_url, "/api/v1/watch", {"event_type": "mars", "identifier": {
        "class": "od", "date": day}}, until=until)
    assert frames[0].event == "live-notification" and frames[0].data["type"] == "connection_established"
    assert posted == [True] and frames[-1].event == "live-notification"


def test_sequences_restart_at_one_with_no_history(aviso_server_factory, day: str) -> None:
    """src/notification_backend/in_memory/backend.rs (0.7.1): one sequence per process from 1; nothing is kept
    across a restart. A stream open at a graceful stop gets ``connection-closing`` ``server_shutdown``
    (src/sse/helpers.rs ``apply_stream_lifecycle``)."""
    server: ServerUnderTest = aviso_server_factory()
    if not server.fresh_after_restart:
        pytest.skip("this server keeps its sequence across a restart")
    for step in ("0", "6"):
        assert notify(server.url, "mars", {**MARS, "date": day, "step": step}).status_code == 200
    body = {"event_type": "mars", "from_id": "1", "identifier": {"class": "od"}}
    assert [n["id"] for n in notifications(read_frames(server.url, "/api/v1/replay", body))] == ["mars@1", "mars@2"]
    stopping: list[bool] = []

    def until(frames: list) -> bool:
        if not stopping and any(f.data.get("type") == "replay_completed" for f in frames):
            stopping.append(True)
            import threading
            threading.Thread(target=server.stop).start()
        return False

    frames = read_frames(server.url, "/api/v1/watch", body, until=until)
    assert frames[-1].event == "connection-closing" and frames[-1].data["reason"] == "server_shutdown"
    server.start()
    assert notifications(read_frames(server.url, "/api/v1/replay", body)) == []
    assert notify(server.url, "mars", {**MARS, "date": day}).status_code == 200
    assert [n["id"] for n in notifications(read_frames(server.url, "/api/v1/replay", body))] == ["mars@1"]


def test_a_replay_past_the_cap_says_so(aviso_server_factory, day: str) -> None:
    """src/notification_backend/jetstream/replay.rs and src/sse/helpers.rs (0.7.1): history stops at
    ``max_historical_notifications`` with ``replay-control`` ``notification_replay_limit_reached``."""
    server: ServerUnderTest = aviso_server_factory(replay_cap=2)
    for step in ("0", "6", "12"):
        assert notify(server.url, "mars", {**MARS, "date": day, "step": step}).status_code == 200
    frames = read_frames(server.url, "/api/v1/replay", {"event_type": "mars", "from_id": "1",
                                                        "identifier": {"class": "od"}})
    assert len(notifications(frames)) == 2
    capped = [f.data for f in frames if f.data.get("type") == "notification_replay_limit_reached"]
    assert capped and capped[0]["max_allowed"] == 2


def test_schema_route_publishes_the_handlers(aviso_server_url: str) -> None:
    """src/routes/schema.rs and src/configuration/types.rs ``ApiEventSchema`` (0.7.1)."""
    answer = httpx.get(f"{aviso_server_url}/api/v1/schema/mars", timeout=10).json()
    handlers = answer["schema"]["identifier"]
    assert handlers["step"]["type"] == "IntHandler" and handlers["class"]["type"] == "StringHandler"
    assert handlers["class"]["required"] is True
    assert httpx.get(f"{aviso_server_url}/api/v1/schema/nope", timeout=10).status_code == 404
