import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { Generator, StepInfo } from '../engine/generator';

/** Latency buckets from 1 ms to 2 minutes: CPU and GPU, short and long prompts alike. */
const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];

/** Why a request ended, as counted by `q_requests_finished_total`. */
export type RequestOutcome = 'stop' | 'length' | 'abort' | 'error';

/**
 * The server's Prometheus metrics, in a registry of their own (several servers can live in one process), all
 * under the `q_` prefix:
 *
 * | metric | type | what |
 * | --- | --- | --- |
 * | `q_requests_waiting` | gauge | requests queued for a slot |
 * | `q_requests_running` | gauge | sequences in the running batch |
 * | `q_kv_pages_in_use`, `q_kv_pages_reserved`, `q_kv_pages_total` | gauge | KV cache pages held, reserved by admitted sequences, in the pool |
 * | `q_prompt_tokens_total`, `q_generated_tokens_total` | counter | tokens read and written |
 * | `q_requests_total{route, status}` | counter | HTTP requests by route and status |
 * | `q_requests_finished_total{finish_reason}` | counter | generations by how they ended (`stop`, `length`, `abort`, `error`) |
 * | `q_time_to_first_token_seconds` | histogram | request arrival to first token |
 * | `q_inter_token_latency_seconds` | histogram | between consecutive tokens of a request |
 * | `q_request_duration_seconds` | histogram | request arrival to last token |
 * | `q_engine_step_seconds` | histogram | one engine step (one forward pass) |
 * | `q_process_*`, `q_nodejs_*` | | prom-client's process metrics |
 *
 * @example
 * ```ts
 * const metrics = new ServerMetrics(generator);
 * metrics.timeToFirstToken.observe(0.12);
 * await metrics.registry.metrics(); // Prometheus text
 * ```
 */
export class ServerMetrics {
  readonly registry = new Registry();
  readonly promptTokens: Counter;
  readonly generatedTokens: Counter;
  readonly requests: Counter<'route' | 'status'>;
  readonly finished: Counter<'finish_reason'>;
  readonly timeToFirstToken: Histogram;
  readonly interTokenLatency: Histogram;
  readonly requestDuration: Histogram;
  readonly stepDuration: Histogram;

  constructor(generator: Generator) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, prefix: 'q_' });
    const gauge = (name: string, help: string, read: () => number) =>
      new Gauge({
        name,
        help,
        registers,
        collect() {
          this.set(read());
        },
      });
    gauge('q_requests_waiting', 'Requests queued for a slot.', () => generator.stats.waiting);
    gauge('q_requests_running', 'Sequences in the running batch.', () => generator.stats.running);
    gauge('q_kv_pages_in_use', 'KV cache pages held by sequences.', () => generator.stats.pagesInUse);
    gauge(
      'q_kv_pages_reserved',
      'KV cache pages reserved by admitted sequences.',
      () => generator.stats.pagesReserved,
    );
    gauge('q_kv_pages_total', 'KV cache pages in the pool.', () => generator.stats.pagesTotal);
    this.promptTokens = new Counter({
      name: 'q_prompt_tokens_total',
      help: 'Prompt tokens admitted.',
      registers,
    });
    this.generatedTokens = new Counter({
      name: 'q_generated_tokens_total',
      help: 'Tokens generated.',
      registers,
    });
    this.requests = new Counter({
      name: 'q_requests_total',
      help: 'HTTP requests by route and status.',
      labelNames: ['route', 'status'],
      registers,
    });
    this.finished = new Counter({
      name: 'q_requests_finished_total',
      help: 'Generations by how they ended.',
      labelNames: ['finish_reason'],
      registers,
    });
    const histogram = (name: string, help: string) =>
      new Histogram({ name, help, buckets: LATENCY_BUCKETS, registers });
    this.timeToFirstToken = histogram('q_time_to_first_token_seconds', 'Request arrival to its first token.');
    this.interTokenLatency = histogram(
      'q_inter_token_latency_seconds',
      'Time between consecutive tokens of a request.',
    );
    this.requestDuration = histogram('q_request_duration_seconds', 'Request arrival to its last token.');
    this.stepDuration = histogram(
      'q_engine_step_seconds',
      'One engine step (one forward pass over the batch).',
    );
  }

  /** Feeds the engine's per-step report (pass to `GeneratorOptions.onStep`). */
  onStep(info: StepInfo): void {
    this.stepDuration.observe(info.seconds);
  }
}
