# shellcheck shell=bash
# compose.sh — the Docker Compose cluster of cluster-compose.yml as seen by the scripts: which compose
# command works here, the containers behind node1..node3, their client URLs on 127.0.0.1:8081-8083,
# and the faults the drills inject (kill, pause, network disconnect) and their repair.
#
# Sourced after common.sh.

COMPOSE_FILE="$REPO_ROOT/cluster-compose.yml"
COMPOSE_PROJECT="${COMPOSE_PROJECT_NAME:-logagg}"
AGG_IMAGE="${AGG_IMAGE:-log-aggregator:local}"
export AGG_IMAGE
# Host ports published for node1..node3 (127.0.0.1 only); compose reads the same variables.
export AGG_NODE1_PORT="${AGG_NODE1_PORT:-8081}" AGG_NODE2_PORT="${AGG_NODE2_PORT:-8082}" \
	AGG_NODE3_PORT="${AGG_NODE3_PORT:-8083}"
declare -a NODES=(1 2 3)
declare -a COMPOSE_CMD=()

# The cluster secret of this compose project: generated once, kept outside the repository
# (under $XDG_STATE_HOME or ~/.local/state), handed to the containers as the Docker secret
# `cluster_secret` (cluster-compose.yml) that AGG_CLUSTER_SECRET_FILE names. The directory is
# 0700 and the file 0600, owned by the image's user (10001) when we may chown, since a compose
# (non-swarm) secret is a bind mount that keeps the host file's owner and mode.
AGG_STATE_DIR="${AGG_STATE_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/log-aggregator/$COMPOSE_PROJECT}"
export AGG_CLUSTER_SECRET_HOST_FILE="${AGG_CLUSTER_SECRET_HOST_FILE:-$AGG_STATE_DIR/cluster-secret}"

ensure_cluster_secret() {
	local f="$AGG_CLUSTER_SECRET_HOST_FILE"
	[[ -s "$f" ]] && return 0
	mkdir -p "$(dirname "$f")"
	chmod 700 "$(dirname "$f")"
	(
		umask 077
		od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$f"
	)
	if [[ "$(id -u)" == 0 ]]; then
		chown 10001:10001 "$f"
	else
		# Not root: the container's user can only read it if others may; the 0700 directory
		# still keeps other users of this host out.
		chmod 644 "$f"
	fi
	log "generated the cluster secret of '$COMPOSE_PROJECT' in $f"
}

# Finds a working compose: the `docker compose` plugin, else the standalone docker-compose.
compose_detect() {
	((${#COMPOSE_CMD[@]})) && return 0
	have docker || die "docker not found"
	if docker compose version >/dev/null 2>&1; then
		COMPOSE_CMD=(docker compose)
	elif have docker-compose && docker-compose version >/dev/null 2>&1; then
		COMPOSE_CMD=(docker-compose)
	else
		die "neither 'docker compose' nor 'docker-compose' works here"
	fi
}

compose() {
	compose_detect
	ensure_cluster_secret
	"${COMPOSE_CMD[@]}" -p "$COMPOSE_PROJECT" -f "$COMPOSE_FILE" "$@"
}

docker_engine_answers() { have docker && timeout 10 docker info >/dev/null 2>&1; }

node_port() {
	local var="AGG_NODE$1_PORT"
	printf '%s\n' "${!var}"
}
node_url() { printf 'http://127.0.0.1:%s\n' "$(node_port "$1")"; }

declare -A NODE_CID=()
# Container id of service nodeI (also when stopped); empty when it does not exist. Cached by
# cache_containers: asking compose costs about a second, too slow inside a fault schedule.
node_container() {
	if [[ -n "${NODE_CID[$1]:-}" ]]; then
		printf '%s\n' "${NODE_CID[$1]}"
	else
		compose ps -q "node$1" 2>/dev/null | head -n1
	fi
}
# Remembers the containers' ids (call in the main shell, after the cluster is up).
cache_containers() {
	local i
	NODE_CID=()
	for i in "${NODES[@]}"; do NODE_CID[$i]="$(node_container "$i")"; done
}

# The private network the compose project created (compose prefixes it with the project name).
cluster_network() { printf '%s_aggnet\n' "$COMPOSE_PROJECT"; }

image_exists() { docker image inspect "$AGG_IMAGE" >/dev/null 2>&1; }

# Starts (or keeps) the cluster and waits until every node is ready and one leader is known.
cluster_up() {
	image_exists || die "image $AGG_IMAGE not found: run scripts/cluster build first"
	NODE_CID=()
	compose up -d --no-build node1 node2 node3 >&2
	cache_containers
	wait_until "${1:-90}" "all three nodes ready" all_ready || {
		compose ps >&2
		compose logs --tail 20 node1 node2 node3 >&2 || true
		return 1
	}
}

# Tears the cluster down; with "volumes" its data goes too, and so does its cluster secret.
cluster_down() {
	NODE_CID=()
	if [[ "${1:-}" == volumes ]]; then
		compose down -v --remove-orphans >&2
		rm -f "$AGG_CLUSTER_SECRET_HOST_FILE"
	else
		compose down --remove-orphans >&2
	fi
}

node_kill() { docker kill -s KILL "$(node_container "$1")" >/dev/null; }
node_start() { docker start "$(node_container "$1")" >/dev/null; }
node_pause() { docker pause "$(node_container "$1")" >/dev/null; }
node_unpause() { docker unpause "$(node_container "$1")" >/dev/null; }
node_state() { docker inspect -f '{{.State.Status}}' "$(node_container "$1")" 2>/dev/null; }

# Cuts a node off the cluster network (peers and clients alike): a partitioned node.
node_disconnect() { docker network disconnect -f "$(cluster_network)" "$(node_container "$1")" >/dev/null; }
# Reconnects it under its service name, which is the address its peers use.
node_connect() {
	docker network connect --alias "node$1" "$(cluster_network)" "$(node_container "$1")" >/dev/null
}
node_connected() {
	docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}' \
		"$(node_container "$1")" 2>/dev/null | grep -qw "$(cluster_network)"
}

# Undoes every fault on every node: unpause, reconnect, start. Safe to call at any time.
heal_all() {
	local i state
	for i in "${NODES[@]}"; do
		[[ -n "$(node_container "$i")" ]] || continue
		state="$(node_state "$i" || true)"
		[[ "$state" == paused ]] && node_unpause "$i"
		node_connected "$i" || node_connect "$i" || log "could not reconnect node$i"
		state="$(node_state "$i" || true)"
		[[ "$state" == running ]] || node_start "$i" || log "could not start node$i"
	done
}
