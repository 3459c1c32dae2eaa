"""Consumer suite: one task waits for the forecast's steps; downstream work starts as steps arrive.

    python suites/consumer.py --host localhost --port 3141 [--date 20261122] [--endpoint http://127.0.0.1:2379]

The wait task's meter ``steps`` counts the steps ready in order (0, 1, ... with none missing before
them: a step posted early counts once the steps before it are in), so ``early`` (steps 0-6) starts as
soon as steps 0 to 6 are in, long before the whole forecast is, and never before step 6 exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyflow as pf

from aviso_workflows.ecflow import LiteralTask, LoopbackHost, WaitTask
from aviso_workflows.ecflow.deploy import run_daily_suite

FORECAST = {"class": "od", "expver": 1, "domain": "g", "time": 0, "stream": "oper"}
#: Downstream task → number of steps (0, 1, ... in order) it needs.
DOWNSTREAM = {"early": 7, "middle": 13, "late": 19, "products": 25}


def build(home: Path, date: str, endpoints: Sequence[str] | None = None, name: str = "consumer",
          timeout: float = 6 * 3600) -> Any:
    """The consumer suite for forecast ``date``; scripts and job output go under ``home``."""
    with pf.Suite(name, host=LoopbackHost(), files=str(home / "files"), home=str(home / "out"), YMD=date) as suite:
        wait = WaitTask("wait", "mars", {**FORECAST, "date": "%YMD%", "step": "0/to/24"}, timeout=timeout,
                        endpoints=endpoints)
        for task, needed in DOWNSTREAM.items():
            work = LiteralTask(task, script=f"echo {task}: {needed} steps of $YMD are available")
            work.triggers = wait.steps >= needed
    return suite


def main(argv: Sequence[str] | None = None) -> None:
    run_daily_suite("consumer", __doc__.splitlines()[0], build, argv)


if __name__ == "__main__":
    main()
