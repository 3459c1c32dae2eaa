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
from ..wait import wait
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
    """

    template_fields: Sequence[str] = ("event", "request")
    ui_color = "#c7e4f2"

    def __init__(self, *, event: str, request: Mapping[str, Any], wait_for: str = "all",
                 aviso_conn_id: str = AvisoHook.default_conn_name,
                 deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _requests.check_static(event, request, wait_for, complete=wait_for == "all")
        _requests.check_conn_id(aviso_conn_id)
        if not isinstance(deferrable, bool):
            raise ValidationError("deferrable", deferrable, "expected True or False")
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
        self._missing = ""

    def _resolve(self, context: Context) -> tuple[Store, Request]:
        store = AvisoHook(self.aviso_conn_id).get_conn()
        try:
            request = _requests.resolve(store, self.event, self.request, context)
            if self.wait_for == "all":
                request.require_complete("waiting for all keys")
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
            raise AirflowSensorTimeout(f"{error}; {self._missing}") from error

    def _execute_following(self, context: Context) -> list[dict[str, Any]]:
        """Poke mode: the core's wait reads what exists, then follows the watch until the timeout."""
        store, request = self._resolve(context)
        try:
            found = wait(store, request, mode=self.wait_for, timeout=self.timeout, on_progress=self._progress)
        except WaitTimeout as error:
            missing = _requests.missing_keys(request, (n.key for n in error.found), self.wait_for)
            self._fail_timeout(f"task {self.task_id}: timed out after {self.timeout:g} s; {missing}")
        return [n.to_dict() for n in found]

    def _execute_deferrable(self, context: Context) -> list[dict[str, Any]]:
        store, request = self._resolve(context)
        found, done = self._look(store, request)
        if done:
            return [n.to_dict() for n in found]
        self.defer(
            trigger=AvisoTrigger(event=request.event, request=request.as_dict(), aviso_conn_id=self.aviso_conn_id,
                                 wait_for=self.wait_for, known=[n.to_dict() for n in found],
                                 deadline=time.time() + self.timeout),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout + DEFER_GRACE_SECONDS),
        )

    def _progress(self, count: int, total: int, notification: Notification) -> None:
        if total > 1:
            self.log.info("%d/%d available: %s", count, total, notification.key)

    def _fail_timeout(self, message: str) -> NoReturn:
        if self.soft_fail or self.never_fail:
            raise AirflowSkipException(message)
        raise AirflowSensorTimeout(message)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> list[dict[str, Any]]:
        """Turn the trigger's event into the task's result, or an error."""
        if event.get("status") == "success":
            notifications: list[dict[str, Any]] = event["notifications"]
            self.log.info("released by %d notification(s)", len(notifications))
            return notifications
        message = f"task {self.task_id}: {event.get('message', event)}"
        if event.get("reason") == "timeout":
            raise AirflowSensorTimeout(message)
        raise AirflowException(message)
