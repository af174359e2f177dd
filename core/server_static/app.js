// The reelgraph web page: the queue with live per-node progress, cancel buttons, each finished job's videos and
// contact sheets, and a form to queue a workflow file with its params. Plain JavaScript, no build step, no CDN.
// The token comes once (the URL fragment #token=..., or the form), stays in this tab's sessionStorage, and goes
// only in the Authorization header: event streams and files are fetched with it (media as blob: URLs).
"use strict";

const TOKEN_KEY = "reelgraph-token";
const POLL_MS = 1500;
const MAX_STREAMS = 3;
const state = { token: null, timer: null, cards: new Map(), streams: new Map(), media: new Set(), workflow: null };
const $ = (sel, root = document) => root.querySelector(sel);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

// -- the token and the API ------------------------------------------------------------------------------------

function tokenFromFragment() {
  const match = /(?:^|&)token=([^&]+)/.exec(location.hash.slice(1));
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);  // the token leaves the address bar
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {}, { Authorization: "Bearer " + state.token });
  const res = await fetch("/api" + path, Object.assign({}, options, { headers, cache: "no-store" }));
  if (res.status === 401) {
    logout("The server refused this token.");
    throw new Error("unauthorized");
  }
  return res;
}

function filePath(id, name) {
  return `/jobs/${id}/files/` + name.split("/").map(encodeURIComponent).join("/");
}

function logout(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  clearInterval(state.timer);
  for (const ctrl of state.streams.values()) ctrl.abort();
  state.streams.clear();
  $("#app").hidden = true;
  $("#logout").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
}

async function connect(token) {
  state.token = token;
  const res = await api("/health");
  if (!res.ok) throw new Error(`health: ${res.status}`);
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#logout").hidden = false;
  await refresh();
  clearInterval(state.timer);
  state.timer = setInterval(refresh, POLL_MS);
}

// -- the queue ------------------------------------------------------------------------------------------------

async function refresh() {
  if (!state.token) return;
  try {
    const [jobsRes, healthRes] = await Promise.all([api("/jobs?limit=50"), api("/health")]);
    const page = await jobsRes.json();
    const health = await healthRes.json();
    $("#health").textContent = `v${health.version} · ${health.workers} worker(s) · ${health.jobs.queued} queued · ` +
      `${health.jobs.running} running · ${health.jobs.finished} finished`;
    renderJobs(page.jobs);
  } catch (err) {
    if (err.message !== "unauthorized") $("#health").textContent = "server unreachable: " + err.message;
  }
}

function renderJobs(jobs) {
  const list = $("#jobs");
  $("#jobs-empty").hidden = jobs.length > 0;
  jobs.forEach((job, index) => {
    let card = state.cards.get(job.id);
    if (!card) {
      card = makeCard(job);
      state.cards.set(job.id, card);
    }
    if (list.children[index] !== card) list.insertBefore(card, list.children[index] || null);
    updateCard(card, job);
  });
}

function makeCard(job) {
  const cancel = el("button", { class: "cancel", type: "button", text: "Cancel" });
  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    await api(`/jobs/${job.id}/cancel`, { method: "POST" });
    refresh();
  });
  return el("div", { class: "job", "data-job-id": job.id },
    el("div", { class: "job-head" }, el("span", { class: "status" }), el("strong", { text: job.name || "workflow" }),
      el("code", { text: job.id }), el("span", { class: "muted timing" }), cancel),
    el("div", { class: "nodes" }), el("p", { class: "error job-error" }), el("div", { class: "media" }),
    el("p", { class: "outputs" }));
}

function updateCard(card, job) {
  card.dataset.status = job.status;
  const status = $(".status", card);
  status.textContent = job.status;
  status.className = "status status-" + job.status;
  const t = job.timings;
  const parts = [];
  if (t.run_seconds != null) parts.push(`ran ${t.run_seconds.toFixed(2)}s`);
  if (t.queued_seconds != null) parts.push(`waited ${t.queued_seconds.toFixed(2)}s`);
  if (job.attempts > 1) parts.push(`attempt ${job.attempts}`);
  $(".timing", card).textContent = parts.join(" · ");
  $(".cancel", card).hidden = !(job.status === "queued" || job.status === "running");
  const err = job.error;
  $(".job-error", card).textContent = err && job.status !== "cancelled"
    ? `${err.code}${err.node ? " at " + err.node + (err.input ? "." + err.input : "") : ""}: ${err.message}` : "";
  // Browsers open at most 6 connections to a server: follow a few running jobs live, poll for the rest.
  if (job.status === "running" && state.streams.size < MAX_STREAMS) follow(job.id);
  if (job.status === "finished" || job.status === "failed") {
    for (const [name, node] of Object.entries(job.timings.nodes || {})) {
      setNode(card, name, null, node.status === "cached" ? "cached" : "done", 1,
              node.status === "cached" ? "cached" : `${node.seconds.toFixed(2)}s`);
    }
    showMedia(card, job);
    const outs = Object.entries(job.outputs).map(([k, v]) => `${k} = ${typeof v === "string" ? v : JSON.stringify(v)}`);
    $(".outputs", card).textContent = outs.join("  ·  ");
  }
}

