// EEGS dashboard page: one websocket, a snapshot then deltas; plots by Plotly.
"use strict";
const TOKEN = new URLSearchParams(location.search).get("token") || "";
const CONTROLS = document.body.dataset.controls === "1";
const HIST_NAMES = {
  epoch_latency_ms: "epoch latency (ms)",
  round_ready_ms: "round ready (ms)",
  dropped_frames: "dropped frames / trial",
  marker_push_delay_ms: "marker push delay (ms)",
  timing_check_correction_ms: "timing-check correction (ms)",
};
const TRACE_S = 5; // seconds of EEG on screen
const TRACE_POINTS = 250; // 5 s at 50 Hz
const SPACING = 60; // µV between traced channels
// what the tests (and the footer) read: latency of each event from its time to the page
window.eegs = { messages: 0, latencies: [], serverLatencies: [], eegSamples: 0, snapshot: null, state: "", busyMs: {}, alerts: [] };
function timed(name, fn) {  // where the page's time goes (window.eegs.busyMs)
  return (...args) => {
    const t0 = performance.now();
    try { return fn(...args); } finally {
      window.eegs.busyMs[name] = (window.eegs.busyMs[name] || 0) + performance.now() - t0;
    }
  };
}

const $ = (id) => document.getElementById(id);
const cfg = { displayModeBar: false, responsive: true };
let channels = [], rewards = [], best = {}, hist = {}, rewardsDirty = false;
const histDirty = new Set();  // histograms with values not drawn yet

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
function fmt(v, d = 1) { return v === null || v === undefined ? "–" : (typeof v === "number" ? v.toFixed(d) : String(v)); }

// The EEG trace is drawn on a canvas, not by Plotly: a Plotly redraw ten times a second
// took a third of the browser's main thread on a busy 2-core machine, and every update
// waiting behind it (docs/architecture.md section 12).
let eegX = [], eegY = [], eegDirty = false;
function initEEG(names) {
  channels = names;
  pending = null;
  eegX = [];
  eegY = names.map(() => []);
  eegDirty = true;
  drawEEG();
}

function drawEEGCanvas() {  // channels SPACING µV apart, the newest sample at the right edge
  const c = $("eeg"), w = c.clientWidth, h = c.clientHeight, dpr = window.devicePixelRatio || 1;
  if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
    c.width = Math.round(w * dpr);
    c.height = Math.round(h * dpr);
  }
  const g = c.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const n = channels.length;
  if (!n) return;
  const left = 44, right = 6, top = 4, bottom = 30, pw = w - left - right, ph = h - top - bottom;
  const yTop = 0.5 * SPACING, yBottom = -(n - 0.5) * SPACING;
  const Y = (v) => top + ((yTop - v) / (yTop - yBottom)) * ph;
  const t1 = eegX.length ? eegX[eegX.length - 1] : 0;
  const X = (t) => left + ((t - t1 + TRACE_S) / TRACE_S) * pw;
  g.font = "10px system-ui, sans-serif";
  g.fillStyle = "#4a5570";
  g.strokeStyle = "#e4e7ec";
  g.textAlign = "right";
  g.textBaseline = "middle";
  channels.forEach((name, k) => g.fillText(name, left - 4, Y(-k * SPACING)));
  g.textAlign = "center";
  g.textBaseline = "top";
  g.beginPath();
  for (let s = 0; s <= TRACE_S; s++) {
    const x = left + ((TRACE_S - s) / TRACE_S) * pw;
    g.moveTo(x, top);
    g.lineTo(x, top + ph);
    g.fillText(s ? `-${s}` : "0", x, top + ph + 3);
  }
  g.stroke();
  g.fillText("seconds before the newest sample", left + pw / 2, top + ph + 15);
  g.save();
  g.beginPath();
  g.rect(left, top, pw, ph);
  g.clip();
  g.strokeStyle = "#1f77b4";
  g.lineWidth = 1;
  g.beginPath();
  for (const row of eegY) {
    for (let i = 0; i < eegX.length; i++) {
      const x = X(eegX[i]), y = Y(row[i]);
      if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
    }
  }
  g.stroke();
  g.restore();
}

