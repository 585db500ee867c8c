// A status cache in front of a lifecycle API. Status is read at every MAIL FROM, so it has to be cheap:
// each account's answer is reused for ttlMs, concurrent lookups of one account share one request, and
// while the API is failing or slow the last answer is served for up to staleMs rather than refusing (or
// holding up) all mail.
// suspend and reinstate go straight through and forget the account, so its next status is read afresh.

import type { AccountInfo, LifecycleApi, SuspendOutcome } from './types.js';

export interface CachedLifecycleOptions {
  /** how long an answer is reused without asking again */
  ttlMs: number;
  /** how old an answer may be and still be served when the API fails (counted from when it was read; ≥ ttlMs to mean anything) */
  staleMs: number;
  /** accounts remembered at most; the least recently read are forgotten first */
  maxEntries?: number;
  /**
   * How long a refresh is waited for when an answer that may still be served (within staleMs) is there:
   * past it, that answer is served and the refresh goes on in the background. A slow or hung API then
   * delays no message beyond this; a failing one, not at all.
   */
  refreshWaitMs?: number;
  now?: () => number;
}

interface Entry {
  info: AccountInfo;
  at: number;
}

interface Lookup {
  promise: Promise<AccountInfo>;
  /** false once the account was suspended or reinstated meanwhile: the answer may predate that */
  current: boolean;
}

const DEFAULT_REFRESH_WAIT_MS = 250;

export class CachedLifecycle implements LifecycleApi {
  readonly kind: string;
  private readonly entries = new Map<string, Entry>();
  private readonly lookups = new Map<string, Lookup>();
  private readonly now: () => number;
  private readonly maxEntries: number;

  constructor(
    private readonly inner: LifecycleApi,
    private readonly opts: CachedLifecycleOptions,
  ) {
    this.kind = inner.kind;
    this.now = opts.now ?? Date.now;
    this.maxEntries = opts.maxEntries ?? 100_000;
  }

  /** The answer is shared between callers: treat it as read-only. */
  async status(account: string): Promise<AccountInfo> {
    const key = cacheKey(account);
    const entry = this.entries.get(key);
    if (entry && this.now() - entry.at < this.opts.ttlMs) {
      // least recently read first in the Map's order
      this.entries.delete(key);
      this.entries.set(key, entry);
      return entry.info;
    }
    let lookup = this.lookups.get(key);
    if (!lookup) {
      const started = this.now();
      const l: Lookup = { promise: this.inner.status(account), current: true };
      lookup = l;
      this.lookups.set(key, l);
      l.promise.then(
        (info) => {
          if (l.current) this.store(key, { info, at: started });
        },
        () => {},
      ).finally(() => {
        if (this.lookups.get(key) === l) this.lookups.delete(key);
      });
    }
    const servable = () => {
      const last = this.entries.get(key);
      return last && this.now() - last.at < this.opts.staleMs ? last : undefined;
    };
    const stale = servable();
    let timer: NodeJS.Timeout | undefined;
    try {
      if (!stale) return await lookup.promise;
      const waited = new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), this.opts.refreshWaitMs ?? DEFAULT_REFRESH_WAIT_MS)));
      const fresh = await Promise.race([lookup.promise, waited]);
      if (fresh && lookup.current) return fresh;
      // Suspended or reinstated while waiting: the answer from before that is not served.
      return servable()?.info ?? (await this.status(account));
    } catch (err) {
      const last = servable();
      if (last) return last.info;
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  async suspend(account: string, reason: { reference: string; rule?: string; article?: string; summary: string }): Promise<SuspendOutcome | void> {
    this.forget(account);
    try {
      return await this.inner.suspend(account, reason);
    } finally {
      // also after a failure: the status may have changed before the failure was noticed
      this.forget(account);
    }
  }

  async reinstate(account: string, reason: { reference: string; by: string }): Promise<void> {
    this.forget(account);
    try {
      await this.inner.reinstate(account, reason);
    } finally {
      this.forget(account);
    }
  }

  /** Drops the account's answer, and makes a lookup already under way not store what it finds. */
  forget(account: string): void {
    const key = cacheKey(account);
    this.entries.delete(key);
    const lookup = this.lookups.get(key);
    if (lookup) {
      lookup.current = false;
      this.lookups.delete(key);
    }
  }

  private store(key: string, entry: Entry): void {
    this.entries.delete(key);
    this.entries.set(key, entry);
    while (this.entries.size > this.maxEntries) {
      const oldest = this.entries.keys().next().value;
      if (oldest === undefined) break;
      this.entries.delete(oldest);
    }
  }
}

/** Mail systems treat addresses case-insensitively: "User@X" must not escape a suspension of "user@x". */
function cacheKey(account: string): string {
  return account.toLowerCase();
}
