import type { ChatMessage, TextTokenizer } from '../tokenizer';

/**
 * The prompt of a chat for tokenizers without a chat template (llama2.c's): one line per message, its role
 * capitalized, then `Assistant:` for the reply to follow.
 *
 * ```
 * System: You are terse.
 * User: Once upon a time
 * Assistant:
 * ```
 *
 * (`developer` messages render as `System`.)
 *
 * @example
 * ```ts
 * plainChatTemplate([{ role: 'user', content: 'Hi' }]); // 'User: Hi\nAssistant:'
 * ```
 */
export function plainChatTemplate(messages: readonly ChatMessage[]): string {
  const role = (r: string) => (r === 'developer' ? 'System' : r.charAt(0).toUpperCase() + r.slice(1));
  return `${messages.map((m) => `${role(m.role)}: ${m.content}\n`).join('')}Assistant:`;
}

/**
 * The prompt token ids of a chat: the tokenizer's own chat template where it has one (Hugging Face
 * tokenizers), otherwise `plainChatTemplate`, encoded as `q generate` encodes a prompt.
 *
 * @example
 * ```ts
 * const ids = chatPromptIds(tokenizer, [{ role: 'user', content: 'Tell me a story' }]);
 * ```
 */
export function chatPromptIds(tokenizer: TextTokenizer, messages: readonly ChatMessage[]): number[] {
  if (tokenizer.applyChatTemplate)
    return tokenizer.encodePrompt(tokenizer.applyChatTemplate(messages, true), { chat: true });
  return tokenizer.encodePrompt(plainChatTemplate(messages));
}
