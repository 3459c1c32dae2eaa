"""Provider metadata Airflow reads through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from .. import __version__

PACKAGE = "aviso_workflows.airflow"
_TEXT = {"type": ["string", "null"]}

#: The extras of an ``aviso`` connection, as form fields.
CONNECTION_FIELDS: dict[str, Any] = {
    "endpoints": {"label": "Endpoints", "schema": _TEXT,
                  "description": "Comma-separated http(s)://HOST:PORT of an etcd cluster (instead of host/port)"},
    "auth_type": {"label": "Authentication", "schema": _TEXT,
                  "description": "etcd (login/password: an etcd user), bearer/ecmwf/openid (password: a token "
                                 "for Aviso's auth proxy) or emailkey (login: e-mail, password: key)"},
    "use_tls": {"label": "Use TLS", "schema": {"type": ["boolean", "null"], "default": False}},
    "ca_cert": {"label": "CA certificate file", "schema": _TEXT},
    "client_cert": {"label": "Client certificate file", "schema": _TEXT},
    "client_key": {"label": "Client key file", "schema": _TEXT},
    "headers": {"label": "Headers (JSON)", "schema": {"type": ["string", "null"], "format": "password"},
                "description": 'Sent with every request, e.g. {"Authorization": "Bearer TOKEN"}'},
    "timeout": {"label": "Timeout (seconds)", "schema": {"type": ["number", "null"], "default": 10}},
    "schema_files": {"label": "Event schema files", "schema": _TEXT,
                     "description": "Comma-separated YAML/JSON files defining custom events"},
    "board_url": {"label": "Board", "schema": _TEXT,
                  "description": "Where operators see what arrived, who waits and what is late: the board of "
                                 "aviso-workflows serve, e.g. http://HOST:8000/board?class=od&stream=oper (not "
                                 "used to connect)"},
}


def get_provider_info() -> dict[str, Any]:
    """What this provider brings: hooks, sensors, operators, triggers, the ``aviso`` connection and queue."""
    return {
        "package-name": "aviso-workflows",
        "name": "Aviso",
        "description": "Wait for and post Aviso-compatible \"data available\" notifications in etcd.",
        "versions": [__version__],
        "integrations": [{
            "integration-name": "Aviso",
            "external-doc-url": "https://github.com/ecmwf/aviso",
            "tags": ["service"],
        }],
        "hooks": [{"integration-name": "Aviso", "python-modules": [f"{PACKAGE}.hooks"]}],
        "sensors": [{"integration-name": "Aviso", "python-modules": [f"{PACKAGE}.sensors"]}],
        "operators": [{"integration-name": "Aviso", "python-modules": [f"{PACKAGE}.operators"]}],
        "triggers": [{"integration-name": "Aviso", "python-modules": [f"{PACKAGE}.triggers"]}],
        "connection-types": [{
            "hook-class-name": f"{PACKAGE}.hooks.AvisoHook",
            "hook-name": "Aviso (etcd)",
            "connection-type": "aviso",
            "conn-fields": CONNECTION_FIELDS,
            "ui-field-behaviour": {
                "hidden-fields": ["schema", "extra"],
                "relabeling": {"login": "etcd user", "password": "etcd password"},
                "placeholders": {"host": "127.0.0.1", "port": "2379"},
            },
        }],
        "queues": [f"{PACKAGE}.queues.AvisoMessageQueueProvider"],
    }
