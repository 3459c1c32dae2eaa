"""Shell lines for ecFlow jobs that call the ``aviso-workflows`` command.

A request is written as fields whose values may refer to ecFlow variables (``%YMD%``, ``${STEP}``).
Static parts are validated when the suite is built and quoted with :func:`shlex.quote`; a variable
becomes a double-quoted shell expansion, and the job refuses (before using it) a value holding anything
but letters, digits and ``_ . : + / -`` — so a variable can neither run a command nor add a field.

Every way a job fails tells the server why, once: ``ecflow_client --abort="<reason>"`` (a bad variable
value, a deadline, an unusable store, a kill). A wait runs in the background of the job shell so that a
kill (SIGTERM, SIGINT, SIGHUP) is handled at once: the wait and its ``ecflow_client`` calls end first,
then the task aborts with "killed by SIGTERM ...".
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shlex
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import normalise_endpoint
from ..errors import ValidationError
from ..request import Request
from ..schema import SchemaRegistry

#: ``%NAME%``, ``${NAME}`` or ``$NAME`` inside a request value.
REFERENCE = re.compile(r"%([A-Za-z_][A-Za-z0-9_]*)%|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
#: What an ecFlow variable used in a request may hold.
SAFE_VALUE = re.compile(r"[A-Za-z0-9_.:+/-]+\Z")
SAFE_CHARACTERS = "letters, digits and _ . : + / -"
ECFLOW_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
EXIT_TIMEOUT = 1
#: The latest a wait's data may be due after 00 UTC of its date (seconds: ten days).
MAX_LATE_SECONDS = 10 * 86400
KILL_SIGNALS = ("TERM", "INT", "HUP")

ABORT_FUNCTION = """\
aviso_abort() {  # REASON: tell ecFlow why the task aborts, then end the job
  trap - TERM INT HUP
  echo "aviso-workflows: $1" >&2
  ecflow_client --abort="$1" || true
  # Not 0: pyflow's job command would then send --complete to an aborted task (a zombie that hangs).
  # Its own --abort that follows leaves the reason above in place.
  exit 1
}"""

CHECK_FUNCTION = f"""\
aviso_check_value() {{  # NAME VALUE: refuse a variable that could change the request's meaning
  case "$2" in
    ''|*[!A-Za-z0-9_.:+/-]*)
      echo "aviso-workflows: ecFlow variable $1='$2' may hold only {SAFE_CHARACTERS}" >&2
      return 2 ;;
  esac
}}"""


def command_path() -> str:
    """The ``aviso-workflows`` executable: the one next to this Python, else the one on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "aviso-workflows")
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which("aviso-workflows") or "aviso-workflows"


def _text(name: str, value: Any) -> str:
    if isinstance(value, bool) or value is None:
        raise ValidationError(name, value, "expected text, a number or a list of them")
    if isinstance(value, (list, tuple)):
        return "/".join(_text(name, item) for item in value)
    return str(value)


@dataclass(frozen=True)
class RequestTemplate:
    """A request whose values may refer to ecFlow variables, validated as far as it is known."""

    event: str
    fields: Mapping[str, str]
    registry: SchemaRegistry = field(default_factory=SchemaRegistry, compare=False, repr=False)

    @classmethod
    def build(cls, event: str, raw: Mapping[str, Any], *, samples: Callable[[str], str | None] | None = None,
              registry: SchemaRegistry | None = None) -> RequestTemplate:
        """Check field names and every static value; with ``samples`` (variable → value), the whole request."""
        registry = registry or SchemaRegistry()
        schema = registry[event]
        fields = {str(name): _text(str(name), value) for name, value in raw.items() if name != "event"}
        template = cls(schema.name, fields, registry)
        for name, text in fields.items():
            if not REFERENCE.search(text):
                schema.field(name).expand(text)
            else:
                schema.field(name)
        template.check(samples or (lambda _: None))
        return template

    def variables(self) -> list[str]:
        """Names of the ecFlow variables the request refers to, in order of first use."""
        names = (m.group(1) or m.group(2) or m.group(3) for text in self.fields.values()
                 for m in REFERENCE.finditer(text))
        return list(dict.fromkeys(names))

    def check(self, samples: Callable[[str], str | None]) -> Request | None:
        """Validate the whole request with sample values for its variables (None when one is unknown)."""
        values: dict[str, str] = {}
        for name in self.variables():
            sample = samples(name)
            if sample is None:
                return None
            values[name] = check_variable_value(name, str(sample))
        filled = {name: REFERENCE.sub(lambda m: values[m.group(1) or m.group(2) or m.group(3)], text)
                  for name, text in self.fields.items()}
        return Request.build(self.event, filled, self.registry)

    def shell_word(self, prefix: str = "") -> str:
        """The request as one shell word: ``'event=mars,...,date='"${YMD}"',...'``."""
        return quote_with_references(str(self), prefix)

    def check_lines(self, prefix: str = "") -> list[str]:
        """Shell lines that abort the task (with the reason) when a variable's value is unsafe."""
        if not self.variables():
            return []
        return [CHECK_FUNCTION] + [f'aviso_check_value {name} "${{{prefix}{name}}}" '
                                   f'|| aviso_abort "bad value of ecFlow variable {name}"'
                                   for name in self.variables()]

    def __str__(self) -> str:
        return ",".join([f"event={self.event}"] + [f"{name}={value}" for name, value in self.fields.items()])

    def display(self) -> str:
        """The request with variables written ``%NAME%`` (for comments: not a shell reference)."""
        return REFERENCE.sub(lambda m: f"%{m.group(1) or m.group(2) or m.group(3)}%", str(self))


