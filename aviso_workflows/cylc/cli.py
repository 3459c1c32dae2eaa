"""``aviso-workflows cylc-notify``: a Cylc task's one line to post its data, dated by its cycle point.

Added to the main command through the entry point group ``aviso_workflows.commands``::

    script = aviso-workflows cylc-notify event=mars,class=od,expver=1,domain=g,stream=oper,step=0/6/12 \\
                 --location "file:///data/$CYLC_TASK_CYCLE_POINT.grib"

The cycle point (``$CYLC_TASK_CYCLE_POINT``, or ``--point``) gives ``date`` and, unless given, ``time``,
by the xtrigger's rule. ``--check`` validates the request and prints its keys without writing.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..errors import ValidationError

POINT_VARIABLE = "CYLC_TASK_CYCLE_POINT"


def add_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``cylc-notify`` to the ``aviso-workflows`` command."""
    notify = subparsers.add_parser("cylc-notify", parents=[common],
                                   help="post the data of a Cylc task's cycle point (date and time from "
                                        f"${POINT_VARIABLE})")
    notify.add_argument("pairs", metavar="event=E,k=v,...", help="the request without date (and time): "
                        "pyaviso-style k=v pairs; lists a/b/c, ranges a/to/b/by/n")
    notify.add_argument("--point", help=f"the cycle point (default ${POINT_VARIABLE})")
    notify.add_argument("--location", help="payload stored as the value (the data's URL)")
    notify.add_argument("--ttl", type=int, metavar="SECONDS", help="delete the keys after this many seconds")
    notify.add_argument("--check", action="store_true", help="validate and print the keys; write nothing")
    notify.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from ..commandline import EXIT_OK, store_from_args
    from ..request import check_location, parse_pairs, split_event
    from .core import cycle_request

    point = args.point or os.environ.get(POINT_VARIABLE)
    if not point:
        raise ValidationError("point", None, f"give --point or run inside a Cylc job (${POINT_VARIABLE})")
    store = store_from_args(args)
    event, fields = split_event(parse_pairs(args.pairs))
    location = check_location(args.location if args.location is not None else fields.pop("location", None))
    request = cycle_request(store, event, fields, point)
    request.require_complete("cylc-notify")
    if args.check:
        for key in request.keys():
            print(key)
        return EXIT_OK
    result = store.notify(request, location=location, ttl=args.ttl)
    print(f"notified {len(result.keys)} key(s) for cycle point {point}, revision {result.revisions[-1]}")
    return EXIT_OK
