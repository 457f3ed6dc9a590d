// A small program against the published API: build the seeded demo model, quantize it with FPTQ and compare it
// with the float model, then generate a few tokens greedily with both.
import {
  buildDemoModel,
  calibrate,
  createModel,
  evaluatePerplexity,
  generateIds,
  type LoadedModel,
  quantizeLoaded,
  weightsFromMap,
} from '@q/runtime';

export async function main(): Promise<string[]> {
  const demo = buildDemoModel({ numLayers: 2, hiddenSize: 128, intermediateSize: 256 });
  const loaded: LoadedModel = {
    source: 'llama2c',
    path: 'demo',
    config: demo.config,
    tokenizer: demo.tokenizer,
    weights: weightsFromMap(demo.weights),
  };
  const float = await createModel(loaded, { backend: 'cpu' });
  const stats = await calibrate(float, demo.tokenizer.encode(demo.calibText).slice(0, 128), { seqLen: 65 });
  const fptq = await quantizeLoaded(loaded, { recipe: 'fptq', stats });
  const quantized = await createModel(fptq.quantized, { backend: 'cpu' });
  const evalIds = demo.tokenizer.encode(demo.evalText).slice(0, 64);
  const r = await evaluatePerplexity(quantized, evalIds, { ctx: 65, compare: float });
  const prompt = [demo.config.bosTokenId, ...demo.tokenizer.encode('The little')];
  const a = await generateIds(float, prompt, { maxTokens: 8 });
  const b = await generateIds(quantized, prompt, { maxTokens: 8 });
  await Promise.all([float.dispose(), quantized.dispose()]);
  return [
    `layers quantized: ${fptq.quantized.linears.size}, with LAE: ${fptq.quantized.plans.filter((p) => p.lae).length}`,
    `fptq vs float on ${r.tokens} tokens: top-1 ${(100 * (r.top1 ?? 0)).toFixed(1)}%, KL ${(r.kl ?? 0).toFixed(4)}`,
    `float: The little${demo.tokenizer.decode(a)}`,
    `fptq:  The little${demo.tokenizer.decode(b)}`,
  ];
}

if (process.argv[1]?.endsWith('runtime-quantize.ts')) for (const l of await main()) console.log(l);
