// A small program against the published API: f16 round trip and int4 packing.
import { f16BitsToF32, f32ToF16Bits, packInt4, Tensor, unpackInt4 } from '@q/core';

export function main(): string[] {
  const lines: string[] = [];
  const t = Tensor.from('f32', [2, 2], [0.1, 1 / 3, 65504, 1e-8]);
  const half = t.to('f16');
  lines.push(`f16 of [0.1, 1/3, 65504, 1e-8]: ${[...half.toFloat32()].join(', ')}`);
  lines.push(`1/3 through f16 bits: ${f16BitsToF32(f32ToF16Bits(1 / 3))}`);
  const packed = packInt4([-8, -1, 0, 7, 3]);
  lines.push(`int4 packed bytes: ${[...packed].map((b) => b.toString(16).padStart(2, '0')).join(' ')}`);
  lines.push(`unpacked: ${[...unpackInt4(packed, 5)].join(', ')}`);
  return lines;
}

if (process.argv[1]?.endsWith('tensor-basics.ts')) for (const l of main()) console.log(l);
