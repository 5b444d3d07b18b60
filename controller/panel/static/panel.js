// The instrument panel's page: one WebSocket, state pushed in changed sections, actions sent as JSON.
// No build step, no dependencies: served as is by controller/panel/_server.py.
"use strict";

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
};

let ws = null;
let state = {};
const history = [];  // audio load over time, for the plot
let lastBlocks = null;

// ------------------------------------------------------------------ connection
// The token: taken from ?token= once into this tab's sessionStorage (only this scheme, host and port read it)
// and out of the address bar; sent with the WebSocket (a subprotocol) and each upload (a header), never a cookie.
const TOKEN_KEY = "ensemble-panel-token";
function takeToken() {
  const url = new URL(location.href);
  const given = url.searchParams.get("token");
  if (given) {
    sessionStorage.setItem(TOKEN_KEY, given);
    url.searchParams.delete("token");
    window.history.replaceState(null, "", url.pathname + url.search + url.hash);  // (`history` is the plot's)
  }
  return sessionStorage.getItem(TOKEN_KEY);
}
const token = takeToken();

function connect() {
  if (!token) {
    $("#conn").textContent = "no token: open the URL `ensemble panel` prints"; $("#conn").className = "conn off";
    return;
  }
  ws = new WebSocket(`ws://${location.host}/ws`, ["ensemble-panel", `token.${token}`]);
  ws.onopen = () => { $("#conn").textContent = "live"; $("#conn").className = "conn on"; };
  ws.onclose = () => {
    $("#conn").textContent = "reconnecting"; $("#conn").className = "conn off";
    releaseAll(false);  // the panel ends the notes a page held when its socket goes
    setTimeout(connect, 1000);
  };
  ws.onmessage = (ev) => {
    const msg = JSON.parse(ev.data);
    if (msg.type === "state") { Object.assign(state, msg.data); render(msg.data); }
    else if (msg.type === "error") toast(msg.message);
  };
}

function send(action) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(action));
}

function toast(text) {
  const t = $("#toast");
  t.textContent = text; t.classList.remove("hidden");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.add("hidden"), 5000);
}

// ------------------------------------------------------------------ rendering, one section at a time
function render(d) {
  if ("error" in d) $("#conn").title = d.error || "";
  if (d.daemon) renderDaemon(d.daemon);
  if (d.loading) renderLoading(d.loading);
  if (d.params) renderParams(d.params);
  if (d.ui) renderUi(d.ui);
  if (d.audio) renderAudio(d.audio);
  if (d.jobs) renderJobs(d.jobs);
  if (d.actors) renderActors(d.actors);
  if (d.samples) renderSamples(d.samples);
  if (d.log) { const l = $("#log"); const end = l.scrollTop + l.clientHeight >= l.scrollHeight - 4;
               l.textContent = d.log.join("\n"); if (end) l.scrollTop = l.scrollHeight; }
}

function renderDaemon(d) {
  $("#daemon-name").textContent = `${d.name} · pid ${d.pid} · v${d.version}`;
  $("#script-path").textContent = d.script || "no script loaded";
  const ul = $("#script-errors"); ul.replaceChildren(...d.script_errors.map((e) => el("li", { text: e })));
  $("#workers-wanted").textContent = d.workers_wanted;
  $("#job-counts").textContent = `${d.queued} queued · ${d.running} running`;
}

function renderLoading(l) {
  const box = $("#loading");
  if (!l.task) { box.classList.add("hidden"); return; }
  box.classList.remove("hidden");
  $("#loading-task").textContent = l.task;
  $("#loading-fill").style.width = `${Math.round((l.progress || 0) * 100)}%`;
  $("#loading-status").textContent = l.status || "";
}

// Parameters: a control per type; a control being dragged or edited is not moved under the user's hand.
let paramKeys = "";
const busy = new Set();
let lastParams = [];  // the newest values heard: a control let go shows what arrived while it was held
function renderParams(params) {
  lastParams = params;
  const box = $("#params");
  const keys = params.map((p) => `${p.name}:${p.kind}:${p.min}:${p.max}:${p.choices}`).join("|");
  if (keys !== paramKeys) {
    paramKeys = keys;
    box.replaceChildren(...params.flatMap(makeParam));
    if (!params.length) box.append(el("p", { class: "muted", text: "no parameters" }));
  }
  for (const p of params) showParam(box, p);
}

