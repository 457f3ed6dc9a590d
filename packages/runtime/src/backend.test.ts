import { isQError } from '@q/core';
import { gpuStatus } from '@q/kernels-cuda';
import { describe, expect, it } from 'vitest';
import { createModel, registerBackend } from './backend';
import { demoTokenizer } from './demo-model';
import type { LoadedModel } from './load';
import { Model } from './model';
import { randomWeights, smallConfig } from './testing/random-model';
import { weightsFromMap } from './weights';

function loaded(): LoadedModel {
  const config = smallConfig();
  return {
    source: 'llama2c',
    path: 'random',
    config,
    tokenizer: demoTokenizer(),
    weights: weightsFromMap(randomWeights(config, 4)),
  };
}

describe('createModel', () => {
  it("builds the CPU model by default and for backend 'cpu'", async () => {
    const l = loaded();
    const a = await createModel(l);
    const b = await createModel(l, { backend: 'cpu' });
    expect(a).toBeInstanceOf(Model);
    expect(b.backend).toBe('cpu');
    expect(await a.forward([[1, 2, 3]])).toEqual(await b.forward([[1, 2, 3]]));
  });

  it.skipIf(gpuStatus().available)("'cuda' without a usable GPU gives gpuStatus()'s reason", async () => {
    const err = await createModel(loaded(), { backend: 'cuda' }).catch((e: unknown) => e);
    expect(isQError(err, 'E_NO_DEVICE')).toBe(true);
    expect((err as Error).message).toContain(gpuStatus().reason);
  });

  it('goes through the registry: a registered factory gets the source and the options', async () => {
    const seen: unknown[] = [];
    registerBackend('cuda', async (source, options) => {
      seen.push(source, options.device);
      return createModel(source, { backend: 'cpu' });
    });
    const l = loaded();
    const m = await createModel(l, { backend: 'cuda', device: 1 });
    expect(seen).toEqual([l, 1]);
    expect(m.backend).toBe('cpu');
  });
});
