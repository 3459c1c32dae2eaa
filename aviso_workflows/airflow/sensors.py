"""AvisoSensor: wait until every key of a request exists, in poke, reschedule or deferrable mode."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator, Context, PokeReturnValue, conf
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from ..errors import ValidationError
from ..request import Request
from ..store import Notification, Store
from . import _requests
from .hooks import AvisoHook
from .triggers import AvisoTrigger


class AvisoSensor(BaseSensorOperator):
    """Succeeds when every key of ``request`` for ``event`` exists (``wait_for="any"``: one key).

    Returns (to XCom) the notifications found: dicts with ``event``, ``request``, ``location``,
    ``key`` and ``revision``. A request without a date waits for the run's date (its logical date,
    or ``run_after`` for runs without one). With ``deferrable=True`` the sensor looks once and, if
    something is missing, hands the wait to the triggerer, which continues from what was found.
    """

    template_fields: Sequence[str] = ("event", "request")
    ui_color = "#c7e4f2"

    def __init__(self, *, event: str, request: Mapping[str, Any], wait_for: str = "all",
                 aviso_conn_id: str = AvisoHook.default_conn_name,
                 deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _requests.check_static(event, request, wait_for, complete=wait_for == "all")
        self.event = event
        self.request = dict(request)
        self.wait_for = wait_for
        self.aviso_conn_id = aviso_conn_id
        self.deferrable = deferrable

    def _resolve(self, context: Context) -> tuple[Store, Request]:
        store = AvisoHook(self.aviso_conn_id).get_conn()
        try:
            request = _requests.resolve(store, self.event, self.request, context)
            if self.wait_for == "all":
                request.require_complete("waiting for all keys")
        except ValidationError as error:
            raise AirflowFailException(f"task {self.task_id}: {error}") from error
        return store, request

    def _look(self, context: Context) -> tuple[Request, list[Notification], bool]:
        store, request = self._resolve(context)
        _, found = store.read(request)
        done = len(found) >= request.count if self.wait_for == "all" else bool(found)
        total = request.count if request.is_complete else "?"
        self.log.info("%d/%s available for %s", len(found), total, request)
        return request, found, done

    def poke(self, context: Context) -> PokeReturnValue:
        _, found, done = self._look(context)
        return PokeReturnValue(done, [n.to_dict() for n in found] if done else None)

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        request, found, done = self._look(context)
        if done:
            return [n.to_dict() for n in found]
        self.defer(
            trigger=AvisoTrigger(event=request.event, request=request.as_dict(), aviso_conn_id=self.aviso_conn_id,
                                 wait_for=self.wait_for, known=[n.to_dict() for n in found]),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> list[dict[str, Any]]:
        """Turn the trigger's event into the task's result, or an error."""
        if event.get("status") == "success":
            notifications: list[dict[str, Any]] = event["notifications"]
            self.log.info("released by %d notification(s)", len(notifications))
            return notifications
        raise AirflowException(f"task {self.task_id}: {event.get('message', event)}")
