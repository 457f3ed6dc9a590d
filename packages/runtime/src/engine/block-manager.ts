import { QError } from '@q/core';
import type { KVCache } from '../lm';

/**
 * Slots and KV pages of one cache. A sequence is admitted with a reservation of every page it can ever need
 * (prompt + max tokens), so the cache, which takes pages from its pool as sequences grow, never runs out in
 * the middle of a step: the engine does not over-commit and never preempts. Freeing a sequence returns its
 * slot and its pages (`cache.reset(slot)`) at once.
 *
 * The price of reserving is that pages a sequence would not use (an early stop token) are held until it
 * ends; preemption by recomputation would win them back at the cost of recomputing prompts.
 *
 * @example
 * ```ts
 * const blocks = new BlockManager(cache);
 * if (blocks.canAllocate(600)) {
 *   const { slot, pages } = blocks.allocate(600);
 *   // ... forward on slot ...
 *   blocks.free(slot, pages);
 * }
 * ```
 */
export class BlockManager {
  private readonly freeSlots: number[];
  private reserved = 0;

  constructor(readonly cache: KVCache) {
    // Lowest slot first, so a lone sequence always lands in slot 0.
    this.freeSlots = Array.from({ length: cache.batch }, (_, i) => cache.batch - 1 - i);
  }

  /** Pages that hold `positions` positions. */
  pagesFor(positions: number): number {
    return Math.ceil(positions / this.cache.pageSize);
  }

  /** Pages reserved by running sequences (≥ `cache.pagesInUse` at all times). */
  get pagesReserved(): number {
    return this.reserved;
  }

  get freeSlotCount(): number {
    return this.freeSlots.length;
  }

  /** True when a free slot and enough unreserved pages exist for a sequence of `positions` positions. */
  canAllocate(positions: number): boolean {
    return this.freeSlots.length > 0 && this.reserved + this.pagesFor(positions) <= this.cache.pagesTotal;
  }

  /** True when a sequence of `positions` positions could ever be admitted (on an empty cache). */
  fits(positions: number): boolean {
    return positions <= this.cache.capacity && this.pagesFor(positions) <= this.cache.pagesTotal;
  }

  /** Takes a slot and reserves the pages of `positions` positions. */
  allocate(positions: number): { slot: number; pages: number } {
    if (!this.canAllocate(positions))
      throw new QError(
        'E_INTERNAL',
        `Expected a free slot and ${this.pagesFor(positions)} free pages for allocate but received ${this.freeSlots.length} slots and ${this.cache.pagesTotal - this.reserved} pages`,
      );
    const slot = this.freeSlots.pop() as number;
    const pages = this.pagesFor(positions);
    this.reserved += pages;
    return { slot, pages };
  }

  /** Forgets the slot's sequence (its pages go back to the cache's pool) and releases its reservation. */
  free(slot: number, pages: number): void {
    this.cache.reset(slot);
    this.freeSlots.push(slot);
    this.freeSlots.sort((a, b) => b - a);
    this.reserved -= pages;
  }
}
