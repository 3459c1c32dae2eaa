"""AvisoSensor: wait until every key of a request exists, in poke, reschedule or deferrable mode."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any, NoReturn

from airflow.sdk import BaseSensorOperator, Context, PokeReturnValue, conf
from airflow.sdk.exceptions import (
    AirflowException,
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowSkipException,
)

from ..errors import StoreUnavailable, TlsRefused, ValidationError, WaitTimeout
from ..request import Request
from ..store import Notification, Store
from ..wait import Progress, WaitResult, check_min_found, describe_missing, wait
from ..watch import one_line
from . import _requests
from .hooks import AvisoHook
from .triggers import AvisoTrigger

#: The shortest poke_interval of reschedule mode: Airflow can fail a sensor whose next poke is queued
#: before the scheduler has processed the end of the previous one (apache/airflow#71172); a long
#: interval makes that rare, deferrable mode avoids it.
RESCHEDULE_MIN_POKE_INTERVAL = 60.0
#: How much longer Airflow's own defer timeout is than the trigger's, so the trigger's message (which
#: names the missing keys) is the one users see.
DEFER_GRACE_SECONDS = 60.0


def who_waits(context: Context | Mapping[str, Any], kind: str) -> dict[str, Any]:
    """Who waits, for the list of waiters: the task instance's DAG, task, run, map index and try."""
    ti = context.get("ti") or context.get("task_instance")
    who: dict[str, Any] = {"kind": kind}
    for name in ("dag_id", "task_id", "run_id", "map_index", "try_number"):
        value = getattr(ti, name, None)
        if value is not None and not (name == "map_index" and value == -1):
            who[name] = value
    return who


