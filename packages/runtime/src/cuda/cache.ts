/**
 * The paged key/value cache on the device (the `KVCache` of lm.ts), in the manner of vLLM's PagedAttention:
 * per layer, k and v are bf16 [pages + 1, pageSize, kvHeads, P]; a host allocator hands pages to sequence
 * slots as they grow and takes them back on `reset`. The extra last page is the scratch page that padded
 * (dummy) rows of a decode bucket write to, so they never touch a real sequence.
 */
import { QError } from '@q/core';
import { DeviceTensor, type Graph, memoryInfo } from '@q/kernels-cuda';
import type { KVCache } from '../lm';
import type { DeviceDims } from './layout';

/**
 * A free list of page ids 0..pages-1.
 *
 * @example
 * ```ts
 * const a = new PageAllocator(4);
 * const p = a.alloc(); // 0
 * a.free([p]);
 * ```
 */
export class PageAllocator {
  readonly #free: number[];

  constructor(readonly pages: number) {
    this.#free = [];
    for (let p = pages - 1; p >= 0; p--) this.#free.push(p);
  }

  get available(): number {
    return this.#free.length;
  }

  get inUse(): number {
    return this.pages - this.#free.length;
  }

  /** Takes one page; throws E_ARG naming the pool size when none is left. */
  alloc(): number {
    const p = this.#free.pop();
    if (p === undefined)
      throw new QError(
        'E_ARG',
        `Expected a free page in the KV cache pool of ${this.pages} pages but all are in use (create the cache with more pages or reset finished sequences)`,
      );
    return p;
  }

  free(pages: readonly number[]): void {
    for (const p of pages) this.#free.push(p);
  }
}

/** Options of a device cache. */
export interface CudaCacheOptions {
  readonly batch: number;
  readonly capacity: number;
  readonly pageSize: number;
  readonly pages: number;
  /** Page-table width of the model's step buffers (ceil(maxContext / pageSize)). */
  readonly maxPagesPerSeq: number;
}

/**
 * Bytes of a device cache: two bf16 tensors per layer of [pages + 1, pageSize, kvHeads, P].
 *
 * @example
 * ```ts
 * cacheBytes(dims, 32, 512, 16); // 2 · 32 · 513 · 16 · 8 · 128 · 2 for a 7B shape with 512 pages
 * ```
 */
export function cacheBytes(dims: DeviceDims, layers: number, pages: number, pageSize: number): number {
  return 2 * layers * (pages + 1) * pageSize * dims.nkv * dims.P * 2;
}

/**
 * The GPU model's cache. Create it with `model.createCache`.
 *
 * @example
 * ```ts
 * const cache = model.createCache({ batch: 4, capacity: 2048 });
 * await model.forward([[1, 2, 3]], { cache, slots: [2] });
 * cache.lengths[2]; // 3
 * cache.reset(2); // its pages go back to the pool
 * ```
 */
export class CudaKVCache implements KVCache {
  readonly batch: number;
  readonly capacity: number;
  readonly pageSize: number;
  readonly pagesTotal: number;
  readonly maxPagesPerSeq: number;
  readonly lengths: number[];
  /** Per layer, bf16 [pagesTotal + 1, pageSize, kvHeads, P]. */
  readonly k: DeviceTensor[] = [];
  readonly v: DeviceTensor[] = [];
  /** The scratch page of padded decode rows. */
  readonly dummyPage: number;
  /** Decode graphs captured against this cache's tensors, by batch bucket. */
  readonly graphs = new Map<number, Graph>();
  /** Set by the model that made it: checks the cache belongs to it. */
  readonly owner: object;
  readonly #alloc: PageAllocator;
  readonly #pages: number[][];
  #disposed = false;

