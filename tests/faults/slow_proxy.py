"""An endpoint that commits a transaction but answers too late: the client times out and retries elsewhere.

Shared by the fault tests of retried notifies: import ``SlowTxnProxy`` and ``slow_proxy_fixture`` (the
``slow_proxy`` fixture) into a test module.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

BOUND = 20.0  # seconds: the longest a forwarded request may take
#: Longer than the producers' timeout (1 s) in these tests: the answer of every transaction is lost.
DELAY = 2.0


class SlowTxnProxy:
    """An HTTP proxy to etcd on loopback that holds back the answer of every transaction for ``delay`` s.

    The transaction reaches etcd at once (and commits); only its answer is late. Other requests pass.
    """

    def __init__(self, target: str, delay: float) -> None:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                answer = requests.post(target + self.path, data=body, timeout=BOUND)
                if self.path.endswith("/kv/txn"):
                    proxy.delayed += 1
                    time.sleep(delay)  # the late answer this proxy exists for, not a synchronisation
                try:
                    self.send_response(answer.status_code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer.content)))
                    self.end_headers()
                    self.wfile.write(answer.content)
                except OSError:  # the client gave up waiting
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        #: How many transactions went through (and were answered late).
        self.delayed = 0
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(BOUND)


@pytest.fixture(name="slow_proxy")
def slow_proxy_fixture(etcd_url: str) -> Iterator[SlowTxnProxy]:
    """A SlowTxnProxy in front of the session's etcd, answering transactions after 2 s."""
    proxy = SlowTxnProxy(etcd_url, delay=DELAY)
    yield proxy
    proxy.close()
