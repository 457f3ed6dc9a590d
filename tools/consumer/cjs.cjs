// The same as esm.mjs through require(): the CJS builds and their types resolve on their own.
const assert = require('node:assert/strict');
const { Tensor, QError } = require('@q/core');
const quant = require('@q/quant');
const kernels = require('@q/kernels-cuda');
const comm = require('@q/comm');
const runtime = require('@q/runtime');

const t = Tensor.from('i4', [4], [-8, -1, 0, 7]);
assert.deepEqual([...t.toFloat32()], [-8, -1, 0, 7]);
assert.throws(
  () => t.slice(0, 0, 1),
  (e) => e instanceof QError && e.code === 'E_DTYPE',
);
for (const m of [quant, kernels, comm, runtime]) assert.ok(Object.keys(m).length > 0);
const status = kernels.gpuStatus();
if (process.env.Q_CONSUMER_PLATFORM_PACKAGE)
  assert.ok(status.addonPath?.includes(process.env.Q_CONSUMER_PLATFORM_PACKAGE), status.reason);
console.log('cjs consumer ok');
