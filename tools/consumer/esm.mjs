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

// The addon comes from the prebuilt platform package (no toolkit, no build step here), pinned to this version.
const platform = process.env.Q_CONSUMER_PLATFORM_PACKAGE;
const { createRequire } = await import('node:module');
const require = createRequire(import.meta.url);
const { optionalDependencies } = require('@q/kernels-cuda/package.json');
const { version } = require('@q/kernels-cuda/package.json');
assert.equal(optionalDependencies[kernels.platformPackageName()], version);
const status = kernels.gpuStatus();
console.log(`gpuStatus: ${status.available ? 'available' : 'unavailable'}: ${status.reason}`);
if (platform) {
  assert.equal(kernels.platformPackageName(), platform);
  assert.ok(status.addonPath?.includes(platform), `addon loaded from ${status.addonPath}`);
  if (!status.available)
    assert.match(status.reason, /no NVIDIA driver found|no CUDA device|driver is not usable/);
} else {
  console.log('(no platform package was packed: the addon was not built here)');
}
console.log('esm consumer ok');
