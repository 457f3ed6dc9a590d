import { defineConfig } from 'tsup';

export default defineConfig({
  entry: ['src/index.ts', 'src/cpu-worker.ts', 'src/bench-rank.ts'],
  format: ['esm', 'cjs'],
  dts: true,
  clean: true,
  sourcemap: true,
  target: 'node20',
  shims: true,
  splitting: false,
});
