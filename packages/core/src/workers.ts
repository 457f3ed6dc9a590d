import { existsSync, mkdirSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parentPort, type TransferListItem, Worker } from 'node:worker_threads';
import { AtomicFile } from './atomic';
import { isQError, Q_ERROR_CODES, QError, type QErrorCode } from './errors';

/**
 * Where the script `name` that ships beside the module `from` (its `import.meta.url`) lives, as a URL a
 * `Worker` or a child process can load. From a build it is the built `name.js` in `dist/` (each package's tsup
 * config lists its worker entries). From TypeScript sources (tests) the `name.ts` file is bundled once per
 * process with esbuild, a development dependency, with every `@q/*` package taken from its sources too.
 *
 * @example
 * ```ts
 * const url = await shippedScript('gemm-worker', import.meta.url);
 * const pool = new WorkerPool(url, { size: 2 });
 * ```
 */
export async function shippedScript(name: string, from: string | URL): Promise<URL> {
  const built = new URL(`./${name}.js`, from);
  if (existsSync(fileURLToPath(built))) return built;
  const source = fileURLToPath(new URL(`./${name}.ts`, from));
  if (!existsSync(source)) {
    throw new QError(
      'E_INTERNAL',
      `Expected ${name}.js or ${name}.ts beside ${fileURLToPath(from)} for the worker script ${name} but received neither`,
    );
  }
  return bundleSource(source);
}

const bundles = new Map<string, Promise<URL>>();

/** The `@q/*` packages next to the package that holds `source`, mapped to their `src/index.ts`. */
function sourceAliases(source: string): Record<string, string> {
  let dir = dirname(source);
  while (!existsSync(join(dir, 'package.json'))) {
    const up = dirname(dir);
    if (up === dir) return {};
    dir = up;
  }
  const root = dirname(dir);
  const alias: Record<string, string> = {};
  for (const entry of readdirSync(root)) {
    const index = join(root, entry, 'src', 'index.ts');
    const pkg = join(root, entry, 'package.json');
    if (!existsSync(index) || !existsSync(pkg)) continue;
    const { name } = JSON.parse(readFileSync(pkg, 'utf8')) as { name?: unknown };
    if (typeof name === 'string' && name.startsWith('@q/')) alias[name] = index;
  }
  return alias;
}

/**
 * Bundles one TypeScript entry (with the `@q/*` packages beside it taken from their sources) into an ES module
 * in the temp folder and returns its URL. Used only when running from sources; esbuild is a development
 * dependency, so a build never reaches this.
 *
 * @example
 * ```ts
 * const url = await bundleSource('/repo/packages/comm/src/index.ts');
 * const comm = await import(url.href);
 * ```
 */
export function bundleSource(source: string): Promise<URL> {
  let p = bundles.get(source);
  if (p === undefined) {
    p = bundleOnce(source);
    bundles.set(source, p);
    p.catch(() => bundles.delete(source));
  }
  return p;
}

async function bundleOnce(source: string): Promise<URL> {
  const dir = join(tmpdir(), 'q-src-bundles');
  const base = source.replace(/^.*[\\/]/, '').replace(/\.ts$/, '');
  const out = join(dir, `${base}-${Math.floor(statSync(source).mtimeMs)}-${process.pid}.mjs`);
  if (existsSync(out)) return pathToFileURL(out);
  mkdirSync(dir, { recursive: true });
  // A variable specifier keeps bundlers from following this development-only import.
  const specifier = 'esbuild';
  let esbuild: typeof import('esbuild');
  try {
    esbuild = (await import(specifier)) as typeof import('esbuild');
  } catch (e) {
    throw new QError(
      'E_INTERNAL',
      `Expected esbuild (a development dependency) to bundle ${source} but received ${(e as Error).message}`,
      { cause: e },
    );
  }
  const result = await esbuild.build({
    entryPoints: [source],
    bundle: true,
    format: 'esm',
    platform: 'node',
    target: 'node20',
    write: false,
    alias: sourceAliases(source),
    // Bundled CommonJS code calls `require` for node built-ins, which an ES module lacks.
    banner: {
      js: "import { createRequire as __qCreateRequire } from 'node:module'; const require = __qCreateRequire(import.meta.url);",
    },
    logLevel: 'error',
  });
  const file = new AtomicFile(out);
  try {
    file.write(result.outputFiles[0]?.contents ?? new Uint8Array());
    file.commit();
  } catch (e) {
    file.abort();
    throw e;
  }
  return pathToFileURL(out);
}

