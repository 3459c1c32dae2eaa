"""notify against a real etcd: the keys, values, status chain and admin key pyaviso 1.0.2 writes."""

from __future__ import annotations

import datetime as dt
import json
import threading

from core_helpers import destination_for, diss, everything, mars, mars_key, status_of
from waiting import eventually

from aviso_workflows import Store
from aviso_workflows.store import DATE_FORMAT


def test_notify_writes_data_key_and_status_key_in_one_transaction(store: Store, unique_date: str) -> None:
    _, before = store.gateway.get("/ec/mars/")
    result = store.notify(mars(unique_date, step=6), location="https://data/x.grib")
    key = mars_key(unique_date, 6)
    assert result.keys == [key]
    (revision,) = result.revisions
    _, data = store.gateway.get(key)
    _, status = store.gateway.get("/ec/mars/")
    assert data is not None and data.value == "https://data/x.grib"
    assert data.mod_revision == status.mod_revision == revision  # type: ignore[union-attr]
    info = status_of(status)
    assert set(info) >= {"etcd_user", "message", "unix_user", "aviso_version", "engine", "hostname", "date_time"}
    written = dt.datetime.strptime(info["date_time"], DATE_FORMAT)
    assert abs(written - dt.datetime.now(dt.UTC).replace(tzinfo=None)) < dt.timedelta(minutes=1)
    assert info["date_time"].endswith("Z") and len(info["date_time"].split(".")[1]) == 7
    if before is not None:
        assert info["prev_rev"] == before.mod_revision


def test_value_without_location_is_the_literal_none(store: Store, unique_date: str) -> None:
    store.notify(mars(unique_date, step=12))
    _, data = store.gateway.get(mars_key(unique_date, 12))
    assert data is not None and data.value == "None"
    (notification,) = store.get(mars(unique_date, step=12))
    assert notification.location is None
    assert store.value(mars(unique_date, step="12/18")) == {mars_key(unique_date, 12): "None",
                                                            mars_key(unique_date, 18): None}


def test_location_given_in_the_request(store: Store, unique_date: str) -> None:
    store.notify({**mars(unique_date), "location": "s3://bucket/obj"})
    assert store.value(mars(unique_date)) == {mars_key(unique_date): "s3://bucket/obj"}


def test_dissemination_writes_admin_key_in_the_same_transaction(store: Store, unique_date: str) -> None:
    destination = destination_for(unique_date)
    result = store.notify(diss(unique_date, destination=destination.lower(), step="0/6"), location="file:///d")
    (revision,) = result.revisions
    base = f"/ec/diss/{destination}/"
    keys = {kv.key: kv for kv in everything(store, base)}
    assert sorted(keys) == [base, f"{base}date={unique_date},target=E1,class=od,expver=0001,domain=g,time=00,"
                            "stream=oper,step=0",
                            f"{base}date={unique_date},target=E1,class=od,expver=0001,domain=g,time=00,"
                            "stream=oper,step=6"]
    _, admin = store.gateway.get(f"/ec/admin/{unique_date}/{destination}")
    assert admin is not None and admin.value == "None"
    assert {kv.mod_revision for kv in keys.values()} == {admin.mod_revision} == {revision}
    assert "prev_rev" not in status_of(keys[base])  # the first status of a new base has no predecessor


def test_status_chain_links_previous_status(store: Store, unique_date: str) -> None:
    destination = destination_for(unique_date)
    first = store.notify(diss(unique_date, destination=destination, step=0)).revisions[0]
    second = store.notify(diss(unique_date, destination=destination, step=6)).revisions[0]
    _, status = store.gateway.get(f"/ec/diss/{destination}/")
    assert status is not None and status.mod_revision == second
    assert status_of(status)["prev_rev"] == first
    assert "last_prev_day_rev" not in status_of(status)


