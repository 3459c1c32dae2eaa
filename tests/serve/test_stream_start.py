"""Where a stream with ``from_date`` starts its replay, when a post lands while that start is being found.

A listener that starts "now" opens its stream with ``from_date`` = the current second, often while posts
are being written. The start is the first post at or after that moment, else the store's revision: if that
revision were read after the search, a post landing between the two would be after the search and before
the start, in neither the replay nor the live part of the stream.
"""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

from aviso_workflows import Store
from aviso_workflows.serve.app import _date_start

_destinations = itertools.count()


def dissemination(destination: str, step: int) -> dict[str, object]:
    return {"event": "dissemination", "destination": destination, "target": "E1", "class": "od", "expver": 1,
            "domain": "g", "date": "20200501", "time": 0, "stream": "oper", "step": step}


def test_a_post_landing_while_the_start_is_found_is_after_the_start(store: Store,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    destination = f"START{next(_destinations)}"  # a chain of its own: nothing posted on it before
    moment = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    posted: list[int] = []
    read_revision = store.current_revision

    def revision_after_a_post() -> int:
        """The store's revision, read just after a post lands (as a concurrent notify would)."""
        if not posted:
            posted.extend(store.notify(dissemination(destination, 1)).revisions)
        return read_revision()

    monkeypatch.setattr(store, "current_revision", revision_after_a_post)
    status_keys = store.request(dissemination(destination, 1)).status_keys()
    start = _date_start(store, status_keys, moment)
    assert posted, "the post was made while the start was found"
    assert start.revision < posted[0], "the post is replayed: it lies after the stream's start"
