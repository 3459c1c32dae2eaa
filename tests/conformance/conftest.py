"""The server under test of the conformance suite: aviso-server's HTTP behaviour, written from its source
(ecmwf/aviso-server 0.7.1, commit 8b99d73).

``SERVERS`` names how to start each server the cases run against; every case takes ``aviso_server`` (or
``aviso_server_factory`` for one with options) and runs once per entry. The first entry is the test double
(:mod:`aviso_server_double`). To run the same cases against another implementation, add an entry whose
function takes the options below and returns an object with ``url``, ``endpoint``, ``start()``, ``stop()``,
``restart()``, ``open_streams`` (SSE streams open now) and ``fresh_after_restart`` (True if a restart starts
the sequence at 1 with no history, as aviso-server's in-memory backend does; cases about that are skipped
otherwise).

Options a case may ask for: ``heartbeat`` (seconds), ``replay_cap`` (notifications a replay sends before
``notification_replay_limit_reached``), ``max_history_per_topic``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aviso_server_double import AvisoServerDouble
from isolation import isolated  # noqa: F401 - autouse fixture
from serve_target import start_serve
from server_under_test import ServerUnderTest


def start_double(heartbeat: float = 1.0, **options: Any) -> AvisoServerDouble:
    return AvisoServerDouble(heartbeat=heartbeat, **options).start()


AvisoServerDouble.fresh_after_restart = True  # type: ignore[attr-defined]

#: name → how to start it with options. Extend this to run every case against another server.
SERVERS: dict[str, Callable[..., ServerUnderTest]] = {"double": start_double, "serve": start_serve}


@pytest.fixture(scope="module", params=list(SERVERS))
def aviso_server_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., ServerUnderTest]]:
    """Starts servers of the kind under test (with options); all are stopped at the end of the module."""
    started: list[ServerUnderTest] = []

    def make(**options: Any) -> ServerUnderTest:
        server = SERVERS[request.param](**options)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def aviso_server(aviso_server_factory: Callable[..., ServerUnderTest]) -> ServerUnderTest:
    """The module's server under test (heartbeat 1 s)."""
    return aviso_server_factory()


@pytest.fixture
def aviso_server_url(aviso_server: ServerUnderTest) -> str:
    return aviso_server.url


_DAYS = itertools.count(1)


@pytest.fixture
def day() -> str:
    """A date no other case of the session uses, so cases sharing a server do not see each other's posts."""
    number = next(_DAYS)
    return f"2025{1 + number // 28 % 12:02d}{1 + number % 28:02d}"
