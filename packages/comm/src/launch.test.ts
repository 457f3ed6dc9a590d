import { fileURLToPath } from 'node:url';
import { bundleSource, QError } from '@q/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { launch, launchCli } from './launch';
import { newJobToken, StoreClient, StoreServer } from './store';

const fixture = fileURLToPath(new URL('../test/fixtures/rank.mjs', import.meta.url));
let lib = '';
beforeAll(async () => {
  lib = (await bundleSource(fileURLToPath(new URL('./index.ts', import.meta.url)))).href;
});

interface RankResult {
  rank: number;
  ok: boolean;
  code?: string;
  message?: string;
  values?: string[];
  localRank?: number;
}

async function run(nproc: number, mode: string, timeoutMs = 1500, extra: Record<string, string> = {}) {
  const results: RankResult[] = [];
  const t0 = Date.now();
  const r = await launch({
    nproc,
    command: [process.execPath, fixture],
    timeoutMs,
    stdio: 'pipe',
    env: { Q_COMM_LIB: lib, FIXTURE_MODE: mode, ...extra },
    onSpawn: (_, child) => {
      let buf = '';
      child.stdout?.on('data', (d: Buffer) => {
        buf += d.toString();
        for (const line of buf.split('\n'))
          if (line.startsWith('RESULT ')) results.push(JSON.parse(line.slice(7)) as RankResult);
        buf = buf.slice(buf.lastIndexOf('\n') + 1);
      });
      child.stderr?.resume();
    },
  });
  return { r, results: results.sort((a, b) => a.rank - b.rank), elapsed: Date.now() - t0 };
}