def test_last_prev_day_rev_set_on_a_new_day_and_carried_forward(store: Store, unique_date: str) -> None:
    destination = destination_for(unique_date)
    status_key = f"/ec/diss/{destination}/"
    yesterday = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).replace(tzinfo=None)
    old = {"etcd_user": None, "message": "yesterday", "unix_user": "u", "aviso_version": "1.0.2",
           "engine": "ETCD_REST", "hostname": "h", "date_time": yesterday.strftime(DATE_FORMAT)}
    answer = store.gateway.txn([], [{"request_put": {"key": _b64(status_key), "value": _b64(json.dumps(old))}}])
    old_revision = int(answer["header"]["revision"])
    first = store.notify(diss(unique_date, destination=destination, step=0)).revisions[0]
    info = status_of(store.gateway.get(status_key)[1])
    assert info["prev_rev"] == old_revision
    assert info["last_prev_day_rev"] == old_revision
    store.notify(diss(unique_date, destination=destination, step=6))
    info = status_of(store.gateway.get(status_key)[1])
    assert info["prev_rev"] == first
    assert info["last_prev_day_rev"] == old_revision


def test_ttl_puts_every_key_of_the_transaction_on_a_lease(store: Store, unique_date: str) -> None:
    destination = destination_for(unique_date)
    store.notify(diss(unique_date, destination=destination), ttl=60)
    keys = everything(store, f"/ec/diss/{destination}/") + everything(store, f"/ec/admin/{unique_date}/")
    assert len(keys) == 3
    assert len({kv.lease for kv in keys}) == 1 and keys[0].lease != 0


def test_without_ttl_keys_have_no_lease(store: Store, unique_date: str) -> None:
    store.notify(mars(unique_date))
    assert store.gateway.get(mars_key(unique_date))[1].lease == 0  # type: ignore[union-attr]


def test_ttl_keys_expire(store: Store, unique_date: str) -> None:
    destination = destination_for(unique_date)
    store.notify(diss(unique_date, destination=destination), ttl=1)
    assert store.get(diss(unique_date, destination=destination))
    eventually(lambda: not store.get(diss(unique_date, destination=destination)), what="the keys expired",
               timeout=8, every=0.2)  # etcd's shortest lease is about 2 s


def test_large_batch_goes_in_as_few_transactions_as_fit(store: Store, unique_date: str) -> None:
    """241 keys: 127 + 114 data keys, each transaction with its own status update, chained by prev_rev."""
    destination = destination_for(unique_date)
    result = store.notify(mars(unique_date, step="0/to/240"), location="loc")
    assert len(result.keys) == 241 and len(set(result.keys)) == 241
    assert len(result.revisions) == 2
    first, second = result.revisions
    kvs = {kv.key: kv for kv in store.gateway.range_all(f"/ec/mars/date={unique_date},")[1]}
    assert len(kvs) == 241
    assert sorted(kv.mod_revision for kv in kvs.values()) == [first] * 127 + [second] * 114
    _, status_then = store.gateway.get("/ec/mars/", revision=second)
    assert status_then is not None and status_then.mod_revision == second
    assert status_of(status_then)["prev_rev"] == first
    _, status_first = store.gateway.get("/ec/mars/", revision=first)
    assert status_first is not None and status_first.mod_revision == first
    # dissemination: the admin key takes one operation of each transaction (126 data keys + status + admin)
    result = store.notify(diss(unique_date, destination=destination, step="0/to/251"))
    assert len(result.revisions) == 2
    assert len(store.notify(diss(unique_date, destination=destination, step="0/to/252")).revisions) == 3
    for revision in result.revisions:
        _, admin = store.gateway.get(f"/ec/admin/{unique_date}/{destination}", revision=revision)
        assert admin is not None and admin.mod_revision == revision


