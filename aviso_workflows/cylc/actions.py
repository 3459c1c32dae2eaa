"""The ``cylc`` action of listener files: release an ``aviso`` xtrigger the moment its data is posted.

::

    listeners:
      - event: mars
        request: &forecast {class: od, expver: 1, domain: g, stream: oper, time: 0, step: [0, 6, 12]}
        triggers:
          - type: cylc
            workflow: daily/live        # the workflow's id
            task: process               # the task that waits on the xtrigger
            xtrigger: data              # the xtrigger's label
            request: {event: mars, <<: *forecast}   # the xtrigger's request (optional, see below)

For each notification the action names the cycle point from its ``date`` and ``time``
(``20261201T0000Z``; ``cycle`` replaces that with a template such as ``"${request.date}T0000Z"``),
then does what ``cylc broadcast`` of the xtrigger's results and ``cylc set WORKFLOW//CYCLE/TASK
--pre=xtrigger/LABEL`` do, so the task starts with the variables the xtrigger itself would give it.

With ``request`` (the xtrigger's arguments but date and time) the action reads the store once, as the
xtrigger does, and releases only when every key of that cycle is there (``mode: any``: one): a post of
step 0 alone does not release a task waiting for steps 0, 6 and 12. A task and cycle is released once
with all its keys: the other notifications of keys that release's read saw (the rest of one transaction,
a backlog) release nothing more; a later post of one of them (a re-post) releases again. Without
``request``, each notification releases the xtrigger with its own key (an xtrigger waiting for one key).

Each release is logged at INFO (``listen -v``): the ``cylc set``, the variables broadcast and the
notification that completed the cycle.

Repeating a release is harmless (Cylc logs "already satisfied"; a task that has run is not run again).
A cycle point not yet spawned is spawned by the release and runs when the runahead limit allows; a
point outside the graph is ignored by Cylc with a warning in its log. A workflow that is not running is
skipped with a warning: when it runs again, the xtrigger's own poll finds the data at its first call.
A scheduler that does not answer is a transient failure (the listener tries again).

The releases go through one ``cylc aviso-relay`` process kept for the listener's life (each cylc
command spends about a second starting); ``relay: false`` runs ``cylc broadcast`` and ``cylc set``
for each release instead.
"""

from __future__ import annotations

import json
import logging
import os
import re
import select
import shutil
import subprocess
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..actions import ActionFailed, TransientFailure, check_placeholders, fill_text, placeholder_values
from ..config import resolve_config
from ..errors import ValidationError
from ..request import Request, split_event
from ..store import Notification, Store
from .core import POINT, SAMPLE_POINT, check_at, check_mode, cycle_point, cycle_request, results

log = logging.getLogger(__name__)
KEYS = ("workflow", "task", "xtrigger", "cycle", "request", "mode", "endpoint", "cylc", "relay", "timeout")
WORKFLOW_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*(/[A-Za-z0-9_][A-Za-z0-9_.\-]*)*\Z")
TASK_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-+%@]*\Z")
LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
INTEGER_POINT = re.compile(r"\d+\Z")
#: The project's own Cylc environment (made by scripts/setup.sh), used when no ``cylc`` is on PATH.
PROJECT_CYLC = Path(__file__).resolve().parents[2] / ".venv-cylc" / "bin" / "cylc"
DEFAULT_TIMEOUT = 30.0
#: Cycle points whose last release is remembered (the oldest are forgotten first).
REMEMBERED_POINTS = 10_000


def find_cylc(given: Any = None) -> str:
    """The ``cylc`` command: the one given, else ``cylc`` on PATH, else the project's ``.venv-cylc``."""
    if given not in (None, ""):
        text = str(given)
        found = shutil.which(os.path.expanduser(text))
        if found is None:
            raise ValidationError("cylc.cylc", given, "expected the path of an executable cylc command")
        return found
    found = shutil.which("cylc") or (str(PROJECT_CYLC) if os.access(PROJECT_CYLC, os.X_OK) else None)
    if found is None:
        raise ValidationError("cylc.cylc", None, "no cylc command on PATH nor in .venv-cylc; give its path "
                              "(cylc: /path/to/cylc) or run make setup")
    return found


