// The search page: draw (mouse, touch, pen) or upload a sketch, or pick a
// reference image and type a modification; results come from the JSON API.
'use strict';

const $ = (id) => document.getElementById(id);
let info = null;
let searchSeq = 0;      // Only the newest answer is shown.
let shownSeq = 0;
document.body.dataset.searches = '0';

// --- results ---------------------------------------------------------------------
function showResults(answer, seq) {
  if (seq < shownSeq) return;
  shownSeq = seq;
  const box = $('results');
  box.replaceChildren();
  const trueId = answer.true_match ? answer.true_match.id : null;
  for (const item of answer.results) {
    const fig = document.createElement('figure');
    fig.className = 'result' + (item.id === trueId ? ' true-match' : '');
    fig.dataset.id = item.id;
    const img = document.createElement('img');
    img.className = 'result-img';
    img.src = item.url;
    img.alt = item.id;
    const cap = document.createElement('figcaption');
    cap.textContent = `#${item.rank} ${item.id} · ${item.score.toFixed(3)}`;
    fig.append(img, cap);
    box.append(fig);
  }
  let status = `Top ${answer.results.length} of ${info.gallery_size} (score: ${info.score})`;
  if (answer.true_match) {
    status += `; true match ${answer.true_match.id} at rank ${answer.true_match.rank}` +
      (answer.true_match.rank > answer.results.length ? ' (not shown)' : ' (outlined green)');
  }
  $('status').textContent = status + '.';
  document.body.dataset.searches = String(Number(document.body.dataset.searches) + 1);
}

function showError(message) {
  $('status').textContent = message;
  document.body.dataset.errors = String(Number(document.body.dataset.errors || 0) + 1);
}

function pending(change) {
  document.body.dataset.pending = String(Number(document.body.dataset.pending || 0) + change);
}

async function post(url, options) {
  const seq = ++searchSeq;
  $('status').textContent = 'Searching…';
  pending(1);
  try {
    const response = await fetch(url, options);
    const body = await response.json();
    if (!response.ok) {
      showError(`${response.status}: ${body.detail ? JSON.stringify(body.detail) : 'error'}`);
      return null;
    }
    showResults(body, seq);
    return body;
  } catch (e) {
    showError('The server did not answer: ' + e);
    return null;
  } finally {
    pending(-1);
  }
}

function k() {
  return Math.max(1, Math.min(info.max_k, Number($('k').value) || info.top_k));
}

// --- drawing -----------------------------------------------------------------------
const canvas = $('canvas');
const ctx = canvas.getContext('2d');
let strokes = [];       // [{width, points: [[x, y], ...]}]
let current = null;
let background = null;  // An uploaded picture, drawn under the strokes.

function redraw() {
  ctx.fillStyle = 'white';
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (background) ctx.drawImage(background, 0, 0, canvas.width, canvas.height);
  ctx.strokeStyle = 'black';
  ctx.lineCap = 'round';
  ctx.lineJoin = 'round';
  for (const s of strokes.concat(current ? [current] : [])) {
    ctx.lineWidth = s.width;
    ctx.beginPath();
    s.points.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
    if (s.points.length === 1) ctx.lineTo(s.points[0][0] + 0.01, s.points[0][1]);
    ctx.stroke();
  }
}

function point(event) {
  const r = canvas.getBoundingClientRect();
  return [(event.clientX - r.left) * canvas.width / r.width,
          (event.clientY - r.top) * canvas.height / r.height];
}

canvas.addEventListener('pointerdown', (event) => {
  event.preventDefault();
  canvas.setPointerCapture(event.pointerId);
  current = {width: Number($('width').value), points: [point(event)]};
  redraw();
});
canvas.addEventListener('pointermove', (event) => {
  if (!current) return;
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  for (const e of (events.length ? events : [event])) current.points.push(point(e));
  redraw();
});
function endStroke() {
  if (!current) return;
  strokes.push(current);
  current = null;
  redraw();
  searchCanvas();
}
canvas.addEventListener('pointerup', endStroke);
canvas.addEventListener('pointercancel', endStroke);

$('undo').addEventListener('click', () => {
  if (strokes.length) strokes.pop(); else background = null;
  redraw();
  if (strokes.length || background) searchCanvas(); else clearResults();
});
$('clear').addEventListener('click', () => {
  strokes = [];
  background = null;
  redraw();
  clearResults();
});

function clearResults() {
  searchSeq++;
  shownSeq = searchSeq;
  $('results').replaceChildren();
  $('status').textContent = 'Draw a sketch: results appear when you lift the pen.';
  const a = $('attention').getContext('2d');
  a.clearRect(0, 0, 256, 256);
}

function searchCanvas() {
  pending(1);  // From now: the PNG is made asynchronously before the request.
  canvas.toBlob(async (blob) => {
    try {
      const form = new FormData();
      form.append('sketch', blob, 'drawing.png');
      const answer = await post(`/api/search?k=${k()}`, {method: 'POST', body: form});
      if (answer) drawAttention(canvas, answer.attention);
    } finally {
      pending(-1);
    }
  }, 'image/png');
}

