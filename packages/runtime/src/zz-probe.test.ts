import { formatPlanTable } from '@q/quant';
import { it } from 'vitest';
import { calibrate } from './calibrate';
import { buildDemoModel } from './demo-model';
import { evaluatePerplexity } from './evaluate';
import { Model } from './model';
import { quantizeLoaded } from './quantize';

it('probe', () => {
  let t0 = performance.now();
  const demo = buildDemoModel();
  const model = Model.fromFloatWeights(demo.config, demo.weights);
  const loaded = {
    source: 'llama2c' as const,
    path: 'demo',
    config: demo.config,
    model,
    tokenizer: demo.tokenizer,
    weights: demo.weights,
  };
  const ids = demo.tokenizer.encode(demo.calibText).slice(0, 256);
  const eids = demo.tokenizer.encode(demo.evalText).slice(0, 128);
  const stats = calibrate(model, ids, { seqLen: 128 });
  console.log('calib', (performance.now() - t0).toFixed(0));
  const f = evaluatePerplexity(model, eids, { ctx: 129 });
  console.log('float ppl', f.ppl, (performance.now() - t0).toFixed(0));
  for (const recipe of ['fptq', 'w4a8-static', 'w4a16']) {
    t0 = performance.now();
    const run = quantizeLoaded(loaded, { recipe, stats });
    const tq = performance.now() - t0;
    const r = evaluatePerplexity(run.model, eids, { ctx: 129, compare: model });
    console.log(
      recipe,
      'quant',
      tq.toFixed(0),
      'eval',
      (performance.now() - t0 - tq).toFixed(0),
      'ppl',
      r.ppl.toFixed(3),
      'top1',
      r.top1?.toFixed(3),
      'kl',
      r.kl?.toFixed(4),
    );
    if (recipe === 'fptq') console.log(formatPlanTable(run.quantized.plans, run.report));
  }
});
