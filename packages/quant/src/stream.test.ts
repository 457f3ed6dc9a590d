import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { bf16BitsToF32, f16BitsToF32, type Tensor, viewBytes } from '@q/core';
import { afterAll, describe, expect, it } from 'vitest';
import { createQuantizedWriter, loadQuantized } from './checkpoint';
import { quantizeModel } from './model';
import { createObserver } from './observer';
import { linearGroups } from './policy';
import { getRecipe } from './recipes';
import { type FloatTensorSource, quantizeJobPool, quantizeStream, widenToF32 } from './stream';
import { randn, tinyConfig, tinyWeights } from './testing';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'q-quant-stream-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const config = tinyConfig({ attentionBias: true });
const f32 = tinyWeights(config, 21);
// Ranges across all three bands of the FPTQ policy, so static, LAE + static and dynamic layers all occur.
const obs = createObserver();
linearGroups(config).forEach((g, i) => {
  const k = g.members[0]?.endsWith('down_proj') ? config.intermediateSize : config.hiddenSize;
  const x = randn(8 * k, i + 3, [3, 40, 300][i % 3]);
  for (const m of g.members) obs.observe(m, x, k);
});

/** An in-memory source over tensors in any float dtype. */
function sourceOf(weights: ReadonlyMap<string, Tensor>): FloatTensorSource {
  return {
    has: (n) => weights.has(n),
    info: (n) => {
      const t = weights.get(n);
      if (!t) throw new Error(`no ${n}`);
      return { dtype: t.dtype as 'f32', shape: t.shape };
    },
    readBytes: (n) => {
      const t = weights.get(n) as Tensor;
      const d = t.data;
      return new Uint8Array(d.buffer, d.byteOffset, d.byteLength).slice();
    },
  };
}

describe('quantizeStream', () => {
  for (const dtype of ['f32', 'f16', 'bf16'] as const) {
    it(`equals quantizeModel bit for bit from ${dtype} weights, with LAE, static and dynamic layers`, async () => {
      const stored = new Map<string, Tensor>(
        [...f32].map(([n, t]) => [n, dtype === 'f32' ? t : t.to(dtype)]),
      );
      // The in-memory path sees the same weights widened exactly to f32.
      const widened = new Map([...stored].map(([n, t]) => [n, t.to('f32')]));
      const want = quantizeModel(widened, config, obs, 'fptq');
      expect(want.model.plans.some((p) => p.lae)).toBe(true);
      expect(new Set(want.model.plans.map((p) => p.act))).toEqual(new Set(['static', 'dynamic']));
      const dir = path.join(tmp, `stream-${dtype}`);
      const recipe = getRecipe('fptq');
      const w = createQuantizedWriter(dir, { config, recipe });
      const seen: number[] = [];
      const { report, plans } = await quantizeStream(sourceOf(stored), config, recipe, w, {
        stats: obs,
        tensorNames: [...stored.keys()],
        onProgress: (p) => seen.push(p.done),
      });
      w.commit(report);
      expect(seen).toEqual(want.report.map((_, i) => i + 1));
      expect(plans).toEqual(want.model.plans);
      expect(report).toEqual(want.report);
      const { model: got } = loadQuantized(dir);
      expect(got.plans).toEqual(want.model.plans);
      expect([...got.linears.keys()]).toEqual([...want.model.linears.keys()]);
      for (const [n, l] of want.model.linears) expect(got.linears.get(n)).toEqual(l);
      expect([...got.tensors.keys()].sort()).toEqual([...want.model.tensors.keys()].sort());
      for (const [n, t] of want.model.tensors) expect(got.tensors.get(n)?.data).toEqual(t.data);
    });
  }

  it('gives the same checkpoint on worker threads, jobs in flight out of order', async () => {
    const stored = new Map<string, Tensor>([...f32].map(([n, t]) => [n, t.to('f16')]));
    const one = path.join(tmp, 'one');
    const many = path.join(tmp, 'many');
    const recipe = getRecipe('fptq');
    const opts = { stats: obs, tensorNames: [...stored.keys()] };
    const w1 = createQuantizedWriter(one, { config, recipe });
    w1.commit((await quantizeStream(sourceOf(stored), config, recipe, w1, opts)).report);
    const pool = await quantizeJobPool(2);
    try {
      const w2 = createQuantizedWriter(many, { config, recipe });
      const r = await quantizeStream(sourceOf(stored), config, recipe, w2, {
        ...opts,
        run: pool.run,
        concurrency: 4,
      });
      w2.commit(r.report);
    } finally {
      await pool.terminate();
    }
    const a = loadQuantized(one);
    const b = loadQuantized(many);
    expect(b.manifest.sha256).toEqual(a.manifest.sha256);
    expect(b.model.linears).toEqual(a.model.linears);
  });

  it('stops at an abort, leaving the writer to clean up', async () => {
    const recipe = getRecipe('w4a8-rtn');
    const dir = path.join(tmp, 'aborted');
    const w = createQuantizedWriter(dir, { config, recipe });
    const ac = new AbortController();
    const run = quantizeStream(sourceOf(f32), config, recipe, w, {
      tensorNames: [...f32.keys()],
      signal: ac.signal,
      onProgress: (p) => {
        if (p.done === 3) ac.abort(new Error('stop here'));
      },
    });
    await expect(run).rejects.toThrow('stop here');
    w.abort();
    expect(fs.existsSync(dir)).toBe(false);
    expect(fs.readdirSync(tmp).filter((f) => f.startsWith('.aborted'))).toEqual([]);
  });

  it('widens f16 and bf16 bytes exactly', () => {
    const t = f32.get('model.layers.0.mlp.up_proj.weight') as Tensor<'f32'>;
    for (const d of ['f16', 'bf16'] as const) {
      const h = t.to(d);
      const bytes = new Uint8Array(h.data.buffer);
      // Against the scalar decoders (whose exhaustive tests live in @q/core).
      const one = d === 'f16' ? f16BitsToF32 : bf16BitsToF32;
      expect(widenToF32(d, bytes)).toEqual(Float32Array.from(h.data, one));
      expect(viewBytes(d, bytes)).toEqual(h.data);
    }
  });
});
