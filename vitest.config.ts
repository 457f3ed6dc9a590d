import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

// Tests import `@q/<pkg>` and resolve it to the package sources, so they run without a build.
// TEST_DIST=1 drops the aliases: the same suites then run against the built `dist` through the workspace links.
const packages = ['core', 'quant', 'kernels-cuda', 'comm', 'runtime'] as const;
const alias =
  process.env.TEST_DIST === '1'
    ? {}
    : Object.fromEntries(
        packages.map((p) => [
          `@q/${p}`,
          fileURLToPath(new URL(`./packages/${p}/src/index.ts`, import.meta.url)),
        ]),
      );

export default defineConfig({
  test: {
    projects: [
      ...packages.map((p) => ({
        resolve: { alias },
        test: {
          name: p,
          root: `./packages/${p}`,
          include: ['src/**/*.test.ts', 'test/*.test.ts'],
          exclude: ['test/gpu/**'],
          testTimeout: 120_000,
          hookTimeout: 120_000,
        },
      })),
      {
        resolve: { alias },
        test: {
          name: 'gpu',
          root: './packages',
          include: ['*/test/gpu/**/*.gpu.test.ts'],
          pool: 'forks',
          poolOptions: { forks: { singleFork: true } },
          testTimeout: 600_000,
          hookTimeout: 600_000,
        },
      },
      {
        resolve: { alias },
        test: {
          name: 'examples',
          root: './examples',
          include: ['*.test.ts'],
          testTimeout: 120_000,
        },
      },
    ],
  },
});