describe('launch + process group', () => {
  it('starts ranks that rendezvous and exchange bytes', async () => {
    const { r, results } = await run(3, 'ok');
    expect(r.ok).toBe(true);
    expect(results.map((x) => x.rank)).toEqual([0, 1, 2]);
    for (const x of results) {
      expect(x.values).toEqual(['r0', 'r1', 'r2']);
      expect(x.localRank).toBe(x.rank);
    }
  });

  it('fails every other rank with E_COMM when a rank dies', async () => {
    const { r, results, elapsed } = await run(3, 'die', 20_000);
    expect(r.ok).toBe(false);
    expect(r.failure).toMatch(/rank 1 exited with code 3/);
    expect(results.map((x) => [x.rank, x.code])).toEqual([
      [0, 'E_COMM'],
      [2, 'E_COMM'],
    ]);
    expect(elapsed).toBeLessThan(10_000); // told at once, not after the 20 s timeout
  });

  it('fails every other rank with E_TIMEOUT when a rank never arrives', async () => {
    const { r, results, elapsed } = await run(3, 'hang', 800, { FIXTURE_ODD: '2' });
    expect(r.ok).toBe(false);
    expect(results.map((x) => [x.rank, x.code])).toEqual([
      [0, 'E_TIMEOUT'],
      [1, 'E_TIMEOUT'],
    ]);
    expect(results[0]?.message).toMatch(/missing ranks \[2\]/);
    expect(elapsed).toBeLessThan(8000);
  });

  it('fails the other ranks when a rank exits before joining', async () => {
    const { r, results } = await run(2, 'absent', 5000);
    expect(r.ok).toBe(false);
    expect(r.failure).toMatch(/rank 1 to join the job but received its exit/);
    expect(results.map((x) => [x.rank, x.ok])).toEqual([[0, false]]);
    expect(results[0]?.code).toBe('E_COMM');
  });

  it('detects message sizes that differ across ranks (E_COMM on every rank)', async () => {
    const { results } = await run(2, 'size');
    expect(results.map((x) => x.code)).toEqual(['E_COMM', 'E_COMM']);
    expect(results[0]?.message).toMatch(/rank 0: 4096, rank 1: 4097/);
  });

  it('joins ranks of two nodes through the rendezvous of node 0 (fixed port, shared token)', async () => {
    const probe = await StoreServer.start({ world: 1, token: newJobToken() });
    const port = probe.port;
    probe.close();
    const token = newJobToken();
    const lines: string[] = [];
    const node = (nodeRank: number) =>
      launch({
        nproc: 2,
        nnodes: 2,
        nodeRank,
        port,
        token,
        timeoutMs: 5000,
        command: [process.execPath, fixture],
        stdio: 'pipe',
        env: { Q_COMM_LIB: lib, FIXTURE_MODE: 'ok' },
        onSpawn: (_, child) => {
          child.stdout?.on('data', (d: Buffer) =>
            lines.push(
              ...d
                .toString()
                .split('\n')
                .filter((l) => l.startsWith('RESULT ')),
            ),
          );
          child.stderr?.resume();
        },
      });
    const [a, b] = await Promise.all([node(0), node(1)]);
    expect(a.ok && b.ok).toBe(true);
    const results = lines.map((l) => JSON.parse(l.slice(7)) as RankResult).sort((x, y) => x.rank - y.rank);
    expect(results.map((x) => x.rank)).toEqual([0, 1, 2, 3]);
    for (const x of results) expect(x.values).toEqual(['r0', 'r1', 'r2', 'r3']);
  });

  it('rejects a process with the wrong job token (E_AUTH)', async () => {
    const token = newJobToken();
    const server = await StoreServer.start({ world: 2, token, timeoutMs: 1000 });
    try {
      await expect(
        StoreClient.connect({
          host: '127.0.0.1',
          port: server.port,
          token: newJobToken(),
          rank: 0,
          world: 2,
          timeoutMs: 1000,
        }),
      ).rejects.toThrow(expect.objectContaining({ code: 'E_AUTH' }));
      expect(server.joined(0)).toBe(false);
    } finally {
      server.close();
    }
  });

  it('rejects a second process claiming the same rank', async () => {
    const token = newJobToken();
    const server = await StoreServer.start({ world: 2, token, timeoutMs: 1000 });
    const a = await StoreClient.connect({
      host: '127.0.0.1',
      port: server.port,
      token,
      rank: 0,
      world: 2,
      timeoutMs: 1000,
    });
    try {
      await expect(
        StoreClient.connect({
          host: '127.0.0.1',
          port: server.port,
          token,
          rank: 0,
          world: 2,
          timeoutMs: 1000,
        }),
      ).rejects.toThrow(/second one/);
    } finally {
      a.close();
      server.close();
    }
  });

  it('fails with E_TIMEOUT when no rendezvous answers', async () => {
    const server = await StoreServer.start({ world: 1, token: newJobToken() });
    const port = server.port;
    server.close();
    await expect(
      StoreClient.connect({
        host: '127.0.0.1',
        port,
        token: newJobToken(),
        rank: 0,
        world: 1,
        timeoutMs: 300,
      }),
    ).rejects.toThrow(QError);
  });

  it('parses the q launch command line', async () => {
    expect(
      await launchCli([
        '--nproc',
        '2',
        '--timeout-ms=3000',
        '--',
        process.execPath,
        '-e',
        'process.exit(Number(process.env.RANK) === 1 ? 5 : 0)',
      ]),
    ).toBe(5);
    expect(await launchCli(['--nproc=2', '--', process.execPath, '-e', '0'])).toBe(0);
    await expect(launchCli(['--nproc', '2'])).rejects.toThrow(/Expected a command after --/);
    await expect(launchCli(['--bogus', '1', '--', 'x'])).rejects.toThrow(QError);
  });

  it('rejects bad launch options', async () => {
    await expect(launch({ nproc: 0, command: ['node'] })).rejects.toThrow(/nproc/);
    await expect(launch({ nproc: 1, command: ['node'], nnodes: 2, token: newJobToken() })).rejects.toThrow(
      /fixed port/,
    );
  });
});
