#!/usr/bin/env bash
# `make server`: a local Prefect server on 127.0.0.1 (SQLite), the process work pool, every
# deployment of deploy/prefect.yaml, and one worker. `make server-stop` stops them (worker first).
#
#   deploy/server.sh start|stop|status
#
# Environment: UVIT_SERVER_PORT (default 4200), UVIT_SERVER_HOST (default 127.0.0.1),
# UVIT_SERVER_START_TIMEOUT (seconds, default 240: a fresh PREFECT_HOME migrates its database first),
# PREFECT (the prefect CLI, default .venv/bin/prefect), PREFECT_HOME (default ./.prefect),
# UVIT_PROJECT_DIR (where runs execute, default this checkout), UVIT_STORE (default ./uvit-store),
# UVIT_IMAGENET_SOURCE, UVIT_COCO_SOURCE, UVIT_CIFAR10_SOURCE, UVIT_CELEBA_SOURCE (deploy time).
# State (pids, logs) lives in $PREFECT_HOME/uvit-server/.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFECT=${PREFECT:-.venv/bin/prefect}
HOST=${UVIT_SERVER_HOST:-127.0.0.1}
PORT=${UVIT_SERVER_PORT:-4200}
START_TIMEOUT=${UVIT_SERVER_START_TIMEOUT:-240}
POOL=uvit-process
export PREFECT_HOME=${PREFECT_HOME:-$PWD/.prefect}
export PREFECT_API_URL="http://$HOST:$PORT/api"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-180}
export UVIT_PROJECT_DIR=${UVIT_PROJECT_DIR:-$PWD}
export UVIT_STORE=${UVIT_STORE:-$PWD/uvit-store}
RUN=$PREFECT_HOME/uvit-server
mkdir -p "$RUN"

# The Python next to the prefect CLI: it starts the long-running processes with SIGINT restored.
PY=$(dirname "$(command -v "$PREFECT")")/python
[ -x "$PY" ] || PY=$(command -v python3)

# Start "$@" detached in its own session (pid = process group id), stdout/stderr to $1's log.
# Bash starts background jobs with SIGINT ignored, and the worker turns SIGTERM into a SIGINT to
# itself: without SIG_DFL restored it would never stop on SIGTERM.
launch() {
  local name=$1; shift
  setsid "$PY" -c 'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])' \
    "$@" > "$RUN/$name.log" 2>&1 < /dev/null &
  echo $! > "$RUN/$name.pid"
}

alive() { [ -f "$RUN/$1.pid" ] && kill -0 -- "-$(cat "$RUN/$1.pid")" 2>/dev/null; }

# Stop a process group: SIGTERM, then (the worker forwards its first SIGTERM as SIGINT and kills
# itself on the second) a second SIGTERM, then SIGKILL for anything left in the group.
stop_group() {
  local pgid=$1 sig
  for sig in TERM TERM KILL; do
    kill -0 -- "-$pgid" 2>/dev/null || return 0
    kill "-$sig" -- "-$pgid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 -- "-$pgid" 2>/dev/null || return 0; sleep 0.25; done
  done
}

# Stop one of our processes and its children. The worker starts each flow run in a session of its
# own and ends them when it stops gracefully; any it left behind are stopped here, by pid.
stop_one() {
  local name=$1 pid kids kid
  [ -f "$RUN/$name.pid" ] || return 0
  pid=$(cat "$RUN/$name.pid")
  kids=$(ps -o pid= --ppid "$pid" 2>/dev/null || true)
  stop_group "$pid"
  for kid in $kids; do
    if kill -0 -- "-$kid" 2>/dev/null; then stop_group "$kid"; else kill -KILL "$kid" 2>/dev/null || true; fi
  done
  rm -f "$RUN/$name.pid"
}

# The worker (and the flow runs it started, same process group) before the server: a worker whose
# server is gone retries its API calls instead of exiting.
stop() { stop_one worker; stop_one server; }

health() { curl -fsS --max-time 5 "http://$HOST:$PORT/api/health" >/dev/null 2>&1; }

case "${1:-start}" in
  stop) stop; echo "stopped"; exit 0 ;;
  status)
    for name in server worker; do
      if alive "$name"; then echo "$name: running (pid $(cat "$RUN/$name.pid"))"; else echo "$name: stopped"; fi
    done
    exit 0 ;;
  start) ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac

if alive server; then
  echo "server already running (pid $(cat "$RUN/server.pid")); make server-stop first"; exit 1
fi
if health; then echo "port $PORT on $HOST is already serving a Prefect API; set UVIT_SERVER_PORT"; exit 1; fi

echo "starting Prefect server on http://$HOST:$PORT (logs: $RUN/server.log)"
launch server "$PREFECT" server start --host "$HOST" --port "$PORT"
deadline=$(( $(date +%s) + START_TIMEOUT ))
until health; do
  if ! alive server || [ "$(date +%s)" -ge "$deadline" ]; then
    echo "server did not start within ${START_TIMEOUT}s; last lines of $RUN/server.log:"
    tail -n 20 "$RUN/server.log"; stop; exit 1
  fi
  sleep 0.5
done

if ! "$PREFECT" work-pool inspect "$POOL" >/dev/null 2>&1; then
  "$PREFECT" work-pool create "$POOL" --type process > "$RUN/pool.log" 2>&1 || { cat "$RUN/pool.log"; stop; exit 1; }
fi
for var in UVIT_IMAGENET_SOURCE UVIT_COCO_SOURCE UVIT_CIFAR10_SOURCE UVIT_CELEBA_SOURCE; do
  [ -n "${!var:-}" ] || echo "note: $var is not set; runs of its deployments need -p source=URL"
done
"$PREFECT" deploy --all --no-prompt --prefect-file deploy/prefect.yaml > "$RUN/deploy.log" 2>&1 \
  || { tail -n 40 "$RUN/deploy.log"; stop; exit 1; }

launch worker "$PREFECT" worker start --pool "$POOL"
deadline=$(( $(date +%s) + 120 ))
until grep -q "started!" "$RUN/worker.log" 2>/dev/null; do
  if ! alive worker || [ "$(date +%s)" -ge "$deadline" ]; then
    echo "worker did not start; last lines of $RUN/worker.log:"; tail -n 20 "$RUN/worker.log"; stop; exit 1
  fi
  sleep 0.5
done

count=$(curl -fsS -X POST -H 'Content-Type: application/json' -d '{}' "$PREFECT_API_URL/deployments/count")
echo "deployments: $count (see $RUN/deploy.log); worker on pool $POOL (logs: $RUN/worker.log)"
echo "Run:  PREFECT_API_URL=$PREFECT_API_URL $PREFECT deployment run uvit/tiny --watch"
echo "UI:   http://$HOST:$PORT/runs"
