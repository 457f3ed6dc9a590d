#!/usr/bin/env node
// Prints the markdown table of a benchGemm JSON file: node packages/kernels-cuda/bench/table.mjs gemm.json
import { readFileSync } from 'node:fs';

const r = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const f = (x, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '-');
console.log(
  `GPU: ${r.gpu} (sm ${r.computeCapability}), ${r.date.slice(0, 10)}, group size ${r.groupSize}, timing: ${r.timing ?? 'stream'}; median µs per GEMM`,
);
console.log('');
console.log(
  '| shape (K×N) | M | cuBLAS bf16 | per-channel | group-float | group-int | speedup pc / gf / gi | TB/s gi | TOPS gi |',
);
console.log('| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |');
for (const x of r.rows) {
  console.log(
    `| ${x.model} ${x.layer} ${x.k}×${x.n} | ${x.m} | ${f(x.cublasBf16Us)} | ${f(x.w4a8Us['per-channel'])} | ${f(x.w4a8Us['group-float'])} | ${f(x.w4a8Us['group-int'])} | ${f(x.speedup['per-channel'], 2)} / ${f(x.speedup['group-float'], 2)} / ${f(x.speedup['group-int'], 2)} | ${f(x.w4a8TBps['group-int'], 2)} | ${f(x.w4a8Tops['group-int'], 0)} |`,
  );
}
const s = r.summary;
console.log('');
console.log(
  `Decode (M ≤ 16) minimum speedup: per-channel ${f(s.decodeMinSpeedup['per-channel'], 2)}x, group-float ${f(s.decodeMinSpeedup['group-float'], 2)}x, group-int ${f(s.decodeMinSpeedup['group-int'], 2)}x. Prefill (M ≥ 2048) minimum speedup: per-channel ${f(s.prefillMinSpeedup['per-channel'], 2)}x, group-float ${f(s.prefillMinSpeedup['group-float'], 2)}x, group-int ${f(s.prefillMinSpeedup['group-int'], 2)}x; group-int / per-channel time at most ${f(s.prefillGroupIntOverPerChannel, 2)}.`,
);
