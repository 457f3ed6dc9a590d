/**
 * Stop-string matching on streamed text: text is passed on as it arrives, except a tail that could still
 * become a stop string, which is held back until the next piece decides it. On a match the text before it is
 * released and the rest is dropped, as OpenAI's API does (the stop string itself is not returned). The first
 * stop string to complete decides, so the result does not depend on how the text was cut into pieces.
 *
 * @example
 * ```ts
 * const m = new StopMatcher(['\n\n']);
 * m.push('Hello\n'); // { text: 'Hello', stopped: false }: the '\n' may start a stop string
 * m.push('\nWorld'); // { text: '', stopped: true }
 * ```
 */
export class StopMatcher {
  private held = '';
  private readonly stops: readonly string[];
  private stoppedAlready = false;

  constructor(stops: readonly string[]) {
    this.stops = stops.filter((s) => s.length > 0);
  }

  /** True once a stop string has matched. */
  get stopped(): boolean {
    return this.stoppedAlready;
  }

  /** Feeds new text; returns what can be released now, and whether a stop string matched. */
  push(text: string): { text: string; stopped: boolean } {
    if (this.stoppedAlready) return { text: '', stopped: true };
    const buf = this.held + text;
    // The stop string that completes first in the stream wins (the longest one on a tie), whatever the
    // pieces were: a streaming server cannot wait to see whether an earlier-starting one completes later.
    let cut = -1;
    let end = Number.POSITIVE_INFINITY;
    for (const s of this.stops) {
      const i = buf.indexOf(s);
      if (i >= 0 && (i + s.length < end || (i + s.length === end && i < cut))) {
        cut = i;
        end = i + s.length;
      }
    }
    if (cut >= 0) {
      this.held = '';
      this.stoppedAlready = true;
      return { text: buf.slice(0, cut), stopped: true };
    }
    // Hold the longest tail that is a proper prefix of some stop string: a match can only start there.
    let keep = 0;
    for (const s of this.stops)
      for (let k = Math.min(s.length - 1, buf.length); k > keep; k--)
        if (buf.endsWith(s.slice(0, k))) {
          keep = k;
          break;
        }
    this.held = buf.slice(buf.length - keep);
    return { text: buf.slice(0, buf.length - keep), stopped: false };
  }

  /** The held-back tail, at the end of the output (no stop string can complete any more). */
  flush(): string {
    const h = this.held;
    this.held = '';
    return h;
  }
}
