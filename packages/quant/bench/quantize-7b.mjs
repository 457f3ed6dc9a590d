// Quantizes Llama-2-7B-shaped random fp16 weights with the `fptq` recipe, from a safetensors file to a
// quantized checkpoint directory, layer by layer with worker threads. Prints weights/s and peak RSS and writes
// bench-results/quantize-7b.json beside this package.
//
// Build first (this script and its workers import the package's dist):
//   ./node_modules/.bin/turbo run build --filter=@q/quant
// Run (from the repository root):
//   node packages/quant/bench/quantize-7b.mjs [--layers 32] [--dir /tmp] [--workers 2] [--keep] [--no-hash]
// --layers N shrinks the model (the full size is 32 layers, a 13.5 GB file); the source file is generated once
// per size and reused while it exists (--keep keeps it afterwards). Statistics are synthetic per-channel max|X|
// chosen so that every branch of the FPTQ policy (static, LAE + static, dynamic) occurs.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import {
  createSafetensorsWriter,
  f16BitsToF32,
  f32ToF16Bits,
  llamaTensors,
  openSafetensors,
  Rng,
  Tensor,
} from '@q/core';
import {
  createObserver,
  createQuantizedWriter,
  describeSources,
  foldLae,
  formatPlanTable,
  getRecipe,
  groupMaxAbs,
  laeScales,
  layerFile,
  linearGroups,
  OTHER_FILE,
  planGroup,
} from '../dist/index.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const arg = (name, fallback) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] !== undefined ? args[i + 1] : fallback;
};
const flag = (name) => args.includes(`--${name}`);
const layers = Number(arg('layers', '32'));
const dir = arg('dir', os.tmpdir());
fs.mkdirSync(dir, { recursive: true });
const workers = Number(arg('workers', String(Math.max(1, os.availableParallelism()))));
const hash = !flag('no-hash');

/** Llama-2-7B shapes. */
const config = {
  architecture: 'llama',
  hiddenSize: 4096,
  intermediateSize: 11008,
  numLayers: layers,
  numHeads: 32,
  numKvHeads: 32,
  headDim: 128,
  vocabSize: 32000,
  maxSeqLen: 4096,
  rmsNormEps: 1e-5,
  ropeTheta: 10000,
  ropeScaling: { type: 'none' },
  ropeStyle: 'half',
  tieWordEmbeddings: false,
  attentionBias: false,
  bosTokenId: 1,
  eosTokenIds: [2],
};
const H = config.hiddenSize;
const F = config.intermediateSize;

function specs() {
  return llamaTensors(config).map((t) => ({ name: t.name, dtype: 'f16', shape: [...t.shape] }));
}

/** A pool of N(0, 0.02) f16 values from the seeded Rng; tensors are filled from the pool at random offsets. */
function generate(file) {
  const rng = new Rng(0x9e3779b9);
  const rnd = () => rng.next();
  const pool = new Uint16Array(1 << 22);
  for (let i = 0; i < pool.length; i++) {
    const g = Math.sqrt(-2 * Math.log(1 - rnd())) * Math.cos(2 * Math.PI * rnd());
    pool[i] = f32ToF16Bits(g * 0.02);
  }
  const all = specs();
  const w = createSafetensorsWriter(file, all, { format: 'pt' });
  for (const s of all) {
    const count = s.shape.reduce((a, b) => a * b, 1);
    const out = new Uint16Array(count);
    if (s.shape.length === 1) {
      for (let i = 0; i < count; i++) out[i] = f32ToF16Bits(1 + 0.1 * (rnd() - 0.5));
    } else {
      for (let o = 0; o < count; o += 1 << 16) {
        const len = Math.min(1 << 16, count - o);
        const src = Math.floor(rnd() * (pool.length - len));
        out.set(pool.subarray(src, src + len), o);
      }
    }
    w.write(s.name, new Uint8Array(out.buffer));
  }
  w.close();
}

