/**
 * The argument block of the kernel launches: one BigUint64Array, reused for every call on this thread, that
 * the glue reads as a C struct (`ArgBlock` in csrc/common/napi_util.h). Writing a dozen numbers into it and
 * passing one typed array costs far less than an object of BigInt properties read one by one in C++, which
 * took longer than a decode-sized kernel runs.
 */

/** Slots of each part; keep in step with kArgPtrs, kArgInts and kArgFloats in napi_util.h. */
export const ARG_PTRS = 16;
export const ARG_INTS = 16;
export const ARG_FLOATS = 8;

const buffer = new ArrayBuffer(ARG_PTRS * 8 + ARG_INTS * 4 + ARG_FLOATS * 4);

/** The whole block, as the native functions take it. */
export const ARGS = new BigUint64Array(buffer);
/** Device pointers and the stream handle. */
export const ARG_P = new BigUint64Array(buffer, 0, ARG_PTRS);
/** Sizes, strides and modes. */
export const ARG_I = new Int32Array(buffer, ARG_PTRS * 8, ARG_INTS);
/** f32 scalars. */
export const ARG_F = new Float32Array(buffer, ARG_PTRS * 8 + ARG_INTS * 4, ARG_FLOATS);
