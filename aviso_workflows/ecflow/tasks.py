"""pyflow building blocks: a data-wait task, a notify task, a catch-up family, a task whose variables reach
its job as text, and a loopback host.

    with pf.Suite("consumer", host=LoopbackHost(), files=..., home=...) as suite:
        with pf.Family("fc", YMD="20261122"):
            wait = WaitTask("wait", "mars", {"class": "od", "expver": 1, "domain": "g", "date": "%YMD%",
                                             "time": 0, "stream": "oper", "step": "0/to/24"}, timeout=3600)
            LiteralTask("early", script="...").triggers = wait.steps >= 7
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pyflow as pf

from ..errors import ValidationError
from ..schema import SchemaRegistry
from .names import check_new_task
from .scripts import RequestTemplate, check_variable_value, notify_lines, wait_lines

METER = "steps"
LABEL = "latest"
MISSING_LABEL = "missing"
LITERAL_PREFIX = "AVISO_VAR_"


class LoopbackHost(pf.LocalHost):
    """pyflow's LocalHost, but jobs reach the server on ``localhost`` instead of the host name it reports.

    A job that fails without saying why aborts with "job exited with status N" (pyflow's own reason is
    "Trap raised in job file"). A job that aborted with its own reason keeps it: the server ignores a
    second abort of an aborted task.
    """

    def __init__(self, name: str = "localhost", **kwargs: Any) -> None:
        super().__init__(name, **kwargs)

    @property
    def job_cmd(self) -> str:
        command = str(super().job_cmd).replace("export ECF_HOST=%ECF_HOST%;", "export ECF_HOST=localhost;")
        return command.replace("|| ecflow_client --abort ", '|| ecflow_client --abort="job exited with status $?" ')

    def preamble(self, exit_hook: Any = None) -> list[str]:
        lines = super().preamble(exit_hook)
        return [("export ECF_HOST=localhost" if line.startswith("export ECF_HOST=%ECF_HOST%") else line)
                for line in lines]


def _sample_values(node: Any) -> Any:
    """Look a variable up on ``node`` and its parents at build time (None if unknown there)."""

    def sample(name: str) -> str | None:
        for exportable in node.all_exportables.values():
            if exportable.name == name:
                return _first_value(exportable)
        return None

    return sample


def _first_value(exportable: Any) -> str | None:
    """A variable's value, or a repeat's first value, as text."""
    value = getattr(exportable, "value", None)
    start = getattr(exportable, "_start", None)
    if isinstance(start, (dt.date, dt.datetime)):
        return start.strftime("%Y%m%d")
    if start is not None and not callable(start):
        return str(start)
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if value is None or callable(value):
        return None
    return value.strftime("%Y%m%d") if isinstance(value, (dt.date, dt.datetime)) else str(value)


def _template(node: Any, event: str, request: Mapping[str, Any], registry: SchemaRegistry | None) -> RequestTemplate:
    template = RequestTemplate.build(event, request, samples=_sample_values(node), registry=registry)
    for name in template.variables():
        sample = _sample_values(node)(name)
        if sample is None and not _defined(node, name):
            raise ValidationError(name, f"%{name}%", f"{node.fullname} uses this ecFlow variable in its request; "
                                  "define it on the task or a parent (pf.Variable, a repeat, or a keyword)")
        if sample is not None:
            check_variable_value(name, sample)
    return template


def _defined(node: Any, name: str) -> bool:
    return name in node.all_exportables


class LiteralTask(pf.Task):
    """A pyflow ``Task`` whose ecFlow variables reach the job as text, without passing through the shell.

    pyflow exports a variable the script uses as ``export NAME="%NAME%"``, where a value holding ``$(...)``
    or backticks would run. Here ecFlow writes every such value into a quoted here-document instead, which
    the shell never expands. Use it for any task whose variables may be altered on the server:

        LiteralTask("process", script='process_data "$DATA_LOCATION"')
    """

    def generate_script(self) -> Any:
        lines, includes = super().generate_script()
        return [_literal_export(line) for line in lines], includes


class _RequestTask(LiteralTask):
    """A task whose request (and ``location``) may refer to ecFlow variables, checked when the suite is built."""

    request_template: RequestTemplate


PYFLOW_EXPORT = re.compile(r'export ([A-Za-z_][A-Za-z0-9_]*)="%\1%"\Z')


def _literal_export(line: str) -> str:
    match = PYFLOW_EXPORT.match(line)
    if match is None:
        return line
    name = match.group(1)
    return f"{name}=$(cat <<'AVISO_VALUE'\n%{name}%\nAVISO_VALUE\n)\nexport {name}"


class WaitTask(_RequestTask):
    """A task that completes when every key of the request exists (at once if posted already).

    While it waits, meter ``steps`` counts the keys found and label ``latest`` shows the newest
    (``label_field``, default ``step`` when the event has one); downstream tasks can trigger on
    ``wait.steps >= n``; they move within a few hundred milliseconds of a post, and a catch-up of many
    keys costs a few ``ecflow_client`` calls, not two per key. After ``timeout`` seconds the task aborts
    with the reason; a kill ends the wait at once and aborts the task with "killed by SIGTERM ...".
    With ``min_found=K`` the task completes at the deadline if at least K keys exist, and label ``missing``
    names the keys still missing (``step=3 step=5``). While it waits, ``aviso-workflows waiting`` lists it
    with its ecFlow path.
    """

    def __init__(self, name: str, event: str, request: Mapping[str, Any], *, timeout: float | None = None,
                 meter: str | None = METER, label: str | None = LABEL, label_field: str | None = None,
                 endpoints: Sequence[str] | str | None = None, command: str | None = None, any_key: bool = False,
                 registry: SchemaRegistry | None = None, min_found: int | None = None, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.request_template = _template(self, event, request, registry)
        total = self._total()
        if min_found is not None and (any_key or isinstance(min_found, bool) or not isinstance(min_found, int)
                                      or min_found < 1):  # the job checks it against the keys of its request
            raise ValidationError("min_found", min_found, "expected a whole number of keys of at least 1, without "
                                  "any_key")
        with self:
            if meter:
                pf.Meter(meter, 0, max(total, 1))
            if label:
                pf.Label(label, "")
            if min_found is not None:
                pf.Label(MISSING_LABEL, "")
        fields = (registry or SchemaRegistry())[event].key_fields
        shown = label_field or ("step" if "step" in fields else None)
        self.script = wait_lines(self.request_template, timeout=timeout, meter=meter, label=label,
                                 label_field=shown, endpoints=endpoints, command=command, any_key=any_key,
                                 min_found=min_found, missing_label=MISSING_LABEL)
        check_new_task(self)  # a clash with a task of the same name is refused now, naming both

    def _total(self) -> int:
        """Keys the request stands for, with the variables' build-time values (1 when unknown)."""
        request = self.request_template.check(_sample_values(self))
        return request.count if request is not None and request.is_complete else 1