/** Synthetic calibration statistics: lognormal channels, with a per-group range that cycles through the bands. */
function syntheticStats() {
  const obs = createObserver();
  const rng = new Rng(12345);
  const rnd = () => rng.next();
  const bands = [8, 60, 400];
  // Group type t of layer i gets band (t + i) mod 3, so every group type meets every band across layers.
  linearGroups(config).forEach((g, gi) => {
    const k = g.members[0].endsWith('down_proj') ? F : H;
    const m = new Float32Array(k);
    for (let j = 0; j < k; j++) m[j] = Math.exp(rnd() * 2 - 1);
    m[Math.floor(rnd() * k)] = bands[((gi % 4) + Math.floor(gi / 4)) % 3];
    obs.setMaxAbs(g.members[0], m, 2048);
  });
  return obs;
}

function f16ToF32Tensor(reader, name) {
  const t = reader.read(name);
  const out = new Float32Array(t.size);
  for (let i = 0; i < out.length; i++) out[i] = f16BitsToF32(t.data[i]);
  return new Tensor('f32', t.shape, out);
}

const file = path.join(dir, `q-llama7b-shape-${layers}L.safetensors`);
const outDir = path.join(dir, `q-llama7b-shape-${layers}L-fptq`);
if (!fs.existsSync(file)) {
  const t = performance.now();
  generate(file);
  console.log(
    `generated ${file} (${(fs.statSync(file).size / 1e9).toFixed(2)} GB) in ${((performance.now() - t) / 1000).toFixed(1)} s`,
  );
}
fs.rmSync(outDir, { recursive: true, force: true });

const recipe = getRecipe('fptq');
const stats = syntheticStats();
const t0 = performance.now();
const source = hash ? describeSources([file]) : [];
const tHash = performance.now() - t0;
const reader = openSafetensors(file);
const writer = createQuantizedWriter(outDir, { config, recipe, source });

// Scheduling: every linear layer is one task; each worker holds up to DEPTH tasks so it keeps computing while
// the main thread reads the next matrix or writes a finished layer. A task's f16 bytes are read only when it is
// sent, so memory holds at most workers × DEPTH matrices plus the layers being assembled.
const DEPTH = 2;
const tasks = [];
const layerState = [];
for (let i = 0; i < layers; i++) {
  const groups = linearGroups(config).slice(i * 4, i * 4 + 4);
  const norms = new Map();
  let count = 0;
  for (const g of groups) {
    const plans = planGroup(g, groupMaxAbs(stats, g), recipe.activations);
    let s;
    if (plans[0].lae) s = laeScales(groupMaxAbs(stats, g), { minScale: recipe.activations.laeMinScale });
    if (g.norm) norms.set(`${g.norm}.weight`, s);
    g.members.forEach((name, mi) => {
      tasks.push({ layer: i, slot: count++, name, laeScales: s, plan: plans[mi] });
    });
  }
  layerState.push({ norms, results: new Array(count), left: count });
}

let params = 0;
let workerMs = 0;
const reports = [];
const allPlans = [];
let nextTask = 0;
let written = 0;

function send(w) {
  const id = nextTask++;
  const t = tasks[id];
  const info = reader.info(`${t.name}.weight`);
  const [n, k] = info.shape;
  params += n * k;
  const bytes = reader.readBytes(`${t.name}.weight`);
  w.postMessage({ id, bytes, n, k, laeScales: t.laeScales, recipe, plan: t.plan }, [bytes.buffer]);
}

function writeLayer(i) {
  const st = layerState[i];
  const norms = new Map();
  for (const [gName, s] of st.norms) {
    const gain = f16ToF32Tensor(reader, gName);
    // LAE: the norm gain takes 1/s (foldLae with no linears; the workers scaled the columns).
    const g = s ? foldLae({ normWeight: gain.data, linears: [], scales: s }).normWeight : gain.data;
    norms.set(gName, new Tensor('f32', gain.shape, g));
  }
  writer.writeFile(
    layerFile(i),
    st.results.map((r) => r.linear),
    st.results.map((r) => r.report.plan),
    norms,
  );
  for (const r of st.results) {
    reports.push(r.report);
    allPlans.push(r.report.plan);
  }
  st.results = [];
  written++;
  process.stdout.write(
    // One line that rewrites itself on a terminal; one line per layer in a log.
    `layer ${written}/${layers} written at ${((performance.now() - t0) / 1000).toFixed(1)} s${process.stdout.isTTY ? '\r' : '\n'}`,
  );
}

