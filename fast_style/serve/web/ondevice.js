// fast_style web page, "on this device" mode: a light model (nano or slim) runs in this browser
// with ONNX Runtime Web, so the photo and the camera's frames never leave the machine.
//
// app.js imports this module only when the visitor picks the mode. The runtime's files come
// from this server (GET ort/…: put there at build time from the npm registry by
// scripts/build_web_runtime.py), the model from GET /api/models/<model>.onnx (the server's own
// ONNX export); nothing comes from a CDN.
//
// Pre- and post-processing are those of the server (fast_style.core.imaging and the ONNX
// backend, fast_style/infer/backends/ort.py), step by step:
//   RGB bytes / 255 → (1, 3, H, W) float32 → padded on the bottom/right to a multiple of 4 and
//   at least 8 (reflect, or replicate when the image is too small: imaging.pad_to_multiple)
//   → network → cropped back → clamped to [0, 1] → × 255 + 0.5, truncated
//   (imaging.tensor_to_pil).
// (An ES module: strict mode without "use strict".)

const SIZE_MULTIPLE = 4; // fast_style.core.network.SIZE_MULTIPLE
const MIN_SIZE = 8; // fast_style.core.network.MIN_SIZE
const INPUT = "image"; // fast_style.infer.export.INPUT_NAME
const STYLE_INPUT = "style"; // multi-style exports: (B, S) style weights
const BUNDLES = { wasm: "ort.wasm.min.mjs", webgpu: "ort.webgpu.min.mjs" };

let runtime = null; // a promise of {ort, backend, threads, proxy, version}
const sessions = new Map(); // ONNX URL → promise of a Model

// ---------------------------------------------------------------------------------------------
// The runtime

async function webgpuAdapter() {
  // WebGPU where the browser has it (and an adapter); headless Chromium without a GPU has none.
  if (!navigator.gpu) return false;
  try {
    return Boolean(await navigator.gpu.requestAdapter());
  } catch {
    return false;
  }
}

async function importRuntime(info) {
  // ``info``: GET /api/ondevice's ``runtime``. Optional overrides for tests and measurements:
  // globalThis.fastStyleOrtOptions = {backend: "wasm" | "webgpu", numThreads, proxy}.
  const opts = globalThis.fastStyleOrtOptions || {};
  const base = new URL(info.base, document.baseURI).href;
  const gpu = info.backends.includes("webgpu") && (await webgpuAdapter());
  const backend = opts.backend || (gpu ? "webgpu" : "wasm");
  const ort = await import(new URL(BUNDLES[backend], base).href);
  ort.env.wasm.wasmPaths = base;
  // WebAssembly threads need SharedArrayBuffer, hence a cross-origin isolated page (the server
  // sends COOP/COEP); otherwise one thread. Half the cores, at most 4 (ONNX Runtime's own
  // default): the page, the camera and the proxy worker need a core too.
  const cores = navigator.hardwareConcurrency || 1;
  const isolated = globalThis.crossOriginIsolated;
  const threads = opts.numThreads || (isolated ? Math.min(4, Math.ceil(cores / 2)) : 1);
  ort.env.wasm.numThreads = threads;
  // WASM: run in ONNX Runtime's proxy worker, so that the page stays responsive while the
  // network runs (the camera loop would otherwise block it for a whole frame).
  const proxy = opts.proxy ?? backend === "wasm";
  ort.env.wasm.proxy = proxy;
  return { ort, backend, threads, proxy, version: info.version };
}

export function loadRuntime(info) {
  // The runtime, imported once (a failed import may be retried).
  if (!info || !info.ready) {
    return Promise.reject(new Error(info && info.message ? info.message : "no runtime"));
  }
  if (!runtime) {
    runtime = importRuntime(info).catch((err) => {
      runtime = null;
      throw new Error(`Could not load ONNX Runtime Web: ${err.message || err}`);
    });
  }
  return runtime;
}

export function describeRuntime(rt) {
  // "WASM · 2 threads · ONNX Runtime Web 1.31.1"
  const threads = `${rt.threads} thread${rt.threads > 1 ? "s" : ""}`;
  const where = rt.backend === "webgpu" ? "WebGPU" : `WASM · ${threads}`;
  return `${where} · ONNX Runtime Web ${rt.version}`;
}

// ---------------------------------------------------------------------------------------------
// Models

