"""The ecFlow bridge: ``aviso-workflows listen`` on a listener file whose triggers are ecFlow actions.

``aviso-workflows ecflow-bridge FILE --port P`` is ``aviso-workflows listen FILE --cursor
ecflow-bridge-P`` with ``--host``/``--port`` as the server of the triggers that name none::

    listeners:
      - event: mars
        request: {class: od, expver: 1, domain: g, date: 20261122, time: 0, stream: oper}
        triggers:
          - {type: ecflow, meter: steps, node: /consumer/wait, value: "${request.step}"}
          - {type: ecflow, event: ready, node: "/consumer/step_${request.step}"}

It is the listener runtime (:func:`~aviso_workflows.listening.run_listener`), with its guarantees:
notifications in the order they were posted, the position saved after each one's triggers ran, an
unreachable ecflow_server waited for (the position stays, one log line per outage), a change the server
refuses written to the dead-letter file. A bridge killed outright between a notification's triggers and the
saving of its position applies that one notification again when it restarts; the changes set values, so
the state they leave is the same.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..documents import read_document
from ..listen import Cursor
from ..listeners import Listener, parse_listeners
from ..listening import ListenOptions, run_listener
from ..store import Store


@dataclass(frozen=True)
class BridgeOptions:
    """One bridge: its listener file, the ecflow_server of triggers that name none, and where it resumes."""

    listener_file: str
    port: int
    host: str = "localhost"
    cursor: str | None = None
    start: dt.datetime | int | None = None
    dead_letters: Literal["list", "replay"] | None = None
    dead_letter_file: Path | None = None

    @property
    def cursor_name(self) -> str:
        """The cursor the bridge resumes from: ``--cursor``, else ``ecflow-bridge-PORT``."""
        return self.cursor or f"ecflow-bridge-{self.port}"


def bridge_listeners(store: Store, bridge: BridgeOptions) -> list[Listener]:
    """The listeners of the bridge's file; its ``ecflow`` triggers that name no server talk to the bridge's."""
    document = read_document(bridge.listener_file, "listener file")
    if isinstance(document, Mapping) and isinstance(document.get("listeners"), list):
        document = {**document, "listeners": [_with_server(entry, bridge) for entry in document["listeners"]]}
    return parse_listeners(store, document, bridge.listener_file)


def _with_server(entry: Any, bridge: BridgeOptions) -> Any:
    """A listener whose ecflow triggers without ``host``/``port`` get the bridge's (as ``$ECF_HOST`` would)."""
    if not isinstance(entry, Mapping):
        return entry
    name = "triggers" if "triggers" in entry else "actions"
    triggers = entry.get(name)
    if not isinstance(triggers, list):
        return entry
    return {**entry, name: [_trigger_with_server(trigger, bridge) for trigger in triggers]}


def _trigger_with_server(trigger: Any, bridge: BridgeOptions) -> Any:
    if not isinstance(trigger, Mapping) or trigger.get("type") != "ecflow":
        return trigger
    given = dict(trigger)
    if not given.get("host"):  # the action's own rule: an empty host is no host
        given["host"] = bridge.host
    given.setdefault("port", bridge.port)
    return given


def listen_options(store: Store, bridge: BridgeOptions) -> ListenOptions:
    """The listener run of a bridge: its file's listeners, its cursor, actions reported, registered as a bridge."""
    return ListenOptions.of_listeners(
        bridge_listeners(store, bridge), bridge.listener_file, start=bridge.start, cursor=bridge.cursor_name,
        dead_letters=bridge.dead_letters, dead_letter_file=bridge.dead_letter_file,
        report_actions=not bridge.dead_letters,
        who={"kind": "ecflow-bridge", "ecflow_server": f"{bridge.host}:{bridge.port}"})


def run_bridge(store: Store, bridge: BridgeOptions, *, stop: threading.Event | None = None) -> int:
    """Run the bridge until stopped (SIGTERM, SIGINT, ``stop``); lists or replays its dead letters instead if asked."""
    if bridge.dead_letters:
        return run_listener(store, listen_options(store, bridge))
    saved = Cursor(bridge.cursor_name).load()
    where = f"resuming after revision {saved.revision}" if saved else "first start"
    print(f"ecflow-bridge: {bridge.listener_file}, ecFlow at {bridge.host}:{bridge.port}, cursor "
          f"{bridge.cursor_name}, {where}", flush=True)
    status = run_listener(store, listen_options(store, bridge), stop=stop)
    print("ecflow-bridge: stopped", flush=True)
    return status
