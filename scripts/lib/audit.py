#!/usr/bin/env python3
"""audit.py — the drill and chaos scripts' own checks, independent of `publisher verify`.

Reads a publisher --history file (one JSON object per request, see docs/publisher.md) and the
nodes' HTTP API (standard library only), and answers:

  summary HISTORY                      requests, acked requests and events, failed, rejected
  acked-between HISTORY FROM_MS TO_MS  acked requests whose answer arrived inside the window
                                       (exit 1 if any: nothing may be acknowledged without a quorum)
  audit HISTORY TARGETS [--extra FILE] every acknowledged key (history + FILE of "topic<TAB>id"
                                       lines) present exactly once on every node, with the acked stamp;
                                       prints figures and exits 1 on any violation

Output is `key=value` lines on stdout (for the scripts) and a short human summary on stderr.
"""

import json
import os
import sys
import urllib.parse
import urllib.request
from collections import Counter, defaultdict

TIMEOUT_S = 10
PAGE = 1000


def read_history(path):
    """Yields one dict per complete history line; a torn last line (killed writer) is skipped."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def event_keys(req):
    """(topic, event_id) of every event of one history request, in request order."""
    return [(e["topic"], e["event_id"]) for e in req.get("events") or []]


def is_acked(req):
    return req.get("outcome") == "acked"


def acked_stamps(req):
    """The lamport stamp the cluster answered for each event of an acked request (None if absent)."""
    return {(e["topic"], e["event_id"]): e.get("lamport") for e in req.get("events") or []}


def end_ms(req):
    """When the request's outcome was known (ms since the epoch)."""
    return int(req["end_ms"]) if "end_ms" in req else None


def cmd_summary(history):
    reqs = acked = events = acked_events = failed = rejected = 0
    keys = set()
    for req in read_history(history):
        reqs += 1
        n = len(event_keys(req))
        events += n
        if is_acked(req):
            acked += 1
            acked_events += n
            keys.update(event_keys(req))
        elif req.get("outcome") == "rejected":
            rejected += 1
        else:
            failed += 1
    print(f"requests={reqs}\nacked_requests={acked}\nevents_sent={events}")
    print(f"acked_events={acked_events}\nacked_distinct_keys={len(keys)}")
    print(f"failed_requests={failed}\nrejected_requests={rejected}")
    return 0


def cmd_acked_between(history, lo, hi):
    lo, hi = int(lo), int(hi)
    bad = [r for r in read_history(history) if is_acked(r) and (e := end_ms(r)) is not None and lo < e < hi]
    print(f"acked_in_window={len(bad)}")
    for r in bad[:5]:
        print(f"  acked at {end_ms(r)} via {r.get('target')}: {event_keys(r)[:3]}", file=sys.stderr)
    return 1 if bad else 0


def get_json(url, token):
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
        return json.load(resp)


def topic_events(base, topic, token):
    """Every event the node itself holds for one topic: (event_id, lamport) in the order served."""
    out, after = [], None
    for _ in range(100_000):  # bounded: 100M events
        q = {"topic": topic, "limit": PAGE, "consistency": "eventual"}
        if after is not None:
            q["after"] = after
        page = get_json(f"{base}/events?{urllib.parse.urlencode(q)}", token)
        out.extend((e["event_id"], e.get("lamport")) for e in page.get("events", []))
        after = page.get("next")
        if after is None or not page.get("events"):
            return out
    raise RuntimeError(f"{base}: too many pages for topic {topic}")


def cmd_audit(history, targets, extra=None):
    token = os.environ.get("AGG_API_TOKEN") or None
    expected = {}  # key -> acked stamp (None when unknown)
    for req in read_history(history):
        if is_acked(req):
            for key, stamp in acked_stamps(req).items():
                expected.setdefault(key, stamp)
    if extra and os.path.exists(extra):
        with open(extra, encoding="utf-8") as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) >= 2:
                    expected.setdefault((parts[0], parts[1]), None)
    by_topic = defaultdict(set)
    for topic, eid in expected:
        by_topic[topic].add(eid)
    violations = 0
    lost_max = twice_max = stamp_max = 0
    for base in targets.split(","):
        lost = twice = stamp_bad = 0
        for topic, ids in by_topic.items():
            held = topic_events(base, topic, token)
            counts = Counter(eid for eid, _ in held)
            twice += sum(1 for c in counts.values() if c > 1)
            stamps = {eid: lam for eid, lam in held}
            for eid in ids:
                if counts[eid] == 0:
                    lost += 1
                want = expected[(topic, eid)]
                if counts[eid] and want is not None and stamps.get(eid) != want:
                    stamp_bad += 1
        print(f"node {base}: acked keys {len(expected)}, lost {lost}, stored twice {twice}, "
              f"stamp mismatches {stamp_bad}", file=sys.stderr)
        lost_max, twice_max, stamp_max = max(lost_max, lost), max(twice_max, twice), max(stamp_max, stamp_bad)
        violations += lost + twice + stamp_bad
    print(f"acked_keys={len(expected)}\nlost={lost_max}\nstored_twice={twice_max}\nstamp_mismatch={stamp_max}")
    return 1 if violations else 0


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__)
        return 0 if len(argv) >= 2 else 2
    cmd, args = argv[1], argv[2:]
    if cmd == "summary" and len(args) == 1:
        return cmd_summary(*args)
    if cmd == "acked-between" and len(args) == 3:
        return cmd_acked_between(*args)
    if cmd == "audit" and len(args) in (2, 4) and (len(args) == 2 or args[2] == "--extra"):
        return cmd_audit(args[0], args[1], args[3] if len(args) == 4 else None)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        print(f"audit.py: {e}", file=sys.stderr)
        sys.exit(3)
