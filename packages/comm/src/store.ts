/**
 * The rendezvous store: a small TCP server that the launcher hosts and every rank joins with the job token.
 * Ranks exchange bytes through it (NCCL unique id, CUDA IPC handles, message sizes). Newline-delimited JSON,
 * binary values in base64. The server also spreads failure: when a rank's connection drops without a goodbye,
 * or the launcher reports a dead rank, every other rank's pending and future calls fail with E_COMM, and an
 * exchange that not every rank reaches in time fails with E_TIMEOUT naming the missing ranks.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { QError, type QErrorCode } from '@q/core';

interface Msg {
  op: string;
  id?: number;
  [k: string]: unknown;
}

function send(sock: Socket, m: Msg): void {
  if (!sock.destroyed) sock.write(`${JSON.stringify(m)}\n`);
}

function onLines(sock: Socket, fn: (m: Msg) => void): void {
  let buf = '';
  sock.setEncoding('utf8');
  sock.on('data', (chunk: string) => {
    buf += chunk;
    // A peer that sends an endless line without a newline would grow this forever; 16 MB is far above any value.
    if (buf.length > 16 << 20) {
      sock.destroy();
      return;
    }
    let nl = buf.indexOf('\n');
    while (nl >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      let m: Msg;
      try {
        m = JSON.parse(line) as Msg;
      } catch {
        sock.destroy();
        return;
      }
      fn(m);
      nl = buf.indexOf('\n');
    }
  });
}

const digest = (s: string) => createHash('sha256').update(s).digest();

/**
 * A new random job token (32 hex characters).
 *
 * @example
 * ```ts
 * const token = newJobToken();
 * ```
 */
export function newJobToken(): string {
  return randomBytes(16).toString('hex');
}

/** Options of the rendezvous server. */
export interface StoreServerOptions {
  readonly world: number;
  readonly token: string;
  /** Default '127.0.0.1'. */
  readonly host?: string;
  /** 0 (default) picks a free port. */
  readonly port?: number;
  /** How long an exchange waits for the last rank. Default 60 000. */
  readonly timeoutMs?: number;
}

interface Exchange {
  values: (string | undefined)[];
  waiting: Map<number, { sock: Socket; id: number }>;
  timer: NodeJS.Timeout;
}

/**
 * The launcher's side of the rendezvous: ranks connect with the job token and exchange bytes through it.
 *
 * @example
 * ```ts
 * const token = newJobToken();
 * const server = await StoreServer.start({ world: 2, token });
 * // each rank: await StoreClient.connect({ host: '127.0.0.1', port: server.port, token, rank, world: 2 })
 * server.close();
 * ```
 */
export class StoreServer {
  readonly world: number;
  readonly host: string;
  port = 0;
  private readonly server: Server;
  private readonly tokenHash: Buffer;
  private readonly timeoutMs: number;
  private readonly ranks = new Map<number, Socket>();
  private readonly exchanges = new Map<string, Exchange>();
  private readonly done = new Set<number>();
  private abortMsg: Msg | undefined;
  private readonly gone = new Map<number, string>();

  private constructor(opts: StoreServerOptions) {
    this.world = opts.world;
    this.host = opts.host ?? '127.0.0.1';
    this.tokenHash = digest(opts.token);
    this.timeoutMs = opts.timeoutMs ?? 60_000;
    this.server = createServer((s) => this.accept(s));
  }

  /**
   * Starts listening.
   *
   * @example
   * ```ts
   * const store = await StoreServer.start({ world: 2, token: newJobToken() });
   * console.log(store.port);
   * ```
   */
  static async start(opts: StoreServerOptions): Promise<StoreServer> {
    const s = new StoreServer(opts);
    await new Promise<void>((resolve, reject) => {
      s.server.once('error', (e) =>
        reject(
          new QError(
            'E_COMM',
            `Expected a free port for the rendezvous at ${s.host}:${opts.port ?? 0} but received ${e.message}`,
            { cause: e },
          ),
        ),
      );
      s.server.listen(opts.port ?? 0, s.host, () => resolve());
    });
    const addr = s.server.address();
    s.port = typeof addr === 'object' && addr ? addr.port : 0;
    return s;
  }

  /**
   * Fails every rank's pending and future calls with `message` (E_COMM).
   *
   * @example
   * ```ts
   * store.abort('rank 2 exited with code 1');
   * ```
   */
  abort(message: string, code: QErrorCode = 'E_COMM'): void {
    if (this.abortMsg) return;
    this.abortMsg = { op: 'abort', code, message };
    for (const sock of this.ranks.values()) send(sock, this.abortMsg);
    for (const ex of this.exchanges.values()) clearTimeout(ex.timer);
    this.exchanges.clear();
  }

  /** Why the job was aborted, if it was. */
  get abortReason(): string | undefined {
    return this.abortMsg ? String(this.abortMsg.message) : undefined;
  }