def test_a_batch_over_several_destinations_writes_one_chain_per_status_key(store: Store, unique_date: str) -> None:
    one, two = destination_for(unique_date, "A"), destination_for(unique_date, "B")
    result = store.notify(diss(unique_date, destination=[one, two], step="0/6"))
    assert len(result.revisions) == 2 and len(result.keys) == 4
    for destination in (one, two):
        assert len(everything(store, f"/ec/diss/{destination}/")) == 3
        assert store.gateway.get(f"/ec/admin/{unique_date}/{destination}")[1] is not None


def test_concurrent_notifiers_keep_one_status_chain(store: Store, unique_date: str) -> None:
    destination = destination_for(unique_date)
    status_key = f"/ec/diss/{destination}/"
    revisions: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def notifier(number: int) -> None:
        writer = Store([store.config.endpoints[0]])
        start.wait()
        for step in range(number * 100, number * 100 + 8):
            done = writer.notify(diss(unique_date, destination=destination, step=step)).revisions
            with lock:
                revisions.extend(done)

    threads = [threading.Thread(target=notifier, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(revisions) == 48
    chain = []
    _, status = store.gateway.get(status_key)
    while status is not None:
        chain.append(status.mod_revision)
        previous = status_of(status).get("prev_rev")
        status = store.gateway.get(status_key, revision=previous)[1] if previous else None
    assert sorted(chain) == sorted(revisions)  # every notify is on the chain, once
    assert len(everything(store, status_key)) == 49


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


def test_keys_are_built_in_the_order_and_form_of_the_template() -> None:
    """Keys built by concatenation are the template formatted for each concrete request, in the same order;
    a template that repeats a field is formatted key by key."""
    from aviso_workflows.fields import EnumField, IntField
    from aviso_workflows.request import Request
    from aviso_workflows.schema import EventSchema

    raw = {**diss("20260101", step="0/to/12/by/6"), "target": ["E1", "E2"], "time": [0, 12]}
    request = Request.build(raw.pop("event"), raw)
    assert request.keys() == [request.schema.format_key(values) for values in request.concrete()]
    assert len(request.keys()) == 12 and request.keys()[:2] == [
        "/ec/diss/COM/date=20260101,target=E1,class=od,expver=0001,domain=g,time=00,stream=oper,step=0",
        "/ec/diss/COM/date=20260101,target=E1,class=od,expver=0001,domain=g,time=00,stream=oper,step=6"]
    fields = {"kind": EnumField("kind", ("a", "b")), "n": IntField("n", 0, 9)}
    repeated = EventSchema(name="twice", base="/t/{kind}", stem="n={n}/kind={kind}", fields=fields)
    assert repeated.key_parts is None
    twice = Request.build(repeated, {"kind": ["a", "b"], "n": "1/2"})
    assert twice.keys() == ["/t/a/n=1/kind=a", "/t/a/n=2/kind=a", "/t/b/n=1/kind=b", "/t/b/n=2/kind=b"]


def test_the_day_of_the_previous_status_is_read_as_strptime_reads_it() -> None:
    """last_prev_day_rev starts a new day only after a status whose date_time parses in pyaviso's format."""
    from aviso_workflows.backends.etcd_status import new_status
    from aviso_workflows.etcd import KeyValue

    today = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    yesterday = today - dt.timedelta(days=1)

    def after(date_time: object) -> dict[str, object]:
        return new_status(KeyValue("/s/", json.dumps({"date_time": date_time}), 41), "m", None)

    assert after(yesterday.strftime(DATE_FORMAT))["last_prev_day_rev"] == 41
    assert "last_prev_day_rev" not in after(today.strftime(DATE_FORMAT))
    # strptime's own leniency: one-digit hour and short fractions are times of that day
    assert after(yesterday.strftime("%Y-%m-%dT1:%M:%S.5Z"))["last_prev_day_rev"] == 41
    for unreadable in ("2026-13-01T00:00:00.000000Z", "2026-12-05T24:00:00.000000Z", "2026-12-05", None, 7):
        status = after(unreadable)
        assert status["prev_rev"] == 41 and "last_prev_day_rev" not in status, unreadable
