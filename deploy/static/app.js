// sketch-rnn demo page: plain JavaScript, no build step, no external files.
// Everything goes through the server's TF Serving-style REST API (columnar "inputs" format).
"use strict";

const QUICKDRAW_SIZE = 255;   // drawings are scaled like Quick Draw's simplified set (0..255)
const RDP_EPSILON = 2.0;      // and simplified with the same Ramer-Douglas-Peucker tolerance


const state = {
  config: null,      // the chosen model of /config.json: model_name, signatures, max_seq_len, ...
  models: [],        // every model the server serves (/config.json "models")
  requests: {},      // box id -> number of the latest request; older answers are dropped
  animationMs: 1500, // a generated sketch is drawn stroke by stroke over this time
  strokes: [],       // what is on the canvas: [[[x, y], ...], ...] in canvas pixels
  current: null,     // the stroke being drawn
  kept: { A: null, B: null },  // stroke-3 drawings kept for the interpolation
};

const $ = (id) => document.getElementById(id);

function setStatus(text, isError) {
  const el = $("status");
  el.textContent = text;
  el.className = isError ? "error" : "";
}

// --- drawing on the canvas (pointer events cover mouse, pen and touch) ---

const pad = $("pad");
const ctx = pad.getContext("2d");

function canvasPoint(event) {
  const r = pad.getBoundingClientRect();
  return [(event.clientX - r.left) * pad.width / r.width, (event.clientY - r.top) * pad.height / r.height];
}

function redraw() {
  ctx.clearRect(0, 0, pad.width, pad.height);
  ctx.lineWidth = 3;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.strokeStyle = "#000";
  for (const stroke of state.strokes.concat(state.current ? [state.current] : [])) {
    ctx.beginPath();
    stroke.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
    if (stroke.length === 1) ctx.lineTo(stroke[0][0] + 0.1, stroke[0][1]);
    ctx.stroke();
  }
}

pad.addEventListener("pointerdown", (e) => {
  e.preventDefault();
  pad.setPointerCapture(e.pointerId);
  state.current = [canvasPoint(e)];
  redraw();
});
pad.addEventListener("pointermove", (e) => {
  if (!state.current) return;
  const p = canvasPoint(e);
  const last = state.current[state.current.length - 1];
  if (Math.hypot(p[0] - last[0], p[1] - last[1]) >= 1) {
    state.current.push(p);
    redraw();
  }
});
function endStroke() {
  const lifted = state.current;
  if (lifted) state.strokes.push(lifted);
  state.current = null;
  redraw();
  // The model finishes the drawing each time the pen is lifted (as magenta's demos do).
  if (lifted && $("auto-finish").checked && state.config) $("complete").click();
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

$("clear").onclick = () => { state.strokes = []; redraw(); };
$("undo").onclick = () => { state.strokes.pop(); redraw(); };
$("temperature").oninput = () => { $("temperature-value").textContent = temperature().toFixed(2); };

// --- canvas strokes -> stroke-3 as the model saw in training ---

function rdp(points, epsilon) {
  // Ramer-Douglas-Peucker on one polyline (distance to the line through the end points).
  if (points.length < 3) return points.slice();
  const [ax, ay] = points[0];
  const [bx, by] = points[points.length - 1];
  const dx = bx - ax, dy = by - ay, norm = Math.hypot(dx, dy);
  let best = -1, index = 0;
  for (let i = 1; i < points.length - 1; i++) {
    const [px, py] = points[i];
    const d = norm > 0 ? Math.abs(dy * px - dx * py + bx * ay - by * ax) / norm : Math.hypot(px - ax, py - ay);
    if (d > best) { best = d; index = i; }
  }
  if (best <= epsilon) return [points[0], points[points.length - 1]];
  const left = rdp(points.slice(0, index + 1), epsilon);
  return left.slice(0, -1).concat(rdp(points.slice(index), epsilon));
}

function toStroke3(strokes, maxLen, resimplify) {
  // Align to the top-left, scale to max 255, simplify, round; offsets from the previous point
  // (the first from the origin); pen_lifted = 1 on the last point of each stroke.
  const all = strokes.flat();
  if (!all.length) return null;
  const minX = Math.min(...all.map((p) => p[0])), minY = Math.min(...all.map((p) => p[1]));
  const extent = Math.max(...all.map((p) => Math.max(p[0] - minX, p[1] - minY)), 1e-6);
  const scaled = strokes.map((s) => s.map(([x, y]) => [(x - minX) * QUICKDRAW_SIZE / extent,
                                                         (y - minY) * QUICKDRAW_SIZE / extent]));
  for (let epsilon = RDP_EPSILON; ; epsilon *= 1.5) {
    const rows = [];
    let px = 0, py = 0;
    for (const stroke of scaled) {
      let simple = rdp(stroke, epsilon).map(([x, y]) => [Math.round(x), Math.round(y)]);
      // The model's training data was simplified again at this tolerance (--resimplify-epsilon).
      if (resimplify > 0) simple = rdp(simple, resimplify);
      if (simple.length === 1) simple.push(simple[0]);
      simple.forEach(([x, y], i) => {
        rows.push([x - px, y - py, i === simple.length - 1 ? 1 : 0]);
        px = x; py = y;
      });
    }
    if (!maxLen || rows.length <= maxLen || epsilon > 64) return rows.slice(0, maxLen || rows.length);
  }
}

// --- the REST API ---

async function predict(signature, inputs) {
  const url = `/v1/models/${encodeURIComponent(state.config.model_name)}:predict`;
  window.sketchRnn.requested.push(url);
  const response = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ signature_name: signature, inputs }),
  });
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok || body.error) throw new Error(body.error || `HTTP ${response.status}`);
  return body.outputs;
}

