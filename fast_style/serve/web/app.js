// fast_style web page: upload, pick a style (or two of one model), adjust, paint where each
// style goes, download. Plain JavaScript, no build step, no external resources. Talks to
// /api/styles and /api/stylize; in the "on this device" mode (ondevice.js, imported when the
// visitor picks it) to /api/ondevice and the model's ONNX file instead, and the photo and the
// live camera's frames are stylized in the browser, never uploaded.
"use strict";

const $ = (id) => document.getElementById(id);
const MASK_LONG_SIDE = 1024; // resolution of the painted masks (the server resizes and feathers)
// How painted areas are shown on the photo: style A, style B, and the photo (a light veil, only
// where it differs from the unpainted areas).
const TINT = { a: [255, 170, 0, 115], b: [30, 110, 255, 115], photo: [255, 255, 255, 110] };
// The paint canvas holds one colour channel per brush: red = style A, green = style B, blue =
// the photo, black = unpainted. Soft stroke edges mix them; the masks are derived on sending.
const PAINT = { brush: "#f00", b: "#0f0", eraser: "#00f" };

const state = {
  file: null, // the uploaded File
  photoUrl: null, // object URL of the photo (preview and "before")
  resultUrl: null, // object URL of the last result
  style: null, // selected style name (style A)
  styleB: null, // the second style (same model file), or null
  styles: [], // the /api/styles items
  limits: null, // from /api/styles
  tool: "brush", // brush (style A) | b (style B) | eraser (the photo)
  painted: false, // anything painted (or inverted) since the last clear
  drawing: null, // {x, y} of the last point while a stroke is in progress
  busy: false,
  mode: "server", // where the network runs: "server" or "device" (this browser: ondevice.js)
  lists: { server: null, device: null }, // each mode's styles: {styles, default, selected}
  ondevice: null, // GET /api/ondevice: {styles, default, runtime}
  device: null, // the promise of the imported ondevice.js module
  camera: null, // the running LiveCamera (ondevice.js), or null
};

const paintCanvas = document.createElement("canvas"); // the brushes' channels (see PAINT)
// Read back after every stroke (masks, overlay): keep it in memory, not on the GPU.
const paintCtx = () => paintCanvas.getContext("2d", { willReadFrequently: true });

// ---------------------------------------------------------------------------------------------
// Messages

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function setStatus(message) {
  $("status").textContent = message;
}

function setBusy(busy) {
  state.busy = busy;
  $("busy").hidden = !busy;
  document.body.setAttribute("aria-busy", String(busy));
  updateButton();
}

function updateButton() {
  $("stylize").disabled = state.busy || !state.file || !state.style;
  const label = state.mode === "device" ? "Stylize on this device" : "Stylize";
  $("stylize").textContent = state.busy ? "Stylizing…" : label;
}

function formatBytes(n) {
  return n >= 1048576 ? `${(n / 1048576).toFixed(1)} MB` : `${Math.ceil(n / 1024)} KB`;
}

// ---------------------------------------------------------------------------------------------
// Styles

function styleCard(item) {
  // The caption is the painting's, from the model's metadata: "Title — Artist, Year".
  const card = document.createElement("button");
  card.type = "button";
  card.className = "style-card";
  card.setAttribute("role", "radio");
  card.setAttribute("aria-checked", "false");
  card.dataset.style = item.name;
  const meta = item.metadata || {};
  card.title = [item.label, item.name, meta.width && `width: ${meta.width}`]
    .filter(Boolean).join(" · ");
  if (item.thumbnail) {
    const img = document.createElement("img");
    img.src = item.thumbnail;
    img.alt = "";
    img.loading = "lazy";
    card.append(img);
  } else {
    const ph = document.createElement("div");
    ph.className = "placeholder";
    ph.textContent = (item.title || item.name).slice(0, 1);
    card.append(ph);
  }
  const label = document.createElement("span");
  label.className = "caption";
  const title = document.createElement("span");
  title.className = "title";
  title.textContent = item.title || item.name;
  label.append(title);
  const by = item.label && item.label.slice((item.title || "").length);
  if (by) {
    const small = document.createElement("span");
    small.className = "by";
    small.textContent = by; // " — Artist, Year"
    label.append(small);
  }
  if (item.styles_in_model === 1 && item.name !== item.style) {
    const file = document.createElement("span");
    file.className = "by";
    file.textContent = ` (${item.name})`; // e.g. a second model of the same painting
    label.append(file);
  }
  card.append(label);
  card.addEventListener("click", () => selectStyle(item.name));
  return card;
}