$('upload').addEventListener('change', async () => {
  const file = $('upload').files[0];
  if (!file) return;
  const form = new FormData();
  form.append('sketch', file, file.name);
  const answer = await post(`/api/search?k=${k()}`, {method: 'POST', body: form});
  // Show the uploaded sketch on the canvas (further strokes go over it).
  const image = new Image();
  image.onload = () => {
    background = image;
    strokes = [];
    redraw();
    if (answer) drawAttention(canvas, answer.attention);
  };
  image.src = URL.createObjectURL(file);
  $('upload').value = '';
});

// The mask is over the model's centre crop of the sketch: jet colours from
// its own min (blue) to max (red), upsampled smoothly, over the crop.
function jet(v) {
  const c = (x) => Math.round(255 * Math.max(0, Math.min(1, 1.5 - Math.abs(4 * v - x))));
  return [c(3), c(2), c(1)];
}
function drawAttention(source, mask) {
  const out = $('attention').getContext('2d');
  out.fillStyle = 'white';
  out.fillRect(0, 0, 256, 256);
  out.drawImage(source, 0, 0, 256, 256);
  if (!mask) {
    $('attention-note').textContent = info.trained ?
      'This model has no attention module.' : 'The untrained trunk has no attention.';
    return;
  }
  const h = mask.length, w = mask[0].length;
  const flat = mask.flat();
  const lo = Math.min(...flat), hi = Math.max(...flat);
  const small = document.createElement('canvas');
  small.width = w; small.height = h;
  const sctx = small.getContext('2d');
  const pixels = sctx.createImageData(w, h);
  flat.forEach((v, i) => {
    const [r, g, b] = jet((v - lo) / Math.max(hi - lo, 1e-12));
    pixels.data.set([r, g, b, 255], 4 * i);
  });
  sctx.putImageData(pixels, 0, 0);
  const side = 256 * info.crop_fraction, offset = (256 - side) / 2;
  out.globalAlpha = 0.45;
  out.imageSmoothingEnabled = true;
  out.drawImage(small, offset, offset, side, side);
  out.globalAlpha = 1;
  $('attention-note').textContent =
    `${h}x${w} mask over the centre crop: ${lo.toFixed(3)} (blue) to ${hi.toFixed(3)} ` +
    `(red); uniform would be ${(1 / (h * w)).toFixed(3)}.`;
}

// --- composed queries --------------------------------------------------------------
let reference = null;
let pageStart = 0;
const PAGE = 48;

function pickReference(id) {
  reference = id;
  $('reference').src = `/api/gallery/${id}`;
  $('reference-id').textContent = id;
  for (const img of $('picker').children) img.classList.toggle('selected', img.alt === id);
}

async function showPage() {
  const response = await fetch(`/api/gallery?offset=${pageStart}&limit=${PAGE}`);
  const page = await response.json();
  $('picker').replaceChildren(...page.ids.map((id) => {
    const img = document.createElement('img');
    img.src = `/api/gallery/${id}`;
    img.alt = id;
    img.className = id === reference ? 'selected' : '';
    img.addEventListener('click', () => pickReference(id));
    return img;
  }));
  $('page').textContent = `${pageStart + 1}-${pageStart + page.ids.length} of ${page.total}`;
}
$('prev').addEventListener('click', () => { pageStart = Math.max(0, pageStart - PAGE); showPage(); });
$('next').addEventListener('click', () => {
  if (pageStart + PAGE < info.gallery_size) { pageStart += PAGE; showPage(); }
});

$('composed-form').addEventListener('submit', (event) => {
  event.preventDefault();
  if (!reference) { showError('Pick a reference image first.'); return; }
  post('/api/composed', {method: 'POST', headers: {'Content-Type': 'application/json'},
                         body: JSON.stringify({image_id: reference, text: $('text').value, k: k()})});
});

// --- start -------------------------------------------------------------------------
(async () => {
  info = await (await fetch('/api/info')).json();
  $('k').value = info.top_k;
  $('model').textContent = `Model: ${info.model}; gallery of ${info.gallery_size} images; ` +
    `score: ${info.score}.`;
  if (!info.trained) {
    $('untrained').hidden = false;
    $('untrained').textContent = 'No trained checkpoint: these results come from the ' +
      'untrained ImageNet EfficientNet-Lite0 trunk (pooled features, cosine), ' +
      'with no attention picture.';
  }
  if (info.mode === 'composed') {
    $('composed-panel').hidden = false;
    $('status').textContent = 'Pick a reference image, type a modification, press Search.';
    for (const ex of info.examples.slice(0, 6)) {
      const b = document.createElement('button');
      b.type = 'button';
      b.textContent = `${ex.image_id}: ${ex.text}`;
      b.addEventListener('click', () => { pickReference(ex.image_id); $('text').value = ex.text; });
      $('examples').append(b);
    }
    await showPage();
  } else {
    $('sketch-panel').hidden = false;
    redraw();
  }
  document.body.dataset.ready = '1';
})();
