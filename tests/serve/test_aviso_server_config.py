"""``serve`` driven by an aviso-server configuration file (``--aviso-server-config``), over a real etcd.

The rules come from aviso-server 0.7.1 (ecmwf/aviso-server, commit 8b99d73): the configuration format of
``src/configuration/types.rs`` and ``configuration/config.yaml.example``, the handlers of
``aviso-validators/src/*.rs``, ``src/notification/processor.rs`` (notify needs every field; point instead of
a required polygon), ``src/notification/wildcard_matcher.rs`` (point in polygon, polygon intersection),
``src/cloudevents/mod.rs`` (the polygon shown in the identifier, the payload as posted) and
``src/routes/admin.rs`` (the admin routes and their bodies). What the conformance suite already checks against
serve (tests/conformance) is not repeated here.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from serve_helpers import Served, serve_process, serving, stream

from aviso_workflows import Store, server
from aviso_workflows.errors import SchemaError
from aviso_workflows.serve.server_config import (
    contains,
    intersects,
    load_server_config,
    polygon_corners,
    shown_value,
)

CONFIG = """
notification_schema:
  area:
    payload: {required: true}
    topic: {base: "area", key_order: ["date", "time"]}
    identifier:
      date: {type: DateHandler, canonical_format: "%Y%m%d", required: false}
      time: {type: TimeHandler, required: false}
      polygon: {type: PolygonHandler, required: true}
  fc:
    payload: {required: false}
    topic: {base: "fc", key_order: ["class", "date", "time", "step", "domain"]}
    identifier:
      class: {type: StringHandler, max_length: 2, required: true}
      date: {type: DateHandler, canonical_format: "%Y%m%d", required: false}
      time: {type: TimeHandler, required: false}
      step: {type: IntHandler, range: [0, 240], required: false}
      domain: {type: EnumHandler, values: ["g", "m"], required: false}
  quake:
    topic: {base: "quake", key_order: ["region", "severity"]}
    identifier:
      region: {type: StringHandler, required: true}
      severity: {type: FloatHandler, range: [1.0, 7.0], required: false}
