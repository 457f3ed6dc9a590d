import { hostname } from 'node:os';
import { QError } from '@q/core';
import { StoreClient } from './store';

/**
 * One rank's view of the job: who it is, and the rendezvous for exchanging small byte strings.
 *
 * @example
 * ```ts
 * const pg = await initProcessGroup();
 * const ids = await pg.exchange('ids', new TextEncoder().encode(`rank ${pg.rank}`));
 * await pg.checkSame('hidden size', 8192);
 * await pg.barrier('loaded');
 * ```
 */
export interface ProcessGroup {
  readonly rank: number;
  readonly world: number;
  /** Rank among the processes of this host. */
  readonly localRank: number;
  /** Processes on this host. */
  readonly localWorld: number;
  /** True when every rank runs on this host (CUDA IPC can work). */
  readonly singleHost: boolean;
  /** Exchange and collective timeout, ms. */
  readonly timeoutMs: number;
  /** All-gather of byte strings through the rendezvous (rank order). */
  exchange(name: string, value: Uint8Array): Promise<Uint8Array[]>;
  /** Rank 0's bytes to every rank. */
  broadcastBytes(name: string, value: Uint8Array | undefined): Promise<Uint8Array>;
  /** Waits until every rank arrives. */
  barrier(name: string): Promise<void>;
  /** Fails with E_COMM on every rank when the ranks passed different values (message sizes, dtypes). */
  checkSame(name: string, value: string | number): Promise<void>;
  close(): void;
}

/** Overrides of what `q launch` puts in the environment. */
export interface ProcessGroupOptions {
  /** Default: Q_COMM_TIMEOUT_MS, else 60 000. */
  readonly timeoutMs?: number;
  /** Default: process.env. */
  readonly env?: NodeJS.ProcessEnv;
}

function envInt(env: NodeJS.ProcessEnv, name: string, min: number): number {
  const raw = env[name];
  const v = Number(raw);
  if (raw === undefined || raw === '' || !Number.isInteger(v) || v < min) {
    throw new QError(
      'E_ARG',
      `Expected an integer >= ${min} in the environment variable ${name} (start ranks with \`q launch --nproc N -- <command>\`) but received ${raw === undefined ? 'nothing' : JSON.stringify(raw)}`,
    );
  }
  return v;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

/**
 * Joins the job this process was started in by `launch` / `q launch` (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT,
 * Q_JOB_TOKEN). Resolves once every rank has joined; fails with E_TIMEOUT naming the ranks that never arrived,
 * E_AUTH with the wrong token.
 *
 * @example
 * ```ts
 * const pg = await initProcessGroup();
 * console.log(`rank ${pg.rank} of ${pg.world}`);
 * pg.close();
 * ```
 */
export async function initProcessGroup(opts: ProcessGroupOptions = {}): Promise<ProcessGroup> {
  const env = opts.env ?? process.env;
  const rank = envInt(env, 'RANK', 0);
  const world = envInt(env, 'WORLD_SIZE', 1);
  if (rank >= world) throw new QError('E_ARG', `Expected RANK < WORLD_SIZE (${world}) but received ${rank}`);
  const port = envInt(env, 'MASTER_PORT', 1);
  const host = env.MASTER_ADDR || '127.0.0.1';
  const token = env.Q_JOB_TOKEN;
  if (!token)
    throw new QError('E_AUTH', 'Expected a job token in Q_JOB_TOKEN (set by q launch) but received nothing');
  const timeoutMs = opts.timeoutMs ?? (env.Q_COMM_TIMEOUT_MS ? envInt(env, 'Q_COMM_TIMEOUT_MS', 1) : 60_000);
  const client = await StoreClient.connect({ host, port, token, rank, world, timeoutMs });
  let joined: Uint8Array[];
  try {
    joined = await client.exchange('join', enc.encode(hostname()));
  } catch (e) {
    client.close();
    throw e;
  }
  const hosts = joined.map((b) => dec.decode(b));
  const me = hosts[rank];
  const local = hosts.map((h, r) => (h === me ? r : -1)).filter((r) => r >= 0);
  let seq = 0;
  const pg: ProcessGroup = {
    rank,
    world,
    localRank: local.indexOf(rank),
    localWorld: local.length,
    singleHost: local.length === world,
    timeoutMs,
    exchange: (name, value) => client.exchange(`${name}#${seq++}`, value),
    async broadcastBytes(name, value) {
      const all = await pg.exchange(name, rank === 0 ? (value ?? new Uint8Array()) : new Uint8Array());
      return all[0] as Uint8Array;
    },
    async barrier(name) {
      await pg.exchange(`barrier:${name}`, new Uint8Array());
    },
    async checkSame(name, value) {
      const all = (await pg.exchange(`same:${name}`, enc.encode(String(value)))).map((b) => dec.decode(b));
      if (all.some((v) => v !== all[0])) {
        throw new QError(
          'E_COMM',
          `Expected the same ${name} on every rank but received ${all.map((v, r) => `rank ${r}: ${v}`).join(', ')}`,
        );
      }
    },
    close: () => client.close(),
  };
  return pg;
}
