import { QError } from '@q/core';
import type { BlockManager } from './block-manager';
import type { Sequence } from './sequence';

/** Options of the scheduler. */
export interface SchedulerOptions {
  /** Sequences allowed to wait for a slot (beyond those the free slots take at the next step). */
  readonly maxWaiting: number;
  /** Prompt tokens computed per step, over all sequences still prefilling. */
  readonly prefillChunk: number;
}

/** One sequence's share of a step: the tokens it feeds, and whether its next token is sampled after. */
export interface StepItem {
  readonly seq: Sequence;
  readonly tokens: readonly number[];
  /** False for a prefill chunk that does not end the prompt: its logits are not needed. */
  readonly sample: boolean;
}

/**
 * Iteration-level scheduling (Orca, vLLM): before each step, waiting sequences are admitted in arrival order
 * while a slot and their page reservation are free (strictly FIFO: the head is never overtaken, so a long
 * request cannot starve); then every running sequence gets its share of the step. Decoding sequences feed
 * their last token; sequences still prefilling share a budget of `prefillChunk` prompt tokens in arrival
 * order, so one long prompt is spread over several steps while the others keep decoding.
 *
 * @example
 * ```ts
 * const scheduler = new Scheduler(blocks, { maxWaiting: 64, prefillChunk: 512 });
 * scheduler.enqueue(seq);
 * const items = scheduler.schedule(); // [{ seq, tokens: seq.prompt.slice(0, 512), sample: ... }]
 * ```
 */
export class Scheduler {
  readonly waiting: Sequence[] = [];
  readonly running: Sequence[] = [];

  constructor(
    private readonly blocks: BlockManager,
    private readonly options: SchedulerOptions,
  ) {}

  /** True when a step would do something. */
  get hasWork(): boolean {
    return this.running.length > 0 || this.waiting.length > 0;
  }

  /**
   * Queues a sequence, or throws `E_BUSY` when the waiting queue is full: when `maxWaiting` sequences would
   * still wait after the next step has filled the free slots.
   */
  enqueue(seq: Sequence): void {
    if (this.waiting.length >= this.options.maxWaiting + this.blocks.freeSlotCount)
      throw new QError(
        'E_BUSY',
        `Expected fewer than ${this.options.maxWaiting} waiting requests for the queue but received one more`,
        { details: { waiting: this.waiting.length, running: this.running.length } },
      );
    this.waiting.push(seq);
  }

  /** Admits what fits and returns the work of the next step (empty when there is none). */
  schedule(): StepItem[] {
    for (;;) {
      const head = this.waiting[0];
      if (head === undefined || !this.blocks.canAllocate(head.positionsNeeded)) break;
      this.waiting.shift();
      const { slot, pages } = this.blocks.allocate(head.positionsNeeded);
      head.slot = slot;
      head.reservedPages = pages;
      head.status = 'running';
      this.running.push(head);
    }
    const items: StepItem[] = [];
    for (const seq of this.running)
      if (!seq.prefilling) items.push({ seq, tokens: seq.pendingTokens(1), sample: true });
    let budget = this.options.prefillChunk;
    for (const seq of this.running) {
      if (budget === 0) break;
      if (!seq.prefilling) continue;
      const tokens = seq.pendingTokens(budget);
      budget -= tokens.length;
      items.push({ seq, tokens, sample: seq.cached + tokens.length === seq.prompt.length });
    }
    return items;
  }

  /** Takes a sequence out of the queue or the running set; frees its slot and pages if it had them. */
  remove(seq: Sequence): void {
    const w = this.waiting.indexOf(seq);
    if (w >= 0) this.waiting.splice(w, 1);
    const r = this.running.indexOf(seq);
    if (r >= 0) {
      this.running.splice(r, 1);
      this.blocks.free(seq.slot, seq.reservedPages);
      seq.slot = -1;
      seq.reservedPages = 0;
    }
  }
}
