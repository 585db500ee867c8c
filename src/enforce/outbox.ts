// A durable outbox for what must happen eventually even if the other side is down: lifecycle API calls
// (suspend, reinstate), notification mails and webhook events. A job is a file written atomically
// before anyone acts on it, so it survives a restart; it is retried with exponential backoff while its
// handler reports a retryable failure, and moved to failed/ (audited, alerted) when the failure is
// permanent. Handlers must be idempotent: a crash between doing a job and deleting its file repeats it.

import { randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileDurably } from '../data/durable.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';

export type JobKind = 'lifecycle' | 'notify' | 'webhook' | 'strike';

export interface Job<P = unknown> {
  id: string;
  kind: JobKind;
  payload: P;
  attempts: number;
  /** jobs with one key (one account's lifecycle) run one at a time, and a new one replaces those waiting */
  key?: string;
  createdAt: number;
  nextAt: number;
  lastError?: string;
}

export class PermanentFailure extends Error {}

export type Handler = (job: Job) => Promise<void>;

export interface OutboxOptions {
  dir: string;
  handlers: Record<JobKind, Handler>;
  minDelayMs: number;
  maxDelayMs: number;
  /**
   * Notices and webhook events older than this fail for good instead of being tried again: a warning a
   * week late helps nobody. Lifecycle calls and strikes are never given up (they are what was decided).
   */
  giveUpAfterMs?: number;
  metrics: Metrics;
  log: Logger;
  /** told when a job fails for good */
  onFailed?: (job: Job, err: Error) => void;
  now?: () => number;
}

export class Outbox {
  private readonly pending = new Map<string, Job>();
  private readonly running = new Set<string>();
  /** written but not to run yet: the change it carries out is still being made (see `enqueue`) */
  private readonly held = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  private started = false;
  private stopped = false;
  private readonly now: () => number;

  constructor(private readonly opts: OutboxOptions) {
    this.now = opts.now ?? Date.now;
  }

  private get pendingDir(): string {
    return join(this.opts.dir, 'pending');
  }

  /** Loads the jobs a previous run left, then works through them. */
  async start(): Promise<void> {
    await mkdir(this.pendingDir, { recursive: true, mode: 0o700 });
    await mkdir(join(this.opts.dir, 'failed'), { recursive: true, mode: 0o700 });
    for (const name of await readdir(this.pendingDir)) {
      // A job whose writing a crash cut short: never renamed, so never acted on.
      if (name.startsWith('.') && name.endsWith('.tmp')) await rm(join(this.pendingDir, name), { force: true });
      if (!name.endsWith('.json')) continue;
      try {
        const job = JSON.parse(await readFile(join(this.pendingDir, name), 'utf8')) as Job;
        if (!isJob(job)) throw new Error('not an outbox job');
        this.pending.set(job.id, job);
      } catch (err) {
        // Set aside in failed/, where a person looks for jobs that did not run, and counted as a failure
        // (its kind unknown): left in pending/, it would be read and left aside at every start, unseen.
        await rename(join(this.pendingDir, name), join(this.opts.dir, 'failed', name)).catch(() => undefined);
        this.opts.metrics.outboxAttempts.labels('unreadable', 'failed').inc();
        this.opts.log.error({ event: 'outbox_unreadable', file: name, moved_to: join(this.opts.dir, 'failed', name), err: (err as Error).message }, 'unreadable outbox job set aside in failed/');
      }
    }
    if (this.pending.size) this.opts.log.info({ event: 'outbox_resumed', jobs: this.pending.size }, `resuming ${this.pending.size} outbox job(s) from before the restart`);
    this.started = true;
    this.updateGauges();
    this.schedule(0);
  }

  /**
   * Stops taking jobs, and waits for those running, up to `waitMs`: one still running then (a stalled
   * relay or API) is left on disk, and runs again at the next start (handlers are idempotent).
   */
  async stop(waitMs = 10_000): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    const until = Date.now() + waitMs;
    while (this.running.size && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
    if (this.running.size) this.opts.log.warn({ event: 'outbox_stopped_running', jobs: this.running.size }, `${this.running.size} outbox job(s) still running at shutdown: they run again at the next start`);
  }

