"""A TCP proxy in its own process, for fault-injection tests: adds one-way latency from the server to the client.

Run as a script (stdlib only, so it starts fast and does not depend on the package under test)::

    python tests/tcp_proxy.py --listen-port P --target-host 127.0.0.1 --target-port Q \
        [--delay SECONDS] [--control-file PATH] [--stats-file PATH]

Every chunk forwarded from the server back to the client is held for ``delay`` seconds after it arrived, in order,
per connection (a latency, not a bandwidth limit: chunks in flight wait concurrently). Client-to-server traffic is
forwarded at once, so a request/response round trip gets exactly one ``delay`` longer.
Writing a number to the control file changes the delay while running (re-read every 0.2 s).
Stats (JSON) go to the stats file every 0.5 s and on SIGUSR1; SIGTERM closes every connection and exits 0.

From tests, use :class:`TcpProxy`, which runs this file with ``sys.executable``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

CONTROL_PERIOD = 0.2  # seconds between reads of the control file
STATS_PERIOD = 0.5  # seconds between writes of the stats file
CHUNK = 64 * 1024
IN_FLIGHT = 256  # chunks held per direction: bounds memory when the reader is slower than the delay allows
HTTP_REQUEST = re.compile(rb"(GET|POST|PUT|DELETE|HEAD|OPTIONS|PATCH|CONNECT|TRACE) ")


# -- the proxy process --------------------------------------------------------------------------------------------


@dataclass
class Stats:
    connections: int = 0
    requests: int = 0
    bytes_to_server: int = 0
    bytes_to_client: int = 0
    delay: float = 0.0  # the delay in force, so a client can tell when its change was applied


def write_json(path: Path, data: object) -> None:
    """Write by rename: a reader never sees half a file, and each write is a new inode it can notice."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def read_delay(path: Path, current: float) -> float:
    """The delay the control file asks for; the current one if the file is missing or not a number yet."""
    try:
        value = float(path.read_text().strip())
    except (OSError, ValueError):
        return current
    return value if value >= 0 else current


async def _read_side(reader: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes]],
                     delay: Callable[[], float], on_chunk: Callable[[bytes], None]) -> None:
    """Stamp each chunk with the time it is due; the queue bound pushes back on the sender when it fills."""
    while chunk := await reader.read(CHUNK):
        on_chunk(chunk)
        await queue.put((time.monotonic() + delay(), chunk))
    await queue.put((time.monotonic() + delay(), b""))  # the end is delayed too, so it cannot overtake data