  /**
   * Records that `rank` exited without joining: harmless for a program that never uses the rendezvous, fatal
   * (abort) as soon as any rank has joined or joins.
   *
   * @example
   * ```ts
   * store.markGone(1, 'rank 1 exited before joining');
   * ```
   */
  markGone(rank: number, message: string): void {
    this.gone.set(rank, message);
    if (this.ranks.size > 0 || this.done.size > 0) this.abort(message);
  }

  /**
   * True when `rank` said goodbye (closed its group cleanly).
   *
   * @example
   * ```ts
   * store.finished(0) // true after rank 0 called close()
   * ```
   */
  finished(rank: number): boolean {
    return this.done.has(rank);
  }

  /**
   * True when `rank` has joined.
   *
   * @example
   * ```ts
   * store.joined(1) // true once rank 1 presented the token
   * ```
   */
  joined(rank: number): boolean {
    return this.ranks.has(rank) || this.done.has(rank);
  }

  /**
   * Stops listening and drops every connection.
   *
   * @example
   * ```ts
   * store.close();
   * ```
   */
  close(): void {
    for (const ex of this.exchanges.values()) clearTimeout(ex.timer);
    for (const s of this.ranks.values()) s.destroy();
    this.server.close();
  }

  private accept(sock: Socket): void {
    let rank = -1;
    sock.on('error', () => {});
    onLines(sock, (m) => {
      if (rank < 0) {
        if (m.op !== 'hello') return void sock.destroy();
        const given = digest(String(m.token ?? ''));
        if (!timingSafeEqual(given, this.tokenHash)) {
          send(sock, {
            op: 'error',
            id: m.id,
            code: 'E_AUTH',
            message: 'Expected the job token of this job (Q_JOB_TOKEN) but received a different one',
          });
          sock.end();
          return;
        }
        const r = Number(m.rank);
        if (!Number.isInteger(r) || r < 0 || r >= this.world || Number(m.world) !== this.world) {
          send(sock, {
            op: 'error',
            id: m.id,
            code: 'E_COMM',
            message: `Expected rank in [0, ${this.world}) of world ${this.world} but received rank ${String(m.rank)} of world ${String(m.world)}`,
          });
          sock.end();
          return;
        }
        if (this.ranks.has(r) || this.done.has(r)) {
          send(sock, {
            op: 'error',
            id: m.id,
            code: 'E_COMM',
            message: `Expected one process for rank ${r} but received a second one`,
          });
          sock.end();
          return;
        }
        rank = r;
        this.ranks.set(r, sock);
        send(sock, { op: 'welcome', id: m.id });
        const goneMsg = this.gone.values().next().value;
        if (goneMsg !== undefined) this.abort(goneMsg);
        if (this.abortMsg) send(sock, this.abortMsg);
        sock.on('close', () => {
          this.ranks.delete(r);
          if (!this.done.has(r))
            this.abort(
              `Expected rank ${r} to stay in the job but received a closed connection (the process died or left without close())`,
            );
        });
        return;
      }
      if (m.op === 'bye') {
        this.done.add(rank);
        return;
      }
      if (m.op === 'exchange') this.onExchange(rank, sock, m);
    });
  }

  private onExchange(rank: number, sock: Socket, m: Msg): void {
    if (this.abortMsg) return void send(sock, { ...this.abortMsg, id: m.id });
    const name = String(m.name);
    let ex = this.exchanges.get(name);
    if (!ex) {
      const timeoutMs = typeof m.timeoutMs === 'number' ? m.timeoutMs : this.timeoutMs;
      ex = {
        values: new Array(this.world).fill(undefined),
        waiting: new Map(),
        timer: setTimeout(() => this.expire(name, timeoutMs), timeoutMs),
      };
      this.exchanges.set(name, ex);
    }
    if (ex.values[rank] !== undefined) {
      return void send(sock, {
        op: 'error',
        id: m.id,
        code: 'E_COMM',
        message: `Expected one contribution of rank ${rank} to '${name}' but received two`,
      });
    }
    ex.values[rank] = String(m.value);
    ex.waiting.set(rank, { sock, id: m.id ?? 0 });
    if (ex.values.every((v) => v !== undefined)) {
      clearTimeout(ex.timer);
      this.exchanges.delete(name);
      for (const w of ex.waiting.values()) send(w.sock, { op: 'values', id: w.id, values: ex.values });
    }
  }

  private expire(name: string, timeoutMs: number): void {
    const ex = this.exchanges.get(name);
    if (!ex) return;
    this.exchanges.delete(name);
    const arrived = [...ex.waiting.keys()].sort((a, b) => a - b);
    const missing = ex.values.map((v, r) => (v === undefined ? r : -1)).filter((r) => r >= 0);
    const message = `Expected all ${this.world} ranks at '${name}' within ${timeoutMs} ms but received ranks [${arrived.join(', ')}] (missing ranks [${missing.join(', ')}]: never arrived, hung or died)`;
    for (const w of ex.waiting.values()) send(w.sock, { op: 'error', id: w.id, code: 'E_TIMEOUT', message });
  }
}

/** Where and as whom a rank joins. */
export interface StoreClientOptions {
  readonly host: string;
  readonly port: number;
  readonly token: string;
  readonly rank: number;
  readonly world: number;
  /** Connect retries and every exchange end after this. Default 60 000. */
  readonly timeoutMs?: number;
}

