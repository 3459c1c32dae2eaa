"""A plain SSE reader for the conformance cases: frames as the wire carries them, bounded in time."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class Frame:
    event: str
    data: dict[str, Any]
    lines: list[str]


def read_frames(url: str, path: str, body: dict[str, Any], *, until: Callable[[list[Frame]], bool] | None = None,
                seconds: float = 10.0) -> list[Frame]:
    """POST ``body`` to ``path`` and read frames until ``connection-closing`` or ``until(frames)``; fails after
    ``seconds``."""
    frames: list[Frame] = []
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=url, timeout=seconds) as client, client.stream("POST", path, json=body) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        lines: list[str] = []
        for line in response.iter_lines():
            assert time.monotonic() < deadline, f"no end within {seconds} s: {[f.event for f in frames]}"
            if line:
                lines.append(line)
                continue
            if not lines:
                continue
            event = next((item[len("event: "):] for item in lines if item.startswith("event: ")), "message")
            data = "\n".join(item[len("data: "):] for item in lines if item.startswith("data: "))
            frames.append(Frame(event, json.loads(data) if data else {}, lines))
            lines = []
            if frames[-1].event == "connection-closing" or (until is not None and until(frames)):
                return frames
    return frames


def notifications(frames: list[Frame]) -> list[dict[str, Any]]:
    return [frame.data for frame in frames if frame.event in ("replay", "live-notification")
            and "specversion" in frame.data]
