"""The post action: CloudEvents 1.0 structured mode to a real HTTP receiver; retries, give-up and the cursor."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from actions_helpers import BOUND, Receiver, listen_file, mars, start_cursor, write_listeners

from aviso_workflows import Store, ValidationError, cli
from aviso_workflows.actions import post_action


def post_listener(receiver: Receiver, date: str, **extra: Any) -> dict[str, Any]:
    protocol = {"type": "cloudevents_http", "url": f"{receiver.url}/events", "timeout": 5,
                "headers": {"X-Team": "forecast"}, "cloudevents": {"type": "int.ecmwf.aviso.mars", "source": "test"}}
    return {"event": "mars", "request": mars(date, step=[0, 6]),
            "triggers": [{"type": "post", "protocol": protocol, **extra}]}


def test_cloudevents_structured_mode(store: Store, unique_date: str, tmp_path: Path, receiver: Receiver) -> None:
    path = write_listeners(tmp_path / "post.yaml", [post_listener(receiver, unique_date)])
    start_cursor(store, "post")
    store.notify("mars", mars(unique_date, step="0/6"), location="https://data.example/x?a=1&b=2")
    before = dt.datetime.now(dt.UTC)
    assert listen_file(path, 2, "post") == 0
    got = receiver.wait_for(2, "/events")
    for request, step in zip(got, ("0", "6")):
        assert request.headers["content-type"].startswith("application/cloudevents+json")
        assert request.headers["x-team"] == "forecast"
        event = request.json()
        assert event["specversion"] == "1.0" and event["type"] == "int.ecmwf.aviso.mars"
        assert event["source"] == "test" and event["datacontenttype"] == "application/json"
        assert event["id"] == f"{event['data']['revision']}:{event['data']['key']}"
        sent = dt.datetime.strptime(event["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
        assert before - dt.timedelta(seconds=1) <= sent <= dt.datetime.now(dt.UTC)
        data = event["data"]
        assert data["event"] == "mars" and data["location"] == "https://data.example/x?a=1&b=2"
        assert data["request"] == {"class": "od", "expver": "0001", "domain": "g", "date": unique_date,
                                   "time": "00", "stream": "oper", "step": step}


def test_transient_failures_are_retried_with_the_same_event_id(store: Store, unique_date: str, tmp_path: Path,
                                                                receiver: Receiver) -> None:
    receiver.answer = lambda request: (503, {}) if len(receiver.received()) <= 2 else (200, {})
    path = write_listeners(tmp_path / "retry.yaml", [post_listener(receiver, unique_date, backoff=0.05)])
    start_cursor(store, "retry")
    store.notify("mars", mars(unique_date, step=0))
    started = time.monotonic()
    assert listen_file(path, 1, "retry") == 0
    attempts = receiver.received()
    assert len(attempts) == 3 and len({a.json()["id"] for a in attempts}) == 1
    assert time.monotonic() - started >= 0.05 + 0.1  # backoff doubled between tries


def test_an_outage_is_waited_out_with_one_log_line_then_the_cursor_moves_on(
        store: Store, unique_date: str, tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    answers = iter([500] * 4)
    receiver.answer = lambda request: (next(answers, 200), {"detail": "down"})
    path = write_listeners(tmp_path / "outage.yaml", [post_listener(receiver, unique_date, retries=2, backoff=0.01)])
    cursor = start_cursor(store, "outage")
    store.notify("mars", mars(unique_date, step="0/6"))
    with caplog.at_level(logging.WARNING):
        assert listen_file(path, 2, "outage") == 0
    steps = [r.json()["data"]["request"]["step"] for r in receiver.received()]
    assert steps == ["0"] * 5 + ["6"]
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("aviso_workflows")]
    assert len(lines) == 2 and "position kept" in lines[0] and "down" in lines[0] and "works again" in lines[1]
    saved = cursor.load()
    assert saved is not None and saved.key.endswith("step=6")


def test_a_refused_event_is_not_retried(store: Store, unique_date: str, tmp_path: Path, receiver: Receiver,
                                        caplog: pytest.LogCaptureFixture) -> None:
    receiver.answer = lambda request: (400, {"detail": "bad event"})
    path = write_listeners(tmp_path / "refused.yaml", [post_listener(receiver, unique_date, backoff=0.01)])
    start_cursor(store, "refused")
    store.notify("mars", mars(unique_date, step=0))
    with caplog.at_level(logging.ERROR):
        assert listen_file(path, 1, "refused") == 0
    assert len(receiver.received()) == 1
    assert any("HTTP 400" in r.getMessage() and "bad event" in r.getMessage() for r in caplog.records)


def test_cursor_stays_while_the_action_is_retried(store: Store, unique_date: str, tmp_path: Path,
                                                  receiver: Receiver) -> None:
    accept = threading.Event()
    receiver.answer = lambda request: (200, {}) if accept.is_set() else (503, {})
    path = write_listeners(tmp_path / "held.yaml", [post_listener(receiver, unique_date, retries=50, backoff=0.05)])
    cursor = start_cursor(store, "held")
    first = cursor.load()
    store.notify("mars", mars(unique_date, step=0))
    codes: list[int] = []
    listener = threading.Thread(target=lambda: codes.append(listen_file(path, 1, "held")))
    listener.start()
    try:
        receiver.wait_for(3)
        assert cursor.load() == first, "the cursor moved past a notification whose action is still being retried"
    finally:
        accept.set()
        listener.join(BOUND)
    assert not listener.is_alive() and codes == [0]
    saved = cursor.load()
    assert saved is not None and saved != first and saved.key.endswith("step=0")
    assert receiver.received()[-1].json()["data"]["request"]["step"] == "0"


def test_post_specs_are_checked_when_loaded() -> None:
    with pytest.raises(ValidationError, match="protocol.type"):
        post_action({"type": "post", "protocol": {"type": "cloudevents_aws", "arn": "x"}})
    with pytest.raises(ValidationError, match="post.protocol.url"):
        post_action({"type": "post", "protocol": {"type": "cloudevents_http"}})
    with pytest.raises(ValidationError, match="retries"):
        post_action({"type": "post", "protocol": {"type": "cloudevents_http", "url": "http://127.0.0.1:9"},
                     "retries": -1})




def test_urls_are_logged_without_user_information(store: Store, unique_date: str, tmp_path: Path,
                                                  receiver: Receiver, caplog: pytest.LogCaptureFixture,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    receiver.answer = lambda request: (400, {"detail": "refused"})
    listener = post_listener(receiver, unique_date)
    protocol = listener["triggers"][0]["protocol"]
    protocol["url"] = protocol["url"].replace("http://", "http://hook-user:hook-s3cret@")
    path = write_listeners(tmp_path / "secret.yaml", [listener])
    start_cursor(store, "secret")
    revision = store.notify("mars", mars(unique_date, step=0)).revisions[0]
    with caplog.at_level(logging.DEBUG):
        assert listen_file(path, 1, "secret") == 0
        assert cli.main(["listen", str(path), "--dry-run", "--from", str(revision), "--count", "1"]) == 0
    assert receiver.received()[0].headers["authorization"].startswith("Basic ")  # the credentials were used
    shown = caplog.text + capsys.readouterr().out
    assert "refused" in shown and f"{receiver.url}/events" in shown
    assert "hook-s3cret" not in shown and "hook-user" not in shown
