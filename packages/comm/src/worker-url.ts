import { existsSync, mkdirSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

/**
 * Where a script that ships beside this module lives. In `dist` it is the built `.js`; when the package runs from
 * its TypeScript sources (its own tests) the `.ts` file is bundled once with esbuild, a development dependency,
 * into the temp folder, so worker threads and child processes can load it.
 */
export async function shippedScript(name: string): Promise<URL> {
  const built = new URL(`./${name}.js`, import.meta.url);
  if (existsSync(fileURLToPath(built))) return built;
  return bundleSource(fileURLToPath(new URL(`./${name}.ts`, import.meta.url)));
}

/**
 * Bundles one TypeScript entry of this package (with the @q packages it uses from source) into an ES module in
 * the temp folder.
 */
export async function bundleSource(source: string): Promise<URL> {
  const dir = join(tmpdir(), 'q-comm-src');
  const name = source.replace(/^.*[\\/]/, '').replace(/\.ts$/, '');
  const out = join(dir, `${name}-${Math.floor(statSync(source).mtimeMs)}-${process.pid}.mjs`);
  if (!existsSync(out)) {
    mkdirSync(dir, { recursive: true });
    const specifier = 'esbuild';
    const esbuild = (await import(specifier)) as typeof import('esbuild');
    await esbuild.build({
      entryPoints: [source],
      bundle: true,
      format: 'esm',
      platform: 'node',
      target: 'node20',
      outfile: out,
      alias: Object.fromEntries(
        ['core', 'quant', 'kernels-cuda'].map((p) => [
          `@q/${p}`,
          fileURLToPath(new URL(`../../${p}/src/index.ts`, import.meta.url)),
        ]),
      ),
      logLevel: 'error',
    });
  }
  return pathToFileURL(out);
}
