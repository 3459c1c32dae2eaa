"""Two tasks of one suite deployed to the same script file: refused when the suite is built, naming both.

pyflow writes a task's script to ``<files of its anchor>/<task name>.ecf``, where the anchor is the
suite or the nearest ``AnchorFamily`` (a plain ``Family`` is not one). Two tasks with one name under one
anchor share that file, which is fine when their scripts are the same and wrong when they differ: pyflow
notices only at deploy time ("Scripts deployed with the same name must be unique within one AnchorFamily
or Suite"), naming the file but neither task. A ``WaitTask`` named ``wait`` beside a ``catchup_family``
(whose wait task is also ``wait``) is the usual case. These checks run when a ``WaitTask`` or
``NotifyTask`` is built (:func:`check_new_task`) and over the whole suite before it is deployed
(:func:`check_suite`), and name both tasks.
"""

from __future__ import annotations

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


def _refuse(first: Any, second: Any, where: tuple[str, str]) -> ValidationError:
    files, name = where
    return ValidationError("name", second.name, f"{first.fullname} and {second.fullname} would both be deployed as "
                           f"{name} in {files} with different scripts (pyflow: scripts deployed with the same name "
                           "must be unique within one AnchorFamily or Suite); give one of them another name, e.g. "
                           "catchup_family(..., wait='daily_wait'), or put it in a pf.AnchorFamily")


def check_new_task(task: Any) -> None:
    """Refuse ``task`` if a task of its suite built before it deploys to the same file with another script."""
    suite = getattr(task, "suite", None)
    if suite is None or suite is task:
        return
    where = _deploy_file(task)
    mine: str | None = None
    for other in suite.all_tasks:
        if other is task or other.name != task.name or _deploy_file(other) != where:
            continue
        theirs = _script(other)
        mine = mine if mine is not None else _script(task)
        if theirs is not None and mine is not None and theirs != mine:
            raise _refuse(other, task, where)


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
            raise _refuse(first_of[where][0], task, where)


__all__ = ["check_new_task", "check_suite"]
