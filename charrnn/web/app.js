"use strict";
/*
 * charrnn in the browser: the model exported into model.js, run one character at a time. The step
 * runs in WebAssembly SIMD (kernel.wat, carried in kernel.js), with relaxed SIMD's fused
 * multiply-add where the browser has it, or in plain JavaScript where the browser lacks SIMD.
 * No server, no network, no libraries.
 *
 * What other code relies on (tests/test_web.py, bench/web_speed.py):
 *  - #output: its textContent is exactly the prime plus the generated characters.
 *  - #output[data-state]: "running" while generating, then "done", or "stopped" (Stop button),
 *    or "error" (bad settings). #output[data-chars-per-sec]: speed of the last generation.
 *  - body[data-model]: "ready" once the weights are decoded, "error" if they could not be.
 *  - #score-total[data-bpc] and #neuron-status[data-state="done"] when those views finish.
 *  - URL query: prime, temperature, top_k, top_p, length, seed fill the controls, view=score or
 *    view=neurons opens that view, run=1 generates at once, step=js uses the plain JavaScript step
 *    and step=simd the WebAssembly one without relaxed SIMD.
 *  - body[data-step]: "wasm", "simd" or "js", the step the page runs.
 *  - A model of items (spec.items) opens the Items view alone: #item-list[data-state] becomes
 *    "done" with one <li> per item (class "cut" if it reached the longest length first).
 *
 * Numbers: weights are float32 whatever the export's dtype. The WebAssembly step computes in
 * float32, as PyTorch does; the plain JavaScript one, the reference, in float64. Both match
 * PyTorch far within the 0.001 bits/char the page must.
 */

// ---------------------------------------------------------------------------------------------
// Reading model.js (written by charrnn/web.py): base85 text -> raw deflate -> byte planes -> values

const BASE85 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!#$%&()*+-;<=>?@^_`{|}~";

/** Python's base64.b85encode, undone: 5 characters -> one big-endian 32-bit group. */
function base85Decode(text, length) {
  const digit = new Uint8Array(128);
  for (let i = 0; i < BASE85.length; i++) digit[BASE85.charCodeAt(i)] = i;
  const bytes = new Uint8Array((text.length / 5) * 4);
  const view = new DataView(bytes.buffer);
  for (let i = 0, o = 0; i < text.length; i += 5, o += 4) {
    let n = 0;
    for (let j = 0; j < 5; j++) n = n * 85 + digit[text.charCodeAt(i + j)];
    view.setUint32(o, n);
  }
  return bytes.subarray(0, length); // the exporter padded to whole groups
}

/** The browser's own inflater: no JavaScript zlib needed. */
async function inflateRaw(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate-raw"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** Undo the byte-plane shuffle: plane b holds byte b of every value, in order. */
function unshuffle(planes, itemSize) {
  const count = planes.length / itemSize;
  const bytes = new Uint8Array(planes.length);
  for (let b = 0; b < itemSize; b++) {
    for (let i = 0, at = b * count; i < count; i++) bytes[i * itemSize + b] = planes[at + i];
  }
  return bytes;
}

/** IEEE half precision bits -> Number (exact). */
function halfToNumber(bits) {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * fraction * 2 ** -24; // subnormal
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
}

/** Packed little-endian values (see _pack in web.py) -> their bytes, in order. */
async function unpack({ data, bytes }, itemSize) {
  return unshuffle(await inflateRaw(base85Decode(data, bytes)), itemSize);
}

/** Little-endian float32 or float16 bytes -> floats, written into `out` (DataView: right on any byte order). */
function decodeFloats(bytes, dtype, out) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let i = 0; i < out.length; i++) {
    out[i] = dtype === "float16" ? halfToNumber(view.getUint16(2 * i, true)) : view.getFloat32(4 * i, true);
  }
}

/** int8 values times their row's scale -> floats, into `out`. A vector is a column: a scale per value. */
function decodeInt8(bytes, scales, tensors, out) {
  const values = new Int8Array(bytes.buffer, bytes.byteOffset, bytes.length);
  let at = 0, row = 0;
  for (const { shape } of tensors) {
    const cols = shape.length === 2 ? shape[1] : 1;
    for (let end = at + shape.reduce((a, b) => a * b, 1); at < end; row++) {
      for (let j = 0; j < cols; j++, at++) out[at] = values[at] * scales[row];
    }
  }
}

/**
 * model.js's spec -> a CharModel, its weights decoded straight into the memory its step reads.
 * step: null for the fastest the browser runs, or "simd" or "js" to force a slower one.
 */
async function loadModel(spec, step = null) {
  if (typeof DecompressionStream === "undefined") {
    throw new Error("this browser lacks DecompressionStream; open the page in a current Chrome, Firefox or Safari");
  }
  const shapes = spec.tensors.map(({ shape }) => shape);
  const count = shapes.reduce((n, shape) => n + shape.reduce((a, b) => a * b, 1), 0);
  const kernel = (step !== "js" && await simdKernel(count, shapes, step !== "simd")) || plainKernel(count);
  if (spec.dtype === "int8") {
    const scales = new Float32Array(spec.scales.count);
    decodeFloats(await unpack(spec.scales, 4), "float32", scales);
    decodeInt8(await unpack(spec, 1), scales, spec.tensors, kernel.weights);
  } else {
    decodeFloats(await unpack(spec, spec.dtype === "float16" ? 2 : 4), spec.dtype, kernel.weights);
  }
  const tensors = {};
  let offset = 0;
  for (const { name, shape } of spec.tensors) {
    const size = shape.reduce((a, b) => a * b, 1);
    tensors[name] = kernel.weights.subarray(offset, offset + size);
    offset += size;
  }
  return new CharModel(spec.config, spec.vocab, tensors, spec.items, kernel);
}

