#!/usr/bin/env bash
# Runs the three effects services from bin/ against a local PostgreSQL and
# the pinned nats-server (bin/tools/nats-server, go.mod's version, which
# `make run` builds): starts that server with JetStream on 127.0.0.1:4223
# unless NATS_URL names another server, runs `completer migrate` (the table
# and the streams' configuration), then ingest, dispatcher and completer in
# the background, each logging to $LOG_DIR/<service>.log. Ctrl-C (or
# SIGTERM) stops them in pipeline order: ingest, dispatcher, completer, then
# the nats-server. If one of them exits on its own, the others are stopped
# too.
#
# Port 4223, not 4222: a system NATS on 4222 (Debian's 2.9 is too old for the
# services) is left alone.
#
# Called by `make run`, which builds bin/ first. Every setting below may be
# overridden from the environment.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN=${BIN:-bin}
LOG_DIR=${LOG_DIR:-$BIN/run}
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}
NATS_SERVER=${NATS_SERVER:-$BIN/tools/nats-server}
NATS_PORT=${NATS_PORT:-4223}
own_nats= # set when this script starts the nats-server
if [[ -z ${NATS_URL:-} ]]; then
	own_nats=1
	export NATS_URL=nats://127.0.0.1:$NATS_PORT
fi
# A fixed development secret, so the local ingest checks X-Effects-Secret the
# way a deployed one does. Never use it anywhere else.
export EFFECTS_WEBHOOK_SECRET=${EFFECTS_WEBHOOK_SECRET:-dev-secret}
export EFFECTS_HTTP_ADDR=${EFFECTS_HTTP_ADDR:-:8080}
export EFFECTS_LOG_LEVEL=${EFFECTS_LOG_LEVEL:-info}
# How long each service gets to stop after SIGTERM before it is killed.
STOP_TIMEOUT=${STOP_TIMEOUT:-30}

services=(ingest dispatcher completer)
admin_addrs=(:9090 :9091 :9092) # each service's EFFECTS_ADMIN_ADDR, as in services
pids=()                         # each service's pid, as in services; empty once stopped

log() { echo "run-local: $*" >&2; }

for s in "${services[@]}"; do
	if [[ ! -x "$BIN/$s" ]]; then
		log "$BIN/$s not found; run 'make build' (or 'make run') first"
		exit 1
	fi
done
mkdir -p "$LOG_DIR"

nats_pid=
stop_nats() {
	[[ -n $nats_pid ]] || return 0
	log "stopping nats-server (pid $nats_pid)"
	kill -TERM "$nats_pid" 2>/dev/null || true
	wait "$nats_pid" 2>/dev/null || true
	nats_pid=
}
nats_answers() { (exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT") 2>/dev/null; }
if [[ -n $own_nats ]]; then
	if nats_answers; then
		log "something already listens on 127.0.0.1:$NATS_PORT; using it as NATS (the services refuse a server older than 2.10)"
	else
		if [[ ! -x $NATS_SERVER ]]; then
			log "$NATS_SERVER not found; run 'make nats-server' (or 'make run') first"
			exit 1
		fi
		mkdir -p "$LOG_DIR/nats"
		"$NATS_SERVER" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$LOG_DIR/nats" >>"$LOG_DIR/nats-server.log" 2>&1 </dev/null &
		nats_pid=$!
		trap 'stop_nats' EXIT
		for _ in $(seq 1 50); do
			nats_answers && break
			kill -0 "$nats_pid" 2>/dev/null || break
			sleep 0.2
		done
		if ! nats_answers; then
			log "nats-server did not come up on 127.0.0.1:$NATS_PORT; last lines of $LOG_DIR/nats-server.log:"
			tail -n 20 "$LOG_DIR/nats-server.log" >&2 || true
			exit 1
		fi
		log "started $("$NATS_SERVER" --version) (pid $nats_pid) on $NATS_URL, store $LOG_DIR/nats, log $LOG_DIR/nats-server.log"
	fi
fi

log "migrating the schema and applying the streams' configuration (DATABASE_URL is set; never printed)"
"$BIN/completer" migrate

# stop_one sends service $1 (an index into services) one SIGTERM and waits up
# to STOP_TIMEOUT seconds before killing it.
stop_one() {
	local i=$1 name=${services[$1]} pid=${pids[$1]:-}
	[[ -n "$pid" ]] || return 0
	pids[i]=
	if kill -0 "$pid" 2>/dev/null; then
		log "stopping $name (pid $pid)"
		kill -TERM "$pid" 2>/dev/null || true
		local ticks=0
		while kill -0 "$pid" 2>/dev/null; do
			if ((ticks >= STOP_TIMEOUT * 10)); then
				log "$name did not stop within ${STOP_TIMEOUT}s; killing it"
				kill -KILL "$pid" 2>/dev/null || true
				break
			fi
			sleep 0.1
			ticks=$((ticks + 1))
		done
	fi
	local rc=0
	wait "$pid" 2>/dev/null || rc=$?
	log "$name exited with status $rc"
}

stop_all() {
	trap - INT TERM EXIT
	local i
	for i in "${!services[@]}"; do
		stop_one "$i"
	done
	stop_nats
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap 'stop_all' EXIT

# Each service runs outside the terminal's foreground process group, so
# Ctrl-C reaches only this script, which then sends each service a single
# SIGTERM: a second signal would make a service exit without its graceful
# stop. setsid where there is one (Linux), job control otherwise (macOS).
detach=()
if command -v setsid >/dev/null 2>&1; then
	detach=(setsid)
else
	set -m
fi
for i in "${!services[@]}"; do
	s=${services[$i]}
	EFFECTS_ADMIN_ADDR=${admin_addrs[$i]} \
		${detach[@]+"${detach[@]}"} "$BIN/$s" >>"$LOG_DIR/$s.log" 2>&1 </dev/null &
	pids[i]=$!
	log "started $s (pid $!), admin ${admin_addrs[$i]}, log $LOG_DIR/$s.log"
done

cat <<EOF

Running. Webhook for Hasura (or curl): POST http://127.0.0.1:${EFFECTS_HTTP_ADDR##*:}/hasura/events
  with header X-Effects-Secret: ${EFFECTS_WEBHOOK_SECRET}
NATS: ${NATS_URL}
/metrics, /healthz, /readyz: http://127.0.0.1:9090 (ingest), :9091 (dispatcher), :9092 (completer)
Logs: tail -f $LOG_DIR/*.log    Stop: Ctrl-C

EOF

# Poll rather than `wait -n` (bash 4.3+) so the script runs on macOS's bash 3.2.
while :; do
	for i in "${!services[@]}"; do
		pid=${pids[$i]}
		if ! kill -0 "$pid" 2>/dev/null; then
			rc=0
			wait "$pid" 2>/dev/null || rc=$?
			pids[i]=
			log "${services[$i]} exited on its own with status $rc; last lines of $LOG_DIR/${services[$i]}.log:"
			tail -n 20 "$LOG_DIR/${services[$i]}.log" >&2 || true
			stop_all
			exit 1
		fi
	done
	sleep 1
done
