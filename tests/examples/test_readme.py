"""Every ``python`` and ``bash`` block of README.md runs as printed, unless marked a fragment (see readme_blocks).

- bash: in bash (``-euo pipefail``) with the venv's bin first on PATH and the store in
  ``AVISO_WORKFLOWS_ENDPOINTS`` (and ``CYLC_TASK_CYCLE_POINT``, as in a Cylc job);
- python: executed with the same environment against the session's etcd; a block that builds pyflow suites
  has them deployed and loaded on a real ecflow_server (its ``/path/`` directories stand for the reader's own and
  become temporary ones); a block that defines Airflow DAGs is parsed from a file by a DagBag and serialized
  as the dag processor does;
- the ``flow.cylc`` lines (``ini``) pass ``cylc lint``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from readme_blocks import README, Block, ReadmeError, blocks, fragments, runnable
from runners import deploy_and_load, parse_and_serialize_dags, run_bash, suites_in

from aviso_workflows.ecflow.server import EcflowServer

try:
    ALL, PROBLEM = blocks(), None
except ReadmeError as error:  # reported by the first test rather than as an error of collection
    ALL, PROBLEM = [], error
RUNNABLE = runnable(ALL)
CYLC = Path(__file__).resolve().parents[2] / ".venv-cylc" / "bin" / "cylc"


def test_every_python_and_bash_block_is_run_or_marked_a_fragment() -> None:
    if PROBLEM is not None:
        raise PROBLEM
    counted = [block for block in ALL if block.language in ("python", "bash")]
    marked = fragments(ALL)
    print(f"README.md: {len(counted)} python/bash blocks: {len(RUNNABLE)} run, {len(marked)} marked fragment")
    for block in marked:
        print(f"  fragment at line {block.line} ({block.language}): {block.fragment}")
    assert len(RUNNABLE) + len(marked) == len(counted)
    assert RUNNABLE and {block.language for block in RUNNABLE} == {"python", "bash"}


def _defines_dags(block: Block) -> bool:
    return "from airflow" in block.text and "DAG(" in block.text


@pytest.mark.parametrize("block", RUNNABLE, ids=[block.id for block in RUNNABLE])
def test_readme_block_runs(block: Block, example_env: dict[str, str], tmp_path: Path,
                           request: pytest.FixtureRequest) -> None:
    if block.language == "bash":
        run_bash(block.text, example_env, tmp_path)
    elif _defines_dags(block):
        dag_file = tmp_path / "dags" / f"readme_line{block.line}.py"
        dag_file.parent.mkdir()
        dag_file.write_text(block.text)
        assert parse_and_serialize_dags(dag_file)
    else:
        namespace = _run_python(block, tmp_path)
        suites = suites_in(namespace)
        if suites:
            server: EcflowServer = request.getfixturevalue("examples_ecflow")
            for suite in suites:
                deploy_and_load(suite, server)


def _run_python(block: Block, tmp_path: Path) -> dict[str, Any]:
    text = block.text.replace("/path/", f"{tmp_path}/")
    namespace: dict[str, Any] = {"__name__": f"readme_line{block.line}"}
    exec(compile(text, f"README.md:{block.line}", "exec"), namespace)  # noqa: S102 - the README's own example
    return namespace


def test_the_flow_cylc_lines_pass_cylc_lint(tmp_path: Path) -> None:
    workflows = [block for block in ALL if block.language == "ini"]
    assert workflows, "README.md has no flow.cylc block"
    if not CYLC.exists():
        pytest.skip(f"{CYLC} is missing: run make setup")
    for block in workflows:
        source = tmp_path / f"line{block.line}"
        source.mkdir()
        (source / "flow.cylc").write_text(block.text)
        linted = subprocess.run([str(CYLC), "lint", str(source)], capture_output=True, text=True, timeout=60,
                                check=False)
        assert linted.returncode == 0, f"README.md:{block.line}: {linted.stdout}{linted.stderr}"


def test_readme_is_where_the_blocks_come_from() -> None:
    assert README.name == "README.md" and len(ALL) > len(RUNNABLE)


@pytest.mark.parametrize(("text", "problem"), [
    ("```\nplain\n```\n", "a fence without a language"),
    ("<!-- fragment: why -->\n\n```bash\nx\n```\n", "right before a fence"),
    ("<!-- fragment: -->\n```bash\nx\n```\n", "right before a fence"),
    ("<!-- fragment -->\n```bash\nx\n```\n", "right before a fence"),
    ("```bash\nnever closed\n", "never closed"),
])
def test_the_rules_of_blocks_and_markers_are_enforced(text: str, problem: str, tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text(text)
    with pytest.raises(ReadmeError, match=problem):
        blocks(tmp_path / "README.md")


def test_a_marked_block_is_counted_as_a_fragment_and_an_unmarked_one_is_run(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("<!-- fragment: a synopsis -->\n```bash\nx [y]\n```\n\n```python\nz = 1\n```\n"
                                        "\n```yaml\na: 1\n```\n")
    found = blocks(tmp_path / "README.md")
    assert [(b.language, b.fragment) for b in fragments(found)] == [("bash", "a synopsis")]
    assert [(b.language, b.line, b.text) for b in runnable(found)] == [("python", 6, "z = 1\n")]
