"""Who may notify, watch and replay: nobody is asked (``none``), etcd decides (``etcd``), or a token file does.

- ``etcd``: ``Authorization: Basic`` becomes an etcd session as that user (etcd's roles decide what it may
  read and write, per prefix); ``Authorization: Bearer`` is passed on to etcd's endpoint as the store's
  bearer token (for Aviso's authenticating proxy in front of etcd).
- ``tokens``: ``Authorization: Bearer TOKEN`` is looked up in a file granting events to read and write
  (``*``: every event); the server's own store credentials do the work.

Refusals are Aviso 2's 401 (with ``WWW-Authenticate``) and 403 bodies. Secrets are never logged or shown.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ..documents import read_document
from ..errors import PermissionDenied, ValidationError
from .protocol import ApiError

if TYPE_CHECKING:
    from ..store import Store

AUTH_MODES = ("none", "etcd", "tokens")
#: Stores kept for etcd users signed in recently (each holds its own etcd token and connections).
STORES_KEPT = 256


@dataclass(frozen=True)
class Grant:
    """Events one token may read (watch, replay) and write (notify); ``*`` stands for every event."""

    read: frozenset[str]
    write: frozenset[str]

    def allows(self, event: str, operation: str) -> bool:
        """True when ``operation`` (read or write) on ``event`` is granted."""
        events = self.read if operation == "read" else self.write
        return "*" in events or event in events


def load_tokens(path: str) -> dict[str, Grant]:
    """Tokens from YAML or JSON: ``tokens: {TOKEN: {read: [mars], write: ["*"]}}``."""
    document = read_document(path, "tokens")
    tokens = document.get("tokens") if isinstance(document, Mapping) else None
    if not isinstance(tokens, Mapping) or not tokens:
        raise ValidationError("tokens", path, "expected 'tokens:' mapping each token to {read: [EVENT...], "
                              "write: [EVENT...]} ('*' for every event)")
    grants: dict[str, Grant] = {}
    for index, (token, grant) in enumerate(tokens.items()):
        if not isinstance(token, str) or len(token) < 8 or not token.isprintable() or " " in token:
            raise ValidationError("tokens", f"entry {index + 1}", "tokens are printable text of at least 8 "
                                  "characters without spaces")
        if not isinstance(grant, Mapping) or set(grant) - {"read", "write"}:
            raise ValidationError("tokens", f"entry {index + 1}", "each token maps to {read: [...], write: [...]}")
        grants[token] = Grant(_events(grant.get("read")), _events(grant.get("write")))
    return grants


def _events(value: object) -> frozenset[str]:
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValidationError("tokens", value, "read and write list event names ('*' for every event)")
    return frozenset(value)


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "UNAUTHORIZED", "unauthorized", message, headers={"WWW-Authenticate": "Bearer, Basic"})


def _forbidden(message: str) -> ApiError:
    return ApiError(403, "FORBIDDEN", "forbidden", message)


def refusal(error: PermissionDenied) -> ApiError:
    """Aviso 2's answer to etcd refusing the caller: bad credentials 401, no permission 403."""
    text = str(error)
    if "refused user" in text or "authentication failed" in text or "invalid auth token" in text:
        return _unauthorized("the store refused these credentials")
    return _forbidden("the store does not allow this user to do that: " + _without_user(text))


def _without_user(text: str) -> str:
    return text.split(" as user ")[0]


class Authenticator:
    """Chooses the store a request works with, or refuses it."""

    def __init__(self, store: Store, mode: str = "none", tokens: Mapping[str, Grant] | None = None) -> None:
        if mode not in AUTH_MODES:
            raise ValidationError("auth", mode, "expected one of " + ", ".join(AUTH_MODES))
        if mode == "tokens" and not tokens:
            raise ValidationError("tokens", None, "token authentication needs a token file (--tokens FILE)")
        self.store = store
        self.mode = mode
        self.tokens = dict(tokens or {})
        self._stores: OrderedDict[tuple[str, ...], Store] = OrderedDict()

    def store_for(self, authorization: str | None, event: str, operation: str) -> Store:
        """The store to ``operation`` (read or write) ``event`` with, for this ``Authorization`` header."""
        if self.mode == "none":
            return self.store
        if not authorization:
            raise _unauthorized("Authentication is required for this stream")
        scheme, _, credentials = authorization.strip().partition(" ")
        scheme = scheme.lower()
        if self.mode == "tokens":
            return self._by_token(scheme, credentials.strip(), event, operation)
        if scheme == "basic":
            user, password = _basic(credentials.strip())
            return self._etcd_store(("basic", user, _digest(password)), username=user, password=password)
        if scheme == "bearer" and credentials.strip():
            token = credentials.strip()
            return self._etcd_store(("bearer", _digest(token)), token=token)
        raise _unauthorized("expected Authorization: Basic or Bearer")

    def _by_token(self, scheme: str, token: str, event: str, operation: str) -> Store:
        if scheme != "bearer" or not token:
            raise _unauthorized("expected Authorization: Bearer TOKEN")
        grant = next((g for known, g in self.tokens.items() if hmac.compare_digest(known.encode(), token.encode())),
                     None)
        if grant is None:
            raise _unauthorized("unknown token")
        if not grant.allows(event, operation):
            verb = "watch or replay" if operation == "read" else "notify"
            raise _forbidden(f"this token may not {verb} event {event!r}")
        return self.store

    def _etcd_store(self, key: tuple[str, ...], **credentials: str) -> Store:
        """A store signed in with these credentials (kept for the next requests of the same caller)."""
        from ..store import Store

        store = self._stores.get(key)
        if store is None:
            config = replace(self.store.config, username=credentials.get("username"),
                             password=credentials.get("password"), token=credentials.get("token"), email=None, key=None)
            store = self._stores[key] = Store(config=config, schemas=self.store.schemas)
            while len(self._stores) > STORES_KEPT:
                self._stores.popitem(last=False)
        self._stores.move_to_end(key)
        return store


def _basic(credentials: str) -> tuple[str, str]:
    try:
        user, colon, password = base64.b64decode(credentials, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        user, colon, password = "", "", ""
    if not colon or not user:
        raise _unauthorized("Basic credentials are base64 of user:password")
    return user, password


def _digest(secret: str) -> str:
    """A key for the store cache that does not hold the secret itself."""
    return hashlib.sha256(secret.encode()).hexdigest()


__all__ = ["AUTH_MODES", "Authenticator", "Grant", "load_tokens", "refusal"]
