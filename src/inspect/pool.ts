// Where messages are inspected. Taking a message apart costs what its sender chose: a small archive of
// zeros decompresses for a third of a second before the inflate budget stops it. In the thread every SMTP
// session shares, that time would hold every greeting, reply and timer of every other client. So each
// message gets a first look there within a budget of a few milliseconds, which nearly all mail stays
// within; the rare one that does not is inspected again in a thread of its own, where it holds only the
// second looks queued behind it. Handing every message to a thread instead would cost each about 0.2 ms
// of latency and of CPU for the round trip, more than the inspection of a small message itself.

import { Worker } from 'node:worker_threads';
import type { MessageFacts } from '../policy/facts.js';
import { FIRST_LOOK_BUDGET, inflateBudget } from './deflate.js';
import { MessageInspector, type InspectLimits } from './mime.js';
import type { FromWorker, ToWorker } from './protocol.js';

/**
 * One message's inspection: a first look in this thread as the message streams in, within a small
 * inflate budget; and when that ran out, a second look at the whole message, from the spool, in an
 * inspection thread with the full budget. Either way the facts are those of the full budget: the budget
 * only ever stops decoding, so a first look that stayed within it saw all a larger one would.
 */
export class MessageInspection {
  private readonly budget = inflateBudget(FIRST_LOOK_BUDGET);
  private readonly inspector: MessageInspector;
  /** the first look ran out of budget, and the message was inspected again in a thread */
  secondLook = false;

  constructor(
    private readonly limits: InspectLimits,
    private readonly pool: InspectionPool,
  ) {
    this.inspector = new MessageInspector(limits, this.budget);
  }

  /** Feeds the message's bytes in order; a returned promise asks the caller to wait. */
  write(chunk: Buffer): Promise<void> | void {
    return this.inspector.write(chunk);
  }

  /** Call once after the last chunk, with a way to read the whole message again. */
  async end(reread: () => AsyncIterable<Buffer> | Iterable<Buffer>): Promise<MessageFacts> {
    const facts = await this.inspector.end();
    if (!this.budget.exhausted) return facts;
    this.secondLook = true;
    return this.pool.inspect(this.limits, reread);
  }
}

/** Bytes sent to a thread and not yet taken in, past which the sender waits. */
const HIGH_WATER = 1024 * 1024;

/**
 * How long a second look may take once its thread starts on it. The largest costs about half a second of
 * decoding. A thread busy past this on one message has met something no budget bounds (a bug): it is
 * stopped, the message is tempfailed, and the messages queued for the thread go to a new one.
 */
const DEADLINE_MS = 120_000;

export interface PoolOptions {
  /** the worker's script (tests give one of their own); by default this module's worker.js */
  script?: URL;
  /** how long a second look may take (tests shorten it) */
  deadlineMs?: number;
}

/** Told when a thread fails, with the number of messages it had (one at most: it looks at one at a time). */
export type ThreadFailureListener = (err: Error, messages: number) => void;

/**
 * Threads for second looks, started when first needed. A thread looks at one message at a time, so that
 * each is done in its own time, not in the sum of all those under way; a message goes to the thread with
 * the fewest queued. Its chunks are copied there as they are read, and reading waits while more than
 * HIGH_WATER bytes are not yet taken in. A thread that dies (a bug, memory) fails the message it had (its
 * sender tempfails it); the next message starts another.
 */
export class InspectionPool {
  private readonly threads: InspectionThread[];
  private nextId = 1;
  private closed = false;
  private readonly deadlineMs: number;
  private readonly failureListeners: ThreadFailureListener[] = [];

  constructor(size: number, options: PoolOptions = {}) {
    if (!Number.isInteger(size) || size < 1) throw new Error(`an inspection pool needs at least one thread, not ${size}`);
    const script = options.script ?? defaultScript();
    this.deadlineMs = options.deadlineMs ?? DEADLINE_MS;
    this.threads = Array.from({ length: size }, () => new InspectionThread(script, (err, messages) => this.failureListeners.forEach((listen) => listen(err, messages))));
  }

  onThreadFailure(listener: ThreadFailureListener): void {
    this.failureListeners.push(listener);
  }

  /**
   * Inspects a whole message in a thread, with the full budget. The message is read (`source`) once its
   * turn comes: a spool file is not held open while it waits.
   */
  async inspect(limits: InspectLimits, source: () => AsyncIterable<Buffer> | Iterable<Buffer>): Promise<MessageFacts> {
    if (this.closed) throw new Error('the message could not be inspected: the gateway is shutting down');
    let thread = this.threads[0]!;
    for (const t of this.threads) if (t.load < thread.load) thread = t;
    const done = await thread.turn();
    try {
      if (this.closed) throw new Error('the message could not be inspected: the gateway is shutting down');
      const job = new Job(thread, this.nextId++);
      // Heard at once: the source may still be read when the thread fails.
      job.facts.catch(() => undefined);
      const deadline = setTimeout(() => thread.restart(new Error(`a message took longer than ${this.deadlineMs / 1000} s to inspect`)), this.deadlineMs);
      deadline.unref();
      try {
        job.send({ type: 'start', id: job.id, limits });
        for await (const chunk of source()) {
          if (job.failed) break;
          await job.write(chunk);
        }
        job.send({ type: 'end', id: job.id });
        return await job.facts;
      } catch (err) {
        // The spool could not be read to its end: the thread lets the half-read message go.
        job.abandon();
        throw err;
      } finally {
        clearTimeout(deadline);
      }
    } finally {
      done();
    }
  }