  /**
   * Writes a job to disk and queues it. A `held` job is on disk but does not run until `release`: it is
   * written before the change it carries out (a lock in the local state), so that a crash between the two
   * leaves the job behind rather than a change nobody will carry out; after a restart it runs, and its
   * handler finds out from the state whether the change was made. A held job replaces the older jobs of
   * its key only when released: until the change is made, the older wish still stands.
   */
  async enqueue<P>(kind: JobKind, payload: P, key?: string, opts: { held?: boolean } = {}): Promise<Job<P>> {
    await mkdir(this.pendingDir, { recursive: true, mode: 0o700 });
    const now = this.now();
    const job: Job<P> = { id: `${now.toString(36)}-${randomBytes(4).toString('hex')}`, kind, payload, attempts: 0, ...(key ? { key } : {}), createdAt: now, nextAt: now };
    await this.persist(job);
    if (!opts.held) await this.replaceOlder(job);
    this.pending.set(job.id, job);
    if (opts.held) this.held.add(job.id);
    this.updateGauges();
    if (this.started && !opts.held) this.schedule(0);
    return job;
  }

  /** The newest wish for a key is the one that counts: older ones still waiting (in backoff) go. */
  private async replaceOlder(job: Job): Promise<void> {
    if (!job.key) return;
    for (const old of [...this.pending.values()]) {
      if (old.id === job.id || old.key !== job.key || this.running.has(old.id) || this.held.has(old.id)) continue;
      this.pending.delete(old.id);
      await rm(join(this.pendingDir, `${old.id}.json`), { force: true });
      this.opts.log.info({ event: 'outbox_replaced', job: old.id, by: job.id, key: job.key }, 'outbox job replaced by a newer one for the same key');
    }
  }

  /** Lets a held job run: the change it carries out was made. */
  async release(job: Job): Promise<void> {
    if (!this.held.has(job.id)) return;
    await this.replaceOlder(job);
    this.held.delete(job.id);
    if (this.started && this.pending.has(job.id)) this.schedule(0);
  }

  /** Drops a held job: the change it was to carry out was not made. */
  async discard(job: Job): Promise<void> {
    if (!this.held.delete(job.id)) return;
    this.pending.delete(job.id);
    await rm(join(this.pendingDir, `${job.id}.json`), { force: true });
    this.updateGauges();
  }

  get size(): number {
    return this.pending.size;
  }

  jobs(): Job[] {
    return [...this.pending.values()];
  }

  /** Resolves when no job is due before `withinMs` (tests, shutdown). */
  async idle(timeoutMs = 10_000): Promise<boolean> {
    const deadline = this.now() + timeoutMs;
    while (this.now() < deadline) {
      if (this.pending.size === 0 && this.running.size === 0) return true;
      await new Promise((r) => setTimeout(r, 20));
    }
    return false;
  }