function temperature() { return parseFloat($("temperature").value); }
function clampInt(id, lo, hi) { return Math.max(lo, Math.min(hi, parseInt($(id).value, 10) || lo)); }
function newSeed() { return Math.floor(Math.random() * 2147483647); }

// --- stroke-3 -> inline SVG ---

const SVG_NS = "http://www.w3.org/2000/svg";

function strokesToSvg(rows, length, prefixLength, size, caption) {
  // rows: stroke-3 [N, 3] (padded); the first `length` are real. Rows before `prefixLength` are
  // the user's (grey), the rest the model's (black). Each pen-down run becomes one <path>.
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("width", size);
  svg.setAttribute("height", size);
  svg.setAttribute("viewBox", `0 0 ${size} ${size}`);
  const points = [];
  let x = 0, y = 0;
  for (let i = 0; i < length; i++) {
    x += rows[i][0]; y += rows[i][1];
    points.push([x, y, rows[i][2], i]);
  }
  if (points.length) {
    const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
    const minX = Math.min(...xs), minY = Math.min(...ys);
    const extent = Math.max(Math.max(...xs) - minX, Math.max(...ys) - minY, 1e-6);
    const padding = 8, scale = (size - 2 * padding) / extent;
    const offX = padding + ((size - 2 * padding) - (Math.max(...xs) - minX) * scale) / 2;
    const offY = padding + ((size - 2 * padding) - (Math.max(...ys) - minY) * scale) / 2;
    let run = [];
    const flush = () => {
      if (!run.length) return;
      if (run.length === 1) run.push(run[0]);
      const d = run.map(([px, py], j) => `${j ? "L" : "M"}${((px - minX) * scale + offX).toFixed(1)},` +
                                         `${((py - minY) * scale + offY).toFixed(1)}`).join(" ");
      const path = document.createElementNS(SVG_NS, "path");
      path.setAttribute("d", d);
      path.setAttribute("class", run[run.length - 1][3] < prefixLength ? "prefix" : "ending");
      svg.appendChild(path);
      run = [];
    };
    for (const p of points) {
      run.push(p);
      if (p[2] >= 0.5 || p[3] === prefixLength - 1) flush();
    }
    flush();
  }
  const figure = document.createElement("figure");
  figure.appendChild(svg);
  if (caption) {
    const fc = document.createElement("figcaption");
    fc.textContent = caption;
    figure.appendChild(fc);
  }
  return figure;
}

function animate(svg) {
  // Draws the model's paths one after the other, each at the pen's pace (stroke-dashoffset from
  // the path's length to 0); the user's own strokes (.prefix) are shown at once.
  const paths = [...svg.querySelectorAll("path.ending")];
  const lengths = paths.map((p) => p.getTotalLength());
  const total = lengths.reduce((a, b) => a + b, 0);
  if (!total || !paths[0].animate) return;
  let start = 0;
  paths.forEach((path, i) => {
    const len = Math.max(lengths[i], 0.01), dash = `${len} ${len}`;
    path.animate([{ strokeDasharray: dash, strokeDashoffset: len }, { strokeDasharray: dash, strokeDashoffset: 0 }],
                 { duration: state.animationMs * len / total, delay: state.animationMs * start / total,
                   fill: "backwards" });
    start += len;
  });
}

function show(containerId, outputs, prefixLength, captions) {
  const box = $(containerId);
  box.replaceChildren();
  outputs.strokes.forEach((rows, i) => {
    const figure = strokesToSvg(rows, outputs.lengths[i], prefixLength, 140, captions ? captions[i] : "");
    box.appendChild(figure);
    animate(figure.querySelector("svg"));
  });
  box.dataset.state = "done";
}

// --- latent interpolation (spherical, as in the paper) ---

function slerp(z0, z1, t) {
  const dot = z0.reduce((s, v, i) => s + v * z1[i], 0);
  const n0 = Math.hypot(...z0), n1 = Math.hypot(...z1);
  const omega = Math.acos(Math.max(-1, Math.min(1, dot / Math.max(n0 * n1, 1e-12))));
  const so = Math.sin(omega);
  if (Math.abs(so) < 1e-6) return z0.map((v, i) => (1 - t) * v + t * z1[i]);
  return z0.map((v, i) => (Math.sin((1 - t) * omega) * v + Math.sin(t * omega) * z1[i]) / so);
}

// --- buttons ---

