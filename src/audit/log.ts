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
    const out: AuditEntry[] = [];
    text.split('\n').forEach((line, i) => {
      if (!line.trim()) return;
      let entry: AuditEntry;
      try {
        entry = JSON.parse(line) as AuditEntry;
      } catch {
        // A line cut short (a crash mid-write, a full disk) or altered: the rest of the trail still reads,
        // and the damage is shown to whoever reads it, whatever they asked for, rather than skipped.
        out.push({ at: '', action: 'unreadable_line', actor: 'audit', file: this.path, line: i + 1, text: line.slice(0, 200) });
        return;
      }
      if (filter(entry)) out.push(entry);
    });
    return out;
  }
}
