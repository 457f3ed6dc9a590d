import { describe, expect, it } from 'vitest';
import {
  type AttentionDecodeOptions,
  type AttentionPrefillOptions,
  attentionDecode,
  attentionDecodeChunkSize,
  attentionDecodeWorkspaceBytes,
  attentionPrefill,
} from './attention';
import { expectQ, fakeTensor } from './test-support';

const t = fakeTensor;

// 3 sequences, 40 new tokens, 32 heads over 8 KV heads of 128, pages of 64, 16 pages per sequence.
function prefill(over: Partial<AttentionPrefillOptions> = {}): AttentionPrefillOptions {
  return {
    q: t('bf16', [40, 4096]),
    k: t('bf16', [100, 64, 8, 128]),
    v: t('bf16', [100, 64, 8, 128]),
    pageTable: t('i32', [3, 16]),
    qStart: t('i32', [4]),
    contextLens: t('i32', [3]),
    positions: t('i32', [40]),
    numHeads: 32,
    numKvHeads: 8,
    headDim: 128,
    scale: 1 / Math.sqrt(128),
    out: t('bf16', [40, 4096]),
    maxQLen: 30,
    ...over,
  };
}

function decode(over: Partial<AttentionDecodeOptions> = {}): AttentionDecodeOptions {
  return {
    q: t('bf16', [3, 4096]),
    k: t('bf16', [100, 64, 8, 128]),
    v: t('bf16', [100, 64, 8, 128]),
    pageTable: t('i32', [3, 16]),
    contextLens: t('i32', [3]),
    numHeads: 32,
    numKvHeads: 8,
    headDim: 128,
    scale: 1 / Math.sqrt(128),
    out: t('bf16', [3, 4096]),
    workspace: t('f32', [attentionDecodeWorkspaceBytes(3, 32, 128, 1024) / 4]),
    maxContext: 1024,
    ...over,
  };
}

