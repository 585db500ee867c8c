// The audit trail: an append-only file of JSON lines, one per strike, suspension, approval,
// reinstatement, quarantine and release, each with its evidence. Entries are only ever appended (the
// file is opened O_APPEND and never rewritten), so a disputed suspension can be traced back to the
// messages, counters, signatures and rules behind it. Each instance writes its own file; ship them to
// the SIEM (or use the webhook) to see every instance's together.

import { appendFile, mkdir, readFile } from 'node:fs/promises';
import { dirname } from 'node:path';

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
  private ready: Promise<void> | undefined;

  constructor(readonly path: string) {}

  async append(entry: Omit<AuditEntry, 'at'> & { at?: string }): Promise<void> {
    this.ready ??= mkdir(dirname(this.path), { recursive: true, mode: 0o700 }).then(() => undefined);
    await this.ready;
    const line = JSON.stringify({ at: entry.at ?? new Date().toISOString(), ...entry }) + '\n';
    // One write call per entry with O_APPEND: concurrent writers never interleave within a line.
    await appendFile(this.path, line, { mode: 0o600, flag: 'a' });
  }

  async read(filter: (e: AuditEntry) => boolean = () => true): Promise<AuditEntry[]> {
    let text: string;
    try {
      text = await readFile(this.path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    return text
      .split('\n')
      .filter((l) => l.trim())
      .map((l) => JSON.parse(l) as AuditEntry)
      .filter(filter);
  }
}
