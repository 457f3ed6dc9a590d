import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  createSafetensorsWriter,
  f32ToBf16Bits,
  f32ToF16Bits,
  isQError,
  openSafetensors,
  openSafetensorsModel,
  SAFETENSORS_INDEX_FILE,
  Tensor,
  writeSafetensors,
  writeShardedSafetensors,
} from '@q/core';
import { describe, expect, it } from 'vitest';
import { randomFloats, rng, tmpDir } from '../test/helpers';

/** A safetensors file assembled by hand from a header object and a data section. */
function handFile(file: string, header: unknown, data: Uint8Array | number, headerText?: string): void {
  const json = Buffer.from(headerText ?? JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  const body = typeof data === 'number' ? Buffer.alloc(data) : Buffer.from(data);
  fs.writeFileSync(file, Buffer.concat([len, json, body]));
}

function errorOf(fn: () => unknown): Error & { code?: string; details?: Record<string, unknown> } {
  try {
    fn();
  } catch (e) {
    return e as Error;
  }
  throw new Error('expected a throw');
}

function expectFormat(fn: () => unknown, ...parts: (string | RegExp)[]): void {
  const e = errorOf(fn);
  expect(isQError(e, 'E_FORMAT'), e.message).toBe(true);
  for (const p of parts) {
    if (typeof p === 'string') expect(e.message).toContain(p);
    else expect(e.message).toMatch(p);
  }
}

function randomTensors(seed: number) {
  const r = rng(seed);
  const f = randomFloats(6 * 5, seed);
  return {
    'a.f32': Tensor.from('f32', [6, 5], f),
    'b.f16': new Tensor(
      'f16',
      [3, 4],
      Uint16Array.from(randomFloats(12, seed + 1), (x) => f32ToF16Bits(x)),
    ),
    'c.bf16': new Tensor(
      'bf16',
      [7],
      Uint16Array.from(randomFloats(7, seed + 2), (x) => f32ToBf16Bits(x)),
    ),
    'd.i8': new Tensor(
      'i8',
      [2, 2, 3],
      Int8Array.from({ length: 12 }, () => Math.floor(r() * 256) - 128),
    ),
    'e.u8': new Tensor(
      'u8',
      [5],
      Uint8Array.from({ length: 5 }, () => 1 + Math.floor(r() * 255)),
    ),
    'f.i32': new Tensor(
      'i32',
      [3],
      Int32Array.from({ length: 3 }, () => Math.floor(r() * 2 ** 32) - 2 ** 31),
    ),
  };
}

describe('safetensors read', () => {
  const dir = tmpDir();

  it('reads a hand-made file: names, info, metadata, values', () => {
    const file = path.join(dir, 'hand.safetensors');
    const a = randomFloats(6, 1);
    const b = Int32Array.of(-7, 123456789);
    const data = Buffer.concat([Buffer.from(b.buffer), Buffer.from(a.buffer)]);
    handFile(
      file,
      {
        __metadata__: { format: 'pt', note: 'x' },
        w: { dtype: 'F32', shape: [2, 3], data_offsets: [8, 32] },
        idx: { dtype: 'I32', shape: [2], data_offsets: [0, 8] },
      },
      data,
    );
    const r = openSafetensors(file);
    expect(r.names()).toEqual(['idx', 'w']);
    expect(r.metadata).toEqual({ format: 'pt', note: 'x' });
    const headerLen = fs.readFileSync(file).readBigUInt64LE(0);
    expect(r.info('w')).toEqual({
      dtype: 'f32',
      shape: [2, 3],
      byteOffset: 8 + Number(headerLen) + 8,
      byteLength: 24,
    });
    const w = r.read('w');
    expect(w.shape).toEqual([2, 3]);
    expect(Array.from(w.data)).toEqual(Array.from(a));
    expect(Array.from(r.read('idx').data)).toEqual([-7, 123456789]);
    expect(Array.from(r.readBytes('idx'))).toEqual(Array.from(data.subarray(0, 8)));
    expect(
      isQError(
        errorOf(() => r.info('nope')),
        'E_ARG',
      ),
    ).toBe(true);
    r.close();
  });

  it('round-trips every dtype and bytes written by writeSafetensors, with an 8-byte aligned header', () => {
    const file = path.join(dir, 'all.safetensors');
    const ts = randomTensors(3);
    writeSafetensors(file, ts, { format: 'pt' });
    const raw = fs.readFileSync(file);
    const n = Number(raw.readBigUInt64LE(0));
    expect(n % 8).toBe(0);
    const header = JSON.parse(raw.subarray(8, 8 + n).toString());
    expect(header.__metadata__).toEqual({ format: 'pt' });
    expect(header['b.f16']).toEqual({ dtype: 'F16', shape: [3, 4], data_offsets: [120, 144] });
    const r = openSafetensors(file);
    for (const [name, t] of Object.entries(ts)) {
      const got = r.read(name);
      expect(got.dtype).toBe(t.dtype);
      expect(got.shape).toEqual(t.shape);
      expect(Array.from(got.data), name).toEqual(Array.from(t.data));
    }
    r.close();
  });

  it('writes strided views as their contiguous values', () => {
    const file = path.join(dir, 'view.safetensors');
    const t = Tensor.from('f32', [3, 4], randomFloats(12, 9));
    const v = t.transpose().slice(0, 1, 3);
    writeSafetensors(file, new Map([['v', v]]));
    const r = openSafetensors(file);
    expect(Array.from(r.read('v').data)).toEqual(Array.from(v.contiguous().data));
    r.close();
  });

  it('accepts empty tensors and an empty file', () => {
    const file = path.join(dir, 'empty.safetensors');
    writeSafetensors(file, { z: Tensor.zeros('f32', [0, 4]), one: Tensor.from('u8', [1], [9]) });
    const r = openSafetensors(file);
    expect(r.read('z').shape).toEqual([0, 4]);
    expect(Array.from(r.read('one').data)).toEqual([9]);
    r.close();
    const f2 = path.join(dir, 'none.safetensors');
    writeSafetensors(f2, {});
    expect(openSafetensors(f2).names()).toEqual([]);
  });
});

describe('safetensors bad input', () => {
  const dir = tmpDir();
  const f = (name: string) => path.join(dir, name);

  it('header length past the end of the file', () => {
    const file = f('past.safetensors');
    const b = Buffer.alloc(40);
    b.writeBigUInt64LE(1000n);
    fs.writeFileSync(file, b);
    expectFormat(
      () => openSafetensors(file),
      file,
      'header length 1000 runs past the end of the file (40 bytes',
    );
  });

  it('header over 100 MB is refused before allocating', () => {
    const file = f('huge.safetensors');
    const b = Buffer.alloc(16);
    b.writeBigUInt64LE(0xffffffffffffffffn);
    fs.writeFileSync(file, b);
    expectFormat(() => openSafetensors(file), file, '100000000-byte limit');
    b.writeBigUInt64LE(100_000_001n);
    fs.writeFileSync(file, b);
    expectFormat(() => openSafetensors(file), 'header length 100000001');
  });

  it('invalid JSON', () => {
    const file = f('json.safetensors');
    handFile(file, null, 0, '{"w": {"dtype": "F32",');
    expectFormat(() => openSafetensors(file), file, 'not valid JSON');
    handFile(file, null, 0, '[1, 2]');
    expectFormat(() => openSafetensors(file), 'expected a JSON object');
    handFile(file, null, 0, '{"w": 5}');
    expectFormat(() => openSafetensors(file), 'tensor "w"');
  });

  it('unknown dtype', () => {
    const file = f('dtype.safetensors');
    handFile(file, { w: { dtype: 'F33', shape: [1], data_offsets: [0, 4] } }, 4);
    expectFormat(() => openSafetensors(file), file, 'unknown dtype "F33" for tensor "w"');
    handFile(file, { w: { dtype: 'F64', shape: [1], data_offsets: [0, 8] } }, 8);
    expect(
      isQError(
        errorOf(() => openSafetensors(file)),
        'E_UNSUPPORTED',
      ),
    ).toBe(true);
  });

  it('shape × dtype size not equal to the byte range', () => {
    const file = f('size.safetensors');
    handFile(file, { w: { dtype: 'F16', shape: [2, 3], data_offsets: [0, 24] } }, 24);
    expectFormat(
      () => openSafetensors(file),
      file,
      'tensor "w" has shape [2, 3] × F16 = 12 bytes but its byte range [0, 24) holds 24',
    );
    handFile(file, { w: { dtype: 'F32', shape: [2 ** 40, 2 ** 40], data_offsets: [0, 4] } }, 4);
    expectFormat(() => openSafetensors(file), 'tensor "w"');
    handFile(file, { w: { dtype: 'F32', shape: [-1], data_offsets: [0, 4] } }, 4);
    expectFormat(() => openSafetensors(file), 'shape of tensor "w"');
  });

  it('overlapping offsets', () => {
    const file = f('overlap.safetensors');
    handFile(
      file,
      {
        a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] },
        b: { dtype: 'F32', shape: [2], data_offsets: [8, 16] },
      },
      16,
    );
    expectFormat(
      () => openSafetensors(file),
      file,
      /tensor "b" byte range \[8, 16\) overlaps tensor "a" \[0, 16\)/,
    );
  });

  it('out-of-range offsets', () => {
    const file = f('range.safetensors');
    handFile(file, { w: { dtype: 'U8', shape: [4], data_offsets: [100, 104] } }, 8);
    expectFormat(
      () => openSafetensors(file),
      file,
      'tensor "w" has byte range [100, 104) past the end of the data section (8 bytes',
    );
    handFile(file, { w: { dtype: 'U8', shape: [0], data_offsets: [4, 0] } }, 8);
    expectFormat(() => openSafetensors(file), 'data_offsets');
    handFile(file, { w: { dtype: 'U8', shape: [1], data_offsets: [-1, 0] } }, 8);
    expectFormat(() => openSafetensors(file), 'data_offsets');
  });

  it('truncated file', () => {
    const file = f('trunc.safetensors');
    writeSafetensors(file, randomTensors(4));
    const size = fs.statSync(file).size;
    fs.truncateSync(file, size - 5);
    expectFormat(() => openSafetensors(file), file, 'tensor "f.i32"', 'file truncated');
    fs.truncateSync(file, 5);
    expectFormat(() => openSafetensors(file), 'at least 8 bytes');
  });

  it('metadata that is not a string map', () => {
    const file = f('meta.safetensors');
    handFile(file, { __metadata__: { a: 1 } }, 0);
    expectFormat(() => openSafetensors(file), '__metadata__.a');
  });

  it('a missing file is E_IO', () => {
    expect(
      isQError(
        errorOf(() => openSafetensors(f('missing.safetensors'))),
        'E_IO',
      ),
    ).toBe(true);
  });
});