function showParam(box, p) {
  const c = box.querySelector(`[data-param="${CSS.escape(p.name)}"]`);
  const out = box.querySelector(`[data-value="${CSS.escape(p.name)}"]`);
  if (!c || busy.has(p.name)) return;
  if (c.type === "checkbox") c.checked = !!p.value;
  else if (p.kind === "choice") c.value = String(choiceIndex(p, p.value));
  else c.value = p.value;
  if (out) out.textContent = fmt(p.value);
}

// A choice's option carries its index: the value sent is the choice itself (1, true), never its text ("1", "true").
function choiceIndex(p, value) {
  const i = p.choices.findIndex((x) => x === value);
  return i >= 0 ? i : p.choices.findIndex((x) => String(x) === String(value));
}

function fmt(v) { return typeof v === "number" && !Number.isInteger(v) ? v.toFixed(3) : String(v); }

// A slider only for a number with finite bounds (an infinite bound arrives as the string "inf" or "-inf").
function bounded(p) { return [p.min, p.max].every((b) => typeof b === "number" && Number.isFinite(b)); }

// What a control holds, as the parameter's value; throws Error saying why when a number field holds no number.
function controlValue(p, c) {
  if (p.kind === "bool") return c.checked;
  if (p.kind === "choice") return p.choices[Number(c.value)];
  if (p.kind !== "float" && p.kind !== "int") return c.value;
  const text = c.value.trim();
  const n = Number(text);
  if (text === "" || !Number.isFinite(n)) throw new Error(`${p.name}: not a number; the value stays ${fmt(currentValue(p))}`);
  if (p.kind === "int" && !Number.isInteger(n)) throw new Error(`${p.name}: a whole number is needed, got ${text}`);
  return n;
}

function currentValue(p) { const now = lastParams.find((x) => x.name === p.name); return now ? now.value : p.value; }

function makeParam(p) {
  let c;
  const numeric = p.kind === "float" || p.kind === "int";
  if (p.kind === "bool") c = el("input", { type: "checkbox" });
  else if (p.kind === "choice") c = el("select", {}, ...p.choices.map((x, i) => el("option", { value: String(i), text: String(x) })));
  else if (numeric && bounded(p)) {
    c = el("input", { type: "range", min: p.min, max: p.max, step: p.kind === "int" ? 1 : "any" });
  } else c = el("input", { type: numeric ? "number" : "text" });
  c.dataset.param = p.name;
  let timer = null, hold = null;
  const release = () => {  // let go: show the newest value heard for it (one may have come while it was held)
    hold = null;
    busy.delete(p.name);
    const now = lastParams.find((x) => x.name === p.name);
    if (now) showParam($("#params"), now);
  };
  const push = () => {
    timer = null;
    let value;
    try { value = controlValue(p, c); } catch (err) { toast(err.message); release(); return; }  // nothing sent
    send({ op: "param", name: p.name, value });
  };
  c.addEventListener("input", () => {
    busy.add(p.name);
    const out = document.querySelector(`[data-value="${CSS.escape(p.name)}"]`);
    try { if (out) out.textContent = fmt(controlValue(p, c)); } catch (err) { /* said on change */ }
    if (!timer && c.type === "range") timer = setTimeout(push, 50);  // at most 20 changes a second reach the controller
  });
  c.addEventListener("change", () => {
    if (timer) { clearTimeout(timer); }
    push();
    if (hold) { clearTimeout(hold); }
    if (!busy.has(p.name)) return;  // refused: already shown as it was
    hold = setTimeout(release, 400);  // the controller's echo of our own change lands meanwhile
  });
  return [el("label", { text: p.long_name, title: p.name }), c, el("span", { class: "mono", "data-value": p.name })];
}

// The script's own elements (add_button, add_label, add_progress).
function renderUi(items) {
  $("#ui-card").classList.toggle("hidden", items.length === 0);
  const box = $("#ui");
  const ids = items.map((i) => `${i.id}:${i.kind}`).join("|");
  if (box.dataset.ids !== ids) {
    box.dataset.ids = ids;
    box.replaceChildren(...items.map((i) => {
      if (i.kind === "button") {
        const b = el("button", { "data-ui": i.id });
        b.addEventListener("click", () => send({ op: "ui", id: i.id }));
        return b;
      }
      if (i.kind === "progress") {
        return el("div", { class: "progress", "data-ui": i.id }, el("span", { class: "caption" }),
                  el("div", { class: "bar" }, el("div", { class: "fill" })));
      }
      return el("div", { "data-ui": i.id, class: "label" });
    }));
  }
  for (const i of items) {
    const e = box.querySelector(`[data-ui="${CSS.escape(i.id)}"]`);
    e.classList.toggle("hidden", !i.visible);
    if (i.kind === "progress") {
      e.querySelector(".caption").textContent = i.text;
      e.querySelector(".fill").style.width = `${Math.round(i.value * 100)}%`;
      e.dataset.value = i.value;
    } else e.textContent = i.text;
  }
}

