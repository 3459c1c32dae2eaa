"""Several endpoints: a dead one first does not stop notify, read or wait."""

from __future__ import annotations

from core_helpers import mars

from aviso_workflows import Store, server


def test_a_dead_first_endpoint_fails_over_to_the_next(etcd_url: str, unique_date: str) -> None:
    dead = f"http://127.0.0.1:{server.free_port()}"
    store = Store([dead, etcd_url], timeout=2)

    written = store.notify("mars", mars(unique_date, step="0/6"), location="file:///x")
    found = store.wait("mars", mars(unique_date, step="0/6"), timeout=10)

    assert [n.key for n in found] == written.keys
    assert store.gateway.endpoint == etcd_url  # later calls go straight to the one that answered