  constructor(owner: object, dims: DeviceDims, layers: number, device: number, o: CudaCacheOptions) {
    const pos = (v: number, name: string): void => {
      if (!Number.isInteger(v) || v < 1)
        throw new QError('E_ARG', `Expected a positive integer for ${name} but received ${v}`);
    };
    pos(o.batch, 'batch');
    pos(o.capacity, 'capacity');
    pos(o.pages, 'pages');
    if (Math.ceil(o.capacity / o.pageSize) > o.maxPagesPerSeq)
      throw new QError(
        'E_ARG',
        `Expected a capacity of at most ${o.maxPagesPerSeq * o.pageSize} positions (the model's maxContext) for the cache but received ${o.capacity}`,
      );
    this.owner = owner;
    this.batch = o.batch;
    this.capacity = o.capacity;
    this.pageSize = o.pageSize;
    this.pagesTotal = o.pages;
    this.maxPagesPerSeq = o.maxPagesPerSeq;
    this.dummyPage = o.pages;
    this.lengths = new Array<number>(o.batch).fill(0);
    this.#alloc = new PageAllocator(o.pages);
    this.#pages = Array.from({ length: o.batch }, () => []);
    const need = cacheBytes(dims, layers, o.pages, o.pageSize);
    const { free } = memoryInfo(device);
    if (need > free)
      throw new QError(
        'E_DEVICE_MEMORY',
        `Expected at most ${free} bytes (free on device ${device}) for a KV cache of ${o.pages} pages × ${o.pageSize} positions but it needs ${need} bytes`,
        { details: { needed: need, free } },
      );
    const shape = [o.pages + 1, o.pageSize, dims.nkv, dims.P];
    try {
      for (let l = 0; l < layers; l++) {
        this.k.push(DeviceTensor.alloc('bf16', shape, { device }));
        this.v.push(DeviceTensor.alloc('bf16', shape, { device }));
      }
    } catch (e) {
      this.dispose();
      throw e;
    }
  }

  get pagesInUse(): number {
    return this.#alloc.inUse;
  }

  /** Page ids of slot `slot`, in position order. */
  pagesOf(slot: number): readonly number[] {
    return this.#pages[slot] as number[];
  }

  #check(): void {
    if (this.#disposed)
      throw new QError('E_DISPOSED', 'Expected a live KV cache but it was used after dispose()');
  }

  /** Checks a slot index. */
  checkSlot(slot: number): void {
    this.#check();
    if (!Number.isInteger(slot) || slot < 0 || slot >= this.batch)
      throw new QError('E_ARG', `Expected a slot in [0, ${this.batch}) for the cache but received ${slot}`);
  }

  /**
   * Makes room for slot `slot` to hold `length` positions, taking pages from the pool. Throws E_ARG when
   * `length` exceeds the capacity (nothing is taken then).
   */
  reserve(slot: number, length: number): void {
    this.checkSlot(slot);
    if (length > this.capacity)
      throw new QError(
        'E_ARG',
        `Expected at most ${this.capacity} positions (the cache capacity) for slot ${slot} but received ${length}`,
      );
    const pages = this.#pages[slot] as number[];
    const need = Math.ceil(length / this.pageSize);
    const taken: number[] = [];
    try {
      while (pages.length + taken.length < need) taken.push(this.#alloc.alloc());
    } catch (e) {
      this.#alloc.free(taken);
      throw e;
    }
    pages.push(...taken);
  }

  reset(slot?: number): void {
    this.#check();
    if (slot === undefined) {
      for (let s = 0; s < this.batch; s++) this.reset(s);
      return;
    }
    this.checkSlot(slot);
    const pages = this.#pages[slot] as number[];
    this.#alloc.free(pages);
    pages.length = 0;
    this.lengths[slot] = 0;
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const g of this.graphs.values()) g.dispose();
    this.graphs.clear();
    for (const t of [...this.k, ...this.v]) t.dispose();
    this.k.length = 0;
    this.v.length = 0;
  }

  get disposed(): boolean {
    return this.#disposed;
  }
}