function renderAudio(a) {
  $("#voices").textContent = a.active_voices ?? 0;
  $("#peak-voices").textContent = a.peak_voices ?? 0;
  $("#xruns").textContent = a.xruns ?? 0;
  $("#backend").textContent = a.backend ? `${a.backend} ${a.samplerate} Hz / ${a.blocksize}` : "no processor";
  const load = a.load_p99 ?? 0;
  $("#dsp-load").textContent = a.backend ? `${(load * 100).toFixed(1)} %` : "-";
  $("#load-fill").style.width = `${Math.min(100, load * 100)}%`;
  const peak = a.output_peak ?? 0;  // linear; the meter spans -60..0 dBFS
  const db = peak > 0 ? 20 * Math.log10(peak) : -Infinity;
  $("#level-db").textContent = a.backend ? (db > -60 ? `${db.toFixed(1)} dBFS` : "silent") : "-";
  const fill = $("#level-fill");
  fill.style.width = `${Math.max(0, Math.min(100, (db + 60) / 60 * 100))}%`;
  fill.classList.toggle("clip", peak >= 1.0);
  if (a.blocks !== lastBlocks) { lastBlocks = a.blocks; history.push([load, a.load_max ?? 0]); }
  if (history.length > 240) history.shift();
  plot();
}

function plot() {
  const cv = $("#plot"); const g = cv.getContext("2d");
  g.clearRect(0, 0, cv.width, cv.height);
  const top = Math.max(0.05, ...history.map((h) => h[1]), ...history.map((h) => h[0])) * 1.2;  // auto-scaled
  const line = (idx, colour) => {
    g.strokeStyle = colour; g.beginPath();
    history.forEach((h, i) => {
      const x = (i / 239) * cv.width; const y = cv.height - Math.min(1, h[idx] / top) * cv.height;
      if (i) g.lineTo(x, y); else g.moveTo(x, y);
    });
    g.stroke();
  };
  line(1, "#8a6d2f"); line(0, "#4fa3ff");
  g.fillStyle = "#8b90a0"; g.font = "11px sans-serif";
  g.fillText(`${(top * 100).toFixed(0)} % of the block period · blue p99, amber max`, 6, 12);
}

function renderJobs(jobs) {
  const body = $("#jobs tbody");
  body.replaceChildren(...jobs.map((j) => {
    const fill = el("div", { class: "fill" }); fill.style.width = `${Math.round(j.progress * 100)}%`;
    const live = ["queued", "dispatched", "running"].includes(j.state);
    const cancel = el("button", { class: "cancel", text: "cancel" });
    cancel.addEventListener("click", () => send({ op: "cancel", id: j.id }));
    const props = Object.keys(j.properties).length ? JSON.stringify(j.properties) : "";
    const events = j.events.map((e) => e.slice(1).join(" ")).join("; ");
    return el("tr", { "data-job": j.id, "data-state": j.state },
      el("td", { text: j.id }), el("td", { class: "mono", text: j.name || j.fn }),
      el("td", { class: `state-${j.state}`, text: j.state }),
      el("td", {}, `${Math.round(j.progress * 100)}%`, el("div", { class: "bar" }, fill)),
      el("td", { text: j.error || j.status }), el("td", { class: "small mono", text: [props, events].filter(Boolean).join(" · ") }),
      el("td", {}, live ? cancel : ""));
  }));
}

function renderActors(actors) {
  $("#actors tbody").replaceChildren(...actors.map((a) => el("tr", { "data-actor": a.name },
    el("td", { text: a.name }), el("td", { text: a.role }), el("td", { text: a.pid }),
    el("td", { text: a.state }), el("td", { text: `${a.uptime}s` }), el("td", { text: a.restarts }),
    el("td", { text: `${a.heartbeat_age}s` }), el("td", { text: `${(a.rss / 1048576).toFixed(0)} MiB` }),
    el("td", { class: "small", text: a.detail }))));
}