function currentDrawing() {
  const rows = toStroke3(state.strokes, state.config.max_seq_len, state.config.resimplify_epsilon || 0);
  if (!rows || rows.length < 2) throw new Error("draw something first (at least one stroke)");
  return rows;
}

async function run(button, containerId, work) {
  // One request per click; when clicks overlap (the pen lifted twice quickly), only the answer to
  // the latest one is shown: `work(fresh)` renders only while fresh() is true.
  const box = containerId ? $(containerId) : null;
  const id = (state.requests[containerId] || 0) + 1;
  state.requests[containerId] = id;
  const fresh = () => state.requests[containerId] === id;
  try {
    if (box) box.dataset.state = "busy";
    setStatus("asking the model\u2026");
    await work(fresh);
    if (fresh()) setStatus("");
  } catch (err) {
    if (!fresh()) return;
    if (box) box.dataset.state = "error";
    setStatus(String(err.message || err), true);
  }
}

$("complete").onclick = (e) => run(e.target, "candidates", async (fresh) => {
  const rows = currentDrawing();
  const num = clampInt("count", 1, state.config.max_num);
  const out = await predict("complete", { strokes: [rows], lengths: [rows.length], num,
                                          temperature: temperature(), seed: newSeed() });
  if (fresh()) show("candidates", out, rows.length);
});

$("sample").onclick = (e) => run(e.target, "samples", async (fresh) => {
  const num = clampInt("count", 1, state.config.max_num);
  const out = await predict("sample", { num, temperature: temperature(), seed: newSeed() });
  if (fresh()) show("samples", out, 0);
});

$("reconstruct").onclick = (e) => run(e.target, "samples", async (fresh) => {
  const rows = currentDrawing();
  const num = clampInt("count", 1, state.config.max_num);
  const { mu } = await predict("encode", { strokes: [rows], lengths: [rows.length] });
  const out = await predict("decode", { z: Array(num).fill(mu[0]), temperature: temperature(), seed: newSeed() });
  if (fresh()) show("samples", out, 0);
});

function keep(name) {
  const rows = currentDrawing();
  state.kept[name] = rows;
  const box = $("kept");
  box.replaceChildren();
  for (const key of ["A", "B"]) {
    const r = state.kept[key];
    if (r) box.appendChild(strokesToSvg(r, r.length, 0, 70, key));
  }
  setStatus(`kept your drawing as ${name}`);
}
$("keep-a").onclick = () => { try { keep("A"); } catch (err) { setStatus(err.message, true); } };
$("keep-b").onclick = () => { try { keep("B"); } catch (err) { setStatus(err.message, true); } };

$("interpolate").onclick = (e) => run(e.target, "interpolation", async (fresh) => {
  const { A, B } = state.kept;
  if (!A || !B) throw new Error("keep two drawings first (Keep as A, then Keep as B)");
  const n = Math.max(A.length, B.length);
  const padRows = (r) => r.concat(Array.from({ length: n - r.length }, () => [0, 0, 0]));
  const { mu } = await predict("encode", { strokes: [padRows(A), padRows(B)], lengths: [A.length, B.length] });
  const steps = clampInt("steps", 2, state.config.max_num);
  const ts = Array.from({ length: steps }, (_, i) => i / (steps - 1));
  const z = ts.map((t) => slerp(mu[0], mu[1], t));
  // One seed for every frame, so the frames differ only by z.
  const out = await predict("decode", { z, temperature: Math.min(temperature(), 0.25), seed: 7 });
  if (fresh()) show("interpolation", out, 0, ts.map((t) => `t=${t.toFixed(2)}`));
});

// --- start ---

function chooseModel(name) {
  const c = state.models.find((m) => m.model_name === name) || state.models[0];
  state.config = c;
  $("model").value = c.model_name;
  $("model-info").textContent = `version ${c.version}: ` +
    `signatures ${c.signatures.join(", ")}; up to ${c.max_seq_len} points, ${c.max_num} sketches a request` +
    (c.classes && c.classes.length ? `; trained on ${c.classes.join(", ")}` : "");
  $("count").max = String(Math.min(16, c.max_num));
  const conditional = c.signatures.includes("encode") && c.signatures.includes("decode");
  for (const id of ["reconstruct", "keep-a", "keep-b", "interpolate"]) $(id).disabled = !conditional;
  for (const id of ["candidates", "samples", "interpolation"]) {  // what another model drew
    $(id).replaceChildren();
    $(id).dataset.state = "empty";
  }
}

async function init() {
  try {
    const response = await fetch("/config.json");
    const config = await response.json();
    state.models = config.models || [config];  // servers before several models: one, at the top level
    $("model").replaceChildren(...state.models.map((m) => new Option(m.model_name, m.model_name)));
    $("model").onchange = () => chooseModel($("model").value);
    chooseModel(new URLSearchParams(location.search).get("model") || state.models[0].model_name);
    document.body.dataset.ready = "1";
  } catch (err) {
    setStatus(`cannot reach the server: ${err.message || err}`, true);
  }
}

window.sketchRnn = { toStroke3, slerp, strokesToSvg, show, state, requested: [] };
init();
