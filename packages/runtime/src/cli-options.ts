import { InvalidArgumentError } from 'commander';

/**
 * Parser of an integer option: `--max-tokens <n>` with `int('--max-tokens', 0)` accepts 0, 1, 2, ...
 *
 * @example
 * ```ts
 * program.option('--port <n>', 'port', int('--port', 0), 8000);
 * ```
 */
export const int =
  (name: string, min = 1) =>
  (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min)
      throw new InvalidArgumentError(
        `Expected an integer >= ${min} for ${name} but received ${JSON.stringify(v)}`,
      );
    return n;
  };
/**
 * Parser of a number option with a condition: `num('--top-p', (n) => n > 0 && n <= 1, 'a number in (0, 1]')`.
 *
 * @example
 * ```ts
 * program.option('--temperature <t>', 'temperature', num('--temperature', (n) => n >= 0, 'a number >= 0'), 0);
 * ```
 */
export const num =
  (name: string, ok: (n: number) => boolean, what: string) =>
  (v: string): number => {
    const n = Number(v);
    if (v.trim() === '' || !Number.isFinite(n) || !ok(n))
      throw new InvalidArgumentError(`Expected ${what} for ${name} but received ${JSON.stringify(v)}`);
    return n;
  };
