// The dashboard's script: polls this node's /cluster/overview once a second and renders it.
// Every value from the server goes in as text (textContent), never as markup.
"use strict";

const POLL_MS = 1000;
const TIMEOUT_MS = 3000;
const WINDOW_SAMPLES = 300; // five minutes at one poll a second
const samples = []; // {t, received, dups}
let polls = 0;

function token() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) sessionStorage.setItem("agg-token", decodeURIComponent(m[1]));
  return sessionStorage.getItem("agg-token");
}

function el(tag, text, attrs) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

function cell(field, value, cls) {
  const td = el("td", value === null || value === undefined ? "—" : value, { "data-field": field });
  if (cls) td.className = cls;
  return td;
}

function setStatus(state, text) {
  const s = document.getElementById("status");
  s.dataset.state = state;
  s.textContent = text;
}

function fmt(n) {
  return n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US");
}

function renderMembers(o) {
  const leader = o.members.find((m) => m.id === o.leader_id && m.reachable);
  const leaderApplied = leader ? leader.stats.raft.applied_index : null;
  const body = document.querySelector("#members tbody");
  body.replaceChildren();
  for (const m of o.members) {
    const tr = el("tr", null, { "data-node-id": m.id, "data-state": m.reachable ? "up" : "unreachable" });
    tr.appendChild(el("td", `${m.id}${m.voter ? "" : " (learner)"}`));
    if (!m.reachable) {
      tr.appendChild(cell("state", "unreachable", "text"));
      const err = cell("error", m.error || "no answer", "text error");
      err.colSpan = 9;
      tr.appendChild(err);
      body.appendChild(tr);
      continue;
    }
    const s = m.stats;
    const c = s.consistency || {};
    tr.dataset.role = s.role;
    let lag = null;
    if (leaderApplied !== null && s.raft.applied_index !== null) {
      lag = Math.max(0, leaderApplied - s.raft.applied_index);
    } else if (c.lag_known) {
      lag = c.lag_entries;
    }
    tr.appendChild(cell("state", `up (${m.response_ms} ms)`, "text"));
    tr.appendChild(cell("role", s.role, "text"));
    tr.appendChild(cell("term", s.raft.term));
    tr.appendChild(cell("committed", fmt(s.raft.committed_index)));
    tr.appendChild(cell("applied", fmt(s.raft.applied_index)));
    tr.appendChild(cell("lag", lag === null ? "unknown" : fmt(lag)));
    tr.appendChild(cell("contact", c.last_leader_contact_ms === null || c.last_leader_contact_ms === undefined
      ? "never" : `${c.last_leader_contact_ms} ms ago`));
    tr.appendChild(cell("stored", fmt(s.unique_processed)));
    tr.appendChild(cell("duplicates", fmt(s.duplicate_dropped)));
    tr.appendChild(cell("digest", s.digest.slice(0, 12), "text digest"));
    body.appendChild(tr);
  }
}

function own(o) {
  const me = o.members.find((m) => m.id === o.node_id);
  return me && me.reachable ? me.stats : null;
}

function renderLists(o) {
  const me = own(o);
  const topics = document.querySelector("#topics tbody");
  const producers = document.querySelector("#producers tbody");
  topics.replaceChildren();
  producers.replaceChildren();
  if (!me) return;
  const t = Object.entries(me.topic_counts).sort((a, b) => b[1] - a[1]);
  for (const [name, n] of t) {
    const tr = el("tr", null, { "data-topic": name });
    tr.appendChild(el("td", name));
    tr.appendChild(cell("count", fmt(n)));
    topics.appendChild(tr);
  }
  if (!t.length) topics.appendChild(el("tr")).appendChild(el("td", "no events yet", { class: "empty" }));
  const p = Object.entries(me.producers)
    .sort((a, b) => (b[1].gaps + b[1].out_of_order) - (a[1].gaps + a[1].out_of_order) || b[1].events - a[1].events);
  for (const [source, s] of p) {
    const tr = el("tr", null, { "data-source": source });
    tr.appendChild(el("td", source));
    tr.appendChild(cell("events", fmt(s.events)));
    tr.appendChild(cell("last_seq", s.last_seq === null ? "—" : fmt(s.last_seq)));
    tr.appendChild(cell("gaps", fmt(s.gaps)));
    tr.appendChild(cell("out_of_order", fmt(s.out_of_order)));
    producers.appendChild(tr);
  }
  if (!p.length) producers.appendChild(el("tr")).appendChild(el("td", "no producers yet", { class: "empty" }));
}

function renderElections(o) {
  const list = document.getElementById("elections");
  list.replaceChildren();
  for (const e of [...o.elections].reverse()) {
    const when = new Date(e.at_ms).toLocaleTimeString();
    const what = e.leader_id === null ? "leader lost" : `node ${e.leader_id} leads`;
    list.appendChild(el("li", `${when}: term ${e.term}, ${what}`, { "data-term": e.term }));
  }
}

function chart(id, values, max) {
  const line = document.querySelector(`#${id} polyline`);
  if (values.length < 2) { line.setAttribute("points", ""); return; }
  const top = Math.max(max || 0, ...values, 1e-9);
  const pts = values.map((v, i) => `${(i * 300) / (WINDOW_SAMPLES - 1)},${100 - (v / top) * 95}`);
  line.setAttribute("points", pts.join(" "));
}