// -- live progress from the event stream ----------------------------------------------------------------------

function setNode(card, node, type, kind, fraction, text) {
  const grid = $(".nodes", card);
  let row = grid.querySelector(`[data-node="${CSS.escape(node)}"]`);
  if (!row) {
    const bar = el("div", { class: "bar" }, el("div"));
    row = el("span", { "data-node": node, text: type ? `${node} (${type})` : node });
    grid.append(row, bar, el("span", { class: "muted" }));
  }
  const bar = row.nextElementSibling;
  if (type) row.textContent = `${node} (${type})`;
  bar.className = "bar" + (kind ? " " + kind : "");
  bar.dataset.state = kind || "running";
  bar.firstElementChild.style.width = `${Math.round(Math.min(1, Math.max(0, fraction)) * 100)}%`;
  bar.nextElementSibling.textContent = text;
}

function onEvent(id, ev) {
  const card = state.cards.get(id);
  if (!card || !ev.node) {
    if (ev.event === "run_finished") refresh();
    return;
  }
  if (ev.event === "node_started") setNode(card, ev.node, ev.node_type, "", 0, "running");
  else if (ev.event === "node_progress") setNode(card, ev.node, ev.node_type, "", ev.i / ev.n, `${ev.i}/${ev.n}`);
  else if (ev.event === "node_stage") setNode(card, ev.node, ev.node_type, "", 0, ev.message);
  else if (ev.event === "node_finished") setNode(card, ev.node, ev.node_type, "done", 1, `${ev.seconds.toFixed(2)}s`);
  else if (ev.event === "node_cached") setNode(card, ev.node, ev.node_type, "cached", 1, "cached");
  else if (ev.event === "node_failed") setNode(card, ev.node, ev.node_type, "failed", 1, "failed");
}

function parseFrame(frame) {
  const out = { event: "message", data: "", id: null };
  let any = false;
  for (const line of frame.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "data") out.data += (out.data ? "\n" : "") + value;
    else if (field === "event") out.event = value;
    else if (field === "id") out.id = value;
    any = true;
  }
  return any ? out : null;
}

async function follow(id) {
  if (state.streams.has(id)) return;
  const ctrl = new AbortController();
  state.streams.set(id, ctrl);
  let last = 0;
  try {
    for (let tries = 0; tries < 30 && !ctrl.signal.aborted; tries++) {
      const headers = last ? { "Last-Event-ID": String(last) } : {};
      const res = await api(`/jobs/${id}/events`, { signal: ctrl.signal, headers });
      if (!res.ok) break;
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      let ended = false;
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const frame = parseFrame(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
          if (!frame) continue;
          if (frame.id) last = Number(frame.id);
          if (frame.event === "end") ended = true;
          else onEvent(id, JSON.parse(frame.data));
        }
      }
      if (ended) break;
      await sleep(1000);  // dropped (server restart, slow reader): resume after the last event seen
    }
  } catch (err) {
    // aborted, or the server went away: the next poll starts a new stream for a job still running
  } finally {
    state.streams.delete(id);
  }
  refresh();
}

// -- finished jobs: videos and contact sheets -----------------------------------------------------------------

async function showMedia(card, job) {
  const box = $(".media", card);
  const isVideo = (name) => /\.(mp4|webm|mov|m4v)$/i.test(name);
  const files = [...job.files.filter(isVideo), ...job.files.filter((name) => !isVideo(name))];
  for (const name of files) {
    const key = job.id + "/" + name;
    if (state.media.has(key)) continue;
    state.media.add(key);
    const ext = name.split(".").pop().toLowerCase();
    const video = ["mp4", "webm", "mov", "m4v"].includes(ext);
    const image = ["png", "jpg", "jpeg", "gif", "webp"].includes(ext);
    const caption = el("figcaption", { text: name });
    if (!video && !image) {
      const link = el("a", { href: "#", text: name });
      link.addEventListener("click", (e) => { e.preventDefault(); download(job.id, name); });
      box.append(el("figure", {}, link));
      continue;
    }
    const res = await api(filePath(job.id, name));
    if (!res.ok) { state.media.delete(key); continue; }
    const url = URL.createObjectURL(await res.blob());
    const media = video
      ? el("video", { src: url, controls: "", autoplay: "", loop: "", muted: "", playsinline: "", "data-file": name })
      : el("img", { src: url, alt: name, "data-file": name, class: /sheet/i.test(name) ? "sheet" : "" });
    if (video) media.muted = true;
    box.append(el("figure", {}, media, caption));
  }
}

