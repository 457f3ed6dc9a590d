/**
 * Every error q throws on purpose is a `QError` with one code from this closed set, so callers can
 * branch on `err.code` instead of parsing messages.
 */
export const Q_ERROR_CODES = [
  'E_ARG', // a bad argument or option value
  'E_SHAPE', // shapes that do not fit together
  'E_DTYPE', // a dtype that is not accepted here
  'E_FORMAT', // a file or buffer whose contents are not valid
  'E_IO', // the file system refused
  'E_EXISTS', // an output path that already holds something
  'E_VERSION', // a format version this build does not read
  'E_UNSUPPORTED', // a valid input this build does not handle (architecture, feature)
  'E_NUMERIC', // NaN, Inf, or a value range that cannot be represented
  'E_OVERFLOW', // an integer accumulation that cannot fit
  'E_TOKENIZER', // a tokenizer that is missing or cannot be read
  'E_NATIVE_MISSING', // the CUDA addon could not be loaded
  'E_NO_DEVICE', // no CUDA device, or a device index that does not exist
  'E_CUDA', // a CUDA runtime or driver error
  'E_DEVICE_MEMORY', // a model, cache or workspace that does not fit in the free device memory
  'E_CUBLAS', // a cuBLAS error
  'E_NCCL', // an NCCL error
  'E_DISPOSED', // a device resource used after dispose()
  'E_COMM', // a collective failed: peer lost, mismatched messages
  'E_TIMEOUT', // something did not happen in time
  'E_AUTH', // a process presented no or the wrong job token
  'E_INTERNAL', // a broken invariant inside q: a bug, please report it
] as const;

export type QErrorCode = (typeof Q_ERROR_CODES)[number];

export interface QErrorOptions {
  cause?: unknown;
  /** Structured context (file, tensor, layer, numbers) for programs that log errors. */
  details?: Record<string, unknown>;
}

/**
 * The one error class of q.
 *
 * @example
 * ```ts
 * try { readSafetensorsHeader('model.safetensors'); }
 * catch (e) { if (e instanceof QError && e.code === 'E_FORMAT') console.error(e.message); }
 * ```
 */
export class QError extends Error {
  readonly code: QErrorCode;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: QErrorCode, message: string, options: QErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'QError';
    this.code = code;
    this.details = options.details;
  }
}

/**
 * True when `e` is a QError, optionally with the given code. Works across duplicated package copies.
 *
 * @example
 * ```ts
 * try { assertDType('x'); } catch (e) { isQError(e, 'E_DTYPE'); } // true
 * ```
 */
export function isQError(e: unknown, code?: QErrorCode): e is QError {
  if (typeof e !== 'object' || e === null) return false;
  const maybe = e as { name?: unknown; code?: unknown };
  if (maybe.name !== 'QError' || typeof maybe.code !== 'string') return false;
  return code === undefined || maybe.code === code;
}

/**
 * Formats a value for "Expected X for Y but received Z" messages without dumping huge arrays.
 *
 * @example
 * ```ts
 * describeValue([1, 2, 3]) // '[1, 2, 3]'
 * ```
 */
export function describeValue(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v.length > 80 ? `${v.slice(0, 77)}...` : v);
  if (typeof v === 'bigint') return `${v}n`;
  if (Array.isArray(v))
    return v.length > 8 ? `[${v.slice(0, 8).join(', ')}, ...] (length ${v.length})` : `[${v.join(', ')}]`;
  if (ArrayBuffer.isView(v))
    return `${v.constructor.name}(length ${(v as unknown as { length: number }).length})`;
  if (v === null || v === undefined || typeof v !== 'object') return String(v);
  try {
    const s = JSON.stringify(v);
    return s.length > 120 ? `${s.slice(0, 117)}...` : s;
  } catch {
    return Object.prototype.toString.call(v);
  }
}

/**
 * Throws `QError(code, "Expected <expected> for <name> but received <value>")`.
 *
 * @example
 * ```ts
 * expected('E_ARG', 'groupSize', 'a multiple of 32', 100);
 * // throws QError: Expected a multiple of 32 for groupSize but received 100
 * ```
 */
export function expected(code: QErrorCode, name: string, expectedWhat: string, received: unknown): never {
  throw new QError(code, `Expected ${expectedWhat} for ${name} but received ${describeValue(received)}`);
}
