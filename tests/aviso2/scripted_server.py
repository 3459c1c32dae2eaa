"""A real HTTP server on loopback that answers the Aviso 2 API with scripted frames.

For what an ``aviso-workflows serve`` in front of etcd does not easily produce: frames of the documented
shapes in a chosen order, pauses (silence), errors with a code, a replay cut at its cap.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from aviso_workflows.server import free_port

START_SECONDS = 10.0


def frame(event: str, data: dict[str, Any]) -> str:
    """One server-sent event as the wire carries it."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def cloud_event(sequence: int, identifier: dict[str, str], payload: Any = None, kind: str = "replay") -> str:
    """A notification frame: CloudEvent with ``id`` ``mars@<sequence>``."""
    return frame(kind, {"specversion": "1.0", "id": f"mars@{sequence}", "type": "int.ecmwf.aviso.mars",
                        "source": "http://scripted", "time": "2026-12-01T00:00:00Z",
                        "data": {"identifier": identifier, "payload": payload}})


def control(kind: str, **fields: Any) -> str:
    return frame("replay-control", {"type": kind, "topic": "mars", "timestamp": "2026-12-01T00:00:00Z", **fields})


def heartbeat() -> str:
    return frame("heartbeat", {"timestamp": "2026-12-01T00:00:00Z", "topic": "mars"})


@dataclass
class ScriptedServer:
    """Each stream request takes the next script: a list of frames (text) and pauses (seconds)."""

    streams: list[list[str | float]] = field(default_factory=list)
    notify_answers: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    port: int = 0

    def app(self) -> FastAPI:
        app = FastAPI()

        async def stream(request: Request) -> StreamingResponse:
            self.bodies.append(await request.json())
            self.headers.append(dict(request.headers))
            script = self.streams.pop(0) if self.streams else [60.0]
            return StreamingResponse(_play(script), media_type="text/event-stream")

        async def notify(request: Request) -> JSONResponse:
            self.bodies.append(await request.json())
            self.headers.append(dict(request.headers))
            status, body = self.notify_answers.pop(0) if self.notify_answers else (200, {"status": "success"})
            return JSONResponse(body, status_code=status)

        app.post("/api/v1/watch")(stream)
        app.post("/api/v1/replay")(stream)
        app.post("/api/v1/notification")(notify)
        return app

    def __enter__(self) -> ScriptedServer:
        self.port = free_port()
        config = uvicorn.Config(self.app(), host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_SECONDS
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the scripted server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._server.force_exit = True
        self._thread.join(timeout=5)

    @property
    def endpoint(self) -> str:
        return f"aviso+http://127.0.0.1:{self.port}"


async def _play(script: list[str | float]) -> AsyncIterator[str]:
    for step in script:
        if isinstance(step, str):
            yield step
        else:
            await asyncio.sleep(step)
