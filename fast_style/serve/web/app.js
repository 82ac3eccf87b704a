// fast_style web page: upload, pick a style, adjust, paint where the style goes, download.
// Plain JavaScript, no build step, no external resources. Talks to /api/styles and /api/stylize.
"use strict";

const $ = (id) => document.getElementById(id);
const MASK_LONG_SIDE = 1024; // resolution of the painted mask (the server resizes and feathers it)
const PAINT_RGBA = [255, 170, 0, 115]; // how painted areas are shown on the photo

const state = {
  file: null, // the uploaded File
  photoUrl: null, // object URL of the photo (preview and "before")
  resultUrl: null, // object URL of the last result
  style: null, // selected style name
  limits: null, // from /api/styles
  tool: "brush",
  painted: false, // anything painted (or inverted) since the last clear
  drawing: null, // {x, y} of the last point while a stroke is in progress
  busy: false,
};

const mask = document.createElement("canvas"); // black = photo, white = style (sent as PNG)

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
  $("stylize").textContent = state.busy ? "Stylizing…" : "Stylize";
}

function formatBytes(n) {
  return n >= 1048576 ? `${(n / 1048576).toFixed(1)} MB` : `${Math.ceil(n / 1024)} KB`;
}

// ---------------------------------------------------------------------------------------------
// Styles

function prettyName(name) {
  return name.replace(/[_-]+/g, " ").replace(/\b\w/g, (c) => c.toUpperCase());
}

function styleCard(item) {
  const card = document.createElement("button");
  card.type = "button";
  card.className = "style-card";
  card.setAttribute("role", "radio");
  card.setAttribute("aria-checked", "false");
  card.dataset.style = item.name;
  const meta = item.metadata || {};
  card.title = [item.name, meta.width && `width: ${meta.width}`, meta.painting]
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
    ph.textContent = prettyName(item.style || item.name).slice(0, 1);
    card.append(ph);
  }
  const label = document.createElement("span");
  label.textContent = prettyName(item.name);
  card.append(label);
  card.addEventListener("click", () => selectStyle(item.name));
  return card;
}

function selectStyle(name) {
  state.style = name;
  for (const card of document.querySelectorAll(".style-card")) {
    card.setAttribute("aria-checked", String(card.dataset.style === name));
  }
  updateButton();
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

async function loadStyles() {
  const box = $("styles");
  try {
    const res = await fetch("api/styles");
    const data = await res.json();
    if (!res.ok) throw new Error(data.error || `HTTP ${res.status}`);
    state.limits = data.limits;
    limitSizes(data.limits.max_side);
    box.replaceChildren(...data.styles.map(styleCard));
    if (data.styles.length === 0) {
      box.innerHTML = '<p class="hint">No styles on this server yet: train one with ' +
        "<code>python train.py</code> and put it in the models folder.</p>";
    } else {
      selectStyle(data.styles[0].name);
    }
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
// Region brush: paint on the photo where the style goes

function setupMask(width, height) {
  const scale = Math.min(1, MASK_LONG_SIDE / Math.max(width, height));
  const overlay = $("overlay");
  mask.width = overlay.width = Math.max(1, Math.round(width * scale));
  mask.height = overlay.height = Math.max(1, Math.round(height * scale));
  clearMask();
}

function clearMask() {
  const m = mask.getContext("2d");
  m.globalCompositeOperation = "source-over";
  m.fillStyle = "#000";
  m.fillRect(0, 0, mask.width, mask.height);
  $("overlay").getContext("2d").clearRect(0, 0, mask.width, mask.height);
  state.painted = false;
}

function invertMask() {
  const m = mask.getContext("2d");
  m.globalCompositeOperation = "difference";
  m.fillStyle = "#fff";
  m.fillRect(0, 0, mask.width, mask.height);
  m.globalCompositeOperation = "source-over";
  redrawOverlay();
  state.painted = true;
}

function redrawOverlay() {
  // The overlay shows the mask: painted (white) pixels tinted, the rest transparent.
  const src = mask.getContext("2d").getImageData(0, 0, mask.width, mask.height).data;
  const ctx = $("overlay").getContext("2d");
  const out = ctx.createImageData(mask.width, mask.height);
  const [r, g, b, a] = PAINT_RGBA;
  for (let i = 0; i < src.length; i += 4) {
    out.data[i] = r;
    out.data[i + 1] = g;
    out.data[i + 2] = b;
    out.data[i + 3] = (src[i] * a) / 255;
  }
  ctx.putImageData(out, 0, 0);
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
  const erase = state.tool === "eraser";
  const m = mask.getContext("2d");
  m.strokeStyle = erase ? "#000" : "#fff";
  strokeOn(m, from, to, width);
  const o = overlay.getContext("2d");
  o.globalCompositeOperation = erase ? "destination-out" : "source-over";
  o.strokeStyle = `rgb(${PAINT_RGBA.slice(0, 3).join(",")})`;
  o.globalAlpha = PAINT_RGBA[3] / 255;
  // Overlapping segments darken the tint a little while drawing; the end of the stroke
  // redraws the overlay evenly from the mask.
  strokeOn(o, from, to, width);
  o.globalAlpha = 1;
  o.globalCompositeOperation = "source-over";
  state.painted = true;
}

function setTool(tool) {
  state.tool = tool;
  $("tool-brush").setAttribute("aria-pressed", String(tool === "brush"));
  $("tool-eraser").setAttribute("aria-pressed", String(tool === "eraser"));
}

function setupBrush() {
  const overlay = $("overlay");
  const useMask = $("use-mask");
  useMask.addEventListener("change", () => {
    $("stage").classList.toggle("painting", useMask.checked);
    $("brush-tools").hidden = !useMask.checked;
    $("brush-hint").hidden = !useMask.checked;
  });
  $("tool-brush").addEventListener("click", () => setTool("brush"));
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

function maskBlob() {
  return new Promise((resolve) => mask.toBlob(resolve, "image/png"));
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
    if ($("use-mask").checked && state.painted) {
      form.append("mask", await maskBlob(), "mask.png");
    }
    let res;
    try {
      res = await fetch("api/stylize", { method: "POST", body: form });
    } catch {
      throw new Error("Could not reach the server. Is it still running?");
    }
    if (!res.ok) throw new Error(await errorMessage(res));
    const blob = await res.blob();
    showResult(blob, res.headers, (performance.now() - t0) / 1000);
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

function showResult(blob, headers, seconds) {
  if (state.resultUrl) URL.revokeObjectURL(state.resultUrl);
  state.resultUrl = URL.createObjectURL(blob);
  const after = $("after");
  after.onload = () => {
    $("result-panel").hidden = false;
    $("result-info").textContent =
      `${after.naturalWidth}×${after.naturalHeight} · ${formatBytes(blob.size)}`;
    setStatus(`Done in ${seconds.toFixed(1)} s.`);
    $("result-panel").scrollIntoView({ behavior: "smooth", block: "nearest" });
  };
  after.src = state.resultUrl;
  $("before").src = state.photoUrl;
  const link = $("download");
  link.href = state.resultUrl;
  link.download = filenameFrom(headers);
}

function setupControls() {
  const strength = $("strength");
  strength.addEventListener("input", () => {
    $("strength-value").textContent = `${strength.value}%`;
  });
  const slider = $("compare-slider");
  slider.addEventListener("input", () => {
    $("compare").style.setProperty("--pos", `${slider.value}%`);
  });
  $("stylize").addEventListener("click", stylize);
}

setupDropzone();
setupBrush();
setupControls();
loadStyles();
