"""``aviso-workflows ecflow-bridge``: run the ecFlow bridge (added to the main command)."""

from __future__ import annotations

import argparse
from typing import Any

from ..listen import Cursor


def add_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``ecflow-bridge`` to the ``aviso-workflows`` command."""
    bridge = subparsers.add_parser("ecflow-bridge", parents=[common],
                                   help="set ecFlow events, meters, labels, variables or complete tasks "
                                        "from notifications (resumes from its cursor)")
    bridge.add_argument("bridge_config", metavar="CONFIG", help="YAML file with listeners: [{request:, actions:}]")
    bridge.add_argument("--host", default="localhost", help="ecflow_server host (default localhost)")
    bridge.add_argument("--port", type=int, required=True, help="ecflow_server port")
    bridge.add_argument("--cursor", metavar="NAME", help="cursor name (default: from the config, else "
                                                         "ecflow-bridge-PORT)")
    bridge.set_defaults(run=run_bridge)


def run_bridge(args: argparse.Namespace) -> int:
    """Start the bridge and run it until SIGTERM/SIGINT."""
    import ecflow

    from ..cli import store_from_args
    from .bridge import Bridge, BridgeError, load_config, stop_on_signals

    store = store_from_args(args)
    config = load_config(store, args.bridge_config)
    cursor = Cursor(args.cursor or config.cursor or f"ecflow-bridge-{args.port}")
    client = ecflow.Client(args.host, str(args.port))
    try:
        client.ping()
    except RuntimeError as error:
        raise BridgeError(f"no ecFlow server answers at {args.host}:{args.port} ({_first_line(error)})") from None
    bridge = Bridge(store, config, client, cursor, report=lambda line: print(line, flush=True))
    stop_on_signals(bridge)
    start = bridge.start_position()
    print(f"ecflow-bridge: {len(config.listeners)} listener(s), ecFlow at {args.host}:{args.port}, "
          f"resuming after revision {start.revision}" + (f" ({start.key})" if start.key else ""), flush=True)
    handled = bridge.run()
    print(f"ecflow-bridge: stopped after {handled} notification(s)", flush=True)
    return 0


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
