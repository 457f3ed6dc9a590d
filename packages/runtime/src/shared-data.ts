import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root seen from this package (src/ or dist/ alike).
 *
 * @example
 * ```ts
 * path.join(repoRoot(), 'README.md');
 * ```
 */
export function repoRoot(): string {
  return path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
}

/** The shared test data directory (`../shared` beside the repository), or null when absent.
 *
 * @example
 * ```ts
 * const shared = sharedDir(); // null on a fresh clone
 * ```
 */
export function sharedDir(): string | null {
  const d = path.resolve(repoRoot(), '..', 'shared');
  return fs.existsSync(d) ? d : null;
}
