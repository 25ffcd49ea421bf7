"""The explorer page: plain HTML, CSS and JS; `__DATA__` is replaced by the run data (JSON)."""

TEMPLATE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>attnzoo attention explorer</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 16px 24px; color: #222; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 15px; margin: 18px 0 6px; }
small, .note { color: #666; font-weight: normal; }
#controls { display: flex; flex-wrap: wrap; gap: 18px; align-items: center; padding: 8px 10px;
  background: #f3f4f6; border-radius: 6px; }
#controls label.off { color: #aaa; }
#strip { display: flex; flex-wrap: wrap; gap: 2px; }
.tok { width: 48px; border: 1px solid #ccc; border-radius: 3px; text-align: center;
  font: 10px ui-monospace, monospace; cursor: pointer; padding: 1px 0; }
.tok b { display: block; font-size: 13px; }
.tok span { display: block; } .tok .r1 { border-top: 1px dashed #999; }
.tok.q { outline: 3px solid #e6550d; outline-offset: -1px; }
.tok.dark { color: #fff; }
#rowinfo { margin-top: 6px; font-family: ui-monospace, monospace; }
.figs { display: flex; flex-wrap: wrap; gap: 20px; }
.col h2 { width: 0; min-width: 100%; }  /* headings wrap instead of widening the column */
figure { margin: 0; } figcaption { font-size: 12px; color: #444; max-width: 400px; }
canvas { image-rendering: pixelated; border: 1px solid #bbb; display: block; }
.grid { border-collapse: collapse; margin-right: 24px; }
.grid td { padding: 3px; text-align: center; font-size: 11px; vertical-align: top; }
.grid td.sel { background: #fbd3bb; }
.grid td.sel canvas { border-color: #e6550d; }
.grid th { font-size: 12px; padding: 0 4px; }
.grid canvas { cursor: pointer; margin: auto; }
</style></head>
<body>
<h1>Attention explorer <small id="meta"></small></h1>
<div id="controls">
  <label>layer <select id="layer"></select></label>
  <label>head <select id="head"></select></label>
  <label><input type="checkbox" id="teach"> teaching mode: softmax(q&middot;k / &radic;D / &tau;)
    recomputed here from the raw q, k</label>
  <label id="causal-l" class="off"><input type="checkbox" id="causal" disabled> causal mask</label>
  <label id="temp-l" class="off">temperature &tau; <input type="range" id="temp" min="0.1"
    max="4" step="0.05" value="1" disabled> <span id="tempval">1.00</span></label>
</div>
<h2>Tokens <small>click a query token (outlined); every key shows the weight the query puts on
  it<span id="legend"></span></small></h2>
<div id="strip"></div>
<div id="rowinfo"></div>
<div class="figs">
<div class="col"><h2>Selected head <small>rows: queries, columns: keys; colour &radic;weight (white 0,
  navy 1); click a row to pick the query</small></h2>
<div class="figs" id="mats"></div></div>
<div class="col"><h2>All heads <small>the model's attention; ind: prefix-matching score, prev:
  previous-token score; click to select</small></h2>
<div class="figs" id="grids"></div></div>
</div>
<script id="data" type="application/json">__DATA__</script>
<script>
'use strict';
const DATA = JSON.parse(document.getElementById('data').textContent);
const T = DATA.T, $ = id => document.getElementById(id);

function decode(s, Type) {
  const bin = atob(s), bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new Type(bytes.buffer);
}
const runs = DATA.runs.map(r => Object.assign(r, {
  A: decode(r.attn, Uint16Array), qs: decode(r.q, Float32Array), ks: decode(r.k, Float32Array)}));
const S = {layer: 0, head: 0, query: T - 1, teach: false, causal: runs[0].causal, temp: 1};
const has = run => S.layer < run.L && S.head < run.H;
runs[0].induction.forEach((scores, l) => scores.forEach((x, h) => {  // open on the best
  if (x > runs[0].induction[S.layer][S.head]) { S.layer = l; S.head = h; }  // induction head
}));

// Row i of head (l, h): the model's effective weights or, in teaching mode,
// softmax(q_i . k_j / sqrt(D) / temp) over keys j (only j <= i under the causal mask).
function row(run, l, h, i, teach) {
  const w = new Float64Array(T);
  if (!teach) {
    const off = ((l * run.H + h) * T + i) * T;
    for (let j = 0; j < T; j++) w[j] = run.A[off + j] / 65535;
    return w;
  }
  const D = run.D, base = (l * run.H + h) * T * D, scale = 1 / (Math.sqrt(D) * S.temp);
  const n = S.causal ? i + 1 : T;
  let max = -Infinity, sum = 0;
  for (let j = 0; j < n; j++) {
    let s = 0;
    for (let d = 0; d < D; d++) s += run.qs[base + i * D + d] * run.ks[base + j * D + d];
    w[j] = s * scale;
    max = Math.max(max, w[j]);
  }
  for (let j = 0; j < n; j++) { w[j] = Math.exp(w[j] - max); sum += w[j]; }
  for (let j = 0; j < n; j++) w[j] /= sum;
  return w;
}
const matrix = (run, l, h, teach) => Array.from({length: T}, (_, i) => row(run, l, h, i, teach));

const heat = w => { const t = Math.sqrt(Math.min(Math.max(w, 0), 1));
  return [255 - 247 * t, 255 - 207 * t, 255 - 148 * t]; };
const diverge = scale => d => { const t = Math.min(Math.abs(d) / scale, 1);
  return d > 0 ? [255, 255 - 200 * t, 255 - 200 * t] : [255 - 200 * t, 255 - 200 * t, 255]; };

function paint(canvas, m, color, size, query) {
  const img = new ImageData(T, T);
  for (let i = 0; i < T; i++) for (let j = 0; j < T; j++) {
    const c = color(m[i][j]), p = 4 * (i * T + j);
    img.data[p] = c[0]; img.data[p + 1] = c[1]; img.data[p + 2] = c[2]; img.data[p + 3] = 255;
  }
  const off = document.createElement('canvas');
  off.width = off.height = T;
  off.getContext('2d').putImageData(img, 0, 0);
  canvas.width = canvas.height = size;
  const ctx = canvas.getContext('2d');
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(off, 0, 0, size, size);
  if (query !== undefined) {
    ctx.strokeStyle = '#e6550d'; ctx.lineWidth = 2;
    ctx.strokeRect(1, query * size / T, size - 2, Math.max(size / T, 2));
  }
}

function figure(parent, caption, draw, onclick) {
  const fig = document.createElement('figure'), cv = document.createElement('canvas');
  const cap = document.createElement('figcaption');
  cap.textContent = caption;
  draw(cv);
  if (onclick) cv.onclick = e => onclick(e, cv);
  fig.append(cv, cap);
  parent.append(fig);
  return fig;
}

const runName = r => r.name.includes(r.variant) ? r.name : `${r.name} (${r.variant})`;
$('meta').textContent = `${runName(runs[0])}, task ${DATA.task}, ${T} tokens, ` +
  `${runs[0].L} layers × ${runs[0].H} heads` + (runs[1] ? `; compared with ${runName(runs[1])}` : '');
if (runs[1]) $('legend').textContent = `; top: ${runs[0].name}, below the dashes: ${runs[1].name}`;
for (const [id, n] of [['layer', Math.max(...runs.map(r => r.L))],
                       ['head', Math.max(...runs.map(r => r.H))]])
  for (let i = 0; i < n; i++) $(id).add(new Option(String(i), String(i)));

const cells = DATA.labels.map((label, i) => {
  const c = document.createElement('div'), b = document.createElement('b');
  c.className = 'tok'; c.dataset.i = i; c.title = `position ${i}`;
  b.textContent = label;
  c.append(b, ...runs.map((_, r) => Object.assign(document.createElement('span'),
                                                   {className: 'w r' + r})));
  c.onclick = () => { S.query = i; update(); };
  $('strip').append(c);
  return c;
});

function updateStrip() {
  const rows = runs.map(run => has(run) ? row(run, S.layer, S.head, S.query, S.teach) : null);
  cells.forEach((c, j) => {
    c.classList.toggle('q', j === S.query);
    rows.forEach((w, r) => {
      const s = c.children[r + 1];
      s.textContent = w ? w[j].toFixed(4) : '–';
      s.dataset.w = w ? w[j] : '';
    });
    const w0 = rows[0] ? rows[0][j] : 0, rgb = heat(w0);
    c.style.background = `rgb(${rgb.join(',')})`;
    c.classList.toggle('dark', Math.sqrt(w0) > 0.55);
  });
  $('rowinfo').textContent = rows.map((w, r) => {
    if (!w) return `${runs[r].name}: no layer ${S.layer} head ${S.head}`;
    let sum = 0, best = 0;
    w.forEach((x, j) => { sum += x; if (x > w[best]) best = j; });
    return `${runs[r].name}: query ${S.query} ('${DATA.labels[S.query]}'), layer ${S.layer} ` +
      `head ${S.head}: row sum ${sum.toFixed(4)}, most weight on key ${best} ` +
      `('${DATA.labels[best]}', ${w[best].toFixed(4)})`;
  }).join('    |    ');
}

function updateMats() {
  const mats = $('mats'), size = Math.max(T, Math.min(6 * T, 384 - 384 % T));
  mats.replaceChildren();
  const pick = (e, cv) => { S.query = Math.min(T - 1, Math.floor(e.offsetY / cv.clientHeight * T));
                            update(); };
  const how = S.teach ? `teaching: softmax(q·k/√D/${S.temp.toFixed(2)})` +
                        (S.causal ? ', causal' : ', no mask') : 'model attention';
  const ms = runs.map(run => has(run) ? matrix(run, S.layer, S.head, S.teach) : null);
  ms.forEach((m, r) => m && figure(mats, `${runName(runs[r])}, layer ${S.layer} head ` +
    `${S.head}: ${how}`, cv => paint(cv, m, heat, size, S.query), pick));
  if (ms.length === 2 && ms[0] && ms[1]) {
    const d = ms[0].map((a, i) => a.map((x, j) => x - ms[1][i][j]));
    const scale = Math.max(1e-6, ...d.map(a => Math.max(...a.map(Math.abs))));
    figure(mats, `difference ${runs[0].name} − ${runs[1].name} (red: ${runs[0].name} ` +
      `higher), colour scale ±${scale.toFixed(3)}`, cv => paint(cv, d, diverge(scale), size,
      S.query), pick);
  }
}

const thumbs = [];
runs.forEach(run => {
  const table = document.createElement('table');
  table.className = 'grid';
  table.createCaption().textContent = runName(run);
  const head = table.insertRow();
  head.append(document.createElement('th'));
  for (let h = 0; h < run.H; h++)
    head.append(Object.assign(document.createElement('th'), {textContent: `head ${h}`}));
  for (let l = 0; l < run.L; l++) {
    const tr = table.insertRow();
    tr.append(Object.assign(document.createElement('th'), {textContent: `layer ${l}`}));
    for (let h = 0; h < run.H; h++) {
      const td = tr.insertCell(), cv = document.createElement('canvas');
      paint(cv, matrix(run, l, h, false), heat, Math.max(96, T));
      cv.style.width = cv.style.height = '96px';
      cv.onclick = () => { S.layer = l; S.head = h; update(); };
      td.append(cv, `ind ${run.induction[l][h].toFixed(2)} · prev ${run.prev[l][h].toFixed(2)}`);
      td.title = `layer ${l} head ${h}: prefix-matching ${run.induction[l][h]}, ` +
                 `previous-token ${run.prev[l][h]}`;
      thumbs.push([td, l, h]);
    }
  }
  $('grids').append(table);
});

function update() {
  $('layer').value = S.layer; $('head').value = S.head;
  for (const [td, l, h] of thumbs) td.classList.toggle('sel', l === S.layer && h === S.head);
  $('tempval').textContent = S.temp.toFixed(2);
  for (const id of ['causal', 'temp']) {
    $(id).disabled = !S.teach;
    $(id + '-l').classList.toggle('off', !S.teach);
  }
  updateStrip();
  updateMats();
}
$('layer').onchange = e => { S.layer = +e.target.value; update(); };
$('head').onchange = e => { S.head = +e.target.value; update(); };
$('teach').onchange = e => { S.teach = e.target.checked; update(); };
$('causal').checked = S.causal;
$('causal').onchange = e => { S.causal = e.target.checked; update(); };
$('temp').oninput = e => { S.temp = +e.target.value; update(); };
update();
window.explorerReady = performance.now();
</script>
</body></html>
"""
