// Writes a >= 1 GiB safetensors file tensor by tensor with the streaming writer, reads it back tensor by
// tensor, verifies a checksum of every tensor, and reports throughput and peak RSS.
// Run: `npm run bench` in this package (builds first), or `node bench/safetensors-io.mjs [--dir D] [--gib N]`
// after a build. Results go to bench-results/safetensors-io.json beside this package.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createSafetensorsWriter, openSafetensors, Rng } from '../dist/index.js';

const args = process.argv.slice(2);
const arg = (name, fallback) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] !== undefined ? args[i + 1] : fallback;
};
const dir = arg('dir', os.tmpdir());
const gib = Number(arg('gib', '1'));
const rows = 2048;
const cols = 2048; // 16 MiB of f32 per tensor, the size of a 7B model's larger matrices' row blocks
const tensorBytes = rows * cols * 4;
const count = Math.ceil((gib * 2 ** 30) / tensorBytes);
const file = path.join(dir, `q-bench-${process.pid}.safetensors`);

/** Deterministic, non-constant contents per tensor (the seeded Rng, seeded by the index). */
function fill(buf, seed) {
  const rng = new Rng(seed);
  for (let i = 0; i < buf.length; i++) buf[i] = rng.nextU32();
}

/** FNV-1a over 32-bit words. */
function checksum(words) {
  let h = 0x811c9dc5;
  for (let i = 0; i < words.length; i++) h = Math.imul(h ^ words[i], 16777619);
  return h >>> 0;
}

const specs = Array.from({ length: count }, (_, i) => ({
  name: `layers.${i}.weight`,
  dtype: 'f32',
  shape: [rows, cols],
}));
const sums = [];
const buf = new Uint32Array(rows * cols);
const bytes = new Uint8Array(buf.buffer);

let t0 = process.hrtime.bigint();
let fillNs = 0n;
const w = createSafetensorsWriter(file, specs, { format: 'pt', bench: 'safetensors-io' });
for (let i = 0; i < count; i++) {
  const f0 = process.hrtime.bigint();
  fill(buf, i);
  sums.push(checksum(buf));
  fillNs += process.hrtime.bigint() - f0;
  w.write(specs[i].name, bytes);
}
w.close();
const writeNs = process.hrtime.bigint() - t0 - fillNs;
const totalBytes = fs.statSync(file).size;

t0 = process.hrtime.bigint();
let sumNs = 0n;
const r = openSafetensors(file);
let bad = 0;
for (let i = 0; i < count; i++) {
  const t = r.read(specs[i].name);
  const s0 = process.hrtime.bigint();
  const words = new Uint32Array(t.data.buffer, t.data.byteOffset, t.data.length);
  if (checksum(words) !== sums[i]) bad++;
  sumNs += process.hrtime.bigint() - s0;
}
r.close();
const readNs = process.hrtime.bigint() - t0 - sumNs;
fs.unlinkSync(file);

const mb = totalBytes / 1e6;
const result = {
  date: new Date().toISOString(),
  node: process.version,
  platform: `${os.platform()} ${os.arch()}`,
  cpu: os.cpus()[0]?.model ?? 'unknown',
  dir,
  tensors: count,
  tensorShape: [rows, cols],
  dtype: 'F32',
  fileBytes: totalBytes,
  writeMBps: Math.round(mb / (Number(writeNs) / 1e9)),
  readMBps: Math.round(mb / (Number(readNs) / 1e9)),
  readNote: 'read right after the write, so largely from the page cache',
  checksumMismatches: bad,
  peakRssMB: Math.round(process.resourceUsage().maxRSS / 1024),
};
console.log('| file | tensors | write MB/s (incl. fsync) | read MB/s | checksum | peak RSS |');
console.log('| --- | --- | --- | --- | --- | --- |');
console.log(
  `| ${(totalBytes / 2 ** 30).toFixed(2)} GiB | ${count} × f32 [${rows}, ${cols}] | ${result.writeMBps} | ${result.readMBps} | ${bad === 0 ? 'ok' : `${bad} bad`} | ${result.peakRssMB} MB |`,
);
const outDir = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'bench-results');
fs.mkdirSync(outDir, { recursive: true });
fs.writeFileSync(path.join(outDir, 'safetensors-io.json'), `${JSON.stringify(result, null, 2)}\n`);
if (bad > 0 || result.peakRssMB >= 300) {
  console.error(bad > 0 ? 'checksum mismatch' : `peak RSS ${result.peakRssMB} MB is over 300 MB`);
  process.exit(1);
}