describe('attention validation shared by prefill and decode', () => {
  for (const [name, call] of [
    ['attentionPrefill', (o: Partial<AttentionPrefillOptions>) => attentionPrefill(prefill(o))],
    ['attentionDecode', (o: Partial<AttentionDecodeOptions>) => attentionDecode(decode(o))],
  ] as const) {
    describe(name, () => {
      it('rejects head counts that are not positive integers or not a GQA multiple', () => {
        expectQ(() => call({ numHeads: 0 }), 'E_ARG', 'integer ≥ 1 for numHeads but received 0');
        expectQ(() => call({ numKvHeads: 2.5 }), 'E_ARG', 'for numKvHeads but received 2.5');
        expectQ(
          () => call({ numHeads: 30, numKvHeads: 8 }),
          'E_ARG',
          'numHeads a multiple of numKvHeads=8 but received 30',
        );
      });
      it('rejects head sizes other than 64 and 128', () => {
        expectQ(() => call({ headDim: 96 }), 'E_UNSUPPORTED', 'headDim 64 or 128 but received 96');
      });
      it('rejects a scale that is not positive and finite', () => {
        expectQ(() => call({ scale: Number.NaN }), 'E_ARG', 'positive finite scale but received NaN');
        expectQ(() => call({ scale: 0 }), 'E_ARG', 'but received 0');
      });
      it('rejects q of the wrong dtype, rank, stride or size', () => {
        const rows = name === 'attentionPrefill' ? 40 : 3;
        expectQ(() => call({ q: t('f16', [rows, 4096]) }), 'E_DTYPE', 'dtype bf16 for q but received f16');
        expectQ(() => call({ q: t('bf16', [rows, 32, 128]) }), 'E_SHAPE', `but received [${rows}, 32, 128]`);
        expectQ(
          () => call({ qStride: 4100 }),
          'E_ARG',
          'multiple of 8 and ≥ numHeads·headDim=4096 but received 4100',
        );
        expectQ(() => call({ qStride: 2048 }), 'E_ARG', '≥ numHeads·headDim=4096 but received 2048');
        expectQ(
          () => call({ qStride: 6144 }),
          'E_SHAPE',
          `${rows} rows of stride 6144 (${(rows - 1) * 6144 + 4096} elements) but received [${rows}, 4096]`,
        );
      });
      it('rejects a cache of the wrong dtype, rank, heads, head size or page size', () => {
        expectQ(() => call({ k: t('f16', [100, 64, 8, 128]) }), 'E_DTYPE', 'for k but received f16');
        expectQ(() => call({ v: t('f32', [100, 64, 8, 128]) }), 'E_DTYPE', 'for v but received f32');
        expectQ(() => call({ k: t('bf16', [100, 64, 1024]) }), 'E_SHAPE', 'but received [100, 64, 1024]');
        expectQ(
          () => call({ k: t('bf16', [100, 64, 4, 128]) }),
          'E_SHAPE',
          'Expected shape [100, 64, 8, 128] ([pages, pageSize, numKvHeads, headDim]) for k but received [100, 64, 4, 128]',
        );
        expectQ(
          () => call({ v: t('bf16', [99, 64, 8, 128]) }),
          'E_SHAPE',
          'Expected shape [100, 64, 8, 128] (that of k) for v but received [99, 64, 8, 128]',
        );
        expectQ(
          () => call({ k: t('bf16', [100, 24, 8, 128]), v: t('bf16', [100, 24, 8, 128]) }),
          'E_UNSUPPORTED',
          'pageSize multiple of 16 but received 24',
        );
      });
      it('rejects a page table, context lengths or output of the wrong dtype or shape', () => {
        expectQ(() => call({ pageTable: t('u8', [3, 16]) }), 'E_DTYPE', 'for pageTable but received u8');
        expectQ(() => call({ pageTable: t('i32', [48]) }), 'E_SHAPE', 'for pageTable but received [48]');
        expectQ(
          () => call({ pageTable: t('i32', [3, 0]) }),
          'E_SHAPE',
          'maxPagesPerSeq ≥ 1] but received [3, 0]',
        );
        expectQ(() => call({ contextLens: t('i32', [4]) }), 'E_SHAPE', 'shape [3] ([S], S = pageTable rows)');
        expectQ(() => call({ contextLens: t('f32', [3]) }), 'E_DTYPE', 'for contextLens but received f32');
        const rows = name === 'attentionPrefill' ? 40 : 3;
        expectQ(() => call({ out: t('f16', [rows, 4096]) }), 'E_DTYPE', 'for out but received f16');
        expectQ(
          () => call({ out: t('bf16', [rows, 2048]) }),
          'E_SHAPE',
          `Expected shape [${rows}, 4096] ([rows of q, numHeads·headDim]) for out but received [${rows}, 2048]`,
        );
      });
      it('rejects tensors on different devices and misaligned pointers', () => {
        expectQ(
          () => call({ v: t('bf16', [100, 64, 8, 128], { device: 1 }) }),
          'E_ARG',
          'Expected v on device 0 (where q is) but received device 1',
        );
        expectQ(
          () => call({ k: t('bf16', [100, 64, 8, 128], { ptr: 0x7000008n }) }),
          'E_ARG',
          '16-byte aligned device pointer for k but received 0x7000008',
        );
        expectQ(
          () => call({ contextLens: t('i32', [3], { ptr: 0x7000002n }) }),
          'E_ARG',
          '4-byte aligned device pointer for contextLens but received 0x7000002',
        );
      });
    });
  }
});

