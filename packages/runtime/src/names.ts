import { llamaTensorNames, type ModelConfig } from '@q/core';

/** Every tensor name a config can read, Hugging Face convention, in a stable order (`lm_head.weight` included
 * even when tied, since a file may carry it): `llamaTensorNames` of `@q/core` under the name this package has
 * always exported.
 *
 * @example
 * ```ts
 * tensorNames(config).includes('model.norm.weight'); // true
 * ```
 */
export function tensorNames(c: ModelConfig): string[] {
  return llamaTensorNames(c, { includeTiedHead: true });
}
