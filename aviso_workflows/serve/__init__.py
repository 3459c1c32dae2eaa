"""The Aviso 2 HTTP API (aviso-server's protocol, for pyaviso 2.x clients) over the Aviso etcd store.

``create_app(store, options)`` builds the ASGI app; ``aviso-workflows serve`` runs it on uvicorn.
Needs the ``serve`` extra (FastAPI, uvicorn, prometheus-client).
"""

from __future__ import annotations

from .app import ServeOptions, ServeState, create_app

__all__ = ["ServeOptions", "ServeState", "create_app"]
