import { allReduceReference, type ProcessGroup } from '@q/comm';
import { isQError, QError } from '@q/core';

/**
 * The collectives of one tensor-parallel rank over host f32 arrays. `LocalTpGroup` implements them for ranks
 * that run in one process (the CPU path); a GPU rank implements the same calls with `@q/comm`'s `Communicator`.
 */
export interface TpCollectives {
  readonly rank: number;
  readonly world: number;
  /**
   * Sum over ranks, the same bits on every rank: `'none'` is the f32 sum in rank order; `'int8'` / `'int4'` the
   * two-step Flash Communication all-reduce (`@q/comm`'s `allReduceReference`).
   */
  allReduce(what: string, x: Float32Array, wire: 'none' | 'int8' | 'int4'): Promise<Float32Array>;
  /** Element-wise max over ranks (exact). */
  allReduceMax(what: string, x: Float32Array): Promise<Float32Array>;
  /** Every rank's array, in rank order. */
  allGather(what: string, x: Float32Array): Promise<Float32Array[]>;
  /** Fails on every rank (E_COMM, naming each rank's value) when the ranks passed different values. */
  checkSame(what: string, value: string): Promise<void>;
  /** Tells the other ranks that this one failed: their pending and later collectives fail with E_COMM. */
  fail(error: unknown): void;
}

/** Options of `LocalTpGroup`. */
export interface LocalTpGroupOptions {
  /** A collective that some rank does not reach within this time fails every rank (E_TIMEOUT). Default 60 000. */
  readonly timeoutMs?: number;
  /** Elements per scale of the int8/int4 wire. Default 128, the group of `@q/comm`'s GPU kernels. */
  readonly wireGroupSize?: number;
}

type Kind = 'sum' | 'max' | 'gather' | 'same';

interface Pending {
  readonly kind: Kind;
  readonly what: string;
  readonly values: (Float32Array | string | undefined)[];
  readonly waiters: { resolve: (v: unknown) => void; reject: (e: unknown) => void }[];
  readonly wire: 'none' | 'int8' | 'int4';
  arrived: number;
  timer: NodeJS.Timeout | undefined;
}

/**
 * Tensor-parallel ranks in one process meeting at collectives: the k-th collective of every rank is matched with
 * the k-th of the others, checked to be the same operation on the same length, and computed once when the last
 * rank arrives. A rank that fails (`fail`) or does not arrive within the timeout fails every other rank's
 * pending and later collectives with a QError (E_COMM or E_TIMEOUT), so no rank waits forever.
 *
 * @example
 * ```ts
 * const g = new LocalTpGroup(2, { timeoutMs: 5000 });
 * const [a, b] = await Promise.all([
 *   g.rank(0).allReduce('x', Float32Array.of(1, 2), 'none'),
 *   g.rank(1).allReduce('x', Float32Array.of(3, 4), 'none'),
 * ]); // both [4, 6]
 * ```
 */
export class LocalTpGroup {
  readonly timeoutMs: number;
  readonly wireGroupSize: number;
  private readonly seq: number[];
  private readonly pending = new Map<number, Pending>();
  private failure: QError | undefined;
  private readonly failureListeners = new Set<(e: QError) => void>();

  constructor(
    readonly world: number,
    options: LocalTpGroupOptions = {},
  ) {
    if (!Number.isInteger(world) || world < 1)
      throw new QError('E_ARG', `Expected a positive integer for world but received ${world}`);
    this.timeoutMs = options.timeoutMs ?? 60_000;
    if (!(this.timeoutMs > 0))
      throw new QError('E_ARG', `Expected a positive timeout for timeoutMs but received ${this.timeoutMs}`);
    this.wireGroupSize = options.wireGroupSize ?? 128;
    this.seq = new Array<number>(world).fill(0);
  }

  /** Why the group failed, once it has. */
  get failed(): QError | undefined {
    return this.failure;
  }