function renderSamples(samples) {
  $("#samples").replaceChildren(...samples.map((s) => el("li", { "data-sample": s.name },
    `${s.name} — ${s.frames} frames, ${s.channels} ch, ${s.samplerate} Hz`)));
}

// ------------------------------------------------------------------ keyboard
const WHITE = [0, 2, 4, 5, 7, 9, 11];
const KEYMAP = "awsedftgyhujk";  // C to C, as most soft synths map the computer keyboard
let octave = 60;
const held = new Map();  // note -> source ("mouse" or the key)

function buildKeyboard() {
  const kb = $("#keyboard"); kb.replaceChildren();
  const first = 48; const last = 84; let whites = 0;
  for (let n = first; n <= last; n++) if (WHITE.includes(n % 12)) whites++;
  const w = 100 / whites; let x = 0;
  for (let n = first; n <= last; n++) {
    const white = WHITE.includes(n % 12);
    const k = el("div", { class: `key ${white ? "white" : "black"}`, "data-note": n, title: `note ${n}` });
    k.style.left = `${white ? x : x - w * 0.3}%`; k.style.width = `${white ? w : w * 0.6}%`;
    if (white) x += w;
    k.addEventListener("pointerdown", (e) => { e.preventDefault(); k.setPointerCapture(e.pointerId); noteOn(n, "mouse"); });
    k.addEventListener("pointerup", () => noteOff(n));
    k.addEventListener("pointercancel", () => noteOff(n));
    kb.append(k);
  }
}

function noteOn(n, src) {
  if (held.has(n)) return;
  held.set(n, src); send({ op: "note_on", note: n, velocity: 100 });
  document.querySelector(`[data-note="${n}"]`)?.classList.add("down");
}
function noteOff(n, tell = true) {
  if (!held.has(n)) return;
  held.delete(n);
  if (tell) send({ op: "note_off", note: n });
  document.querySelector(`[data-note="${n}"]`)?.classList.remove("down");
}
// Every held note let go (the window lost focus: its key ups will not come); ``tell`` false when the socket went
// (the panel ended them).
function releaseAll(tell = true) { for (const n of [...held.keys()]) noteOff(n, tell); keyNotes.clear(); }

const keyNotes = new Map();  // computer key -> the note its key down started (the octave may change while held)
document.addEventListener("keydown", (e) => {
  if (e.repeat || e.target.matches("input, select, textarea")) return;
  const key = e.key.toLowerCase();
  const i = KEYMAP.indexOf(key);
  if (i >= 0 && !keyNotes.has(key)) { keyNotes.set(key, octave + i); noteOn(octave + i, key); }
  if (key === "z") octave = Math.max(0, octave - 12);
  if (key === "x") octave = Math.min(115, octave + 12);
});
document.addEventListener("keyup", (e) => {
  const key = e.key.toLowerCase();
  if (!keyNotes.has(key)) return;
  const n = keyNotes.get(key);
  keyNotes.delete(key);
  if (held.get(n) === key) noteOff(n);  // the note this key started, whatever the octave is now
});
window.addEventListener("blur", () => releaseAll());

// ------------------------------------------------------------------ the rest of the page
function setup() {
  for (const b of document.querySelectorAll("nav button")) {
    b.addEventListener("click", () => {
      for (const o of document.querySelectorAll("nav button")) o.classList.toggle("active", o === b);
      for (const t of document.querySelectorAll(".tab")) t.classList.toggle("hidden", t.id !== `tab-${b.dataset.tab}`);
    });
  }
  $("#reload").addEventListener("click", () => send({ op: "reload" }));
  $("#scale").addEventListener("click", () => send({ op: "scale", workers: Number($("#scale-n").value) }));
  const drop = $("#drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", async (e) => {
    e.preventDefault(); drop.classList.remove("over");
    for (const f of e.dataTransfer.files) {
      const r = await fetch(`/samples?name=${encodeURIComponent(f.name)}`,
                            { method: "POST", body: f, headers: { "X-Ensemble-Token": token || "" } });
      const j = await r.json();
      $("#drop-result").textContent = j.ok ? j.detail : `refused: ${j.error}`;
    }
  });
  buildKeyboard();
  connect();
}

document.addEventListener("DOMContentLoaded", setup);
