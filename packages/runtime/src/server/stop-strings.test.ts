import { Rng } from '@q/core';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { StopMatcher } from './stop-strings';

/**
 * Independent reference on the whole text: the first position where any stop string ends, cut where that
 * stop string (the longest, if several end there) starts.
 */
function reference(text: string, stops: readonly string[]): { text: string; stopped: boolean } {
  for (let end = 1; end <= text.length; end++) {
    const head = text.slice(0, end);
    const done = stops.filter((s) => s !== '' && head.endsWith(s)).sort((a, b) => b.length - a.length);
    if (done.length > 0) return { text: text.slice(0, end - (done[0] as string).length), stopped: true };
  }
  return { text, stopped: false };
}

function run(
  pieces: readonly string[],
  stops: readonly string[],
): { text: string; stopped: boolean; emitted: string[] } {
  const m = new StopMatcher(stops);
  const emitted: string[] = [];
  let stopped = false;
  for (const p of pieces) {
    const r = m.push(p);
    emitted.push(r.text);
    if (r.stopped) {
      stopped = true;
      break;
    }
  }
  if (!stopped) emitted.push(m.flush());
  return { text: emitted.join(''), stopped, emitted };
}

describe('StopMatcher', () => {
  it('equals cutting the whole text at the first stop string, however the text is split', () => {
    // A small alphabet makes partial matches across pieces frequent.
    const piece = fc.string({ unit: fc.constantFrom('a', 'b', 'c', '\n'), maxLength: 4 });
    fc.assert(
      fc.property(fc.array(piece, { maxLength: 20 }), fc.array(piece, { maxLength: 4 }), (pieces, stops) => {
        const got = run(pieces, stops);
        expect({ text: got.text, stopped: got.stopped }).toEqual(reference(pieces.join(''), stops));
      }),
      { numRuns: 2000, seed: 12 },
    );
  });

  it('holds back only what may still become a stop string', () => {
    const r = run(['Hello', ' wor', 'ld', '!'], ['world!']);
    expect(r.emitted).toEqual(['Hello', ' ', '', '']);
    expect(r.stopped).toBe(true);
    const m = new StopMatcher(['END']);
    expect(m.push('abcE')).toEqual({ text: 'abc', stopped: false });
    expect(m.push('Nx')).toEqual({ text: 'ENx', stopped: false });
    expect(m.push('E')).toEqual({ text: '', stopped: false });
    expect(m.flush()).toBe('E');
  });

  it('streams text unchanged when there are no stop strings', () => {
    const rng = new Rng(3);
    const pieces = Array.from({ length: 50 }, () =>
      String.fromCharCode(97 + rng.int(26)).repeat(1 + rng.int(3)),
    );
    const r = run(pieces, []);
    expect(r.emitted.slice(0, -1)).toEqual(pieces);
  });
});
