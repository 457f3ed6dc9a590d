import { describe, expect, it } from 'vitest';
import type { PoolJob } from '../test/fixtures/pool-worker';
import { Rng } from './random';
import { shippedScript, WorkerPool } from './workers';

const fixture = new URL('../test/fixtures/', import.meta.url);

describe('WorkerPool from TypeScript sources', () => {
  it('runs jobs on every worker and returns their results', async () => {
    const pool = new WorkerPool(await shippedScript('pool-worker', fixture), { size: 2 });
    try {
      const rng = new Rng(11);
      const jobs = Array.from({ length: 6 }, () => Array.from({ length: 5 }, () => rng.int(1000)));
      const got = await Promise.all(
        jobs.map((values, i) => pool.run<PoolJob, number>({ kind: 'sum', values }, { worker: i % 2 })),
      );
      expect(got).toEqual(jobs.map((v) => v.reduce((a, b) => a + b, 0)));
    } finally {
      await pool.terminate();
    }
  });

  it('keeps a QError code, turns other errors and a dead worker into E_INTERNAL, and recovers', async () => {
    const pool = new WorkerPool(await shippedScript('pool-worker', fixture), { size: 1 });
    try {
      await expect(pool.run({ kind: 'qerror' })).rejects.toMatchObject({ code: 'E_NUMERIC' });
      await expect(pool.run({ kind: 'error' })).rejects.toMatchObject({ code: 'E_INTERNAL' });
      await expect(pool.run({ kind: 'exit' })).rejects.toMatchObject({ code: 'E_INTERNAL' });
      await expect(pool.run({ kind: 'sum', values: [2, 3] })).resolves.toBe(5);
    } finally {
      await pool.terminate();
    }
  });

  it('rejects a job past its timeout with E_TIMEOUT and refuses jobs after terminate', async () => {
    const pool = new WorkerPool(await shippedScript('pool-worker', fixture), { size: 1, timeoutMs: 200 });
    await expect(pool.run({ kind: 'hang' })).rejects.toMatchObject({ code: 'E_TIMEOUT' });
    await expect(pool.run({ kind: 'sum', values: [1] })).resolves.toBe(1);
    await pool.terminate();
    await expect(pool.run({ kind: 'sum', values: [1] })).rejects.toMatchObject({ code: 'E_DISPOSED' });
  });

  it('refuses a worker index outside the pool and a script that does not exist', async () => {
    const pool = new WorkerPool(await shippedScript('pool-worker', fixture), { size: 1 });
    await expect(pool.run({ kind: 'sum', values: [] }, { worker: 1 })).rejects.toMatchObject({
      code: 'E_ARG',
    });
    await pool.terminate();
    await expect(shippedScript('no-such-worker', fixture)).rejects.toMatchObject({ code: 'E_INTERNAL' });
  });
});