  /** Calls `listener` once when the group fails (at once if it has); returns a function that removes it. */
  onFailure(listener: (e: QError) => void): () => void {
    if (this.failure !== undefined) {
      listener(this.failure);
      return () => {};
    }
    this.failureListeners.add(listener);
    return () => this.failureListeners.delete(listener);
  }

  /** Rank `r`'s collectives. */
  rank(r: number): TpCollectives {
    if (!Number.isInteger(r) || r < 0 || r >= this.world)
      throw new QError('E_ARG', `Expected a rank in [0, ${this.world}) but received ${r}`);
    const meet = <T>(kind: Kind, what: string, v: Float32Array | string, wire: Pending['wire'] = 'none') =>
      this.meet(r, kind, what, v, wire) as Promise<T>;
    return {
      rank: r,
      world: this.world,
      allReduce: (what, x, wire) => meet<Float32Array>('sum', what, x, wire),
      allReduceMax: (what, x) => meet<Float32Array>('max', what, x),
      allGather: (what, x) => meet<Float32Array[]>('gather', what, x),
      checkSame: (what, value) => meet<void>('same', what, value),
      fail: (e) => {
        const msg = e instanceof Error ? e.message : String(e);
        this.abort(
          new QError('E_COMM', `Expected every rank to stay in the job but rank ${r} failed: ${msg}`, {
            cause: e,
          }),
        );
      },
    };
  }

  /** Fails every pending and later collective with `error`. */
  abort(error: QError): void {
    if (this.failure !== undefined) return;
    this.failure = error;
    for (const p of this.pending.values()) {
      if (p.timer) clearTimeout(p.timer);
      for (const w of p.waiters) w?.reject(error);
    }
    this.pending.clear();
    for (const l of this.failureListeners) l(error);
    this.failureListeners.clear();
  }

  private meet(
    rank: number,
    kind: Kind,
    what: string,
    value: Float32Array | string,
    wire: Pending['wire'],
  ): Promise<unknown> {
    if (this.failure !== undefined) return Promise.reject(this.failure);
    const id = this.seq[rank] as number;
    this.seq[rank] = id + 1;
    let p = this.pending.get(id);
    if (p === undefined) {
      p = {
        kind,
        what,
        wire,
        values: new Array(this.world).fill(undefined),
        waiters: new Array(this.world),
        arrived: 0,
        timer: undefined,
      };
      const entry = p;
      entry.timer = setTimeout(() => {
        const missing = entry.values.flatMap((v, r) => (v === undefined ? [r] : []));
        this.abort(
          new QError(
            'E_TIMEOUT',
            `Expected rank${missing.length > 1 ? 's' : ''} ${missing.join(', ')} to reach collective #${id} (${entry.what}) within ${this.timeoutMs} ms but ${missing.length > 1 ? 'they' : 'it'} did not`,
          ),
        );
      }, this.timeoutMs);
      this.pending.set(id, p);
    } else {
      const first = p.values.find((v) => v !== undefined);
      const len = (v: Float32Array | string | undefined) => (typeof v === 'string' ? -1 : (v?.length ?? -1));
      if (
        p.kind !== kind ||
        p.what !== what ||
        p.wire !== wire ||
        (kind !== 'gather' && len(first) !== len(value))
      ) {
        const e = new QError(
          'E_COMM',
          `Expected the same collective on every rank at #${id} but received ${p.kind} ${p.what} (${len(first)} values) and, on rank ${rank}, ${kind} ${what} (${len(value)} values)`,
        );
        this.abort(e);
        return Promise.reject(e);
      }
    }
    const entry = p;
    entry.values[rank] = value;
    entry.arrived++;
    const done = new Promise<unknown>((resolve, reject) => {
      entry.waiters[rank] = { resolve, reject };
    });
    if (entry.arrived === this.world) {
      clearTimeout(entry.timer);
      this.pending.delete(id);
      let results: unknown[];
      try {
        results = combine(entry, this.wireGroupSize);
      } catch (e) {
        const err = isQError(e) ? e : new QError('E_COMM', String(e), { cause: e });
        this.abort(err);
        for (const w of entry.waiters) w.reject(err);
        return done;
      }
      entry.waiters.forEach((w, r) => {
        w.resolve(results[r]);
      });
    }
    return done;
  }
}

