"""aviso-server's own end-to-end checks (``scripts/smoke_test.py`` of ecmwf/aviso-server 0.7.1, commit 8b99d73)
run unchanged against ``aviso-workflows serve --aviso-server-config configuration/config.yaml.example``.

Neither file is part of this project: both are read at test time from a snapshot of aviso-server's
repository (``AVISO_SERVER_REPO``, a git directory; default the mirror this machine keeps). Without one the
test skips and says where it looked. The script runs with ``AUTH_ENABLED=false``: its auth cases need
auth-o-tron's users and roles, which serve does not have (they then pass without checking anything, as
the script has them do); every other case checks serve's answers.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_helpers import serve_process

from aviso_workflows import server

REPO = Path(os.environ.get("AVISO_SERVER_REPO", "/work/.mirror/ecmwf+aviso-server/repo"))
VERSION = "8b99d73"
SMOKE_SECONDS = 300


def from_repo(path: str) -> str:
    """One file of aviso-server's repository at the followed commit (HEAD if that commit is absent)."""
    for revision in (VERSION, "HEAD"):
        done = subprocess.run(["git", "-C", str(REPO), "show", f"{revision}:{path}"], capture_output=True,
                              text=True, check=False, timeout=30)
        if done.returncode == 0:
            return done.stdout
    pytest.skip(f"aviso-server's repository is not available at {REPO} (set AVISO_SERVER_REPO to a clone of "
                "ecmwf/aviso-server)")


@pytest.fixture(scope="module")
def smoke_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if not REPO.exists():
        pytest.skip(f"aviso-server's repository is not available at {REPO} (set AVISO_SERVER_REPO to a clone of "
                    "ecmwf/aviso-server)")
    folder = tmp_path_factory.mktemp("aviso-server")
    script, config = folder / "smoke_test.py", folder / "config.yaml.example"
    script.write_text(from_repo("scripts/smoke_test.py"))
    config.write_text(from_repo("configuration/config.yaml.example"))
    return script, config


@pytest.fixture(scope="module")
def smoke_server(etcd_url: str, smoke_files: tuple[Path, Path],
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with serve_process(etcd_url, server.free_port(), log, "--aviso-server-config", str(smoke_files[1])) as url:
        yield url


def test_aviso_servers_smoke_checks_pass_against_serve(smoke_server: str, smoke_files: tuple[Path, Path]) -> None:
    env = {**os.environ, "BASE_URL": smoke_server, "AUTH_ENABLED": "false", "BACKEND": "in_memory"}
    done = subprocess.run([sys.executable, str(smoke_files[0])], env=env, capture_output=True, text=True,
                          timeout=SMOKE_SECONDS, check=False)
    summary = re.search(r"smoke summary: pass=(\d+) fail=(\d+)", done.stdout)
    assert summary, f"the smoke script printed no summary:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    passed, failed = int(summary[1]), int(summary[2])
    print(f"aviso-server smoke checks against serve: {passed} of {passed + failed} pass")
    assert failed == 0, "\n".join(line for line in done.stdout.splitlines() if "FAIL" in line or "reason" in line)
    assert passed == 21
