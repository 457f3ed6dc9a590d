/**
 * @internal What the GEMM benchmark and the dispatch tuner share: random device data, CUDA-event timing of a
 * launch (plain or CUDA-graph replay), and the atomic write of a result file.
 */
import { randomFillSync } from 'node:crypto';
import { closeSync, fsyncSync, openSync, renameSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { f32ToBf16Bits } from '@q/core';
import { DeviceTensor, Event, Graph, type Stream } from './device';

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
