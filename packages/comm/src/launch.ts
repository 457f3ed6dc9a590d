import { type ChildProcess, spawn } from 'node:child_process';
import { QError } from '@q/core';
import { newJobToken, StoreServer } from './store';

/** Options of `launch`. */
export interface LaunchOptions {
  /** Processes (GPUs) on this node. */
  readonly nproc: number;
  /** Program and arguments run once per rank, e.g. `['node', 'serve.mjs']`. */
  readonly command: readonly string[];
  /** Rendezvous address: where node 0's launcher listens. Default '127.0.0.1'. */
  readonly addr?: string;
  /** Rendezvous port; 0 (default, single node only) picks a free one. */
  readonly port?: number;
  /** Rendezvous and collective timeout given to the ranks (Q_COMM_TIMEOUT_MS). Default 60 000. */
  readonly timeoutMs?: number;
  /** Nodes in the job. Default 1. */
  readonly nnodes?: number;
  /** This node's index. Default 0; node 0 hosts the rendezvous. */
  readonly nodeRank?: number;
  /** Job token; required for several nodes (the same on each), else Q_JOB_TOKEN or a random one. */
  readonly token?: string;
  /** Extra environment for the ranks. */
  readonly env?: NodeJS.ProcessEnv;
  /** Default 'inherit'. */
  readonly stdio?: 'inherit' | 'pipe' | 'ignore';
  /** Called with each rank's child process (for 'pipe' output). */
  readonly onSpawn?: (localRank: number, child: ChildProcess) => void;
}

/** How each local rank ended. */
export interface LaunchResult {
  readonly ok: boolean;
  /** Per local rank: exit code, or null when killed by a signal. */
  readonly exitCodes: readonly (number | null)[];
  readonly signals: readonly (NodeJS.Signals | null)[];
  /** Why the job failed, naming the first rank that did. */
  readonly failure?: string;
}

function check(cond: boolean, name: string, what: string, got: unknown): void {
  if (!cond) throw new QError('E_ARG', `Expected ${what} for ${name} but received ${JSON.stringify(got)}`);
}

/**
 * Starts `nproc` ranks of `command` on this node with RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
 * MASTER_PORT, Q_JOB_TOKEN and Q_COMM_TIMEOUT_MS set, hosting the TCP rendezvous on node 0. When a rank fails,
 * the others are told at once (their calls fail with E_COMM) and are stopped if they do not exit within the
 * timeout. Resolves when every local rank has exited.
 *
 * @example
 * ```ts
 * const r = await launch({ nproc: 4, command: ['node', 'serve.mjs'] });
 * if (!r.ok) console.error(r.failure);
 * ```
 */
export async function launch(opts: LaunchOptions): Promise<LaunchResult> {
  const nnodes = opts.nnodes ?? 1;
  const nodeRank = opts.nodeRank ?? 0;
  check(Number.isInteger(opts.nproc) && opts.nproc >= 1, 'nproc', 'a positive integer', opts.nproc);
  check(Number.isInteger(nnodes) && nnodes >= 1, 'nnodes', 'a positive integer', nnodes);
  check(
    Number.isInteger(nodeRank) && nodeRank >= 0 && nodeRank < nnodes,
    'nodeRank',
    `an integer in [0, ${nnodes})`,
    nodeRank,
  );
  check(
    Array.isArray(opts.command) && opts.command.length > 0,
    'command',
    'a program and its arguments',
    opts.command,
  );
  const timeoutMs = opts.timeoutMs ?? 60_000;
  check(Number.isFinite(timeoutMs) && timeoutMs > 0, 'timeoutMs', 'a positive number', timeoutMs);
  const addr = opts.addr ?? '127.0.0.1';
  const token = opts.token ?? process.env.Q_JOB_TOKEN ?? (nnodes === 1 ? newJobToken() : '');
  check(
    token.length >= 16,
    'token',
    'a job token of 16+ characters shared by all nodes (set Q_JOB_TOKEN)',
    token.length === 0 ? 'nothing' : '<short token>',
  );
  check(nnodes === 1 || (opts.port ?? 0) > 0, 'port', 'a fixed port when nnodes > 1', opts.port ?? 0);
  const world = nnodes * opts.nproc;

  const server =
    nodeRank === 0
      ? await StoreServer.start({ world, token, host: addr, port: opts.port ?? 0, timeoutMs })
      : undefined;
  const port = server ? server.port : (opts.port as number);
  const children: ChildProcess[] = [];
  const exitCodes: (number | null)[] = new Array(opts.nproc).fill(null);
  const signals: (NodeJS.Signals | null)[] = new Array(opts.nproc).fill(null);
  let failure: string | undefined;
  let killTimer: NodeJS.Timeout | undefined;

  const [program, ...args] = opts.command as [string, ...string[]];
  const exits = Array.from({ length: opts.nproc }, (_, local) => {
    const rank = nodeRank * opts.nproc + local;
    const child = spawn(program, args, {
      stdio: opts.stdio ?? 'inherit',
      env: {
        ...process.env,
        ...opts.env,
        RANK: String(rank),
        WORLD_SIZE: String(world),
        LOCAL_RANK: String(local),
        LOCAL_WORLD_SIZE: String(opts.nproc),
        MASTER_ADDR: addr,
        MASTER_PORT: String(port),
        Q_JOB_TOKEN: token,
        Q_COMM_TIMEOUT_MS: String(timeoutMs),
      },
    });
    children.push(child);
    opts.onSpawn?.(local, child);
    return new Promise<void>((resolve) => {
      const onEnd = (code: number | null, signal: NodeJS.Signals | null, spawnError?: Error) => {
        exitCodes[local] = code;
        signals[local] = signal;
        if (code === 0 && server !== undefined && !server.joined(rank)) {
          server.markGone(
            rank,
            `Expected rank ${rank} to join the job but received its exit (code 0) before it joined`,
          );
        }
        if (code !== 0 && failure === undefined) {
          failure = spawnError
            ? `rank ${rank} could not start ${program}: ${spawnError.message}`
            : `rank ${rank} exited with ${signal ? `signal ${signal}` : `code ${code}`}`;
          server?.abort(`Expected rank ${rank} to stay in the job but received: ${failure}`);
          // Survivors get the abort at their next rendezvous call; one blocked elsewhere is stopped later.
          killTimer = setTimeout(() => {
            for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGTERM');
          }, timeoutMs);
        }
        resolve();
      };
      child.once('error', (e) => onEnd(127, null, e));
      child.once('exit', (code, signal) => onEnd(code, signal));
    });
  });
  await Promise.all(exits);
  if (killTimer) clearTimeout(killTimer);
  server?.close();
  const ok = failure === undefined && exitCodes.every((c) => c === 0);
  // The first cause beats its consequences: a rank that never joined explains why the others failed.
  if (server?.abortReason?.includes('before it joined')) failure = server.abortReason;
  return failure === undefined ? { ok, exitCodes, signals } : { ok, exitCodes, signals, failure };
}