async function download(id, name) {
  const res = await api(filePath(id, name));
  if (!res.ok) return;
  const url = URL.createObjectURL(await res.blob());
  const a = el("a", { href: url, download: name.split("/").pop() });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// -- submitting a workflow ------------------------------------------------------------------------------------

function paramInput(name, spec) {
  const type = spec.type || "str";
  const value = spec.default;
  let input;
  if (type === "bool") {
    input = el("input", { type: "checkbox", name });
    input.checked = Boolean(value);
  } else if (type === "json") {
    input = el("textarea", { name, rows: "2" });
    input.value = value === undefined ? "" : JSON.stringify(value);
  } else {
    input = el("input", { type: type === "int" || type === "float" ? "number" : "text", name });
    if (type === "float") input.step = "any";
    if (value !== undefined && value !== null) input.value = String(value);
  }
  input.dataset.type = type;
  if (value === undefined) input.placeholder = "required";
  const label = el("label", { class: "param" }, el("span", { text: `${name} (${type})` }), input);
  if (spec.description) label.append(el("small", { text: spec.description }));
  return label;
}

function readParams() {
  const params = {};
  for (const input of document.querySelectorAll("#params [name]")) {
    const type = input.dataset.type;
    if (type === "bool") { params[input.name] = input.checked; continue; }
    const text = input.value;
    if (text === "") continue;  // left to its default (or reported as missing_param)
    if (type === "int") params[input.name] = Number.parseInt(text, 10);
    else if (type === "float") params[input.name] = Number.parseFloat(text);
    else if (type === "json") {
      try { params[input.name] = JSON.parse(text); } catch (err) { throw new Error(`${input.name}: ${err.message}`); }
    } else params[input.name] = text;
  }
  return params;
}

function showProblems(lines) {
  const list = $("#problems");
  list.replaceChildren(...lines.map((text) => el("li", { text })));
}

async function loadWorkflow(file) {
  state.workflow = null;
  $("#submit").disabled = true;
  $("#params").replaceChildren();
  showProblems([]);
  try {
    state.workflow = JSON.parse(await file.text());
  } catch (err) {
    $("#workflow-info").textContent = "";
    showProblems([`${file.name} is not JSON: ${err.message}`]);
    return;
  }
  const wf = state.workflow;
  $("#workflow-info").textContent = [wf.name, wf.description].filter(Boolean).join(": ");
  const params = wf.params && typeof wf.params === "object" ? wf.params : {};
  $("#params").replaceChildren(...Object.entries(params).map(([name, spec]) => paramInput(name, spec || {})));
  $("#submit").disabled = false;
}

async function submitJob(event) {
  event.preventDefault();
  if (!state.workflow) return;
  let params;
  try { params = readParams(); } catch (err) { showProblems([err.message]); return; }
  const res = await api("/jobs", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ workflow: state.workflow, params }),
  });
  const body = await res.json();
  if (res.status === 201) {
    showProblems([]);
    $("#workflow-info").textContent = `queued ${body.id}`;
    refresh();
  } else if (body.problems) {
    showProblems(body.problems.map((p) =>
      `${p.code}${p.node ? ": nodes." + p.node + (p.input ? ".inputs." + p.input : "") : p.input ? ": " + p.input : ""}` +
      `: ${p.message}`));
  } else {
    showProblems([`${res.status} ${body.error ? body.error.code + ": " + body.error.message : ""}`]);
  }
}

// -- start ----------------------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("#token-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = $("#token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, token);
    $("#token").value = "";
    try { await connect(token); } catch (err) { if (err.message !== "unauthorized") logout(err.message); }
  });
  $("#logout").addEventListener("click", () => logout(""));
  $("#workflow-file").addEventListener("change", (e) => { if (e.target.files[0]) loadWorkflow(e.target.files[0]); });
  $("#params-form").addEventListener("submit", submitJob);
  const token = tokenFromFragment();
  if (token) connect(token).catch((err) => { if (err.message !== "unauthorized") logout(err.message); });
  else logout("");
});