function styleGroups(items) {
  // Single-style models first, then one group per multi-style model (its styles can be
  // blended and painted together); headings only when there is more than one group.
  const groups = new Map();
  for (const item of items) {
    const key = item.styles_in_model > 1 ? item.model : "";
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(item);
  }
  const out = [];
  for (const [model, members] of groups) {
    const group = document.createElement("div");
    group.className = "style-group";
    if (groups.size > 1) {
      const h = document.createElement("h3");
      h.textContent = model
        ? `${model}: ${members.length} styles in one model (blend or paint two)`
        : "One style per model";
      group.append(h);
    }
    const grid = document.createElement("div");
    grid.className = "style-grid";
    grid.append(...members.map(styleCard));
    group.append(grid);
    out.push(group);
  }
  return out;
}

function itemOf(name) {
  return state.styles.find((s) => s.name === name) || null;
}

function selectStyle(name) {
  state.style = name;
  for (const card of document.querySelectorAll(".style-card")) {
    card.setAttribute("aria-checked", String(card.dataset.style === name));
  }
  updateStyleB();
  updateButton();
}

function updateStyleB() {
  // Style B: another style of style A's model file (one network mixes or paints them).
  const a = itemOf(state.style);
  const select = $("style-b");
  const partners = a ? state.styles.filter((s) => s.model === a.model && s.name !== a.name) : [];
  const keep = partners.some((s) => s.name === state.styleB) ? state.styleB : "";
  select.replaceChildren(new Option("None", ""),
    ...partners.map((s) => new Option(s.label || s.name, s.name)));
  select.value = keep;
  select.disabled = partners.length === 0;
  $("style-b-hint").hidden = partners.length > 0;
  setStyleB(keep || null);
}

function setStyleB(name) {
  state.styleB = name;
  $("tool-b").disabled = !name;
  $("tool-b").title = name ? "" : "Pick a second style (B) first";
  if (!name && state.tool === "b") setTool("brush");
  updateBlend();
}

function updateBlend() {
  // The slider mixes A and B everywhere; painted style B puts them side by side instead.
  const paintedB = state.mode === "server" && Boolean(state.styleB) && paintedWith().b;
  $("blend").disabled = !state.styleB || paintedB;
  $("blend-hint").hidden = !paintedB;
  $("blend-value").textContent = state.styleB ? `${$("blend").value}% B` : "off";
}

function limitSizes(maxSide) {
  // Sizes above the server's limit would be capped anyway: offer what the server will do.
  const select = $("max-size");
  for (const opt of select.options) opt.disabled = Number(opt.value) > maxSide;
  if (select.selectedOptions[0].disabled) {
    const allowed = [...select.options].filter((o) => !o.disabled);
    if (allowed.length) select.value = allowed[allowed.length - 1].value;
    else select.add(new Option(`${maxSide} px (server limit)`, String(maxSide), true, true));
  }
}

function showStyles(list) {
  // The picker shows one mode's styles; each mode keeps its own selection (else its default:
  // the server's is the README's style, this device's a nano or slim model).
  const box = $("styles");
  state.styles = list.styles;
  box.replaceChildren(...styleGroups(list.styles));
  if (list.styles.length === 0) {
    box.innerHTML = '<p class="hint">No styles on this server yet: train one with ' +
      "<code>python train.py</code> and put it in the models folder.</p>";
    state.style = null;
    updateStyleB();
    updateButton();
    return;
  }
  const keep = list.styles.some((s) => s.name === list.selected) ? list.selected : null;
  selectStyle(keep || list.default || list.styles[0].name);
}