/** The training list's fingerprints (first 32 bits of each SHA-256), sorted, for "new items only". */
function knownItems(items) {
  const bytes = base85Decode(items.known, 4 * items.known_count);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return Uint32Array.from({ length: items.known_count }, (_, i) => view.getUint32(4 * i, true));
}

// ---------------------------------------------------------------------------------------------
// The cells in plain JavaScript

/**
 * W (rows x cols, row-major: PyTorch's layout) times x, plus b: one layer's gate blocks, or the
 * head. Four running sums rather than one: the CPU overlaps them, which makes it 1.5x faster.
 */
function affine(W, b, x) {
  const rows = b.length, cols = x.length;
  const out = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    const at = r * cols;
    let s0 = 0, s1 = 0, s2 = 0, s3 = 0, j = 0;
    for (; j + 3 < cols; j += 4) {
      s0 += W[at + j] * x[j];
      s1 += W[at + j + 1] * x[j + 1];
      s2 += W[at + j + 2] * x[j + 2];
      s3 += W[at + j + 3] * x[j + 3];
    }
    for (; j < cols; j++) s0 += W[at + j] * x[j];
    out[r] = b[r] + (s0 + s1 + s2 + s3);
  }
  return out;
}

const sigmoid = (v) => 1 / (1 + Math.exp(-v));

/** nn.LSTM, gate blocks i, f, g, o: c' = f c + i g, h' = o tanh(c'). gi = W_ih x + b_ih, gh = W_hh h + b_hh. */
function lstmCell(gi, gh, c, H) {
  const hNew = new Float64Array(H), cNew = new Float64Array(H);
  for (let j = 0; j < H; j++) {
    const i = sigmoid(gi[j] + gh[j]);
    const f = sigmoid(gi[H + j] + gh[H + j]);
    const g = Math.tanh(gi[2 * H + j] + gh[2 * H + j]);
    const o = sigmoid(gi[3 * H + j] + gh[3 * H + j]);
    cNew[j] = f * c[j] + i * g;
    hNew[j] = o * Math.tanh(cNew[j]);
  }
  return [hNew, cNew];
}

/** nn.GRU, blocks r, z, n: n = tanh(W_in x + b_in + r (W_hn h + b_hn)), h' = (1 - z) n + z h. */
function gruCell(gi, gh, h, H) {
  const hNew = new Float64Array(H);
  for (let j = 0; j < H; j++) {
    const r = sigmoid(gi[j] + gh[j]);
    const z = sigmoid(gi[H + j] + gh[H + j]);
    const n = Math.tanh(gi[2 * H + j] + r * gh[2 * H + j]);
    hNew[j] = (1 - z) * n + z * h[j];
  }
  return hNew;
}

/** nn.RNN (tanh): h' = tanh(W_ih x + b_ih + W_hh h + b_hh). */
function rnnCell(gi, gh, H) {
  const hNew = new Float64Array(H);
  for (let j = 0; j < H; j++) hNew[j] = Math.tanh(gi[j] + gh[j]);
  return hNew;
}

// ---------------------------------------------------------------------------------------------
// The step's arithmetic, two ways. A kernel holds the weights and computes a layer,
// layer(cell, {ih, hh}, x, h, c) -> [h', c' or null], and the head's logits, head({W, b}, x).

/** Plain JavaScript in float64: the fallback, and the reference the tests hold the other to. */
function plainKernel(count) {
  return {
    name: "js", weights: new Float32Array(count),
    layer(cell, { ih, hh }, x, h, c) {
      const gi = affine(ih.W, ih.b, x), gh = affine(hh.W, hh.b, h);
      if (cell === "lstm") return lstmCell(gi, gh, c, h.length);
      return [cell === "gru" ? gruCell(gi, gh, h, h.length) : rnnCell(gi, gh, h.length), null];
    },
    head: ({ W, b }, x) => affine(W, b, x),
  };
}

/**
 * kernel.wat's WebAssembly SIMD, or null where the browser cannot run it: about 8x the plain
 * step. Its relaxed build where the browser has relaxed SIMD and `relaxed` allows it, else the
 * build without. The weights and the step's vectors live in the module's memory, laid out once
 * (growing it later would detach every view), each vector with room to be read and written to a
 * multiple of 4.
 */
async function simdKernel(count, shapes, relaxed) {
  if (typeof WebAssembly === "undefined" || typeof CHARRNN_KERNEL === "undefined") return null;
  const builds = [...(relaxed ? [["wasm", CHARRNN_KERNEL]] : []), ["simd", CHARRNN_KERNEL_SIMD]]
    .map(([name, base64]) => [name, Uint8Array.from(atob(base64), (c) => c.charCodeAt(0))]);
  const [name, binary] = builds.find(([, binary]) => WebAssembly.validate(binary)) ?? [];
  if (!binary) return null; // an engine without SIMD
  const { instance } = await WebAssembly.instantiate(binary);
  const wasm = instance.exports;
  const room = (n) => Math.ceil(n / 4) * 4 + 4; // a multiple of 4 floats (16 bytes), plus one more group
  const rows = room(Math.max(...shapes.map((s) => s[0]))), cols = room(Math.max(...shapes.map((s) => s[1] ?? 1)));
  const sizes = [room(count), cols, cols, cols, cols, cols, rows, rows]; // weights, x, h, c, h', c', gi, gh
  const bytes = 4 * sizes.reduce((a, b) => a + b);
  wasm.memory.grow(Math.ceil(Math.max(0, bytes - wasm.memory.buffer.byteLength) / 65536));
  let at = 0;
  const [weights, x, h, c, hOut, cOut, gi, gh] = sizes.map((size) => {
    at += 4 * size;
    return new Float32Array(wasm.memory.buffer, at - 4 * size, size);
  });
  const affine = ({ W, b }, input, out) => wasm.affine(W.byteOffset, b.byteOffset, input.byteOffset, out.byteOffset,
    b.length, W.length / b.length);
  return {
    name, weights: weights.subarray(0, count),
    layer(cell, { ih, hh }, input, hPrev, cPrev) {
      const H = hPrev.length;
      x.set(input);
      h.set(hPrev);
      affine(ih, x, gi);
      affine(hh, h, gh);
      if (cell === "lstm") {
        c.set(cPrev);
        wasm.lstm_gates(gi.byteOffset, gh.byteOffset, c.byteOffset, hOut.byteOffset, cOut.byteOffset, H);
        return [hOut.slice(0, H), cOut.slice(0, H)];
      }
      if (cell === "gru") wasm.gru_gates(gi.byteOffset, gh.byteOffset, h.byteOffset, hOut.byteOffset, H);
      else wasm.rnn_gates(gi.byteOffset, gh.byteOffset, hOut.byteOffset, H);
      return [hOut.slice(0, H), null];
    },
    head(m, input) {
      x.set(input);
      affine(m, x, gi);
      return Float64Array.from(gi.subarray(0, m.b.length));
    },
  };
}