class _Relay:
    """One ``cylc aviso-relay`` process, started at the first release and again if it ends."""

    def __init__(self, cylc: str, timeout: float) -> None:
        self.cylc, self.timeout = cylc, timeout
        self._process: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    def warm(self) -> None:
        """Start the relay now, so that its start-up (about a second) is not paid by the first release."""
        with self._lock:
            try:
                self._started()
            except OSError as error:  # reported again, as a failure, at the first release
                log.warning("cylc aviso-relay could not start: %s", error)

    def send(self, order: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            for attempt in (1, 2):  # a relay that ended (killed, cylc upgraded) is started again once
                process = self._started()
                assert process.stdin is not None and process.stdout is not None
                try:
                    process.stdin.write(json.dumps(order) + "\n")
                    process.stdin.flush()
                except BrokenPipeError:
                    self.close()
                    continue
                ready, _, _ = select.select([process.stdout], [], [], self.timeout)
                if not ready:
                    self.close()
                    raise TransientFailure(f"cylc aviso-relay gave no answer within {self.timeout:g} s")
                line = process.stdout.readline()
                if line:
                    answer: dict[str, Any] = json.loads(line)
                    return answer
                self.close()
                if attempt == 2:
                    raise ActionFailed(f"{self.cylc} aviso-relay ended without answering (is aviso-workflows "
                                       "installed in the environment of this cylc?)")
        raise TransientFailure("cylc aviso-relay could not be reached")

    def _started(self) -> subprocess.Popen[str]:
        if self._process is None or self._process.poll() is not None:
            self._process = subprocess.Popen([self.cylc, "aviso-relay"], stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, text=True, bufsize=1)
        return self._process

    def close(self) -> None:
        """End the relay (it ends by itself when its input closes)."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class CylcAction:
    """Release the xtrigger ``label`` of ``task`` at the notification's cycle point in ``workflow``."""

    def __init__(self, workflow: str, task: str, label: str, *, cycle: str = "", request: dict[str, Any] | None = None,
                 mode: str = "all", endpoint: str = "", cylc: str = "", relay: bool = True,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.workflow, self.task, self.label, self.cycle = workflow, task, label, cycle
        self.request, self.mode, self.endpoint = request, mode, endpoint
        self.cylc, self.timeout = cylc, timeout
        self.placeholders = frozenset(check_placeholders("cylc.cycle", cycle))
        self._relay = _Relay(cylc, timeout) if relay else None
        if self._relay is not None:
            self._relay.warm()
        self._store: Store | None = None
        #: cycle point -> the store revision of the read that released it (None: released by a key, no read)
        self._released: OrderedDict[str, int] = OrderedDict()

    # -- what to release ---------------------------------------------------------------------------
    def point(self, notification: Notification) -> str:
        """The cycle point of a notification: the ``cycle`` template filled in, else its date and time."""
        if not self.cycle:
            try:
                return cycle_point(notification.request)
            except ValidationError as error:
                raise ActionFailed(f"no cycle point for {notification.key}: {error}") from None
        point = fill_text(self.cycle, placeholder_values(notification))
        if not (POINT.match(point) or INTEGER_POINT.match(point)):
            raise ActionFailed(f"cycle {point!r} is not a cycle point such as 20261201T0000Z")
        return point

    def found(self, notification: Notification, point: str) -> tuple[int | None, dict[str, str] | None]:
        """The xtrigger's results at ``point`` if its request is satisfied now (else None), with the revision
        the store was read at (None without ``request``: the notification's own key is the result)."""
        if self.request is None:
            fields = {k: v for k, v in notification.request.items()}
            request = Request.build(notification.event, fields, self._reader().schemas)
            return None, results(request, [notification])
        event, fields = split_event(self.request)
        if event != notification.event:
            raise ActionFailed(f"the cylc action's request is for event {event!r}, the notification for "
                               f"{notification.event!r}")
        store = self._reader()
        revision, satisfied, values = check_at(store, cycle_request(store, event, fields, point), self.mode)
        return revision, (values if satisfied else None)

    def _seen_by_release(self, point: str, notification: Notification) -> bool:
        """Whether the read of an earlier release at ``point`` already saw this notification's key."""
        released = self._released.get(point)
        return released is not None and notification.revision <= released

    def _remember(self, point: str, revision: int | None) -> None:
        if revision is None:
            return
        self._released[point] = revision
        self._released.move_to_end(point)
        while len(self._released) > REMEMBERED_POINTS:
            self._released.popitem(last=False)

    def _reader(self) -> Store:
        if self._store is None:
            self._store = Store(config=resolve_config(self.endpoint or None))
        return self._store

    # -- releasing -----------------------------------------------------------------------------------
    def __call__(self, notification: Notification) -> None:
        point = self.point(notification)
        if self._seen_by_release(point, notification):
            log.debug("cylc: %s//%s/%s: %s was released by a read that saw %s already", self.workflow, point,
                      self.task, self.label, notification.key)
            return
        revision, values = self.found(notification, point)
        if values is None:
            log.info("cylc: %s//%s/%s: %s is not complete yet", self.workflow, point, self.task, self.label)
            return
        environment = {f"{self.label}_{name}": value for name, value in values.items()}
        order = {"workflow": self.workflow, "task": f"{point}/{self.task}", "xtrigger": self.label,
                 "environment": environment}
        answer = self._relay.send(order) if self._relay is not None else self._commands(order)
        if answer.get("ok"):
            self._remember(point, revision)
            log.info("cylc set %s//%s/%s --pre=xtrigger/%s with %s, for %s (revision %s)", self.workflow, point,
                     self.task, self.label, ", ".join(environment) or "no variables", notification.key,
                     notification.revision)
            return
        error = f"cylc {self.workflow}//{point}/{self.task} xtrigger/{self.label}: {answer.get('error')}"
        if answer.get("stopped"):
            log.warning("%s (skipped: the xtrigger's poll finds the data when the workflow runs again)", error)
            return
        if answer.get("transient"):
            raise TransientFailure(error)
        raise ActionFailed(error)

    def _commands(self, order: dict[str, Any]) -> dict[str, Any]:
        """``cylc broadcast`` (when there are results) then ``cylc set``, each its own process."""
        point, task = order["task"].split("/", 1)
        settings = [argument for name, value in order["environment"].items()
                    for argument in ("-s", f"[environment]{name}={value}")]
        commands = [[self.cylc, "broadcast", self.workflow, "-p", point, "-n", task, *settings]] if settings else []
        commands.append([self.cylc, "set", f"{self.workflow}//{order['task']}", f"--pre=xtrigger/{self.label}"])
        for argv in commands:
            try:
                done = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout, check=False)
            except subprocess.TimeoutExpired:
                return {"ok": False, "transient": True, "error": f"{argv[1]} took more than {self.timeout:g} s"}
            if done.returncode != 0:
                lines = (done.stderr or done.stdout).strip().splitlines()
                reason = lines[-1] if lines else f"exit status {done.returncode}"
                return {"ok": False, "stopped": "not running" in reason or "WorkflowStopped" in reason,
                        "error": f"{argv[1]}: {reason}"}
        return {"ok": True}

    def describe(self, notification: Notification) -> str:
        point = self.point(notification)
        return f"cylc set {self.workflow}//{point}/{self.task} --pre=xtrigger/{self.label}"

    def close(self) -> None:
        """End the relay process, if one runs."""
        if self._relay is not None:
            self._relay.close()


def _name(field: str, value: Any, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise ValidationError(f"cylc.{field}", value, f"expected {what}")
    return value


def _check_request(spec: Mapping[str, Any]) -> dict[str, Any] | None:
    raw = spec.get("request")
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or "event" not in raw:
        raise ValidationError("cylc.request", raw, "expected the xtrigger's request with its event, such as "
                              "{event: mars, class: od, step: 0/6/12} (date and time come from the cycle point)")
    event, fields = split_event(raw)
    store = Store(config=resolve_config(spec.get("endpoint") or None))
    request = cycle_request(store, event, fields, SAMPLE_POINT)
    request.status_keys()
    if check_mode(spec.get("mode", "all")) == "all":
        request.require_complete("a cylc action in mode 'all' (use mode: any for a wildcard)")
    return dict(raw)


def cylc_action(spec: Mapping[str, Any]) -> CylcAction:
    """``{type: cylc, workflow, task, xtrigger, cycle?, request?, mode?, endpoint?, cylc?, relay?, timeout?}``."""
    unknown = sorted((name for name in spec if name not in (*KEYS, "type")), key=str)
    if unknown:
        raise ValidationError(f"cylc.{unknown[0]}", spec[unknown[0]], "a cylc action takes: " + ", ".join(KEYS))
    workflow = _name("workflow", spec.get("workflow"), WORKFLOW_ID, "a workflow id such as daily or daily/live")
    task = _name("task", spec.get("task"), TASK_NAME, "a task name such as process")
    label = _name("xtrigger", spec.get("xtrigger"), LABEL, "an xtrigger label such as data")
    cycle = spec.get("cycle", "")
    if not isinstance(cycle, str):
        raise ValidationError("cylc.cycle", cycle, "expected a template such as '${request.date}T0000Z'")
    timeout = spec.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 3600:
        raise ValidationError("cylc.timeout", timeout, "expected seconds from 1 to 3600 for one release")
    relay = spec.get("relay", True)
    if not isinstance(relay, bool):
        raise ValidationError("cylc.relay", relay, "expected true or false")
    endpoint = spec.get("endpoint") or ""
    if not isinstance(endpoint, str):
        raise ValidationError("cylc.endpoint", endpoint, "expected etcd endpoints separated by commas")
    request = _check_request(spec)
    return CylcAction(workflow, task, label, cycle=cycle, request=request, mode=check_mode(spec.get("mode", "all")),
                      endpoint=endpoint, cylc=find_cylc(spec.get("cylc")), relay=relay, timeout=float(timeout))


__all__ = ["CylcAction", "cylc_action", "find_cylc"]
