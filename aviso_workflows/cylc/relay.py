"""``cylc aviso-relay``: releases xtriggers for the ``cylc`` listener action, one process for many releases.

Each ``cylc broadcast`` or ``cylc set`` spends about a second starting (imports, keys) before it talks
to the scheduler for a few milliseconds. The action starts this relay once, through the ``cylc`` command
it is given (entry point group ``cylc.command``), and writes one JSON line per release::

    {"workflow": "daily/live", "task": "20261201T0000Z/process", "xtrigger": "data",
     "environment": {"data_location_0": "..."}}

The relay sends what ``cylc broadcast -p CYCLE -n TASK -s [environment]NAME=VALUE`` and ``cylc set
WORKFLOW//CYCLE/TASK --pre=xtrigger/LABEL`` send, as one GraphQL request (the broadcast first, so the
job sees the values), and answers one JSON line: ``{"ok": true}`` or ``{"ok": false, "error": ...,
"stopped": bool, "transient": bool}``. It ends when its input ends.
"""

from __future__ import annotations

import json
import sys
from typing import Any

MUTATION = """
mutation ($workflows: [WorkflowID]!, $points: [BroadcastCyclePoint], $namespaces: [NamespaceName],
          $settings: [BroadcastSetting], $tasks: [NamespaceIDGlob]!, $prerequisites: [PrerequisiteString]) {
  %s
  set(workflows: $workflows, tasks: $tasks, prerequisites: $prerequisites) { result }
}
"""
BROADCAST = "broadcast(workflows: $workflows, mode: Set, cyclePoints: $points, namespaces: $namespaces, " \
            "settings: $settings) { result }"
#: Seconds a scheduler has to answer one release.
TIMEOUT = 10.0


def release(clients: dict[str, Any], order: dict[str, Any]) -> dict[str, Any]:
    """Broadcast the environment (if any) and satisfy the xtrigger of one task; the answer to write back."""
    from cylc.flow.exceptions import ClientError, ClientTimeout, CylcError, WorkflowStopped

    workflow, task, label = str(order["workflow"]), str(order["task"]), str(order["xtrigger"])
    environment = {str(k): str(v) for k, v in (order.get("environment") or {}).items()}
    point, name = task.split("/", 1)
    variables = {"workflows": [workflow], "points": [point], "namespaces": [name],
                 "settings": [{"environment": environment}], "tasks": [task],
                 "prerequisites": [f"xtrigger/{label}"]}
    request = {"request_string": MUTATION % (BROADCAST if environment else ""), "variables": variables}
    for attempt in (1, 2):  # a client kept from before a restart of the scheduler fails once
        try:
            answer = _client(clients, workflow).serial_request("graphql", request)
            return _checked(answer)
        except WorkflowStopped as error:
            clients.pop(workflow, None)
            return {"ok": False, "stopped": True, "transient": False, "error": _line(error)}
        except (ClientError, ClientTimeout) as error:
            clients.pop(workflow, None)
            if attempt == 2:
                return {"ok": False, "stopped": False, "transient": True, "error": _line(error)}
        except CylcError as error:
            return {"ok": False, "stopped": False, "transient": False, "error": _line(error)}
    raise AssertionError("unreachable")


def _client(clients: dict[str, Any], workflow: str) -> Any:
    from cylc.flow.network.client_factory import get_client

    if workflow not in clients:
        clients[workflow] = get_client(workflow, timeout=TIMEOUT)
    return clients[workflow]


def _checked(answer: Any) -> dict[str, Any]:
    """Refusals inside a GraphQL answer (a broadcast setting Cylc rejects, a set it refuses) as errors."""
    problems = []
    for name in ("broadcast", "set"):
        for result in ((answer or {}).get(name) or {}).get("result") or []:
            response = result.get("response") or []
            if name == "set" and response and response[0] is False:
                problems.append(f"set: {response[1] if len(response) > 1 else response}")
            if name == "broadcast" and len(response) > 1 and response[1]:
                problems.append(f"broadcast refused {response[1]}")
    if not isinstance(answer, dict) or "set" not in answer:
        problems.append(f"unexpected answer {answer!r}")
    if problems:
        return {"ok": False, "stopped": False, "transient": False, "error": "; ".join(problems)}
    return {"ok": True}


def _line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def main(*args: str) -> None:
    """Answer one JSON line per JSON line read, until the input ends."""
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return
    clients: dict[str, Any] = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            answer = release(clients, json.loads(line))
        except Exception as error:  # noqa: BLE001 - one bad order must not end the relay
            answer = {"ok": False, "stopped": False, "transient": False, "error": _line(error)}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
