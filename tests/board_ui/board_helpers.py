"""What the board tests share besides fixtures: the running board, a forecast's fields, the board's state."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from aviso_workflows import Store
from aviso_workflows.serve.app import ServeState

COMMAND = str(Path(sys.executable).parent / "aviso-workflows")
STEPS = "0/to/48/by/6"
START_SECONDS = 20.0


@dataclass
class Board:
    """A running serve with a forecast posted: its URL, the board's query, dates, and the waiter process."""

    url: str
    state: ServeState
    store: Store
    expver: str
    today: str
    yesterday: str
    late_log: Path
    waiter: subprocess.Popen[str]

    @property
    def query(self) -> str:
        return (f"date={self.yesterday},{self.today}&class=od&expver={self.expver}&stream=oper&time=00"
                f"&step={STEPS}")

    def fields(self, date: str, step: int) -> dict[str, Any]:
        return forecast(self.expver, date, step)

    def cell(self, date: str, step: int) -> str:
        return f"c-{date}-{step}"


def forecast(expver: str, date: str, step: int) -> dict[str, Any]:
    """The fields of one step of the 00 UTC forecast of ``date``."""
    return {"class": "od", "expver": expver, "domain": "g", "date": date, "time": 0, "stream": "oper", "step": step}


def state_of(board: Board) -> dict[str, Any]:
    """The board's JSON snapshot."""
    answer = httpx.get(f"{board.url}/board/state?{board.query}", timeout=10)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())
