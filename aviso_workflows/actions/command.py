"""The command action: a program or a bash script that gets the notification's values, never as code.

Values reach a command only as data, never as part of the text a shell parses:

* every placeholder has an environment variable (``${location}`` -> ``AVISO_LOCATION``,
  ``${request.step}`` -> ``AVISO_REQUEST_STEP``) that a script references as ``"$AVISO_LOCATION"``;
* ``command: [program, arg, ...]`` runs the program without a shell; a placeholder inside an argument is
  replaced by its value there, so it is one argument whatever it holds;
* ``command: TEXT`` is a bash script. pyaviso's placeholders in it are rewritten into quoted variable
  references, which is exact only where the quoting of the text is simple: plain words, ``'...'`` and
  ``"..."`` strings, comments, pipes and lists. A script that uses placeholders together with
  substitutions, escapes, here-documents, subshells, ``[[``/``((`` tests or commands that evaluate
  their arguments (``eval``, ``let``, ``sh -c`` ...) is refused when the file is loaded, with the
  replacement to write: the variable reference.

Commands run without the credential variables of aviso-workflows (``AVISO_WORKFLOWS_PASSWORD``,
``_TOKEN``, ``_KEY`` ...) and without the variables other triggers read secrets from (``password_env``):
a script cannot leak what it never had.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import ValidationError
from ..store import Notification
from .base import (
    COMMAND_TIMEOUT,
    PLACEHOLDER,
    SECRET_VARIABLES,
    ActionFailed,
    _check_keys,
    _number,
    _path,
    _text,
    _value_of,
    check_placeholders,
    fill_text,
    is_placeholder,
    notification_data,
    placeholder_values,
    variable_name,
)

#: Variables of aviso-workflows that hold secrets; a command never sees them.
SECRET_VARIABLE = re.compile(r"AVISO_WORKFLOWS_\w*(PASSWORD|TOKEN|KEY|SECRET|CREDENTIAL)\w*\Z")
#: Programs that run their arguments as code: a placeholder may not be one of their arguments.
EVALUATING = frozenset({"eval", "let", "declare", "typeset", "local", "readonly", "source", ".", "exec", "trap",
                        "alias", "command", "builtin", "env", "sudo", "su", "xargs", "nohup", "time", "ssh",
                        "sh", "bash", "dash", "ksh", "mksh", "zsh", "fish", "busybox", "python", "python3",
                        "perl", "ruby", "node", "awk", "gawk", "mawk", "sed"})
#: Words that come before the command of a simple command.
RESERVED = frozenset({"if", "then", "else", "elif", "do", "while", "until", "!", "{", "}"})
#: Builtins that evaluate variables' values as arithmetic or code: refused anywhere in a script with placeholders,
#: since a variable set from a placeholder earlier would be evaluated there.
EVALUATING_BUILTINS = frozenset({"eval", "let", "declare", "typeset", "local", "readonly", "source", ".", "trap",
                                 "alias", "enable"})
#: Builtins that take a variable's name (``read`` as arguments, the others after the option): a name holding
#: a subscript is evaluated as arithmetic, so like EVALUATING_BUILTINS they are refused anywhere.
NAME_TAKING = {"read": "", "printf": "-v", "test": "-v", "[": "-v"}
SHELLS = frozenset({"sh", "bash", "dash", "ksh", "mksh", "zsh"})
#: Programs whose first non-option argument is code and later ones data (a list's placeholders go there).
INTERPRETERS = SHELLS | {"python", "python3", "perl", "ruby", "node", "awk", "gawk", "mawk", "sed", "jq"}
#: Programs that run other programs from their arguments: no placeholder among them in a list.
LAUNCHERS = frozenset({"env", "sudo", "su", "doas", "runuser", "xargs", "nohup", "time", "timeout", "nice",
                       "ionice", "stdbuf", "setsid", "chroot", "flock", "watch", "parallel", "ssh", "busybox",
                       "strace", "exec", "eval", "command", "builtin"})
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
#: Outside quotes a plain script holds only these characters (besides quotes, ``$VAR``, comments, placeholders).
_PLAIN = re.compile(r"[A-Za-z0-9 \t\n_\-./:=,+@%^~*?!;|&<>\[\]{}]")
_SHELL_VARIABLE = re.compile(r"\$(?:" + _NAME + r"|\{" + _NAME + r"\})")
_SEPARATORS = frozenset(";|&\n")


class _Refused(Exception):
    """A construct the plain-script rewriting does not handle; the message names it."""


# -- bash scripts with placeholders --------------------------------------------------------------
def shell_references(script: str) -> str:
    """``script`` with each placeholder replaced by a quoted reference to its environment variable.

    Raises ValidationError for a script outside the plain subset (see the module's docstring).
    """
    if not any(is_placeholder(name) for name in PLACEHOLDER.findall(script)):
        return script
    try:
        return _Rewriter(script).run()
    except _Refused as refused:
        first = next(name for name in PLACEHOLDER.findall(script) if is_placeholder(name))
        raise ValidationError("command.command", "${" + first + "}", f"a placeholder cannot stand in a script "
                              f"with {refused}; write \"${variable_name(first)}\" in the script instead (its "
                              "value is in the environment), or give command as a list "
                              "[program, argument, ...]") from None


class _Rewriter:
    """Walks a script once; knows only plain words, '...' and "..." strings, comments and separators."""

    def __init__(self, script: str) -> None:
        self.script, self.index = script, 0
        self.out: list[str] = []
        self.words: list[str] = []  # words of the simple command being read (placeholders as "\0")
        self.word = ""

    def run(self) -> str:
        while self.index < len(self.script):
            self.step()
        self.end_command()
        return "".join(self.out)

    def step(self) -> None:
        text, char = self.script, self.script[self.index]
        placeholder = PLACEHOLDER.match(text, self.index)
        if placeholder and is_placeholder(placeholder.group(1)):
            self.emit(placeholder.group(0), '"${' + variable_name(placeholder.group(1)) + '}"', True)
        elif char == "$":
            self.variable()
        elif char == "'":
            self.single_quoted()
        elif char == '"':
            self.double_quoted()
        elif char == "#" and not self.word:
            end = text.find("\n", self.index)
            self.emit(text[self.index:] if end < 0 else text[self.index:end], None, False)
        elif char in " \t" or char in _SEPARATORS:
            self.end_word(separator=char in _SEPARATORS)
            self.emit(char, None, False)
        elif text.startswith("<<", self.index):
            raise _Refused("a here-document (<<)")
        elif text.startswith("[[", self.index):
            raise _Refused("a [[ test (it evaluates values as arithmetic)")
        elif char == "[" and re.fullmatch(_NAME, self.word):
            raise _Refused("an array subscript (bash evaluates it as arithmetic)")
        elif _PLAIN.match(char):
            self.emit(char, None, False, word=char)
        else:
            raise _Refused({"`": "a backtick substitution", "\\": "a backslash escape", "(": "parentheses",
                            ")": "parentheses"}.get(char, f"the character {char!r}"))

    def emit(self, source: str, replacement: str | None, placeholder: bool, word: str | None = None) -> None:
        self.out.append(source if replacement is None else replacement)
        self.index += len(source)
        self.word += "\0" if placeholder else (word or "")

    def variable(self) -> None:
        match = _SHELL_VARIABLE.match(self.script, self.index)
        if match is None:
            raise _Refused("a $ substitution other than $NAME or ${NAME}")
        self.emit(match.group(0), None, False, word="$")

    def single_quoted(self) -> None:
        end = self.script.find("'", self.index + 1)
        if end < 0:
            raise _Refused("an unclosed single quote")
        body = self.script[self.index + 1:end]
        # Close the quotes around the reference: inside '...' nothing would expand it.
        inside = PLACEHOLDER.sub(lambda m: "'\"${" + variable_name(m.group(1)) + "}\"'"
                                 if is_placeholder(m.group(1)) else m.group(0), body)
        self.emit(self.script[self.index:end + 1], "'" + inside + "'", body != inside, word="'")

    def double_quoted(self) -> None:
        start, out, placeholder = self.index + 1, ['"'], False
        index = start
        while True:
            if index >= len(self.script):
                raise _Refused("an unclosed double quote")
            char = self.script[index]
            match = PLACEHOLDER.match(self.script, index)
            if char == '"':
                break
            if match and is_placeholder(match.group(1)):
                out.append("${" + variable_name(match.group(1)) + "}")
                placeholder, index = True, match.end()
                continue
            if char in "`\\" or (char == "$" and not _SHELL_VARIABLE.match(self.script, index)):
                raise _Refused("a substitution or escape inside double quotes")
            out.append(char)
            index += 1
        self.out.append("".join(out) + '"')
        self.word += "\0" if placeholder else '"'
        self.index = index + 1

    def end_word(self, separator: bool) -> None:
        if self.word:
            self.words.append(self.word)
            self.word = ""
        if separator:
            self.end_command()

    def end_command(self) -> None:
        """Check the simple command just read: no placeholder runs, or is handed to a program that runs it."""
        self.end_word(separator=False)
        words = list(self.words)
        self.words = []
        while words and (words[0] in RESERVED or re.match(_NAME + "=", words[0])):  # the command comes after
            words.pop(0)
        if words and words[0] in EVALUATING_BUILTINS:
            raise _Refused(f"'{words[0]}', which evaluates values as code or arithmetic")
        option = NAME_TAKING.get(words[0]) if words else None
        if option is not None and (not option or option in words or "-R" in words):
            raise _Refused(f"'{' '.join([words[0], option]).strip()}', which takes a variable's name")
        if not words or not any("\0" in word for word in words):
            return
        if "\0" in words[0]:
            raise _Refused("a placeholder as the command to run")
        if os.path.basename(words[0]) in EVALUATING:
            raise _Refused(f"'{words[0]}', which runs its arguments as code")



# -- argument lists ------------------------------------------------------------------------------
def check_arguments(argv: Sequence[str]) -> None:
    """Refuse placeholders where a program would run them: as the program, as an argument of a program that
    runs another (``env``, ``xargs``), or in an interpreter's options and script (``bash -c``, ``python -c``)."""
    program = os.path.basename(argv[0])
    if _uses(argv[0]):
        raise ValidationError("command.command[0]", argv[0], "the program to run cannot be a placeholder")
    if program in LAUNCHERS:
        for number, argument in enumerate(argv[1:], 1):
            if _uses(argument):
                raise ValidationError(f"command.command[{number}]", argument, f"'{program}' runs its arguments as "
                                      "a command; a placeholder cannot be one of them")
    if program not in INTERPRETERS:
        return
    for number, argument in enumerate(argv[1:], 1):
        if _uses(argument):
            first = PLACEHOLDER.search(argument)
            name = first.group(1) if first else "location"
            raise ValidationError(f"command.command[{number}]", argument, "a placeholder cannot be part of an "
                                  f"interpreter's options or script; write \"${variable_name(name)}\" in a shell "
                                  "script, or pass the value as a later argument")
        if not argument.startswith(("-", "+")):
            return  # the script: later arguments are its positional parameters, which are data


def _uses(text: str) -> bool:
    return any(is_placeholder(name) for name in PLACEHOLDER.findall(text))


# -- the action ----------------------------------------------------------------------------------
class CommandAction:
    """Run a program or a bash script (pyaviso's ``command`` trigger) with the notification in its environment."""

    def __init__(self, command: str | Sequence[str], environment: Mapping[str, str], working_dir: str | None,
                 timeout: float) -> None:
        self.command = command
        self.argv = list(command) if not isinstance(command, str) else None
        self.script = shell_references(command) if isinstance(command, str) else ""
        self.environment = dict(environment)
        self.working_dir = working_dir
        self.timeout = timeout
        texts = [*([command] if isinstance(command, str) else command), *environment.values(), working_dir or ""]
        self.placeholders = frozenset(name for text in texts for name in check_placeholders("command", text))
        self.uses_jsonpath = "jsonpath" in self.placeholders or (
            isinstance(command, str) and "AVISO_JSONPATH" in command)

    def __call__(self, notification: Notification) -> None:
        values = placeholder_values(notification)
        for name in sorted(self.placeholders):
            _value_of(name, values)  # a field the notification lacks fails here, not as an empty variable
        with self._json_file(notification) as jsonpath:
            environment = self.child_environment(notification, jsonpath)
            completed = self._run(self._argv(notification, jsonpath), environment, self._directory(notification))
        _relay(completed)
        if completed.returncode != 0:
            detail = completed.stderr.decode(errors="replace").strip().splitlines()
            raise ActionFailed(f"command exited with status {completed.returncode}"
                               + (f": {detail[-1]}" if detail else ""))

    def _argv(self, notification: Notification, jsonpath: str) -> list[str]:
        if self.argv is None:
            return ["bash", "-c", self.script]
        values = placeholder_values(notification, jsonpath)
        return [self.argv[0], *(fill_text(argument, values) for argument in self.argv[1:])]

    def _run(self, argv: list[str], environment: dict[str, str],
             cwd: Path | None) -> subprocess.CompletedProcess[bytes]:
        try:
            return subprocess.run(argv, env=environment, cwd=cwd, capture_output=True, stdin=subprocess.DEVNULL,
                                  timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired:
            raise ActionFailed(f"command still running after {self.timeout:g} s; stopped it") from None
        except OSError as error:
            raise ActionFailed(f"command could not start: {error}") from None

    def child_environment(self, notification: Notification, jsonpath: str = "") -> dict[str, str]:
        """The process environment without secrets, the notification as AVISO_* variables, then ``environment``."""
        values = placeholder_values(notification, jsonpath)
        inherited = {name: value for name, value in os.environ.items()
                     if not SECRET_VARIABLE.match(name) and name not in SECRET_VARIABLES}
        environment = {**inherited, **{variable_name(name): value for name, value in values.items()}}
        environment.update({name: fill_text(text, values) for name, text in self.environment.items()})
        return environment

    def _directory(self, notification: Notification) -> Path | None:
        if self.working_dir is None:
            return None
        return _path(fill_text(self.working_dir, placeholder_values(notification)))

    @contextmanager
    def _json_file(self, notification: Notification) -> Iterator[str]:
        if not self.uses_jsonpath:
            yield ""
            return
        handle, name = tempfile.mkstemp(prefix="aviso-notification-", suffix=".json")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                json.dump(notification_data(notification), file)
            yield name
        finally:
            os.unlink(name)

    def describe(self, notification: Notification) -> str:
        values = placeholder_values(notification, "<temporary JSON file>")
        where = f" in {self._directory(notification)}" if self.working_dir else ""
        if self.argv is not None:
            return f"run{where}: {self._argv(notification, '<temporary JSON file>')}"
        return f"run{where}: {fill_text(str(self.command), values)}"


def _relay(completed: subprocess.CompletedProcess[bytes]) -> None:
    if completed.stdout:
        sys.stdout.write(completed.stdout.decode(errors="replace"))
        sys.stdout.flush()
    if completed.stderr:
        sys.stderr.write(completed.stderr.decode(errors="replace"))
        sys.stderr.flush()


def _command(value: Any) -> str | list[str]:
    if isinstance(value, list):
        if not value:
            raise ValidationError("command.command", value, "expected [program, argument, ...]")
        argv = [_text(f"command.command[{n}]", item, required=n == 0) for n, item in enumerate(value)]
        check_arguments(argv)
        return argv
    return _text("command.command", value)


def command_action(spec: Mapping[str, Any]) -> CommandAction:
    """``{type: command, command: TEXT | [PROGRAM, ARG...], environment: {NAME: TEXT}, working_dir: DIR,
    timeout: SECONDS}``."""
    _check_keys("command", spec, {"command", "environment", "working_dir", "timeout"}, ("command",))
    environment = spec.get("environment")
    environment = {} if environment is None else environment
    if not isinstance(environment, Mapping):
        raise ValidationError("command.environment", environment, "expected a mapping of NAME: value")
    for name in environment:
        if not isinstance(name, str) or not re.fullmatch(_NAME, name):
            raise ValidationError("command.environment", name, "variable names are letters, digits and '_'")
    variables = {name: _text(f"command.environment.{name}", value, required=False)
                 for name, value in environment.items()}
    working_dir = spec.get("working_dir")
    return CommandAction(_command(spec["command"]), variables,
                         _text("command.working_dir", working_dir) if working_dir is not None else None,
                         _number("command.timeout", spec.get("timeout"), COMMAND_TIMEOUT))