def ecflow_name(name: str) -> str:
    """``name`` if it can name an ecFlow meter, label, event or variable."""
    if not ECFLOW_NAME.match(name):
        raise ValidationError("name", name, "ecFlow names are letters, digits and '_', not starting with a digit")
    return name


def check_variable_value(name: str, value: str) -> str:
    """``value`` if it is safe to use in a request, else a ValidationError."""
    if not SAFE_VALUE.match(value):
        raise ValidationError(name, value, f"an ecFlow variable used in a request may hold only {SAFE_CHARACTERS}")
    return value


def endpoint_arguments(endpoints: Sequence[str] | str | None) -> list[str]:
    """``--endpoint URL`` for each endpoint (validated); nothing means the job's environment decides."""
    if endpoints is None:
        return []
    listed = [endpoints] if isinstance(endpoints, str) else list(endpoints)
    arguments: list[str] = []
    for endpoint in listed:
        for part in str(endpoint).split(","):
            arguments += ["--endpoint", normalise_endpoint(part)]
    return arguments


def _command(words: Iterable[str]) -> str:
    return " ".join(words)


def wait_lines(template: RequestTemplate, *, timeout: float | None = None, meter: str | None = None,
               label: str | None = None, label_field: str | None = None, endpoints: Sequence[str] | str | None = None,
               command: str | None = None, any_key: bool = False, min_found: int | None = None,
               missing_label: str | None = None, late: Late | None = None) -> list[str]:
    """Lines that wait for ``template``; a meter and a label follow progress; a deadline or a kill aborts.

    With ``min_found``, a deadline that finds at least that many keys completes the task, the missing ones
    shown in ``missing_label``. With ``late``, the task turns late in ecFlow when its data is due and still
    missing (:func:`late_lines`). The wait is listed by ``aviso-workflows waiting`` with the task's path.
    """
    argv = [shlex.quote(command or command_path()), "wait", template.shell_word()]
    argv += ["--who", "kind=ecflow-task", "--who", '"ecflow_path=${ECF_NAME:-}"']
    if min_found is not None:
        if isinstance(min_found, bool) or not isinstance(min_found, int) or min_found < 1:
            raise ValidationError("min_found", min_found, "expected a whole number of keys of at least 1")
        argv += ["--min-found", str(min_found)]
        if missing_label:
            argv += ["--partial-command",
                     shlex.quote(f'ecflow_client --label={ecflow_name(missing_label)} "missing {{missing}}"')]
    argv += [shlex.quote(a) for a in endpoint_arguments(endpoints)]
    if any_key:
        argv.append("--any")
    if timeout is not None:
        if timeout <= 0:
            raise ValidationError("timeout", timeout, "expected a positive number of seconds")
        argv += ["--timeout", shlex.quote(f"{timeout:g}")]
    argv += progress_arguments(meter, label, label_field)
    lines = [f"# Wait until the data is available: {template.display()}", ABORT_FUNCTION]
    lines += template.check_lines() + kill_lines()
    lines += ["aviso_status=0 aviso_started=$SECONDS"]
    if late is not None:
        lines += late_lines(template, late, endpoints, command)
    # In the background, so that the shell runs its kill trap at once instead of after the wait.
    lines += [_command(argv) + " &", 'wait "$!" || aviso_status=$?', "trap - " + " ".join(KILL_SIGNALS)]
    if late is not None:
        lines += ['aviso_late_stop', 'if [ "$aviso_status" -eq 0 ] && [ "$aviso_late" -eq 3 ]; then',
                  f'  ecflow_client --label={ecflow_name(late.label)} "late since $aviso_due_text, complete at '
                  '$(date -u +%Y-%m-%dT%H:%M:%SZ)" || true', "fi"]
    lines += _failure_lines(template, timeout, label)
    return lines