  /** On the disk before it is acted on: a lock queued, then a power cut, is still queued after it. */
  private async persist(job: Job): Promise<void> {
    await writeFileDurably(join(this.pendingDir, `${job.id}.json`), JSON.stringify(job) + '\n');
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.tick(), Math.max(0, delayMs));
    this.timer.unref();
  }

  private async tick(): Promise<void> {
    const now = this.now();
    const busyKeys = new Set([...this.pending.values()].filter((j) => j.key && this.running.has(j.id)).map((j) => j.key));
    const due = [...this.pending.values()]
      .sort((a, b) => a.createdAt - b.createdAt)
      .filter((j) => {
        if (j.nextAt > now || this.running.has(j.id) || this.held.has(j.id)) return false;
        if (!j.key) return true;
        if (busyKeys.has(j.key)) return false;
        busyKeys.add(j.key); // one per key in this round too, oldest first
        return true;
      });
    // Each job schedules what comes next when it ends: a slow one (a stalled relay) holds up no other
    // job's retry, and a job waiting for its key's running one is looked at when that one ends.
    for (const j of due) {
      void this.run(j)
        .catch((err: Error) => this.opts.log.error({ event: 'outbox_error', job: j.id, err: err.message }, 'outbox job could not be settled'))
        .finally(() => this.scheduleNext());
    }
    this.scheduleNext();
  }

  /** The next tick, when the first job that can run is due. */
  private scheduleNext(): void {
    const busyKeys = new Set([...this.pending.values()].filter((j) => j.key && this.running.has(j.id)).map((j) => j.key));
    const waiting = [...this.pending.values()].filter((j) => !this.running.has(j.id) && !this.held.has(j.id) && !(j.key && busyKeys.has(j.key)));
    const next = Math.min(...waiting.map((j) => j.nextAt));
    if (Number.isFinite(next)) this.schedule(next - this.now());
  }

  private async run(job: Job): Promise<void> {
    this.running.add(job.id);
    job.attempts++;
    try {
      await this.opts.handlers[job.kind](job);
      this.pending.delete(job.id);
      await rm(join(this.pendingDir, `${job.id}.json`), { force: true });
      this.opts.metrics.outboxAttempts.labels(job.kind, 'done').inc();
      // The lines written when it was queued ("notified", "suspended") say what was decided; this one
      // says it was carried out.
      this.opts.log.info({ event: 'outbox_done', job: job.id, kind: job.kind, key: job.key, attempts: job.attempts }, `outbox job done (${job.kind})`);
    } catch (err) {
      job.lastError = (err as Error).message;
      const tooOld = this.opts.giveUpAfterMs !== undefined && (job.kind === 'notify' || job.kind === 'webhook') && this.now() - job.createdAt >= this.opts.giveUpAfterMs;
      if (tooOld) job.lastError = `${job.lastError} (given up: tried for ${Math.round((this.now() - job.createdAt) / 3_600_000)} h)`;
      if (tooOld || err instanceof PermanentFailure || (err as { retryable?: boolean }).retryable === false) {
        this.pending.delete(job.id);
        await writeFileDurably(join(this.opts.dir, 'failed', `${job.id}.json`), JSON.stringify(job) + '\n').catch(() => undefined);
        await rm(join(this.pendingDir, `${job.id}.json`), { force: true }).catch(() => undefined);
        this.opts.metrics.outboxAttempts.labels(job.kind, 'failed').inc();
        this.opts.log.error({ event: 'outbox_failed', job: job.id, kind: job.kind, attempts: job.attempts, err: job.lastError }, 'outbox job failed for good');
        this.opts.onFailed?.(job, err as Error);
      } else {
        // Jitter spreads retries out, within retry_max.
        const delay = Math.min(this.opts.maxDelayMs, this.opts.minDelayMs * 2 ** (job.attempts - 1) * (0.8 + Math.random() * 0.4));
        job.nextAt = this.now() + delay;
        await this.persist(job).catch(() => undefined);
        this.opts.metrics.outboxAttempts.labels(job.kind, 'retry').inc();
        this.opts.log.warn({ event: 'outbox_retry', job: job.id, kind: job.kind, attempts: job.attempts, retry_in_ms: Math.round(job.nextAt - this.now()), err: job.lastError }, 'outbox job will be retried');
      }
    } finally {
      this.running.delete(job.id);
      this.updateGauges();
    }
  }

  /** The oldest job's age grows while nothing happens: refreshed from outside too. */
  refreshGauges(): void {
    this.updateGauges();
  }

  /** Jobs of this kind waiting. */
  waiting(kind: JobKind): number {
    let n = 0;
    for (const j of this.pending.values()) if (j.kind === kind) n++;
    return n;
  }

  private updateGauges(): void {
    const counts: Record<JobKind, number> = { lifecycle: 0, notify: 0, webhook: 0, strike: 0 };
    let oldest = this.now();
    for (const j of this.pending.values()) {
      counts[j.kind]++;
      oldest = Math.min(oldest, j.createdAt);
    }
    for (const [k, n] of Object.entries(counts)) this.opts.metrics.outboxDepth.labels(k).set(n);
    this.opts.metrics.outboxOldest.set(this.pending.size ? (this.now() - oldest) / 1000 : 0);
  }
}

/** What a job file must hold to be run: anything else (cut short, edited by hand) is set aside. */
function isJob(j: unknown): j is Job {
  const o = j as Partial<Job> | null;
  return typeof o === 'object' && o !== null && typeof o.id === 'string' && typeof o.kind === 'string' && ['lifecycle', 'notify', 'webhook', 'strike'].includes(o.kind) && typeof o.attempts === 'number' && typeof o.createdAt === 'number' && typeof o.nextAt === 'number';
}
