# aviso.h: wait for and post "data available" notifications with the aviso-workflows command.
#
# Variables the jobs need (set them on the suite): AVISO_BIN, the folder holding the aviso-workflows
# command; AVISO_WORKFLOWS_ENDPOINTS, the etcd URL(s), comma-separated (unset: the command's config file).
#
# ecFlow copies variable values into the job as text. Read each one through a quoted here-document
# (the shell never expands it), then check it with aviso_check_value before it goes into a request:
#
#   YMD=$(cat <<'AVISO_VALUE'
#   %YMD%
#   AVISO_VALUE
#   )
#   aviso_check_value YMD "$YMD"
#   aviso_wait "event=mars,class=od,expver=1,domain=g,date=$YMD,time=0,stream=oper,step=0/to/24" 3600
#   aviso_notify "event=mars,class=od,expver=1,domain=g,date=$YMD,time=0,stream=oper,step=$STEP"

AVISO_WORKFLOWS_ENDPOINTS=$(cat <<'AVISO_VALUE'
%AVISO_WORKFLOWS_ENDPOINTS:%
AVISO_VALUE
)
if [ -n "$AVISO_WORKFLOWS_ENDPOINTS" ]; then
  export AVISO_WORKFLOWS_ENDPOINTS
else
  unset AVISO_WORKFLOWS_ENDPOINTS
fi
if ! command -v aviso-workflows >/dev/null; then
  AVISO_ABORT_REASON="aviso-workflows not found: set AVISO_BIN to the folder that holds it"
  false
fi

# aviso_check_value NAME VALUE: stop the job if VALUE could change the request's meaning.
aviso_check_value() {
  case "$2" in
    ''|*[!A-Za-z0-9_.:+/-]*)
      AVISO_ABORT_REASON="bad value of ecFlow variable $1"
      echo "aviso-workflows: ecFlow variable $1='$2' may hold only letters, digits and _ . : + / -" >&2
      return 2 ;;
  esac
}

# aviso_wait REQUEST [TIMEOUT [METER [LABEL]]]: wait until every key exists. While waiting, METER
# (default steps) counts the keys found in request order with none missing before them (step 30 counts
# only once 24 is in) and LABEL (default latest) shows the last such step (a catch-up of many keys costs
# a few ecflow_client calls). After TIMEOUT seconds the task aborts with the reason.
# The wait runs in the background so that a kill is handled at once (see aviso_end_children).
aviso_wait() {
  local request=$1 timeout=${2:-} meter=${3:-steps} label=${4:-latest} status=0 started=$SECONDS
  aviso-workflows wait "$request" ${timeout:+--timeout "$timeout"} \
    --progress-command "ecflow_client --meter=$meter {ready}" \
    --progress-command "ecflow_client --label=$label \"{ready}/{total} latest step={step}\"" &
  aviso_wait_pid=$!
  wait "$aviso_wait_pid" || status=$?
  aviso_wait_pid=
  # Exit 1 is a timeout only once the timeout has passed (a command that cannot start exits 1 too).
  if [ "$status" -eq 1 ] && [ -n "$timeout" ] && [ $((SECONDS - started)) -ge "${timeout%%.*}" ]; then
    AVISO_ABORT_REASON="the deadline (${timeout} s) passed before the data was available"
    echo "aviso-workflows: the deadline (${timeout} s) passed before the data was available: $request" >&2
    ecflow_client --label="$label" "timed out" || true
  elif [ "$status" -ne 0 ]; then
    AVISO_ABORT_REASON="the wait failed (exit $status): bad request, store unusable or the command broken, see the job output"
  fi
  return "$status"
}

# aviso_end_children: end a running wait and wait for it (head.h calls it before aborting).
aviso_wait_pid=
aviso_end_children() {
  if [ -n "$aviso_wait_pid" ]; then
    kill -TERM "$aviso_wait_pid" 2>/dev/null && wait "$aviso_wait_pid" || true
  fi
}

# aviso_notify REQUEST [--location URL] [--ttl SECONDS]: post the request's keys.
aviso_notify() {
  local status=0
  aviso-workflows notify "$@" || status=$?
  if [ "$status" -ne 0 ]; then
    AVISO_ABORT_REASON="notify failed (exit $status): bad request or store unusable, see the job output"
  fi
  return "$status"
}
