import { defineConfig } from 'tsup';

export default defineConfig({
  // Worker entries ship beside the entries that start them (see shippedScript in @q/core).
  entry: { index: 'src/index.ts', cli: 'src/cli.ts', 'cpu-worker': 'src/cpu/cpu-worker.ts' },
  format: ['esm', 'cjs'],
  dts: true,
  clean: true,
  sourcemap: true,
  target: 'node20',
  shims: true,
  splitting: false,
});
