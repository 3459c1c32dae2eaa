"""Producer suite: a model run posts "step N of date YMD is available" after each step.

    python suites/producer.py --host localhost --port 3141 [--date 20261122] [--endpoint http://127.0.0.1:2379]

A RepeatInteger family walks STEP over 0..24; the model task ends with the one-line notify helper,
whose request comes from the ecFlow variables %YMD% and %STEP%. (``NotifyTask`` is the same as a task
of its own.)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyflow as pf

from aviso_workflows.ecflow import LiteralTask, LoopbackHost, notify_command
from aviso_workflows.ecflow.deploy import run_daily_suite

FORECAST = {"class": "od", "expver": 1, "domain": "g", "time": 0, "stream": "oper"}
LAST_STEP = 24


def build(home: Path, date: str, endpoints: Sequence[str] | None = None, name: str = "producer",
          last_step: int = LAST_STEP, step_seconds: float = 0.0) -> Any:
    """The producer suite for forecast ``date``; scripts and job output go under ``home``."""
    with pf.Suite(name, host=LoopbackHost(), files=str(home / "files"), home=str(home / "out"), YMD=date) as suite:
        with pf.Family("steps"):
            pf.RepeatInteger("STEP", 0, last_step, 1)
            model = LiteralTask("model")
            model.script = [f"sleep {step_seconds:g}  # the model computes step $STEP",
                            notify_command(model, "mars", {**FORECAST, "date": "%YMD%", "step": "%STEP%"},
                                           location="file:///data/%YMD%/step_%STEP%.grib", endpoints=endpoints)]
    return suite


def main(argv: Sequence[str] | None = None) -> None:
    run_daily_suite("producer", __doc__.splitlines()[0], build, argv)


if __name__ == "__main__":
    main()
