/**
 * @internal What the GEMM benchmark and the dispatch tuner share: random device data, CUDA-event timing of a
 * launch (plain or CUDA-graph replay), and the atomic write of a result file.
 */
import { randomFillSync } from 'node:crypto';
import { closeSync, fsyncSync, openSync, renameSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { f32ToBf16Bits, type Rng } from '@q/core';
import { DeviceTensor, Event, Graph, type Stream } from './device';
import { DeviceGemmWeights } from './ops';

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

export function randomBf16(count: number): Uint16Array {
  const bytes = new Uint8Array(count);
  randomFillSync(bytes);
  const out = new Uint16Array(count);
  // Values in [-1, 1) with varied exponents: random data, never zeros (tensor cores run faster on zeros).
  for (let i = 0; i < count; i++) out[i] = f32ToBf16Bits(((bytes[i] as number) - 127.5) / 128);
  return out;
}

export function fillDevice(t: DeviceTensor, source: DeviceTensor): void {
  // Repeats a random source block over t (device-side copies: cheap even for GB tensors).
  const chunk = source.byteLength;
  for (let off = 0; off < t.byteLength; off += chunk) {
    const len = Math.min(chunk, t.byteLength - off);
    const dst = DeviceTensor.wrap(t.ptr + BigInt(off), 'u8', [len], { device: t.device });
    const src = DeviceTensor.wrap(source.ptr, 'u8', [len], { device: t.device });
    dst.copyFrom(src);
  }
}

/** Times `launch(i)` (i rotates the inputs) and returns the median µs per launch. */
export function timeIt(
  launch: (i: number) => void,
  stream: Stream,
  trials: number,
  batchMs: number,
  timing: 'graph' | 'stream',
): number {
  const a = Event.create(stream.device);
  const b = Event.create(stream.device);
  let graph: Graph | undefined;
  try {
    launch(0);
    a.record(stream);
    for (let i = 0; i < 3; i++) launch(i + 1);
    b.record(stream);
    b.synchronize();
    const est = Math.max(Event.elapsedMs(a, b) / 3, 1e-3);
    const reps = Math.max(1, Math.min(timing === 'graph' ? 200 : 500, Math.round(batchMs / est)));
    let run: () => void;
    if (timing === 'graph') {
      graph = Graph.capture(stream, () => {
        for (let r = 0; r < reps; r++) launch(r);
      });
      const g = graph;
      run = () => g.launch(stream);
      run(); // warm the graph
    } else {
      let i = 0;
      run = () => {
        for (let r = 0; r < reps; r++) launch(i++);
      };
    }
    const samples: number[] = [];
    for (let t = 0; t < trials; t++) {
      a.record(stream);
      run();
      b.record(stream);
      b.synchronize();
      samples.push((Event.elapsedMs(a, b) * 1000) / reps);
    }
    return median(samples);
  } finally {
    graph?.dispose();
    a.dispose();
    b.dispose();
  }
}

export function writeAtomic(path: string, text: string): void {
  const tmp = join(dirname(path), `.${Date.now()}.${process.pid}.tmp`);
  const fd = openSync(tmp, 'w');
  try {
    writeSync(fd, text);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
}

/** One rotation slot of a shape's W4A8 weights: per-channel and group-scaled views of the same packed bytes. */
export interface BenchWeightSet {
  pc: DeviceGemmWeights;
  grp: DeviceGemmWeights;
}

/**
 * Random W4A8 weights of a shape in enough copies to exceed twice the L2 (at most 32), with per-channel, group
 * and Integer Scale scales from `rng`; tensors come from `alloc`, so the caller owns and frees them.
 */
export function benchWeightSets(
  s: { n: number; k: number },
  groupSize: number,
  device: number,
  l2: number,
  randomSource: DeviceTensor,
  rng: Rng,
  alloc: <D extends 'u8' | 'f32' | 'i32'>(dtype: D, shape: number[]) => DeviceTensor<D>,
): BenchWeightSet[] {
  const groups = s.k / groupSize;
  const wBytes = (s.n / 16) * Math.ceil(s.k / 64) * 512;
  const wCopies = Math.max(1, Math.min(32, Math.ceil((2 * l2) / wBytes)));
  const scaleSrc = new Float32Array(s.n * groups).map(() => 0.001 + rng.next() * 0.01);
  const qSrc = new Int32Array(s.n * groups).map(() => 1 + rng.int(1024));
  const unitSrc = new Float32Array(s.n).map(() => 1e-5 + rng.next() * 1e-5);
  const pcScales = alloc('f32', [s.n, 1]);
  pcScales.upload(scaleSrc.subarray(0, s.n));
  const gScales = alloc('f32', [s.n, groups]);
  gScales.upload(scaleSrc);
  const qScale = alloc('i32', [s.n, groups]);
  qScale.upload(qSrc);
  const unit = alloc('f32', [s.n]);
  unit.upload(unitSrc);
  const sets: BenchWeightSet[] = [];
  for (let c = 0; c < wCopies; c++) {
    const packed = alloc('u8', [wBytes]);
    fillDevice(packed, randomSource);
    const common = { n: s.n, k: s.k, kPadded: s.k, device, packed };
    sets.push({
      pc: new DeviceGemmWeights({ ...common, groupSize: s.k, groups: 1, scales: pcScales }),
      grp: new DeviceGemmWeights({ ...common, groupSize, groups, scales: gScales, intQ: qScale, unit }),
    });
  }
  return sets;
}
