# shellcheck shell=bash
# drill.sh — what the failure drills share: bringing the compose cluster up, a background publisher
# with --history, single-event probe publishes, the final checks (publisher verify + audit.py) and the
# verdict. Sourced after common.sh and compose.sh; the caller sets WORK (a temp dir).

AUDIT="$SCRIPTS_DIR/lib/audit.py"
PUB_PID=""
PROBE_SEQ=0
declare -a VIOLATIONS=()
declare -a FIGURES=()

violation() {
	VIOLATIONS+=("$*")
	log "VIOLATION: $*"
}
figure() { FIGURES+=("$1|$2"); }

# Engine, tools, image, and a running ready cluster (destroyed first with FRESH=1).
drill_prepare() {
	docker_engine_answers || die "no Docker engine answers (docker info failed)"
	have curl || die "curl is needed by the drills"
	have python3 || die "python3 is needed by the drills (scripts/lib/audit.py)"
	[[ -x "$PUBLISHER" ]] || die "missing $PUBLISHER: run scripts/cluster build first"
	image_exists || die "image $AGG_IMAGE not found: run scripts/cluster build first"
	if ((${FRESH:-0})); then
		log "fresh cluster: removing the compose cluster and its volumes"
		cluster_down volumes
	fi
	cluster_up 120 || die "the cluster did not become ready"
	TARGETS="$(targets_csv)"
	wait_leader 30 >/dev/null || die "no single leader within 30 s"
}

# load_start EVENTS RATE SEED SOURCE: the publisher in the background, retrying through faults.
load_start() {
	local events="$1" rate="$2" seed="$3" source="$4"
	local -a token
	mapfile -t token < <(token_args)
	"$PUBLISHER" send --targets "$TARGETS" --events "$events" --rate "$rate" --duplicates 0.3 \
		--topics 5 --batch 20 --concurrency 8 --seed "$seed" --source "$source" \
		--max-attempts 1000 --request-deadline 90s --attempt-timeout 3s --progress lines \
		--history "$WORK/history.jsonl" --report-json "$WORK/report.json" "${token[@]}" \
		>"$WORK/publisher.log" 2>&1 </dev/null &
	PUB_PID=$!
	log "publisher started (pid $PUB_PID): $events events at $rate ev/s, log $WORK/publisher.log"
}

# load_wait SECONDS: waits for the publisher to end by itself; kills it when it overruns. Returns
# the publisher's status: 1 means some request was never acknowledged (within its 90 s deadline),
# which is not a safety violation by itself; 2 is an error of the run.
load_wait() {
	local secs="$1" n rc=0
	[[ -n "$PUB_PID" ]] || return 0
	for ((n = 0; n < secs * 5; n++)); do
		kill -0 "$PUB_PID" 2>/dev/null || break
		sleep 0.2
	done
	if kill -0 "$PUB_PID" 2>/dev/null; then
		violation "the publisher did not finish within ${secs}s after the faults ended"
		kill -TERM "$PUB_PID" 2>/dev/null || true
		sleep 2
		kill -KILL "$PUB_PID" 2>/dev/null || true
	fi
	wait "$PUB_PID" || rc=$?
	PUB_PID=""
	log "publisher exited with status $rc; its last lines:"
	tail -n 25 "$WORK/publisher.log" >&2
	return "$rc"
}

# load_finish SECONDS: load_wait, and the publisher's status judged: an error of the run (2, or killed)
# is a violation; unacknowledged requests (1) are reported by the figures, not judged here.
load_finish() {
	local rc=0
	load_wait "$1" || rc=$?
	if [[ -s "$WORK/report.json" ]]; then
		local r
		r="$(cat "$WORK/report.json")"
		figure "publisher retries" "$(json_field "$r" retries)"
		figure "publisher ack latency p50 / p99 / max" "$(awk -v a="$(json_field "$r" p50_ms)" \
			-v b="$(json_field "$r" p99_ms)" -v c="$(json_field "$r" max_ms)" \
			'BEGIN { printf "%.1f / %.1f / %.1f ms", a, b, c }')"
	fi
	case "$rc" in
	0) figure "publisher" "every request acknowledged" ;;
	1) figure "publisher" "exit 1: some requests not acknowledged within their deadline" ;;
	*) violation "the publisher run failed (exit $rc)" ;;
	esac
}

load_stop() {
	[[ -n "$PUB_PID" ]] || return 0
	kill -TERM "$PUB_PID" 2>/dev/null || true
	wait "$PUB_PID" 2>/dev/null || true
	PUB_PID=""
}

# probe NODE: publishes one new event to NODE; prints the HTTP status. Acked keys go to probes.tsv
# so that the audit checks them too.
probe() {
	local node="$1" id code
	PROBE_SEQ=$((PROBE_SEQ + 1))
	id="probe-$$-$PROBE_SEQ-$(date +%s%N)"
	code="$(HTTP_TIMEOUT="${PROBE_TIMEOUT:-2}" http_post_status "$(node_url "$node")/publish" \
		"{\"topic\":\"drill.probe\",\"event_id\":\"$id\",\"timestamp\":\"$(date -u +%Y-%m-%dT%H:%M:%SZ)\",\"source\":\"drill-probe\",\"payload\":{\"probe\":$PROBE_SEQ}}")"
	[[ "$code" == 200 ]] && printf 'drill.probe\t%s\n' "$id" >>"$WORK/probes.tsv"
	printf '%s\n' "$code"
}