@dataclass(frozen=True)
class Late:
    """When a wait's data is due: ``after`` seconds past 00 UTC of the request's ``date_field`` (the data
    date); past it, still waiting, the task turns late and ``label`` says since when."""

    after: int
    label: str = "late"
    date_field: str = "date"

    @classmethod
    def build(cls, after: Any, label: str = "late", date_field: str = "date") -> Late:
        """From a ``datetime.timedelta`` or a number of seconds (0 to ten days after the data date's start)."""
        seconds = after.total_seconds() if isinstance(after, dt.timedelta) else after
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= MAX_LATE_SECONDS:
            raise ValidationError("late_after", after, "expected a datetime.timedelta or a number of seconds from 0 "
                                  f"to {MAX_LATE_SECONDS} (ten days) after 00 UTC of the data date")
        return cls(int(seconds), ecflow_name(label), date_field)


def late_lines(template: RequestTemplate, late: Late, endpoints: Sequence[str] | str | None,
               command: str | None) -> list[str]:
    """A timer beside the wait: at the due time, if the data is still missing, it sets the task's ecFlow
    ``late`` flag (``ecflow_client --alter set_flag late``, what ecFlow's own late attribute sets, cleared
    by a requeue) and the label ``late since <due time>``.

    The due time is computed by the job from the request's date (an ecFlow variable such as ``%YMD%``
    is the value of this date's family or repeat), so one script serves every date. Before flagging, the
    timer looks at the store once: data posted long ago for a date already past due is not late, even
    while the wait is still starting. The timer sleeps in the background and ends with the wait.
    """
    if late.date_field not in template.fields:
        raise ValidationError("late_after", late.after, f"needs the request's {late.date_field!r} field (the data "
                              "date the due time counts from)")
    look = [shlex.quote(command or command_path()), "wait", template.shell_word(), "--timeout", "0", "--quiet"]
    look += [shlex.quote(a) for a in endpoint_arguments(endpoints)]
    date_word = quote_with_references(template.fields[late.date_field])
    return [
        f"aviso_day=$(date -u -d {date_word} +%s) "
        f"|| aviso_abort {shlex.quote(f'cannot tell when the data is due: {late.date_field} is not a date')}",
        f"aviso_due=$((aviso_day + {late.after}))",
        'aviso_due_text=$(date -u -d "@$aviso_due" +%Y-%m-%dT%H:%M:%SZ)',
        "aviso_late_timer() {  # at the due time, flag the task late if the data is still missing",
        '  trap \'[ -n "${aviso_sleep:-}" ] && { kill "$aviso_sleep" 2>/dev/null || true; }; exit 0\' TERM',
        '  aviso_delay=$((aviso_due - $(date -u +%s)))',
        '  if [ "$aviso_delay" -gt 0 ]; then sleep "$aviso_delay" & aviso_sleep=$!; wait "$aviso_sleep"; fi',
        "  " + _command(look) + " >/dev/null 2>&1 && exit 0",
        f'  ecflow_client --label={ecflow_name(late.label)} "late since $aviso_due_text" || true',
        '  ecflow_client --alter set_flag late "$ECF_NAME" || true  # after the label: a late task says why',
        "  exit 3",
        "}",
        "aviso_late_stop() {  # end the timer; aviso_late=3 if it flagged the task late",
        '  [ -n "${aviso_late_pid:-}" ] && { kill -TERM "$aviso_late_pid" 2>/dev/null || true; }',
        '  aviso_late=0; [ -n "${aviso_late_pid:-}" ] && { wait "$aviso_late_pid" || aviso_late=$?; }',
        "  aviso_late_pid=",
        "}",
        "aviso_late_timer &",
        "aviso_late_pid=$!",
    ]


def progress_arguments(meter: str | None, label: str | None, label_field: str | None) -> list[str]:
    """``--progress-command`` options that move the meter and the label (the wait runs them coalesced).

    The meter holds ``{ready}``, the keys found in request order with none missing before them, never the
    plain count: a trigger on ``meter >= N`` must not start while the N-th key is missing, whatever the
    order of the posts. The label shows that count and the last ready key's ``label_field``.
    """
    argv: list[str] = []
    if meter:
        argv += ["--progress-command", shlex.quote(f"ecflow_client --meter={ecflow_name(meter)} {{ready}}")]
    if label:
        shown = "{ready}/{total}" + (f" latest {ecflow_name(label_field)}={{{label_field}}}" if label_field else "")
        argv += ["--progress-command", shlex.quote(f'ecflow_client --label={ecflow_name(label)} "{shown}"')]
    return argv


