import { defineConfig } from 'tsup';

export default defineConfig({
  entry: ['src/index.ts', 'src/quantize-worker.ts'],
  format: ['esm', 'cjs'],
  dts: true,
  clean: true,
  sourcemap: true,
  target: 'node20',
  shims: true,
  splitting: false,
});
