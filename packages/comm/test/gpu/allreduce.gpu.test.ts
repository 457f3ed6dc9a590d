/**
 * GPU all-reduce on 2 and 4 ranks, one process per GPU started through `launch`. Checks, per case: every rank's
 * output is the same bits; quantized and fused results equal `allReduceReference` bit for bit (the GPU kernels
 * implement the same f32 operations); NCCL's own all-reduce is within 2x the error of a plain sequential
 * payload-dtype sum; a second call gives the same bits; the plain collectives give exact f32 results; close()
 * releases every buffer and IPC mapping. Prints the error of every case against the exact float64 sum.
 * Run: node node_modules/vitest/vitest.mjs run --project gpu   (skips without 2 GPUs or the addon)
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  allReduceReference,
  exactSum,
  type HostPayload,
  launch,
  type PayloadDType,
  type QuantizedAllReduceOptions,
  type QuantOptions,
  relativeError,
  syntheticActivations,
} from '@q/comm';
import { bf16ArrayToF32, f16ArrayToF32, f32ArrayToBf16, f32ArrayToF16 } from '@q/core';
import { gpuStatus } from '@q/kernels-cuda';
import { describe, expect, it } from 'vitest';

const status = gpuStatus();
const gpus = status.devices.length;
const why = status.available ? `${gpus} CUDA device(s), need 2` : status.reason;
if (gpus < 2) console.warn(`skipping the GPU all-reduce tests: ${why}`);

interface Case {
  id: string;
  n: number;
  dtype: PayloadDType;
  seed: number;
  opts: QuantizedAllReduceOptions;
}

function cases(): Case[] {
  const out: Case[] = [];
  const algos: QuantizedAllReduceOptions[] = [
    { algorithm: 'nccl' },
    { algorithm: 'fused' },
    { algorithm: 'nccl-int8' },
    { algorithm: 'fused-int8' },
    { algorithm: 'nccl-int4' },
    { algorithm: 'fused-int4' },
    { algorithm: 'fused-int8', symmetric: true },
    { algorithm: 'nccl-int4', symmetric: true },
    { algorithm: 'fused-int4', symmetric: true },
  ];
  // 16 KB one-shot; a partial group (n % 128 = 8); just past the one-shot limit (two-shot) with a partial group; 4 MB.
  for (const n of [8192, 3 * 8192 + 8, 262_152, 2_097_216]) {
    for (const o of algos)
      out.push({
        id: `bf16-${n}-${o.algorithm}${o.symmetric ? '-sym' : ''}`,
        n,
        dtype: 'bf16',
        seed: n,
        opts: o,
      });
  }
  for (const n of [3 * 8192 + 8, 2_097_216]) {
    for (const o of [
      { algorithm: 'fused' },
      { algorithm: 'fused-int8' },
      { algorithm: 'nccl-int8' },
      { algorithm: 'fused-int4', symmetric: true },
    ] as QuantizedAllReduceOptions[]) {
      out.push({
        id: `f16-${n}-${o.algorithm}${o.symmetric ? '-sym' : ''}`,
        n,
        dtype: 'f16',
        seed: n + 1,
        opts: o,
      });
    }
  }
  // The other shot of the fused kernel at each end must give the same bits.
  out.push({
    id: 'bf16-2097216-fused-int8-oneshot',
    n: 2_097_216,
    dtype: 'bf16',
    seed: 2_097_216,
    opts: { algorithm: 'fused-int8', oneShot: true },
  });
  out.push({
    id: 'bf16-8192-fused-int4-twoshot',
    n: 8192,
    dtype: 'bf16',
    seed: 8192,
    opts: { algorithm: 'fused-int4', oneShot: false },
  });
  out.push({
    id: 'bf16-24584-fused-twoshot',
    n: 24584,
    dtype: 'bf16',
    seed: 24584,
    opts: { algorithm: 'fused', oneShot: false },
  });
  out.push({
    id: 'bf16-2097216-auto',
    n: 2_097_216,
    dtype: 'bf16',
    seed: 2_097_216,
    opts: { algorithm: 'auto' },
  });
  return out;
}

function quantOf(o: QuantizedAllReduceOptions): QuantOptions | undefined {
  const a = o.algorithm ?? 'auto';
  if (a === 'nccl') return undefined;
  const wire = a.endsWith('int8') ? 'int8' : a.endsWith('int4') ? 'int4' : 'none';
  return { wire, symmetric: o.symmetric ?? false, groupSize: 128 };
}

function widen(x: Uint16Array, dtype: PayloadDType): Float32Array {
  return dtype === 'f16' ? f16ArrayToF32(x) : bf16ArrayToF32(x);
}

/** A plain payload-dtype all-reduce: sequential sum, rounded to the dtype after every add. */
function plainSum(inputs: HostPayload[], dtype: PayloadDType): Uint16Array {
  const acc = widen(inputs[0] as Uint16Array, dtype);
  const round = (f: Float32Array) => widen(dtype === 'f16' ? f32ArrayToF16(f) : f32ArrayToBf16(f), dtype);
  let cur = acc;
  for (let r = 1; r < inputs.length; r++) {
    const x = widen(inputs[r] as Uint16Array, dtype);
    const s = new Float32Array(cur.length);
    for (let i = 0; i < s.length; i++) s[i] = (cur[i] as number) + (x[i] as number);
    cur = round(s);
  }
  return dtype === 'f16' ? f32ArrayToF16(cur) : f32ArrayToBf16(cur);
}

