"""The ecFlow bridge: ``aviso-workflows listen`` on a listener file whose triggers are ecFlow actions.

``aviso-workflows ecflow-bridge FILE --port P`` is ``aviso-workflows listen FILE --cursor
ecflow-bridge-P`` with ``$ECF_HOST``/``$ECF_PORT`` set for the triggers that name no server::

    listeners:
      - event: mars
        request: {class: od, expver: 1, domain: g, date: 20261122, time: 0, stream: oper}
        triggers:
          - {type: ecflow, meter: steps, node: /consumer/wait, value: "${request.step}"}
          - {type: ecflow, event: ready, node: "/consumer/step_${request.step}"}

It is the listener runtime, with its guarantees: notifications in the order they were posted, the
position saved after each one's triggers ran, an unreachable ecflow_server waited for (the position
stays, one log line per outage), a change the server refuses written to the dead-letter file. A bridge
killed outright between a notification's triggers and the saving of its position applies that one
notification again when it restarts; the changes set values, so the state they leave is the same.
"""

from __future__ import annotations

import argparse
import os


def run_bridge(args: argparse.Namespace) -> int:
    """Run the listener file of ``args`` with the ecFlow server of ``--host``/``--port`` as the default."""
    from ..cli import cmd_listen
    from ..position import Cursor

    os.environ["ECF_HOST"] = args.host
    os.environ["ECF_PORT"] = str(args.port)
    args.pairs, args.cursor = args.bridge_config, args.cursor or f"ecflow-bridge-{args.port}"
    for name, default in (("to", None), ("count", None), ("json", False), ("dry_run", False),
                          ("dead_letters", None), ("dead_letter_file", None), ("request_file", None)):
        setattr(args, name, getattr(args, name, default))
    if args.dead_letters:
        return cmd_listen(args)
    args.report_actions = True
    args.who = [*(getattr(args, "who", None) or []), "kind=ecflow-bridge", f"ecflow_server={args.host}:{args.port}"]
    saved = Cursor(args.cursor).load()
    where = f"resuming after revision {saved.revision}" if saved else "first start"
    print(f"ecflow-bridge: {args.pairs}, ecFlow at {args.host}:{args.port}, cursor {args.cursor}, {where}",
          flush=True)
    status = cmd_listen(args)
    print("ecflow-bridge: stopped", flush=True)
    return status