describe('safetensors writes are atomic', () => {
  const dir = tmpDir();
  const leftovers = () => fs.readdirSync(dir).filter((n) => n.endsWith('.tmp'));

  it('a streaming write that fails midway leaves nothing under the final name', () => {
    const file = path.join(dir, 'midway.safetensors');
    const w = createSafetensorsWriter(file, [
      { name: 'a', dtype: 'f32', shape: [4] },
      { name: 'b', dtype: 'f32', shape: [4] },
    ]);
    w.write('a', Tensor.from('f32', [4], randomFloats(4, 1)));
    expect(leftovers().length).toBe(1);
    expect(
      isQError(
        errorOf(() => w.write('b', new Uint8Array(3))),
        'E_SHAPE',
      ),
    ).toBe(true);
    expect(fs.existsSync(file)).toBe(false);
    expect(leftovers()).toEqual([]);
    expect(
      isQError(
        errorOf(() => w.close()),
        'E_IO',
      ),
    ).toBe(true);
  });

  it('a tensor that throws while being written leaves the previous file intact', () => {
    const file = path.join(dir, 'keep.safetensors');
    writeSafetensors(file, { x: Tensor.from('u8', [2], [1, 2]) });
    const before = fs.readFileSync(file);
    const good = Tensor.from('f32', [1000], randomFloats(1000, 2));
    const bad = Tensor.from('f32', [2], [1, 2]);
    Object.defineProperty(bad, 'data', {
      get() {
        throw new Error('disk on fire');
      },
    });
    expect(() => writeSafetensors(file, { good, bad })).toThrow(/disk on fire/);
    expect(fs.readFileSync(file).equals(before)).toBe(true);
    expect(leftovers()).toEqual([]);
  });

  it('out-of-order names, missing tensors and i4 are refused', () => {
    const file = path.join(dir, 'order.safetensors');
    const specs = [
      { name: 'a', dtype: 'u8', shape: [1] },
      { name: 'b', dtype: 'u8', shape: [1] },
    ] as const;
    const w = createSafetensorsWriter(file, specs);
    expect(
      isQError(
        errorOf(() => w.write('b', Uint8Array.of(1))),
        'E_ARG',
      ),
    ).toBe(true);
    const w2 = createSafetensorsWriter(file, specs);
    w2.write('a', Uint8Array.of(1));
    expect(
      isQError(
        errorOf(() => w2.close()),
        'E_ARG',
      ),
    ).toBe(true);
    expect(
      isQError(
        errorOf(() => writeSafetensors(file, { q: Tensor.from('i4', [2], [1, -1]) })),
        'E_DTYPE',
      ),
    ).toBe(true);
    expect(fs.existsSync(file)).toBe(false);
    expect(leftovers()).toEqual([]);
  });
});