/**
 * A rank's connection to the rendezvous store.
 *
 * @example
 * ```ts
 * const client = await StoreClient.connect({ host: '127.0.0.1', port, token, rank, world });
 * const all = await client.exchange('nccl-id', myBytes); // every rank's bytes, in rank order
 * client.close();
 * ```
 */
export class StoreClient {
  readonly rank: number;
  readonly world: number;
  readonly timeoutMs: number;
  private sock: Socket;
  private nextId = 1;
  private readonly pending = new Map<
    number,
    { resolve: (m: Msg) => void; reject: (e: QError) => void; timer: NodeJS.Timeout }
  >();
  private failure: QError | undefined;
  private closed = false;

  private constructor(sock: Socket, opts: StoreClientOptions) {
    this.sock = sock;
    this.rank = opts.rank;
    this.world = opts.world;
    this.timeoutMs = opts.timeoutMs ?? 60_000;
    sock.on('error', () => {});
    onLines(sock, (m) => this.onMessage(m));
    sock.on('close', () => {
      if (!this.closed)
        this.fail(
          new QError(
            'E_COMM',
            `Expected the rendezvous at ${opts.host}:${opts.port} to stay up but received a closed connection (the launcher died or the job was aborted)`,
          ),
        );
    });
  }

  /**
   * Joins the rendezvous, retrying refused connections until the timeout.
   *
   * @example
   * ```ts
   * const c = await StoreClient.connect({ host: '127.0.0.1', port, token, rank: 0, world: 2 });
   * const all = await c.exchange('sizes', new TextEncoder().encode('4096'));
   * ```
   */
  static async connect(opts: StoreClientOptions): Promise<StoreClient> {
    const timeoutMs = opts.timeoutMs ?? 60_000;
    const deadline = Date.now() + timeoutMs;
    let lastErr = '';
    while (Date.now() < deadline) {
      const sock = await new Promise<Socket | undefined>((resolve) => {
        const s = connect({ host: opts.host, port: opts.port });
        const t = setTimeout(
          () => {
            s.destroy();
            resolve(undefined);
          },
          Math.max(1, deadline - Date.now()),
        );
        s.once('connect', () => {
          clearTimeout(t);
          resolve(s);
        });
        s.once('error', (e) => {
          clearTimeout(t);
          lastErr = e.message;
          s.destroy();
          resolve(undefined);
        });
      });
      if (sock) {
        const c = new StoreClient(sock, opts);
        await c.request(
          { op: 'hello', token: opts.token, rank: opts.rank, world: opts.world },
          Math.max(1, deadline - Date.now()),
        );
        return c;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new QError(
      'E_TIMEOUT',
      `Expected the rendezvous at ${opts.host}:${opts.port} to accept rank ${opts.rank} within ${timeoutMs} ms but received ${lastErr || 'no answer'}`,
    );
  }

  /**
   * All-gather of small byte strings: every rank contributes under `name`, every rank gets all values in rank
   * order. Fails with E_TIMEOUT when a rank does not arrive in time, E_COMM when the job was aborted.
   *
   * @example
   * ```ts
   * const sizes = await client.exchange('sizes', new TextEncoder().encode('4096'));
   * ```
   */
  async exchange(name: string, value: Uint8Array, timeoutMs = this.timeoutMs): Promise<Uint8Array[]> {
    const m = await this.request(
      { op: 'exchange', name, value: Buffer.from(value).toString('base64'), timeoutMs },
      timeoutMs + 5000,
    );
    return (m.values as string[]).map((v) => new Uint8Array(Buffer.from(v, 'base64')));
  }

  /**
   * Says goodbye and disconnects; the server does not treat this rank as lost afterwards.
   *
   * @example
   * ```ts
   * client.close();
   * ```
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    send(this.sock, { op: 'bye' });
    this.sock.end();
    this.fail(
      new QError(
        'E_DISPOSED',
        `Expected an open process group for rank ${this.rank} but received a closed one`,
      ),
    );
  }

  private request(m: Msg, timeoutMs: number): Promise<Msg> {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    return new Promise<Msg>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(
          new QError(
            'E_TIMEOUT',
            `Expected an answer from the rendezvous to ${m.op} '${String(m.name ?? '')}' within ${timeoutMs} ms but received none`,
          ),
        );
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      send(this.sock, { ...m, id });
    });
  }

  private onMessage(m: Msg): void {
    if (m.op === 'abort') {
      this.fail(new QError((m.code as QErrorCode) ?? 'E_COMM', String(m.message)));
      return;
    }
    const p = this.pending.get(m.id ?? -1);
    if (!p) return;
    this.pending.delete(m.id ?? -1);
    clearTimeout(p.timer);
    if (m.op === 'error') p.reject(new QError((m.code as QErrorCode) ?? 'E_COMM', String(m.message)));
    else p.resolve(m);
  }

  private fail(e: QError): void {
    if (!this.failure) this.failure = e;
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(e);
    }
    this.pending.clear();
    if (!this.closed) this.sock.destroy();
  }
}
