import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { isQError, type QError, Rng } from '@q/core';
import { afterAll, describe, expect, it } from 'vitest';
import { buildDemoModel } from '../demo-model';
import { generateIds } from '../generate';
import type { CausalLM } from '../lm';
import { weightsFromMap } from '../weights';
import { LocalTpGroup, type TpCollectives } from './group';
import { fingerprintPath, shardCollectives, TensorParallelModel, tpHandshake } from './model';
import { shardPlan } from './plan';
import { floatShardModel } from './shard';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'q-tp-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Rank `victim`'s collectives, which crash (throw) or stop answering (never settle) at their `at`-th call. */
function faulty(c: TpCollectives, at: number, how: 'crash' | 'hang'): TpCollectives {
  let calls = 0;
  const step = <T>(f: () => Promise<T>): Promise<T> => {
    calls++;
    if (calls < at) return f();
    if (how === 'hang') return new Promise<T>(() => {});
    return Promise.reject(new Error(`rank ${c.rank} crashed at collective ${calls}`));
  };
  return {
    ...c,
    allReduce: (w, x, wire) => step(() => c.allReduce(w, x, wire)),
    allReduceMax: (w, x) => step(() => c.allReduceMax(w, x)),
    allGather: (w, x) => step(() => c.allGather(w, x)),
  };
}

/** A 2-layer demo model over `tp` ranks where rank `victim` fails at its `at`-th collective. */
function faultyModel(tp: number, victim: number, at: number, how: 'crash' | 'hang', timeoutMs: number) {
  const demo = buildDemoModel({ numLayers: 2, hiddenSize: 128, intermediateSize: 256 });
  const weights = weightsFromMap(demo.weights);
  const group = new LocalTpGroup(tp, { timeoutMs });
  const collectives = Array.from({ length: tp }, (_, r) => {
    const c = group.rank(r);
    return r === victim ? faulty(c, at, how) : c;
  });
  const ranks: CausalLM[] = collectives.map((c) =>
    floatShardModel(
      weights,
      shardPlan(demo.config, tp, c.rank),
      shardCollectives(c, demo.config.vocabSize, 'exact'),
    ),
  );
  return { model: new TensorParallelModel(demo.config, ranks, collectives, group), demo };
}

function rankCodes(e: unknown): (string | null)[] {
  expect(isQError(e)).toBe(true);
  const ranks = (e as QError).details?.ranks as { code: string | null }[];
  return ranks.map((r) => r.code);
}

describe('tensor-parallel faults on CPU ranks', () => {
  // A prompt forward makes 1 + 2·2 + 1 = 6 collectives per rank; collective 20 falls in the 4th decode step.
  it('a rank that crashes mid-generation fails every other rank with E_COMM at once, no hang', async () => {
    const timeoutMs = 5000;
    const { model, demo } = faultyModel(4, 2, 20, 'crash', timeoutMs);
    const t0 = performance.now();
    const err = await generateIds(model, demo.tokenizer.encodePrompt('the cat'), { maxTokens: 12 }).catch(
      (e: unknown) => e,
    );
    const ms = performance.now() - t0;
    expect(ms).toBeLessThan(timeoutMs);
    const codes = rankCodes(err);
    expect(codes[2]).toBe('E_INTERNAL'); // the crashed rank's own (non-q) error
    for (const r of [0, 1, 3]) expect(codes[r]).toBe('E_COMM');
    expect((err as QError).message).toMatch(/rank 2 failed: rank 2 crashed at collective 20/);
    // The group is broken: later calls are refused rather than run on diverged ranks.
    await expect(model.forward([[1]])).rejects.toMatchObject({ code: 'E_COMM' });
    await model.dispose();
  });

  it('a rank that stops answering mid-generation fails every other rank with E_TIMEOUT within the timeout', async () => {
    const timeoutMs = 400;
    const { model, demo } = faultyModel(2, 1, 15, 'hang', timeoutMs);
    const t0 = performance.now();
    const err = await generateIds(model, demo.tokenizer.encodePrompt('the dog'), { maxTokens: 12 }).catch(
      (e: unknown) => e,
    );
    const ms = performance.now() - t0;
    expect(ms).toBeLessThan(timeoutMs + 3000);
    expect(rankCodes(err)).toEqual(['E_TIMEOUT', 'E_TIMEOUT']);
    expect((err as QError).message).toMatch(/Expected rank 1 to reach collective #14 .* within 400 ms/);
    await model.dispose();
  });

  it('refuses ranks holding different model files, or a different --tp, at start', async () => {
    const rng = new Rng(7);
    const bytes = Uint8Array.from({ length: 4096 }, () => rng.int(256));
    const a = path.join(tmp, 'a.bin');
    const b = path.join(tmp, 'b.bin');
    fs.writeFileSync(a, bytes);
    bytes[2048] = (bytes[2048] as number) ^ 1;
    fs.writeFileSync(b, bytes);
    const start = (ids: { tp: number; fingerprint: string }[]) => {
      const g = new LocalTpGroup(ids.length, { timeoutMs: 2000 });
      return Promise.allSettled(ids.map((id, r) => tpHandshake(g.rank(r), { ...id, allreduce: 'exact' })));
    };
    const fa = fingerprintPath(a);
    expect(fingerprintPath(a)).toBe(fa);
    const same = await start([
      { tp: 2, fingerprint: fa },
      { tp: 2, fingerprint: fa },
    ]);
    expect(same.every((r) => r.status === 'fulfilled')).toBe(true);
    for (const r of await start([
      { tp: 2, fingerprint: fa },
      { tp: 2, fingerprint: fingerprintPath(b) },
    ])) {
      expect(r.status).toBe('rejected');
      const e = (r as PromiseRejectedResult).reason as QError;
      expect(e.code).toBe('E_COMM');
      expect(e.message).toMatch(
        /Expected the same model files \(SHA-256 fingerprint\) on every rank but received rank 0: [0-9a-f]{64}, rank 1: [0-9a-f]{64}/,
      );
    }
    for (const r of await start([
      { tp: 2, fingerprint: fa },
      { tp: 4, fingerprint: fa },
    ])) {
      expect((r as PromiseRejectedResult).reason).toMatchObject({
        code: 'E_COMM',
        message: expect.stringMatching(/same --tp on every rank but received rank 0: 2, rank 1: 4/),
      });
    }
    for (const r of await start([
      { tp: 3, fingerprint: fa },
      { tp: 3, fingerprint: fa },
    ]))
      expect((r as PromiseRejectedResult).reason).toMatchObject({
        code: 'E_ARG',
        message: expect.stringMatching(/--tp to equal the 2 ranks of the job but received 3/),
      });
  });
});
