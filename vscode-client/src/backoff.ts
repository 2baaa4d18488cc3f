/** Restart back-off for a crashing server (no `vscode` import). */

export class Backoff {
  private failures = 0;
  private startedAt = 0;

  /**
   * @param baseMs first delay.
   * @param maxMs longest delay.
   * @param stableMs a server that ran this long before dying starts the sequence over.
   */
  constructor(
    readonly baseMs = 1000,
    readonly maxMs = 60_000,
    readonly stableMs = 120_000,
  ) {}

  /** Record a (re)start at `now` (ms). */
  started(now: number): void {
    this.startedAt = now;
  }

  /** Delay before the next restart after a crash at `now`: base, 2×base, 4×base, … up to max. */
  nextDelay(now: number): number {
    if (this.startedAt && now - this.startedAt >= this.stableMs) this.failures = 0;
    const delay = Math.min(this.maxMs, this.baseMs * 2 ** this.failures);
    this.failures += 1;
    return delay;
  }

  /** Forget past failures (after a restart the user asked for). */
  reset(): void {
    this.failures = 0;
  }

  get failureCount(): number {
    return this.failures;
  }
}
