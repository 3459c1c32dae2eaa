"""Reads: pagination past etcd's page size, the status key and foreign keys skipped."""

from __future__ import annotations

import base64
import logging

import pytest
from core_helpers import destination_for, diss, everything, mars, mars_key

from aviso_workflows import Store
from aviso_workflows import notification as notification_module
from aviso_workflows.etcd import PAGE_SIZE


def _put(key: str, value: str = "None") -> dict[str, object]:
    return {"request_put": {"key": base64.b64encode(key.encode()).decode(),
                            "value": base64.b64encode(value.encode()).decode()}}


def test_range_reads_paginate_past_10000_keys(store: Store, unique_date: str) -> None:
    destination = destination_for(unique_date, "PAGE")
    base = f"/ec/diss/{destination}/"
    count = PAGE_SIZE + 50
    keys = [f"{base}date={unique_date},target=T{n // 500},class=od,expver=0001,domain=g,time=00,stream=oper,"
            f"step={n % 500}" for n in range(count)]
    for start in range(0, count, 128):
        store.gateway.txn([], [_put(key, f"loc{start}") for key in keys[start:start + 128]])
    wildcard = {"event": "dissemination", "destination": destination, "date": unique_date}
    found = store.get(wildcard)
    assert len(found) == count
    assert {n.key for n in found} == set(keys)
    several_prefixes = {**wildcard, "date": [unique_date, "20000101"]}
    assert len(store.get(several_prefixes)) == count
    assert len(store.get({**wildcard, "target": "T3"})) == 500


def test_status_key_and_foreign_keys_are_skipped(store: Store, unique_date: str, caplog: pytest.LogCaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notification_module, "_REPORTED_LAYOUTS", set())
    destination = destination_for(unique_date)
    store.notify(diss(unique_date, destination=destination, step="0/6"))
    base = f"/ec/diss/{destination}/"
    junk = [f"{base}date={unique_date},garbage", f"{base}date={unique_date},target=E1,class=od,expver=0001,domain=g,"
            "time=00,stream=oper,step=6,extra=1", f"{base}date={unique_date},target=E1/x"]
    store.gateway.txn([], [_put(key) for key in junk])
    assert len(everything(store, base)) == 6
    request = {"event": "dissemination", "destination": destination, "date": unique_date}
    with caplog.at_level(logging.WARNING, logger="aviso_workflows"):
        first = store.get(request)
        second = store.get(request)
    assert [n.request["step"] for n in first] == ["0", "6"]
    assert first == second
    skipped = [r for r in caplog.records if "do not follow the layout" in r.getMessage()]
    assert len(skipped) == 1, "keys that do not parse are logged once, not fatal"
    assert destination in skipped[0].getMessage()
    # waiting and listening are not disturbed by them either
    assert len(store.wait(request, mode="any", timeout=5)) == 2


def test_read_returns_store_order_and_read_revision(store: Store, unique_date: str) -> None:
    late = store.notify(mars(unique_date, step=0)).revisions[0]
    early = store.notify(mars(unique_date, step=6)).revisions[0]
    revision, found = store.read(store.request(mars(unique_date, step=None)))
    assert revision >= early > late
    assert [n.key for n in found] == [mars_key(unique_date, 0), mars_key(unique_date, 6)]
    assert [n.revision for n in found] == [late, early]
    _, newer = store.read(store.request(mars(unique_date, step=None)), min_revision=early)
    assert [n.key for n in newer] == [mars_key(unique_date, 6)]


def test_get_filters_on_every_field(store: Store, unique_date: str) -> None:
    store.notify(mars(unique_date, step="0/6", stream="oper"))
    store.notify(mars(unique_date, step="0/6", stream="enfo", time=12))
    found = store.get({"event": "mars", "date": unique_date, "stream": "ENFO"})
    assert {(n.request["stream"], n.request["time"], n.request["step"]) for n in found} == {
        ("enfo", "12", "0"), ("enfo", "12", "6")}
    assert store.get({"event": "mars", "date": unique_date, "step": [6], "time": "0"})[0].request == {
        "date": unique_date, "class": "od", "expver": "0001", "domain": "g", "time": "00", "stream": "oper",
        "step": "6"}
    assert len(store.get({"event": "mars", "date": unique_date})) == 4
