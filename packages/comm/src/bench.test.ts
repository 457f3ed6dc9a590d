import { describe, expect, it } from 'vitest';
import { type BenchAllreduceResult, formatBenchTable } from './bench';
import { BENCH_COLUMNS } from './bench-columns';

describe('formatBenchTable', () => {
  it('prints latency, speed-up over NCCL, bus bandwidth and errors per column', () => {
    const cells = Object.fromEntries(
      BENCH_COLUMNS.map((c, i) => [
        c.name,
        {
          us: 100 / (i + 1),
          busGBs: 300 + i,
          relErr: 1e-3 * i,
          algorithm: c.name === 'auto' ? 'fused-int8' : c.name,
        },
      ]),
    );
    const r: BenchAllreduceResult = {
      world: 4,
      gpu: 'GPU X',
      date: '2026-01-01',
      ncclVersion: 22803,
      hidden: 8192,
      errElems: 1024,
      rows: [{ tokens: 512, bytes: 512 * 8192 * 2, cells }],
    };
    const t = formatBenchTable(r);
    expect(t).toContain('4 x GPU X');
    expect(t).toContain('512 | 8.0 MiB | 100.0 | 50.0');
    // fused-int4 is the 5th column: 100 / 20 = 5x faster than NCCL.
    expect(t).toMatch(/\| 5\.00 \|/);
    expect(t).toContain('fused-int8');
    expect(t).toContain('3.00e-3');
  });
});
