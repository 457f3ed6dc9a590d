import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { isQError, QError } from './errors';

/**
 * Wraps a Node file-system error as `E_IO`, keeping QErrors as they are.
 *
 * @example
 * ```ts
 * try { fs.openSync(file, 'r'); } catch (e) { throw ioError(e, `open ${file}`); }
 * ```
 */
export function ioError(e: unknown, what: string): QError {
  if (isQError(e)) return e as QError;
  const msg = e instanceof Error ? e.message : String(e);
  return new QError('E_IO', `Could not ${what}: ${msg}`, { cause: e });
}

/** Node refuses single reads and writes of 2 GiB or more; larger ranges go in chunks of this size. */
const IO_CHUNK = 1 << 30;

/**
 * Writes all of `bytes` at the current position (writeSync may write less than asked).
 *
 * @example
 * ```ts
 * writeAllSync(fd, new Uint8Array([1, 2, 3]));
 * ```
 */
export function writeAllSync(fd: number, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.byteLength) {
    done += fs.writeSync(fd, bytes, done, Math.min(IO_CHUNK, bytes.byteLength - done));
  }
}

/**
 * Fills `out` from `position` (readSync may return less than asked); returns the number of bytes read,
 * which is smaller than `out` only at end of file.
 *
 * @example
 * ```ts
 * const head = new Uint8Array(8);
 * if (readFullySync(fd, head, 0) < 8) throw new Error('short file');
 * ```
 */
export function readFullySync(fd: number, out: Uint8Array, position: number): number {
  let done = 0;
  while (done < out.byteLength) {
    const n = fs.readSync(fd, out, done, Math.min(IO_CHUNK, out.byteLength - done), position + done);
    if (n === 0) break;
    done += n;
  }
  return done;
}

/**
 * A file being written under a temporary name in the destination's directory. `commit()` flushes it
 * to disk and renames it over the final name, so readers see either the old file or the complete new
 * one; `abort()` removes the temporary file, so a failed write leaves nothing under the final name.
 *
 * @example
 * ```ts
 * const f = new AtomicFile('out.bin');
 * try { f.write(Uint8Array.of(1, 2, 3)); f.commit(); } catch (e) { f.abort(); throw e; }
 * ```
 */
export class AtomicFile {
  readonly finalPath: string;
  readonly tempPath: string;
  private fd: number | undefined;
  private done = false;

  constructor(finalPath: string) {
    this.finalPath = path.resolve(finalPath);
    const dir = path.dirname(this.finalPath);
    this.tempPath = path.join(
      dir,
      `.${path.basename(this.finalPath)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`,
    );
    try {
      this.fd = fs.openSync(this.tempPath, 'wx', 0o644);
    } catch (e) {
      throw ioError(e, `create a temporary file in ${dir}`);
    }
  }

  /** Appends bytes. */
  write(bytes: Uint8Array): void {
    if (this.fd === undefined || this.done) {
      throw new QError('E_IO', `Expected an open file for ${this.finalPath} but it was already closed`);
    }
    try {
      writeAllSync(this.fd, bytes);
    } catch (e) {
      throw ioError(e, `write ${this.tempPath}`);
    }
  }

  /** fsync, close, rename over the final name, and fsync the directory so the rename is durable. */
  commit(): void {
    if (this.fd === undefined || this.done) {
      throw new QError('E_IO', `Expected an open file for ${this.finalPath} but it was already closed`);
    }
    try {
      fs.fsyncSync(this.fd);
      fs.closeSync(this.fd);
      this.fd = undefined;
      fs.renameSync(this.tempPath, this.finalPath);
      this.done = true;
    } catch (e) {
      this.abort();
      throw ioError(e, `write ${this.finalPath}`);
    }
    syncDir(path.dirname(this.finalPath));
  }

  /** Closes and removes the temporary file; safe to call more than once and after commit. */
  abort(): void {
    if (this.fd !== undefined) {
      try {
        fs.closeSync(this.fd);
      } catch {
        // already closed or broken: removing the file below is what matters
      }
      this.fd = undefined;
    }
    if (!this.done) {
      this.done = true;
      try {
        fs.unlinkSync(this.tempPath);
      } catch {
        // nothing to remove
      }
    }
  }
}

function syncDir(dir: string): void {
  // Directory fsync makes the rename durable on Linux; some platforms refuse to open directories.
  try {
    const fd = fs.openSync(dir, 'r');
    try {
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    // best effort
  }
}

/**
 * Writes a file atomically: `fill` writes through the given function into a temporary file in the same
 * directory, which is then fsynced and renamed over `finalPath`. If `fill` throws, the temporary file is
 * removed and the error rethrown; nothing appears under `finalPath`.
 *
 * @example
 * ```ts
 * writeFileAtomic('out.bin', (write) => write(new Uint8Array([1, 2, 3])));
 * ```
 */
export function writeFileAtomic(finalPath: string, fill: (write: (bytes: Uint8Array) => void) => void): void {
  const f = new AtomicFile(finalPath);
  try {
    fill((b) => f.write(b));
    f.commit();
  } catch (e) {
    f.abort();
    throw e;
  }
}
