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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyflow as pf

from ..errors import ValidationError
from ..schema import SchemaRegistry
from .names import check_new_task
from .scripts import Late, RequestTemplate, check_variable_value, notify_lines, wait_lines

METER = "steps"
LABEL = "latest"
MISSING_LABEL = "missing"
LATE_LABEL = "late"
#: The most dates one catch-up family generates with independent dates (ten years of days).
MAX_CATCHUP_DATES = 3660
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

    While it waits, meter ``steps`` counts the keys *ready*: found in request order with none missing
    before them (with steps 0, 6, 12, 18 and 30 of 0/to/48/by/6 posted, it says 4 until step 24 comes),
    and label ``latest`` shows that count and the last ready key's ``label_field`` (default ``step`` when
    the event has one). So downstream tasks can trigger on ``wait.steps >= n``: the n-th key in request
    order (steps in the order the request lists them) exists when it fires, whatever the order of the
    posts. They move within a few hundred milliseconds of a post, and a catch-up of many keys costs a
    few ``ecflow_client`` calls, not two per key. After ``timeout`` seconds the task aborts
    with the reason; a kill ends the wait at once and aborts the task with "killed by SIGTERM ...".
    With ``min_found=K`` the task completes at the deadline if at least K keys exist, and label ``missing``
    names the keys still missing (``step=3 step=5``). With ``late_after`` (a timedelta or seconds after 00
    UTC of the request's ``date_field``), the task turns late when its data is due and still missing: the job sets
    ecFlow's ``late`` flag and label ``late`` to "late since <due time>" (see :func:`scripts.late_lines`).
    While it waits, ``aviso-workflows waiting`` lists it with its ecFlow path.
    """

    def __init__(self, name: str, event: str, request: Mapping[str, Any], *, timeout: float | None = None,
                 meter: str | None = METER, label: str | None = LABEL, label_field: str | None = None,
                 endpoints: Sequence[str] | str | None = None, command: str | None = None, any_key: bool = False,
                 registry: SchemaRegistry | None = None, min_found: int | None = None,
                 late_after: dt.timedelta | float | None = None, date_field: str = "date", **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.request_template = _template(self, event, request, registry)
        late = None if late_after is None else Late.build(late_after, LATE_LABEL, date_field)
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
            if late is not None:
                pf.Label(LATE_LABEL, "")
        fields = (registry or SchemaRegistry())[event].key_fields
        shown = label_field or ("step" if "step" in fields else None)
        self.script = wait_lines(self.request_template, timeout=timeout, meter=meter, label=label,
                                 label_field=shown, endpoints=endpoints, command=command, any_key=any_key,
                                 min_found=min_found, missing_label=MISSING_LABEL, late=late)
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
                   variable: str = "YMD", date_field: str = "date", wait: str = "wait", ordered: bool = False,
                   work: Callable[[Any], None] | None = None, **wait_options: Any) -> Any:
    """A family that waits for the data of each date from ``start`` to ``end`` and runs ``work`` for it.

    By default the dates are **independent**: one family per date, named ``YYYYMMDD`` (``/suite/daily/
    20261102``), with ``variable`` (``YMD``) set to its date and a wait task ``wait``, generated when the
    suite is built. ``work(day)`` is called inside each date's family to add its tasks (``day.wait`` is its
    wait task). A date whose data is missing holds back nothing but itself; with ``late_after`` (passed on
    to :class:`WaitTask`: the due time after 00 UTC of the date), it turns late in ecFlow when its data is
    due, and an operator can set it complete or requeue it like any family. Every date reads the store
    first, so dates whose data was posted long ago complete at once:

        def process(day):
            LiteralTask("process", script="process $YMD").triggers = day.wait.complete

        catchup_family("daily", start, end, "mars", {...}, work=process, late_after=dt.timedelta(hours=6))

    With ``ordered=True``, it is one ``RepeatDate`` family, as a suite that must process dates in order
    wants: a date starts once the one before is complete, so a missing date holds back the later ones
    (its late flag says why). There, tasks may also be added in a ``with`` block: ``with catchup_family(...,
    ordered=True) as day: ...``.
    """
    if start > end:
        raise ValidationError("start", start.isoformat(), f"expected a date on or before end={end.isoformat()}")
    dates = [start + dt.timedelta(days=n) for n in range((end - start).days + 1)]
    if not ordered and len(dates) > MAX_CATCHUP_DATES:
        raise ValidationError("end", end.isoformat(), f"at most {MAX_CATCHUP_DATES} dates from start="
                              f"{start.isoformat()} with independent dates (one family each); use ordered=True")
    family = _CatchupFamily(name, wait, ordered)
    with family:
        if ordered:
            pf.RepeatDate(variable, start, end)
            _date_body(event, request, variable, date_field, wait, work, wait_options)
        for day in [] if ordered else dates:
            text = day.strftime("%Y%m%d")
            family.dates.add(text)
            with pf.Family(text, **{variable: text}):
                _date_body(event, request, variable, date_field, wait, work, wait_options)
    family.generated = True
    return family


def _date_body(event: str, request: Mapping[str, Any], variable: str, date_field: str, wait: str,
               work: Callable[[Any], None] | None, wait_options: Mapping[str, Any]) -> None:
    """One date's wait task (its date is ``%variable%``) and the work ``work`` adds beside it."""
    task = WaitTask(wait, event, {**request, date_field: f"%{variable}%"}, date_field=date_field, **wait_options)
    if work is not None:
        work(task.parent)


class _CatchupFamily(pf.Family):
    """The family :func:`catchup_family` returns: with independent dates, tasks belong to each date's
    family (``work=``), so tasks added to it directly in a ``with`` block are refused, saying so."""

    def __init__(self, name: str, wait: str, ordered: bool) -> None:
        super().__init__(name)
        self.wait_name, self.ordered, self.generated = wait, ordered, False
        self.dates: set[str] = set()

    def __getattr__(self, item: str) -> Any:
        if item == self.__dict__.get("wait_name") and not self.__dict__.get("ordered", True):
            raise ValidationError("catchup_family", self.name, f"its dates are independent families, each with its "
                                  f"own {item!r} task: add the work with work=lambda day: ... (day.{item} is that "
                                  "date's wait), or pass ordered=True for one RepeatDate family")
        return super().__getattr__(item)

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        super().__exit__(kind, value, traceback)
        if kind is None and self.__dict__.get("generated") and not self.ordered:  # not while pyflow builds it
            added = [node.name for node in self.children if isinstance(node, pf.Task)
                     or isinstance(node, pf.Family) and node.name not in self.dates]
            if added:
                raise ValidationError("catchup_family", self.name, f"nodes {added} were added to the family of all "
                                      "dates; with independent dates add each date's work with work=lambda day: "
                                      "..., or pass ordered=True for one RepeatDate family")
