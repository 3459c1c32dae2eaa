"""Choosing etcd's transport (``transport: grpc | gateway | auto``), and what only the gRPC client does itself:
failover over several endpoints, a silent watch ended after its idle timeout, compaction reported.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from etcd_helpers import running_etcd

import aviso_workflows.etcd as etcd_module
from aviso_workflows import server
from aviso_workflows.config import StoreConfig, resolve_config
from aviso_workflows.errors import HistoryCompacted, StoreUnavailable, ValidationError
from aviso_workflows.etcd import WatchIdle, put_op
from aviso_workflows.etcd_grpc import GrpcGateway
from aviso_workflows.etcd_transport import open_gateway


def closed_port_url() -> str:
    return f"http://127.0.0.1:{server.free_port()}"


@pytest.mark.parametrize("value", ["GRPC", "http", ""])
def test_an_unknown_transport_is_refused_naming_the_valid_ones(value: str) -> None:
    with pytest.raises(ValidationError, match="transport") as refused:
        StoreConfig(transport=value)
    assert "auto, grpc, gateway" in str(refused.value)


def test_grpc_with_proxy_headers_is_refused_at_build_time() -> None:
    with pytest.raises(ValidationError, match="transport.*use transport gateway"):
        StoreConfig(transport="grpc", token="t-1")


@pytest.mark.parametrize(("settings", "expected"), [
    ({"transport": "auto"}, "grpc"),
    ({"transport": "auto", "token": "t-1"}, "gateway"),
    ({"transport": "auto", "email": "ops@example.int", "key": "k"}, "gateway"),
    ({"transport": "auto", "headers": {"X-Proxy": "1"}}, "gateway"),
    ({"transport": "gateway"}, "gateway"),
    ({"transport": "grpc"}, "grpc"),
])
def test_the_transport_in_use(settings: dict[str, object], expected: str) -> None:
    gateway = open_gateway(StoreConfig(**settings))  # type: ignore[arg-type]
    assert gateway.transport == expected
    assert isinstance(gateway, GrpcGateway) == (expected == "grpc")


def test_the_environment_chooses_the_transport_over_the_config_file(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text("transport: gateway\n")
    monkeypatch.setenv("AVISO_WORKFLOWS_TRANSPORT", "grpc")
    assert resolve_config("http://127.0.0.1:2379", config_file=config_file).transport == "grpc"
    monkeypatch.delenv("AVISO_WORKFLOWS_TRANSPORT")
    assert resolve_config("http://127.0.0.1:2379", config_file=config_file).transport == "gateway"


def test_grpc_fails_over_to_the_next_endpoint(etcd_url: str) -> None:
    gateway = open_gateway(StoreConfig(endpoints=(closed_port_url(), etcd_url), transport="grpc", timeout=5))
    revision, _ = gateway.get("/transport/failover")
    assert revision > 0
    assert gateway.endpoint == etcd_url


def test_grpc_with_no_endpoint_reachable_names_each(etcd_url: str) -> None:
    endpoints = (closed_port_url(), closed_port_url())
    gateway = open_gateway(StoreConfig(endpoints=endpoints, transport="grpc", timeout=5))
    with pytest.raises(StoreUnavailable, match="cannot reach etcd") as failed:
        gateway.get("/transport/none")
    assert all(endpoint in str(failed.value) for endpoint in endpoints)


def test_a_silent_grpc_watch_ends_with_watch_idle(etcd_url: str) -> None:
    gateway = open_gateway(StoreConfig(endpoints=(etcd_url,), transport="grpc"))
    stream = gateway.watch("/transport/silent/", gateway.current_revision() + 1, idle_timeout=0.6)
    kinds = []
    with pytest.raises(WatchIdle):
        for batch in stream:
            kinds.append(batch.kind)
    stream.close()
    assert kinds == ["created"]


def test_a_grpc_watch_sees_puts_and_deletes_in_order(etcd_url: str) -> None:
    gateway = open_gateway(StoreConfig(endpoints=(etcd_url,), transport="grpc"))
    start = gateway.current_revision() + 1
    gateway.txn([], [put_op("/transport/order/a", "1"), put_op("/transport/order/b", "2")])
    deleted_at = gateway.delete("/transport/order/a")
    stream = gateway.watch("/transport/order/", start, idle_timeout=10)
    seen = []
    for batch in stream:  # history comes in one answer: the puts, the delete, the revision of the last
        seen.append((batch.kind, [kv.key for kv in batch.puts], batch.deleted, batch.revision))
        if batch.deleted:
            break
    stream.close()
    assert seen[1:] == [("events", ["/transport/order/a", "/transport/order/b"], (("/transport/order/a", deleted_at),),
                         deleted_at)]
    assert seen[0][0] == "created"


@pytest.mark.parametrize("transport", ["gateway", "grpc"])
def test_a_watch_far_behind_hands_its_history_on_in_parts_of_whole_revisions(
        etcd_url: str, transport: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """etcd answers a watch far behind with up to 1 000 revisions at once (128 000 events of a busy store): the
    stream hands them on in parts of about ``WATCH_CHUNK`` events, never splitting a revision, so the first
    reaches the reader without waiting for the whole answer to be decoded."""
    monkeypatch.setattr(etcd_module, "WATCH_CHUNK", 250)
    gateway = open_gateway(StoreConfig(endpoints=(etcd_url,), transport=transport))
    prefix = f"/transport/behind/{transport}/"
    start = gateway.current_revision() + 1
    written = [[f"{prefix}{t:02d}/{i:03d}" for i in range(100)] for t in range(12)]
    for keys in written:  # 12 revisions of 100 keys: one answer of etcd
        gateway.txn([], [put_op(key, "v") for key in keys])
    stream = gateway.watch(prefix, start, idle_timeout=10)
    parts = []
    for batch in stream:
        if batch.kind == "events":
            parts.append(batch)
        if sum(len(part.puts) for part in parts) >= 1200:
            break
    stream.close()
    assert [kv.key for part in parts for kv in part.puts] == [key for keys in written for key in keys]
    assert len(parts) > 1, "the answer was handed on whole"
    revisions = [{kv.mod_revision for kv in part.puts} for part in parts]
    assert all(not (a & b) for a, b in zip(revisions, revisions[1:])), "a revision was split between two parts"
    assert all(len(part.puts) <= 250 + 100 for part in parts), "a part holds more than the chunk and one revision"
    assert [part.revision for part in parts] == [max(r) for r in revisions], "a part reports its last revision"


@pytest.fixture(scope="module")
def private_etcd_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An etcd of this module's own: compaction would cut the history other tests read."""
    with running_etcd(tmp_path_factory.mktemp("etcd-compaction")) as info:
        yield info.client_url