async function errorText(res) {
  try {
    return (await res.json()).error || `HTTP ${res.status}`;
  } catch {
    return `HTTP ${res.status}`;
  }
}

async function createModel(rt, item) {
  const res = await fetch(item.onnx);
  if (!res.ok) throw new Error(`Could not load the model: ${await errorText(res)}`);
  const bytes = new Uint8Array(await res.arrayBuffer());
  const providers = rt.backend === "webgpu" ? ["webgpu", "wasm"] : ["wasm"];
  const session = await rt.ort.InferenceSession.create(bytes, {
    executionProviders: providers,
    graphOptimizationLevel: "all",
  });
  const styles = session.inputNames.includes(STYLE_INPUT) ? item.style_names.length : 0;
  return { rt, session, styles, bytes: bytes.length, name: item.model };
}

export async function openModel(info, item) {
  // The session of ``item``'s model file (GET /api/ondevice item), created once.
  const rt = await loadRuntime(info);
  if (!sessions.has(item.onnx)) {
    const p = createModel(rt, item);
    sessions.set(item.onnx, p);
    p.catch(() => sessions.delete(item.onnx)); // a failed load may be retried
  }
  return sessions.get(item.onnx);
}

// ---------------------------------------------------------------------------------------------
// Pixels ↔ tensors

export function toInput(rgba, w, h) {
  // RGBA bytes (w × h) → {data: (1, 3, H, W) float32 in [0, 1], H, W}, padded as
  // imaging.pad_to_multiple: bottom/right to a multiple of 4 and at least 8, by reflection
  // where both pads are smaller than the image, else by repeating the last row/column.
  const H = Math.max(MIN_SIZE, Math.ceil(h / SIZE_MULTIPLE) * SIZE_MULTIPLE);
  const W = Math.max(MIN_SIZE, Math.ceil(w / SIZE_MULTIPLE) * SIZE_MULTIPLE);
  const reflect = H - h < h && W - w < w;
  const src = (i, n) => (i < n ? i : reflect ? 2 * (n - 1) - i : n - 1);
  const plane = H * W;
  const data = new Float32Array(3 * plane);
  for (let y = 0; y < H; y++) {
    const row = src(y, h) * w;
    for (let x = 0; x < W; x++) {
      const p = (row + src(x, w)) * 4;
      const o = y * W + x;
      data[o] = rgba[p] / 255;
      data[o + plane] = rgba[p + 1] / 255;
      data[o + 2 * plane] = rgba[p + 2] / 255;
    }
  }
  return { data, H, W };
}

export function toImageData(out, H, W, w, h) {
  // (1, 3, H, W) float32 → ImageData w × h (the top-left crop), clamped and rounded as
  // imaging.tensor_to_pil: trunc(clamp(v, 0, 1) × 255 + 0.5).
  const img = new ImageData(w, h);
  const d = img.data;
  const plane = H * W;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const o = y * W + x;
      const p = (y * w + x) * 4;
      for (let c = 0; c < 3; c++) {
        const v = Math.min(1, Math.max(0, out[o + c * plane]));
        d[p + c] = Math.floor(v * 255 + 0.5);
      }
      d[p + 3] = 255;
    }
  }
  return img;
}

export function stylize(model, image, weights) {
  // ``image``: ImageData; ``weights``: the style row (S numbers) of a multi-style model, or
  // null (the first style; one-style models ignore it). Returns a promise of
  // {image: ImageData, ms}. Runs of one model (the photo, the camera) queue, never overlap.
  const job = (model.queue || Promise.resolve()).then(() => runOnce(model, image, weights));
  model.queue = job.catch(() => {});
  return job;
}

async function runOnce(model, image, weights) {
  const { ort } = model.rt;
  const { width: w, height: h } = image;
  const { data, H, W } = toInput(image.data, w, h);
  const feeds = { [INPUT]: new ort.Tensor("float32", data, [1, 3, H, W]) };
  if (model.styles) {
    const row = new Float32Array(model.styles);
    if (weights) row.set(weights.slice(0, model.styles));
    else row[0] = 1;
    feeds[STYLE_INPUT] = new ort.Tensor("float32", row, [1, model.styles]);
  }
  const t0 = performance.now();
  const results = await model.session.run(feeds);
  const ms = performance.now() - t0;
  const y = results[model.session.outputNames[0]];
  const out = toImageData(await y.getData(), H, W, w, h);
  if (y.dispose) y.dispose(); // GPU buffers (WebGPU) are freed at once
  return { image: out, ms };
}

