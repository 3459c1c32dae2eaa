"""Helpers of the action tests: a recording HTTP receiver and a listener run from a saved cursor."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aviso_workflows import Store, cli
from aviso_workflows.listen import Cursor, Position

BOUND = 20.0  # seconds: longest any test waits for something that should happen at once


@dataclass
class Received:
    """One request the receiver got."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """A real HTTP server on loopback; ``answer`` chooses each reply (status, JSON body) from the request."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.answer: Callable[[Received], tuple[int, Any]] = lambda request: (200, {})
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
                length = int(self.headers.get("Content-Length") or 0)
                request = Received("POST", self.path, {k.lower(): v for k, v in self.headers.items()},
                                   self.rfile.read(length))
                with receiver.lock:
                    receiver.requests.append(request)
                status, body = receiver.answer(request)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def received(self, path: str | None = None) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if path is None or r.path == path]

    def wait_for(self, count: int, path: str | None = None) -> list[Received]:
        deadline = time.monotonic() + BOUND
        while len(self.received(path)) < count:
            assert time.monotonic() < deadline, f"only {len(self.received(path))} of {count} requests arrived"
            time.sleep(0.02)
        return self.received(path)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_cursor(store: Store, name: str) -> Cursor:
    """A cursor saved at the store's current revision: a listen with it sees what is posted from now on."""
    cursor = Cursor(name)
    cursor.save(Position(store.current_revision()))  # without a key: the whole revision is passed
    return cursor


def listen_file(path: Path | str, count: int, cursor: str, *extra: str) -> int:
    """``aviso-workflows listen FILE --cursor NAME --count N`` in this process (store from the environment)."""
    return cli.main(["listen", str(path), "--cursor", cursor, "--count", str(count), *extra])


def write_listeners(path: Path, listeners: Sequence[dict[str, Any]]) -> Path:
    """A listener file in pyaviso's format."""
    path.write_text(json.dumps({"listeners": list(listeners)}, indent=1))
    return path


def mars(date: str, **fields: Any) -> dict[str, Any]:
    """A mars request on ``date`` (fields override the defaults)."""
    return {"class": "od", "expver": 1, "domain": "g", "date": date, "time": 0, "stream": "oper", "step": 0,
            **fields}