async function loadStyles() {
  const box = $("styles");
  try {
    const res = await fetch("api/styles");
    const data = await res.json();
    if (!res.ok) throw new Error(data.error || `HTTP ${res.status}`);
    state.limits = data.limits;
    limitSizes(data.limits.max_side);
    state.lists.server = { styles: data.styles, default: data.default, selected: null };
    if (state.mode === "server") showStyles(state.lists.server);
  } catch (err) {
    box.innerHTML = "";
    showError(`Could not load the styles: ${err.message}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Photo input

function acceptFile(file) {
  showError("");
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    showError(`"${file.name}" is not an image (${file.type}). Choose a JPEG, PNG or WebP photo.`);
    return;
  }
  const limit = state.limits && state.limits.max_upload_bytes;
  if (limit && file.size > limit) {
    showError(`"${file.name}" is ${formatBytes(file.size)}; the limit is ${formatBytes(limit)}.`);
    return;
  }
  if (state.photoUrl) URL.revokeObjectURL(state.photoUrl);
  state.file = file;
  state.photoUrl = URL.createObjectURL(file);
  $("result-panel").hidden = true; // the old result belongs to the old photo
  const img = $("preview");
  img.onload = () => {
    setupMask(img.naturalWidth, img.naturalHeight);
    $("dropzone").hidden = true;
    $("editor").hidden = false;
    setStatus(`${file.name}: ${img.naturalWidth}×${img.naturalHeight}`);
    updateButton();
  };
  img.onerror = () => {
    state.file = null;
    updateButton();
    showError(`"${file.name}" could not be read as an image by this browser.`);
  };
  img.src = state.photoUrl;
  $("before").src = state.photoUrl;
}

function setupDropzone() {
  const input = $("file-input");
  const zone = $("dropzone");
  input.addEventListener("change", () => acceptFile(input.files[0]));
  $("change-photo").addEventListener("click", () => input.click());
  for (const type of ["dragenter", "dragover"]) {
    document.addEventListener(type, (e) => {
      e.preventDefault();
      zone.classList.add("over");
    });
  }
  for (const type of ["dragleave", "dragend"]) {
    document.addEventListener(type, () => zone.classList.remove("over"));
  }
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    const file = e.dataTransfer && e.dataTransfer.files[0];
    if (file) acceptFile(file);
  });
}

// ---------------------------------------------------------------------------------------------
// Region brush: paint on the photo where style A, style B and the photo go

function setupMask(width, height) {
  const scale = Math.min(1, MASK_LONG_SIDE / Math.max(width, height));
  const overlay = $("overlay");
  paintCanvas.width = overlay.width = Math.max(1, Math.round(width * scale));
  paintCanvas.height = overlay.height = Math.max(1, Math.round(height * scale));
  clearMask();
}

function clearMask() {
  const m = paintCtx();
  m.globalCompositeOperation = "source-over";
  m.fillStyle = "#000";
  m.fillRect(0, 0, paintCanvas.width, paintCanvas.height);
  $("overlay").getContext("2d").clearRect(0, 0, paintCanvas.width, paintCanvas.height);
  state.painted = false;
  updateBlend();
}

function paintedWith() {
  // Which brushes have painted (more than a stroke's soft edge): {a, b, photo}.
  if (!paintCanvas.width) return { a: false, b: false, photo: false };
  const d = paintCtx().getImageData(0, 0, paintCanvas.width, paintCanvas.height).data;
  const out = { a: false, b: false, photo: false };
  for (let i = 0; i < d.length; i += 4) {
    if (d[i] > 127) out.a = true;
    if (d[i + 1] > 127) out.b = true;
    if (d[i + 2] > 127) out.photo = true;
  }
  return out;
}

function unpaintedIsPhoto() {
  // Unpainted areas stay the photo once style A is painted (B's paint counts as A without B).
  const used = paintedWith();
  return used.a || (!state.styleB && used.b);
}

function regions() {
  // Per pixel, the shares (0..1) of style A, style B and the photo. Unpainted areas get
  // style A, or stay the photo once style A has been painted (today's brush: "paint where the
  // style goes"). Without a style B, its paint counts as style A.
  const { width, height } = paintCanvas;
  const d = paintCtx().getImageData(0, 0, width, height).data;
  const toPhoto = unpaintedIsPhoto();
  const n = width * height;
  const a = new Float32Array(n), b = new Float32Array(n), p = new Float32Array(n);
  for (let j = 0, i = 0; j < n; j++, i += 4) {
    const u = Math.max(0, 255 - d[i] - d[i + 1] - d[i + 2]) / 255;
    b[j] = state.styleB ? d[i + 1] / 255 : 0;
    a[j] = (d[i] + (state.styleB ? 0 : d[i + 1])) / 255 + (toPhoto ? 0 : u);
    p[j] = d[i + 2] / 255 + (toPhoto ? u : 0);
  }
  return { a, b, p, width, height };
}

function greyCanvas(values, width, height) {
  // A canvas of grey levels (0..1 → black..white), sent as a PNG mask.
  const c = document.createElement("canvas");
  c.width = width;
  c.height = height;
  const ctx = c.getContext("2d");
  const img = ctx.createImageData(width, height);
  for (let j = 0, i = 0; j < values.length; j++, i += 4) {
    const v = Math.round(255 * Math.min(1, Math.max(0, values[j])));
    img.data[i] = img.data[i + 1] = img.data[i + 2] = v;
    img.data[i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  return c;
}

function paintedMasks() {
  // The masks of the painting: {mask: style vs photo, styleMask: A (white) vs B (black)},
  // each null when it would be uniform (all style; no style B painted).
  const { a, b, p, width, height } = regions();
  const styled = new Float32Array(a.length);
  const share = new Float32Array(a.length);
  let photo = false, twoStyles = false;
  for (let j = 0; j < a.length; j++) {
    styled[j] = 1 - Math.min(1, p[j]);
    share[j] = a[j] + b[j] > 0 ? a[j] / (a[j] + b[j]) : 1;
    if (styled[j] < 0.999) photo = true;
    if (b[j] > 0.5) twoStyles = true;
  }
  return {
    mask: photo ? greyCanvas(styled, width, height) : null,
    styleMask: twoStyles ? greyCanvas(share, width, height) : null,
  };
}

function invertMask() {
  // Swap style A and the photo (style B stays): today's invert, with unpainted areas resolved.
  const { a, b, p, width, height } = regions();
  const ctx = paintCtx();
  const img = ctx.createImageData(width, height);
  for (let j = 0, i = 0; j < a.length; j++, i += 4) {
    img.data[i] = Math.round(255 * Math.min(1, p[j]));
    img.data[i + 1] = Math.round(255 * b[j]);
    img.data[i + 2] = Math.round(255 * Math.min(1, a[j]));
    img.data[i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  state.painted = true;
  redrawOverlay();
}

function redrawOverlay() {
  // The overlay shows the painting: A and B tinted; the photo veiled where it is painted and
  // differs from what unpainted areas get; unpainted areas transparent.
  const { width, height } = paintCanvas;
  const src = paintCtx().getImageData(0, 0, width, height).data;
  const veil = !unpaintedIsPhoto();
  const ctx = $("overlay").getContext("2d");
  const out = ctx.createImageData(width, height);
  for (let i = 0; i < src.length; i += 4) {
    const shares = [src[i], src[i + 1], veil ? src[i + 2] : 0];
    const sum = shares[0] + shares[1] + shares[2];
    if (!sum) continue;
    const tints = [TINT.a, TINT.b, TINT.photo];
    for (let c = 0; c < 3; c++) {
      out.data[i + c] = shares.reduce((acc, s, k) => acc + s * tints[k][c], 0) / sum;
    }
    out.data[i + 3] = shares.reduce((acc, s, k) => acc + (s * tints[k][3]) / 255, 0);
  }
  ctx.putImageData(out, 0, 0);
  updateBlend();
}

function canvasPoint(e) {
  const overlay = $("overlay");
  const rect = overlay.getBoundingClientRect();
  return {
    x: ((e.clientX - rect.left) * overlay.width) / rect.width,
    y: ((e.clientY - rect.top) * overlay.height) / rect.height,
  };
}

function strokeOn(ctx, from, to, width) {
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.lineWidth = width;
  ctx.beginPath();
  ctx.moveTo(from.x, from.y);
  ctx.lineTo(to.x + 0.01, to.y); // a zero-length line draws nothing; this makes a dot
  ctx.stroke();
}

function paint(from, to) {
  const overlay = $("overlay");
  const rect = overlay.getBoundingClientRect();
  const width = (Number($("brush-size").value) * overlay.width) / Math.max(1, rect.width);
  const m = paintCtx();
  m.strokeStyle = PAINT[state.tool];
  strokeOn(m, from, to, width);
  // While drawing, the stroke is tinted directly (overlapping segments darken a little); the
  // end of the stroke redraws the overlay evenly from the paint canvas.
  const o = overlay.getContext("2d");
  const photo = state.tool === "eraser";
  const tint = state.tool === "b" ? TINT.b : TINT.a;
  o.globalCompositeOperation = photo ? "destination-out" : "source-over";
  o.strokeStyle = `rgb(${tint.slice(0, 3).join(",")})`;
  o.globalAlpha = tint[3] / 255;
  strokeOn(o, from, to, width);
  o.globalAlpha = 1;
  o.globalCompositeOperation = "source-over";
  state.painted = true;
}

function setTool(tool) {
  state.tool = tool;
  for (const [id, name] of [["tool-brush", "brush"], ["tool-b", "b"], ["tool-eraser", "eraser"]]) {
    $(id).setAttribute("aria-pressed", String(tool === name));
  }
}

function setupBrush() {
  const overlay = $("overlay");
  const useMask = $("use-mask");
  useMask.addEventListener("change", () => {
    $("stage").classList.toggle("painting", useMask.checked);
    $("brush-tools").hidden = !useMask.checked;
    $("brush-hint").hidden = !useMask.checked;
    updateBlend();
  });
  $("tool-brush").addEventListener("click", () => setTool("brush"));
  $("tool-b").addEventListener("click", () => setTool("b"));
  $("tool-eraser").addEventListener("click", () => setTool("eraser"));
  $("mask-invert").addEventListener("click", invertMask);
  $("mask-clear").addEventListener("click", clearMask);
  overlay.addEventListener("pointerdown", (e) => {
    if (!useMask.checked || e.button > 0) return;
    e.preventDefault();
    overlay.setPointerCapture(e.pointerId);
    state.drawing = canvasPoint(e);
    paint(state.drawing, state.drawing);
  });
  overlay.addEventListener("pointermove", (e) => {
    if (!state.drawing) return;
    const p = canvasPoint(e);
    paint(state.drawing, p);
    state.drawing = p;
  });
  const end = () => {
    if (!state.drawing) return;
    state.drawing = null;
    redrawOverlay(); // even tint where strokes overlap
  };
  overlay.addEventListener("pointerup", end);
  overlay.addEventListener("pointercancel", end);
}

function canvasBlob(canvas) {
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

// ---------------------------------------------------------------------------------------------
// Stylize and show the result

async function errorMessage(res) {
  try {
    const data = await res.json();
    return data.error || `HTTP ${res.status}`;
  } catch {
    return `HTTP ${res.status} ${res.statusText}`;
  }
}

async function stylize() {
  if (state.busy || !state.file || !state.style) return;
  if (state.mode === "device") {
    await stylizeOnDevice();
    return;
  }
  showError("");
  setBusy(true);
  setStatus("Stylizing… the first use of a style loads it, which takes a moment.");
  const t0 = performance.now();
  try {
    const form = new FormData();
    form.append("image", state.file, state.file.name);
    form.append("style", state.style);
    form.append("strength", String(Number($("strength").value) / 100));
    form.append("preserve_color", String($("preserve-color").checked));
    form.append("max_size", $("max-size").value);
    const masks = $("use-mask").checked && state.painted ? paintedMasks() : {};
    if (masks.mask) form.append("mask", await canvasBlob(masks.mask), "mask.png");
    if (state.styleB) {
      // Two styles of one model: painted side by side (style_mask), else blended.
      form.append("style_b", state.styleB);
      if (masks.styleMask) {
        form.append("style_mask", await canvasBlob(masks.styleMask), "style_mask.png");
      } else {
        form.append("blend", String(Number($("blend").value) / 100));
      }
    }
    let res;
    try {
      res = await fetch("api/stylize", { method: "POST", body: form });
    } catch {
      throw new Error("Could not reach the server. Is it still running?");
    }
    if (!res.ok) throw new Error(await errorMessage(res));
    const blob = await res.blob();
    showResult(blob, filenameFrom(res.headers), (performance.now() - t0) / 1000);
  } catch (err) {
    setStatus("");
    showError(err.message);
  } finally {
    setBusy(false);
  }
}

function filenameFrom(headers) {
  const cd = headers.get("Content-Disposition") || "";
  const m = /filename="([^"]+)"/.exec(cd);
  return m ? m[1] : `stylized_${state.style}.png`;
}

function showResult(blob, filename, seconds, where = "") {
  if (state.resultUrl) URL.revokeObjectURL(state.resultUrl);
  state.resultUrl = URL.createObjectURL(blob);
  const after = $("after");
  after.onload = () => {
    $("result-panel").hidden = false;
    $("result-info").textContent =
      `${after.naturalWidth}×${after.naturalHeight} · ${formatBytes(blob.size)}` +
      (where ? ` · ${where}` : "");
    setStatus(`Done${where ? " " + where : ""} in ${seconds.toFixed(1)} s.`);
    $("result-panel").scrollIntoView({ behavior: "smooth", block: "nearest" });
  };
  after.src = state.resultUrl;
  $("before").src = state.photoUrl;
  const link = $("download");
  link.href = state.resultUrl;
  link.download = filename;
}

// ---------------------------------------------------------------------------------------------
// On this device: the network runs in the browser (ondevice.js, ONNX Runtime Web)

function deviceNote(message, stateName) {
  // One line under the mode switch: the runtime and backend, or why the mode is unavailable.
  const note = $("device-note");
  note.textContent = message;
  note.hidden = !message;
  note.dataset.state = stateName || "";
}

function deviceModule() {
  // ondevice.js, imported on first use (a failed import may be retried).
  if (!state.device) {
    state.device = import("./ondevice.js").catch((err) => {
      state.device = null;
      throw err;
    });
  }
  return state.device;
}

async function loadOnDevice() {
  // Which light models the browser may run, and whether the runtime is built on the server.
  let why = "";
  try {
    const res = await fetch("api/ondevice");
    const data = await res.json();
    if (!res.ok) throw new Error(data.error || `HTTP ${res.status}`);
    state.ondevice = data;
    state.lists.device = { styles: data.styles, default: data.default, selected: null };
    if (!data.runtime.ready) why = data.runtime.message;
    else if (!data.styles.length) why = "no light model (nano or slim) in the models folder.";
  } catch (err) {
    why = `unavailable (${err.message}).`;
  }
  $("mode-device").disabled = Boolean(why);
  if (why) {
    $("mode-device").title = why;
    deviceNote(`On this device: ${why}`, "unavailable");
  }
}

async function setMode(mode) {
  if (mode === state.mode || state.busy || !state.lists[mode]) return;
  if (state.camera) await stopCamera();
  state.lists[state.mode].selected = state.style;
  state.mode = mode;
  const device = mode === "device";
  $("mode-server").setAttribute("aria-pressed", String(!device));
  $("mode-device").setAttribute("aria-pressed", String(device));
  // The browser runs the network only: no strength, colour transfer or painted masks.
  if (device && $("use-mask").checked) {
    $("use-mask").checked = false;
    $("use-mask").dispatchEvent(new Event("change"));
  }
  for (const id of ["strength", "preserve-color", "use-mask"]) $(id).disabled = device;
  $("device-limits").hidden = !device;
  $("camera-panel").hidden = !device;
  $("result-panel").hidden = true; // a result belongs to the mode it was made in
  showStyles(state.lists[mode]);
  if (device) await prepareDevice();
  else deviceNote("");
}

async function prepareDevice() {
  // Import the runtime now (a few MB of WebAssembly), so that the first run is quick.
  deviceNote("Loading ONNX Runtime Web…", "loading");
  try {
    const mod = await deviceModule();
    const rt = await mod.loadRuntime(state.ondevice.runtime);
    if (state.mode !== "device") return;
    deviceNote(`Runs in this browser (${mod.describeRuntime(rt)}): the photo never leaves ` +
      "this device.", "ready");
  } catch (err) {
    deviceNote("On this device: the runtime did not load.", "error");
    showError(err.message || String(err));
  }
}

function styleWeights(item) {
  // The style row of a multi-style model (the ONNX "style" input): one-hot, or the mix
  // (1 - blend) A + blend B, as the server's jobs.choose_styles; null for a one-style model.
  if (!item || item.styles_in_model <= 1) return null;
  const row = new Array(item.styles_in_model).fill(0);
  const b = state.styleB ? itemOf(state.styleB) : null;
  const t = b ? Number($("blend").value) / 100 : 0;
  row[item.index] += 1 - t;
  if (b) row[b.index] += t;
  return row;
}

function roundHalfEven(x) {
  // Python's round(), which the server's resize_long_side uses (2.5 → 2, 3.5 → 4).
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

async function photoPixels(longSide) {
  // The photo as ImageData, downscaled to ``longSide`` as the server would size it
  // (imaging.resize_long_side; the browser's "high" smoothing stands in for its Lanczos).
  // Colour profiles are ignored and EXIF orientation applied, as the server's Pillow does.
  let src;
  try {
    src = await createImageBitmap(state.file, {
      colorSpaceConversion: "none",
      imageOrientation: "from-image",
    });
  } catch {
    src = $("preview"); // already decoded (EXIF-oriented) by the browser
  }
  const sw = src.naturalWidth || src.width, sh = src.naturalHeight || src.height;
  const scale = Math.min(1, longSide / Math.max(sw, sh));
  const w = Math.max(1, roundHalfEven(sw * scale)), h = Math.max(1, roundHalfEven(sh * scale));
  const canvas = document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(src, 0, 0, w, h);
  if (src.close) src.close();
  return ctx.getImageData(0, 0, w, h);
}

function safeName(text) {
  return text.replace(/[^A-Za-z0-9_-]+/g, "_");
}

function deviceFilename(item) {
  // "<photo>_<style>.png", as the server names its downloads (jobs.download_name).
  const stem = safeName(state.file.name.replace(/\.[^.]*$/, "")).slice(0, 60) || "photo";
  const b = state.styleB ? itemOf(state.styleB) : null;
  let style = item.name;
  if (item.styles_in_model > 1) style = b ? `${item.style}-${b.style}` : item.style;
  return `${stem}_${safeName(style)}.png`;
}

async function stylizeOnDevice() {
  // The photo is read, stylized and encoded here; nothing is uploaded.
  const item = itemOf(state.style);
  showError("");
  setBusy(true);
  setStatus("Stylizing on this device… the first run loads the model.");
  const t0 = performance.now();
  try {
    const mod = await deviceModule();
    const model = await mod.openModel(state.ondevice.runtime, item);
    const pixels = await photoPixels(Number($("max-size").value));
    const { image } = await mod.stylize(model, pixels, styleWeights(item));
    const canvas = document.createElement("canvas");
    canvas.width = image.width;
    canvas.height = image.height;
    canvas.getContext("2d").putImageData(image, 0, 0);
    const blob = await canvasBlob(canvas);
    const seconds = (performance.now() - t0) / 1000;
    const where = `on this device (${mod.describeRuntime(model.rt)})`;
    showResult(blob, deviceFilename(item), seconds, where);
  } catch (err) {
    setStatus("");
    showError(err.message || String(err));
  } finally {
    setBusy(false);
  }
}

async function startCamera() {
  if (state.camera || state.mode !== "device") return;
  showError("");
  $("cam-start").disabled = true;
  $("cam-fps").textContent = "Starting the camera…";
  try {
    const mod = await deviceModule();
    const camera = new mod.LiveCamera({
      video: $("cam-video"),
      canvas: $("cam-out"),
      readout: $("cam-fps"),
      size: () => Number($("cam-size").value),
      // the style picked above, read at every frame: a new pick shows at the next one
      model: () => mod.openModel(state.ondevice.runtime, itemOf(state.style)),
      weights: () => styleWeights(itemOf(state.style)),
      onError: (err) => {
        showError(`Camera: ${err.message || err}`);
        stopCamera();
      },
    });
    state.camera = camera;
    await camera.start();
    $("cam-stop").disabled = false;
  } catch (err) {
    state.camera = null;
    $("cam-start").disabled = false;
    $("cam-fps").textContent = "";
    showError(`Could not start the camera: ${err.message || err}`);
  }
}

async function stopCamera() {
  const camera = state.camera;
  state.camera = null;
  $("cam-stop").disabled = true;
  if (camera) await camera.stop();
  $("cam-start").disabled = false;
  const fps = $("cam-fps");
  if (fps.dataset.fps) {
    fps.textContent = `Stopped (${Number(fps.dataset.fps).toFixed(1)} frames/s).`;
  }
}

function setupDevice() {
  $("mode-server").addEventListener("click", () => setMode("server"));
  $("mode-device").addEventListener("click", () => setMode("device"));
  $("cam-start").addEventListener("click", startCamera);
  $("cam-stop").addEventListener("click", stopCamera);
}

function setupControls() {
  const strength = $("strength");
  strength.addEventListener("input", () => {
    $("strength-value").textContent = `${strength.value}%`;
  });
  $("style-b").addEventListener("change", () => setStyleB($("style-b").value || null));
  $("blend").addEventListener("input", updateBlend);
  const slider = $("compare-slider");
  slider.addEventListener("input", () => {
    $("compare").style.setProperty("--pos", `${slider.value}%`);
  });
  $("stylize").addEventListener("click", stylize);
}

setupDropzone();
setupBrush();
setupControls();
setupDevice();
loadStyles();
loadOnDevice();
