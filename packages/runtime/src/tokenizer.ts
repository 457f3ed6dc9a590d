import * as fs from 'node:fs';
import * as path from 'node:path';
import { Template } from '@huggingface/jinja';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { type Llama2cTokenizer, QError, readLlama2cTokenizer } from '@q/core';

/** A chat message for chat templates. */
export interface ChatMessage {
  readonly role: 'system' | 'user' | 'assistant' | (string & {});
  readonly content: string;
}

/**
 * What the runtime needs from a tokenizer, whatever its file format: llama2.c `tokenizer.bin` or Hugging Face
 * `tokenizer.json` (+ `tokenizer_config.json` with its chat template).
 */
export interface TextTokenizer {
  readonly kind: 'llama2c' | 'huggingface';
  readonly vocabSize: number;
  readonly bosId: number;
  readonly eosIds: readonly number[];
  /** The tokenizer's ordinary encoding, without BOS or EOS (llama2.c: with run.c's dummy-prefix space). */
  encode(text: string): number[];
  /**
   * The ids generation starts from: llama2.c: BOS + encode(text); Hugging Face: the tokenizer's own special
   * tokens (its post-processor adds BOS where the model expects one), none for text rendered by the chat
   * template, which already holds them.
   */
  encodePrompt(text: string, options?: { readonly chat?: boolean }): number[];
  decode(ids: readonly number[]): string;
  /** Incremental decoding for streamed output: push(id) returns the newly completed text. */
  streamDecoder(): { push(id: number): string; flush(): string };
  /** The prompt text for chat messages, when the tokenizer carries a chat template. */
  applyChatTemplate?(messages: readonly ChatMessage[], addGenerationPrompt?: boolean): string;
  /** Files that make up this tokenizer (copied beside a quantized model). */
  readonly files: readonly string[];
}

/**
 * Wraps a llama2.c tokenizer file.
 *
 * @example
 * ```ts
 * const tok = loadLlama2cTokenizer('tok512.bin', 512);
 * tok.encode('Once upon a time'); // no BOS, dummy-prefix space as run.c
 * ```
 */
export function loadLlama2cTokenizer(file: string, vocabSize?: number): TextTokenizer {
  if (!fs.existsSync(file)) {
    throw new QError(
      'E_TOKENIZER',
      `Expected a llama2.c tokenizer file for the tokenizer but received a missing path ${file}`,
    );
  }
  return wrapLlama2cTokenizer(readLlama2cTokenizer(file, vocabSize), [path.resolve(file)]);
}

/**
 * Wraps an in-memory llama2.c tokenizer (`files`: where it is stored, if anywhere).
 *
 * @example
 * ```ts
 * const tok = wrapLlama2cTokenizer(new Llama2cTokenizer(pieces, scores), []);
 * ```
 */
export function wrapLlama2cTokenizer(t: Llama2cTokenizer, files: readonly string[]): TextTokenizer {
  return {
    kind: 'llama2c',
    vocabSize: t.vocabSize,
    bosId: t.bosId,
    eosIds: [t.eosId],
    encode: (text) => t.encode(text, { bos: false, eos: false }),
    encodePrompt: (text) => t.encode(text, { bos: true, eos: false }),
    decode: (ids) => t.decode(ids),
    streamDecoder: () => t.streamDecoder(),
    files,
  };
}

/**
 * Finds the llama2.c tokenizer beside a checkpoint: `tokenizer.bin`, else the one `tok*.bin`.
 *
 * @example
 * ```ts
 * findLlama2cTokenizer('models/stories260K/stories260K.bin'); // '.../tok512.bin'
 * ```
 */
export function findLlama2cTokenizer(checkpoint: string): string {
  const dir = path.dirname(path.resolve(checkpoint));
  const direct = path.join(dir, 'tokenizer.bin');
  if (fs.existsSync(direct)) return direct;
  let names: string[] = [];
  try {
    names = fs.readdirSync(dir).filter((n) => /^tok.*\.bin$/.test(n));
  } catch {
    // handled below
  }
  names.sort();
  if (names.length === 0) {
    throw new QError(
      'E_TOKENIZER',
      `Expected a tokenizer.bin or tok*.bin beside ${checkpoint} (or --tokenizer <file>) for the tokenizer but received none in ${dir}`,
    );
  }
  return path.join(dir, names[0] as string);
}

