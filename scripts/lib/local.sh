# shellcheck shell=bash
# local.sh — a three-node cluster of `aggregator` processes on loopback, for scripts/demo and
# scripts/bench: start, kill -9, restart and stop nodes, each with its own data dir and log file.
#
# Sourced after common.sh. The caller calls local_init, then local_start_all, and must call
# local_cleanup from its EXIT trap (it kills every process started here, and only those).

LOCAL_DIR=""
LOCAL_HOST="127.0.0.1"
LOCAL_PORT_BASE=7000
LOCAL_KEEP=0
declare -a NODES=(1 2 3)
declare -A LOCAL_PID=()
# Extra flags for every node (a caller sets them before starting nodes).
declare -a LOCAL_NODE_ARGS=()

# local_init DIR PORT_BASE: node i listens on 127.0.0.1:(PORT_BASE+i), data in DIR/nI. Raft
# RPCs between the nodes are authenticated with a random secret of this cluster, kept in
# DIR/cluster-secret (mode 0600; reused when DIR already has one, so a restart keeps it).
local_init() {
	LOCAL_DIR="$1"
	LOCAL_PORT_BASE="$2"
	mkdir -p "$LOCAL_DIR"
	if [[ ! -s "$LOCAL_DIR/cluster-secret" ]]; then
		(
			umask 077
			od -An -tx1 -N16 /dev/urandom | tr -d ' \n' >"$LOCAL_DIR/cluster-secret"
		)
	fi
}

local_addr() { printf '%s:%s\n' "$LOCAL_HOST" "$((LOCAL_PORT_BASE + $1))"; }
node_url() { printf 'http://%s\n' "$(local_addr "$1")"; }

local_peers() {
	local i out=()
	for i in "${NODES[@]}"; do out+=("$i=$(local_addr "$i")"); done
	(
		IFS=,
		printf '%s\n' "${out[*]}"
	)
}

# Refuses to start over something that already listens on a node's port.
local_check_ports_free() {
	local i
	for i in "${NODES[@]}"; do
		if http_get "$(node_url "$i")/health" >/dev/null ||
			(exec 3<>"/dev/tcp/$LOCAL_HOST/$((LOCAL_PORT_BASE + i))") 2>/dev/null; then
			die "port $(local_addr "$i") is already in use (a cluster from an earlier --keep run?). Stop it first."
		fi
	done
}

# Starts node I in the background (same data dir on a restart), appending to its log file.
local_start_node() {
	local i="$1"
	mkdir -p "$LOCAL_DIR/n$i"
	# Three nodes share this machine's cores: one runtime thread each (see `--worker-threads`).
	"$AGGREGATOR" --id "$i" --listen "$(local_addr "$i")" --peers "$(local_peers)" \
		--data-dir "$LOCAL_DIR/n$i" --cluster-secret-file "$LOCAL_DIR/cluster-secret" \
		--worker-threads 1 "${LOCAL_NODE_ARGS[@]}" >>"$LOCAL_DIR/n$i.log" 2>&1 &
	LOCAL_PID[$i]=$!
	log "node $i started (pid ${LOCAL_PID[$i]}, $(node_url "$i"), log $LOCAL_DIR/n$i.log)"
}

local_start_all() {
	local i
	for i in "${NODES[@]}"; do local_start_node "$i"; done
}

local_alive() { [[ -n "${LOCAL_PID[$1]:-}" ]] && kill -0 "${LOCAL_PID[$1]}" 2>/dev/null; }

# kill -9: the node gets no chance to flush or say goodbye.
local_kill_node() {
	local i="$1"
	local_alive "$i" || return 0
	kill -KILL "${LOCAL_PID[$i]}" 2>/dev/null || true
	wait "${LOCAL_PID[$i]}" 2>/dev/null || true
	log "node $i killed (SIGKILL, pid ${LOCAL_PID[$i]})"
	unset 'LOCAL_PID[$i]'
}

# SIGTERM and a bounded wait for the graceful exit, then SIGKILL.
local_stop_node() {
	local i="$1" pid n
	local_alive "$i" || return 0
	pid="${LOCAL_PID[$i]}"
	kill -TERM "$pid" 2>/dev/null || true
	for ((n = 0; n < 100; n++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		log "node $i did not exit within 10 s of SIGTERM; killing it"
		kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || true
	unset 'LOCAL_PID[$i]'
}

local_stop_all() {
	local i
	for i in "${NODES[@]}"; do local_stop_node "$i"; done
}

# The last lines of every node's log, for a failure report.
local_log_tails() {
	local i
	for i in "${NODES[@]}"; do
		[[ -f "$LOCAL_DIR/n$i.log" ]] || continue
		printf '\n--- last lines of node %s log (%s) ---\n' "$i" "$LOCAL_DIR/n$i.log" >&2
		tail -n 15 "$LOCAL_DIR/n$i.log" >&2
	done
}

# For the EXIT trap: stops every node this script started unless LOCAL_KEEP=1.
local_cleanup() {
	((LOCAL_KEEP)) && return 0
	local i
	for i in "${!LOCAL_PID[@]}"; do kill -KILL "${LOCAL_PID[$i]}" 2>/dev/null || true; done
	for i in "${!LOCAL_PID[@]}"; do wait "${LOCAL_PID[$i]}" 2>/dev/null || true; done
}
