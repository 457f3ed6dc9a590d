// Test-only: what one prompt generates on its own, through the one-sequence `generate`: the reference the
// batched engine and the server must reproduce token for token.
import { type GenerateOptions, generateIds } from '../generate';
import type { CausalLM } from '../lm';
import type { TextTokenizer } from '../tokenizer';

export function generateAlone(
  model: CausalLM,
  prompt: readonly number[],
  options: GenerateOptions,
): Promise<number[]> {
  return generateIds(model, prompt, options);
}

/** The text `q generate` prints after the prompt: the stream decoder fed the prompt first, then the output. */
export function generatedText(
  tokenizer: TextTokenizer,
  prompt: readonly number[],
  output: readonly number[],
): string {
  const dec = tokenizer.streamDecoder();
  for (const id of prompt) dec.push(id);
  let text = '';
  for (const id of output) text += dec.push(id);
  return text + dec.flush();
}
