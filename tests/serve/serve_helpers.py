"""Helpers of the serve tests: a real uvicorn serving the app on a free loopback port, and an SSE reader."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from aviso_workflows import Store, server
from aviso_workflows.serve.app import ServeOptions, ServeState
from aviso_workflows.serve.cli import ServeFailed, shutdown, start_serve, start_serve_process

START_SECONDS = 20.0
STOP_SECONDS = 20.0
#: Bound of every read that should end within a second or two.
READ_SECONDS = 20.0


@dataclass
class Served:
    """A running server: its base URL and its state (streams, shared watches)."""

    url: str
    state: ServeState
    uvicorn: Any
    thread: threading.Thread

    def post(self, path: str, body: Any, **options: Any) -> httpx.Response:
        """POST JSON (or raw bytes) and return the answer."""
        if isinstance(body, (bytes, str)):
            return httpx.post(self.url + path, content=body, headers={"content-type": "application/json",
                                                                      **options.pop("headers", {})}, **options)
        return httpx.post(self.url + path, json=body, **options)

    def shutdown(self) -> None:
        """Stop as SIGTERM does: streams get server_shutdown, then the server ends (bounded)."""
        shutdown(self.uvicorn)
        self.thread.join(STOP_SECONDS)
        assert not self.thread.is_alive(), "the server did not stop"


@contextmanager
def serving(store: Store, **options: Any) -> Iterator[Served]:
    """Serve ``store`` on a free loopback port in a thread (uvicorn, the app's lifespan); stopped at the end."""
    port = server.free_port()
    url = f"http://127.0.0.1:{port}"
    started = start_serve(store, ServeOptions(base_url=url, **options), "127.0.0.1", port, timeout=START_SECONDS)
    served = Served(url, started.state, started.uvicorn, started.thread)
    try:
        yield served
    finally:
        if started.thread.is_alive():
            served.shutdown()


@dataclass
class Sse:
    """Events of one SSE response, read as they come."""

    response: httpx.Response
    lines: Iterator[str]
    events: list[tuple[str, Any]] = field(default_factory=list)

    def next(self) -> tuple[str, Any] | None:
        """The next event (name, parsed data), or None when the stream ended."""
        name, data = "message", []
        for line in self.lines:
            if line == "":
                if data:
                    event = (name, json.loads("\n".join(data)))
                    self.events.append(event)
                    return event
                name, data = "message", []
            elif line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        return None

    def until(self, wanted: Any, seconds: float = READ_SECONDS) -> list[tuple[str, Any]]:
        """Events up to and including the first for which ``wanted(name, data)`` holds (bounded in time)."""
        seen: list[tuple[str, Any]] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            event = self.next()
            assert event is not None, f"the stream ended before the event looked for; got {seen}"
            seen.append(event)
            if wanted(*event):
                return seen
        raise AssertionError(f"no such event within {seconds} s; got {seen}")

    def notifications(self, count: int, seconds: float = READ_SECONDS) -> list[dict[str, Any]]:
        """The next ``count`` CloudEvents (live or replayed), skipping control events and heartbeats."""
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + seconds
        while len(found) < count:
            assert time.monotonic() < deadline, f"only {len(found)} of {count} notifications in {seconds} s"
            event = self.next()
            assert event is not None, f"the stream ended after {len(found)} of {count} notifications"
            assert event[0] != "error", f"error event: {event[1]}"
            if event[0] in ("replay", "live-notification") and "specversion" in event[1]:
                found.append(event[1])
        return found

    def rest(self) -> list[tuple[str, Any]]:
        """Every remaining event, to the end of the stream."""
        remaining = []
        while (event := self.next()) is not None:
            remaining.append(event)
        return remaining


@contextmanager
def stream(served: Served, path: str, body: Any, headers: dict[str, str] | None = None) -> Iterator[Sse]:
    """POST a watch or replay and read its events (each read bounded by READ_SECONDS)."""
    with httpx.Client(timeout=httpx.Timeout(READ_SECONDS)) as client:
        with client.stream("POST", served.url + path, json=body, headers=headers or {}) as response:
            assert response.status_code == 200, response.read().decode()
            assert response.headers["content-type"].startswith("text/event-stream")
            yield Sse(response, response.iter_lines())


def mars(date: str, step: Any = 0, **fields: Any) -> dict[str, Any]:
    """A complete mars identifier on ``date``, numbers as numbers (as pyaviso 2 sends typed values)."""
    return {"class": "od", "expver": 1, "domain": "g", "date": date, "time": 0, "stream": "oper", "step": step,
            **fields}


def sequence(event: dict[str, Any]) -> int:
    """The sequence of a CloudEvent: its id after '@'."""
    return int(event["id"].split("@", 1)[1])


@contextmanager
def serve_process(etcd_url: str, port: int, log: Path, *args: str) -> Iterator[str]:
    """``aviso-workflows serve`` as a command on 127.0.0.1:``port`` (its output in ``log``); stopped by its pid."""
    try:
        started = start_serve_process(etcd_url, port, args, log=log, timeout=START_SECONDS)
    except ServeFailed as error:
        raise AssertionError(str(error)) from None
    with started:
        yield started.url
