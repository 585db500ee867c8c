// What Check.prepare starts and run() takes, per transaction. The result is kept settled, so that a
// lookup whose run() never comes (an earlier check refused) cannot become an unhandled rejection.

import type { Transaction } from '../session/state.js';

type Settled<T> = { ok: true; value: T } | { ok: false; error: Error };

export class PreparedLookups<T> {
  private readonly started = new WeakMap<Transaction, Promise<Settled<T>>>();

  /** Starts the lookup once per transaction; later calls do nothing. */
  start(tx: Transaction, work: () => Promise<T>): void {
    if (this.started.has(tx)) return;
    this.started.set(
      tx,
      work().then(
        (value): Settled<T> => ({ ok: true, value }),
        (error: Error): Settled<T> => ({ ok: false, error }),
      ),
    );
  }

  /** The prepared result (its failure thrown here), or `work` run now when nothing was prepared. */
  async take(tx: Transaction, work: () => Promise<T>): Promise<T> {
    const pending = this.started.get(tx);
    if (!pending) return work();
    const settled = await pending;
    if (!settled.ok) throw settled.error;
    return settled.value;
  }
}
