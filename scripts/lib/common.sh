# shellcheck shell=bash
# common.sh — helpers shared by every operations script: logging, timing, building the release
# binaries, and HTTP/JSON access that needs neither jq nor (for GETs) curl, so that scripts/demo runs
# on a machine with only Rust and a shell.
#
# Sourced, never executed. Callers set SCRIPT_NAME before sourcing and use `set -euo pipefail`.

SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO_ROOT="$(cd "$SCRIPTS_DIR/.." && pwd)"
SCRIPT_NAME="${SCRIPT_NAME:-$(basename "$0")}"

# Binaries live where cargo puts them: CARGO_TARGET_DIR (relative to the repo root, where
# build_release runs cargo), else target/; cargo itself is asked when present, so a target-dir set in
# a .cargo/config.toml is honoured too.
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$REPO_ROOT/$TARGET_DIR" ;; esac
if command -v cargo >/dev/null 2>&1; then
	_meta_dir="$(cd "$REPO_ROOT" && cargo metadata --format-version 1 --no-deps --offline 2>/dev/null |
		grep -o '"target_directory":"[^"]*"' | head -n1 | cut -d'"' -f4)" || true
	[[ -n "${_meta_dir:-}" ]] && TARGET_DIR="$_meta_dir"
	unset _meta_dir
fi
BIN_DIR="$TARGET_DIR/release"
AGGREGATOR="$BIN_DIR/aggregator"
PUBLISHER="$BIN_DIR/publisher"

# Optional bearer token (the cluster's --api-token), sent on every request when set.
API_TOKEN="${AGG_API_TOKEN:-}"
# Optional admin token (the cluster's --admin-token), for POST /cluster/snapshot and GET /backup.
ADMIN_TOKEN="${AGG_ADMIN_TOKEN:-}"
HTTP_TIMEOUT="${HTTP_TIMEOUT:-3}"

log() { printf '%s [%s] %s\n' "$(date +%H:%M:%S)" "$SCRIPT_NAME" "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 2
}
have() { command -v "$1" >/dev/null 2>&1; }
now_ms() { date +%s%3N; }
# Milliseconds between two now_ms readings, printed as seconds with 2 decimals.
ms_to_s() { awk -v ms="$1" 'BEGIN { printf "%.2f", ms / 1000 }'; }
banner() { printf '\n\033[1m== %s ==\033[0m\n' "$*" >&2; }