/**
 * The copy attention's weights, and what reading each character adds to the logits through
 * copy_out and the head, and to its own logit by the gain, precomputed: a (V, V) table and a bias
 * (as charrnn.model.NumpyStep).
 */
function copyLayer(config, tensors) {
  const H = config.rnn_size, V = config.vocab_size;
  const noBias = (n) => new Float64Array(n);
  const row = (t, u, n) => Float64Array.from(t.subarray(u * n, (u + 1) * n)); // Float64Array: see step()
  const out = tensors["copy_out.weight"], head = tensors["head.weight"];
  const table = new Float64Array(V * V);
  for (let u = 0; u < V; u++) {
    table.set(affine(head, noBias(V), affine(out, noBias(H), row(tensors["copy_value.weight"], u, H))), u * V);
    table[u * V + u] += tensors["copy_gain"][0];
  }
  return {
    size: config.copy_memory,
    query: { W: tensors["copy_query.weight"], b: tensors["copy_query.bias"] },
    key: { W: tensors["copy_key.weight"], b: tensors["copy_key.bias"] },
    sink: Float64Array.from(tensors["copy_sink"]),
    match: Float64Array.from(tensors["copy_match"]),
    table, bias: affine(head, noBias(V), Float64Array.from(tensors["copy_out.bias"])),
  };
}

// ---------------------------------------------------------------------------------------------
// The network: embedding lookup -> stacked RNN/LSTM/GRU -> linear head

class CharModel {
  constructor(config, vocab, tensors, items, kernel) {
    this.kernel = kernel;
    this.cell = config.model;
    this.numLayers = config.num_layers;
    this.hidden = config.rnn_size;
    this.embeddingSize = config.embedding_size;
    this.vocab = vocab;
    this.index = new Map(vocab.map((c, i) => [c, i]));
    this.embed = tensors["embed.weight"];
    this.labelEmbed = tensors["label_embed.weight"] ?? null; // a model with labels adds one at every step
    this.marker = items ? vocab.length : null; // a model of items: the index that starts and ends one
    this.layers = [];
    for (let k = 0; k < this.numLayers; k++) {
      this.layers.push({
        ih: { W: tensors[`rnn.weight_ih_l${k}`], b: tensors[`rnn.bias_ih_l${k}`] },
        hh: { W: tensors[`rnn.weight_hh_l${k}`], b: tensors[`rnn.bias_hh_l${k}`] },
      });
    }
    this.head = { W: tensors["head.weight"], b: tensors["head.bias"] };
    this.copy = config.copy_memory ? copyLayer(config, tensors) : null;
  }

  /** A state per layer: h, and c for an LSTM; all zeros, like PyTorch's default; and the copy
   * attention's memory, empty: each step's key and the character read there. */
  zeroState() {
    const zeros = () => Array.from({ length: this.numLayers }, () => new Float64Array(this.hidden));
    return { h: zeros(), c: this.cell === "lstm" ? zeros() : null, memory: this.copy ? { keys: [], reads: [] } : null };
  }

  /** Read one character (its index; label: a model with labels): the logits for the next one and the new state. */
  step(state, index, label = null) {
    const E = this.embeddingSize;
    // a Float64Array like every other input, so affine() stays one fast, monomorphic loop
    let x = Float64Array.from(this.embed.subarray(index * E, (index + 1) * E));
    if (label !== null) for (let j = 0; j < E; j++) x[j] += this.labelEmbed[label * E + j];
    const next = { h: [], c: this.cell === "lstm" ? [] : null };
    this.layers.forEach((layer, k) => {
      const [h, c] = this.kernel.layer(this.cell, layer, x, state.h[k], state.c?.[k]);
      next.h.push(h);
      if (next.c) next.c.push(c);
      x = h; // dropout between layers and before the head is off at inference
    });
    // a new array: the caller keeps the logits while other views' steps reuse the kernel's memory
    const logits = this.kernel.head(this.head, x);
    if (this.copy) next.memory = this.attend(state.memory, x, index, logits);
    return { logits, state: next };
  }

  /** The copy attention's step (charrnn.model.CharRNN.copy): add to `logits` what attending to the
   * memory reads, the character after each step; return the memory with this step in it. */
  attend(memory, h, index, logits) {
    const { size, query, key, sink, match, table, bias } = this.copy, V = bias.length;
    const q = affine(query.W, query.b, h), scale = 1 / Math.sqrt(q.length);
    const dot = (k) => { let s = 0; for (let d = 0; d < q.length; d++) s += q[d] * k[d]; return s * scale; };
    const n = memory.keys.length, weights = new Float64Array(n + 1), reads = memory.reads;
    // how many characters up to step j equal those up to this one (charrnn.model.match_lengths)
    const read = (p) => (p === n ? index : reads[p]); // the characters of the memory's steps, then this one's
    const matched = (j) => {
      let i = 0;
      while (i < match.length - 1 && i <= j && reads[j - i] === read(n - i)) i++;
      return i;
    };
    weights[n] = dot(sink); // the sink: copy nothing
    let max = weights[n], total = 0;
    for (let j = 0; j < n; j++) max = Math.max(max, (weights[j] = dot(memory.keys[j]) + match[matched(j)]));
    for (let j = 0; j <= n; j++) total += (weights[j] = Math.exp(weights[j] - max));
    const copied = new Float64Array(V);
    for (let j = 0; j < n; j++) copied[j + 1 < n ? reads[j + 1] : index] += weights[j] / total;
    for (let v = 0; v < V; v++) logits[v] += bias[v];
    for (let u = 0; u < V; u++) {
      if (copied[u] === 0) continue;
      for (let v = 0, at = u * V; v < V; v++) logits[v] += copied[u] * table[at + v];
    }
    return { keys: [...memory.keys, affine(key.W, key.b, h)].slice(-size), reads: [...reads, index].slice(-size) };
  }

