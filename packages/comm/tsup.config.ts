import { defineConfig } from 'tsup';

export default defineConfig({
  // Worker and rank scripts ship beside the entries that start them (see shippedScript in @q/core).
  entry: ['src/index.ts', 'src/cpu-worker.ts', 'src/bench-rank.ts'],
  format: ['esm', 'cjs'],
  dts: true,
  clean: true,
  sourcemap: true,
  target: 'node20',
  shims: true,
  splitting: false,
});
