import { z } from 'zod';
import { ApiError } from './errors';

// Every request field is validated here, with zod. Objects are strict: a field this server does not know is
// a 400 naming it, so an option that would change the output is never ignored in silence. Neutral values
// that common clients send (n: 1, zero penalties, user, an empty logit_bias) are accepted.

const unsupported =
  (what: string) =>
  (iss: { input?: unknown; path?: PropertyKey[] }): string =>
    `Expected ${what} for ${fieldName(iss.path ?? [])} but received ${show(iss.input)}`;

/** A received value for a message: JSON, cut short. */
function show(v: unknown): string {
  const s = v === undefined ? 'nothing' : JSON.stringify(v);
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

/** A field accepted only with its neutral value. */
function neutral<T extends z.ZodType>(schema: T, ok: (v: z.output<T>) => boolean, what: string, why: string) {
  return schema.nullish().refine((v) => v === null || v === undefined || ok(v as z.output<T>), {
    error: (iss) => `${unsupported(what)(iss)}: ${why}`,
  });
}

const samplingFields = {
  model: z.string(),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().min(0).max(1).nullish(),
  /** Extension (as vLLM): sample among the k most likely tokens; 0 or -1 = all. */
  top_k: z.number().int().min(-1).nullish(),
  seed: z.number().int().nullish(),
  stop: z
    .union([z.string(), z.array(z.string()).max(4)], { error: 'a string or an array of at most 4 strings' })
    .nullish(),
  stream: z.boolean().nullish(),
  stream_options: z.strictObject({ include_usage: z.boolean().nullish() }).nullish(),
  user: z.string().nullish(),
  /** Extension (as vLLM): keep generating past EOS, for benchmarks with a fixed output length. */
  ignore_eos: z.boolean().nullish(),
  n: neutral(z.number().int(), (v) => v === 1, '1', 'one choice per request is supported'),
  presence_penalty: neutral(z.number(), (v) => v === 0, '0', 'penalties are not supported'),
  frequency_penalty: neutral(z.number(), (v) => v === 0, '0', 'penalties are not supported'),
  logit_bias: neutral(
    z.record(z.string(), z.number()),
    (v) => Object.keys(v).length === 0,
    'an empty object',
    'logit bias is not supported',
  ),
};

const contentPart = z.strictObject({ type: z.literal('text'), text: z.string() });

const message = z.strictObject({
  role: z.enum(['system', 'developer', 'user', 'assistant']),
  content: z.union([z.string(), z.array(contentPart)], {
    error: 'a string or an array of text parts ({ "type": "text", "text": ... })',
  }),
  name: z.string().nullish(),
});

/** `POST /v1/chat/completions`. */
export const chatRequestSchema = z.strictObject({
  ...samplingFields,
  messages: z.array(message).min(1),
  max_tokens: z.number().int().min(1).nullish(),
  max_completion_tokens: z.number().int().min(1).nullish(),
  logprobs: neutral(z.boolean(), (v) => !v, 'false', 'log probabilities are not supported'),
  top_logprobs: neutral(z.number().int(), (v) => v === 0, '0', 'log probabilities are not supported'),
  tools: neutral(z.array(z.unknown()), (v) => v.length === 0, 'no tools', 'tool calling is not supported'),
  tool_choice: neutral(
    z.unknown(),
    (v) => v === 'none' || v === 'auto',
    '"none"',
    'tool calling is not supported',
  ),
  parallel_tool_calls: z.boolean().nullish(),
  functions: neutral(
    z.array(z.unknown()),
    (v) => v.length === 0,
    'no functions',
    'function calling is not supported',
  ),
  function_call: neutral(
    z.unknown(),
    (v) => v === 'none' || v === 'auto',
    '"none"',
    'function calling is not supported',
  ),
  response_format: neutral(
    z.looseObject({ type: z.string() }),
    (v) => v.type === 'text',
    '{ "type": "text" }',
    'structured output is not supported',
  ),
  store: neutral(z.boolean(), (v) => !v, 'false', 'stored completions are not supported'),
  metadata: z.record(z.string(), z.string()).nullish(),
});

/** `POST /v1/completions`. */
export const completionRequestSchema = z.strictObject({
  ...samplingFields,
  prompt: z
    .union(
      [
        z.string(),
        z.array(z.string()).min(1),
        z.array(z.number().int().min(0)).min(1),
        z.array(z.array(z.number().int().min(0)).min(1)).min(1),
      ],
      { error: 'a string or an array of token ids (or one of either in an array)' },
    )
    .refine((v) => typeof v === 'string' || v.length === 1 || typeof v[0] === 'number', {
      error: (iss) => `${unsupported('one prompt')(iss)}: one choice per request is supported`,
    }),
  /** OpenAI's default for this route is 16. */
  max_tokens: z.number().int().min(1).nullish(),
  echo: neutral(z.boolean(), (v) => !v, 'false', 'echoing the prompt is not supported'),
  logprobs: neutral(z.number().int(), () => false, 'null', 'log probabilities are not supported'),
  best_of: neutral(z.number().int(), (v) => v === 1, '1', 'one choice per request is supported'),
  suffix: neutral(z.string(), (v) => v === '', 'null', 'suffixes are not supported'),
});

export type ChatRequest = z.output<typeof chatRequestSchema>;
export type CompletionRequest = z.output<typeof completionRequestSchema>;

const article = (t: string): string => `${/^[aeiou]/.test(t) ? 'an' : 'a'} ${t}`;

function expectedWhat(issue: z.core.$ZodIssue): string {
  switch (issue.code) {
    case 'too_small':
      return issue.origin === 'array'
        ? `at least ${issue.minimum} items`
        : `${article(issue.origin)} ${issue.inclusive ? '>=' : '>'} ${issue.minimum}`;
    case 'too_big':
      return issue.origin === 'array'
        ? `at most ${issue.maximum} items`
        : `${article(issue.origin)} ${issue.inclusive ? '<=' : '<'} ${issue.maximum}`;
    case 'invalid_type':
      return article(issue.expected);
    case 'invalid_value':
      return `one of ${issue.values.map((v) => JSON.stringify(v)).join(', ')}`;
    default:
      // Unions carry their own description (see the schemas above).
      return issue.message;
  }
}

function fieldName(path: readonly PropertyKey[]): string {
  let s = '';
  for (const p of path) s += typeof p === 'number' ? `[${p}]` : s === '' ? String(p) : `.${String(p)}`;
  return s === '' ? 'the request body' : s;
}

function valueAt(body: unknown, path: readonly PropertyKey[]): unknown {
  let v = body;
  for (const p of path)
    v = typeof v === 'object' && v !== null ? (v as Record<PropertyKey, unknown>)[p] : undefined;
  return v;
}

/**
 * Validates a request body; throws an `ApiError` 400 that names the first bad field in OpenAI's error shape.
 *
 * @example
 * ```ts
 * const req = parseRequest(chatRequestSchema, request.body); // typed, or a 400
 * ```
 */
export function parseRequest<S extends z.ZodType>(schema: S, body: unknown): z.output<S> {
  const r = schema.safeParse(body);
  if (r.success) return r.data;
  const issue = r.error.issues[0] as z.core.$ZodIssue;
  if (issue.code === 'unrecognized_keys') {
    const key = issue.keys[0] as string;
    const param = fieldName([...issue.path, key]);
    throw new ApiError(
      400,
      `Expected no field ${param} (it is not part of the API this server supports) but received one`,
      {
        param,
        code: 'unsupported_parameter',
      },
    );
  }
  const name = fieldName(issue.path);
  const message =
    issue.code === 'custom'
      ? issue.message
      : `Expected ${expectedWhat(issue)} for ${name} but received ${show(valueAt(body, issue.path))}`;
  throw new ApiError(400, message, {
    param: issue.path.length > 0 ? name : null,
    code: issue.code === 'custom' ? 'unsupported_value' : 'invalid_value',
  });
}
