// One rank of the GPU correctness test (started by allreduce.gpu.test.ts through launch). Runs every case of
// CASES (JSON in env) and writes, per case, rank 0's output bytes and every rank's sha256 of its output.
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

const lib = await import(process.env.Q_COMM_LIB ?? '@q/comm');
const outDir = process.env.Q_CHECK_DIR;
const cases = JSON.parse(process.env.Q_CHECK_CASES);
const pg = await lib.initProcessGroup();
const comm = await lib.Communicator.create(pg, { maxFusedBytes: 16 << 20 });
const report = {
  rank: pg.rank,
  world: pg.world,
  fused: comm.fusedAvailable,
  nccl: comm.ncclVersion,
  cases: [],
  collectives: {},
};
try {
  const maxN = Math.max(...cases.map((c) => c.n));
  const inBuf = comm.alloc(maxN * 2);
  const outBuf = comm.alloc(maxN * 2);
  for (const c of cases) {
    try {
      const x = lib.syntheticActivations(pg.rank, c.n, c.dtype, c.seed);
      comm.upload(inBuf, x);
      // Poison the output so an element the kernel never writes cannot pass.
      comm.upload(outBuf, new Uint16Array(c.n).fill(0x7fc1));
      const used = await comm.quantizedAllReduce(inBuf, outBuf, c.n, c.dtype, c.opts);
      const y = new Uint16Array(c.n);
      comm.download(outBuf, y);
      // Run twice: a second call uses the other buffer half and a new epoch, and must give the same bits.
      await comm.quantizedAllReduce(inBuf, outBuf, c.n, c.dtype, c.opts);
      const y2 = new Uint16Array(c.n);
      comm.download(outBuf, y2);
      const hash = createHash('sha256').update(y).digest('hex');
      const hash2 = createHash('sha256').update(y2).digest('hex');
      if (pg.rank === 0) writeFileSync(join(outDir, `${c.id}.bin`), y);
      report.cases.push({ id: c.id, used, hash, repeatSame: hash === hash2 });
    } catch (e) {
      // Errors of one algorithm (no P2P for the fused kernel, say) are reported per case; the others still run.
      report.cases.push({ id: c.id, error: `${e.code ?? ''} ${e.message}` });
      if (e.code !== 'E_UNSUPPORTED' && e.code !== 'E_SHAPE' && e.code !== 'E_DTYPE') throw e;
    }
  }
  // Plain NCCL collectives on f32 values each rank can predict: rank r contributes r + 1 + i/1024.
  const n = 4096;
  const w = pg.world;
  const val = (r, i) => r + 1 + i / 1024;
  const a = comm.alloc(n * w * 4);
  const bbuf = comm.alloc(n * w * 4);
  const mine = Float32Array.from({ length: n * w }, (_, i) => val(pg.rank, i));
  const check = (name, got, want) => {
    let bad = 0;
    for (let i = 0; i < want.length; i++) if (got[i] !== want[i]) bad++;
    report.collectives[name] = bad === 0 ? 'ok' : `${bad} of ${want.length} wrong`;
  };
  const sumAll = (i) => Array.from({ length: w }, (_, r) => val(r, i)).reduce((s, v) => s + v, 0);
  comm.upload(a, mine);
  await comm.allReduce(a, bbuf, n, 'f32');
  let got = new Float32Array(n);
  comm.download(bbuf, got);
  check(
    'allReduce',
    got,
    Float32Array.from({ length: n }, (_, i) => sumAll(i)),
  );
  await comm.allGather(a, bbuf, n, 'f32');
  got = new Float32Array(n * w);
  comm.download(bbuf, got);
  check(
    'allGather',
    got,
    Float32Array.from({ length: n * w }, (_, k) => val(Math.floor(k / n), k % n)),
  );
  await comm.reduceScatter(a, bbuf, n, 'f32');
  got = new Float32Array(n);
  comm.download(bbuf, got);
  check(
    'reduceScatter',
    got,
    Float32Array.from({ length: n }, (_, i) => sumAll(pg.rank * n + i)),
  );
  await comm.allToAll(a, bbuf, n, 'f32');
  got = new Float32Array(n * w);
  comm.download(bbuf, got);
  check(
    'allToAll',
    got,
    Float32Array.from({ length: n * w }, (_, k) => val(Math.floor(k / n), pg.rank * n + (k % n))),
  );
  comm.upload(a, mine);
  await comm.broadcast(a, n, 'f32', w - 1);
  got = new Float32Array(n);
  comm.download(a, got);
  check(
    'broadcast',
    got,
    Float32Array.from({ length: n }, (_, i) => val(w - 1, i)),
  );
  await comm.barrier();
  report.collectives.barrier = 'ok';
  const before = comm.resources();
  comm.close();
  report.resources = { before, after: comm.resources() };
} catch (e) {
  report.error = `${e.code ?? ''} ${e.message}`;
  comm.close();
  process.exitCode = 1;
}
writeFileSync(join(outDir, `report-${pg.rank}.json`), JSON.stringify(report));
pg.close();
