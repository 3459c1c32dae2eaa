"""The bench's history: ``bench/history.csv`` (one row per figure and run) and its plot over commits.

Each row: date, commit (short hash, ``+`` when the work tree had changes), figure, transport, value, floor,
ratio (value ÷ floor, the figure a target bounds), machine (cores, load, etcd's version). ``make bench`` appends the
rows of ``floors.py``; ``python bench/history.py`` redraws ``docs/benchmarks-history.png``.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import DOCS, ROOT, pyplot, save_plot

HISTORY = Path(__file__).resolve().parent / "history.csv"
#: The targets the ratios are held to (drawn as dashed lines).
TARGETS = {"notify→release p50 ÷ gRPC put→watch": 1.3, "notify→release p99 ÷ gRPC put→watch": 2.0,
           "batched notify ÷ raw gRPC txn": 0.9}
COLUMNS = ("date", "commit", "figure", "transport", "value", "floor", "ratio", "machine")


def commit() -> str:
    """The checked-out commit, marked ``+`` when files of the package or the bench differ from it
    (``AVISO_BENCH_COMMIT``: the commit of a package measured from elsewhere, for an older point)."""
    if os.environ.get("AVISO_BENCH_COMMIT"):
        return os.environ["AVISO_BENCH_COMMIT"]
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          timeout=30).stdout.strip() or "unknown"
    changed = subprocess.run(["git", "status", "--porcelain", "--", "aviso_workflows", "bench", ":!bench/history.csv"],
                             cwd=ROOT,
                             capture_output=True, text=True, timeout=30).stdout.strip()
    return head + ("+" if changed else "")


def append(rows: Sequence[dict[str, Any]]) -> None:
    """Add one run's rows (each with figure, transport, value, floor, ratio, and machine unless this one's cores
    and load now say it) under the current commit."""
    new = not HISTORY.exists()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")
    where = f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
    with HISTORY.open("a", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow({"date": stamp, "commit": commit(), "figure": row["figure"],
                             "transport": row["transport"], "value": f"{row['value']:.4g}",
                             "floor": f"{row['floor']:.4g}", "ratio": f"{row['ratio']:.3f}",
                             "machine": row.get("machine", where)})


def _commits_before(commit: str) -> int:
    """How far down the history ``commit`` is (its runs are plotted in that order; unknown ones last)."""
    done = subprocess.run(["git", "rev-list", "--count", commit.rstrip("+")], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)
    return int(done.stdout.strip()) if done.returncode == 0 and done.stdout.strip() else 1 << 30


def read() -> list[dict[str, str]]:
    if not HISTORY.exists():
        return []
    with HISTORY.open(encoding="utf-8") as file:
        return list(csv.DictReader(file))


def plot() -> Path | None:
    """One panel per figure: its ratio at each run, in run order, one line per transport."""
    rows = read()
    if not rows:
        return None
    plt = pyplot()
    names = list(dict.fromkeys(row["figure"] for row in rows))
    figure, axes = plt.subplots(len(names), 1, figsize=(8, 2.6 * len(names)), squeeze=False)
    runs = sorted(dict.fromkeys((row["date"], row["commit"]) for row in rows),
                  key=lambda run: (_commits_before(run[1]), run[0]))
    for axis, name in zip(axes[:, 0], names, strict=True):
        for transport in sorted({row["transport"] for row in rows if row["figure"] == name}):
            points = [(runs.index((row["date"], row["commit"])), float(row["ratio"])) for row in rows
                      if row["figure"] == name and row["transport"] == transport]
            axis.plot([x for x, _ in points], [y for _, y in points], marker="o", label=transport)
        if name in TARGETS:
            axis.axhline(TARGETS[name], color="grey", linestyle="--", linewidth=1, label="target")
        axis.set_title(name, fontsize=9)
        axis.set_ylabel("ratio")
        axis.set_xticks(range(len(runs)), [f"{c}\n{d[5:10]}" for d, c in runs], fontsize=7)
        axis.legend(fontsize=7)
    DOCS.mkdir(exist_ok=True)
    return save_plot(figure, "history")


if __name__ == "__main__":
    print(plot() or "no history yet")