function readJson(file: string, what: string): Record<string, unknown> {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new QError(
      'E_TOKENIZER',
      `Expected a readable ${what} at ${file} but received: ${(e as Error).message}`,
      {
        cause: e,
      },
    );
  }
  try {
    const v = JSON.parse(text) as unknown;
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not a JSON object');
    return v as Record<string, unknown>;
  } catch (e) {
    throw new QError(
      'E_TOKENIZER',
      `Expected a JSON object in ${file} (${what}) but received: ${(e as Error).message}`,
      {
        cause: e,
      },
    );
  }
}

function tokenText(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (typeof v === 'object' && v !== null && typeof (v as { content?: unknown }).content === 'string')
    return (v as { content: string }).content;
  return undefined;
}

/**
 * Loads a Hugging Face `tokenizer.json` (and `tokenizer_config.json` beside it, when present, for the chat
 * template and special tokens) from a model directory.
 *
 * @example
 * ```ts
 * const tok = loadHfTokenizer('models/qwen2-0.5b', { bosId: 151643, eosIds: [151645] });
 * tok.applyChatTemplate?.([{ role: 'user', content: 'Hi' }]);
 * ```
 */
export function loadHfTokenizer(
  dir: string,
  ids: { readonly bosId: number; readonly eosIds: readonly number[] },
): TextTokenizer {
  const file = path.join(dir, 'tokenizer.json');
  if (!fs.existsSync(file)) {
    throw new QError(
      'E_TOKENIZER',
      `Expected a tokenizer.json in ${dir} for the tokenizer but received none`,
    );
  }
  const json = readJson(file, 'tokenizer.json');
  const cfgFile = path.join(dir, 'tokenizer_config.json');
  const cfg = fs.existsSync(cfgFile) ? readJson(cfgFile, 'tokenizer_config.json') : {};
  let tok: HfTokenizer;
  try {
    tok = new HfTokenizer(json, cfg);
  } catch (e) {
    throw new QError(
      'E_TOKENIZER',
      `Expected a valid tokenizer.json in ${dir} but received: ${(e as Error).message}`,
      {
        cause: e,
      },
    );
  }
  const model = json.model as { vocab?: unknown } | undefined;
  const vocab = model?.vocab;
  const added = Array.isArray(json.added_tokens) ? (json.added_tokens as { id?: number }[]) : [];
  let vocabSize = Array.isArray(vocab)
    ? vocab.length
    : typeof vocab === 'object' && vocab
      ? Object.keys(vocab).length
      : 0;
  for (const a of added) if (typeof a.id === 'number') vocabSize = Math.max(vocabSize, a.id + 1);
  let template = cfg.chat_template as unknown;
  if (Array.isArray(template)) {
    const named =
      (template as { name?: string; template?: string }[]).find((t) => t.name === 'default') ?? template[0];
    template = (named as { template?: string } | undefined)?.template;
  }
  const files = [file, ...(fs.existsSync(cfgFile) ? [cfgFile] : [])];
  const decode = (list: readonly number[]): string => tok.decode([...list], { skip_special_tokens: true });
  const result: TextTokenizer = {
    kind: 'huggingface',
    vocabSize,
    bosId: ids.bosId,
    eosIds: ids.eosIds,
    encode: (text) => tok.encode(text, { add_special_tokens: false }).ids,
    encodePrompt: (text, options = {}) => tok.encode(text, { add_special_tokens: !options.chat }).ids,
    decode,
    streamDecoder: () => {
      const all: number[] = [];
      let emitted = '';
      return {
        push(id: number): string {
          all.push(id);
          const text = decode(all);
          // Hold back an incomplete UTF-8 sequence (decoded as U+FFFD) until its last byte arrives.
          if (text.endsWith('\uFFFD') || !text.startsWith(emitted)) return '';
          const fresh = text.slice(emitted.length);
          emitted = text;
          return fresh;
        },
        flush(): string {
          const text = decode(all);
          const fresh = text.startsWith(emitted) ? text.slice(emitted.length) : '';
          emitted = text;
          return fresh;
        },
      };
    },
    files,
  };
  if (typeof template === 'string') {
    const tpl = new Template(template);
    const bos = tokenText(cfg.bos_token) ?? '';
    const eos = tokenText(cfg.eos_token) ?? '';
    return {
      ...result,
      applyChatTemplate: (messages, addGenerationPrompt = true) =>
        tpl.render({ messages, bos_token: bos, eos_token: eos, add_generation_prompt: addGenerationPrompt }),
    };
  }
  return result;
}
