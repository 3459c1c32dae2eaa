"""Stream lifecycles against a real etcd and a real uvicorn: hand-over, limits, durations, fan-out, shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
from serve_helpers import READ_SECONDS, Served, mars, sequence, serving, stream
from waiting import eventually

from aviso_workflows import Store, server
from aviso_workflows.serve.cli import start_serve_process


def test_replay_then_live_with_posts_racing_the_hand_over(served: Served, store: Store, unique_date: str) -> None:
    """Posts go on while watches with a replay start: each watch gets every post once, in order."""
    posted: list[int] = []
    stop = threading.Event()

    def post() -> None:
        for step in range(60):
            if stop.is_set():
                return
            posted.extend(store.notify("mars", mars(unique_date, f"{step}/{step + 1000}")).revisions)
            time.sleep(0.005)

    first = store.notify("mars", mars(unique_date, 100000)).revisions[0]
    poster = threading.Thread(target=post)
    poster.start()
    try:
        for attempt in range(3):  # each watch starts at a different moment of the posting
            time.sleep(0.05 * attempt)
            body = {"event_type": "mars", "identifier": {"date": unique_date}, "from_id": str(first * 1000)}
            with stream(served, "/api/v1/watch", body) as events:
                poster.join(READ_SECONDS)
                got = events.notifications(1 + 2 * len(posted))
            sequences = [sequence(e) for e in got]
            assert sequences == sorted(set(sequences)), "in order, each once"
            expected = [first * 1000] + [r * 1000 + i for r in posted for i in (0, 1)]
            assert sequences == expected
            kinds = [name for name, data in events.events if "specversion" in data]
            assert kinds == sorted(kinds, key=lambda k: k == "live-notification"), "replayed first, then live"
    finally:
        stop.set()
        poster.join(READ_SECONDS)


def test_many_live_watchers_share_one_etcd_watch(served: Served, store: Store, unique_date: str) -> None:
    async def watch_all(count: int) -> list[list[int]]:
        async with httpx.AsyncClient(timeout=READ_SECONDS, limits=httpx.Limits(max_connections=count)) as client:
            ready = asyncio.Semaphore(0)

            async def one() -> list[int]:
                body = {"event_type": "mars", "identifier": {"date": unique_date}}
                async with client.stream("POST", served.url + "/api/v1/watch", json=body) as response:
                    seen: list[int] = []
                    async for line in response.aiter_lines():
                        if line.startswith("data:") and "connection_established" in line:
                            ready.release()
                        elif line.startswith("data:") and '"specversion"' in line:
                            seen.append(int(line.split('"id":"mars@')[1].split('"')[0]))
                            if len(seen) == 2:
                                return seen
                    return seen

            tasks = [asyncio.create_task(one()) for _ in range(count)]
            for _ in range(count):
                await asyncio.wait_for(ready.acquire(), READ_SECONDS)
            assert served.state.hub.watches == 1 and len(served.state.streams) >= count
            revision = (await asyncio.to_thread(store.notify, "mars", mars(unique_date, "1/2"))).revisions[0]
            results = await asyncio.wait_for(asyncio.gather(*tasks), READ_SECONDS * 2)
            assert all(r == [revision * 1000, revision * 1000 + 1] for r in results)
            return results

    assert len(asyncio.run(watch_all(200))) == 200


def test_max_duration_and_heartbeats(store: Store, unique_date: str) -> None:
    with serving(store, heartbeat=0.2, max_duration=1.5) as served:
        started = time.monotonic()
        with stream(served, "/api/v1/watch", {"event_type": "mars", "identifier": {"date": unique_date}}) as events:
            everything = events.rest()
        elapsed = time.monotonic() - started
    names = [name for name, _ in everything]
    assert names[0] == "live-notification" and everything[0][1]["connection_will_close_in_seconds"] == 1
    assert names.count("heartbeat") >= 4 and names[-1] == "connection-closing"
    assert everything[-1][1]["reason"] == "max_duration_reached" and 1.4 < elapsed < 10


def test_replay_limit(store: Store, unique_date: str) -> None:
    first = store.notify("mars", mars(unique_date, "0/to/4")).revisions[0]
    with serving(store, replay_limit=2) as served:
        body = {"event_type": "mars", "identifier": {"date": unique_date}, "from_id": str(first * 1000)}
        with stream(served, "/api/v1/replay", body) as events:
            everything = events.rest()
        names = [(name, None if name == "replay" else data.get("type") or data.get("reason"))
                 for name, data in everything]
        assert names == [("replay-control", "replay_started"), ("replay", None), ("replay", None),
                         ("replay-control", "notification_replay_limit_reached"),
                         ("replay-control", "replay_completed"), ("connection-closing", "end_of_stream")]
        assert everything[3][1]["max_allowed"] == 2
        with stream(served, "/api/v1/watch", body) as events:  # a watch goes live after the limit, from now
            events.until(lambda name, data: data.get("type") == "replay_completed")
            later = store.notify("mars", mars(unique_date, 5)).revisions[0]
            assert [sequence(e) for e in events.notifications(1)] == [later * 1000]


def _slow_watch(url: str, body: dict) -> socket.socket:
    """A watch whose client reads nothing after the headers, with a tiny receive buffer."""
    host, port = url.removeprefix("http://").split(":")
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.settimeout(READ_SECONDS)
    client.connect((host, int(port)))
    data = json.dumps(body).encode()
    client.sendall(b"POST /api/v1/watch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    assert client.recv(1024).startswith(b"HTTP/1.1 200")
    return client


def test_a_slow_client_is_cut_off_and_others_go_on(store: Store, unique_date: str) -> None:
    with serving(store, heartbeat=0.5, queue_size=4) as served:
        body = {"event_type": "mars", "identifier": {"date": unique_date}}
        with stream(served, "/api/v1/watch", body) as fast:
            fast.next()
            slow = _slow_watch(served.url, body)
            try:  # its headers come before its stream joins the hub
                eventually(lambda: served.state.hub.subscribers >= 2, what="the slow stream subscribed")
                deadline = time.monotonic() + READ_SECONDS * 3
                posted = 0
                while served.state.hub.subscribers > 1:  # until the slow one is cut: megabytes it does not read
                    assert time.monotonic() < deadline, "the slow client was never cut off"
                    store.notify("mars", mars(unique_date, f"{posted * 100}/to/{posted * 100 + 99}"),
                                 location="file:///" + "x" * 4000)
                    posted += 1
                    assert len(fast.notifications(100)) == 100
                store.notify("mars", mars(unique_date, 100000))
                assert fast.notifications(1)[0]["data"]["identifier"]["step"] == "100000"
            finally:
                slow.close()
        assert posted >= 5, "megabytes were posted before the cut"


def test_sigterm_sends_server_shutdown(etcd_url: str, tmp_path: Path, unique_date: str) -> None:
    port = server.free_port()
    environment = {**os.environ, "AVISO_WORKFLOWS_CONFIG": str(tmp_path / "none.yaml")}
    started = start_serve_process(etcd_url, port, log=tmp_path / "serve.log", env=environment, timeout=READ_SECONDS)
    process, url = started.process, started.url
    try:
        body = {"event_type": "mars", "identifier": {"date": unique_date}}
        with httpx.Client(timeout=READ_SECONDS) as client, client.stream("POST", url + "/api/v1/watch",
                                                                        json=body) as response:
            lines = response.iter_lines()
            assert "connection_established" in "".join(next(lines) for _ in range(2))
            os.kill(process.pid, signal.SIGTERM)
            rest = "\n".join(lines)
        assert "event: connection-closing" in rest and '"reason":"server_shutdown"' in rest
        assert process.wait(READ_SECONDS) in (0, -signal.SIGTERM)  # uvicorn ends by the signal it caught
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(READ_SECONDS)