  /** What generate.py feeds first: the prime's characters, or a newline (else index 0) for none. */
  startIndices(prime) {
    const known = Array.from(prime, (c) => this.index.get(c)).filter((i) => i !== undefined);
    if (known.length) return known;
    return [this.index.has("\n") ? this.index.get("\n") : 0];
  }
}

// ---------------------------------------------------------------------------------------------
// Probabilities and sampling

/** Plain loops, no callbacks: this runs once a character, and callbacks cost a tenth of a step. */
function softmax(logits) {
  const max = logits[argmax(logits)];
  const p = new Float64Array(logits.length);
  let total = 0;
  for (let i = 0; i < p.length; i++) total += (p[i] = Math.exp(logits[i] - max));
  for (let i = 0; i < p.length; i++) p[i] /= total;
  return p;
}

/** The k likeliest characters: [[index, probability], ...], likeliest first (one pass: vocabularies can be large). */
function topCandidates(probs, k = 5) {
  const top = [];
  for (let i = 0; i < probs.length; i++) {
    if (top.length === k && probs[i] <= probs[top[k - 1]]) continue;
    let at = top.length;
    while (at > 0 && probs[top[at - 1]] < probs[i]) at--; // after equals: the lower index first
    top.splice(at, 0, i);
    if (top.length > k) top.pop();
  }
  return top.map((i) => [i, probs[i]]);
}

function argmax(values) {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i; // first of ties, like numpy
  return best;
}

/** mulberry32: a tiny seeded PRNG, so the same seed gives the same text in every browser. */
function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * The next character: greedy at temperature 0, else a draw from softmax(logits / temperature)
 * over the top-k characters, then over the likeliest whose probabilities first reach top-p
 * (the same rules as charrnn.sample.filter_logits).
 */
function pickNext(logits, { temperature, topK, topP }, random) {
  if (temperature === 0) return argmax(logits);
  let order = Array.from(logits.keys());
  if (topK || (topP && topP < 1)) { // only the filters need the likeliest first: a sort a character is not free
    order.sort((a, b) => logits[b] - logits[a] || a - b);
    if (topK) order = order.slice(0, topK);
  }
  const max = logits[argmax(logits)];
  let weights = order.map((i) => Math.exp((logits[i] - max) / temperature));
  if (topP && topP < 1) {
    const total = weights.reduce((a, b) => a + b, 0);
    let before = 0, keep = weights.length;
    for (let n = 1; n < weights.length; n++) {
      before += weights[n - 1];
      if (before >= topP * total) { keep = n; break; } // those more likely already reach top-p
    }
    order = order.slice(0, keep);
    weights = weights.slice(0, keep);
  }
  let u = random() * weights.reduce((a, b) => a + b, 0);
  for (let n = 0; n < order.length; n++) {
    u -= weights[n];
    if (u < 0) return order[n];
  }
  return order[order.length - 1]; // u landed on the rounding error of the sum
}

/**
 * Give the browser a turn (paint, clicks on Stop) between slices of work: a message to ourselves.
 * Not setTimeout(0): once such waits nest, browsers hold each to 4 ms, an eighth of a 30-ms slice.
 * Not scheduler.yield(): its continuation may run ahead of the waiting clicks.
 */
const turns = new MessageChannel();
const waitingForTurn = [];
turns.port1.onmessage = () => waitingForTurn.shift()();
function yieldToBrowser() {
  return new Promise((resolve) => {
    waitingForTurn.push(resolve);
    turns.port2.postMessage(null);
  });
}

const SLICE_MS = 30; // work this long between yields: Stop and the page stay responsive
const SHOW_MS = 100; // new text is shown this often: each showing lays out the text, not free
const PROGRESS_FROM = 2000; // characters: a text this long shows a progress bar while it is read

/**
 * The pace of a long loop: `await pace()` after each piece of work gives the browser a turn every
 * SLICE_MS and calls show() every SHOW_MS; it is false once the job was stopped.
 */
function pacer(job, show = () => {}) {
  let sliceStart = performance.now(), shown = sliceStart;
  return async () => {
    const now = performance.now();
    if (now - sliceStart <= SLICE_MS) return true;
    if (now - shown > SHOW_MS) {
      show();
      shown = now;
    }
    await yieldToBrowser();
    sliceStart = performance.now();
    return !job.stopped;
  };
}

/** Show `bar` for a long read of `total` characters; returns a function that moves it to `done`. */
function progressBar(bar, total) {
  bar.hidden = total < PROGRESS_FROM;
  bar.max = total;
  bar.value = 0;
  return (done) => { bar.value = done; };
}

// ---------------------------------------------------------------------------------------------
// Showing text: one span per character, shaded; pointing, tapping or arrow keys show details

const $ = (id) => document.getElementById(id);
const visible = (c) => ({ " ": "␣", "\n": "↵", "\t": "⇥" })[c] ?? c;
const percent = (p) => `${(100 * p).toFixed(p >= 0.995 || p < 0.001 ? 0 : 1)}%`;

