"""What the ``aviso-workflows`` command and the adapters' subcommands share: the store and request options,
times, ``--who``, one-line errors and the line printed per notification.

It sits below the adapters and the CLI, so a subcommand plugged in by an adapter (``serve``,
``ecflow-bridge``, ``cylc-notify``) builds its store the way the main command does without importing it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, NoReturn

from .config import resolve_config
from .documents import read_document
from .errors import ValidationError
from .listeners import Listener, load_listener_file
from .request import Request, parse_pairs
from .store import Notification, Store
from .waiters import parse_filters

EXIT_OK, EXIT_TIMEOUT, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
#: Entry point group of adapters' subcommands: each names a function ``add_commands(subparsers, common)``.
COMMANDS_GROUP = "aviso_workflows.commands"
log = logging.getLogger("aviso_workflows")
AUTH_SETTINGS = ("username", "password", "token", "auth_type", "email", "key", "ca_cert", "client_cert", "client_key")


def common_options() -> argparse.ArgumentParser:
    """The options every subcommand that uses a store takes (a parent parser): store, logging, auth and TLS."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("store")
    group.add_argument("--endpoint", action="append", metavar="URL",
                       help="etcd endpoint (repeatable); default: $AVISO_WORKFLOWS_ENDPOINTS, the config file, "
                            "or the embedded server")
    group.add_argument("--config", metavar="FILE", help="config file (default ~/.config/aviso-workflows/config.yaml)")
    group.add_argument("--schema", action="append", metavar="FILE", help="extra event schema file (YAML or JSON)")
    group.add_argument("-v", "--verbose", action="store_true", help="log what is done")
    _auth_arguments(common.add_argument_group("authentication and TLS (secrets: prefer the environment, "
                                              "since other users can see command lines)"))
    return common


def _auth_arguments(group: argparse._ArgumentGroup) -> None:
    for option, text in (("--username", "etcd user ($AVISO_WORKFLOWS_USERNAME)"),
                         ("--password", "etcd user's password ($AVISO_WORKFLOWS_PASSWORD)"),
                         ("--token", "send 'Authorization: Bearer TOKEN', for Aviso's auth proxy "
                                     "($AVISO_WORKFLOWS_TOKEN)"),
                         ("--auth-type", "X-Auth-Type sent with --token: ecmwf (default) or openid"),
                         ("--email", "send 'Authorization: EmailKey EMAIL:KEY' ($AVISO_WORKFLOWS_EMAIL)"),
                         ("--key", "the key of --email ($AVISO_WORKFLOWS_KEY)"),
                         ("--ca-cert", "CA certificate (PEM) that signed etcd's certificate"),
                         ("--client-cert", "client certificate (PEM) for etcd's --client-cert-auth"),
                         ("--client-key", "private key (PEM) of --client-cert")):
        group.add_argument(option, help=text)


def add_request_arguments(parser: argparse.ArgumentParser) -> None:
    """``PAIRS`` or ``--request-file``: the request of a subcommand (read by :func:`request_from_args`)."""
    parser.add_argument("pairs", nargs="?", metavar="event=E,k=v,...",
                        help="the request: pyaviso-style k=v pairs; lists a/b/c, ranges a/to/b/by/n")
    parser.add_argument("--request-file", metavar="FILE", help="the request as YAML instead of k=v pairs")


def add_who_argument(parser: argparse.ArgumentParser) -> None:
    """``--who NAME=VALUE``: who waits, shown in the list of waiters (read by :func:`who_of`)."""
    parser.add_argument("--who", action="append", metavar="NAME=VALUE",
                        help="say who waits, in the list of waiters (repeatable): a job id, an ecFlow path ...")


def store_from_args(args: argparse.Namespace) -> Store:
    """The store named by ``--endpoint``/``--config``/``--schema`` (else environment, config file, default)."""
    config = resolve_config(args.endpoint or None, config_file=args.config,
                            schema_files=tuple(args.schema) if args.schema else None, **_auth_settings(args))
    return Store(config=config)


def _auth_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name, None) for name in AUTH_SETTINGS}


def request_from_args(store: Store, args: argparse.Namespace) -> tuple[Request, dict[str, Any]]:
    """The request of ``PAIRS`` or ``--request-file``, and the non-key entries (location, ttl) given with it."""
    if bool(args.pairs) == bool(getattr(args, "request_file", None)):
        raise ValidationError("request", args.pairs or None, "give either k=v pairs or --request-file, not both")
    raw = parse_pairs(args.pairs) if args.pairs else read_request_file(args.request_file)
    extras = {name: raw.pop(name) for name in ("location", "ttl") if name in raw}
    return store.request(raw), extras


