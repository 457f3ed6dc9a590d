import { isQError } from '@q/core';

/** The error body of OpenAI's API, which its clients parse: `{ error: { message, type, param, code } }`. */
export interface OpenAIErrorBody {
  readonly error: {
    readonly message: string;
    readonly type: string;
    readonly param: string | null;
    readonly code: string | null;
  };
}

/**
 * An HTTP error answered in OpenAI's error shape.
 *
 * @example
 * ```ts
 * throw new ApiError(400, 'Expected 1 for n but received 3', { param: 'n', code: 'unsupported_value' });
 * ```
 */
export class ApiError extends Error {
  readonly type: string;
  readonly param: string | null;
  readonly code: string | null;
  /** Extra response headers (`Retry-After`, `WWW-Authenticate`). */
  readonly headers: Readonly<Record<string, string>>;

  constructor(
    readonly status: number,
    message: string,
    options: {
      type?: string;
      param?: string | null;
      code?: string | null;
      headers?: Record<string, string>;
    } = {},
  ) {
    super(message);
    this.name = 'ApiError';
    this.type = options.type ?? typeFor(status);
    this.param = options.param ?? null;
    this.code = options.code ?? null;
    this.headers = options.headers ?? {};
  }

  get body(): OpenAIErrorBody {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

function typeFor(status: number): string {
  if (status === 401) return 'authentication_error';
  if (status === 404) return 'not_found_error';
  if (status === 429) return 'rate_limit_error';
  if (status >= 500) return 'server_error';
  return 'invalid_request_error';
}

/** Seconds a client is asked to wait after a 429 or 503. */
export const RETRY_AFTER_SECONDS = 1;

/**
 * Maps anything a handler or the framework threw to an `ApiError`: q's `E_BUSY` is a 429 with `Retry-After`,
 * its `E_ARG` a 400, the framework's body errors their own status (413, 415, 400), the rest a 500.
 *
 * @example
 * ```ts
 * reply.code(toApiError(e).status).send(toApiError(e).body);
 * ```
 */
export function toApiError(e: unknown): ApiError {
  if (e instanceof ApiError) return e;
  if (isQError(e, 'E_BUSY'))
    return new ApiError(429, `${e.message}: the server is at capacity, retry later`, {
      code: 'server_busy',
      headers: { 'retry-after': String(RETRY_AFTER_SECONDS) },
    });
  if (isQError(e, 'E_ARG')) return new ApiError(400, e.message, { code: 'invalid_value' });
  const err = e as { statusCode?: unknown; code?: unknown; message?: unknown };
  const status = typeof err.statusCode === 'number' ? err.statusCode : 500;
  const message = typeof err.message === 'string' ? err.message : String(e);
  if (err.code === 'FST_ERR_CTP_BODY_TOO_LARGE')
    return new ApiError(413, `Expected a request body within the size limit but received a larger one`, {
      code: 'request_too_large',
    });
  if (err.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE')
    return new ApiError(
      415,
      `Expected content-type application/json for the request body but received another media type (${message})`,
      {
        code: 'unsupported_media_type',
      },
    );
  if (status >= 400 && status < 500)
    return new ApiError(
      status,
      `Expected a JSON request body but received one that does not parse: ${message}`,
      {
        code: 'invalid_json',
      },
    );
  return new ApiError(500, `Internal error: ${message}`, { code: 'internal_error' });
}