/** A span for one character; data-i points into the records its view keeps for the details. */
function charSpan(char, record, shade = "") {
  const span = document.createElement("span");
  span.textContent = char;
  if (shade) span.className = shade;
  if (char === "\n") span.classList.add("nl"); // CSS draws a faint ↵ so line ends can be shaded too
  if (record !== undefined) span.dataset.i = record;
  return span;
}

/**
 * Surprisal shades as SHADES + 1 classes, .s0 to .sN, one style rule each: a class costs a third
 * of what an inline colour does per character, which shows while text streams in.
 */
const SHADES = 20;
const surpriseShade = (amount) => `s${Math.round(SHADES * Math.min(1, amount))}`;

function addShadeRules() {
  const rules = Array.from({ length: SHADES + 1 },
    (_, i) => `.s${i} { background-color: hsl(24 95% 55% / ${(0.85 * i / SHADES).toFixed(3)}); }`);
  document.head.append(Object.assign(document.createElement("style"), { textContent: rules.join("\n") }));
}

/** The details panel: the model's five likeliest characters at one place, as small bars. */
function showCandidates(info, title, candidates, chosen, vocab) {
  info.replaceChildren();
  const heading = document.createElement("p");
  heading.textContent = title;
  info.append(heading);
  const list = document.createElement("ol");
  for (const [i, p] of candidates) {
    const item = document.createElement("li");
    if (i === chosen) item.className = "chosen";
    const label = document.createElement("code");
    label.textContent = visible(vocab[i]);
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${(100 * p).toFixed(1)}%`;
    const value = document.createElement("span");
    value.textContent = percent(p);
    const track = document.createElement("span");
    track.className = "track";
    track.append(bar);
    item.append(label, track, value);
    list.append(item);
  }
  info.append(list);
}

/** Make a text box explorable: pointer over, tap, or focus and arrow keys select a character. */
function makeInspectable(box, onSelect) {
  let current = null;
  const select = (span) => {
    if (!span) return;
    current?.classList.remove("current");
    current = span;
    span.classList.add("current");
    onSelect(Number(span.dataset.i));
  };
  const spanAt = (target) => target.closest?.("span[data-i]");
  box.addEventListener("pointerover", (e) => select(spanAt(e.target)));
  box.addEventListener("click", (e) => select(spanAt(e.target)));
  box.addEventListener("focus", () => select(current?.isConnected ? current : box.querySelector("span[data-i]")));
  box.addEventListener("keydown", (e) => {
    const step = { ArrowRight: "nextElementSibling", ArrowLeft: "previousElementSibling" }[e.key];
    let span = null;
    if (step) {
      for (span = current?.[step]; span && !span.dataset.i; span = span[step]);
    } else if (e.key === "Home" || e.key === "End") {
      const all = box.querySelectorAll("span[data-i]");
      span = all[e.key === "Home" ? 0 : all.length - 1];
    } else return;
    e.preventDefault();
    select(span);
    span?.scrollIntoView({ block: "nearest" });
  });
}

/** One job per view: starting another, or Stop, ends the one running. */
const jobs = {};
function startJob(view) {
  if (jobs[view]) jobs[view].stopped = true;
  return (jobs[view] = { stopped: false });
}

// ---------------------------------------------------------------------------------------------
// Write

const SETTINGS = ["prime", "temperature", "top_k", "top_p", "length", "seed"];

/** The write controls as numbers; throws an Error that says what to fix. */
function readSettings() {
  const number = (id) => ($(id).value.trim() === "" ? null : Number($(id).value));
  const s = { prime: $("prime").value, temperature: number("temperature") ?? 0.8, topK: number("top_k"),
    topP: number("top_p"), length: number("length") ?? 500, seed: number("seed") };
  if (!(s.temperature >= 0 && Number.isFinite(s.temperature))) throw new Error("temperature must be a number >= 0");
  const whole = (v, min) => v === null || (Number.isInteger(v) && v >= min);
  if (!whole(s.topK, 1)) throw new Error("top-k must be a whole number >= 1");
  if (s.topP !== null && !(s.topP > 0 && s.topP <= 1)) throw new Error("top-p must be in (0, 1]");
  if (!whole(s.length, 1)) throw new Error("length must be a whole number >= 1");
  if (!whole(s.seed, 0)) throw new Error("seed must be a whole number >= 0");
  return s;
}

/** The link that opens this page with the current settings and generates at once. */
function updateShareLink() {
  const query = new URLSearchParams();
  for (const id of SETTINGS) if ($(id).value !== "") query.set(id, $(id).value);
  query.set("run", "1");
  $("share").href = `?${query}`;
}

/**
 * Continue `prime` by `length` characters, calling onChar(char, record) for each, where record
 * = {p, top}: the probability the model gave the character and its five likeliest, and onShow()
 * when the characters so far should be shown. Returns false if the job was stopped.
 */
async function sample(model, s, job, onChar, onShow = () => {}) {
  const random = mulberry32(s.seed);
  let state = model.zeroState(), logits;
  for (const index of model.startIndices(s.prime)) ({ logits, state } = model.step(state, index));
  const pace = pacer(job, onShow);
  for (let t = 0; t < s.length; t++) {
    const next = pickNext(logits, s, random);
    const probs = softmax(logits);
    onChar(model.vocab[next], { p: probs[next], top: topCandidates(probs), chosen: next });
    if (t === s.length - 1) break;
    ({ logits, state } = model.step(state, next));
    if (!(await pace())) return false;
  }
  onShow();
  return true;
}

async function generate(model) {
  const output = $("output"), status = $("write-status");
  const job = startJob("write");
  let s;
  try {
    s = readSettings();
  } catch (e) {
    status.textContent = e.message;
    output.dataset.state = "error";
    return;
  }
  const seedGiven = s.seed !== null;
  if (!seedGiven) s.seed = Math.floor(Math.random() * 2 ** 32);
  const records = [];
  output.records = records;
  output.replaceChildren();
  const prime = document.createElement("span");
  prime.className = "prime";
  prime.textContent = s.prime;
  output.append(prime);
  output.dataset.state = "running";
  $("stop").disabled = false;
  status.textContent = "Generating…";
  const unknown = Array.from(s.prime).filter((c) => !model.index.has(c));
  let pending = document.createDocumentFragment();
  const start = performance.now();
  const finished = await sample(model, s, job, (char, record) => {
    pending.append(charSpan(char, records.push(record) - 1, surpriseShade(1 - record.p)));
  }, () => {
    output.append(pending); // one DOM update per slice, not per character
    pending = document.createDocumentFragment();
  });
  if (jobs.write !== job) return; // a newer generation took over
  const seconds = (performance.now() - start) / 1000;
  output.dataset.charsPerSec = Math.round(records.length / seconds);
  output.dataset.state = finished ? "done" : "stopped";
  $("stop").disabled = true;
  status.textContent = `${finished ? "Generated" : "Stopped after"} ${records.length.toLocaleString()} characters` +
    ` in ${seconds.toFixed(1)} s (${output.dataset.charsPerSec} chars/s), seed ${s.seed}` +
    (seedGiven ? "" : " (chosen at random)") +
    (unknown.length ? `; the prime's ${unknown.length} characters unknown to the model were skipped` : "");
}

// ---------------------------------------------------------------------------------------------
// Score: every character's surprisal, -log2 p(character | all before it), like generate.py --score

async function score(model) {
  const job = startJob("score");
  const text = $("score-text").value, box = $("score-output"), total = $("score-total");
  const chars = Array.from(text); // by code point, like Python's str
  box.replaceChildren();
  box.records = [];
  delete total.dataset.bpc;
  const progress = progressBar($("score-progress"), chars.length);
  let state = model.zeroState(), logits = null, nats = 0, count = 0, skipped = 0, read = 0;
  let pending = document.createDocumentFragment();
  const pace = pacer(job, () => {
    box.append(pending);
    pending = document.createDocumentFragment();
    total.textContent = `Scoring… ${read.toLocaleString()} of ${chars.length.toLocaleString()} characters`;
    progress(read);
  });
  for (const char of chars) {
    read++;
    const index = model.index.get(char);
    if (index === undefined) { // like --skip-unknown: shown, not read
      skipped++;
      pending.append(Object.assign(charSpan(char), { className: "unknown", title: "not in the vocabulary" }));
      continue;
    }
    if (logits === null) { // the first character is only read
      pending.append(charSpan(char));
    } else {
      const probs = softmax(logits);
      const bits = -Math.log2(probs[index]);
      nats += -Math.log(probs[index]);
      count++;
      const record = box.records.push({ p: probs[index], bits, top: topCandidates(probs), chosen: index }) - 1;
      pending.append(charSpan(char, record, surpriseShade(bits / 8)));
    }
    ({ logits, state } = model.step(state, index));
    if (!(await pace())) return;
  }
  box.append(pending);
  $("score-progress").hidden = true;
  if (count === 0) {
    total.textContent = "Give at least 2 characters the model knows.";
    return;
  }
  const bpc = nats / count / Math.LN2;
  total.dataset.bpc = bpc;
  total.textContent = `${bpc.toFixed(4)} bits/char (${(nats / count).toFixed(4)} nats/char) over ` +
    `${count.toLocaleString()} characters` + (skipped ? `; ${skipped} unknown characters skipped` : "");
}

// ---------------------------------------------------------------------------------------------
// Neurons: one hidden unit's output over a text, and the units that track simple features

/** Features of the text after each character, computed here so users need not guess. */
function textFeatures(chars) {
  const quote = [], bracket = [], column = [], lineStart = [];
  let inQuote = false, depth = 0, col = 0;
  for (const c of chars) {
    if (c === '"') inQuote = !inQuote;
    if ("([{".includes(c)) depth++;
    if (")]}".includes(c)) depth = Math.max(0, depth - 1);
    col = c === "\n" ? 0 : col + 1;
    quote.push(inQuote || c === '"' ? 1 : 0); // the quotes themselves count as inside
    bracket.push(depth > 0 || ")]}".includes(c) ? 1 : 0);
    column.push(col);
    lineStart.push(c === "\n" ? 1 : 0); // the state right after a newline
  }
  return [["inside double quotes", quote], ["inside brackets or parentheses", bracket],
    ["position in the line", column], ["right after a newline", lineStart]];
}

/** Pearson correlation; null when either side does not vary. */
function correlation(xs, ys) {
  const n = xs.length;
  let mx = 0, my = 0;
  for (let i = 0; i < n; i++) { mx += xs[i]; my += ys[i]; }
  mx /= n; my /= n;
  let sxy = 0, sxx = 0, syy = 0;
  for (let i = 0; i < n; i++) {
    const dx = xs[i] - mx, dy = ys[i] - my;
    sxy += dx * dy; sxx += dx * dx; syy += dy * dy;
  }
  return sxx > 0 && syy > 0 ? sxy / Math.sqrt(sxx * syy) : null;
}

const neuronData = { chars: [], activations: [] }; // activations[layer][unit] = Float64Array over chars

async function readNeurons(model) {
  const job = startJob("neurons");
  const status = $("neuron-status");
  status.dataset.state = "running";
  status.textContent = "Reading…";
  const chars = Array.from($("neuron-text").value).filter((c) => model.index.has(c));
  const acts = Array.from({ length: model.numLayers }, // float32: a long text on a big model is many values
    () => Array.from({ length: model.hidden }, () => new Float32Array(chars.length)));
  const progress = progressBar($("neuron-progress"), chars.length);
  let state = model.zeroState(), t = 0;
  const pace = pacer(job, () => {
    status.textContent = `Reading… ${t.toLocaleString()} of ${chars.length.toLocaleString()} characters`;
    progress(t);
  });
  for (; t < chars.length; t++) {
    ({ state } = model.step(state, model.index.get(chars[t])));
    state.h.forEach((h, k) => h.forEach((v, u) => { acts[k][u][t] = v; }));
    if (!(await pace())) return;
  }
  $("neuron-progress").hidden = true;
  Object.assign(neuronData, { chars, activations: acts });
  listTopUnits(model, chars, acts);
  showNeuron();
  status.textContent = chars.length ? `Read ${chars.length.toLocaleString()} characters.`
    : "Give some text the model knows.";
  status.dataset.state = "done";
}

function listTopUnits(model, chars, acts) {
  const box = $("top-units");
  box.replaceChildren();
  for (const [name, values] of textFeatures(chars)) {
    const ranked = [];
    acts.forEach((layer, k) => layer.forEach((unit, u) => {
      const r = correlation(unit, values);
      if (r !== null) ranked.push({ k, u, r });
    }));
    ranked.sort((a, b) => Math.abs(b.r) - Math.abs(a.r));
    const row = document.createElement("div");
    row.className = "feature";
    const title = document.createElement("h3");
    title.textContent = name;
    row.append(title);
    if (!ranked.length) {
      const note = Object.assign(document.createElement("span"), { className: "help" });
      note.textContent = "does not vary in this text";
      row.append(note);
    }
    for (const { k, u, r } of ranked.slice(0, 3)) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "secondary unit";
      button.textContent = `layer ${k + 1}, unit ${u}: r = ${r >= 0 ? "+" : "−"}${Math.abs(r).toFixed(2)}`;
      button.addEventListener("click", () => {
        $("neuron-layer").value = k;
        $("neuron-unit").value = u;
        showNeuron();
        $("neuron-output").scrollIntoView({ block: "nearest" });
      });
      row.append(button);
    }
    box.append(row);
  }
}