/** Element-wise max of equally long arrays. */
function elementwiseMax(xs: readonly Float32Array[]): Float32Array {
  const out = (xs[0] as Float32Array).slice();
  for (const y of xs.slice(1))
    for (let i = 0; i < out.length; i++) out[i] = Math.max(out[i] as number, y[i] as number);
  return out;
}

function combine(p: Pending, groupSize: number): unknown[] {
  const world = p.values.length;
  if (p.kind === 'same') {
    const vs = p.values as string[];
    if (vs.some((v) => v !== vs[0]))
      throw new QError(
        'E_COMM',
        `Expected the same ${p.what} on every rank but received ${vs.map((v, r) => `rank ${r}: ${v}`).join(', ')}`,
      );
    return new Array(world).fill(undefined);
  }
  const xs = p.values as Float32Array[];
  if (p.kind === 'gather') return xs.map(() => xs.map((x) => x.slice()));
  let out: Float32Array;
  if (p.kind === 'max') {
    out = elementwiseMax(xs);
  } else {
    out = allReduceReference(xs, 'f32', { wire: p.wire, groupSize }) as Float32Array;
  }
  return xs.map(() => out.slice());
}

function f32Bytes(x: Float32Array): Uint8Array {
  return new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
}

function f32Of(b: Uint8Array): Float32Array {
  // The exchange hands back fresh bytes; copy into an aligned buffer.
  const out = new Float32Array(b.byteLength / 4);
  new Uint8Array(out.buffer).set(b);
  return out;
}

/**
 * The collectives of one rank of a job started by `q launch` (one process per rank), over the host rendezvous of
 * `@q/comm`'s `ProcessGroup`: every rank receives every rank's array and computes the same reduction (the
 * reference all-reduce, bit for bit `LocalTpGroup`'s). Slow next to NCCL, meant for CPU ranks in separate
 * processes and for the checks at start; a GPU rank swaps in `Communicator` for the three array collectives.
 * Faults are the process group's: a rank that exits fails the others with E_COMM, one that hangs with E_TIMEOUT.
 *
 * @example
 * ```ts
 * const pg = await initProcessGroup(); // inside `q launch --nproc 2 -- node rank.mjs`
 * const c = processGroupCollectives(pg);
 * await tpHandshake(c, { tp: 2, fingerprint, allreduce: 'int8' });
 * ```
 */
export function processGroupCollectives(
  pg: ProcessGroup,
  options: { wireGroupSize?: number } = {},
): TpCollectives {
  const groupSize = options.wireGroupSize ?? 128;
  const gather = async (what: string, x: Float32Array): Promise<Float32Array[]> =>
    (await pg.exchange(`tp:${what}`, f32Bytes(x))).map(f32Of);
  const same = (what: string, xs: Float32Array[]): Float32Array[] => {
    const n = xs[0]?.length ?? 0;
    xs.forEach((x, r) => {
      if (x.length !== n)
        throw new QError(
          'E_COMM',
          `Expected ${n} values from rank ${r} for ${what} (as rank 0) but received ${x.length}`,
        );
    });
    return xs;
  };
  return {
    rank: pg.rank,
    world: pg.world,
    allReduce: async (what, x, wire) =>
      allReduceReference(same(what, await gather(what, x)), 'f32', { wire, groupSize }) as Float32Array,
    allReduceMax: async (what, x) => elementwiseMax(same(what, await gather(what, x))),
    allGather: gather,
    checkSame: (what, value) => pg.checkSame(what, value),
    // The launcher notices the process exit and tells the other ranks.
    fail: () => {},
  };
}
