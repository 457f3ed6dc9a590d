// Worker of quantize-7b.mjs: f16 bytes of one linear layer → f32 (with the LAE column scales folded in, the
// same f32 products as foldLae) → quantizeLinear per the recipe and plan. Buffers move by transfer, not copy.
import { parentPort } from 'node:worker_threads';
import { f16BitsToF32 } from '@q/core';
import { quantizeLinear } from '../dist/index.js';

const F16_TO_F32 = new Float32Array(65536);
for (let i = 0; i < 65536; i++) F16_TO_F32[i] = f16BitsToF32(i);

parentPort.on('message', (task) => {
  try {
    const { id, bytes, n, k, laeScales, recipe, plan } = task;
    const bits = new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2);
    const w = new Float32Array(n * k);
    if (laeScales) {
      for (let r = 0; r < n; r++) {
        const o = r * k;
        for (let j = 0; j < k; j++) w[o + j] = F16_TO_F32[bits[o + j]] * laeScales[j];
      }
    } else {
      for (let i = 0; i < w.length; i++) w[i] = F16_TO_F32[bits[i]];
    }
    const t0 = performance.now();
    const { linear, report } = quantizeLinear(w, n, k, recipe, plan);
    const ms = performance.now() - t0;
    const q = linear.weights;
    const transfer = [q.packed.buffer, q.scales.buffer];
    if (q.intScale)
      transfer.push(q.intScale.q.buffer, q.intScale.channelScale.buffer, q.intScale.unit.buffer);
    parentPort.postMessage({ id, linear, report, ms }, transfer);
  } catch (e) {
    parentPort.postMessage({ id: task.id, error: { message: e.message, code: e.code } });
  }
});