def test_compacted_history_over_grpc(private_etcd_url: str) -> None:
    gateway = open_gateway(StoreConfig(endpoints=(private_etcd_url,), transport="grpc"))
    first = int(gateway.txn([], [put_op("/transport/compact/a", "1")])["header"]["revision"])
    gateway.txn([], [put_op("/transport/compact/a", "2")])
    gateway.compact(first + 1)
    with pytest.raises(HistoryCompacted):
        gateway.get("/transport/compact/a", revision=first)
    stream = gateway.watch("/transport/compact/", first, idle_timeout=10)
    with pytest.raises(HistoryCompacted) as compacted:
        list(stream)
    stream.close()
    assert compacted.value.compact_revision == first + 1


def test_a_grpc_watch_is_closed_from_another_thread(etcd_url: str) -> None:
    gateway = open_gateway(StoreConfig(endpoints=(etcd_url,), transport="grpc"))
    stream = gateway.watch("/transport/closed/", gateway.current_revision() + 1, idle_timeout=60)
    created = threading.Event()
    ended = threading.Event()

    def read() -> None:
        for _ in stream:
            created.set()
        ended.set()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    assert created.wait(10)
    stream.close()
    assert ended.wait(10), "a closed stream ends its reader without an error"


class Http1Forwarder:
    """An HTTP/1.1 server in front of etcd's gateway that forwards each POST and its answer (as an HTTP proxy
    or load balancer would): it cannot carry gRPC."""

    def __init__(self, target: str) -> None:
        forwarded: list[str] = []
        self.forwarded = forwarded

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                answer = requests.post(target + self.path, data=body, timeout=10)
                forwarded.append(self.path)
                self.send_response(answer.status_code)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, *_: object) -> None:
                """Quiet."""

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Http1Forwarder:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_auto_uses_the_gateway_where_the_endpoint_speaks_http1_only(etcd_url: str) -> None:
    with Http1Forwarder(etcd_url) as proxy:
        gateway = open_gateway(StoreConfig(endpoints=(proxy.url,), transport="auto", timeout=5))
        assert gateway.transport == "grpc"
        gateway.txn([], [put_op("/transport/http1/a", "1")])
        assert gateway.transport == "gateway"
        assert gateway.get("/transport/http1/a")[1] is not None
        assert proxy.forwarded == ["/v3/kv/txn", "/v3/kv/range"]
        again = open_gateway(StoreConfig(endpoints=(proxy.url,), transport="auto", timeout=5))
        assert again.transport == "gateway", "the process remembers the endpoint speaks HTTP/1 only"


def test_grpc_asked_for_where_the_endpoint_speaks_http1_only_says_what_to_set(etcd_url: str) -> None:
    with Http1Forwarder(etcd_url) as proxy:
        gateway = open_gateway(StoreConfig(endpoints=(proxy.url,), transport="grpc", timeout=5))
        with pytest.raises(StoreUnavailable, match="does not speak gRPC.*set transport: gateway"):
            gateway.get("/transport/http1/b")
        assert proxy.forwarded == []


@pytest.mark.parametrize("transport", ["grpc", "gateway"])
def test_put_if_unchanged_writes_only_over_the_compared_revision(etcd_url: str, transport: str) -> None:
    """A notify's step on its status chain, over each transport: written when the key is where it was compared,
    otherwise nothing is written and the key comes back as it is now."""
    gateway = open_gateway(StoreConfig(endpoints=(etcd_url,), transport=transport))
    status, data = f"/transport/cas/{transport}/", f"/transport/cas/{transport}/k"
    written, first, current = gateway.put_if_unchanged(status, None, [(data, "v1"), (status, "s1")], None)
    assert (written, current) == (True, None)
    stale = gateway.get(status)[1]
    assert stale is not None and stale.mod_revision == first and stale.value == "s1"
    assert gateway.put_if_unchanged(status, None, [(data, "lost")])[:1] == (False,)  # it exists: not "absent"
    written, second, _ = gateway.put_if_unchanged(status, stale, [(data, "v2"), (status, "s2")])
    assert written and second > first
    written, revision, current = gateway.put_if_unchanged(status, stale, [(data, "v3"), (status, "s3")])
    assert not written and revision >= second
    assert current is not None and (current.value, current.mod_revision) == ("s2", second)
    value = gateway.get(data)[1]
    assert value is not None and (value.value, value.version, value.mod_revision) == ("v2", 2, second)
    lease = gateway.grant_lease(60)
    written, _, _ = gateway.put_if_unchanged(status, current, [(data, "v4"), (status, "s4")], lease)
    leased = gateway.get(data)[1]
    assert written and leased is not None and leased.lease == int(lease)
    gateway.revoke_lease(lease)