/** What a worker posts back for one job (see `serveJobs`). */
interface Reply {
  readonly id: number;
  readonly ok: boolean;
  readonly result?: unknown;
  readonly code?: string;
  readonly message?: string;
}

/**
 * The worker side of `WorkerPool`: runs `handle` on every job posted to this worker thread and posts its
 * result (or its error, with the QError code kept) back. Call it once at the top of a worker entry module.
 *
 * @example
 * ```ts
 * // gemm-worker.ts
 * serveJobs((job: { a: number; b: number }) => job.a + job.b);
 * ```
 */
export function serveJobs<Job, Result>(handle: (job: Job) => Result | Promise<Result>): void {
  const port = parentPort;
  if (port === null) {
    throw new QError(
      'E_INTERNAL',
      'Expected serveJobs to run in a worker thread but received the main thread',
    );
  }
  port.on('message', async (m: { id: number; job: Job }) => {
    let reply: Reply;
    try {
      reply = { id: m.id, ok: true, result: await handle(m.job) };
    } catch (e) {
      const err = e as { message?: unknown; code?: unknown };
      reply = {
        id: m.id,
        ok: false,
        code: isQError(e) ? (err.code as string) : undefined,
        message: String(err?.message ?? e),
      };
    }
    port.postMessage(reply);
  });
}

/** Options of `WorkerPool`. */
export interface WorkerPoolOptions {
  /** Number of worker threads (≥ 1). */
  readonly size: number;
  /** What each worker reads as `workerData`. */
  readonly workerData?: unknown;
  /** A job not answered within this time rejects with E_TIMEOUT and its worker is replaced. Default: none. */
  readonly timeoutMs?: number;
  /** Names the pool in error messages. */
  readonly name?: string;
}

/** Options of one `WorkerPool.run` call. */
export interface RunOptions {
  /** Run on this worker (0 ≤ worker < size) instead of the least busy one. */
  readonly worker?: number;
  /** Buffers moved (not copied) to the worker. */
  readonly transfer?: readonly TransferListItem[];
  /** Overrides the pool's `timeoutMs` for this job. */
  readonly timeoutMs?: number;
}

interface Pending {
  readonly resolve: (v: unknown) => void;
  readonly reject: (e: unknown) => void;
  readonly timer: NodeJS.Timeout | undefined;
}

interface Slot {
  worker: Worker;
  readonly pending: Map<number, Pending>;
}

/**
 * A fixed number of worker threads running one entry module that calls `serveJobs`, with a job API that returns
 * Promises. A job whose handler throws rejects with the handler's QError code (E_INTERNAL for any other error); a
 * worker that dies rejects its pending jobs with E_INTERNAL and is replaced; a job past its timeout rejects with
 * E_TIMEOUT. Idle workers are unref'd, so they never keep a process alive; busy ones are ref'd so an awaited job
 * does. Workers start lazily on their first job.
 *
 * @example
 * ```ts
 * const pool = new WorkerPool(await shippedScript('sum-worker', import.meta.url), { size: 2 });
 * const s = await pool.run<{ a: number; b: number }, number>({ a: 1, b: 2 }); // 3
 * await pool.terminate();
 * ```
 */
export class WorkerPool {
  readonly size: number;
  private readonly slots: (Slot | undefined)[];
  private nextId = 0;
  private closed = false;

  constructor(
    private readonly url: URL,
    private readonly opts: WorkerPoolOptions,
  ) {
    if (!Number.isInteger(opts.size) || opts.size < 1) {
      throw new QError('E_ARG', `Expected a positive integer for size but received ${opts.size}`);
    }
    this.size = opts.size;
    this.slots = new Array<Slot | undefined>(opts.size).fill(undefined);
  }

