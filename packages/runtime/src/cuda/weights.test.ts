import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { QError } from '@q/core';
import { DeviceTensor } from '@q/kernels-cuda';
import { saveQuantized } from '@q/quant';
import { afterAll, describe, expect, it } from 'vitest';
import { buildDemoModel } from '../demo-model';
import { type LoadedModel, loadLlama2c } from '../load';
import { quantizeLoaded } from '../quantize';
import { sharedDir } from '../shared-data';
import { weightsFromMap } from '../weights';
import { CudaModel } from './model';
import { DeviceArena, openWeightSource, planLayout, syntheticLayout, uploadWeights } from './weights';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'q-cuda-weights-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function demoLoaded(numLayers: number): { loaded: LoadedModel; demo: ReturnType<typeof buildDemoModel> } {
  const demo = buildDemoModel({ numLayers });
  const loaded: LoadedModel = {
    source: 'llama2c',
    path: 'demo',
    config: demo.config,
    tokenizer: demo.tokenizer,
    weights: weightsFromMap(demo.weights),
  };
  return { loaded, demo };
}

async function quantizedDir(name: string, recipe: string): Promise<string> {
  const out = path.join(dir, name);
  saveQuantized(out, (await quantizeLoaded(demoLoaded(1).loaded, { recipe })).quantized);
  return out;
}

function caught(f: () => unknown): QError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(QError);
    return e as QError;
  }
  throw new Error('expected a QError');
}

describe('GPU layout of real checkpoints (no device needed)', () => {
  it('a w4a8-rtn checkpoint: fused W4A8 groups with its plans, bytes counted', async () => {
    const src = openWeightSource(await quantizedDir('rtn', 'w4a8-rtn'));
    try {
      const L = planLayout(src);
      expect(L.layers[0]?.qkv).toMatchObject({
        kind: 'w4a8',
        act: 'dynamic',
        mode: 'group-float',
        kPadded: 512,
        groupSize: 128,
      });
      expect(L.layers[0]?.down).toMatchObject({ kind: 'w4a8', kPadded: 1024 });
      expect(L.dims).toMatchObject({ P: 64, qkvN: (8 + 2 * 4) * 64, ffP: 1024 });
      // int4 weights: about n·k/2 bytes per layer plus scales; embeddings and head in bf16.
      const int4 = (1024 * 512 + 512 * 512 + 2048 * 512 + 512 * 1024) / 2;
      const bf16 = 2 * 512 * 512 * 2;
      expect(L.weightBytes).toBeGreaterThan(int4 + bf16);
      expect(L.weightBytes).toBeLessThan(1.2 * (int4 + bf16) + 64 * 1024);
    } finally {
      src.close();
    }
  });

  it('a manifest whose shapes do not match its tensors is E_FORMAT naming the layer', async () => {
    const out = await quantizedDir('bad', 'w4a8-rtn');
    const file = path.join(out, 'manifest.json');
    const man = JSON.parse(fs.readFileSync(file, 'utf8')) as {
      layers: { name: string; kPadded: number; n: number }[];
    };
    const l0 = man.layers[0] as { name: string; kPadded: number };
    l0.kPadded += 128;
    fs.writeFileSync(file, JSON.stringify(man));
    const e = caught(() => planLayout(openWeightSource(out)));
    expect(e.code).toBe('E_FORMAT');
    expect(e.message).toContain(l0.name);
    (man.layers[0] as { kPadded: number }).kPadded -= 128;
    (man.layers[1] as { n: number }).n += 16;
    fs.writeFileSync(file, JSON.stringify(man));
    const e2 = caught(() => planLayout(openWeightSource(out)));
    expect(e2.code).toBe('E_FORMAT');
    expect(e2.message).toContain((man.layers[1] as { name: string }).name);
  });

  for (const recipe of ['w4a16', 'w8a8'])
    it(`recipe ${recipe}: E_UNSUPPORTED naming it`, async () => {
      const out = await quantizedDir(recipe, recipe);
      const e = caught(() => planLayout(openWeightSource(out)));
      expect(e.code).toBe('E_UNSUPPORTED');
      expect(e.message).toContain(`no GPU kernel for recipe ${recipe}`);
    });

  it('a float model: every group bf16; stories260K pads its heads and MLP', () => {
    const demo = buildDemoModel({ numLayers: 1 });
    const L = planLayout(openWeightSource({ config: demo.config, weights: demo.weights }));
    expect(L.layers[0]?.qkv).toEqual({ kind: 'bf16' });
    const shared = sharedDir();
    const file = shared ? path.join(shared, 'models', 'stories260K', 'stories260K.bin') : '';
    if (!file || !fs.existsSync(file)) {
      console.warn('stories260K layout check skipped: ../shared/models/stories260K is absent');
      return;
    }
    const S = planLayout(openWeightSource(file));
    expect(S.dims).toMatchObject({ hd: 8, P: 64, ff: 172, ffP: 176 });
    expect(S.tiedHead).toBe(true);
    // What loadModel returns (createModel's source) plans the same as the path.
    const fromLoaded = planLayout(openWeightSource(loadLlama2c(file)));
    expect(fromLoaded.weightBytes).toBe(S.weightBytes);
  });

  it('memory plan: weights + cache (maxBatch × maxContext) + workspace, from the layout alone', () => {
    const c = { ...buildDemoModel({ numLayers: 2 }).config };
    const L = syntheticLayout(c, 'w4a8');
    const m = CudaModel.memoryPlan(
      L,
      c,
      { maxBatch: 4, maxContext: 256, pageSize: 16, prefillChunk: 256 },
      0,
    );
    expect(m.cache).toBe(2 * 2 * (4 * 16 + 1) * 16 * 4 * 64 * 2);
    expect(m.total).toBe(m.weights + m.cache + m.workspace + m.reserve);
    expect(L.layers[1]?.down).toMatchObject({ act: 'dynamic', mode: 'group-int' });
  });
});

