"""A model test of the ``aviso+http`` source across aviso-server restarts, purges and dropped streams.

The server under test's in-memory backend (ecmwf/aviso-server 0.7.1, commit 8b99d73,
src/notification_backend/in_memory/backend.rs) numbers posts from 1 in every process and keeps nothing
across a restart, which is also what a purged or recreated JetStream stream looks like to a client. Hypothesis
draws programs of posts, restarts (the listener reconnected in time, or away while posts land) and streams
ended by the server (``max_duration_reached``); one listener follows from the start. The model: every post
is delivered at least once (0 lost); a post comes twice only around a restart; the duplicates are counted.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_http import MARS
from test_source import FIELDS, listening

from aviso_workflows import Store

OPERATIONS = st.lists(st.one_of(
    st.tuples(st.just("post"), st.integers(1, 4)),
    st.tuples(st.just("restart"), st.just(0)),
    st.tuples(st.just("restart_away"), st.integers(0, 3)),
    st.tuples(st.just("kick"), st.just(0)),
), min_size=1, max_size=8)
TOTALS = {"programs": 0, "posts": 0, "restarts": 0, "duplicates": 0, "lost": 0}
SECONDS = 15.0


def _delivered_all(got: list, expected: set[str], seconds: float = SECONDS) -> bool:
    deadline = time.monotonic() + seconds
    while not expected <= {location for _, location in got}:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture(scope="module")
def model_server(aviso_server_factory):
    server = aviso_server_factory(heartbeat=1.0)
    if not server.fresh_after_restart:
        pytest.skip("this server keeps its sequence across a restart")
    return server


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(program=OPERATIONS)
def test_no_post_is_lost_across_restarts_purges_and_reconnects(model_server, program: list[tuple[str, int]]) -> None:
    server = model_server
    server.restart()  # each program starts on a fresh process
    store = Store([server.endpoint])
    day = "20250101"
    request = store.request("mars", {**FIELDS, "date": day})
    expected: set[str] = set()
    counter = iter(range(10_000))
    restarts = 0
    with listening(store, request) as got:
        for operation, count in program:
            if operation == "post":
                for _ in range(count):
                    step = next(counter)
                    store.notify("mars", {**FIELDS, "date": day, "step": step}, location=f"p{step}")
                    expected.add(f"p{step}")
                continue
            # What the old process holds must have reached the listener first: a restart loses what was
            # never delivered by the server itself, which no client can help.
            assert _delivered_all(got, expected), f"lost before a restart: {expected}, delivered {got}"
            if operation == "kick":
                server.kick()
                continue
            restarts += 1
            if operation == "restart":
                server.restart()
                continue
            steps = [next(counter) for _ in range(count)]
            server.stop()
            server.start(posts=[("mars", {**MARS, "date": day, "step": str(s)}, f"p{s}") for s in steps])
            expected.update(f"p{s}" for s in steps)
        delivered_all = _delivered_all(got, expected)
        delivered = [location for _, location in got]
    lost = len(expected - set(delivered))
    duplicates = len(delivered) - len(set(delivered))
    for name, value in (("programs", 1), ("posts", len(expected)), ("restarts", restarts),
                        ("duplicates", duplicates), ("lost", lost)):
        TOTALS[name] += value
    print(f"model totals so far: {TOTALS}")
    assert delivered_all and lost == 0, f"lost {lost}: expected {sorted(expected)}, delivered {delivered}"
    assert duplicates == 0 or restarts > 0, f"duplicates without a restart: {delivered}"