# first_write_ms NODES...: polls probes round-robin over NODES until one answers 200; prints the
# epoch ms of that answer. Fails after 30 s.
first_write_ms() {
	local deadline=$(($(date +%s) + 30)) i
	while (($(date +%s) < deadline)); do
		for i in "$@"; do
			if [[ "$(probe "$i")" == 200 ]]; then
				now_ms
				return 0
			fi
		done
		sleep 0.05
	done
	return 1
}

# converge_ms SECS: prints the ms until every node reports the same applied index and digest.
# Returns 1 after SECS, or 2 early when the nodes sit at one applied index with different digests
# for 5 s: they applied the same log and hold different data (diverged), waiting cannot help.
converge_ms() {
	local secs="$1" t0 now diverged_since=0 i d all_up
	t0="$(now_ms)"
	while now="$(now_ms)" && ((now < t0 + secs * 1000)); do
		local -A indexes=() digests=()
		all_up=1
		for i in "${NODES[@]}"; do
			d="$(node_digest "$i")" || {
				all_up=0
				break
			}
			indexes[${d%% *}]=1
			digests[${d#* }]=1
		done
		if ((all_up)) && ((${#indexes[@]} == 1)); then
			if ((${#digests[@]} == 1)); then
				printf '%s\n' "$((now - t0))"
				return 0
			fi
			((diverged_since)) || diverged_since="$now"
			((now - diverged_since < 5000)) || return 2
		else
			diverged_since=0
		fi
		sleep 0.2
	done
	return 1
}

# One line per node: its /digest answer, for a failure report.
print_digests() {
	local i
	for i in "${NODES[@]}"; do
		printf '  node%s: applied index, digest = %s\n' "$i" "$(node_digest "$i" || echo 'no answer')" >&2
	done
}

# The final checks: convergence, publisher verify --history, and the audit of every acked key.
final_checks() {
	local ms crc=0
	ms="$(converge_ms 90)" || crc=$?
	case "$crc" in
	0)
		local since=""
		[[ -n "${HEAL_MS:-}" ]] && since=", $(ms_to_s $(($(now_ms) - HEAL_MS))) s after the final heal"
		figure "converged" "$(ms_to_s "$ms") s after the load ended$since"
		;;
	2) violation "the nodes DIVERGED: same applied index, different digests" ;;
	*) violation "the nodes did not converge within 90 s" ;;
	esac
	((crc == 0)) || print_digests
	local -a token
	mapfile -t token < <(token_args)
	banner "publisher verify --history"
	if timeout 300 "$PUBLISHER" verify --targets "$TARGETS" --history "$WORK/history.jsonl" \
		--timeout 30s "${token[@]}" >"$WORK/verify.log" 2>&1; then
		figure "publisher verify" "PASS"
	else
		violation "publisher verify --history failed (see below)"
		figure "publisher verify" "FAIL"
	fi
	cat "$WORK/verify.log" >&2
	banner "audit of every acknowledged key on every node"
	local out rc=0
	out="$(python3 "$AUDIT" summary "$WORK/history.jsonl")" || true
	figure "requests sent / acked / failed" \
		"$(kv "$out" requests) / $(kv "$out" acked_requests) / $(kv "$out" failed_requests)"
	figure "events acknowledged" "$(kv "$out" acked_events) ($(kv "$out" acked_distinct_keys) distinct keys)"
	out="$(python3 "$AUDIT" audit "$WORK/history.jsonl" "$TARGETS" --extra "$WORK/probes.tsv")" || rc=$?
	if ((rc == 3)) || [[ -z "$out" ]]; then
		violation "the audit could not read the nodes"
	elif ((rc != 0)); then
		violation "the audit found acknowledged events lost, stored twice or restamped"
	fi
	figure "acked keys audited (incl. probes)" "$(kv "$out" acked_keys)"
	figure "lost" "$(kv "$out" lost)"
	figure "stored twice" "$(kv "$out" stored_twice)"
}

# kv OUTPUT KEY: the value of a key=value line.
kv() { printf '%s\n' "$1" | sed -n "s/^$2=//p" | head -n1; }

# Prints the figures and the verdict; returns 1 when anything was violated.
print_verdict() {
	local f
	banner "figures"
	for f in "${FIGURES[@]}"; do printf '  %-42s %s\n' "${f%%|*}" "${f#*|}"; done
	banner "verdict"
	if ((${#VIOLATIONS[@]} == 0)); then
		printf '  PASS: nothing acknowledged was lost or stored twice; every check held\n'
		return 0
	fi
	printf '  FAIL: %s violation(s):\n' "${#VIOLATIONS[@]}"
	for f in "${VIOLATIONS[@]}"; do printf '    - %s\n' "$f"; done
	return 1
}