describe('uploadWeights prepares every tensor in the planned layout (recording uploader, no device)', () => {
  const BYTES: Record<string, number> = { f32: 4, bf16: 2, u8: 1, i32: 4, i8: 1 };
  function record(src: ReturnType<typeof openWeightSource>) {
    const layout = planLayout(src);
    let bytes = 0;
    let addr = 1n << 20n;
    const up = {
      device: 0,
      put: (
        _a: DeviceArena,
        dtype: DeviceTensor['dtype'],
        shape: readonly number[],
        data: ArrayBufferView,
      ) => {
        const n = shape.reduce((x, y) => x * y, 1) * (BYTES[dtype] ?? 0);
        expect(data.byteLength, `${dtype} [${shape.join(', ')}]`).toBe(n);
        bytes += n;
        const t = DeviceTensor.wrap(addr, dtype, shape);
        addr += BigInt(n + 256);
        return t;
      },
    };
    const w = uploadWeights(src, layout, up, new DeviceArena());
    return { layout, w, bytes };
  }

  it('W4A8 (fptq on the demo model): fused, padded, packed; bytes as estimated', async () => {
    const { loaded, demo } = demoLoaded(2);
    const run = await quantizeLoaded(loaded, { recipe: 'fptq', calibText: demo.calibText, calibTokens: 512 });
    const q = run.quantized;
    const { layout, w, bytes } = record(openWeightSource({ quantized: q }));
    const L0 = w.layers[0];
    expect(L0?.qkv.kind).toBe('w4a8');
    if (L0?.qkv.kind === 'w4a8') {
      expect(L0.qkv.w.n).toBe(layout.dims.qkvN);
      expect(L0.qkv.act === 'static').toBe(L0.qkv.aScale !== undefined);
    }
    expect(bytes).toBeGreaterThanOrEqual(layout.weightBytes);
    expect(bytes - layout.weightBytes).toBeLessThanOrEqual(4 * 4 * demo.config.numLayers);
  });

  it('bf16 (stories260K, heads 8 → 64, MLP 172 → 176, tied head)', () => {
    const shared = sharedDir();
    const file = shared ? path.join(shared, 'models', 'stories260K', 'stories260K.bin') : '';
    if (!file || !fs.existsSync(file)) {
      console.warn('stories260K upload check skipped: ../shared/models/stories260K is absent');
      return;
    }
    const { layout, w, bytes } = record(openWeightSource(file));
    expect(w.lmHead).toBe(w.embed);
    const o = w.layers[0]?.o;
    expect(o?.kind === 'bf16' && o.w.shape).toEqual([64, 8 * 64]);
    expect(bytes).toBe(layout.weightBytes);
  });

  it('W4A8 stories260K (fptq g64): o_proj groups re-laid for padded heads', async () => {
    const shared = sharedDir();
    const file = shared ? path.join(shared, 'models', 'stories260K', 'stories260K.bin') : '';
    const text = shared ? path.join(shared, 'data', 'tinystories-valid-sample.txt') : '';
    if (!file || !fs.existsSync(file) || !fs.existsSync(text)) {
      console.warn('stories260K W4A8 upload check skipped: ../shared is absent');
      return;
    }
    const loaded = loadLlama2c(file);
    const q = (
      await quantizeLoaded(loaded, {
        recipe: 'fptq',
        groupSize: 64,
        calibText: fs.readFileSync(text, 'utf8').slice(0, 4000),
        calibTokens: 1024,
      })
    ).quantized;
    const { layout, w } = record(openWeightSource({ quantized: q }));
    const o = w.layers[0]?.o;
    expect(o?.kind).toBe('w4a8');
    if (o?.kind === 'w4a8') expect([o.w.n, o.w.kPadded, o.w.groupSize]).toEqual([64, 512, 512]);
    const down = w.layers[0]?.down;
    if (down?.kind === 'w4a8') expect(down.w.kPadded).toBe(192);
    expect(layout.dims.ffP).toBe(176);
  });
});