function renderRates(o) {
  // The cluster's counters: the highest any reachable member has applied.
  const reach = o.members.filter((m) => m.reachable);
  if (!reach.length) return;
  const received = Math.max(...reach.map((m) => m.stats.received));
  const dups = Math.max(...reach.map((m) => m.stats.duplicate_dropped));
  samples.push({ t: o.generated_at_ms, received, dups });
  while (samples.length > WINDOW_SAMPLES + 1) samples.shift();
  const rates = [], shares = [];
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1], b = samples[i];
    const dt = (b.t - a.t) / 1000;
    const dr = b.received - a.received;
    rates.push(dt > 0 ? Math.max(0, dr) / dt : 0);
    shares.push(dr > 0 ? (b.dups - a.dups) / dr : 0);
  }
  chart("chart-rate", rates);
  chart("chart-dups", shares, 1);
  if (rates.length) {
    document.getElementById("rate-now").textContent = `${Math.round(rates[rates.length - 1]).toLocaleString("en-US")} events/s`;
    document.getElementById("dups-now").textContent = `${(shares[shares.length - 1] * 100).toFixed(1)} %`;
  }
}

function markStale(reason) {
  // Nothing old may pass for current: the member table is emptied, the charts stop.
  document.querySelector("#members tbody").replaceChildren();
  const tr = el("tr", null, { "data-state": "unknown" });
  const td = el("td", reason, { class: "text error" });
  td.colSpan = 11;
  tr.appendChild(td);
  document.querySelector("#members tbody").appendChild(tr);
}

async function poll() {
  const headers = {};
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS);
  try {
    const r = await fetch("/cluster/overview", { headers, cache: "no-store", signal: ctl.signal });
    if (r.status === 401 || r.status === 403) {
      setStatus("auth", "token needed");
      document.getElementById("token-form").hidden = false;
      markStale("this node needs a bearer token to show the cluster");
      return;
    }
    if (!r.ok) throw new Error(`answered ${r.status}`);
    const o = await r.json();
    setStatus("up", "live");
    document.getElementById("served-by").textContent = o.node_id;
    document.getElementById("leader").textContent = o.leader_id === null ? "none known" : o.leader_id;
    document.getElementById("term").textContent = o.term;
    document.getElementById("updated").textContent = new Date(o.generated_at_ms).toLocaleTimeString();
    renderMembers(o);
    renderLists(o);
    renderElections(o);
    renderRates(o);
  } catch (e) {
    setStatus("down", "this node does not answer");
    markStale(`no answer from the node serving this page (${e.message || e}); showing nothing rather than old numbers`);
  } finally {
    clearTimeout(timer);
    polls += 1;
    document.body.dataset.polls = polls;
    setTimeout(poll, POLL_MS);
  }
}

// Live tail: GET /subscribe as a fetch stream (EventSource cannot send a bearer token), the
// SSE text parsed here; the newest TAIL_ROWS events are shown, newest first.
const TAIL_ROWS = 50;
let tail = null;

function tailStatus(text) {
  document.getElementById("tail-status").textContent = text;
}

function tailRow(id, data) {
  let e;
  try { e = JSON.parse(data); } catch (_) { return; }
  const body = document.querySelector("#tail tbody");
  const tr = el("tr", null, { "data-cursor": id });
  tr.appendChild(el("td", id));
  tr.appendChild(el("td", e.topic));
  tr.appendChild(el("td", e.source));
  tr.appendChild(el("td", e.event_id));
  tr.appendChild(el("td", JSON.stringify(e.payload), { class: "payload" }));
  body.insertBefore(tr, body.firstChild);
  while (body.children.length > TAIL_ROWS) body.removeChild(body.lastChild);
}

async function follow(pattern) {
  const ctl = new AbortController();
  tail = ctl;
  document.getElementById("tail-stop").disabled = false;
  const headers = { Accept: "text/event-stream" };
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  tailStatus(`following ${pattern}…`);
  try {
    const r = await fetch(`/subscribe?topic=${encodeURIComponent(pattern)}&from=latest`, { headers, signal: ctl.signal });
    if (!r.ok) {
      const err = await r.json().catch(() => ({}));
      tailStatus(`refused (${r.status}): ${err.error || ""}`);
      return;
    }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const msg = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        let id = null, ev = null, data = [];
        for (const line of msg.split("\n")) {
          if (line.startsWith("id:")) id = line.slice(3).trim();
          else if (line.startsWith("event:")) ev = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (ev === "end") {
          const end = JSON.parse(data.join("\n") || "{}");
          tailStatus(`ended: ${end.reason} (${end.error || ""}); resume from ${end.resume_from}`);
        } else if (ev === null && id !== null) {
          tailRow(id, data.join("\n"));
          tailStatus(`following ${pattern}: last cursor ${id}`);
        }
      }
    }
  } catch (e) {
    if (!ctl.signal.aborted) tailStatus(`stream failed: ${e.message || e}`);
  } finally {
    if (tail === ctl) tail = null;
    document.getElementById("tail-stop").disabled = true;
  }
}

document.getElementById("tail-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const pattern = document.getElementById("tail-topic").value.trim();
  if (!pattern) return;
  if (tail) tail.abort();
  document.querySelector("#tail tbody").replaceChildren();
  follow(pattern);
});
document.getElementById("tail-stop").addEventListener("click", () => {
  if (tail) tail.abort();
  tailStatus("stopped");
});
if (location.hash.includes("tail=")) {
  const m = location.hash.match(/tail=([^&]+)/);
  document.getElementById("tail-topic").value = decodeURIComponent(m[1]);
  follow(decodeURIComponent(m[1]));
}

document.getElementById("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("agg-token", document.getElementById("token").value);
  document.getElementById("token-form").hidden = true;
});

poll();
