import { describe, expect, it } from 'vitest';
import { main as tensorBasics } from './tensor-basics';

describe('examples', () => {
  it('tensor-basics prints exact f16 and int4 round trips', () => {
    const out = tensorBasics();
    expect(out[0]).toBe('f16 of [0.1, 1/3, 65504, 1e-8]: 0.0999755859375, 0.333251953125, 65504, 0');
    expect(out[2]).toBe('int4 packed bytes: f8 70 03');
    expect(out[3]).toBe('unpacked: -8, -1, 0, 7, 3');
  });
});