describe('attentionPrefill validation', () => {
  it('rejects qStart and positions that do not match the batch', () => {
    expectQ(
      () => attentionPrefill(prefill({ qStart: t('i32', [3]) })),
      'E_SHAPE',
      'shape [4] ([S+1], S = pageTable rows) for qStart but received [3]',
    );
    expectQ(
      () => attentionPrefill(prefill({ qStart: t('f32', [4]) })),
      'E_DTYPE',
      'for qStart but received f32',
    );
    expectQ(
      () => attentionPrefill(prefill({ positions: t('i32', [39]) })),
      'E_SHAPE',
      'shape [40] ([T], T = rows of q) for positions but received [39]',
    );
    expectQ(
      () => attentionPrefill(prefill({ positions: t('i32', [40], { ptr: 0x7000001n }) })),
      'E_ARG',
      '4-byte aligned device pointer for positions',
    );
  });
  it('rejects an empty batch and a maxQLen outside [1, T]', () => {
    expectQ(
      () =>
        attentionPrefill(
          prefill({ q: t('bf16', [0, 4096]), out: t('bf16', [0, 4096]), positions: t('i32', [0]) }),
        ),
      'E_SHAPE',
      'at least one token in q but received 0 rows',
    );
    expectQ(
      () => attentionPrefill(prefill({ maxQLen: 0 })),
      'E_ARG',
      'maxQLen in [1, 40] (T = rows of q) but received 0',
    );
    expectQ(() => attentionPrefill(prefill({ maxQLen: 41 })), 'E_ARG', 'but received 41');
    expectQ(() => attentionPrefill(prefill({ maxQLen: 2.5 })), 'E_ARG', 'but received 2.5');
  });
});

describe('attentionDecode validation', () => {
  it('rejects a query count other than one per sequence', () => {
    expectQ(
      () => attentionDecode(decode({ q: t('bf16', [4, 4096]), out: t('bf16', [4, 4096]) })),
      'E_SHAPE',
      'one query row per sequence (3 = pageTable rows) in q but received 4',
    );
  });
  it('rejects a maxContext beyond the page table capacity', () => {
    expectQ(
      () => attentionDecode(decode({ maxContext: 1025 })),
      'E_ARG',
      'maxContext in [1, 1024] (maxPagesPerSeq·pageSize) but received 1025',
    );
    expectQ(() => attentionDecode(decode({ maxContext: 0 })), 'E_ARG', 'but received 0');
  });
  it('rejects a workspace of the wrong dtype, too small or misaligned', () => {
    expectQ(
      () => attentionDecode(decode({ workspace: t('i32', [100000]) })),
      'E_DTYPE',
      'for workspace but received i32',
    );
    const need = attentionDecodeWorkspaceBytes(3, 32, 128, 1024);
    expectQ(
      () => attentionDecode(decode({ workspace: t('f32', [need / 4 - 1]) })),
      'E_SHAPE',
      `workspace of ≥ ${need} bytes (S=3, numHeads=32, headDim=128, maxContext=1024) but received ${need - 4}`,
    );
    expectQ(
      () => attentionDecode(decode({ workspace: t('f32', [need / 4], { ptr: 0x7000002n }) })),
      'E_ARG',
      '4-byte aligned device pointer for workspace',
    );
  });
});

describe('attention decode split', () => {
  it('splits batch 1 finely and large batches coarsely', () => {
    expect(attentionDecodeChunkSize(1, 2048)).toBe(64);
    expect(attentionDecodeChunkSize(1, 8192)).toBe(64);
    expect(attentionDecodeChunkSize(1, 8193)).toBe(128);
    expect(attentionDecodeChunkSize(8, 2048)).toBe(128);
    expect(attentionDecodeChunkSize(64, 2048)).toBe(512);
    expect(attentionDecodeChunkSize(256, 32768)).toBe(512);
  });
  it('sizes the workspace as S · heads · chunks · (headDim + 2) f32', () => {
    // batch 1, 2048: 32 chunks of 64; batch 64, 2048: 4 chunks of 512.
    expect(attentionDecodeWorkspaceBytes(1, 32, 128, 2048)).toBe(1 * 32 * 32 * 130 * 4);
    expect(attentionDecodeWorkspaceBytes(64, 32, 128, 2048)).toBe(64 * 32 * 4 * 130 * 4);
    expect(attentionDecodeWorkspaceBytes(2, 8, 64, 100)).toBe(2 * 8 * 2 * 66 * 4);
    expectQ(
      () => attentionDecodeWorkspaceBytes(0, 32, 128, 2048),
      'E_ARG',
      'integer ≥ 1 for S but received 0',
    );
    expectQ(() => attentionDecodeWorkspaceBytes(1, 32, 128, 0.5), 'E_ARG', 'for maxContext but received 0.5');
  });
});
