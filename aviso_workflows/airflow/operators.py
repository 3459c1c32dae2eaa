"""AvisoNotifyOperator: post "data available" for every key of a request, in one transaction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowFailException

from ..errors import ValidationError
from . import _requests
from .hooks import AvisoHook


class AvisoNotifyOperator(BaseOperator):
    """Notify every key of ``request`` for ``event`` (with ``location`` as payload); returns the keys.

    A request without a date is dated by the run (its logical date, or ``run_after``). ``ttl`` makes
    the keys expire after that many seconds. Every argument written as a plain value is checked when
    the DAG file is parsed; templates and task outputs when the task runs.
    """

    template_fields: Sequence[str] = ("event", "request", "location", "ttl")
    ui_color = "#f2dfc7"

    def __init__(self, *, event: str, request: Mapping[str, Any], location: str | None = None,
                 ttl: int | str | None = None, aviso_conn_id: str = AvisoHook.default_conn_name,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _requests.check_static(event, request, complete=True)
        entries = request if isinstance(request, Mapping) else {}  # the core reads them from the request too
        _requests.check_payload(entries.get("location") if location is None else location,
                                entries.get("ttl") if ttl is None else ttl)
        _requests.check_conn_id(aviso_conn_id)
        self.event = event
        self.request = dict(request)
        self.location = location
        self.ttl = ttl
        self.aviso_conn_id = aviso_conn_id

    def execute(self, context: Context) -> list[str]:
        store = AvisoHook(self.aviso_conn_id).get_conn()
        try:
            request = _requests.resolve(store, self.event, self.request, context)
            result = store.notify(request, location=self.location or None, ttl=self.ttl or None)
        except ValidationError as error:
            raise AirflowFailException(f"task {self.task_id}: {error}") from error
        self.log.info("notified %d key(s) in %d transaction(s)", len(result.keys), len(result.revisions))
        return result.keys
