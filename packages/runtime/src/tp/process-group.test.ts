import { initProcessGroup, newJobToken, StoreServer } from '@q/comm';
import { describe, expect, it } from 'vitest';
import { buildDemoModel } from '../demo-model';
import { Model } from '../model';
import { weightsFromMap } from '../weights';
import { processGroupCollectives } from './group';
import { modelFingerprint, shardCollectives, tpHandshake } from './model';
import { shardPlan } from './plan';
import { floatShardModel } from './shard';

describe('tensor-parallel ranks over the q launch rendezvous (one process group per rank)', () => {
  it('two ranks joined through StoreServer compute the logits of TP = 1 with the exact all-reduce', async () => {
    const demo = buildDemoModel({ numLayers: 2, hiddenSize: 128, intermediateSize: 256 });
    const weights = weightsFromMap(demo.weights);
    const token = newJobToken();
    const server = await StoreServer.start({ world: 2, token, timeoutMs: 5000 });
    const env = (rank: number) => ({
      RANK: String(rank),
      WORLD_SIZE: '2',
      MASTER_ADDR: '127.0.0.1',
      MASTER_PORT: String(server.port),
      Q_JOB_TOKEN: token,
    });
    const pgs = await Promise.all([0, 1].map((r) => initProcessGroup({ env: env(r), timeoutMs: 5000 })));
    try {
      const loaded = {
        source: 'llama2c' as const,
        path: '<demo>',
        config: demo.config,
        tokenizer: demo.tokenizer,
        weights,
      };
      const fingerprint = modelFingerprint(loaded);
      const tokens = [
        demo.tokenizer.encodePrompt('the cat saw a dog'),
        demo.tokenizer.encodePrompt('a red ball'),
      ];
      const logits = await Promise.all(
        pgs.map(async (pg) => {
          const c = processGroupCollectives(pg);
          await tpHandshake(c, { tp: 2, fingerprint, allreduce: 'exact' });
          const rank = floatShardModel(
            weights,
            shardPlan(demo.config, 2, pg.rank),
            shardCollectives(c, demo.config.vocabSize, 'exact'),
          );
          return rank.forward(tokens, { logits: 'last' });
        }),
      );
      const ref = await Model.fromFloatWeights(demo.config, demo.weights).forward(tokens, { logits: 'last' });
      expect(logits[0]).toEqual(logits[1]);
      let d = 0;
      for (let i = 0; i < ref.length; i++)
        d = Math.max(d, Math.abs((logits[0]?.[i] as number) - (ref[i] as number)));
      expect(d).toBeLessThan(1e-5);
    } finally {
      for (const pg of pgs) pg.close();
      server.close();
    }
  });
});
