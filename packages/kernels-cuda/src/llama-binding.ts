/**
 * The addon's Llama-layer kernels (csrc/llama/glue.cc). Arguments are positional, in this order, because these
 * run hundreds of times per prefill and an options object costs more to read than the launch itself.
 * Pointers and streams are BigInt handles; 0n is a null pointer or the default stream.
 */
export interface NativeLlamaBinding {
  llamaEmbedding(
    ids: bigint,
    table: bigint,
    out: bigint,
    t: number,
    d: number,
    v: number,
    stream: bigint,
  ): void;
  /** mode: 0 bf16 out, 1 int8 static, 2 int8 dynamic. */
  llamaAddRmsNorm(
    x: bigint,
    r: bigint,
    gain: bigint,
    eps: number,
    out: bigint,
    ldo: number,
    mode: number,
    staticScale: number,
    scales: bigint,
    t: number,
    d: number,
    stream: bigint,
  ): void;
  /** mode: 0 bf16 out, 1 int8 static, 2 int8 dynamic. */
  llamaSiluMul(
    gateUp: bigint,
    out: bigint,
    ldo: number,
    mode: number,
    staticScale: number,
    scales: bigint,
    t: number,
    ff: number,
    stream: bigint,
  ): void;
  /** half: 0 interleaved pairs, 1 half pairs. */
  llamaRopeKvWrite(
    qkv: bigint,
    positions: bigint,
    seqOfToken: bigint,
    pageTable: bigint,
    k: bigint,
    v: bigint,
    invFreq: bigint,
    t: number,
    numHeads: number,
    numKvHeads: number,
    headDim: number,
    s: number,
    maxPages: number,
    pages: number,
    pageSize: number,
    half: number,
    stream: bigint,
  ): void;
  llamaSample(
    logits: bigint,
    temperature: bigint,
    topK: bigint,
    topP: bigint,
    seeds: bigint,
    steps: bigint,
    out: bigint,
    b: number,
    v: number,
    stream: bigint,
  ): void;
}