/** Colour the text by the chosen unit: blue where it is positive, red where negative. */
function showNeuron() {
  const box = $("neuron-output");
  const layer = Number($("neuron-layer").value), unit = Number($("neuron-unit").value);
  const values = neuronData.activations[layer]?.[unit];
  box.replaceChildren();
  if (!values) return;
  const fragment = document.createDocumentFragment();
  neuronData.chars.forEach((c, t) => {
    const v = values[t], alpha = (0.85 * Math.min(1, Math.abs(v))).toFixed(3);
    const span = charSpan(c);
    span.style.backgroundColor = v >= 0 ? `hsl(212 90% 55% / ${alpha})` : `hsl(0 85% 55% / ${alpha})`;
    span.title = v.toFixed(3);
    fragment.append(span);
  });
  box.append(fragment);
}

// ---------------------------------------------------------------------------------------------
// Items: whole items from a model trained on a list, as generate.py makes them

/** How generate.py --novel compares items: case and surrounding whitespace do not count. */
async function isKnown(known, text) {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text.trim().toLowerCase()));
  const value = new DataView(digest).getUint32(0); // big-endian, as Python's fingerprints
  let lo = 0, hi = known.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (known[mid] < value) lo = mid + 1; else hi = mid;
  }
  return lo < known.length && known[lo] === value;
}

