"""``aviso-workflows ecflow-bridge``: the listener runtime with an ecFlow server as the default target.

Added to the main command through the entry point group ``aviso_workflows.commands``.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``ecflow-bridge`` to the ``aviso-workflows`` command."""
    bridge = subparsers.add_parser("ecflow-bridge", parents=[common],
                                   help="run a listener file of ecFlow triggers (events, meters, labels, "
                                        "variables, complete) until stopped; resumes from its cursor")
    bridge.add_argument("bridge_config", metavar="FILE", help="listener file whose triggers are {type: ecflow, ...}")
    bridge.add_argument("--host", default="localhost", help="ecflow_server host of triggers that name none")
    bridge.add_argument("--port", type=int, required=True, help="ecflow_server port of triggers that name none")
    bridge.add_argument("--cursor", metavar="NAME", help="cursor name (default ecflow-bridge-PORT)")
    bridge.add_argument("--from", dest="from_", metavar="TIME|REVISION",
                        help="first start: from this UTC time or store revision (a saved cursor wins)")
    bridge.add_argument("--dead-letters", choices=("list", "replay"),
                        help="list the notifications whose triggers failed for good, or run them again")
    bridge.add_argument("--dead-letter-file", metavar="FILE",
                        help="where failed notifications go (default: STATE_DIR/dead-letters/CURSOR.jsonl)")
    bridge.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..commandline import parse_start, store_from_args
    from .bridge import BridgeOptions, run_bridge

    store = store_from_args(args)
    bridge = BridgeOptions(args.bridge_config, args.port, args.host, cursor=args.cursor, start=parse_start(args.from_),
                           dead_letters=args.dead_letters,
                           dead_letter_file=Path(args.dead_letter_file) if args.dead_letter_file else None)
    return run_bridge(store, bridge)