/** torchrun's spellings, accepted as aliases. */
const LAUNCH_ALIASES: Readonly<Record<string, string>> = {
  '--master-addr': '--addr',
  '--master-port': '--port',
};

/**
 * The `q launch` command line: `--nproc N [--addr A] [--port P] [--timeout-ms T] [--nnodes K --node-rank I] --
 * <command...>` (`--master-addr` and `--master-port` are aliases of `--addr` and `--port`). Returns the exit
 * status for the process (0 when every rank succeeded).
 *
 * @example
 * ```ts
 * process.exitCode = await launchCli(['--nproc', '2', '--', 'node', 'train.mjs']);
 * ```
 */
export async function launchCli(argv: readonly string[]): Promise<number> {
  const sep = argv.indexOf('--');
  const flags = sep >= 0 ? argv.slice(0, sep) : argv;
  const command = sep >= 0 ? argv.slice(sep + 1) : [];
  const values: Record<string, string> = {};
  for (let i = 0; i < flags.length; i++) {
    const f = flags[i] as string;
    const known = [
      '--nproc',
      '--addr',
      '--port',
      '--timeout-ms',
      '--nnodes',
      '--node-rank',
      ...Object.keys(LAUNCH_ALIASES),
    ];
    const [given, inline] = f.includes('=') ? (f.split('=', 2) as [string, string]) : [f, undefined];
    const k = LAUNCH_ALIASES[given] ?? given;
    if (!known.includes(given))
      throw new QError(
        'E_ARG',
        `Expected one of ${known.join(', ')} or -- for q launch but received ${JSON.stringify(f)}`,
      );
    const v = inline ?? flags[++i];
    if (v === undefined)
      throw new QError('E_ARG', `Expected a value after ${given} for q launch but received nothing`);
    values[k] = v;
  }
  const num = (k: string) => (values[k] === undefined ? undefined : Number(values[k]));
  if (command.length === 0)
    throw new QError(
      'E_ARG',
      'Expected a command after -- for q launch but received nothing (q launch --nproc N -- <command>)',
    );
  const r = await launch({
    nproc: num('--nproc') ?? 1,
    command,
    ...(values['--addr'] !== undefined ? { addr: values['--addr'] } : {}),
    ...(values['--port'] !== undefined ? { port: num('--port') as number } : {}),
    ...(values['--timeout-ms'] !== undefined ? { timeoutMs: num('--timeout-ms') as number } : {}),
    ...(values['--nnodes'] !== undefined ? { nnodes: num('--nnodes') as number } : {}),
    ...(values['--node-rank'] !== undefined ? { nodeRank: num('--node-rank') as number } : {}),
  });
  if (!r.ok) {
    console.error(`q launch: ${r.failure ?? `exit codes ${r.exitCodes.join(', ')}`}`);
    return r.exitCodes.find((c) => c !== 0 && c !== null) ?? 1;
  }
  return 0;
}