let pending = null; // EEG received since the last draw
function addEEG(eeg) {
  if (!channels.length || !eeg.t.length) return;
  if (!pending) pending = { t: [], y: channels.map(() => []) };
  pending.t.push(...eeg.t);
  eeg.y.forEach((row, k) => pending.y[k].push(...row.map((v) => v - k * SPACING)));
  window.eegs.eegSamples += eeg.t.length;
}

function drawEEG() {  // 10 times a second, whatever the message rate
  if (pending && channels.length) {
    const p = pending;
    pending = null;
    const keep = (a, more) => a.concat(more).slice(-TRACE_POINTS);
    eegX = keep(eegX, p.t);
    eegY = eegY.map((a, k) => keep(a, p.y[k]));
    eegDirty = true;
  }
  if (eegDirty) drawEEGCanvas();
  eegDirty = false;
}
setInterval(timed("eeg", drawEEG), 100);

function drawRewards() {
  const byBlock = {};
  for (const r of rewards) (byBlock[r.block || "?"] = byBlock[r.block || "?"] || []).push(r);
  const traces = Object.entries(byBlock).map(([b, rs]) => ({
    x: rs.map((r) => r.trial), y: rs.map((r) => r.reward), mode: "markers", name: b, marker: { size: 5 },
  }));
  const loop = Object.entries(best).filter(([k]) => k.startsWith("closed_loop/"))
    .map(([k, v]) => [Number(k.split("/")[1]), v]).sort((a, b) => a[0] - b[0]);
  traces.push({ x: loop.map((p) => p[0]), y: loop.map((p) => p[1]), xaxis: "x2", yaxis: "y", mode: "lines+markers", name: "best / round" });
  Plotly.react($("rewards"), traces, {
    margin: { l: 35, r: 5, t: 20, b: 25 }, legend: { orientation: "h", y: 1.15 },
    xaxis: { title: { text: "trial" }, domain: [0, 0.62] }, xaxis2: { domain: [0.7, 1], title: { text: "round" }, anchor: "y" },
    yaxis: { range: [0, 1] },
  }, cfg);
}

function initHists() {
  const box = $("hists");
  box.innerHTML = "";
  for (const name of Object.keys(HIST_NAMES)) {
    const div = document.createElement("div");
    div.id = "hist-" + name;
    div.style.height = "170px";
    box.appendChild(div);
  }
}

function drawHist(name) {
  const v = hist[name] || [];
  Plotly.react($("hist-" + name), [{ x: v, type: "histogram", marker: { color: "#4a6fa5" } }], {
    title: { text: `${HIST_NAMES[name]}<br>n ${v.length}` + (v.length ? `, last ${v[v.length - 1]}` : ""), font: { size: 11 } },
    margin: { l: 30, r: 5, t: 36, b: 20 },
  }, cfg);
}

function drawHists() {  // only those with new values, each in a task of its own: an update
  const names = [...histDirty];  // that arrives meanwhile waits for one plot, not five
  histDirty.clear();
  names.forEach((name) => setTimeout(timed("hist", () => drawHist(name)), 0));
}

function setLoop(loop) {
  const w = loop.where || {};
  $("block").textContent = w.block ?? "–";
  $("round").textContent = w.round ?? "–";
  $("trial").textContent = w.trial ?? "–";
  $("state").textContent = loop.state;
  $("state").className = "pill " + loop.state;
  window.eegs.state = loop.state;
  const c = loop.counts || {};
  $("epochs").textContent = c.epochs ?? 0;
  $("flagged").textContent = c.flagged ?? 0;
  $("nrewards").textContent = c.rewards ?? 0;
}