describe('sharded safetensors', () => {
  it('writes shards plus index and reads them back through one API', () => {
    const dir = tmpDir();
    const ts = randomTensors(8);
    const shards = writeShardedSafetensors(dir, ts, { maxShardBytes: 130, metadata: { format: 'pt' } });
    expect(shards.length).toBeGreaterThan(1);
    const index = JSON.parse(fs.readFileSync(path.join(dir, SAFETENSORS_INDEX_FILE), 'utf8'));
    expect(Object.keys(index.weight_map).sort()).toEqual(Object.keys(ts).sort());
    const total = Object.values(ts).reduce((s, t) => s + t.size * t.data.BYTES_PER_ELEMENT, 0);
    expect(index.metadata.total_size).toBe(total);
    for (const name of new Set(Object.values(index.weight_map) as string[])) {
      expect(name).toMatch(/^model-\d{5}-of-\d{5}\.safetensors$/);
    }
    for (const target of [dir, path.join(dir, SAFETENSORS_INDEX_FILE)]) {
      const m = openSafetensorsModel(target);
      expect(m.names().sort()).toEqual(Object.keys(ts).sort());
      expect(m.metadata.total_size).toBe(String(total));
      for (const [name, t] of Object.entries(ts)) {
        expect(Array.from(m.read(name).data)).toEqual(Array.from(t.data));
        expect(m.info(name).file).toBe(path.join(dir, index.weight_map[name]));
      }
      m.close();
    }
  });

  it('opens a directory holding a single model.safetensors', () => {
    const dir = tmpDir();
    const ts = randomTensors(9);
    writeSafetensors(path.join(dir, 'model.safetensors'), ts);
    const m = openSafetensorsModel(dir);
    expect(m.files).toEqual([path.join(dir, 'model.safetensors')]);
    expect(Array.from(m.read('a.f32').data)).toEqual(Array.from(ts['a.f32'].data));
    m.close();
  });

  it('rejects an index naming a shard that lacks the tensor, or a path outside the directory', () => {
    const dir = tmpDir();
    writeShardedSafetensors(dir, randomTensors(10), { maxShardBytes: 1 << 20 });
    const idxPath = path.join(dir, SAFETENSORS_INDEX_FILE);
    const index = JSON.parse(fs.readFileSync(idxPath, 'utf8'));
    index.weight_map.ghost = 'model-00001-of-00001.safetensors';
    fs.writeFileSync(idxPath, JSON.stringify(index));
    expectFormat(() => openSafetensorsModel(dir), idxPath, 'tensor "ghost"');
    index.weight_map.ghost = '../etc.safetensors';
    fs.writeFileSync(idxPath, JSON.stringify(index));
    expectFormat(() => openSafetensorsModel(dir), 'shard file name');
    fs.writeFileSync(idxPath, '{"weight_map": ');
    expectFormat(() => openSafetensorsModel(dir), 'not valid JSON');
  });

  it('rejects a bad maxShardBytes', () => {
    expect(
      isQError(
        errorOf(() => writeShardedSafetensors(tmpDir(), {}, { maxShardBytes: 0 })),
        'E_ARG',
      ),
    ).toBe(true);
  });
});