async def _write_side(writer: asyncio.StreamWriter, queue: asyncio.Queue[tuple[float, bytes]]) -> None:
    """Send chunks in arrival order once due; then half-close, so the other direction can still finish."""
    while True:
        due, chunk = await queue.get()
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        if not chunk:
            break
        writer.write(chunk)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: Callable[[], float],
               on_chunk: Callable[[bytes], None]) -> None:
    """One direction of a connection: reading and writing run apart so a delayed chunk never stalls reading."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(IN_FLIGHT)
    async with asyncio.TaskGroup() as group:
        group.create_task(_read_side(reader, queue, delay, on_chunk))
        group.create_task(_write_side(writer, queue))


class Proxy:
    """The asyncio half: accepts on 127.0.0.1 only, one task per connection, all of them cancelled on stop."""

    def __init__(self, target: tuple[str, int], delay: float) -> None:
        self.target = target
        self.stats = Stats(delay=delay)
        self.connections: set[asyncio.Task[None]] = set()

    def _to_server(self, chunk: bytes) -> None:
        self.stats.bytes_to_server += len(chunk)
        if HTTP_REQUEST.match(chunk):
            self.stats.requests += 1

    def _to_client(self, chunk: bytes) -> None:
        self.stats.bytes_to_client += len(chunk)

    async def handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.connections.add(task)
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(pipe(client_r, server_w, lambda: 0.0, self._to_server))
                    group.create_task(pipe(server_r, client_w, lambda: self.stats.delay, self._to_client))
            finally:
                server_w.close()
        except* OSError:
            pass  # a peer reset or the target is down: the client sees its connection closed, as with a real server
        finally:
            client_w.close()
            self.connections.discard(task)

    async def close_all(self) -> None:
        for task in list(self.connections):
            task.cancel()
        await asyncio.gather(*self.connections, return_exceptions=True)


async def _every(period: float, action: Callable[[], None]) -> None:
    while True:
        await asyncio.sleep(period)
        action()


async def serve(args: argparse.Namespace) -> None:
    proxy = Proxy((args.target_host, args.target_port), args.delay)
    stats_file: Path | None = args.stats_file
    control_file: Path | None = args.control_file

    def dump() -> None:
        if stats_file is not None:
            write_json(stats_file, asdict(proxy.stats))

    def poll_control() -> None:
        if control_file is not None:
            proxy.stats.delay = read_delay(control_file, proxy.stats.delay)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, dump)
    poll_control()
    listener = await asyncio.start_server(proxy.handle, "127.0.0.1", args.listen_port)
    dump()  # the first stats file tells a starter that the proxy listens
    timers = [asyncio.create_task(_every(CONTROL_PERIOD, poll_control)),
              asyncio.create_task(_every(STATS_PERIOD, dump))]
    await stop.wait()
    listener.close()
    for timer in timers:
        timer.cancel()
    await proxy.close_all()
    await listener.wait_closed()
    dump()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen-port", type=int, required=True)
    parser.add_argument("--target-host", default="127.0.0.1")
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds added to each server-to-client chunk")
    parser.add_argument("--control-file", type=Path, help="holds a number: the new delay (re-read every 0.2 s)")
    parser.add_argument("--stats-file", type=Path, help="JSON stats, rewritten every 0.5 s and on SIGUSR1")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    asyncio.run(serve(parse_args(argv)))
    return 0


# -- the test-side helper -----------------------------------------------------------------------------------------

START_TIMEOUT = 10.0
STOP_GRACE = 5.0
POLL = 0.05


def _files(workdir: tempfile.TemporaryDirectory[str]) -> tuple[Path, Path, Path]:
    """Control, stats and log file of one proxy, all in its own temporary directory."""
    root = Path(workdir.name)
    return root / "delay", root / "stats.json", root / "proxy.log"


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return status.st_ino, status.st_mtime_ns


class TcpProxy:
    """A running proxy process in front of ``target_url``; stop it with :meth:`stop` or a ``with`` block."""

    def __init__(self, process: subprocess.Popen[bytes], port: int,
                 workdir: tempfile.TemporaryDirectory[str]) -> None:
        self.process = process
        self.port = port
        self._workdir = workdir
        self.control_file, self.stats_file, self.log_file = _files(workdir)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    def start(cls, target_url: str, delay: float = 0.0) -> TcpProxy:
        """Start the proxy on a free loopback port and return once it accepts connections (at most 10 s)."""
        host, port = target_url.split("://", 1)[-1].rstrip("/").rsplit(":", 1)
        log = ""
        for _ in range(3):  # another process may take the free port before the proxy binds it: try a new one
            proxy = cls._launch(host.strip("[]"), int(port), delay)
            if proxy._ready():
                return proxy
            log = proxy.log_file.read_text(errors="replace").strip()
            proxy.stop()
        raise RuntimeError(f"tcp proxy in front of {target_url} did not start: {log}")

    @classmethod
    def _launch(cls, host: str, port: int, delay: float) -> TcpProxy:
        from aviso_workflows.server import free_port  # here, so the script half stays stdlib-only

        workdir = tempfile.TemporaryDirectory(prefix="tcp-proxy-")
        control_file, stats_file, log_file = _files(workdir)
        listen_port = free_port()
        command = [sys.executable, __file__, "--listen-port", str(listen_port), "--target-host", host,
                   "--target-port", str(port), "--delay", str(delay),
                   "--control-file", str(control_file), "--stats-file", str(stats_file)]
        with log_file.open("wb") as log:  # the child holds its own copy of the descriptor
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        return cls(process, listen_port, workdir)

    def _ready(self) -> bool:
        """Wait for the first stats file, written once the port listens (a probe connection would skew the counts)."""
        deadline = time.monotonic() + START_TIMEOUT
        while not self.stats_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(POLL)
        return True

    def stats(self, timeout: float = 5.0) -> dict[str, Any]:
        """Counts as of now: asks for a fresh stats file (SIGUSR1) and waits until it is rewritten."""
        before = _file_id(self.stats_file)
        os.kill(self.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while _file_id(self.stats_file) == before:
            if time.monotonic() > deadline:
                raise TimeoutError(f"tcp proxy {self.pid} wrote no stats in {timeout} s")
            time.sleep(POLL)
        data: dict[str, Any] = json.loads(self.stats_file.read_text())
        return data

    def set_delay(self, seconds: float, timeout: float = 5.0) -> None:
        """Change the delay; returns once the proxy applies it, so the next response is (not) delayed for sure."""
        write_json(self.control_file, seconds)  # JSON of a float is the plain number the proxy parses
        deadline = time.monotonic() + timeout
        while self.stats()["delay"] != seconds:
            if time.monotonic() > deadline:
                raise TimeoutError(f"tcp proxy {self.pid} did not apply delay {seconds} in {timeout} s")
            time.sleep(POLL)

    def stop(self) -> None:
        """SIGTERM by pid, SIGKILL if it is still there after 5 s; idempotent."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._workdir.cleanup()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
