"""The Aviso 2 API over a real etcd and a real uvicorn: notify, watch, replay, filters, errors."""

from __future__ import annotations

import datetime as dt
import json

import httpx
from serve_helpers import Served, mars, sequence, stream

from aviso_workflows import Store
from aviso_workflows.status_chain import status_record


def _notify(served: Served, event: str, identifier: dict, payload: object = None) -> httpx.Response:
    body = {"event_type": event, "identifier": identifier}
    if payload is not None:
        body["payload"] = payload
    return served.post("/api/v1/notification", body)


def test_notify_writes_what_store_notify_writes(served: Served, store: Store, unique_date: str) -> None:
    answer = _notify(served, "mars", {**mars(unique_date), "step": "6", "expver": "1"},
                     {"location": "file:///data/fc.grib"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "success" and body["request_id"] == answer.headers["x-request-id"]
    assert dt.datetime.strptime(body["processed_at"], "%Y-%m-%dT%H:%M:%SZ")
    found = store.wait("mars", mars(unique_date, "6"), timeout=10)
    assert [(n.request["step"], n.location) for n in found] == [("6", "file:///data/fc.grib")]
    assert found[0].key == f"/ec/mars/date={unique_date},class=od,expver=0001,domain=g,time=00,stream=oper,step=6"
    _, status = store.gateway.get("/ec/mars/", revision=found[0].revision)
    assert status is not None and status.mod_revision == found[0].revision and "date_time" in status_record(status)


def test_dissemination_payload_is_the_location_and_writes_the_admin_key(served: Served, store: Store,
                                                                         unique_date: str) -> None:
    identifier = {**mars(unique_date), "destination": "com", "target": "E1"}
    assert _notify(served, "dissemination", identifier, "ftp://host/file").status_code == 200
    found = store.get("dissemination", {"destination": "COM", "date": unique_date})
    assert [(n.request["destination"], n.location) for n in found] == [("COM", "ftp://host/file")]
    assert store.gateway.get(f"/ec/admin/{unique_date}/COM")[1] is not None


def test_live_watch_sends_store_notifications_as_cloudevents(served: Served, store: Store, unique_date: str) -> None:
    with stream(served, "/api/v1/watch", {"event_type": "mars", "identifier": {"date": unique_date}}) as events:
        name, opening = events.next() or ("", {})
        assert name == "live-notification" and opening["type"] == "connection_established"
        assert opening["request_id"] == events.response.headers["x-request-id"]
        result = store.notify("mars", mars(unique_date, "12/0/6"), location="file:///x")
        notes = events.notifications(3)
    revision = result.revisions[0]
    assert [n["id"] for n in notes] == [f"mars@{revision * 1000 + i}" for i in range(3)]
    first = notes[0]
    assert first["specversion"] == "1.0" and first["type"] == "int.ecmwf.aviso.mars"
    assert first["source"] == served.url and first["dataschema"] == f"{served.url}/schema/mars"
    assert first["datacontenttype"] == "application/json" and first["time"].endswith("Z")
    assert first["data"] == {"identifier": {"date": unique_date, "class": "od", "expver": "0001", "domain": "g",
                                            "time": "00", "stream": "oper", "step": "0"},
                             "payload": "file:///x"}
    assert [n["data"]["identifier"]["step"] for n in notes] == ["0", "6", "12"]


def test_replay_from_date_and_from_id(served: Served, store: Store, unique_date: str) -> None:
    before = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    first = store.notify("mars", mars(unique_date, 0)).revisions[0]
    second = store.notify("mars", mars(unique_date, "6/12"), location="file:///b").revisions[0]
    body = {"event_type": "mars", "identifier": {"date": unique_date}, "from_date": before}
    with stream(served, "/api/v1/replay", body) as events:
        everything = events.rest()
    names = [name for name, _ in everything]
    assert names == ["replay-control", "replay", "replay", "replay", "replay-control", "connection-closing"]
    assert everything[0][1]["type"] == "replay_started" and everything[4][1]["type"] == "replay_completed"
    assert everything[-1][1]["reason"] == "end_of_stream"
    assert [sequence(e) for _, e in everything[1:4]] == [first * 1000, second * 1000, second * 1000 + 1]
    assert everything[1][1]["data"]["payload"] is None
    body = {"event_type": "mars", "identifier": {"date": unique_date}, "from_id": str(second * 1000 + 1)}
    with stream(served, "/api/v1/replay", body) as events:
        replayed = [e for name, e in events.rest() if name == "replay"]
    assert [sequence(e) for e in replayed] == [second * 1000 + 1]


def test_resuming_at_sequence_plus_one_inside_a_transaction_loses_and_repeats_nothing(
        served: Served, store: Store, unique_date: str) -> None:
    with stream(served, "/api/v1/watch", {"event_type": "mars", "identifier": {"date": unique_date}}) as events:
        events.next()
        store.notify("mars", mars(unique_date, "0/6/12"))
        first = events.notifications(1)[0]  # the client stops after the first key of the transaction
    resume = {"event_type": "mars", "identifier": {"date": unique_date}, "from_id": str(sequence(first) + 1)}
    with stream(served, "/api/v1/watch", resume) as events:
        assert events.next()[1]["type"] == "replay_started"  # type: ignore[index]
        rest = events.notifications(2)
        store.notify("mars", mars(unique_date, 18))
        live = events.notifications(1)
    steps = [e["data"]["identifier"]["step"] for e in [first, *rest, *live]]
    assert steps == ["0", "6", "12", "18"]
    assert [sequence(e) for e in rest] == [sequence(first) + 1, sequence(first) + 2]


def test_filters_eq_in_comparisons(served: Served, store: Store, unique_date: str) -> None:
    store.notify("mars", mars(unique_date, "0/6/12/18/24"))

    def steps(identifier: dict) -> list[str]:
        body = {"event_type": "mars", "identifier": {"date": unique_date, **identifier}, "from_id": "0"}
        with stream(served, "/api/v1/replay", body) as events:
            return [e["data"]["identifier"]["step"] for name, e in events.rest() if name == "replay"]

    assert steps({"step": 6}) == ["6"]
    assert steps({"step": {"eq": 12}}) == ["12"]
    assert steps({"step": {"in": [0, 24]}}) == ["0", "24"]
    assert steps({"step": {"gte": 12}}) == ["12", "18", "24"]
    assert steps({"step": {"between": [6, 18]}, "class": {"in": ["od", "rd"]}}) == ["6", "12", "18"]
    assert steps({"step": {"lt": 6}, "stream": "enfo"}) == []


def test_bad_filters_are_refused_naming_the_field(served: Served) -> None:
    for path, code in (("/api/v1/watch", "INVALID_WATCH_REQUEST"), ("/api/v1/replay", "INVALID_REPLAY_REQUEST")):
        for identifier, field in (({"step": {"gte": 1, "lt": 5}}, "step"), ({"step": {"near": 3}}, "step"),
                                  ({"class": {"gt": 1}}, "class"), ({"colour": "red"}, "colour"),
                                  ({"step": {"between": [9, 1]}}, "step"), ({"time": 7}, "time"),
                                  # aviso-server's rules: one value, or a constraint object on an int or enum
                                  # field, with numbers for an int field
                                  ({"step": "6/18"}, "step"), ({"step": [6, 18]}, "step"),
                                  ({"step": {"in": ["6", "18"]}}, "step"), ({"step": {"eq": "12"}}, "step"),
                                  ({"time": {"in": [0, 12]}}, "time"), ({"date": {"eq": "20260101"}}, "date"),
                                  ({"expver": {"in": ["0001"]}}, "expver")):
            answer = served.post(path, {"event_type": "mars", "identifier": identifier, "from_id": "1"})
            assert answer.status_code == 400, answer.text
            body = answer.json()
            assert body["code"] == code and body["message"].startswith(f"{field}:"), body
            assert body["request_id"] == answer.headers["x-request-id"]


def test_bad_notifications_write_nothing(served: Served, store: Store, unique_date: str) -> None:
    revision = store.current_revision()
    for identifier, payload, field in (({**mars(unique_date), "step": {"gte": 1}}, None, "step"),
                                       ({**mars(unique_date), "step": "0/6/12"}, None, "step"),
                                       ({**mars(unique_date), "step": [0, 6]}, None, "step"),
                                       ({**mars(unique_date), "step": -6}, None, "step"),
                                       ({**mars(unique_date), "stream": "nope"}, None, "stream"),
                                       ({k: v for k, v in mars(unique_date).items() if k != "step"}, None, "step"),
                                       (mars(unique_date), {"size": 3}, "payload"),
                                       ({**mars(unique_date), "expver": None}, None, "expver")):
        answer = _notify(served, "mars", identifier, payload)
        assert answer.status_code == 400, answer.text
        assert answer.json()["code"] == "INVALID_NOTIFICATION_REQUEST"
        assert field in answer.json()["message"], answer.json()
    assert store.current_revision() == revision


def test_request_errors_have_aviso2_codes(served: Served) -> None:
    cases = [
        (b"{not json", "INVALID_JSON", "/api/v1/notification"),
        (json.dumps({"event_type": "mars", "identifier": {}, "colour": 1}), "UNKNOWN_FIELD", "/api/v1/watch"),
        (json.dumps(["mars"]), "INVALID_REQUEST_SHAPE", "/api/v1/replay"),
        (json.dumps({"event_type": "mars", "identifier": "class=od"}), "INVALID_REQUEST_SHAPE", "/api/v1/watch"),
        (json.dumps({"event_type": "nope", "identifier": {}}), "UNKNOWN_EVENT_TYPE", "/api/v1/notification"),
        (json.dumps({"event_type": "mars", "identifier": {}, "from_id": "1", "from_date": "2026-01-01T00:00:00Z"}),
         "INVALID_WATCH_REQUEST", "/api/v1/watch"),
        (json.dumps({"event_type": "mars", "identifier": {}}), "INVALID_REPLAY_REQUEST", "/api/v1/replay"),
        (json.dumps({"event_type": "mars", "identifier": {}, "from_id": "-3"}), "INVALID_REPLAY_REQUEST",
         "/api/v1/replay"),
        (json.dumps({"event_type": "mars", "identifier": {}, "from_date": "yesterday"}), "INVALID_REPLAY_REQUEST",
         "/api/v1/replay"),
        (json.dumps({"event_type": "dissemination", "identifier": {"class": "od"}}), "INVALID_WATCH_REQUEST",
         "/api/v1/watch"),
    ]
    for body, code, path in cases:
        answer = served.post(path, body)
        assert answer.status_code == 400, (body, answer.text)
        error = answer.json()
        assert error["code"] == code, (body, error)
        assert {"code", "error", "message", "request_id"} <= set(error) and error["message"]
        assert error["request_id"] == answer.headers["x-request-id"]
    unknown = served.post("/api/v1/notification", {"event_type": "nope", "identifier": {}}).json()
    assert "mars" in unknown["configured_event_types"]
    missing = httpx.get(served.url + "/api/v1/nowhere")
    assert missing.status_code == 404 and missing.headers["x-request-id"]


def test_from_date_formats(served: Served, store: Store, unique_date: str) -> None:
    start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=2)
    store.notify("mars", mars(unique_date, 3))
    for text in (start.strftime("%Y-%m-%dT%H:%M:%SZ"), start.strftime("%Y-%m-%d %H:%M:%S+00:00"),
                 (start + dt.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S+02:00"),
                 start.strftime("%Y-%m-%dT%H:%M:%S"), str(int(start.timestamp())),
                 str(int(start.timestamp() * 1000))):
        body = {"event_type": "mars", "identifier": {"date": unique_date}, "from_date": text}
        with stream(served, "/api/v1/replay", body) as events:
            steps = [e["data"]["identifier"]["step"] for name, e in events.rest() if name == "replay"]
        assert steps == ["3"], text
    later = {"event_type": "mars", "identifier": {"date": unique_date}, "from_date": "2999-01-01T00:00:00Z"}
    with stream(served, "/api/v1/replay", later) as events:
        assert [name for name, _ in events.rest()] == ["replay-control", "replay-control", "connection-closing"]


def test_schema_health_and_metrics(served: Served, store: Store, unique_date: str) -> None:
    everything = httpx.get(served.url + "/api/v1/schema").json()
    assert everything["status"] == "success" and {"mars", "dissemination"} <= set(everything["event_types"])
    assert everything["total_schemas"] == len(everything["event_types"])
    mars_schema = httpx.get(served.url + "/api/v1/schema/mars").json()
    assert mars_schema["event_type"] == "mars"
    step = mars_schema["schema"]["identifier"]["step"]
    assert step["type"] == "IntHandler" and step["range"] == [0, 100000] and step["required"] is False
    assert mars_schema["schema"]["identifier"]["class"]["type"] == "EnumHandler"
    destination = httpx.get(served.url + "/api/v1/schema/dissemination").json()["schema"]["identifier"]["destination"]
    assert destination["required"] is True
    missing = httpx.get(served.url + "/api/v1/schema/nope")
    assert missing.status_code == 404 and missing.json()["request_id"] == missing.headers["x-request-id"]
    health = httpx.get(served.url + "/health")
    assert health.json() == {"status": "ok"} and health.headers["x-request-id"]
    assert _notify(served, "mars", mars(unique_date)).status_code == 200
    text = httpx.get(served.url + "/metrics").text
    assert 'aviso_notifications_total{event_type="mars",status="success"}' in text
    assert 'aviso_http_requests_total{method="GET",route="/api/v1/schema/{event}",status_code="404"}' in text
    assert "aviso_sse_connections_active" in text
