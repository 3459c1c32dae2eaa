"""The ``wait`` command's runtime: progress shown on a terminal, the --progress-command and
--partial-command hooks, SIGTERM, and one wait run with typed options.

The command parses its arguments into :class:`WaitOptions`, calls :func:`run_wait` and prints what it
returns; the hooks run here, so a killed wait never leaves one running.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ValidationError, WaitTimeout
from .request import Request
from .store import Notification, Store
from .wait import Progress, WaitResult, describe_missing
from .wait import wait as wait_for_keys

PROGRESS_COMMAND_SECONDS = 60


@dataclass(frozen=True)
class WaitOptions:
    """How one wait runs: ``all`` keys or ``any``, its bounds and hooks, and who waits (``--who``)."""

    mode: Literal["all", "any"] = "all"
    timeout: float | None = None
    min_found: int | None = None
    progress_commands: tuple[str, ...] = ()
    partial_commands: tuple[str, ...] = ()
    show_progress: bool = False
    who: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WaitOutcome:
    """What a wait found; ``timed_out`` is the timeout when it was not released (then ``found`` is partial)."""

    found: Sequence[Notification]
    timed_out: WaitTimeout | None = None


def run_wait(store: Store, request: Request, options: WaitOptions) -> WaitOutcome:
    """Wait as ``aviso-workflows wait`` does: hooks run as keys come, SIGTERM ends the wait (exit 143)."""
    progress = ProgressHooks(options.progress_commands, show=options.show_progress)
    partial_commands = [command_line(command) for command in options.partial_commands]
    if partial_commands and options.min_found is None:
        raise ValidationError("partial-command", options.partial_commands[0], "runs only with --min-found")
    _end_on_sigterm(progress)
    try:
        found = wait_for_keys(store, request, mode=options.mode, timeout=options.timeout, on_ready=progress,
                              min_found=options.min_found, who={"kind": "cli", **options.who})
    except WaitTimeout as timeout:
        progress.close()
        return WaitOutcome(timeout.found, timeout)
    progress.close()
    if found.partial:
        _released_short(request, found, partial_commands)
    return WaitOutcome(found)


class ProgressHooks:
    """Shows ``3/5 available`` on a terminal and runs the --progress-command hooks.

    The hooks run one at a time in a thread of their own, for the newest count only: a slow hook (an
    ``ecflow_client`` call takes tens of milliseconds) never slows the wait, and a catch-up of N keys runs
    them a few times instead of N times. :meth:`close` runs them for the final count before the command
    exits; :meth:`cancel` ends a running hook at once (a killed job must not update ecFlow afterwards).
    """

    def __init__(self, commands: Sequence[str], show: bool) -> None:
        self.commands = [command_line(command) for command in commands]
        self.show = show
        self._lock = threading.Condition()
        self._pending: dict[str, Any] | None = None
        self._closed = self._cancelled = False
        self._running: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None

    def __call__(self, progress: Progress) -> None:
        found, total, ready, last = progress.found, progress.total, progress.ready, progress.last_ready
        if self.show:
            end = "\n" if found == total else ""
            shown = f"{ready}/{total} ready" + (f", {found} found" if found != ready else "")
            print(f"\r{shown} (latest ready: {_brief(last) if last else '-'})", end=end, file=sys.stderr, flush=True)
        if not self.commands:
            return
        values = placeholders(progress)
        with self._lock:
            self._pending = values
            if self._thread is None:
                self._thread = threading.Thread(target=self._drain, name="progress-commands", daemon=True)
                self._thread.start()
            self._lock.notify()

    def close(self) -> None:
        """Run the hooks for the newest count if they have not yet, then stop the thread."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join()

    def cancel(self) -> None:
        """Forget counts not yet shown and end a running hook now."""
        with self._lock:
            self._cancelled, self._pending, running = True, None, self._running
        if running is not None:
            running.kill()
            running.wait()

    def _drain(self) -> None:
        while True:
            with self._lock:
                while self._pending is None and not (self._closed or self._cancelled):
                    self._lock.wait()
                values, self._pending = self._pending, None
            if values is None or self._cancelled:
                return
            for argv in self.commands:
                self._run([fill(argument, values) for argument in argv])

    def _run(self, argv: list[str]) -> None:
        with self._lock:
            if self._cancelled:
                return
            try:
                process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            except OSError as error:
                print(f"aviso-workflows: progress command {argv[0]} failed: {error}", file=sys.stderr)
                return
            self._running = process
        try:
            _, error_output = process.communicate(timeout=PROGRESS_COMMAND_SECONDS)
        except subprocess.TimeoutExpired as error:
            process.kill()
            process.wait()
            print(f"aviso-workflows: progress command {argv[0]} failed: {error}", file=sys.stderr)
            return
        finally:
            with self._lock:
                self._running = None
        if process.returncode > 0:
            detail = error_output.decode(errors="replace").strip().splitlines()
            print(f"aviso-workflows: progress command {argv[0]} exited {process.returncode}"
                  + (f": {detail[-1]}" if detail else ""), file=sys.stderr)


def command_line(command: str) -> list[str]:
    """A --progress-command split into its arguments (no shell)."""
    try:
        argv = shlex.split(command)
    except ValueError as error:  # an unclosed quote, a trailing backslash
        raise ValidationError("progress-command", command, f"cannot be split into arguments ({error})") from None
    if not argv or "\x00" in command:
        raise ValidationError("progress-command", command, "expected a command such as 'echo {found}/{total}'")
    return argv


def fill(argument: str, values: dict[str, Any]) -> str:
    """Substitute ``{name}`` placeholders in one argument (unknown names are left as they are)."""
    for name, value in values.items():
        argument = argument.replace("{" + name + "}", str(value))
    return argument


def placeholders(progress: Progress) -> dict[str, Any]:
    """The --progress-command placeholders: the key, location and request fields are those of the last key
    ready (in request order, none missing before it; empty while the first is missing), so ``{step}`` never
    names a step whose predecessors are still missing; ``{newest_key}`` is the key just found."""
    last = progress.last_ready
    fields = dict.fromkeys(progress.newest.request, "")
    if last is not None:
        fields.update(last.request)
    return {"found": progress.found, "total": progress.total, "ready": progress.ready,
            "key": last.key if last else "", "revision": last.revision if last else "",
            "location": (last.location or "") if last else "", "event": progress.newest.event,
            "newest_key": progress.newest.key, **fields}


def _brief(notification: Notification) -> str:
    last = list(notification.request.items())[-1]
    return f"{last[0]}={last[1]}"


def _released_short(request: Request, found: WaitResult, commands: list[list[str]]) -> None:
    """Run the --partial-command hooks with the missing keys (the wait's WARNING has named them)."""
    values = {"found": len(found), "total": request.count, "missing": describe_missing(request, found.missing),
              "missing_keys": " ".join(found.missing)}
    for argv in commands:
        try:
            subprocess.run([fill(argument, values) for argument in argv], stdout=subprocess.DEVNULL, check=False,
                           timeout=PROGRESS_COMMAND_SECONDS)
        except (OSError, subprocess.TimeoutExpired) as error:
            print(f"aviso-workflows: partial command {argv[0]} failed: {error}", file=sys.stderr)


def _end_on_sigterm(progress: ProgressHooks) -> None:
    """On SIGTERM (a scheduler's kill) end the wait and any running progress command, exit 143."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread

    def terminate(signum: int, _frame: Any) -> None:
        progress.cancel()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
