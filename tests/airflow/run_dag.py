"""Run one DAG with ``dag.test()`` in this process and print its outcome as one JSON line.

Usage: python run_dag.py DAG_FILE DAG_ID [LOGICAL_DATE|none]
Prints ``{"state": ..., "tasks": {task_id: state}, "xcom": {task_id: return value}}``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pendulum


def main(dag_file: str, dag_id: str, logical_date: str = "none") -> dict[str, Any]:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    bag = DagBag(dag_folder=dag_file)
    if dag_id not in bag.dags:
        raise SystemExit(f"{dag_id} not found in {dag_file}: {bag.import_errors}")
    when = None if logical_date == "none" else pendulum.parse(logical_date)
    run = bag.dags[dag_id].test(logical_date=when)
    with create_session() as session:
        rows = session.scalars(select(XComModel).where(XComModel.dag_id == dag_id, XComModel.run_id == run.run_id,
                                                       XComModel.key == "return_value")).all()
        xcom = {row.task_id: XComModel.deserialize_value(row) for row in rows}
        tasks = {ti.task_id: str(ti.state) for ti in run.get_task_instances(session=session)}
    return {"state": str(run.state), "run_id": run.run_id, "tasks": tasks, "xcom": xcom}


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(*sys.argv[1:]), default=str), flush=True)