class NotifyTask(_RequestTask):
    """A task that posts the request's keys (``location`` becomes the stored value)."""

    def __init__(self, name: str, event: str, request: Mapping[str, Any], *, location: str | None = None,
                 ttl: int | None = None, endpoints: Sequence[str] | str | None = None, command: str | None = None,
                 registry: SchemaRegistry | None = None, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.request_template = _template(self, event, request, registry)
        self.script = notify_lines(self.request_template, location=location, ttl=ttl, endpoints=endpoints,
                                   command=command)
        check_new_task(self)


def notify_command(node: Any, event: str, request: Mapping[str, Any], **options: Any) -> str:
    """Lines to append to an existing task's script: post the request when the work is done.

        task.script = ["run_model", notify_command(task, "mars", {..., "step": "%STEP%"})]

    The variables are read into ``AVISO_VAR_<NAME>`` shell variables through a quoted here-document.
    """
    template = _template(node, event, request, options.pop("registry", None))
    return "\n".join(notify_lines(template, prefix=LITERAL_PREFIX, **options))


def catchup_family(name: str, start: dt.date, end: dt.date, event: str, request: Mapping[str, Any], *,
                   variable: str = "YMD", date_field: str = "date", wait: str = "wait", **wait_options: Any) -> Any:
    """A ``RepeatDate`` family whose first task waits for the data of the repeat's date.

    Every date reads the store first, so dates whose data was posted long ago complete at once and
    only dates still to come wait — unlike one revision kept across dates. Add the work inside:

        with catchup_family("daily", start, end, "mars", {...}) as day:
            pf.Task("process", script="...").triggers = day.wait.complete
    """
    family = pf.Family(name)
    with family:
        pf.RepeatDate(variable, start, end)
        WaitTask(wait, event, {**request, date_field: f"%{variable}%"}, **wait_options)
    return family