  /** Messages under way or waiting for their turn, all threads together. */
  get running(): number {
    return this.threads.reduce((n, t) => n + t.load, 0);
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all(this.threads.map((t) => t.stop(new Error('the message could not be inspected: the gateway is shutting down'))));
  }
}

/**
 * The worker's script. Tests run the TypeScript sources, which a worker thread cannot load: there the
 * build's is used (the test command builds first).
 */
function defaultScript(): URL {
  const here = import.meta.url;
  return here.endsWith('.ts') ? new URL('../../dist/inspect/worker.js', here) : new URL('./worker.js', here);
}

class InspectionThread {
  readonly running = new Map<number, Job>();
  private worker: Worker | undefined;
  /** the end of the last turn given out */
  private queue: Promise<void> = Promise.resolve();
  /** messages given a turn and not done */
  private turns = 0;

  /** Messages under way or waiting for their turn. */
  get load(): number {
    return this.turns;
  }

  /** Waits for this thread's turn; call the function it resolves with when done. */
  async turn(): Promise<() => void> {
    this.turns++;
    const before = this.queue;
    let done!: () => void;
    this.queue = new Promise<void>((resolve) => (done = resolve));
    await before;
    return () => {
      this.turns--;
      done();
    };
  }

  constructor(
    private readonly script: URL,
    private readonly onFailure: ThreadFailureListener,
  ) {}

  post(message: ToWorker, transfer?: ArrayBuffer[]): void {
    this.started().postMessage(message, transfer);
  }

  private started(): Worker {
    if (this.worker) return this.worker;
    const worker = new Worker(this.script);
    // Sessions keep the process alive; an idle thread must not keep it from exiting.
    worker.unref();
    worker.on('message', (message: FromWorker) => this.running.get(message.id)?.receive(message));
    worker.on('error', (err) => this.lost(worker, err));
    worker.on('exit', (code) => this.lost(worker, new Error(`the inspection thread stopped (exit code ${code})`)));
    this.worker = worker;
    return worker;
  }

  /** The thread is stuck: stopped, as if it had died. */
  restart(err: Error): void {
    const worker = this.worker;
    if (!worker) return;
    this.lost(worker, err);
    void worker.terminate();
  }

  /** The thread died: the message it was on cannot be finished; the next message starts another. */
  private lost(worker: Worker, err: Error): void {
    if (this.worker !== worker) return;
    this.worker = undefined;
    const jobs = [...this.running.values()];
    this.running.clear();
    const failure = new Error(`the message could not be inspected: ${err.message}`, { cause: err });
    for (const job of jobs) job.fail(failure);
    this.onFailure(err, jobs.length);
  }

  async stop(err: Error): Promise<void> {
    const worker = this.worker;
    this.worker = undefined;
    const jobs = [...this.running.values()];
    this.running.clear();
    for (const job of jobs) job.fail(err);
    if (worker) await worker.terminate();
  }
}

/** One message in a thread. */
class Job {
  readonly facts: Promise<MessageFacts>;
  failed = false;
  private sent = 0;
  private resume: (() => void) | undefined;
  private resolve!: (facts: MessageFacts) => void;
  private reject!: (err: Error) => void;

  constructor(
    private readonly thread: InspectionThread,
    readonly id: number,
  ) {
    this.facts = new Promise<MessageFacts>((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
    thread.running.set(id, this);
  }

  /** Sends a chunk; resolves once the thread has room for more. */
  write(chunk: Buffer): Promise<void> | undefined {
    if (chunk.length === 0) return;
    // A copy of the chunk's own bytes (a Buffer is often a view into a larger one, which would be copied whole), handed over.
    const data = new Uint8Array(chunk);
    this.send({ type: 'chunk', id: this.id, data }, [data.buffer]);
    this.sent += chunk.length;
    if (this.sent > HIGH_WATER && !this.failed) return new Promise<void>((resolve) => (this.resume = resolve));
  }

  receive(message: FromWorker): void {
    switch (message.type) {
      case 'taken':
        this.sent -= message.bytes;
        if (this.sent <= HIGH_WATER) this.wake();
        return;
      case 'facts':
        this.thread.running.delete(this.id);
        this.resolve(message.facts);
        return;
      case 'failed':
        this.thread.running.delete(this.id);
        this.fail(new Error(message.error));
        return;
    }
  }

  fail(err: Error): void {
    this.failed = true;
    this.wake();
    this.reject(err);
  }

  /** Given up by its sender: the thread forgets it. */
  abandon(): void {
    if (!this.thread.running.has(this.id)) return;
    this.send({ type: 'abort', id: this.id });
    this.thread.running.delete(this.id);
    this.fail(new Error('the inspection was abandoned'));
  }

  send(message: ToWorker, transfer?: ArrayBuffer[]): void {
    if (this.failed) return;
    try {
      this.thread.post(message, transfer);
    } catch (err) {
      // The thread could not be started or reached: this message fails.
      this.thread.running.delete(this.id);
      this.fail(new Error(`the message could not be inspected: ${(err as Error).message}`, { cause: err }));
    }
  }

  private wake(): void {
    const resume = this.resume;
    this.resume = undefined;
    resume?.();
  }
}
