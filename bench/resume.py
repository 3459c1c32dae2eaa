"""A listener resuming far behind: 150 000 notifications were posted since its position.

The listener follows etcd's history from its position (one watch from the revision after it), so the
backlog arrives in etcd's own pages, in write order, while the consumer handles it. Measured: time
from the start of the listen to its first notification and to the last, and the memory the process
gained while reading the backlog.

Usage: resume.py RESULTS.json [BACKLOG]
"""

from __future__ import annotations

import sys
import time
from contextlib import closing
from typing import Any

from common import (
    MARS,
    Figure,
    at_most,
    peak_rss_mb,
    private_etcd,
    pyplot,
    reported,
    results_path,
    rss_mb,
    save_plot,
    write_results,
)

from aviso_workflows import Store
from aviso_workflows.etcd import WATCH_CHUNK
from aviso_workflows.listen import Position, listen

BACKLOG = 150_000
DATES = ["20300401", "20300402", "20300403"]


def post_backlog(store: Store, total: int) -> float:
    started = time.perf_counter()
    per_date = total // len(DATES)
    for date in DATES:
        store.notify("mars", {**MARS, "date": date, "step": f"0/to/{per_date - 1}"}, location="file:///backlog")
    return time.perf_counter() - started


def measure(url: str, total: int) -> dict[str, Any]:
    store = Store([url])
    start = Position(store.current_revision())
    posting = post_backlog(store, total)
    request = store.request("mars", {**MARS, "date": DATES})
    before = rss_mb()
    began = time.perf_counter()
    first = 0.0
    count = 0
    progress: list[tuple[float, int]] = [(0.0, 0)]
    with closing(listen(store, [request], after=start, until_revision=store.current_revision())) as stream:
        for _ in stream:
            count += 1
            if count == 1:
                first = time.perf_counter() - began
            if count % 1000 == 0:
                progress.append((time.perf_counter() - began, count))
    return {"posting": posting, "first": first, "all": time.perf_counter() - began, "count": count,
            "rss_gain": rss_mb() - before, "peak": peak_rss_mb(), "progress": progress}


def figures(result: dict[str, Any], total: int) -> list[Figure]:
    return [
        at_most(f"listener resuming {total} notifications back: first notification", result["first"], "s", 1.0),
        reported(f"listener resuming {total} notifications back: all delivered", result["all"], "s"),
        reported(f"listener resuming {total} notifications back: memory gained", result["rss_gain"], "MB"),
        reported(f"listener resuming {total} notifications back: peak RSS", result["peak"], "MB"),
    ]


def plot(result: dict[str, Any], total: int) -> None:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 3.4))
    axis.plot([t for t, _ in result["progress"]], [n / 1000 for _, n in result["progress"]], marker=".")
    axis.set_xlabel("seconds since the listen started")
    axis.set_ylabel("thousand notifications delivered")
    axis.set_title(f"A listener resuming {total} notifications back (first after {result['first']:.2f} s)",
                   fontsize=9)
    save_plot(figure, "resume")


def main() -> None:
    total = int(sys.argv[2]) if len(sys.argv) > 2 else BACKLOG
    with private_etcd() as info:
        result = measure(info.client_url, total)
    print({k: v for k, v in result.items() if k != "progress"}, file=sys.stderr)
    assert result["count"] == total // len(DATES) * len(DATES), result
    write_results(results_path(), figures(result, total), [
        f"Resume: a listener {total} notifications behind got its first after {result['first']:.2f} s and all "
        f"after {result['all']:.1f} s, gaining {result['rss_gain']:.0f} MB (peak RSS {result['peak']:.0f} MB): "
        f"the backlog comes from etcd's history in write order, in etcd's watch answers of up to 1 000 "
        f"revisions each, handed on in parts of about {WATCH_CHUNK:,} events (whole revisions)."])
    plot(result, total)


if __name__ == "__main__":
    main()
