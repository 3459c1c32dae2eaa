"""Two tasks deployed to one script file with different scripts are refused when the suite is built, naming both.

pyflow itself (3.6) finds the clash only in ``deploy_suite()`` ("Scripts deployed with the same name must be
unique within one AnchorFamily or Suite: .../files/wait.ecf"), after ``check_definition()`` passed, and names
the file but neither task.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pyflow as pf
import pytest

from aviso_workflows import ValidationError
from aviso_workflows.ecflow import LoopbackHost, NotifyTask, WaitTask, catchup_family
from aviso_workflows.ecflow.deploy import play
from aviso_workflows.ecflow.server import EcflowServer

FC = {"class": "od", "expver": 1, "domain": "g", "time": 0, "stream": "oper"}
DAYS = (dt.date(2026, 11, 1), dt.date(2026, 11, 30))


def test_a_wait_task_beside_a_catch_up_family_of_the_same_wait_name_is_refused_when_built(tmp_path: Path) -> None:
    with pf.Suite("consumer", host=LoopbackHost(), files=str(tmp_path / "files"), home=str(tmp_path),
                  YMD="20261122"):
        WaitTask("wait", "mars", {**FC, "date": "%YMD%", "step": "0/to/24"})
        with pytest.raises(ValidationError) as refused:
            catchup_family("daily", *DAYS, "mars", {**FC, "step": 0})
    message = str(refused.value)
    assert refused.value.field == "name" and refused.value.value == "wait"
    assert re.search(r"/consumer/wait and /consumer/daily/(\d{8}/)?wait would both be deployed as wait.ecf", message), \
        message
    assert "catchup_family(..., wait=" in message


def test_the_other_order_and_a_notify_task_are_refused_too(tmp_path: Path) -> None:
    with pf.Suite("s", host=LoopbackHost(), files=str(tmp_path / "files"), home=str(tmp_path)):
        catchup_family("daily", *DAYS, "mars", {**FC, "step": 0})
        with pytest.raises(ValidationError, match=r"/s/daily/(\d{8}/)?wait and /s/wait would both be deployed"):
            NotifyTask("wait", "mars", {**FC, "date": "20261122", "step": 0})


def test_same_name_is_fine_with_the_same_script_or_under_another_anchor(tmp_path: Path) -> None:
    with pf.Suite("s", host=LoopbackHost(), files=str(tmp_path / "files"), home=str(tmp_path)) as suite:
        for name in ("a", "b"):  # plain families share the suite's files: the same script is one file
            with pf.Family(name):
                WaitTask("wait", "mars", {**FC, "date": "20261122", "step": 0})
        with pf.AnchorFamily("own"):  # its own files directory
            WaitTask("wait", "mars", {**FC, "date": "20261123", "step": 0})
        catchup_family("daily", *DAYS, "mars", {**FC, "step": 0}, wait="daily_wait")
    suite.check_definition()
    suite.deploy_suite()
    assert sorted(p.name for p in (tmp_path / "files").glob("*.ecf")) == ["daily_wait.ecf", "wait.ecf"]


def test_a_clash_of_plain_tasks_is_refused_before_deploy_writes_anything(tmp_path: Path,
                                                                          ecflow_server: EcflowServer) -> None:
    with pf.Suite("plain", host=LoopbackHost(), files=str(tmp_path / "files"), home=str(tmp_path)) as suite:
        pf.Task("work", script="echo one")
        with pf.Family("f"):
            pf.Task("work", script="echo two")
    with pytest.raises(ValidationError, match="/plain/work and /plain/f/work would both be deployed as work.ecf"):
        play(suite, "localhost", ecflow_server.port)
    assert not (tmp_path / "files").exists()
    assert ecflow_server.client().get_defs() is None or \
        ecflow_server.client().get_defs().find_suite("plain") is None