  private get label(): string {
    return this.opts.name ?? fileURLToPath(this.url).replace(/^.*[\\/]/, '');
  }

  private slot(i: number): Slot {
    const cur = this.slots[i];
    if (cur !== undefined) return cur;
    const worker = new Worker(this.url, { workerData: this.opts.workerData });
    worker.unref();
    const s: Slot = { worker, pending: new Map() };
    worker.on('message', (r: Reply) => {
      const p = s.pending.get(r.id);
      if (p === undefined) return;
      this.settle(s, r.id);
      if (r.ok) p.resolve(r.result);
      else {
        const code = (Q_ERROR_CODES as readonly string[]).includes(r.code ?? '')
          ? (r.code as QErrorCode)
          : 'E_INTERNAL';
        p.reject(new QError(code, r.message ?? `Expected ${this.label} job to succeed`));
      }
    });
    const die = (e: unknown): void => {
      if (this.slots[i] === s) this.slots[i] = undefined;
      const why = e instanceof Error ? e.message : `exit code ${String(e)}`;
      for (const [id, p] of [...s.pending]) {
        this.settle(s, id);
        p.reject(
          new QError(
            'E_INTERNAL',
            `Expected worker ${i} of ${this.label} to finish its job but it died (${why})`,
            {
              cause: e,
            },
          ),
        );
      }
    };
    worker.on('error', die);
    worker.on('exit', (code) => die(code));
    this.slots[i] = s;
    return s;
  }

  private settle(s: Slot, id: number): void {
    const p = s.pending.get(id);
    if (p?.timer !== undefined) clearTimeout(p.timer);
    s.pending.delete(id);
    if (s.pending.size === 0) s.worker.unref();
  }

  private pick(): number {
    let best = 0;
    let load = Number.POSITIVE_INFINITY;
    for (let i = 0; i < this.size; i++) {
      const n = this.slots[i]?.pending.size ?? 0;
      if (n < load) {
        best = i;
        load = n;
      }
    }
    return best;
  }

  /**
   * Posts `job` to one worker and resolves with what its handler returned.
   *
   * @example
   * ```ts
   * const [a, b] = await Promise.all([pool.run(jobA, { worker: 0 }), pool.run(jobB, { worker: 1 })]);
   * ```
   */
  run<Job, Result>(job: Job, opts: RunOptions = {}): Promise<Result> {
    if (this.closed) {
      return Promise.reject(
        new QError('E_DISPOSED', `Expected an open pool for ${this.label} but it was terminated`),
      );
    }
    const i = opts.worker ?? this.pick();
    if (!Number.isInteger(i) || i < 0 || i >= this.size) {
      return Promise.reject(
        new QError(
          'E_ARG',
          `Expected a worker index in [0, ${this.size}) for ${this.label} but received ${i}`,
        ),
      );
    }
    const s = this.slot(i);
    const id = this.nextId++;
    const timeoutMs = opts.timeoutMs ?? this.opts.timeoutMs;
    return new Promise<Result>((resolve, reject) => {
      const timer =
        timeoutMs === undefined
          ? undefined
          : setTimeout(() => {
              this.settle(s, id);
              reject(
                new QError(
                  'E_TIMEOUT',
                  `Expected worker ${i} of ${this.label} to finish a job within ${timeoutMs} ms`,
                ),
              );
              // A stuck worker cannot take new jobs; its replacement starts on the next one.
              if (this.slots[i] === s) this.slots[i] = undefined;
              void s.worker.terminate();
            }, timeoutMs);
      s.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, timer });
      s.worker.ref();
      s.worker.postMessage({ id, job }, opts.transfer as TransferListItem[] | undefined);
    });
  }

  /**
   * Terminates every worker; pending jobs reject with E_INTERNAL and later `run` calls with E_DISPOSED.
   *
   * @example
   * ```ts
   * await pool.terminate();
   * ```
   */
  async terminate(): Promise<void> {
    this.closed = true;
    const live = this.slots.filter((s): s is Slot => s !== undefined);
    this.slots.fill(undefined);
    await Promise.all(live.map((s) => s.worker.terminate()));
  }
}