"""
SQUARE = "(10.0,10.0,10.0,20.0,20.0,20.0,20.0,10.0,10.0,10.0)"
FAR = "(50.0,50.0,50.0,60.0,60.0,60.0,50.0,50.0)"


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "config.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(scope="module")
def configured(etcd_url: str, config_file: Path) -> Iterator[Served]:
    with serving(Store([etcd_url]), heartbeat=0.5, server_events=load_server_config(config_file)) as running:
        yield running


def fc(date: str, **fields: Any) -> dict[str, Any]:
    return {"class": "OD", "date": date, "time": "12", "step": "6", "domain": "g", **fields}


def notify(served: Served, event: str, identifier: dict[str, Any], payload: Any = None) -> httpx.Response:
    return served.post("/api/v1/notification", {"event_type": event, "identifier": identifier, "payload": payload})


def replay(served: Served, event: str, identifier: dict[str, Any], **start: Any) -> list[dict[str, Any]]:
    body = {"event_type": event, "identifier": identifier, **({"from_id": "1"} if not start else start)}
    with stream(served, "/api/v1/replay", body) as events:
        return [data for name, data in events.rest() if name == "replay"]


def test_keys_are_our_keys_in_topic_order_and_values_keep_payload_and_polygon(configured: Served, store: Store,
                                                                              unique_date: str) -> None:
    assert notify(configured, "fc", fc(unique_date), {"files": ["a", "b"], "n": 2}).status_code == 200
    assert notify(configured, "area", {"date": unique_date, "time": "6", "polygon": SQUARE}, "text").status_code == 200
    key = f"/aviso/fc/class=OD,date={unique_date},time=1200,step=6,domain=g"
    _, stored = store.gateway.get(key)
    assert stored is not None and json.loads(stored.value) == {"payload": {"files": ["a", "b"], "n": 2},
                                                               "identifier": {}}
    _, area = store.gateway.get(f"/aviso/area/date={unique_date},time=0600")
    assert area is not None and json.loads(area.value) == {"payload": "text", "identifier": {"polygon": SQUARE}}
    assert store.gateway.get("/aviso/fc/")[1] is not None, "a status key, as every notification of ours writes"
    [event] = replay(configured, "fc", {"class": "OD", "date": unique_date})
    assert event["data"] == {"identifier": {"class": "OD", "date": unique_date, "time": "1200", "step": "6",
                                            "domain": "g"}, "payload": {"files": ["a", "b"], "n": 2}}
    [shown] = replay(configured, "area", {"date": unique_date, "point": "12,12"})
    assert shown["data"]["identifier"]["polygon"] == SQUARE and shown["data"]["payload"] == "text"


def test_point_and_polygon_filters(configured: Served, unique_date: str) -> None:
    for polygon in (SQUARE, FAR):
        assert notify(configured, "area", {"date": unique_date, "time": "0", "polygon": polygon}, polygon).status_code \
            == 200

    def found(**identifier: str) -> list[str]:
        return [e["data"]["payload"] for e in replay(configured, "area", {"date": unique_date, **identifier})]

    assert found(point="15,15") == [SQUARE]
    assert found(point="(53.0, 57.0)") == [FAR]
    assert found(point="0,0") == []
    assert found(point="10,15") == [], "the edge is not inside (geo's Contains)"
    assert found(polygon="(15.0,15.0,15.0,30.0,30.0,30.0,15.0,15.0)") == [SQUARE]
    assert found(polygon="(0.0,0.0,0.0,5.0,5.0,5.0,0.0,0.0)") == []
    assert found(polygon=SQUARE) == [SQUARE]
    assert found(polygon=SQUARE, point="15,15") == [], "both polygon and point: aviso-server matches nothing"


def test_a_polygon_posted_without_parentheses_is_found_by_a_point(configured: Served, unique_date: str) -> None:
    """aviso-validators/src/polygon.rs (0.7.1): the outer parentheses are optional."""
    bare = SQUARE[1:-1]
    assert notify(configured, "area", {"date": unique_date, "time": "0", "polygon": bare}, "bare").status_code == 200
    assert [e["data"]["payload"] for e in replay(configured, "area", {"date": unique_date, "point": "15,15"})] == \
        ["bare"]


@pytest.mark.parametrize(("identifier", "words"), [
    ({"point": "15"}, "'lat,lon'"),
    ({"point": "95,0"}, "latitude 95.0"),
    ({"point": {"in": ["1,2"]}}, "'point' constraint object"),
    ({"polygon": "(1,2,3,4)"}, "at least 4 coordinate pairs"),
    ({"polygon": "(1,2,3,4,5,6,7,8)"}, "must be closed"),
    ({"time": "12"}, "Required field 'polygon' missing for replay"),
    ({"polygon": "*"}, "must be a valid polygon"),  # no wildcard: the polygon handler reads it first
])
def test_bad_spatial_filters_are_refused(configured: Served, identifier: dict[str, Any], words: str) -> None:
    answer = configured.post("/api/v1/replay", {"event_type": "area", "identifier": identifier, "from_id": "1"})
    assert answer.status_code == 400 and words in answer.json()["message"], answer.text


def test_what_aviso_server_refuses_is_refused_and_nothing_is_written(configured: Served, store: Store,
                                                                     unique_date: str) -> None:
    revision = store.current_revision()
    cases = [(fc(unique_date, step="0/6"), 400, "must be a valid integer"),
             (fc(unique_date, time="25"), 400, "invalid hours"),
             (fc(unique_date, **{"class": "odd"}), 400, "exceeds maximum length of 2"),
             (fc(unique_date, domain="z"), 400, "Allowed: [g, m]"),
             (fc(unique_date, level="500"), 500, "Unknown field 'level'"),
             ({k: v for k, v in fc(unique_date).items() if k != "domain"}, 400, "Required field 'domain' missing")]
    for identifier, status, words in cases:
        answer = notify(configured, "fc", identifier)
        assert answer.status_code == status and words in answer.json()["message"], answer.text
    answer = notify(configured, "area", {"date": unique_date, "time": "0", "polygon": SQUARE})
    assert answer.status_code == 400 and "Payload is required" in answer.json()["message"]
    answer = notify(configured, "fc", fc(unique_date), {"text": "x" * 5000})
    assert answer.status_code == 400 and "serve stores at most 4096" in answer.json()["message"]
    assert store.current_revision() == revision


@pytest.mark.parametrize("value", ["o/", "a,", "=*", "% ", "é"])
def test_free_values_may_hold_what_keys_cannot(configured: Served, store: Store, unique_date: str, value: str) -> None:
    """aviso-server keeps a free string as posted (aviso-validators/src/string.rs, 0.7.1); serve keeps it in the
    key percent-encoded, matches it exactly and shows it as posted."""
    assert notify(configured, "fc", fc(unique_date, **{"class": value}), "x").status_code == 200
    assert notify(configured, "fc", fc(unique_date, **{"class": "zz"}), "y").status_code == 200
    [found] = replay(configured, "fc", {"class": value, "date": unique_date})
    assert found["data"]["identifier"]["class"] == value and found["data"]["payload"] == "x"
    assert len(replay(configured, "fc", {"class": "*", "date": unique_date})) == 2
    [key] = [kv.key for kv in store.gateway.range_all("/aviso/fc/")[1] if unique_date in kv.key and "zz" not in kv.key]
    parsed = configured.state.events["fc"].schema.parse_key(key)
    assert parsed is not None and shown_value(parsed["class"]) == value, key


@pytest.mark.parametrize(("constraint", "found"), [
    ({"gt": 2.5}, ["3.75", "6"]), ({"between": [2, 4]}, ["2.5", "3.75"]), ({"in": [6, 2.5]}, ["2.5", "6"]),
    ({"lte": 2.5}, ["2.5"]), ({"eq": 3.75}, ["3.75"]),
])
def test_float_constraints(configured: Served, unique_date: str, constraint: dict[str, Any], found: list[str]) -> None:
    """aviso-validators/src/constraints.rs (0.7.1) ``parse_float_constraint``, ``NumericConstraint<f64>``."""
    region = f"r{unique_date}"
    for severity in ("2.5", "3.75", "6.0"):
        assert notify(configured, "quake", {"region": region, "severity": severity}).status_code == 200
    got = replay(configured, "quake", {"region": region, "severity": constraint})
    assert [e["data"]["identifier"]["severity"] for e in got] == found


@pytest.mark.parametrize(("constraint", "words"), [
    ({"gt": "2"}, "expects numeric value"), ({"in": []}, "at least one value"), ({"between": [5, 2]}, "min <= max"),
    ({"gt": 9}, "outside allowed range"), ({"near": 2}, "invalid operator"),
])
def test_bad_float_constraints(configured: Served, constraint: dict[str, Any], words: str) -> None:
    answer = configured.post("/api/v1/watch", {"event_type": "quake", "identifier": {"region": "x",
                                                                                     "severity": constraint}})
    assert answer.status_code == 400 and words in answer.json()["message"], answer.text


def test_replay_ends_at_to_id_and_to_date(configured: Served, unique_date: str) -> None:
    """Not in aviso-server 0.7.1: serve takes ``to_id``/``to_date`` (inclusive, replays only) as newer servers
    do, for pyaviso 2.4.2's ``replay --until``."""
    for step in ("0", "6", "12"):
        assert notify(configured, "fc", fc(unique_date, step=step)).status_code == 200
    identifier = {"class": "OD", "date": unique_date}
    every = replay(configured, "fc", identifier)
    sequences = [int(e["id"].split("@")[1]) for e in every]
    until_second = replay(configured, "fc", identifier, from_id="1", to_id=str(sequences[1]))
    assert [e["data"]["identifier"]["step"] for e in until_second] == ["0", "6"]
    moment = dt.datetime.strptime(every[1]["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
    until_date = replay(configured, "fc", identifier, from_id="1", to_date=moment.isoformat() + "Z")
    assert [e["data"]["identifier"]["step"] for e in until_date] == ["0", "6"]
    for body, words in (({"to_id": "3"}, "ends a replay"), ({"to_date": "x"}, "ends a replay")):
        answer = configured.post("/api/v1/watch", {"event_type": "fc", "identifier": identifier, **body})
        assert answer.status_code == 400 and words in answer.json()["message"]
    answer = configured.post("/api/v1/replay", {"event_type": "fc", "identifier": identifier, "from_id": "1",
                                                "to_id": "2", "to_date": "2030-01-01T00:00:00Z"})
    assert answer.status_code == 400 and "both" in answer.json()["message"]


def test_admin_delete_wipe_stream_and_wipe_all(configured: Served, store: Store, unique_date: str) -> None:
    for step in ("0", "6"):
        assert notify(configured, "fc", fc(unique_date, step=step)).status_code == 200
    assert notify(configured, "area", {"date": unique_date, "time": "0", "polygon": SQUARE}, "x").status_code == 200
    first, second = replay(configured, "fc", {"class": "OD", "date": unique_date})

    deleted = httpx.delete(f"{configured.url}/api/v1/admin/notification/{first['id']}")
    assert deleted.status_code == 200 and deleted.json()["success"] is True
    assert deleted.json()["notification_id"] == first["id"] and deleted.json()["request_id"]
    assert [e["id"] for e in replay(configured, "fc", {"class": "OD", "date": unique_date})] == [second["id"]]
    assert httpx.delete(f"{configured.url}/api/v1/admin/notification/{first['id']}").status_code == 404
    bad = httpx.delete(f"{configured.url}/api/v1/admin/notification/fc-12")
    assert bad.status_code == 400 and "'<stream>@<sequence>'" in bad.json()["message"]
    zero = httpx.delete(f"{configured.url}/api/v1/admin/notification/fc@0")
    assert zero.status_code == 400 and "greater than zero" in zero.json()["message"]

    wiped = httpx.request("DELETE", f"{configured.url}/api/v1/admin/wipe/stream", json={"stream_name": "FC"})
    assert wiped.status_code == 200 and wiped.json()["message"] == "Successfully wiped stream: FC"
    assert store.gateway.range_all("/aviso/fc/")[1] == []
    assert store.gateway.range_all("/aviso/area/")[1] != []
    everything = httpx.delete(f"{configured.url}/api/v1/admin/wipe/all")
    assert everything.status_code == 200 and everything.json()["success"] is True
    assert store.gateway.range_all("/aviso/")[1] == []


def test_schema_routes_show_the_configuration(configured: Served) -> None:
    listed = httpx.get(f"{configured.url}/api/v1/schema").json()
    assert listed["event_types"] == ["area", "fc", "quake"] and listed["total_schemas"] == 3
    area = httpx.get(f"{configured.url}/api/v1/schema/area").json()["schema"]
    assert area == {"payload": {"required": True}, "identifier": {
        "date": {"type": "DateHandler", "canonical_format": "%Y%m%d", "required": False},
        "time": {"type": "TimeHandler", "required": False},
        "polygon": {"type": "PolygonHandler", "required": True}}}
    answer = configured.post("/api/v1/watch", {"event_type": "mars", "identifier": {}})
    assert answer.status_code == 400 and answer.json()["code"] == "UNKNOWN_EVENT_TYPE", "only the configured events"


def test_polygon_geometry() -> None:
    square = polygon_corners(SQUARE)
    assert contains(square, (15, 15)) and not contains(square, (25, 15)) and not contains(square, (10, 15))
    assert intersects(square, polygon_corners("(19,19,19,25,25,25,19,19)"))
    assert intersects(square, polygon_corners("(12,12,12,13,13,13,12,12)")), "one inside the other"
    assert not intersects(square, polygon_corners(FAR))


@pytest.mark.parametrize(("text", "words"), [
    ("application: {}", "no 'notification_schema'"),
    ("notification_schema: {e: {identifier: {a: {type: StringHandler}}}}", "topic: {base, key_order}"),
    ("notification_schema: {e: {topic: {base: e, key_order: [a]}, identifier: {a: {type: Nope}}}}",
     "field 'a': unknown handler 'Nope'"),
    ("notification_schema: {e: {topic: {base: e, key_order: [b]}, identifier: {a: {type: StringHandler}}}}",
     "unknown: ['b']"),
    ("notification_schema: {e: {topic: {base: e, key_order: [a]}, identifier: {a: {type: EnumHandler}}}}",
     "EnumHandler needs 'values'"),
])
def test_a_bad_configuration_is_one_clear_error(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(SchemaError, match="config.yaml") as raised:
        load_server_config(path)
    assert words in str(raised.value)


def test_the_command_reads_the_file_and_refuses_a_bad_one_before_serving(etcd_url: str, config_file: Path,
                                                                         tmp_path: Path, unique_date: str) -> None:
    with serve_process(etcd_url, server.free_port(), tmp_path / "serve.log", "--aviso-server-config",
                       str(config_file)) as url:
        answer = httpx.post(f"{url}/api/v1/notification", json={"event_type": "fc", "identifier": fc(unique_date)})
        assert answer.status_code == 200, answer.text
    bad = tmp_path / "bad.yaml"
    bad.write_text("notification_schema: {}")
    with pytest.raises(AssertionError, match="no 'notification_schema'"):
        with serve_process(etcd_url, server.free_port(), tmp_path / "bad.log", "--aviso-server-config", str(bad)):
            pass