/** One item: the marker, then the prime, then characters until the model draws the marker again. */
function makeItem(model, s, label, random) {
  const prime = Array.from(s.prime).filter((c) => model.index.has(c));
  let state = model.zeroState(), logits;
  for (const index of [model.marker, ...prime.map((c) => model.index.get(c))]) {
    ({ logits, state } = model.step(state, index, label));
  }
  let text = prime.join("");
  for (let t = 0; t < s.length; t++) {
    const next = pickNext(logits, s, random);
    if (next === model.marker) return { text, whole: true };
    text += model.vocab[next];
    if (t < s.length - 1) ({ logits, state } = model.step(state, next, label));
  }
  return { text, whole: false };
}

function readItemSettings() {
  const number = (id) => ($(id).value.trim() === "" ? null : Number($(id).value));
  const s = { prime: $("item-prime").value, count: number("item-count") ?? 20, temperature: number("item-temperature") ?? 0.8,
    topK: null, topP: null, length: number("item-length") ?? 100, seed: number("item-seed"), novel: $("item-novel").checked,
    label: $("item-label").value === "" ? null : Number($("item-label").value) };
  const whole = (v, min, max = Infinity) => v === null || (Number.isInteger(v) && v >= min && v <= max);
  if (!whole(s.count, 1, 1000)) throw new Error("items must be a whole number from 1 to 1000");
  if (!(s.temperature >= 0 && Number.isFinite(s.temperature))) throw new Error("temperature must be a number >= 0");
  if (!whole(s.length, 1)) throw new Error("the longest item must be a whole number >= 1");
  if (!whole(s.seed, 0)) throw new Error("seed must be a whole number >= 0");
  return s;
}

const NOVEL_DRAWS = 50; // as generate.py --novel: give up after this many draws per item asked for

async function makeItems(model, known) {
  const list = $("item-list"), status = $("items-status");
  const job = startJob("items");
  let s;
  try {
    s = readItemSettings();
  } catch (e) {
    status.textContent = e.message;
    list.dataset.state = "error";
    return;
  }
  if (s.seed === null) s.seed = Math.floor(Math.random() * 2 ** 32);
  const random = mulberry32(s.seed), labels = model.labels, seen = new Set();
  let draws = 0, copies = 0, repeats = 0;
  const pace = pacer(job);
  list.replaceChildren();
  list.dataset.state = "running";
  while (list.children.length < s.count && draws < s.count * (s.novel ? NOVEL_DRAWS : 1)) {
    const label = labels.length ? (s.label ?? Math.floor(random() * labels.length)) : null;
    const { text, whole } = makeItem(model, s, label, random);
    draws++;
    if (s.novel && await isKnown(known, text)) copies++;
    else if (s.novel && seen.has(text.trim().toLowerCase())) repeats++;
    else {
      seen.add(text.trim().toLowerCase());
      const li = document.createElement("li");
      li.textContent = text;
      if (!whole) li.className = "cut";
      if (label !== null && s.label === null) li.title = labels[label];
      list.append(li);
    }
    if (!(await pace())) return;
  }
  const made = list.children.length;
  list.dataset.state = "done";
  status.textContent = `${made} item${made === 1 ? "" : "s"}, seed ${s.seed}` + (s.novel
    ? `; ${copies} cop${copies === 1 ? "y" : "ies"} of the training list and ${repeats} repeat${repeats === 1 ? "" : "s"} left out` +
      (made < s.count ? ` in ${draws} draws: the model mostly copies its list; raise the temperature` : "")
    : "");
}