// ---------------------------------------------------------------------------------------------
// Live camera: getUserMedia → canvas → tensor → session.run → canvas, one frame at a time

export class LiveCamera {
  // ``opts``: {video, canvas, readout, size(): long side in px, model(): promise of a Model,
  // weights(): the style row or null, onError(err)}. Frames that arrive while a frame is being
  // stylized are dropped: at most one run is in flight, and the next one takes the newest frame.
  constructor(opts) {
    this.opts = opts;
    this.stream = null;
    this.running = false;
    this.frames = 0;
    this.times = []; // end times of the last frames (frames/s over a sliding window)
    this.work = document.createElement("canvas"); // the downscaled frame, read back each time
    this.model = null; // the model of the last frame
    this.wake = null; // ends the current wait for a frame
    this.loop = null;
  }

  async start() {
    if (this.running) return;
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error("This browser gives no camera here (a camera needs https or localhost).");
    }
    const { video } = this.opts;
    this.stream = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 640 }, height: { ideal: 480 } },
      audio: false,
    });
    video.srcObject = this.stream;
    await video.play();
    this.running = true;
    this.frames = 0;
    this.times = [];
    this.loop = this.run();
  }

  async stop() {
    this.running = false;
    if (this.wake) this.wake(); // a wait for a frame that a stopped camera will never send
    if (this.stream) for (const track of this.stream.getTracks()) track.stop();
    this.stream = null;
    await this.loop; // the frame in flight finishes (its result is still drawn)
    this.loop = null;
    this.opts.video.srcObject = null;
  }

  nextFrame() {
    // Wait for a new camera frame where the browser tells (requestVideoFrameCallback), else
    // for the next animation frame; either way the page gets to run in between. stop() ends
    // the wait too.
    const { video } = this.opts;
    return new Promise((resolve) => {
      this.wake = resolve;
      if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(() => resolve());
      else requestAnimationFrame(() => resolve());
    });
  }

  grab() {
    // The current frame, downscaled to the chosen long side, as ImageData.
    const { video } = this.opts;
    const vw = video.videoWidth, vh = video.videoHeight;
    if (!vw || !vh) return null;
    const scale = Math.min(1, this.opts.size() / Math.max(vw, vh));
    const w = Math.max(1, Math.round(vw * scale)), h = Math.max(1, Math.round(vh * scale));
    if (this.work.width !== w || this.work.height !== h) {
      this.work.width = w;
      this.work.height = h;
    }
    const ctx = this.work.getContext("2d", { willReadFrequently: true });
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(video, 0, 0, w, h);
    return ctx.getImageData(0, 0, w, h);
  }

  show(image, ms, model) {
    const { canvas, readout } = this.opts;
    if (canvas.width !== image.width || canvas.height !== image.height) {
      canvas.width = image.width;
      canvas.height = image.height;
      this.times = []; // frames/s of the new size only
    }
    if (model !== this.model) this.times = []; // … and of the new model only
    this.model = model;
    canvas.getContext("2d").putImageData(image, 0, 0);
    const now = performance.now();
    this.frames += 1;
    this.times.push(now);
    while (this.times.length > 2 && now - this.times[0] > 3000) this.times.shift();
    const n = this.times.length;
    const fps = n > 1 ? ((n - 1) * 1000) / (now - this.times[0]) : 0;
    canvas.dataset.frames = String(this.frames);
    readout.dataset.fps = fps.toFixed(2);
    const rate = fps ? fps.toFixed(1) : "…";
    readout.textContent =
      `${rate} frames/s · ${image.width}×${image.height} · ${Math.round(ms)} ms a frame`;
  }

  async run() {
    // The wait for the next frame starts before each run, so that a frame that arrived during
    // the run is taken at once.
    let next = this.nextFrame();
    while (this.running) {
      await next;
      next = this.nextFrame();
      if (!this.running) break;
      try {
        const model = await this.opts.model();
        const frame = this.grab();
        if (!frame || !this.running) continue;
        const { image, ms } = await stylize(model, frame, this.opts.weights());
        this.show(image, ms, model);
      } catch (err) {
        this.running = false;
        if (this.stream) for (const track of this.stream.getTracks()) track.stop();
        this.opts.onError(err);
      }
    }
  }
}