class AvisoSensor(BaseSensorOperator):
    """Succeeds when every key of ``request`` for ``event`` exists (``wait_for="any"``: one key).

    Returns (to XCom) the notifications found: dicts with ``event``, ``request``, ``location``,
    ``key`` and ``revision``. A request without a date waits for the run's date (its logical date,
    or ``run_after`` for runs without one).

    - ``deferrable=True``: looks once and, if something is missing (or etcd cannot be read), hands the
      wait to the triggerer, which continues from what was found;
    - ``mode="poke"``: holds its worker slot and follows etcd's watch, released within milliseconds of
      the last post (``poke_interval`` is not used);
    - ``mode="reschedule"``: looks every ``poke_interval`` seconds (at least 60), freeing its slot between.

    In every mode an etcd outage is ridden out until ``timeout``, whose message names the missing keys.
    With ``min_found=K`` the sensor succeeds at ``timeout`` if at least K keys exist: the missing keys go to
    XCom under ``missing`` (and a WARNING names them). While it waits (poke or deferred), the sensor is
    listed by ``aviso-workflows waiting`` with its DAG, task and run ids.
    """

    template_fields: Sequence[str] = ("event", "request")
    ui_color = "#c7e4f2"

    def __init__(self, *, event: str, request: Mapping[str, Any], wait_for: str = "all",
                 aviso_conn_id: str = AvisoHook.default_conn_name,
                 deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
                 min_found: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _requests.check_static(event, request, wait_for, complete=wait_for == "all")
        _requests.check_conn_id(aviso_conn_id)
        if not isinstance(deferrable, bool):
            raise ValidationError("deferrable", deferrable, "expected True or False")
        if min_found is not None and (wait_for != "all" or isinstance(min_found, bool)
                                      or not isinstance(min_found, int) or min_found < 1):
            raise ValidationError("min_found", min_found, "expected a whole number of keys of at least 1, with "
                                  "wait_for='all'")
        if self.reschedule and not deferrable and self.poke_interval < RESCHEDULE_MIN_POKE_INTERVAL:
            raise ValidationError("poke_interval", self.poke_interval,
                                  f"reschedule mode needs at least {RESCHEDULE_MIN_POKE_INTERVAL:g} s (shorter "
                                  "intervals race Airflow's scheduler, apache/airflow#71172); use deferrable=True "
                                  "to be released as soon as the data is posted")
        self.event = event
        self.request = dict(request)
        self.wait_for = wait_for
        self.aviso_conn_id = aviso_conn_id
        self.deferrable = deferrable
        self.min_found = min_found
        self._missing = ""

    def _resolve(self, context: Context) -> tuple[Store, Request]:
        store = AvisoHook(self.aviso_conn_id).get_conn()
        try:
            request = _requests.resolve(store, self.event, self.request, context)
            if self.wait_for == "all":
                request.require_complete("waiting for all keys")
            check_min_found(self.min_found, request, self.wait_for)
        except ValidationError as error:
            raise AirflowFailException(f"task {self.task_id}: {error}") from error
        return store, request

    def _look(self, store: Store, request: Request) -> tuple[list[Notification], bool]:
        """One read of what exists; an outage (not a refused TLS setting) counts as nothing found yet."""
        try:
            _, found = store.read(request)
        except TlsRefused:
            raise
        except StoreUnavailable as error:
            self.log.warning("etcd cannot be read now (%s); trying again until the sensor's timeout", one_line(error))
            found = []
        done = len(found) >= request.count if self.wait_for == "all" else bool(found)
        total = request.count if request.is_complete else "?"
        self.log.info("%d/%s available for %s", len(found), total, request)
        self._missing = _requests.missing_keys(request, (n.key for n in found), self.wait_for)
        return found, done

    def poke(self, context: Context) -> PokeReturnValue:
        store, request = self._resolve(context)
        found, done = self._look(store, request)
        return PokeReturnValue(done, [n.to_dict() for n in found] if done else None)

    def execute(self, context: Context) -> Any:
        if self.deferrable:
            return self._execute_deferrable(context)
        if not self.reschedule:
            return self._execute_following(context)
        try:
            return super().execute(context)
        except AirflowSensorTimeout as error:  # Airflow's message says how long, ours what is missing
            released = self._last_look(context) if self.min_found is not None else None
            if released is not None:
                return released
            raise AirflowSensorTimeout(f"{error}; {self._missing}") from error

    def _last_look(self, context: Context) -> list[dict[str, Any]] | None:
        """Reschedule mode at the timeout: release with what exists if that is at least ``min_found`` keys."""
        store, request = self._resolve(context)
        found, _ = self._look(store, request)
        if len(found) < (self.min_found or 0):
            return None
        have = {n.key for n in found}
        return self._partial(context, request, WaitResult(found, [k for k in request.keys() if k not in have]))

    def _partial(self, context: Context, request: Request, found: WaitResult) -> list[dict[str, Any]]:
        """The result of a release with part of the keys: the missing ones to XCom ``missing``, and a WARNING."""
        if found.partial:
            self.log.warning("released at the timeout with %d/%d keys (min_found=%d); missing: %s", len(found),
                             request.count, self.min_found, describe_missing(request, found.missing))
            context["ti"].xcom_push(key="missing", value=found.missing)
        return [n.to_dict() for n in found]

    def _execute_following(self, context: Context) -> list[dict[str, Any]]:
        """Poke mode: the core's wait reads what exists, then follows the watch until the timeout."""
        store, request = self._resolve(context)
        try:
            found = wait(store, request, mode=self.wait_for, timeout=self.timeout, on_ready=self._progress,
                         min_found=self.min_found, who=who_waits(context, "airflow-sensor"))
        except WaitTimeout as error:
            missing = _requests.missing_keys(request, (n.key for n in error.found), self.wait_for)
            self._fail_timeout(f"task {self.task_id}: timed out after {self.timeout:g} s; {missing}")
        return self._partial(context, request, found)

    def _execute_deferrable(self, context: Context) -> list[dict[str, Any]]:
        store, request = self._resolve(context)
        found, done = self._look(store, request)
        if done:
            return [n.to_dict() for n in found]
        self.defer(
            trigger=AvisoTrigger(event=request.event, request=request.as_dict(), aviso_conn_id=self.aviso_conn_id,
                                 wait_for=self.wait_for, known=[n.to_dict() for n in found],
                                 deadline=time.time() + self.timeout, min_found=self.min_found,
                                 who=who_waits(context, "airflow-trigger")),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout + DEFER_GRACE_SECONDS),
        )

    def _progress(self, progress: Progress) -> None:
        if progress.total > 1:  # ready: in request order with none missing before (what downstream may use)
            self.log.info("%d/%d ready (%d found), newest: %s", progress.ready, progress.total, progress.found,
                          progress.newest.key)

    def _fail_timeout(self, message: str) -> NoReturn:
        if self.soft_fail or self.never_fail:
            raise AirflowSkipException(message)
        raise AirflowSensorTimeout(message)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> list[dict[str, Any]]:
        """Turn the trigger's event into the task's result, or an error."""
        if event.get("status") == "success":
            notifications: list[dict[str, Any]] = event["notifications"]
            self.log.info("released by %d notification(s)", len(notifications))
            if event.get("missing"):
                self.log.warning("released at the timeout with %d key(s) (min_found=%s); %d missing: %s",
                                 len(notifications), self.min_found, len(event["missing"]),
                                 ", ".join(event["missing"][:20]))
                context["ti"].xcom_push(key="missing", value=event["missing"])
            return notifications
        message = f"task {self.task_id}: {event.get('message', event)}"
        if event.get("reason") == "timeout":
            raise AirflowSensorTimeout(message)
        raise AirflowException(message)