// ---------------------------------------------------------------------------------------------
// The page: views, summary, controls, URL settings

function showView(name) {
  for (const tab of document.querySelectorAll(".tab")) {
    const on = tab.dataset.view === name;
    tab.setAttribute("aria-pressed", on);
    $(`view-${tab.dataset.view}`).hidden = !on;
  }
}

function describeModel(summary) {
  const parts = [];
  if (summary.corpus) {
    parts.push(`trained on ${summary.corpus}` +
      (summary.corpus_length ? ` (${summary.corpus_length.toLocaleString()} characters)` : ""));
  }
  parts.push(`${summary.cell.toUpperCase()} ${summary.layers}×${summary.rnn_size}`,
    `${summary.parameters.toLocaleString()} parameters`);
  if (summary.val_loss !== undefined) {
    parts.push(`validation loss ${(summary.val_loss / Math.LN2).toFixed(3)} bits/char`);
  }
  if (summary.steps !== undefined) parts.push(`${summary.steps.toLocaleString()} steps`);
  return parts.join(" · ");
}

/** Fill the neuron view with text to read: the last generation, else a fresh sample. */
async function defaultNeuronText(model) {
  if ($("output").textContent.length > 50) return $("output").textContent;
  let text = "";
  await sample(model, { prime: "", temperature: 0.8, topK: null, topP: null, length: 800, seed: 1 },
    { stopped: false }, (c) => { text += c; });
  return text;
}

function wireControls(model) {
  $("items-form").addEventListener("submit", (e) => {
    e.preventDefault();
    makeItems(model, model.known);
  });
  $("write-form").addEventListener("submit", (e) => {
    e.preventDefault();
    generate(model);
  });
  $("prime").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("write-form").requestSubmit();
  });
  $("stop").addEventListener("click", () => { if (jobs.write) jobs.write.stopped = true; });
  $("write-form").addEventListener("input", updateShareLink);
  $("score-run").addEventListener("click", () => score(model));
  $("neuron-run").addEventListener("click", () => readNeurons(model));
  $("neuron-layer").addEventListener("change", showNeuron);
  $("neuron-unit").addEventListener("input", showNeuron);
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", async () => {
      showView(tab.dataset.view);
      if (tab.dataset.view === "neurons" && !$("neuron-text").value) {
        $("neuron-text").value = await defaultNeuronText(model);
        readNeurons(model);
      }
    });
  }
  const inspect = (box, info, describe) => makeInspectable(box, (i) => {
    const r = box.records[i];
    showCandidates(info, describe(r), r.top, r.chosen, model.vocab);
  });
  inspect($("output"), $("write-info"),
    (r) => `'${visible(model.vocab[r.chosen])}' had probability ${percent(r.p)}; the model's likeliest here:`);
  inspect($("score-output"), $("score-info"),
    (r) => `'${visible(model.vocab[r.chosen])}': ${r.bits.toFixed(2)} bits (probability ${percent(r.p)}); ` +
      "the model's likeliest here:");
  for (let k = 0; k < model.numLayers; k++) $("neuron-layer").append(new Option(`${k + 1}`, k));
  $("neuron-unit").max = model.hidden - 1;
}

async function main() {
  addShadeRules();
  const spec = window.CHARRNN_MODEL;
  const query = new URLSearchParams(location.search);
  let model;
  try {
    if (!spec) throw new Error("model.js is missing or did not load; export the page again");
    model = await loadModel(spec, query.get("step"));
  } catch (e) {
    $("summary").textContent = `Could not load the model: ${e.message}`;
    document.body.dataset.model = "error";
    return;
  }
  $("summary").textContent = describeModel(spec.summary);
  model.labels = spec.items ? spec.items.labels : [];
  if (spec.items) {
    model.known = knownItems(spec.items);
    model.labels.forEach((name, i) => $("item-label").append(new Option(name, i)));
    $("item-label-field").hidden = !model.labels.length;
    for (const tab of document.querySelectorAll(".tab")) tab.hidden = tab.dataset.view !== "items";
    showView("items");
    $("items-run").disabled = false;
  }
  wireControls(model);
  for (const id of SETTINGS) if (query.has(id)) $(id).value = query.get(id);
  updateShareLink();
  for (const id of ["generate", "score-run", "neuron-run"]) $(id).disabled = false;
  document.body.dataset.step = model.kernel.name;
  document.body.dataset.model = "ready";
  const view = query.get("view");
  if (view === "score" || view === "neurons") document.querySelector(`.tab[data-view="${view}"]`).click();
  if (spec.items) {
    for (const [id, key] of [["item-prime", "prime"], ["item-seed", "seed"], ["item-count", "count"],
      ["item-temperature", "temperature"], ["item-length", "length"]]) if (query.has(key)) $(id).value = query.get(key);
    if (query.has("label")) $("item-label").value = String(model.labels.indexOf(query.get("label")));
    if (query.has("novel")) $("item-novel").checked = query.get("novel") === "1";
    if (query.get("run") === "1") makeItems(model, model.known);
    return;
  }
  if (query.get("run") === "1") generate(model);
}

main();
