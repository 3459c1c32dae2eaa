"""Fuzzed listener files: each one loads into listeners with checked actions, or is refused with a clear error."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fuzz_strategies import FUZZ, NASTY_TEXT, assert_request_sound, outcome, requests, revision, values
from hypothesis import example, given
from hypothesis import strategies as st

from aviso_workflows import Store, ValidationError
from aviso_workflows.actions import ACTION_TYPES
from aviso_workflows.listeners import Listener, load_listener_file, parse_listeners

# References a function action may name: importable or not, relative, empty, not callable. Never an
# arbitrary module name, because importing a module runs it.
FUNCTION_REFERENCES = ["json:dumps", "aviso_workflows.fields:check_characters", "..:x", ".x:y", "..", ":", "x:",
                       ":y", "json", "json:no_such_name", "json:__doc__", "a\x00b:c", "", " ", "no_such_module_q:f",
                       "no_such_module_q.sub:f", "json.:dumps", "json..decoder:x"]
urls = st.one_of(st.sampled_from(["http://127.0.0.1:9/x", "https://example.invalid/hook", "ftp://127.0.0.1/x",
                                  "127.0.0.1:8080", "http://", "http:///x", "http://[::1", "http://127.0.0.1:99999",
                                  "http://127.0.0.1:0/", "http://a b/", "http://x/\n", "file:///etc/passwd", ""]),
                 values)
seconds = st.one_of(st.sampled_from([0, 1, 2.5, -1, float("nan"), float("inf"), 1e300, True, "30", None]), values)
texts = st.one_of(st.sampled_from(["echo ${request.step}", "echo ${location} ${json}", "echo ${nope.x}", "true",
                                   "${request.}", "~/log.txt", "$HOME/x", "/tmp/aviso-fuzz-never-written.log"]),
                  values)

GOOD_ACTIONS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "echo": st.just({"type": "echo"}),
    "log": st.fixed_dictionaries({"type": st.just("log"), "path": texts}),
    "command": st.fixed_dictionaries({"type": st.just("command"), "command": texts}, optional={
        "environment": st.one_of(st.dictionaries(st.sampled_from(["STEP", "A_1", "1A", "", "A B", 5]), texts,
                                                 max_size=3), values),
        "working_dir": texts, "timeout": seconds}),
    "post": st.fixed_dictionaries({"type": st.just("post"), "protocol": st.one_of(st.fixed_dictionaries(
        {"type": st.sampled_from(["cloudevents_http", "http", None]), "url": urls}, optional={
            "headers": st.one_of(st.dictionaries(st.sampled_from(["X-A", "Bad Name", "", "a:b", 1]),
                                                 st.sampled_from(["v", "a\nb", "", 5, None, []]), max_size=2), values),
            "timeout": seconds, "cloudevents": st.one_of(st.fixed_dictionaries({}, optional={
                "type": texts, "source": texts, "id": texts}), values)}), values)},
        optional={"retries": st.one_of(st.integers(-1, 101), values), "backoff": seconds}),
    "function": st.fixed_dictionaries({"type": st.just("function"),
                                       "function": st.one_of(st.sampled_from(FUNCTION_REFERENCES), values)}),
    "ecflow": st.fixed_dictionaries({"type": st.just("ecflow"), "port": st.one_of(
        st.sampled_from([3141, 0, -1, 65536, 10**20, "3141", True]), values)}, optional={
        "host": st.one_of(st.just("localhost"), values),
        "event": st.sampled_from(["data_ready", "a b", "", 5]), "meter": st.sampled_from(["steps", []]),
        "complete": st.sampled_from(["/s/t", "", "/s/{step}", "/s/{"]),
        "node": st.sampled_from(["/s/t", "/s/fc_${request.date}", "", "/s/{", "{x}", 5]),
        "value": st.sampled_from(["set", "clear", "{step}", "${request.step}", "", "{0}", 7])}),
    "airflow": st.fixed_dictionaries({"type": st.just("airflow"), "url": urls, "dag_id": texts}, optional={
        "username": st.one_of(st.just("admin"), values), "password": st.one_of(st.just("admin"), values),
        "token_env": st.one_of(st.sampled_from(["PATH", "AVISO_FUZZ_UNSET_VARIABLE", ""]), values),
        "timeout": seconds, "retries": st.one_of(st.integers(0, 100), values)}),
    "cylc": st.fixed_dictionaries({"type": st.just("cylc"), "workflow": st.one_of(
        st.sampled_from(["daily", "daily/live", "", "../x", "a b", "/abs"]), values), "task": st.one_of(
        st.sampled_from(["process", "", "a b", "x;y"]), values), "xtrigger": st.one_of(
        st.sampled_from(["data", "1x", "", "a-b"]), values)}, optional={
        "cycle": st.sampled_from(["", "%Y%m%dT%H%MZ", "{date}", 5]), "mode": st.sampled_from(["all", "any", "some", 1]),
        "request": st.one_of(st.just({"event": "mars", "class": "od"}), st.just({"class": "od"}), values),
        "relay": st.one_of(st.booleans(), values), "timeout": seconds, "cylc": texts}),
}
assert set(GOOD_ACTIONS) == set(ACTION_TYPES), "every action type is fuzzed"


@st.composite
def action_specs(draw: st.DrawFn) -> Any:
    """One entry of ``triggers:``: a spec of a real action type, sometimes with a key added or a type broken."""
    spec = draw(st.one_of(*GOOD_ACTIONS.values()))
    choice = draw(st.integers(0, 5))
    if choice == 0:
        spec[draw(st.one_of(st.sampled_from(["Type", "extra", "retries", "url", "path"]), st.text(max_size=4),
                            st.integers()))] = draw(values)
    elif choice == 1:
        spec["type"] = draw(st.one_of(st.sampled_from(["ECHO", "Echo", "shell", "", "triggers"]), values))
    elif choice == 2:
        return draw(values)
    return spec


@st.composite
def listener_entries(draw: st.DrawFn) -> Any:
    """One listener: event, request and actions, each sometimes wrong, sometimes with an unknown entry."""
    request = draw(requests())
    entry: dict[Any, Any] = {"event": request.pop("event", "mars"), "request": request}
    actions = draw(st.lists(action_specs(), max_size=3))
    entry[draw(st.sampled_from(["triggers", "actions"]))] = actions
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.one_of(st.sampled_from(["event", "request", "triggers", "actions", "Event", "listeners",
                                               "when", "do"]), st.text(max_size=5), st.integers()))
        entry[name] = draw(st.one_of(values, st.lists(action_specs(), max_size=2), requests()))
    return entry if draw(st.integers(0, 9)) else draw(values)


documents = st.one_of(
    st.fixed_dictionaries({"listeners": st.lists(listener_entries(), max_size=3)}),
    st.fixed_dictionaries({"listeners": st.lists(listener_entries(), min_size=1, max_size=2)},
                          optional={"payload": values, "version": values, "extra": values}),
    values,
)


def assert_listeners_sound(listeners: list[Listener]) -> None:
    """Accepted listeners hold canonical requests that choose their store prefixes, and ready actions."""
    assert listeners
    for listener in listeners:
        assert_request_sound(listener.request)
        listener.request.status_keys()
        for kind, action in listener.actions:
            assert kind in ACTION_TYPES and callable(action)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """A directory for the listener files of this module (module scope: shared by every example)."""
    with tempfile.TemporaryDirectory(prefix="aviso-fuzz-listeners-") as directory:
        yield Path(directory)


@FUZZ
@given(document=documents)
@example(document={"listeners": [{"event": "mars", "triggers": [{"type": ["echo"]}]}]})
@example(document={"listeners": [{"event": "mars", "triggers": [{"type": "echo", 1: "x", "a": "y"}]}]})
@example(document={"listeners": [{"event": "mars", "triggers": [{"type": "function", "function": "..:x"}]}]})
@example(document={"listeners": [{"event": "mars", "triggers": [{"type": "command", "command": "true",
                                                                  "timeout": float("nan")}]}]})
@example(document={"listeners": [{"event": "mars", "request": 0}]})
@example(document={"listeners": [{"event": "mars", "trigger": [{"type": "echo"}]}]})
@example(document={"listeners": [{"event": "mars", "triggers": [{"type": "ecflow", "port": 3141, 1: "x",
                                                                  "event": "a", "node": "/s/t"}]}]})
@example(document={"listeners": [{"event": "mars", "triggers": [{"type": "airflow", "url": "http://x",
                                                                  "dag_id": "d", "token_env": ["PATH"]}]}]})
@example(document={"listeners": [{"event": "mars", "triggers": [{"type": "post", "protocol": {
    "type": "cloudevents_http", "url": "http://127.0.0.1:9/x", "headers": {"X-A": "a\nb"}}}]}]})
@example(document={"listeners": [{"event": "mars", "triggers": [{"type": "post", "protocol": {
    "type": "cloudevents_http", "url": "ftp://127.0.0.1/x"}}]}]})
@example(document={"listeners": [{"event": "mars", "triggers": [{"type": "ecflow", "port": 70000, "event": "a",
                                                                  "node": "/s/t"}]}]})
@example(document={"listeners": [{"event": "mars", "triggers": [{"type": "log", "path": ["a.log"]}]}]})
def test_listener_documents(fuzz_store: Store, document: Any) -> None:
    before = revision(fuzz_store)
    listeners = outcome(parse_listeners, fuzz_store, document)
    if not isinstance(listeners, ValidationError):
        assert_listeners_sound(listeners)
    assert revision(fuzz_store) == before


def _mangle(text: str, position: int, cut: int, insert: str) -> str:
    position = min(position, len(text))
    return text[:position] + insert + text[position + cut:]


yaml_text = st.one_of(
    st.builds(_mangle, documents.map(lambda d: yaml.safe_dump(d, allow_unicode=True) if _dumpable(d) else "x"),
              st.integers(0, 400), st.integers(0, 5),
              st.sampled_from(["", ":", "- ", "\t", "  ", "{", "]", "&a ", "*a", "!!python/object:os.system ", "\x00",
                               "\n", "'", "%YAML 1.1\n", "? ", "|", "listeners:", "\ufeff", "\udcff"])),
    st.sampled_from(["", "listeners:", "listeners: [", "listeners: !!binary abc", "- 1", "[[[[[[",
                     "listeners:\n" + "  " * 200 + "- x", "a: &a [*a]", "listeners: *missing", *NASTY_TEXT[:30]]),
    st.text(max_size=60),
)


def _dumpable(document: Any) -> bool:
    try:
        yaml.safe_dump(document, allow_unicode=True)
    except (yaml.YAMLError, UnicodeEncodeError):
        return False
    return True


@FUZZ
@given(text=yaml_text, encoding=st.sampled_from(["utf-8", "utf-16", "latin-1", "bytes"]))
@example(text="listeners: []", encoding="utf-16")
@example(text="[" * 1000 + "]" * 1000, encoding="utf-8")
@example(text="listeners:\n  - event: mars\n    request: {class: od}\n    triggers: [{type: [echo]}]\n",
         encoding="utf-8")
def test_listener_yaml_text(fuzz_store: Store, scratch: Path, text: str, encoding: str) -> None:
    path = scratch / "listeners.yaml"
    if encoding == "bytes":  # not text at all
        data = text.encode("utf-8", "surrogatepass") + b"\xff\xfe"
    else:
        data = text.encode(encoding, "surrogatepass" if encoding == "utf-8" else "replace")
    path.write_bytes(data)
    before = revision(fuzz_store)
    listeners = outcome(load_listener_file, fuzz_store, path)
    if not isinstance(listeners, ValidationError):
        assert_listeners_sound(listeners)
    assert revision(fuzz_store) == before


@pytest.mark.parametrize("name", ["a\x00.yaml", "absent.yaml", ".", ""])
def test_listener_paths(fuzz_store: Store, scratch: Path, name: str) -> None:
    """A path that names no readable file: a clear error naming the path."""
    error = outcome(load_listener_file, fuzz_store, scratch / name if name else scratch)
    assert isinstance(error, ValidationError) and error.field == "listener file", error


# Pieces of bash scripts, hostile to the placeholder rewriting: quotes, comments, substitutions, tests,
# arithmetic, here-documents, commands that evaluate. None runs ``touch`` itself; only a value could.
SCRIPT_PIECES = ["printf '%s' ", "${location}", "${request.step}", " ", "'", '"', "#", "\n", ";", "|", "&&",
                 "$(", ")", "`", "[[ ", " ]]", "$((", "((", "<<EOF\n", "\nEOF\n", "\\", "eval ", "bash -c ",
                 "let ", "x", "=", "$HOME", "${HOME}", "> out", "[", "]", "{", "}", "if ", "then ", "fi", "-gt 1 ",
                 "a[", "y=", "y", "$y", "declare -i ", "test ", "-eq 1", "printf %d ", "printf -v ", "read ", "-v "]


@FUZZ
@given(st.lists(st.sampled_from(SCRIPT_PIECES), min_size=1, max_size=12))
def test_a_script_with_placeholders_is_refused_or_never_runs_a_value(pieces: list[str]) -> None:
    from aviso_workflows.actions import command_action
    from aviso_workflows.store import Notification

    script = "".join(pieces)
    try:
        action = command_action({"type": "command", "command": script, "timeout": 5})
    except ValidationError:
        return
    with tempfile.TemporaryDirectory() as work:
        for location in ("$(touch PWNED)", "`touch PWNED`", "a[$(touch${IFS}PWNED)]", "'; touch PWNED; '"):
            request = {"class": "od", "expver": "0001", "domain": "g", "date": "20261122", "time": "00",
                       "stream": "oper", "step": "6"}
            action.working_dir = work
            try:
                action(Notification("mars", request, location, "/ec/mars/x", 1))
            except Exception:  # noqa: BLE001, S110 - a script may fail; it must not run the value
                pass
            assert not (Path(work) / "PWNED").exists(), f"{script!r} ran the location {location!r}"


PROGRAMS = ["printf", "echo", "bash", "sh", "python3", "env", "xargs", "timeout", "nice", "/bin/echo"]
ARGUMENTS = ["-c", "-e", "%s", "${location}", "${request.step}", 'echo "$1"', "_", "5", "-I{}", "--",
             "import sys; print(sys.argv)", "x${location}y", "-n"]


@FUZZ
@given(st.sampled_from(PROGRAMS), st.lists(st.sampled_from(ARGUMENTS), max_size=6))
def test_an_argument_list_is_refused_or_never_runs_a_value(program: str, arguments: list[str]) -> None:
    from aviso_workflows.actions import command_action
    from aviso_workflows.store import Notification

    try:
        action = command_action({"type": "command", "command": [program, *arguments], "timeout": 5})
    except ValidationError:
        return
    with tempfile.TemporaryDirectory() as work:
        action.working_dir = work
        for location in ("touch PWNED", "$(touch PWNED)", "`touch PWNED`", "a[$(touch${IFS}PWNED)]"):
            request = {"class": "od", "expver": "0001", "domain": "g", "date": "20261122", "time": "00",
                       "stream": "oper", "step": "6"}
            try:
                action(Notification("mars", request, location, "/ec/mars/x", 1))
            except Exception:  # noqa: BLE001, S110 - a command may fail; it must not run the value
                pass
            assert not (Path(work) / "PWNED").exists(), f"{[program, *arguments]!r} ran {location!r}"