def kill_lines() -> list[str]:
    """Traps that end the background wait (and its ecflow_client calls) before the task aborts.

    The wait is ended and waited for first: an ``ecflow_client --meter`` reaching the server after the
    abort would be a zombie that blocks.
    """
    lines = ["aviso_killed() {  # SIGNAL: end the wait (and a late timer), then abort with the reason",
             "  trap - " + " ".join(KILL_SIGNALS),
             '  if [ -n "${!:-}" ]; then kill -TERM "$!" 2>/dev/null && wait "$!" || true; fi',
             '  if [ -n "${aviso_late_pid:-}" ]; then { kill -TERM "$aviso_late_pid" 2>/dev/null && '
             'wait "$aviso_late_pid"; } || true; fi',
             '  aviso_abort "killed by $1 while waiting for the data"',
             "}"]
    return lines + [f"trap 'aviso_killed SIG{name}' {name}" for name in KILL_SIGNALS]


def _failure_lines(template: RequestTemplate, timeout: float | None, label: str | None) -> list[str]:
    lines = []
    if timeout is not None:
        # Exit 1 is a timeout only once the timeout has passed: a command that cannot even start (a broken
        # installation) exits 1 too. Whole seconds of $SECONDS never count less than the time elapsed.
        deadline = f"the deadline ({timeout:g} s) passed before the data was available"
        lines += [f'if [ "$aviso_status" -eq {EXIT_TIMEOUT} ] && [ $((SECONDS - aviso_started)) -ge {int(timeout)} ]; '
                  "then",
                  f"  echo {quote_with_references(f'aviso-workflows: {deadline}: {template}')} >&2"]
        if label:
            lines.append(f"  ecflow_client --label={shlex.quote(label)} {shlex.quote('timed out')} || true")
        lines += [f"  aviso_abort {shlex.quote(deadline)}", "fi"]
    return lines + ['if [ "$aviso_status" -ne 0 ]; then',
                    '  aviso_abort "the wait failed (exit $aviso_status): bad request, store unusable or the command '
                    'broken, see the job output"',
                    "fi"]


def notify_line(template: RequestTemplate, *, location: str | None = None, ttl: int | None = None,
                endpoints: Sequence[str] | str | None = None, command: str | None = None, prefix: str = "") -> str:
    """One line that posts ``template`` (after the variable checks, which :func:`notify_lines` adds)."""
    argv = [shlex.quote(command or command_path()), "notify", template.shell_word(prefix)]
    argv += [shlex.quote(a) for a in endpoint_arguments(endpoints)]
    if location is not None:
        argv += ["--location", quote_with_references(location, prefix)]
    if ttl is not None:
        argv += ["--ttl", shlex.quote(str(int(ttl)))]
    return _command(argv)


def quote_with_references(text: str, prefix: str = "") -> str:
    """``text`` as one shell word: static parts quoted, variable references as ``"${PREFIXNAME}"``."""
    pieces, position = [], 0
    for match in REFERENCE.finditer(text):
        if match.start() > position:
            pieces.append(shlex.quote(text[position:match.start()]))
        name = match.group(1) or match.group(2) or match.group(3)
        pieces.append(f'"${{{prefix}{name}}}"')
        position = match.end()
    if position < len(text):
        pieces.append(shlex.quote(text[position:]))
    return "".join(pieces) or "''"


def literal_reads(names: Iterable[str], prefix: str) -> list[str]:
    """Lines that read ecFlow variables into shell variables ``PREFIXNAME`` without any shell expansion.

    They leave the script's ``%nopp`` block so that ecFlow substitutes ``%NAME%`` into a quoted
    here-document, then enter it again.
    """
    lines: list[str] = []
    for name in names:
        lines += ["%end", f"{prefix}{name}=$(cat <<'AVISO_VALUE'", f"%{name}%", "AVISO_VALUE", ")", "%nopp"]
    return lines


def notify_lines(template: RequestTemplate, *, prefix: str = "", location: str | None = None,
                 **options: Any) -> list[str]:
    """The variable checks and the notify line; with ``prefix``, the variables are read literally first."""
    names = list(dict.fromkeys(template.variables() + _references(location or "")))
    reads = literal_reads(names, prefix) if prefix else []
    comment = f"# Tell waiting workflows the data is available: {template.display()}"
    failed = 'aviso_abort "notify failed (exit $?): bad request or store unusable, see the job output"'
    return [comment, *reads, ABORT_FUNCTION, *template.check_lines(prefix),
            notify_line(template, prefix=prefix, location=location, **options) + " || " + failed]


def _references(text: str) -> list[str]:
    return [m.group(1) or m.group(2) or m.group(3) for m in REFERENCE.finditer(text)]