# Builds every release binary of the workspace (aggregator, publisher) and checks they exist.
# AGG_SKIP_BUILD=1 uses the binaries already in the target dir (CI, after its own build).
build_release() {
	if [[ "${AGG_SKIP_BUILD:-0}" == 1 ]]; then
		log "AGG_SKIP_BUILD=1: using the binaries in $BIN_DIR as they are"
		[[ -x "$AGGREGATOR" && -x "$PUBLISHER" ]] || die "AGG_SKIP_BUILD=1 but $BIN_DIR lacks aggregator or publisher"
		return 0
	fi
	have cargo || die "cargo not found: install Rust (https://rustup.rs) first"
	log "building release binaries (cargo build --release --bins; the first build compiles RocksDB, ~15 min)"
	(cd "$REPO_ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release --bins) ||
		die "cargo build failed"
	[[ -x "$AGGREGATOR" ]] || die "missing $AGGREGATOR after the build"
	[[ -x "$PUBLISHER" ]] || die "missing $PUBLISHER after the build"
}

# Common curl arguments: bounded time, the token when one is configured.
_curl_args() {
	printf '%s\n' -sS --max-time "$HTTP_TIMEOUT"
	if [[ -n "$API_TOKEN" ]]; then printf '%s\n' -H "Authorization: Bearer $API_TOKEN"; fi
}

# http_get URL: prints the body of a 2xx answer; non-zero on connection errors and other statuses.
# Falls back to bash's /dev/tcp (HTTP/1.0, so the server closes the connection) without curl.
http_get() {
	local url="$1"
	if have curl; then
		local -a args
		mapfile -t args < <(_curl_args)
		curl -f "${args[@]}" "$url" 2>/dev/null
		return
	fi
	local rest="${url#http://}"
	local hostport="${rest%%/*}" path="/"
	[[ "$rest" == */* ]] && path="/${rest#*/}"
	local host="${hostport%:*}" port="${hostport##*:}" auth=""
	[[ -n "$API_TOKEN" ]] && auth="Authorization: Bearer $API_TOKEN"$'\r\n'
	local raw
	# shellcheck disable=SC2016 # the inner script expands its own positional parameters
	raw="$(timeout "$HTTP_TIMEOUT" bash -c '
		exec 3<>"/dev/tcp/$0/$1" || exit 7
		printf "GET %s HTTP/1.0\r\nHost: %s\r\n%sConnection: close\r\n\r\n" "$2" "$0" "$3" >&3
		cat <&3' "$host" "$port" "$path" "$auth" 2>/dev/null)" || return 1
	[[ "$raw" =~ ^HTTP/1\.[01]\ 2[0-9][0-9] ]] || return 1
	printf '%s\n' "${raw#*$'\r\n\r\n'}"
}

# http_post_status URL JSON: prints the HTTP status code of a POST (000 when nothing answered).
# Needs curl (only the drill and chaos scripts post directly; the demo publishes with `publisher`).
http_post_status() {
	local -a args
	mapfile -t args < <(_curl_args)
	curl "${args[@]}" -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
		--data-binary "$2" "$1" 2>/dev/null || true
}

# json_field JSON KEY: the first value of "KEY" in a flat scan of the JSON text (strings unquoted).
# Good enough for the server's compact /stats, /digest and /ready answers; not a JSON parser.
json_field() {
	local match
	match="$(printf '%s' "$1" | grep -o "\"$2\"[[:space:]]*:[[:space:]]*\(\"[^\"]*\"\|[^,}]*\)" | head -n1)" || return 1
	[[ -n "$match" ]] || return 1
	match="${match#*:}"
	match="${match#"${match%%[![:space:]]*}"}"
	match="${match#\"}"
	match="${match%\"}"
	printf '%s\n' "$match"
}

# wait_until SECONDS DESCRIPTION CMD...: polls CMD every 200 ms until it succeeds or time runs out.
wait_until() {
	local secs="$1" what="$2"
	shift 2
	local deadline=$(($(date +%s) + secs))
	until "$@" >/dev/null 2>&1; do
		if (($(date +%s) >= deadline)); then
			log "timed out after ${secs}s waiting for: $what"
			return 1
		fi
		sleep 0.2
	done
}

# ---- cluster-agnostic helpers; the caller defines node_url I and NODES (list of node indexes) ----

# The node id whose /stats says it is the leader; fails unless exactly one live node says so.
find_leader() {
	local i body role leaders=()
	for i in "${NODES[@]}"; do
		body="$(http_get "$(node_url "$i")/stats?consistency=eventual")" || continue
		role="$(json_field "$body" role)" || continue
		[[ "$role" == leader ]] && leaders+=("$(json_field "$body" node_id)")
	done
	((${#leaders[@]} == 1)) || return 1
	printf '%s\n' "${leaders[0]}"
}

# The leader id, waiting (bounded) for exactly one leader.
wait_leader() {
	local secs="${1:-30}" deadline leader
	deadline=$(($(date +%s) + secs))
	while (($(date +%s) < deadline)); do
		if leader="$(find_leader)"; then
			printf '%s\n' "$leader"
			return 0
		fi
		sleep 0.1
	done
	return 1
}

node_ready() { http_get "$(node_url "$1")/ready" >/dev/null; }

all_ready() {
	local i
	for i in "${NODES[@]}"; do node_ready "$i" || return 1; done
}

# "applied_index digest" of a node, from GET /digest.
node_digest() {
	local body
	body="$(http_get "$(node_url "$1")/digest")" || return 1
	printf '%s %s\n' "$(json_field "$body" applied_index)" "$(json_field "$body" digest)"
}

# True when every node answers /digest with the same applied index and digest.
converged() {
	local i first="" d
	for i in "${NODES[@]}"; do
		d="$(node_digest "$i")" || return 1
		if [[ -z "$first" ]]; then first="$d"; elif [[ "$d" != "$first" ]]; then return 1; fi
	done
}

# Comma-separated base URLs of every node, for publisher --targets.
targets_csv() {
	local i out=()
	for i in "${NODES[@]}"; do out+=("$(node_url "$i")"); done
	(
		IFS=,
		printf '%s\n' "${out[*]}"
	)
}

# Publisher arguments for the token, when one is configured.
token_args() { if [[ -n "$API_TOKEN" ]]; then printf '%s\n' --token "$API_TOKEN"; fi; }
