"""A hostile location through every ordinary shell context: never run, always one whole value.

Scripts reference the notification's values as environment variables ("$AVISO_LOCATION"); pyaviso's
placeholders are accepted where rewriting them is exact and refused, when the file is loaded, where not.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from actions_helpers import listen_file, mars, start_cursor, write_listeners

from aviso_workflows import Store, ValidationError
from aviso_workflows.actions import airflow_action, command_action
from aviso_workflows.etcd import put_op
from aviso_workflows.listeners import load_listener_file
from aviso_workflows.store import Notification


def hostile(pwned: Path) -> str:
    return f"x[$(touch {pwned})] it's \"quoted\" ; `touch {pwned}` $((2)) a  b\nend"


def notification(location: str, step: str = "6") -> Notification:
    request = {"class": "od", "expver": "0001", "domain": "g", "date": "20261122", "time": "00", "stream": "oper",
               "step": step}
    return Notification("mars", request, location, f"/ec/mars/date=20261122,step={step}", 7)


#: Script -> what ``out`` holds afterwards, given the value V.
CONTEXTS = {
    "comments with quotes": ("# don't trust 'this\nprintf '%s' \"$AVISO_LOCATION\" > out # it's", "{V}"),
    "placeholder after a comment with a quote": ("# it's fine\nprintf '%s' ${location} > out", "{V}"),
    "inside \"$(...)\"": ('v="$(printf \'%s\' "$AVISO_LOCATION")"; printf \'%s\' "$v" > out', "{V}"),
    "[[ ]] test": ('[[ "$AVISO_LOCATION" == x* ]] && printf \'%s\' "$AVISO_LOCATION" > out', "{V}"),
    "$(( )) with a numeric field": ('printf \'%s\' "$(( AVISO_REQUEST_STEP + 1 ))" > out', "7"),
    "here-document": ('cat > out <<EOF\n$AVISO_LOCATION\nEOF', "{V}\n"),
    "single quotes": ("printf '%s' '['\"$AVISO_LOCATION\"']' > out", "[{V}]"),
    "placeholder in single quotes": ("printf '%s' '[${location}]' > out", "[{V}]"),
    "double quotes": ('printf \'%s\' "[$AVISO_LOCATION]" > out', "[{V}]"),
    "placeholder in double quotes": ('printf \'%s\' "[${location}]" > out', "[{V}]"),
    "placeholder as a plain word": ("printf '%s' ${location} > out", "{V}"),
}


@pytest.mark.parametrize("context", sorted(CONTEXTS))
def test_a_hostile_location_is_text_in_every_context(tmp_path: Path, context: str) -> None:
    script, expected = CONTEXTS[context]
    pwned = tmp_path / "PWNED"
    value = hostile(pwned)
    command_action({"type": "command", "command": script, "working_dir": str(tmp_path)})(notification(value))
    assert not pwned.exists(), "a location was run as code"
    assert (tmp_path / "out").read_text() == expected.replace("{V}", value)


def test_an_argument_list_gets_the_value_as_one_argument(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    pwned = tmp_path / "PWNED"
    value = hostile(pwned)
    action = command_action({"type": "command", "command": ["python3", "-c", "import sys, json; "
                             "print(json.dumps(sys.argv[1:]))", "--at=${location}", "${request.step}"]})
    action(notification(value))
    assert json.loads(capfd.readouterr().out.strip().splitlines()[-1]) == [f"--at={value}", "6"]
    shell = command_action({"type": "command", "command": ["bash", "-c", 'printf "%s" "$1" > "$2"', "_",
                                                           "${location}", str(tmp_path / "out")]})
    shell(notification(value))
    assert (tmp_path / "out").read_text() == value and not pwned.exists()


REFUSED = {
    "inside $(...)": 'echo "$(basename ${location})"',
    "[[ ]]": "[[ ${request.step} -gt 3 ]] && echo yes",
    "arithmetic": "echo $(( ${request.step} + 1 ))",
    "here-document": "cat <<EOF\n${location}\nEOF",
    "backticks": "echo `basename ${location}`",
    "eval": "eval ${location}",
    "as the command": "${location} --help",
    "after if": "if ${location}; then echo; fi",
    "a shell's script": "bash -c ${location}",
    "a backslash": "echo \\$x ${location}",
    "an array subscript": "a[${request.step}]=1",
    "an array subscript of a variable": "y=${location}; a[y]=1",
    "let of a variable": "y=${location}; let z=y+1",
    "declare -i of a variable": "y=${location}; declare -i z=y",
    "printf -v": "printf -v ${location} %s 1",
    "test -v": "test -v ${location}",
    "[ -v ]": "[ -v ${location} ]",
    "read into a name": "echo 1 | read ${location}",
    "printf -v of a variable": "y=${location}; printf -v \"$y\" %s 1",
}


@pytest.mark.parametrize("context", sorted(REFUSED))
def test_placeholders_where_they_could_run_are_refused_naming_the_variable(context: str) -> None:
    with pytest.raises(ValidationError, match=r'write "\$AVISO_(LOCATION|REQUEST_STEP)" in the script'):
        command_action({"type": "command", "command": REFUSED[context]})


def test_argument_lists_refuse_placeholders_that_would_run() -> None:
    with pytest.raises(ValidationError, match="program to run"):
        command_action({"type": "command", "command": ["${location}", "x"]})
    with pytest.raises(ValidationError, match="interpreter's options or script"):
        command_action({"type": "command", "command": ["sh", "-c", "echo ${location}"]})
    with pytest.raises(ValidationError, match="interpreter's options or script"):
        command_action({"type": "command", "command": ["python3", "-c", "print('${location}')"]})
    for launcher in (["env", "${location}"], ["xargs", "-I{}", "${location}"], ["timeout", "5", "${location}"]):
        with pytest.raises(ValidationError, match="runs its arguments as a command"):
            command_action({"type": "command", "command": launcher})


def test_a_refusal_names_file_listener_trigger_and_placeholder(store: Store, tmp_path: Path) -> None:
    path = write_listeners(tmp_path / "refused.yaml", [{
        "event": "mars", "request": mars("20261122"),
        "triggers": [{"type": "echo"}, {"type": "command", "command": "eval ${location}"}]}])
    with pytest.raises(ValidationError) as refused:
        load_listener_file(store, path)
    message = str(refused.value)
    assert str(path) in message and "listeners[0].triggers[1] (command)" in message and "${location}" in message
    assert "\n" not in message


@pytest.mark.parametrize("typo, named", [("${request.stpe}", "${request.stpe}"), ("${locaton}", "did you mean"),
                                         ("${requests.date}", "${requests.date}")])
def test_placeholder_typos_are_load_errors(store: Store, tmp_path: Path, typo: str, named: str) -> None:
    path = write_listeners(tmp_path / "typo.yaml", [{
        "event": "mars", "request": mars("20261122"),
        "triggers": [{"type": "command", "command": f"echo {typo}"}]}])
    with pytest.raises(ValidationError, match=str(path)) as refused:
        load_listener_file(store, path)
    assert named in str(refused.value) and "listeners[0].triggers[0] (command)" in str(refused.value)


def test_a_listener_without_triggers_is_an_error(store: Store, tmp_path: Path) -> None:
    path = write_listeners(tmp_path / "idle.yaml", [{"event": "mars", "request": mars("20261122")}])
    with pytest.raises(ValidationError, match="at least one trigger"):
        load_listener_file(store, path)


def test_commands_run_without_the_projects_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AVISO_WORKFLOWS_PASSWORD", "AVISO_WORKFLOWS_TOKEN", "AVISO_WORKFLOWS_KEY"):
        monkeypatch.setenv(name, "s3cret")
    monkeypatch.setenv("AVISO_WORKFLOWS_ENDPOINTS", "http://127.0.0.1:1")
    monkeypatch.setenv("HOOK_PASSWORD", "airflow-s3cret")
    airflow_action({"type": "airflow", "url": "http://127.0.0.1:9", "dag_id": "d", "username": "u",
                    "password_env": "HOOK_PASSWORD"})  # a file that gives a trigger a secret by variable name
    command_action({"type": "command", "command": "env > env.txt", "working_dir": str(tmp_path)})(notification("x"))
    seen = (tmp_path / "env.txt").read_text()
    assert "s3cret" not in seen and "HOOK_PASSWORD" not in seen
    assert "AVISO_WORKFLOWS_ENDPOINTS=http://127.0.0.1:1" in seen


def test_a_key_with_a_non_canonical_field_never_reaches_a_command(store: Store, unique_date: str,
                                                                 tmp_path: Path) -> None:
    pwned = tmp_path / "PWNED"
    path = write_listeners(tmp_path / "raw.yaml", [{
        "event": "mars", "request": {k: v for k, v in mars(unique_date).items() if k != "step"},
        "triggers": [{"type": "command", "working_dir": str(tmp_path),
                      "command": 'echo "$(( AVISO_REQUEST_STEP + 1 ))" >> steps'}]}])
    start_cursor(store, "raw")
    key = store.request("mars", mars(unique_date)).keys()[0].replace("step=0", "step=a[$(touch${IFS}PWNED)]")
    store.gateway.txn([], [put_op(key, "x")])
    store.notify("mars", mars(unique_date, step=5))
    letters = tmp_path / "dead.jsonl"
    assert listen_file(path, 2, "raw", "--dead-letter-file", str(letters)) == 0
    assert not pwned.exists() and (tmp_path / "steps").read_text() == "6\n"
    (entry,) = [json.loads(line) for line in letters.read_text().splitlines()]
    assert "is not valid" in entry["error"] and entry["notification"]["key"] == key
