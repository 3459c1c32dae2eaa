# aviso.h: wait for and post "data available" notifications with the aviso-workflows command.
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

if [ -n '%AVISO_WORKFLOWS_ENDPOINTS:%' ]; then
  export AVISO_WORKFLOWS_ENDPOINTS='%AVISO_WORKFLOWS_ENDPOINTS:%'
fi

# aviso_check_value NAME VALUE: stop the job if VALUE could change the request's meaning.
aviso_check_value() {
  case "$2" in
    ''|*[!A-Za-z0-9_.:+/-]*)
      AVISO_ABORT_REASON="bad value of $1"
      echo "aviso-workflows: ecFlow variable $1='$2' may hold only letters, digits and _ . : + / -" >&2
      return 2 ;;
  esac
}

# aviso_wait REQUEST [TIMEOUT [METER [LABEL]]]: wait until every key exists. While waiting, METER
# (default steps) counts the keys found and LABEL (default latest) shows the newest step. After
# TIMEOUT seconds the task aborts with the reason in the job output.
aviso_wait() {
  local request=$1 timeout=${2:-} meter=${3:-steps} label=${4:-latest} status=0
  aviso-workflows wait "$request" ${timeout:+--timeout "$timeout"} \
    --progress-command "ecflow_client --meter=$meter {found}" \
    --progress-command "ecflow_client --label=$label \"{found}/{total} latest step={step}\"" || status=$?
  if [ "$status" -eq 1 ]; then
    AVISO_ABORT_REASON="deadline passed"
    echo "aviso-workflows: the deadline (${timeout} s) passed before the data was available: $request" >&2
    ecflow_client --label="$label" "timed out" || true
  fi
  return "$status"
}

# aviso_notify REQUEST [--location URL] [--ttl SECONDS]: post the request's keys.
aviso_notify() {
  aviso-workflows notify "$@"
}
