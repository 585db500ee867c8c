// Holds one message between the client's final dot and the upstream's reply: in memory up to a threshold,
// then in a private temporary file (0600) that dispose() always removes. Memory per message is bounded
// by the threshold whatever the message size.

import { createReadStream, createWriteStream, mkdirSync, readdirSync, rmSync, statSync, type WriteStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { once } from 'node:events';

export class Spool {
  private chunks: Buffer[] = [];
  /** readers of the file handed out and not closed yet: dispose() closes them */
  private readonly readers = new Set<Readable>();
  private inMemory = 0;
  private file: WriteStream | undefined;
  private path: string | undefined;
  private finished = false;
  /** the file's first error (disk full, I/O): kept, and thrown by the next write or finish */
  private failure: Error | undefined;
  private readonly failed = new AbortController();
  size = 0;

  constructor(
    private readonly dir: string,
    private readonly memoryThreshold: number,
  ) {}

  /**
   * Ensures the spool directory exists with private permissions (called once at start), and removes the
   * files a process that ended without cleaning up (a crash, SIGKILL) left there: any file older than
   * `staleAfterMs` (the session deadline) belongs to no transaction that can still be running. Returns
   * how many were removed.
   */
  static prepare(dir: string, staleAfterMs: number): number {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    let removed = 0;
    for (const name of readdirSync(dir)) {
      if (!/^msg-\d+-[0-9a-f]+\.eml$/.test(name)) continue;
      const path = join(dir, name);
      try {
        if (Date.now() - statSync(path).mtimeMs > staleAfterMs) {
          rmSync(path, { force: true });
          removed++;
        }
      } catch {
        // removed meanwhile
      }
    }
    return removed;
  }

  get onDisk(): boolean {
    return this.file !== undefined;
  }

  async write(chunk: Buffer): Promise<void> {
    this.size += chunk.length;
    if (!this.file && this.inMemory + chunk.length <= this.memoryThreshold) {
      this.chunks.push(chunk);
      this.inMemory += chunk.length;
      return;
    }
    if (!this.file) await this.spill();
    await this.toFile(chunk);
  }

  private async spill(): Promise<void> {
    this.path = join(this.dir, `msg-${Date.now()}-${randomBytes(6).toString('hex')}.eml`);
    const file = createWriteStream(this.path, { flags: 'wx', mode: 0o600 });
    this.file = file;
    // Always listened to: an error on a write that did not wait (disk full after write() returned true)
    // would otherwise be an unhandled 'error' event, and take the whole process down.
    file.on('error', (err) => {
      this.failure ??= err;
      this.failed.abort(err);
    });
    await this.fileEvent('open');
    for (const c of this.chunks) await this.toFile(c);
    this.chunks = [];
    this.inMemory = 0;
  }

  private async toFile(chunk: Buffer): Promise<void> {
    if (this.failure) throw this.failure;
    if (!this.file!.write(chunk)) await this.fileEvent('drain');
  }

  /** Waits for the file's event, or fails with its error: a failed stream emits neither 'drain' nor 'open' again. */
  private async fileEvent(event: 'open' | 'drain' | 'close'): Promise<void> {
    try {
      await once(this.file!, event, { signal: this.failed.signal });
    } catch (err) {
      throw this.failure ?? err;
    }
  }

  /** Call once the whole message was written. */
  async finish(): Promise<void> {
    if (this.finished) return;
    this.finished = true;
    if (this.file) {
      if (this.failure) throw this.failure;
      this.file.end();
      await this.fileEvent('close');
    }
  }

  /** A fresh reader over the whole message; may be called several times (relay, quarantine, rescan). */
  reader(): Readable {
    if (!this.finished) throw new Error('spool read before finish()');
    if (!this.path) return Readable.from(this.chunks, { objectMode: false });
    const reader = createReadStream(this.path, { highWaterMark: 64 * 1024 });
    this.readers.add(reader);
    reader.once('close', () => this.readers.delete(reader));
    return reader;
  }

  /** The message as one buffer — only for small messages and tests; refuses spooled-to-disk ones. */
  toBuffer(): Buffer {
    if (this.path) throw new Error('message is on disk; use reader()');
    return Buffer.concat(this.chunks);
  }

  async dispose(): Promise<void> {
    this.chunks = [];
    // A reader its taker never read to the end (an upstream that refused DATA before the body) holds the
    // file open: its descriptor, and the deleted file's blocks, would stay until the process ends. Closed
    // here, and any error it would still report (opening a file removed meanwhile) heard.
    for (const reader of this.readers) {
      reader.on('error', () => undefined);
      reader.destroy();
    }
    this.readers.clear();
    if (this.file && !this.file.closed) this.file.destroy();
    if (this.path) await rm(this.path, { force: true });
  }
}
