// The audit trail: an append-only file of JSON lines, one per strike, suspension, approval,
// reinstatement, quarantine and release, each with its evidence. Entries are only ever appended (the
// file is opened O_APPEND and never rewritten), so a disputed suspension can be traced back to the
// messages, counters, signatures and rules behind it. Each instance writes its own file; ship them to
// the SIEM (or use the webhook) to see every instance's together.

import { createReadStream } from 'node:fs';
import { appendFile, open } from 'node:fs/promises';
import { dirname } from 'node:path';
import { PrivateDirectory } from '../data/private-dir.js';

export interface AuditEntry {
  at: string;
  action: string;
  account?: string;
  /** who did it: "douane" (automatic) or "cli:<user>" */
  actor: string;
  reference?: string;
  [detail: string]: unknown;
}

export class AuditLog {
  private readonly directory: PrivateDirectory;
  /** whether the file is known to end with a complete line: unknown at first, and after a failed write */
  private endsWithLine = false;

  constructor(readonly path: string) {
    this.directory = new PrivateDirectory(dirname(path));
  }

  async append(entry: Omit<AuditEntry, 'at'> & { at?: string }): Promise<void> {
    await this.directory.made();
    let line = JSON.stringify({ at: entry.at ?? new Date().toISOString(), ...entry }) + '\n';
    // A line cut short before (a crash mid-write, a full disk) would swallow this entry: it starts afresh.
    if (!this.endsWithLine && !(await this.endsWithNewline())) line = '\n' + line;
    this.endsWithLine = false;
    // One write call per entry with O_APPEND: concurrent writers never interleave within a line.
    await appendFile(this.path, line, { mode: 0o600, flag: 'a' });
    this.endsWithLine = true;
  }

  private async endsWithNewline(): Promise<boolean> {
    let file;
    try {
      file = await open(this.path, 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return true;
      throw err;
    }
    try {
      const { size } = await file.stat();
      if (size === 0) return true;
      const last = Buffer.alloc(1);
      await file.read(last, 0, 1, size - 1);
      return last[0] === 0x0a;
    } finally {
      await file.close();
    }
  }

  /**
   * The entries `filter` keeps, read line by line: the trail only grows, and read whole it would hold
   * the process (the admin endpoint serves this) and its memory for as long as it takes.
   */
  async read(filter: (e: AuditEntry) => boolean = () => true): Promise<AuditEntry[]> {
    const input = createReadStream(this.path, { encoding: 'utf8' });
    const opened = new Promise<boolean>((resolve, reject) => {
      input.once('open', () => resolve(true));
      input.once('error', (err: NodeJS.ErrnoException) => (err.code === 'ENOENT' ? resolve(false) : reject(err)));
    });
    if (!(await opened)) return [];
    const out: AuditEntry[] = [];
    let n = 0;
    // Split on line feeds only, as the lines were written: a damaged line holding a carriage return stays
    // one line, and line numbers stay those of `sed -n Np`.
    for await (const line of linesOf(input)) {
      n++;
      if (!line.trim()) continue;
      let entry: AuditEntry;
      try {
        entry = JSON.parse(line) as AuditEntry;
      } catch {
        // A line cut short (a crash mid-write, a full disk) or altered: the rest of the trail still reads,
        // and the damage is shown to whoever reads it, whatever they asked for, rather than skipped.
        out.push({ at: '', action: 'unreadable_line', actor: 'audit', file: this.path, line: n, text: line.slice(0, 200) });
        continue;
      }
      if (filter(entry)) out.push(entry);
    }
    return out;
  }
}

async function* linesOf(input: AsyncIterable<string>): AsyncGenerator<string> {
  let rest = '';
  for await (const chunk of input) {
    const parts = (rest + chunk).split('\n');
    rest = parts.pop()!;
    yield* parts;
  }
  if (rest) yield rest;
}
