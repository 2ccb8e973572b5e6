// natkit check: runs RTCPeerConnections against this server's own STUN/TURN and natkit's ICE
// prober, then asks the server for the report (the same words and JSON as natkit diagnose).
// No dependencies, no build step; same-origin API only (natkit/check/server.py).
"use strict";

const API = "/check/api";
const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function api(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const res = await fetch(API + path, init);
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${data.error || ""}`);
  return data;
}

let done = 0, total = 1;
function progress(text) {
  done += 1;
  $("progress").value = Math.min(100, Math.round((100 * done) / total));
  if (text) $("step").textContent = text;
}

function gathered(pc, ms, out) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    pc.addEventListener("icecandidate", (e) => {
      if (!e.candidate) { clearTimeout(timer); resolve(); return; }
      if (out) out.push(describe(e.candidate, e.url));
    });
  });
}

function describe(c, url) {
  return { type: c.type, protocol: c.protocol, address: c.address, port: c.port,
           url: url || c.url || null };
}

// natkit as the remote ICE-lite agent: KIND "mapping" (checks to three server sockets) or
// "filtering" (natkit probes the address our checks came from).
async function iceSession(test, kind, candidates) {
  const pc = new RTCPeerConnection({ iceServers: [] });
  try {
    pc.createDataChannel("natkit-" + kind);
    const gathering = gathered(pc, 1500, kind === "mapping" ? candidates : null);
    await pc.setLocalDescription(await pc.createOffer());
    await gathering;
    const ans = await api("POST", `/test/${test.id}/ice/${kind}`, { sdp: pc.localDescription.sdp });
    await pc.setRemoteDescription({ type: "answer", sdp: ans.sdp });
    const want = test.alternate ? 3 : 2, start = performance.now();
    let seen = {};
    while (performance.now() - start < 3500) {
      await sleep(150);
      seen = await api("GET", `/test/${test.id}/ice/${kind}`);
      if (kind === "mapping" && seen.observed.filter((r) => r !== "v6").length >= want) {
        // The IPv6 check, when natkit offers one, comes from another socket: a moment more.
        if (test.ipv6 && !seen.observed.includes("v6")) {
          await sleep(400);
          seen = await api("GET", `/test/${test.id}/ice/${kind}`);
        }
        break;
      }
      if (kind === "filtering" && seen.done) break;
      if (!seen.observed.length && performance.now() - start > 2500) break;
    }
    progress(kind === "mapping" ? "mapping measured" : "filtering measured");
    return seen;
  } finally {
    pc.close();
  }
}

async function reflexive(test, candidates) {
  const pc = new RTCPeerConnection({ iceServers: [{ urls: test.stun }] });
  try {
    pc.createDataChannel("natkit-srflx");
    const found = [];
    const gathering = gathered(pc, 2500, found);
    await pc.setLocalDescription(await pc.createOffer());
    await gathering;
    for (const c of found) if (c.type === "srflx") candidates.push(c);
  } finally {
    pc.close();
    progress("server-reflexive candidates gathered");
  }
}

// Hairpinning (RFC 4787 REQ-9): two peers on this page that know each other only by their
// server-reflexive (public) addresses connect only if the NAT loops their packets back inside.
async function hairpin(test) {
  const result = { tried: false, connected: false };
  const config = { iceServers: [{ urls: test.stun.slice(0, 1) }] };
  const a = new RTCPeerConnection(config), b = new RTCPeerConnection(config);
  const relay = (from, to) => from.addEventListener("icecandidate", (e) => {
    if (e.candidate && e.candidate.type === "srflx") {
      result.tried = true;
      to.addIceCandidate(e.candidate).catch(() => {});
    }
  });
  relay(a, b);
  relay(b, a);
  try {
    const dc = a.createDataChannel("natkit-hairpin");
    const opened = new Promise((resolve, reject) => {
      dc.addEventListener("open", resolve);
      setTimeout(() => reject(new Error("no hairpin")), 3000);
    });
    // No candidates in the descriptions (trickle): only the srflx ones relayed above.
    await a.setLocalDescription(await a.createOffer());
    await b.setRemoteDescription({ type: "offer", sdp: a.localDescription.sdp.replace(/a=candidate:.*\r\n/g, "") });
    await b.setLocalDescription(await b.createAnswer());
    await a.setRemoteDescription({ type: "answer", sdp: b.localDescription.sdp.replace(/a=candidate:.*\r\n/g, "") });
    await opened;
    result.connected = true;
  } catch (err) {
    result.connected = false;
  } finally {
    a.close(); b.close();
    progress("hairpinning checked");
  }
  return result;
}

// Two relay-only peers on this page, both through the server's TURN over one transport: a data
// channel between them crosses the relay twice; the ping's round trip is timed.
async function turnCheck(server) {
  const result = { transport: server.transport, url: server.urls[0], ok: false,
                   allocated: false, relayed_address: null, rtt_ms: null, error: null };
  const config = { iceServers: [server], iceTransportPolicy: "relay" };
  const a = new RTCPeerConnection(config), b = new RTCPeerConnection(config);
  try {
    const relayed = [];
    a.addEventListener("icecandidate", (e) => {
      if (e.candidate) { b.addIceCandidate(e.candidate).catch(() => {});
                         if (e.candidate.type === "relay") relayed.push(e.candidate); }
    });
    b.addEventListener("icecandidate", (e) => {
      if (e.candidate) a.addIceCandidate(e.candidate).catch(() => {});
    });
    b.addEventListener("datachannel", (e) => {
      e.channel.addEventListener("message", (m) => e.channel.send(m.data));
    });
    const dc = a.createDataChannel("natkit-turn");
    const opened = new Promise((resolve, reject) => {
      dc.addEventListener("open", resolve);
      setTimeout(() => reject(new Error("no data channel through the relay within 4 s")), 4000);
    });
    await a.setLocalDescription(await a.createOffer());
    await b.setRemoteDescription(a.localDescription);
    await b.setLocalDescription(await b.createAnswer());
    await a.setRemoteDescription(b.localDescription);
    try {
      await opened;
    } finally {
      result.allocated = relayed.length > 0;
      if (relayed.length) result.relayed_address = `${relayed[0].address}:${relayed[0].port}`;
    }
    const t0 = performance.now();
    const echoed = new Promise((resolve, reject) => {
      dc.addEventListener("message", resolve);
      setTimeout(() => reject(new Error("no echo through the relay within 2 s")), 2000);
    });
    dc.send("natkit-ping");
    await echoed;
    result.rtt_ms = Math.round((performance.now() - t0) * 10) / 10;
    result.ok = true;
  } catch (err) {
    result.error = result.allocated ? String(err.message || err)
                                    : "no relayed candidate (allocation failed or unreachable)";
  } finally {
    a.close(); b.close();
    progress(`TURN over ${server.transport.toUpperCase()} checked`);
  }
  return result;
}

function row(table, name, value, cls) {
  const tr = table.insertRow();
  tr.insertCell().textContent = name;
  const td = tr.insertCell();
  td.textContent = value;
  if (cls) td.className = cls;
}

function yn(v) { return v === null || v === undefined ? ["unknown", "warn"] : v ? ["yes", "good"] : ["no", "bad"]; }

function render(report) {
  const facts = $("facts");
  facts.replaceChildren();
  row(facts, "UDP", ...yn(report.udp.reachable));
  row(facts, "public address", report.public_address || "-");
  row(facts, "mapping", report.mapping || "unknown", report.mapping ? "" : "warn");
  row(facts, "filtering", report.filtering || "unknown", report.filtering ? "" : "warn");
  row(facts, "NAT type", report.nat_type, "good");
  row(facts, "port preservation", ...yn(report.port_preservation));
  row(facts, "hairpinning", ...(report.behind_nat === false ? ["n/a (no NAT)", ""]
                                                           : yn(report.hairpinning)));
  for (const t of report.turn) {
    row(facts, `TURN over ${t.transport.toUpperCase()}`,
        t.ok ? `works (relay ${t.relayed_address}, ${t.rtt_ms} ms round trip)` : t.error,
        t.ok ? "good" : "bad");
  }
  if (!report.turn.length) row(facts, "TURN", "not offered by this server", "warn");
  const v = report.verdict;
  $("verdict-title").textContent =
    `Verdict: direct P2P ${v.direct_p2p}` + (v.relay_required ? ", relay required" : "");
  $("verdict").textContent = v.explanation;
  const actions = $("actions");
  actions.replaceChildren();
  for (const a of v.actions.length ? v.actions : ["Nothing: calls should connect."]) {
    const li = document.createElement("li");
    li.textContent = a;
    actions.appendChild(li);
  }
  $("report-id").textContent = report.id;
  $("report-url").textContent = `${location.origin}${API}/report/${report.id}`;
  const blob = new Blob([JSON.stringify(report, null, 2)], { type: "application/json" });
  $("download").href = URL.createObjectURL(blob);
  $("result").hidden = false;
}

// The NAT check itself: the report (also window.natkitReport), or null after showing why not.
async function measure() {
  const t0 = performance.now();
  $("start").disabled = true;
  $("error").hidden = true;
  done = 0;
  try {
    const test = await api("POST", "/test");
    total = 4 + test.turn.length + 1;
    progress("test started");
    const candidates = [];
    const [, , , turn, hair] = await Promise.all([
      iceSession(test, "mapping", candidates),
      iceSession(test, "filtering", null),
      reflexive(test, candidates),
      Promise.all(test.turn.map(turnCheck)),
      hairpin(test),
    ]);
    const duration_s = Math.round(performance.now() - t0) / 1000;
    const report = await api("POST", `/test/${test.id}/report`,
                             { turn, candidates, duration_s, hairpin: hair });
    $("progress").value = 100;
    $("step").textContent = `done in ${duration_s.toFixed(1)} s`;
    render(report);
    window.natkitReport = report;
    return report;
  } catch (err) {
    $("error").textContent = `The check failed: ${err.message || err}`;
    $("error").hidden = false;
    window.natkitReport = { source: "browser", error: String(err.message || err) };
    return null;
  } finally {
    $("start").disabled = false;
  }
}

async function run() {
  document.title = "natkit check — running";
  try {
    await measure();
  } finally {
    document.title = "natkit check — done";
  }
}

// --- test with a friend: one offer/answer exchange per attempt through the same-origin pairing
// API (natkit/check/friend.py); the host offers, the friend answers.

async function poll(path, ms) {
  const start = performance.now();
  while (performance.now() - start < ms) {
    const got = await api("GET", path);
    if (got.sdp) return got.sdp;
    await sleep(250);
  }
  throw new Error("the other browser did not answer in time");
}

async function selectedPair(pc) {
  const stats = await pc.getStats();
  let pair = null;
  stats.forEach((s) => {
    if (s.type === "transport" && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
  });
  if (!pair) stats.forEach((s) => { if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s; });
  if (!pair) return null;
  const local = stats.get(pair.localCandidateId), remote = stats.get(pair.remoteCandidateId);
  return { local: local && local.candidateType, remote: remote && remote.candidateType,
           protocol: local && local.protocol };
}

async function friendAttempt(host, code, mode, servers) {
  const config = mode === "direct"
    ? { iceServers: [{ urls: servers.stun }] }
    : { iceServers: servers.turn, iceTransportPolicy: "relay" };
  const result = { mode, connected: false, rtt_ms: null, pair: null, error: null };
  const pc = new RTCPeerConnection(config);
  const base = `/pair/${code}/${mode}`;
  let timer;
  try {
    const opened = new Promise((resolve, reject) => {
      timer = setTimeout(() => reject(new Error("no data channel within 6 s")), 6000);
      const ready = (dc) => (dc.readyState === "open" ? resolve(dc)
                                                      : dc.addEventListener("open", () => resolve(dc)));
      if (host) ready(pc.createDataChannel("natkit-friend"));
      else pc.addEventListener("datachannel", (e) => ready(e.channel));
    });
    if (host) {
      const gathering = gathered(pc, 3000, null);
      await pc.setLocalDescription(await pc.createOffer());
      await gathering;
      await api("PUT", `${base}/offer`, { sdp: pc.localDescription.sdp });
      await pc.setRemoteDescription({ type: "answer", sdp: await poll(`${base}/answer`, 60000) });
    } else {
      await pc.setRemoteDescription({ type: "offer", sdp: await poll(`${base}/offer`, 10000) });
      const gathering = gathered(pc, 3000, null);
      await pc.setLocalDescription(await pc.createAnswer());
      await gathering;
      await api("PUT", `${base}/answer`, { sdp: pc.localDescription.sdp });
    }
    const dc = await opened;
    const message = new Promise((resolve, reject) => {
      dc.addEventListener("message", resolve);
      setTimeout(() => reject(new Error("the data channel opened but carried nothing")), 3000);
    });
    const t0 = performance.now();
    if (host) dc.send("natkit-ping");
    await message;
    if (!host) dc.send("natkit-pong");
    else result.rtt_ms = Math.round((performance.now() - t0) * 10) / 10;
    result.connected = true;
    result.pair = await selectedPair(pc);
  } catch (err) {
    result.error = String(err.message || err);
  } finally {
    clearTimeout(timer);
    setTimeout(() => pc.close(), 1000);
  }
  return result;
}

// Each side runs its own check (its NAT type feeds the prediction), then both attempts.
async function friend(code) {
  document.title = "natkit check — friend — running";
  const host = !code;
  try {
    let servers;
    if (host) {
      servers = await api("POST", "/pair");
      code = servers.code;
      window.natkitFriendCode = code;
      $("friend-url").textContent = `${location.origin}/check?friend=${code}`;
      $("friend-link").hidden = false;
    } else {
      servers = await api("GET", `/pair/${code}`);
    }
    const own = await measure();
    if (own) await api("PUT", `/pair/${code}/nat/${host ? "host" : "friend"}`, { report: own.id });
    const [direct, relay] = await Promise.all([
      friendAttempt(host, code, "direct", servers),
      friendAttempt(host, code, "relay", servers),
    ]);
    const nats = await api("GET", `/pair/${code}/nat`).catch(() => ({}));
    const predicted = nats.predicted_direct === undefined ? null : nats.predicted_direct;
    window.natkitFriend = {
      source: "browser", role: host ? "host" : "friend", code, direct, relay,
      nat_types: { host: nats.host || null, friend: nats.friend || null },
      predicted_direct: predicted,
      held: predicted === null ? null : predicted === direct.connected,
    };
    const table = $("friend-results");
    table.replaceChildren();
    const said = predicted === null ? "unknown" : predicted ? "direct possible" : "relay needed";
    row(table, "predicted", `${said} (NAT types: you ${host ? nats.host : nats.friend}, ` +
        `your friend ${host ? nats.friend : nats.host})`, predicted === null ? "warn" : "");
    for (const r of [direct, relay]) {
      const how = r.pair ? ` (${r.pair.local} ↔ ${r.pair.remote})` : "";
      row(table, r.mode === "direct" ? "direct" : "through TURN",
          r.connected ? `connected${how}${r.rtt_ms !== null ? `, ${r.rtt_ms} ms` : ""}` : r.error,
          r.connected ? "good" : "bad");
    }
    table.hidden = false;
    $("friend-link").hidden = true;
  } catch (err) {
    window.natkitFriend = { source: "browser", error: String(err.message || err) };
    $("error").textContent = `The friend test failed: ${err.message || err}`;
    $("error").hidden = false;
  } finally {
    document.title = "natkit check — friend — done";
  }
}

window.addEventListener("DOMContentLoaded", () => {
  $("start").addEventListener("click", run);
  $("friend-start").addEventListener("click", () => friend(null));
  const code = new URLSearchParams(location.search).get("friend");
  if (code === "new") friend(null);
  else if (code) friend(code);
  else run();
});
