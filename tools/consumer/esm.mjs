// Runs against the packed tarballs installed from npm: every package imports, and a little real work happens.
import assert from 'node:assert/strict';
import * as comm from '@q/comm';
import { f16BitsToF32, f32ToF16Bits, Tensor } from '@q/core';
import * as kernels from '@q/kernels-cuda';
import * as quant from '@q/quant';
import * as runtime from '@q/runtime';

const t = Tensor.from('f32', [2, 3], [1, 2, 3, 4, 5, 6]);
assert.deepEqual([...t.transpose(0, 1).contiguous().data], [1, 4, 2, 5, 3, 6]);
assert.equal(f16BitsToF32(f32ToF16Bits(1.5)), 1.5);
for (const m of [quant, kernels, comm, runtime]) assert.ok(Object.keys(m).length > 0);
console.log('esm consumer ok');