const pool = Array.from(
  { length: Math.min(workers, tasks.length) },
  () => new Worker(path.join(here, 'quantize-worker.mjs')),
);
const done = new Promise((resolve, reject) => {
  for (const w of pool) {
    w.on('message', (msg) => {
      try {
        if (msg.error) throw new Error(`${msg.error.code ?? ''} ${msg.error.message}`);
        workerMs += msg.ms;
        const t = tasks[msg.id];
        const st = layerState[t.layer];
        st.results[t.slot] = msg;
        st.left--;
        if (nextTask < tasks.length) send(w);
        // Layers are written in order, as soon as each is complete.
        while (written < layers && layerState[written].left === 0) writeLayer(written);
        if (written === layers) resolve();
      } catch (e) {
        reject(e);
      }
    });
    w.on('error', reject);
  }
});
for (let d = 0; d < DEPTH; d++) for (const w of pool) if (nextTask < tasks.length) send(w);
// The float tensors pass through in f16 while the workers start on the first layer.
for (const [f, names] of [
  [OTHER_FILE, ['model.embed_tokens.weight', 'model.norm.weight']],
  ['lm_head.safetensors', ['lm_head.weight']],
]) {
  const m = new Map(names.map((n) => [n, reader.read(n)]));
  for (const t of m.values()) params += t.size;
  writer.writeFile(f, [], [], m);
}
await done.catch((e) => {
  writer.abort();
  throw e;
});
console.log('');
writer.commit(reports);
reader.close();
const seconds = (performance.now() - t0) / 1000;
await Promise.all(pool.map((w) => w.terminate()));

const rssGiB = (process.resourceUsage().maxRSS * 1024) / 2 ** 30;
const outBytes = fs.readdirSync(outDir).reduce((a, f) => a + fs.statSync(path.join(outDir, f)).size, 0);
const result = {
  date: new Date().toISOString(),
  machine: `${os.cpus()[0]?.model ?? 'unknown CPU'}, ${os.availableParallelism()} cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB`,
  node: process.version,
  layers,
  workers,
  recipe: recipe.name,
  sourceBytes: fs.statSync(file).size,
  outputBytes: outBytes,
  params,
  seconds,
  hashSeconds: tHash / 1000,
  workerQuantizeSeconds: workerMs / 1000,
  weightsPerSecond: params / seconds,
  peakRssGiB: rssGiB,
  plans: Object.fromEntries(
    ['static', 'dynamic'].map((a) => [a, allPlans.filter((p) => p.act === a).length]),
  ),
  laeLayers: allPlans.filter((p) => p.lae).length,
};
const rows = [
  ['layers', String(layers)],
  ['workers', String(workers)],
  ['source file', `${(result.sourceBytes / 1e9).toFixed(2)} GB fp16`],
  ['quantized dir', `${(outBytes / 1e9).toFixed(2)} GB`],
  ['parameters', `${(params / 1e9).toFixed(3)} B`],
  ['total time', `${seconds.toFixed(1)} s (sha256 of the source: ${(tHash / 1000).toFixed(1)} s)`],
  ['weights/s', `${(params / seconds / 1e6).toFixed(1)} M`],
  ['peak RSS', `${rssGiB.toFixed(2)} GiB`],
  ['plans', `${result.plans.static} static (${result.laeLayers} with LAE), ${result.plans.dynamic} dynamic`],
];
console.log(rows.map(([a, b]) => `${a.padEnd(14)} ${b}`).join('\n'));
if (layers <= 2) console.log(formatPlanTable(allPlans, reports));
const resDir = path.join(here, '..', 'bench-results');
fs.mkdirSync(resDir, { recursive: true });
fs.writeFileSync(path.join(resDir, `quantize-7b-${layers}L.json`), `${JSON.stringify(result, null, 2)}\n`);
if (!flag('keep')) fs.rmSync(file, { force: true });
fs.rmSync(outDir, { recursive: true, force: true });
