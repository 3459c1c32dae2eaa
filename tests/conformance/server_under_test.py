"""What the conformance cases need of a server under test (see conftest.SERVERS). A module of its own, not
conftest, so the cases import it by a name no other test directory uses."""

from __future__ import annotations

from typing import Any, Protocol


class ServerUnderTest(Protocol):
    url: str
    endpoint: str
    fresh_after_restart: bool
    open_streams: int

    def start(self) -> Any: ...

    def stop(self) -> None: ...

    def restart(self) -> None: ...