function setImages(images) {
  $("images-key").textContent = images.key || "";
  const box = $("images");
  box.innerHTML = "";
  for (const im of images.items || []) {
    const fig = document.createElement("figure");
    const img = document.createElement("img");
    img.loading = "lazy";
    img.src = `image?token=${encodeURIComponent(TOKEN)}&path=${encodeURIComponent(im.path)}`;
    img.alt = im.image_id;
    const cap = document.createElement("figcaption");
    const parents = (im.parents || []).join(", ");
    cap.innerHTML = `<b class="kind-${im.kind}"></b> trial ${im.trial} · reward <b></b><br><span></span>`;
    cap.children[0].textContent = im.kind;
    cap.children[1].textContent = fmt(im.reward, 3);
    cap.querySelector("span").textContent = parents ? "parents " + parents : im.image_id;
    fig.append(img, cap);
    box.appendChild(fig);
  }
}

function setQuality(rows) {
  const body = $("quality").tBodies[0];
  const html = rows.map((r) => {
    const cls = r.flags.length ? ' class="bad"' : "";
    return `<tr${cls}><td>${esc(r.channel)}</td><td>${esc(r.flags.join(" "))}</td><td>${fmt(r.ptp_uv)}</td><td>${fmt(r.amplitude_uv)}</td>` +
      `<td>${fmt(r.line_share, 2)}</td><td>${fmt(r.drift_uv)}</td><td>${fmt(100 * r.flagged_epochs, 0)} %</td></tr>`;
  });
  body.innerHTML = html.join("");
}

function setAlerts(alerts) {
  $("alerts").innerHTML = "";
  for (const a of alerts.slice(-6).reverse()) {
    const div = document.createElement("div");
    div.className = a.level;
    div.textContent = `${new Date(a.t_event * 1000).toLocaleTimeString()}  ${a.text}`;
    $("alerts").appendChild(div);
  }
}

function addMarkers(markers) {
  const ul = $("markers");
  for (const m of markers) {
    const li = document.createElement("li");
    const extra = ["trial", "block", "round"].filter((k) => k in m).map((k) => `${k}=${m[k]}`).join(" ");
    li.textContent = `${new Date(m.t_event * 1000).toISOString().slice(11, 23)} ${m.event} ${extra}`;
    ul.prepend(li);
  }
  while (ul.children.length > 200) ul.removeChild(ul.lastChild);
}

function setWorker(w) {
  if (!w) { $("worker").textContent = "–"; return; }
  const s = w.status || {};
  const backend = (s.backend || {}).backend;
  const q = Object.entries(s.queue || {}).map(([k, v]) => `${k} ${v}`).join(", ");
  $("worker").textContent = (w.reachable ? "up" : "NOT REACHABLE") +
    ` · ${backend ?? "?"} on ${s.device ?? "?"}` + (s.gpu_memory_mb != null ? ` · GPU ${fmt(s.gpu_memory_mb, 0)} MB` : "") +
    ` · round ${s.round ?? "–"} · ${s.n_observations ?? 0} obs · best ${fmt(s.best_reward, 3)}` + (s.busy ? " · busy" : "") +
    (q ? ` · queue: ${q}` : "");
}

function setCalibration(c) {
  if (!c) return;
  const score = c.cv_r !== undefined ? `CV r ${fmt(c.cv_r, 3)} (p ${fmt(c.p_value, 3)})` : Object.entries(c).filter(([k]) => k.startsWith("cv")).map(([k, v]) => `${k} ${fmt(v, 3)}`).join(" ");
  $("calibration").textContent = `${c.reward || c.event}: ${score}` + (c.decodes === false ? ` · fallback ${c.fallback}` : "");
}

function setGP(gp) {
  const b = gp.best_by_round || [];
  $("gp").textContent = `round ${gp.round ?? "–"} · ${gp.n_points ?? "–"} points · refit ${fmt(gp.refit_ms, 0)} ms` +
    (gp.signal_to_noise != null ? ` · signal/noise ${fmt(gp.signal_to_noise, 2)} · lengthscale ${fmt(gp.lengthscale_median, 2)}` : "") +
    (b.length ? ` · best by round ${b.map((v) => fmt(v, 3)).join(" ")}` : "") + (gp.converged ? " · converged" : "");
}

