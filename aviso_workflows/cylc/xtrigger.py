"""The ``aviso`` xtrigger of Cylc 8: released once the data of its cycle point is posted.

Found by Cylc through the entry point group ``cylc.xtriggers`` (name ``aviso``, this module)::

    [scheduling]
        [[xtriggers]]
            data = aviso(mars, date=%(point)s, class=od, expver=1, domain=g, stream=oper, step=0/6/12):PT30S
        [[graph]]
            P1D = "@data => process"

Each call is one read of the store, so a cycle point whose data was posted long ago (a catch-up) is
released at its first call. The cycle point gives ``date`` and, unless the request names it, ``time``
(see :mod:`aviso_workflows.cylc.core`). The results reach the tasks as ``data_location_0``,
``data_location_6``, ..., ``data_keys`` and ``data_count``. ``validate()`` runs at ``cylc validate``
and refuses a bad request, naming the field.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from ..config import resolve_config
from ..errors import ValidationError
from ..request import check_timeout
from ..store import Store
from .core import POINT_TEMPLATE, SAMPLE_POINT, check, check_mode, cycle_request

#: Arguments that are not request fields (``sequential`` is Cylc's own, for every xtrigger).
OPTIONS = ("event", "date", "mode", "timeout", "endpoint", "sequential")


def _store(endpoint: str, timeout: Any) -> Store:
    """The store of ``endpoint`` (comma-separated), else the environment's, the config file's or the embedded one."""
    seconds = check_timeout(timeout)
    if seconds is None or seconds <= 0:
        raise ValidationError("timeout", timeout, "expected a positive number of seconds for each read of the store")
    return Store(config=resolve_config(str(endpoint) if endpoint else None, timeout=seconds))


def aviso(event: str, date: str, mode: str = "all", timeout: float = 10.0, endpoint: str = "",
          **fields: Any) -> tuple[bool, dict[str, str]]:
    """Whether the request of this cycle point is satisfied now (one read), with its locations.

    ``date`` is the cycle point (``date=%(point)s``); ``mode`` ``all`` waits for every key, ``any`` for
    one; ``timeout`` bounds each request to etcd; ``endpoint`` names etcd (default: the environment's
    ``AVISO_WORKFLOWS_ENDPOINTS``, the config file, the embedded server). An unreachable store raises:
    Cylc logs the error and calls again at the next interval.
    """
    store = _store(endpoint, timeout)
    check_arguments(store, event, fields)
    request = cycle_request(store, event, fields, str(date))
    return check(store, request, mode)


def check_arguments(store: Store, event: Any, fields: Mapping[str, Any]) -> None:
    """Refuse an argument that is neither an option nor a field of the event, naming it and the valid ones.

    A misspelled option (``tiemout=60``) would otherwise be read as a request field and reported as an
    unknown field of the event; the closest valid name is suggested.
    """
    if not isinstance(event, str) or not event:
        return  # cycle_request names the event
    known = store.schema(event).fields
    for name, value in fields.items():
        if name in known:
            continue
        valid = [*OPTIONS, *sorted(field for field in known if field not in OPTIONS)]
        close = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ValidationError(str(name), value, f"not an argument of aviso(): {hint}it takes the options "
                              f"{', '.join(OPTIONS)} and the fields of event {event!r}: {', '.join(sorted(known))}")


def validate(args: Mapping[str, Any]) -> None:
    """Refuse a bad request at ``cylc validate``, naming the field (templates are checked with a sample point)."""
    try:
        _validate(args)
    except ValidationError as error:
        raise _config_error(f"aviso xtrigger: {error}") from None


def _validate(args: Mapping[str, Any]) -> None:
    check_mode(args.get("mode", "all"))
    date = str(args.get("date", ""))
    if POINT_TEMPLATE.search(date):
        date = SAMPLE_POINT
    store = _store(str(args.get("endpoint") or ""), args.get("timeout", 10.0))
    fields = dict(args.get("fields") or {})
    fields.update({name: value for name, value in args.items() if name not in (*OPTIONS, "fields")})
    check_arguments(store, args.get("event", ""), fields)
    templated = {name for name, value in fields.items() if isinstance(value, str) and POINT_TEMPLATE.search(value)}
    checked = {name: value for name, value in fields.items() if name not in templated}
    request = cycle_request(store, args.get("event", ""), checked, date)
    request.status_keys()  # the fields that choose where the event is stored must be given
    if check_mode(args.get("mode", "all")) == "all" and not templated:
        request.require_complete("an xtrigger in mode 'all' (use mode=any for a wildcard)")


def _config_error(message: str) -> Exception:
    """Cylc's own error for a bad workflow configuration (reported without a traceback), else a ValueError."""
    try:
        from cylc.flow.exceptions import WorkflowConfigError
    except ImportError:  # checked outside Cylc (tests, the main environment)
        return ValueError(message)
    return WorkflowConfigError(message)


__all__ = ["aviso", "check_arguments", "validate"]
