"""The ``aviso+http`` source (aviso_workflows/aviso2.py) against each server under test (conftest.SERVERS):
it asks only what aviso-server 0.7.1 accepts and reads what it sends as it sends it (ecmwf/aviso-server
0.7.1, commit 8b99d73: aviso-validators/src/constraints.rs, src/notification/processor.rs,
src/notification_backend/in_memory/backend.rs, src/error.rs; each case names its rule)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from server_under_test import ServerUnderTest
from test_http import MARS, notify

from aviso_workflows import Store, StoreUnavailable
from aviso_workflows.aviso2 import AvisoServerError, ReplayLimitReached
from aviso_workflows.backends.aviso_server import AvisoServerBackend
from aviso_workflows.cli import main
from aviso_workflows.position import Position

FIELDS = {"class": "od", "expver": "1", "domain": "g", "stream": "oper", "time": "12"}
SECONDS = 15.0


def until(condition: Callable[[], bool], seconds: float = SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_a_wait_for_several_steps_times_and_dates_is_taken_by_the_server(aviso_server: ServerUnderTest,
                                                                         day: str) -> None:
    """aviso-validators/src/constraints.rs (0.7.1): several steps go as ``{"in": [numbers]}``; several times or
    dates cannot be filtered by the server ("does not support constraint filters") and are matched here."""
    store = Store([aviso_server.endpoint])
    other_day = day[:4] + "12" + day[6:]  # December: no other case uses it
    store.notify("mars", {**FIELDS, "date": day, "step": "0/6/12"}, location="here")
    store.notify("mars", {**FIELDS, "date": [day, other_day], "time": "0/12", "step": 24}, location="there")
    found = store.wait("mars", {**FIELDS, "date": day, "step": "0/6/12"}, timeout=SECONDS)
    assert sorted(int(n.request["step"]) for n in found) == [0, 6, 12]
    found = store.wait("mars", {**FIELDS, "date": [day, other_day], "time": "0/12", "step": 24}, timeout=SECONDS)
    assert sorted((n.request["date"], n.request["time"]) for n in found) == \
        sorted((d, t) for d in (day, other_day) for t in ("00", "12"))


def test_a_post_of_another_client_is_found_whatever_the_case_of_free_strings(aviso_server: ServerUnderTest,
                                                                            day: str) -> None:
    """src/notification/wildcard_matcher.rs, aviso-validators/src/string.rs (0.7.1): the server keeps class and
    destination as posted and compares them exactly; a pyaviso 2 post ``destination=scl``, ``class=OD`` must
    be found by a wait for ``SCL``/``od`` (we match free strings on our side, as our schema folds them)."""
    assert notify(aviso_server.url, "dissemination", {**MARS, "class": "OD", "date": day, "destination": "scl",
                                                      "target": "E1"}, "loc").status_code == 200
    store = Store([aviso_server.endpoint])
    for destination in ("SCL", "scl"):
        (found,) = store.wait("dissemination", {**FIELDS, "date": day, "step": 6, "destination": destination,
                                                "target": "E1"}, timeout=SECONDS)
        assert found.location == "loc" and found.request["destination"] == "SCL" and found.request["time"] == "12"


def test_a_notify_the_server_refuses_with_500_is_refused_not_unavailable(aviso_server: ServerUnderTest,
                                                                        day: str) -> None:
    """src/notification/processor.rs + src/handlers/notification_processor.rs (0.7.1): an identifier field the
    schema does not know is answered 500 NOTIFICATION_PROCESSING_FAILED; sending it again cannot succeed."""
    client = AvisoServerBackend(Store([aviso_server.endpoint]).config).client
    with pytest.raises(AvisoServerError) as refused:
        client.notify("mars", {**MARS, "date": day, "levtype": "sfc"}, None)
    assert not isinstance(refused.value, StoreUnavailable)
    assert refused.value.status == 500 and "NOTIFICATION_PROCESSING_FAILED" in str(refused.value)
    assert "levtype" in str(refused.value)


def test_a_replay_past_the_servers_cap_is_an_error_that_says_so(aviso_server_factory, day: str) -> None:
    """src/notification_backend/jetstream/replay.rs (0.7.1): ``notification_replay_limit_reached``."""
    server: ServerUnderTest = aviso_server_factory(replay_cap=2)
    store = Store([server.endpoint])
    store.notify("mars", {**FIELDS, "date": day, "step": "0/6/12"}, location="x")
    with pytest.raises(ReplayLimitReached, match="cap of 2"):
        store.wait("mars", {**FIELDS, "date": day, "step": "0/6/12/18"}, timeout=SECONDS)


def test_waiting_on_an_aviso_server_is_one_clear_error(aviso_server: ServerUnderTest,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["waiting", "--endpoint", aviso_server.endpoint]) != 0
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and aviso_server.endpoint.split("//")[1] in error
    assert "etcd" in error and "Traceback" not in error


# -- restarts ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def listening(store: Store, request: Any) -> Iterator[list[tuple[str, str | None]]]:
    """A listener from the start of the server's sequence, in a thread; yields what it delivered so far."""
    got: list[tuple[str, str | None]] = []
    stop = threading.Event()

    def run() -> None:
        for notification in store.listen(request, after=Position(0), stop=stop, poll=0.05):
            got.append((notification.key, notification.location))

    thread = threading.Thread(target=run, name="listener", daemon=True)
    thread.start()
    try:
        yield got
    finally:
        stop.set()
        thread.join(SECONDS)


def _post(store: Store, day: str, steps: range) -> None:
    for step in steps:
        store.notify("mars", {**FIELDS, "date": day, "step": step}, location=f"p{step}")


def _counts(got: list[tuple[str, str | None]], steps: range) -> tuple[int, int]:
    expected = {f"p{step}" for step in steps}
    delivered = [location for _, location in got]
    return len(expected - set(delivered)), len(delivered) - len(set(delivered))


@pytest.mark.parametrize("away", [False, True], ids=["reconnected-in-time", "posts-while-away"])
def test_a_listener_delivers_everything_across_a_server_restart(aviso_server_factory, day: str, away: bool,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """src/notification_backend/in_memory/backend.rs (0.7.1): a new process numbers from 1 again. A listener
    that handled 1–3 must still deliver the new process's 1–3 (at least once), saying so in one WARNING."""
    server = aviso_server_factory()
    if not server.fresh_after_restart:
        pytest.skip("this server keeps its sequence across a restart")
    store = Store([server.endpoint])
    request = store.request("mars", {**FIELDS, "date": day})
    caplog.set_level(logging.WARNING, logger="aviso_workflows")
    with listening(store, request) as got:
        _post(store, day, range(3))
        until(lambda: len(got) >= 3)
        if away:  # the new process has the posts before any client can reach it
            server.stop()
            server.start(posts=[("mars", {**MARS, "date": day, "step": str(s)}, f"p{s}") for s in range(3, 6)])
        else:
            server.restart()
            until(lambda: server.open_streams >= 1)
            _post(store, day, range(3, 6))
        with contextlib.suppress(AssertionError):
            until(lambda: not _counts(got, range(6))[0], 10)
    lost, duplicated = _counts(got, range(6))
    print(f"restart ({'away' if away else 'in time'}): lost {lost} of 6, duplicated {duplicated}")
    assert lost == 0, f"lost {lost} of 6: {got}"
    warnings = [r for r in caplog.records if "sequence went back" in r.getMessage()]
    assert len(warnings) == 1 and "mars@3" in warnings[0].getMessage()
