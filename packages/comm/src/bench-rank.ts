/**
 * One rank of `benchAllreduce` (started through `launch`): times every algorithm on every message size with CUDA
 * events and writes rank 0's table as JSON to Q_BENCH_OUT. Latency is the largest per-rank median.
 */
import { writeFileSync } from 'node:fs';
import type { Event } from '@q/kernels-cuda';
import { BENCH_COLUMNS, BENCH_EXTRA_COLUMNS, type BenchCell, type BenchRow } from './bench-columns';
import { Communicator } from './communicator';
import { initProcessGroup } from './group';
import { exactSum, relativeError } from './reference';
import { syntheticActivations } from './synthetic';

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] as number;
};

async function main(): Promise<void> {
  const hidden = Number(process.env.Q_BENCH_HIDDEN ?? 8192);
  const tokens = (process.env.Q_BENCH_TOKENS ?? '1,8,32,128,512,1024,2048,4096,8192').split(',').map(Number);
  const errElems = Number(process.env.Q_BENCH_ERR_ELEMS ?? 1 << 20);
  const pg = await initProcessGroup();
  const maxN = Math.max(...tokens) * hidden;
  const comm = await Communicator.create(pg, { maxFusedBytes: maxN * 2 });
  try {
    const input = syntheticActivations(pg.rank, maxN, 'bf16') as Uint16Array;
    // Rotate over input copies so large messages are read from HBM, not L2.
    const rot = Math.max(1, Math.min(4, Math.floor((1 << 29) / (maxN * 2))));
    const ins = Array.from({ length: rot }, () => {
      const b = comm.alloc(maxN * 2);
      comm.upload(b, input);
      return b;
    });
    const out = comm.alloc(maxN * 2);
    // Rank 0 needs every rank's input prefix for the exact sum; the generator is element-wise, so it recomputes it.
    const errN = Math.min(errElems, maxN);
    const prefixes =
      pg.rank === 0 ? Array.from({ length: pg.world }, (_, r) => syntheticActivations(r, errN, 'bf16')) : [];
    const rows: BenchRow[] = [];
    for (const t of tokens) {
      const n = t * hidden;
      const bytes = n * 2;
      const cells: Record<string, BenchCell> = {};
      const exact =
        pg.rank === 0
          ? exactSum(
              prefixes.map((p) => (p as Uint16Array).subarray(0, Math.min(n, errN))),
              'bf16',
            )
          : undefined;
      const extra = process.env.Q_BENCH_EXTRA === '0' ? [] : BENCH_EXTRA_COLUMNS;
      for (const col of [
        ...BENCH_COLUMNS,
        ...extra.filter((c) => bytes <= (c.maxBytes ?? Number.POSITIVE_INFINITY)),
      ]) {
        const iters = bytes <= 1 << 20 ? 200 : bytes <= 32 << 20 ? 60 : 25;
        let used = '';
        let mine = Number.NaN;
        let relErr = Number.NaN;
        let error: string | undefined;
        try {
          for (let i = 0; i < 5; i++)
            used = await comm.quantizedAllReduce(ins[i % rot] as (typeof ins)[0], out, n, 'bf16', col.opts);
          await comm.barrier();
          const starts: Event[] = [];
          const ends: Event[] = [];
          for (let i = 0; i < iters; i++) {
            starts.push(comm.recordEvent());
            await comm.quantizedAllReduce(ins[i % rot] as (typeof ins)[0], out, n, 'bf16', col.opts);
            ends.push(comm.recordEvent());
          }
          comm.synchronize();
          mine = median(starts.map((s0, i) => comm.elapsedMs(s0, ends[i] as Event))) * 1000;
          await comm.quantizedAllReduce(ins[0] as (typeof ins)[0], out, n, 'bf16', col.opts);
          if (pg.rank === 0) {
            const m = Math.min(n, errN);
            const got = new Uint16Array(m);
            comm.download(out, got);
            relErr = relativeError(got, 'bf16', exact as Float64Array);
          } else {
            comm.synchronize();
          }
        } catch (e) {
          // One failing column (no P2P for the fused kernel, say) must not cost the others.
          error = e instanceof Error ? e.message.split('\n')[0] : String(e);
          console.error(`bench: rank ${pg.rank}, ${t} tokens, ${col.name}: ${error}`);
        }
        const all = await pg.exchange(`bench-${t}-${col.name}`, new TextEncoder().encode(String(mine)));
        const us = Math.max(...all.map((b) => Number(new TextDecoder().decode(b))));
        const busGBs = (bytes * (2 * (pg.world - 1))) / pg.world / (us * 1e-6) / 1e9;
        cells[col.name] =
          error === undefined
            ? { us, busGBs, relErr, algorithm: used }
            : { us, busGBs, relErr, algorithm: used, error };
      }
      rows.push({ tokens: t, bytes, cells });
      if (pg.rank === 0) console.error(`bench: ${pg.world} GPUs, ${t} tokens done`);
    }
    if (pg.rank === 0 && process.env.Q_BENCH_OUT) {
      writeFileSync(
        process.env.Q_BENCH_OUT,
        JSON.stringify({ world: pg.world, hidden, ncclVersion: comm.ncclVersion, errElems: errN, rows }),
      );
    }
  } finally {
    comm.close();
    pg.close();
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
