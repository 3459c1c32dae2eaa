"""The command action: placeholders, environment, working_dir, exit status, and no shell injection."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from actions_helpers import listen_file, mars, start_cursor, write_listeners

from aviso_workflows import Store, ValidationError
from aviso_workflows.actions import ActionFailed, command_action, shell_references
from aviso_workflows.store import Notification

HOSTILE = [
    "x; touch PWNED",
    "$(touch PWNED)",
    "`touch PWNED`",
    "'; touch PWNED; '",
    '"; touch PWNED; "',
    "a && touch PWNED || touch PWNED",
    "${IFS}touch${IFS}PWNED",
    "$((1+1)) * ? [a] ~ \\ | > PWNED < & !",
]


def notification(date: str, location: str | None, step: str = "0") -> Notification:
    request = {"class": "od", "expver": "0001", "domain": "g", "date": date, "time": "00", "stream": "oper",
               "step": step}
    return Notification("mars", request, location, f"/ec/mars/date={date},step={step}", 7)


def test_placeholders_become_quoted_variable_references() -> None:
    assert shell_references("echo ${location}") == 'echo "${AVISO_LOCATION}"'
    assert shell_references('echo "at ${location}!"') == 'echo "at ${AVISO_LOCATION}!"'
    assert shell_references("echo 'at ${location}'") == "echo 'at '\"${AVISO_LOCATION}\"''"
    assert shell_references("echo ${HOME} $HOME") == "echo ${HOME} $HOME"  # the shell's own variables stay


@pytest.mark.parametrize("context", ["plain", "double", "single"])
def test_hostile_locations_arrive_verbatim_and_never_run(store: Store, unique_date: str, tmp_path: Path,
                                                         context: str) -> None:
    quoted = {"plain": "${location}", "double": '"[${location}]"', "single": "'[${location}]'"}[context]
    work = tmp_path / "work"
    work.mkdir()
    command = f"printf '%s' {quoted} > out.$AVISO_REQUEST_STEP"
    path = write_listeners(tmp_path / "hostile.yaml", [{
        "event": "mars", "request": mars(unique_date, step=list(range(len(HOSTILE)))),
        "triggers": [{"type": "command", "command": command, "working_dir": str(work)}]}])
    start_cursor(store, "hostile")
    for step, location in enumerate(HOSTILE):
        store.notify("mars", mars(unique_date, step=step), location=location)
    assert listen_file(path, len(HOSTILE), "hostile") == 0
    assert not list(tmp_path.rglob("PWNED")), "a location was run as shell code"
    for step, location in enumerate(HOSTILE):
        expected = location if context == "plain" else f"[{location}]"
        assert (work / f"out.{step}").read_text() == expected


def test_newline_and_quotes_in_a_value_stay_one_argument(tmp_path: Path, unique_date: str) -> None:
    hostile = "line one\ntouch PWNED\n'\"$(touch PWNED)\""
    action = command_action({"type": "command", "working_dir": str(tmp_path),
                             "command": "printf '%s' ${location} > out"})
    action(notification(unique_date, hostile))
    assert (tmp_path / "out").read_text() == hostile
    assert not (tmp_path / "PWNED").exists()


def test_environment_working_dir_json_and_jsonpath(tmp_path: Path, unique_date: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AVISO_TEST_HOME", str(tmp_path))
    (tmp_path / "run").mkdir()
    script = ("env | grep -E '^(AVISO_|STEP=|TIME=)' | sort > env.txt; printf '%s' ${json} > json.txt; "
              "cp ${jsonpath} copy.json; printf '%s' ${jsonpath} > jsonpath.txt")
    action = command_action({"type": "command", "command": script, "working_dir": "$AVISO_TEST_HOME/run",
                             "environment": {"STEP": "${request.step}", "TIME": "The time is ${request.time}"}})
    sent = notification(unique_date, "https://data/x y", step="12")
    action(sent)
    run = tmp_path / "run"
    env = dict(line.split("=", 1) for line in (run / "env.txt").read_text().splitlines())
    assert env["AVISO_EVENT"] == "mars" and env["AVISO_LOCATION"] == "https://data/x y"
    assert env["AVISO_REQUEST_DATE"] == unique_date and env["AVISO_REQUEST_EXPVER"] == "0001"
    assert env["STEP"] == "12" and env["TIME"] == "The time is 00" and env["AVISO_REVISION"] == "7"
    assert json.loads((run / "json.txt").read_text()) == sent.to_dict() == json.loads(env["AVISO_JSON"])
    assert json.loads((run / "copy.json").read_text()) == sent.to_dict()
    assert not Path((run / "jsonpath.txt").read_text()).exists(), "the JSON file was not removed"


def test_exit_status_is_failure_and_stderr_alone_is_not(tmp_path: Path, unique_date: str) -> None:
    noisy = command_action({"type": "command", "command": "echo warning >&2; touch done", "working_dir": str(tmp_path)})
    noisy(notification(unique_date, None))
    assert (tmp_path / "done").exists()
    failing = command_action({"type": "command", "command": "echo broken >&2; exit 3"})
    with pytest.raises(ActionFailed, match="status 3: broken"):
        failing(notification(unique_date, None))


def test_a_failing_command_is_reported_and_the_listener_goes_on(store: Store, unique_date: str, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    path = write_listeners(tmp_path / "failing.yaml", [{
        "event": "mars", "request": mars(unique_date, step=[0, 1]),
        "triggers": [{"type": "command", "working_dir": str(tmp_path),
                      "command": 'test "${request.step}" != 0 && touch "done.${request.step}"'}]}])
    cursor = start_cursor(store, "failing")
    store.notify("mars", mars(unique_date, step="0/1"))
    with caplog.at_level(logging.ERROR):
        assert listen_file(path, 2, "failing") == 0
    assert (tmp_path / "done.1").exists() and not (tmp_path / "done.0").exists()
    failures = [r.getMessage() for r in caplog.records if "failed for notification" in r.getMessage()]
    assert len(failures) == 1 and f"date={unique_date}" in failures[0] and "step=0," not in failures[0]
    assert '"step": "0"' in failures[0] and "status 1" in failures[0]
    saved = cursor.load()
    assert saved is not None and saved.key.endswith("step=1")


def test_command_specs_are_checked_when_loaded() -> None:
    with pytest.raises(ValidationError, match="command.command"):
        command_action({"type": "command"})
    with pytest.raises(ValidationError, match="placeholders are"):
        command_action({"type": "command", "command": "echo ${requests.date}"})
    with pytest.raises(ValidationError, match="takes"):
        command_action({"type": "command", "command": "true", "enviroment": {}})
    with pytest.raises(ValidationError, match="variable names"):
        command_action({"type": "command", "command": "true", "environment": {"A B": "x"}})


def test_a_missing_request_field_fails_clearly(unique_date: str) -> None:
    action = command_action({"type": "command", "command": "echo ${request.number}"})
    with pytest.raises(ActionFailed, match="no such field"):
        action(notification(unique_date, None))
    with pytest.raises(ActionFailed, match="no such field"):
        action.describe(notification(unique_date, None))