function handle(msg) {
  const e = window.eegs;
  e.messages += 1;
  if (msg.kind === "snapshot") {
    e.snapshot = msg;
    $("session").textContent = msg.session + (msg.live ? "" : " (finished: read-only timeline)");
    initEEG(msg.channels || []);
    initHists();
    $("markers").innerHTML = "";
    rewards = msg.rewards || []; best = msg.best || {}; hist = msg.hist || {};
    rewardsDirty = true;
    Object.keys(HIST_NAMES).forEach((name) => histDirty.add(name));
    $("eeg-info").textContent = msg.sfreq ? `${msg.sfreq} Hz, ${channels.length} channels` : (msg.live ? "waiting for the stream" : "not recorded here");
  }
  if (msg.kind === "delta" && msg.channels) {
    initEEG(msg.channels);
    $("eeg-info").textContent = `${msg.sfreq} Hz, ${channels.length} channels`;
  }
  if (msg.eeg) addEEG(msg.eeg);
  if (msg.markers) addMarkers(msg.markers);
  if (msg.loop) setLoop(msg.loop);
  if (msg.images) setImages(msg.images);
  if (msg.quality) setQuality(msg.quality);
  if (msg.alerts) { setAlerts(msg.alerts); e.alerts = msg.alerts; }
  if (msg.worker !== undefined) setWorker(msg.worker);
  if (msg.calibration) setCalibration(msg.calibration);
  if (msg.gp) setGP(msg.gp);
  if (msg.kind === "delta" && msg.rewards) { rewards = rewards.concat(msg.rewards); rewardsDirty = true; }
  if (msg.best) best = msg.best;
  if (msg.kind === "delta" && msg.hist) {
    for (const [k, v] of Object.entries(msg.hist)) {
      hist[k] = (hist[k] || []).concat(v);
      histDirty.add(k);
    }
  }
  if (msg.t_events && msg.kind === "delta") {  // the page now shows them
    const now = Date.now() / 1000;
    for (const t of msg.t_events) {
      e.latencies.push(1000 * (now - t));
      e.serverLatencies.push(1000 * (msg.t_server - t));  // the part before the page got it
    }
    if (e.latencies.length > 5000) e.latencies.splice(0, e.latencies.length - 5000);
    if (e.serverLatencies.length > 5000) e.serverLatencies.splice(0, e.serverLatencies.length - 5000);
  }
}

setInterval(timed("rewards", () => { if (rewardsDirty) { drawRewards(); rewardsDirty = false; } }), 500);
setInterval(timed("slow", () => {
  drawHists();
  const l = window.eegs.latencies.slice(-200).sort((a, b) => a - b);
  if (l.length) $("delay").textContent = `update delay p95 ${l[Math.floor(0.95 * (l.length - 1))].toFixed(0)} ms`;
}), 1000);

function connect() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${location.host}/ws?token=${encodeURIComponent(TOKEN)}`);
  // each message acknowledged once shown: the server sends the next only then, merging
  // what came meanwhile, so a busy page gets fresh updates instead of a backlog
  ws.onmessage = timed("handle", (ev) => {
    try { handle(JSON.parse(ev.data)); } finally { ws.send("ack"); }  // a bad message too
  });
  ws.onclose = () => { $("state").textContent = "reconnecting"; setTimeout(connect, 1000); };
}

async function send(command, question) {
  if (!confirm(question)) return;
  const r = await fetch(`control?token=${encodeURIComponent(TOKEN)}`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ command }),
  });
  const body = await r.json().catch(() => ({}));
  $("control-result").textContent = r.ok ? `${command} sent` : `${command} failed: ${body.error || r.status}`;
}

if (CONTROLS) {
  $("controls").hidden = false;
  $("pause").onclick = () => send("pause", "Pause the presentation after the current trial?");
  $("resume").onclick = () => send("resume", "Resume the presentation?");
  $("abort").onclick = () => send("abort", "ABORT the session? The presentation stops now.");
}
connect();
