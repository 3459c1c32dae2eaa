"""Two tasks of one suite deployed to the same script file: refused when the suite is built, naming both.

pyflow writes a task's script to ``<files of its anchor>/<task name>.ecf``, where the anchor is the
suite or the nearest ``AnchorFamily`` (a plain ``Family`` is not one). Two tasks with one name under one
anchor share that file, which is fine when their scripts are the same and wrong when they differ: pyflow
notices only at deploy time ("Scripts deployed with the same name must be unique within one AnchorFamily
or Suite"), naming the file but neither task. A ``WaitTask`` named ``wait`` beside a ``catchup_family``
(whose wait task is also ``wait``) is the usual case. These checks run when a ``WaitTask`` or
``NotifyTask`` is built (:func:`check_new_task`, against the request tasks built before it) and over every
task of the suite before it is deployed (:func:`check_suite`), and name both tasks.
"""

from __future__ import annotations

import weakref
from typing import Any

from ..errors import ValidationError


def _deploy_file(task: Any) -> tuple[str, str]:
    """Where pyflow deploys ``task``'s script: (files directory or its anchor's path, file name)."""
    extension = task.lookup_variable_value("ECF_EXTN", ".ecf")
    try:
        files = str(task.anchor.files_path)
    except ValueError:  # no ECF_FILES yet: the anchor still tells which tasks would share a file
        files = f"the files of {task.anchor.fullname}"
    return files, f"{task.name}{extension}"


def _script(task: Any, *, complete: bool = False) -> str | None:
    """The script pyflow would deploy for ``task``; None if it cannot be generated yet, or (unless ``complete``)
    while the task has no script of its own (one may be assigned after the task is built)."""
    if not complete and not str(task.script).strip():
        return None
    try:
        lines, _ = task.generate_script()
    except Exception:  # noqa: BLE001 - a task that cannot generate yet is checked again before deploy
        return None
    return "\n".join(str(line) for line in lines)


def _refuse(first: str, second: str, task_name: str, where: tuple[str, str]) -> ValidationError:
    files, name = where
    return ValidationError("name", task_name, f"{first} and {second} would both be deployed as "
                           f"{name} in {files} with different scripts (pyflow: scripts deployed with the same name "
                           "must be unique within one AnchorFamily or Suite); give one of them another name, e.g. "
                           "catchup_family(..., wait='daily_wait'), or put it in a pf.AnchorFamily")


#: Per suite (by id, while it lives): deploy file -> (path, own script lines) of the first request task there.
_FIRST_BY_FILE: dict[int, tuple[weakref.ref[Any], dict[tuple[str, str], tuple[str, str]]]] = {}


def _files_of(suite: Any) -> dict[tuple[str, str], tuple[str, str]]:
    key = id(suite)
    entry = _FIRST_BY_FILE.get(key)
    if entry is None or entry[0]() is not suite:
        entry = (weakref.ref(suite, lambda _: _FIRST_BY_FILE.pop(key, None)), {})
        _FIRST_BY_FILE[key] = entry
    return entry[1]


def check_new_task(task: Any) -> None:
    """Refuse ``task`` if a request task (``WaitTask``, ``NotifyTask``) built before it in its suite deploys to the
    same file with another script. Other tasks are compared by :func:`check_suite`, before deploy: their scripts
    may be assigned after they are built. One lookup per task, so a suite of thousands of dates builds quickly."""
    suite = getattr(task, "suite", None)
    if suite is None or suite is task:
        return
    script = str(task.script)  # its own lines: when they differ, so do the files (headers: check_suite)
    if not script.strip():
        return
    where = _deploy_file(task)
    first = _files_of(suite).setdefault(where, (task.fullname, script))
    if first[1] != script:
        raise _refuse(first[0], task.fullname, task.name, where)


def check_suite(suite: Any) -> None:
    """Refuse a suite two of whose tasks deploy to the same file with different scripts (before anything is written)."""
    first_of: dict[tuple[str, str], tuple[Any, str]] = {}
    for task in suite.all_tasks:
        script = _script(task, complete=True)
        if script is None:  # pyflow's deploy reports why it cannot generate it
            continue
        where = _deploy_file(task)
        if where not in first_of:
            first_of[where] = (task, script)
        elif first_of[where][1] != script:
            raise _refuse(first_of[where][0].fullname, task.fullname, task.name, where)


__all__ = ["check_new_task", "check_suite"]