const script = fileURLToPath(new URL('./rank-check.mjs', import.meta.url));

// Q_COMM_TEST_WORLDS (e.g. "4") narrows the GPU counts when device time is short.
const worlds = (process.env.Q_COMM_TEST_WORLDS ?? '2,4').split(',').map(Number);

describe.each(worlds)('all-reduce on %i GPUs', (world) => {
  it.skipIf(gpus < world)(`matches the reference semantics on every rank (${world} ranks)`, async () => {
    const dir = mkdtempSync(join(tmpdir(), `q-comm-gpu-${world}-`));
    const all = cases();
    try {
      const r = await launch({
        nproc: world,
        command: [process.execPath, script],
        timeoutMs: 30_000,
        env: {
          CUDA_VISIBLE_DEVICES: Array.from({ length: world }, (_, i) => i).join(','),
          Q_CHECK_DIR: dir,
          Q_CHECK_CASES: JSON.stringify(all),
        },
      });
      const reports = Array.from({ length: world }, (_, k) => {
        const f = join(dir, `report-${k}.json`);
        return existsSync(f)
          ? JSON.parse(readFileSync(f, 'utf8'))
          : { rank: k, error: `no report (${r.failure ?? 'rank died'})` };
      });
      for (const rep of reports) rep.cases ??= [];
      const rows: string[] = [];
      const failures: string[] = [];
      const refCache = new Map<string, HostPayload>();
      for (const [k, c] of all.entries()) {
        const caseError = reports.map((rep) => rep.cases[k]?.error).find((e) => e !== undefined);
        if (caseError !== undefined || reports.some((rep) => rep.cases[k] === undefined)) {
          failures.push(`${c.id}: ${caseError ?? 'not run'}`);
          rows.push(`${c.id.padEnd(36)} failed: ${caseError ?? 'not run'}`);
          continue;
        }
        const hashes = reports.map((rep) => rep.cases[k].hash);
        if (new Set(hashes).size !== 1) failures.push(`${c.id}: ranks disagree`);
        if (!reports.every((rep) => rep.cases[k].repeatSame))
          failures.push(`${c.id}: a second call changed the bits`);
        const inputs = Array.from({ length: world }, (_, rr) =>
          syntheticActivations(rr, c.n, c.dtype, c.seed),
        );
        const got = new Uint16Array(readFileSync(join(dir, `${c.id}.bin`)).buffer.slice(0));
        const exact = exactSum(inputs, c.dtype);
        const err = relativeError(got, c.dtype, exact);
        const q = quantOf({ ...c.opts, algorithm: reports[0].cases[k].used });
        let verdict: string;
        if (q === undefined) {
          const plain = relativeError(plainSum(inputs, c.dtype), c.dtype, exact);
          verdict = err <= 2 * plain + 1e-6 ? 'ok' : `error ${err} > 2 x plain ${plain}`;
        } else {
          const key = `${c.dtype}-${c.n}-${c.seed}-${JSON.stringify(q)}`;
          let ref = refCache.get(key);
          if (!ref) {
            ref = allReduceReference(inputs, c.dtype, q);
            refCache.set(key, ref);
          }
          const want = ref as Uint16Array;
          let bad = 0;
          let first = -1;
          for (let i = 0; i < want.length; i++) {
            if (got[i] !== want[i]) {
              bad++;
              if (first < 0) first = i;
            }
          }
          verdict =
            bad === 0
              ? 'bit-exact'
              : `${bad} of ${want.length} differ (first at ${first}: got 0x${got[first]?.toString(16)}, want 0x${want[first]?.toString(16)})`;
        }
        rows.push(
          `${c.id.padEnd(36)} ${String(reports[0].cases[k].used).padEnd(11)} rel.err ${err.toExponential(3)}  ${verdict}`,
        );
        if (verdict !== 'ok' && verdict !== 'bit-exact') failures.push(`${c.id}: ${verdict}`);
      }
      console.log(
        `all-reduce on ${world} GPUs (NCCL ${reports[0].nccl}), error against the exact float64 sum:\n${rows.join('\n')}`,
      );
      for (const rep of reports) expect(rep.error, `rank ${rep.rank}`).toBeUndefined();
      expect(r.ok, r.failure).toBe(true);
      expect(reports[0].fused, reports[0].why).toBe(true);
      for (const rep of reports) {
        for (const [name, v] of Object.entries(rep.collectives ?? {}))
          expect(v, `rank ${rep.rank} ${name}`).toBe('ok');
        expect(rep.resources?.after).toEqual({ allocations: 0, ipcHandles: 0 });
        expect(rep.resources?.before.ipcHandles).toBe(world - 1);
      }
      expect(failures).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