def read_request_file(path: str) -> dict[str, Any]:
    """A request from YAML: ``event: mars`` plus fields, or ``{event: ..., request: {...}}``."""
    document = read_document(path, "request-file")
    if not isinstance(document, dict):
        raise ValidationError("request-file", path, "expected a mapping such as 'event: mars' and the fields")
    nested = document.pop("request", None)
    if nested is not None and not isinstance(nested, dict):
        raise ValidationError("request-file", path, "'request' holds a mapping of fields such as {class: od}")
    clashes = sorted(set(nested or {}) & set(document), key=str)
    if clashes:
        raise ValidationError("request-file", path, f"{clashes[0]!r} is given both inside and outside 'request'")
    document.update(nested or {})
    return document


def who_of(args: argparse.Namespace) -> dict[str, str]:
    """The ``--who NAME=VALUE`` fields that say who waits (a scheduler's ids: an ecFlow path, a job id)."""
    return parse_filters(getattr(args, "who", None) or [])


def parse_moment(field: str, text: str | None) -> dt.datetime | None:
    """A UTC moment from ``2026-11-22``, ``2026-11-22T06:00:00`` or pyaviso's ``...T06:00:00.000Z``."""
    if text is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        if moment.tzinfo is not None:
            moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
    except (ValueError, OverflowError):  # OverflowError: a time zone moves it out of years 1 to 9999
        raise ValidationError(field, text, "expected an ISO date or time such as 2026-11-22 or "
                              "2026-11-22T06:00:00Z (UTC)") from None
    return moment


def parse_start(text: str | None) -> dt.datetime | int | None:
    """``--from``: a revision (a whole number) or a UTC time."""
    if text is None:
        return None
    if text.strip().isdigit():
        return int(text)
    return parse_moment("from", text)


def listen_requests(store: Store, args: argparse.Namespace) -> tuple[list[Request], list[Listener]]:
    """Requests from k=v pairs or a listener file (with the listeners' triggers)."""
    source = args.pairs
    if source and Path(source).suffix in (".yaml", ".yml", ".json") and "=" not in source:
        listeners = load_listener_file(store, source)
        return [listener.request for listener in listeners], listeners
    request, _ = request_from_args(store, args)
    return [request], []


def listen_window(args: argparse.Namespace) -> tuple[dt.datetime | int | None, dt.datetime | None]:
    """``listen``'s ``--from`` and ``--to`` (checked with ``--count``): where it starts, where a replay ends."""
    start, end = parse_start(args.from_), parse_moment("to", args.to)
    if args.count is not None and args.count < 1:
        raise ValidationError("count", args.count, "expected a number of notifications of at least 1")
    if end is not None and not isinstance(start, dt.datetime):
        raise ValidationError("to", args.to, "--to needs --from TIME")
    if isinstance(start, dt.datetime) and end is not None and end <= start:
        raise ValidationError("to", args.to, "must be later than --from")
    return start, end


def format_notification(notification: Notification, as_json: bool) -> str:
    """One line: JSON, or ``revision event fields location``."""
    if as_json:
        return json.dumps(notification.to_dict())
    fields = ",".join(f"{k}={v}" for k, v in notification.request.items())
    where = f" {notification.location}" if notification.location is not None else ""
    return f"[{notification.revision}] {notification.event} {fields}{where}"


class OneLineErrorParser(argparse.ArgumentParser):
    """Bad usage is reported like every other error: one line on standard error, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def one_line(text: str, limit: int = 1000) -> str:
    """``text`` on one line (any run of whitespace becomes a space), shortened in the middle beyond ``limit``."""
    text = " ".join(text.split())
    return text if len(text) <= limit else f"{text[:limit - 60]} ... {text[-40:]}"


def add_adapter_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Subcommands of installed adapters: entry points of ``aviso_workflows.commands``, each a function
    ``add_commands(subparsers, common)``."""
    for point in entry_points(group=COMMANDS_GROUP):
        try:
            add_commands = point.load()
        except ImportError as error:  # an adapter whose scheduler is not installed adds no command
            log.debug("commands of %s not available: %s", point.value, error)
            continue
        add_commands(commands, common)
