#!/bin/bash
# head.h: start of every job. Tells the server the job started; on any error or signal the task aborts
# once, with the reason (AVISO_ABORT_REASON) visible in the server.
set -e  # stop the shell on the first error
set -u  # fail when using an undefined variable
set -x  # echo script lines as they are executed

# Variables a user sets are read through quoted here-documents: the shell never expands their values.
# How jobs reach the server (set ECF_CLIENT_HOST for remote jobs):
ECF_HOST=$(cat <<'AVISO_VALUE'
%ECF_CLIENT_HOST:localhost%
AVISO_VALUE
)
AVISO_BIN=$(cat <<'AVISO_VALUE'
%AVISO_BIN:/usr/local/bin%
AVISO_VALUE
)
export ECF_HOST PATH="$AVISO_BIN:/usr/bin:/bin:$PATH"
export ECF_PORT=%ECF_PORT%
export ECF_NAME=%ECF_NAME%
export ECF_PASS=%ECF_PASS%
export ECF_TRYNO=%ECF_TRYNO%
export ECF_RID=$$

ecflow_client --init=$$

aviso_error() {
  set +e
  trap - 0 1 2 3 4 5 6 7 8 10 11 13 15
  # End what the job still runs in the background (a wait and its ecflow_client calls) first: a call
  # reaching the server after the abort would be a zombie.
  if declare -F aviso_end_children >/dev/null; then aviso_end_children; fi
  ecflow_client --abort="${AVISO_ABORT_REASON:-job failed}"
  # 0, as ecFlow's own head.h: a non-zero exit makes the server add a second abort ("ECF_JOB_CMD
  # exited with status 1") that hides the reason above and upsets the next try (ECF_TRIES).
  exit 0
}
trap aviso_error 0
for aviso_signal in HUP INT QUIT ILL TRAP ABRT BUS FPE USR1 SEGV PIPE TERM; do
  trap "AVISO_ABORT_REASON='killed by SIG$aviso_signal'; aviso_error" "$aviso_signal"
done
