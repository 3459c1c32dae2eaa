"""``aviso-workflows serve --aviso-server-config`` as a server under test of the conformance suite.

Its configuration is aviso-server 0.7.1's ``configuration/config.yaml.example`` (ecmwf/aviso-server, commit
8b99d73) as far as the cases use it: the mars and dissemination events the double imitates, written out as
aviso-server's own ``notification_schema`` from the double's table (so no file of aviso-server's repository
is needed). serve runs in this process on uvicorn, over an etcd of its own started on first use and stopped
by its pid when the process ends. etcd keeps history, so a restart of serve keeps its sequences:
``fresh_after_restart`` is False and the cases about aviso-server's in-memory restart skip.
"""

from __future__ import annotations

import atexit
import tempfile
from pathlib import Path
from typing import Any

import yaml
from aviso_server_double import SCHEMAS

from aviso_workflows import Store, server
from aviso_workflows.serve import cli as serve_cli
from aviso_workflows.serve.app import ServeOptions
from aviso_workflows.serve.server_config import load_server_config

START_SECONDS = 20.0
_etcd: dict[str, str] = {}


def server_config_text() -> str:
    """aviso-server's configuration of the double's events, in aviso-server's format."""
    schema = {name: {"payload": spec["payload"], "topic": {"base": spec["base"], "key_order": spec["key_order"]},
                     "identifier": spec["identifier"]} for name, spec in SCHEMAS.items()}
    return yaml.safe_dump({"notification_schema": schema}, sort_keys=False)


def shared_etcd() -> str:
    """The etcd every serve target of this process uses (started once, stopped by its pid at exit)."""
    if "url" not in _etcd:
        folder = Path(tempfile.mkdtemp(prefix="serve-target-etcd-"))
        info = server.start(folder / "data", port=server.free_port())
        atexit.register(server.stop, folder / "data")
        _etcd["url"] = info.client_url
    return _etcd["url"]


class ServeTarget:
    """serve on a free loopback port with aviso-server's configuration; start/stop/restart keep the port."""

    fresh_after_restart = False
    #: ``to_id``/``to_date`` end a replay here (not in aviso-server 0.7.1; newer servers have them).
    takes_replay_end = True

    def __init__(self, heartbeat: float = 1.0, replay_cap: int | None = None, **_: Any) -> None:
        folder = Path(tempfile.mkdtemp(prefix="serve-target-"))
        (folder / "config.yaml").write_text(server_config_text())
        self.events = load_server_config(folder / "config.yaml")
        self.port = server.free_port()
        self.options = ServeOptions(base_url=self.url, heartbeat=heartbeat, replay_limit=replay_cap or 10_000,
                                    server_events=self.events)
        self._serve: serve_cli.ServeThread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def open_streams(self) -> int:
        return len(self._serve.state.streams) if self._serve is not None else 0

    @property
    def endpoint(self) -> str:
        return f"aviso+http://127.0.0.1:{self.port}"

    def start(self) -> ServeTarget:
        self._serve = serve_cli.start_serve(Store([shared_etcd()]), self.options, "127.0.0.1", self.port,
                                            timeout=START_SECONDS)
        return self

    def stop(self) -> None:
        if self._serve is None:
            return
        self._serve.stop(START_SECONDS)
        self._serve = None

    def restart(self) -> None:
        self.stop()
        self.start()


def start_serve(**options: Any) -> ServeTarget:
    return ServeTarget(**options).start()
