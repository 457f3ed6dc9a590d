/**
 * The CPU backend's worker thread: runs column ranges of float matmuls (`gemmRange`) and of quantized layers
 * (`@q/quant`'s `linearForward` on a column slice of the layer), writing into the caller's shared output.
 */
import { serveJobs } from '@q/core';
import { linearForward, type QuantizedLinear } from '@q/quant';
import { type GemmJob, gemmRange } from './gemm';
import type { QuantDropJob, QuantJob } from './linear';

/**
 * Column slices this worker has run, by id. Keeping the same object per slice lets `linearForward`'s per-weights
 * caches (the unpacked int4 values) be derived once per slice, not per call.
 */
const slices = new Map<number, QuantizedLinear>();

serveJobs((job: GemmJob | QuantJob | QuantDropJob): void => {
  if (job.kind === 'gemm') {
    gemmRange(job.x, job.m, job.k, job.w, job.bias, job.out, job.n, job.n0, job.n1);
    return;
  }
  if (job.kind === 'drop') {
    for (const id of job.ids) slices.delete(id);
    return;
  }
  let slice = slices.get(job.id);
  if (slice === undefined) {
    slice = job.slice;
    slices.set(job.id, slice);
  }
  const width = job.c1 - job.c0;
  const y = linearForward(job.x, job.rows, slice);
  for (let r = 0; r < job.rows; r++) job.out.set(y.subarray(r * width, (r + 1) * width), r * job.n + job.c0);
});
