"""On a real ecflow_server: catch-up dates are independent, and a date whose data is missing turns late.

Three dates, the middle one not posted: dates 1 and 3 complete at once, date 2 waits, gets ecFlow's
``late`` flag and label at its due time (``late_after`` past 00 UTC of its date, chosen here to fall a few
seconds after the suite begins), then completes when its data is posted. An operator's requeue of the
date's family runs it again (and clears the flag, as ecFlow does for its own late attribute).
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import ecflow
import pyflow as pf
import pytest
from ecflow_helpers import Watcher, no_job_processes_within, node_state

from aviso_workflows import Store
from aviso_workflows.ecflow import LiteralTask, LoopbackHost, catchup_family
from aviso_workflows.ecflow.deploy import play
from aviso_workflows.ecflow.server import EcflowServer
from aviso_workflows.errors import ValidationError

pytestmark = pytest.mark.ecflow
#: An expver of its own: these dates are around today, which no other test posts with it.
ANALYSIS = {"class": "od", "expver": 77, "domain": "g", "time": 0, "stream": "oper", "step": 0}
#: Seconds from the suite's start to date 2's due time: its wait has started by then.
DUE_IN = 8.0


def is_late(defs: Any, path: str) -> bool:
    return bool(defs.find_abs_node(path).get_flag().is_set(ecflow.FlagType.late))


def process(day: Any) -> None:
    LiteralTask("process", script="echo processing the analysis of $YMD").triggers = day.wait.complete


def test_a_missing_date_turns_late_holds_back_no_other_and_completes_when_posted(
        ecflow_server: EcflowServer, watcher: Watcher, home: Path, store: Store, etcd_url: str) -> None:
    today = dt.datetime.now(dt.UTC).date()
    dates = [today - dt.timedelta(days=1), today, today + dt.timedelta(days=1)]
    texts = [d.strftime("%Y%m%d") for d in dates]
    for text in (texts[0], texts[2]):
        store.notify("mars", {**ANALYSIS, "date": text})
    due = time.time() + DUE_IN
    late_after = due - dt.datetime(today.year, today.month, today.day, tzinfo=dt.UTC).timestamp()
    with pf.Suite("catchup_late", host=LoopbackHost(), files=str(home / "files"), home=str(home / "out"),
                  ECF_TRIES="1") as suite:
        catchup_family("daily", dates[0], dates[-1], "mars", ANALYSIS, timeout=120, endpoints=[etcd_url],
                       late_after=round(late_after), work=process)
    play(suite, "localhost", ecflow_server.port)
    first, middle, last = (f"/catchup_late/daily/{text}" for text in texts)

    watcher.until(lambda d: node_state(d, first) == node_state(d, last) == "complete", 30,
                  "dates 1 and 3 completing while date 2 has no data")
    assert node_state(watcher.defs(), middle + "/wait") == "active"
    # Date 3 is due tomorrow: its timer's sleep ends with its wait, not tomorrow.
    no_job_processes_within(ecflow_server, last + "/wait", 10, "date 3's job and its late timer ending")
    watcher.until(lambda d: is_late(d, middle + "/wait"), DUE_IN + 30, "date 2 turning late")
    flagged = time.time()
    defs = watcher.defs()
    print(f"late flag seen {flagged - due:+.2f} s after the due time")
    assert flagged >= due - 1  # the due time has whole seconds; the flag is never set before it
    assert node_state(defs, middle + "/wait") == "active"
    assert watcher.label(middle + "/wait", "late").startswith("late since " + texts[1][:4])
    assert not is_late(defs, first + "/wait") and not is_late(defs, last + "/wait")

    store.notify("mars", {**ANALYSIS, "date": texts[1]})
    watcher.until(lambda d: node_state(d, "/catchup_late") == "complete", 30, "date 2 completing once posted")
    assert ", complete at " in watcher.label(middle + "/wait", "late")

    ecflow_server.client().requeue(middle)  # an operator's action on the late date: it runs again
    watcher.until(lambda d: node_state(d, middle) == "complete", 30, "the requeued date completing again")
    assert not is_late(watcher.defs(), middle + "/wait")


def test_ordered_dates_keep_one_repeat_date_family() -> None:
    with pf.Suite("ordered_dates"):
        with catchup_family("daily", dt.date(2026, 11, 1), dt.date(2026, 11, 3), "mars", ANALYSIS,
                            ordered=True) as day:
            LiteralTask("process", script="true").triggers = day.wait.complete
    definition = str(day.suite.ecflow_definition())
    assert "repeat date YMD 20261101 20261103" in definition and "family 20261102" not in definition


def test_tasks_added_beside_independent_dates_are_refused_naming_the_way() -> None:
    with pytest.raises(ValidationError, match="work=lambda day"):
        with pf.Suite("misused"):
            with catchup_family("daily", dt.date(2026, 11, 1), dt.date(2026, 11, 3), "mars", ANALYSIS) as day:
                LiteralTask("process", script="true").triggers = day.wait.complete
    with pytest.raises(ValidationError, match="start"):
        catchup_family("daily", dt.date(2026, 11, 3), dt.date(2026, 11, 1), "mars", ANALYSIS)
