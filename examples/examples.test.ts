import { describe, expect, it } from 'vitest';
import { main as customPipeline } from './custom-pipeline';
import { main as runtimeQuantize } from './runtime-quantize';
import { main as tensorBasics } from './tensor-basics';

describe('examples', () => {
  it('tensor-basics prints exact f16 and int4 round trips', () => {
    const out = tensorBasics();
    expect(out[0]).toBe('f16 of [0.1, 1/3, 65504, 1e-8]: 0.0999755859375, 0.333251953125, 65504, 0');
    expect(out[2]).toBe('int4 packed bytes: f8 70 03');
    expect(out[3]).toBe('unpacked: -8, -1, 0, 7, 3');
  });

  it('runtime-quantize quantizes the demo model with FPTQ and generates with it', async () => {
    const out = await runtimeQuantize();
    // 2 layers x 7 projections; q/k/v and gate/up of both layers see the outlier channels, so LAE applies.
    expect(out[0]).toBe('layers quantized: 14, with LAE: 10');
    const m = /top-1 ([\d.]+)%, KL ([\d.]+)/.exec(out[1] ?? '');
    expect(Number(m?.[1])).toBeGreaterThan(50);
    expect(Number(m?.[2])).toBeLessThan(0.5);
    expect(out[2]).toMatch(/^float: The little\S*( \S+)+/);
    expect(out[3]).toMatch(/^fptq: {2}The little/);
  });

  it('custom-pipeline: Hugging Face model → calibrate → custom recipe → save → load → generate', async () => {
    const out = await customPipeline();
    expect(out[0]).toBe('recipe: fptq-g32, 14 layers, group size 32');
    const m = /top-1 ([\d.]+)%, KL ([\d.]+)/.exec(out[1] ?? '');
    // A random model's logits are flat, so int4 weights move its argmax often; the KL stays small.
    expect(Number(m?.[1])).toBeGreaterThan(20);
    expect(Number(m?.[2])).toBeLessThan(0.5);
    expect(out[2]).toMatch(/^generated 12 tokens: the cat \S+/);
    expect(out[3]).toBe('saved and in-memory models agree: true');
  });
});
