#!/bin/bash
# head.h: start of every job. Tells the server the job started and aborts the task on any error.
set -e  # stop the shell on the first error
set -u  # fail when using an undefined variable
set -x  # echo script lines as they are executed

export ECF_PORT=%ECF_PORT%
export ECF_HOST=%ECF_CLIENT_HOST:localhost%   # how jobs reach the server (set ECF_CLIENT_HOST for remote jobs)
export ECF_NAME=%ECF_NAME%
export ECF_PASS=%ECF_PASS%
export ECF_TRYNO=%ECF_TRYNO%
export ECF_RID=$$
export PATH=%AVISO_BIN:/usr/local/bin%:/usr/bin:/bin:$PATH

ecflow_client --init=$$

aviso_error() {
  set +e
  trap - 0 1 2 3 4 5 6 7 8 10 11 13 15
  ecflow_client --abort="${AVISO_ABORT_REASON:-job failed}"
  exit 1
}
trap aviso_error 0
trap '{ AVISO_ABORT_REASON="signal received"; aviso_error; }' 1 2 3 4 5 6 7 8 10 11 13 15
