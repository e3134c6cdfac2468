#!/usr/bin/env bash
# `make server`: a local Prefect server on 127.0.0.1 (SQLite), the process work pool, every
# deployment of deploy/prefect.yaml, and one worker. `make server-stop` stops them (worker first).
# State (pids, logs) lives in $PREFECT_HOME/uvit-server/.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFECT=${PREFECT:-.venv/bin/prefect}
HOST=${UVIT_SERVER_HOST:-127.0.0.1}
PORT=${UVIT_SERVER_PORT:-4200}
POOL=uvit-process
export PREFECT_HOME=${PREFECT_HOME:-$PWD/.prefect}
export PREFECT_API_URL="http://$HOST:$PORT/api"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export UVIT_PROJECT_DIR=${UVIT_PROJECT_DIR:-$PWD}
export UVIT_STORE=${UVIT_STORE:-$PWD/uvit-store}
RUN=$PREFECT_HOME/uvit-server
mkdir -p "$RUN"

stop() {
  for name in worker server; do
    if [ -f "$RUN/$name.pid" ]; then
      pid=$(cat "$RUN/$name.pid")
      if kill -0 "$pid" 2>/dev/null; then
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
      fi
      rm -f "$RUN/$name.pid"
    fi
  done
}

if [ "${1:-start}" = "stop" ]; then stop; echo "stopped"; exit 0; fi

if [ -f "$RUN/server.pid" ] && kill -0 "$(cat "$RUN/server.pid")" 2>/dev/null; then
  echo "server already running (pid $(cat "$RUN/server.pid")); make server-stop first"; exit 1
fi
echo "starting Prefect server on http://$HOST:$PORT (logs: $RUN/server.log)"
setsid "$PREFECT" server start --host "$HOST" --port "$PORT" > "$RUN/server.log" 2>&1 &
echo $! > "$RUN/server.pid"
for _ in $(seq 1 240); do
  curl -fsS "http://$HOST:$PORT/api/health" >/dev/null 2>&1 && break
  sleep 0.5
done
curl -fsS "http://$HOST:$PORT/api/health" >/dev/null || { echo "server did not start; see $RUN/server.log"; stop; exit 1; }
"$PREFECT" work-pool inspect "$POOL" >/dev/null 2>&1 || "$PREFECT" work-pool create "$POOL" --type process >/dev/null
"$PREFECT" deploy --all --no-prompt --prefect-file deploy/prefect.yaml > "$RUN/deploy.log" 2>&1 \
  || { cat "$RUN/deploy.log"; stop; exit 1; }
setsid "$PREFECT" worker start --pool "$POOL" > "$RUN/worker.log" 2>&1 &
echo $! > "$RUN/worker.pid"
echo "deployments: $("$PREFECT" deployment ls 2>/dev/null | grep -c 'uvit/' || true) (see $RUN/deploy.log)"
echo "worker started (logs: $RUN/worker.log)"
echo "Run:  PREFECT_API_URL=$PREFECT_API_URL .venv/bin/prefect deployment run uvit/tiny --watch"
echo "UI:   http://$HOST:$PORT"
