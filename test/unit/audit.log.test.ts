import { appendFileSync, mkdtempSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { AuditLog } from '../../src/audit/log.js';

describe('audit log', () => {
  it('appends one JSON line per entry, readable only by the service, and reads them back filtered', async () => {
    const log = new AuditLog(join(mkdtempSync(join(tmpdir(), 'douane-audit-')), 'audit', 'audit.log'));
    await log.append({ action: 'strike', actor: 'douane', account: 'a@x.test' });
    await log.append({ action: 'strike', actor: 'douane', account: 'b@x.test' });
    expect(statSync(log.path).mode & 0o777).toBe(0o600);
    const entries = await log.read((e) => e.account === 'a@x.test');
    expect(entries).toHaveLength(1);
    expect(entries[0]).toMatchObject({ action: 'strike', account: 'a@x.test' });
    expect(entries[0]!.at).toMatch(/^\d{4}-\d\d-\d\dT/);
  });

  it('a damaged line does not hide the rest of the trail, and is shown whatever the filter', async () => {
    const log = new AuditLog(join(mkdtempSync(join(tmpdir(), 'douane-audit-')), 'audit.log'));
    await log.append({ action: 'strike', actor: 'douane', account: 'a@x.test' });
    appendFileSync(log.path, '{"at":"2026-11-27T10:00:00.000Z","action":"suspend_sen\n');
    await log.append({ action: 'reinstate', actor: 'cli:lead', account: 'a@x.test' });
    const entries = await log.read((e) => e.account === 'a@x.test');
    expect(entries.map((e) => e.action)).toEqual(['strike', 'unreadable_line', 'reinstate']);
    expect(entries[1]).toMatchObject({ line: 2, file: log.path, text: '{"at":"2026-11-27T10:00:00.000Z","action":"suspend_sen' });
  });

  it('an entry written after a line cut short (a crash mid-write) starts a line of its own', async () => {
    const path = join(mkdtempSync(join(tmpdir(), 'douane-audit-')), 'audit.log');
    await new AuditLog(path).append({ action: 'strike', actor: 'douane', account: 'a@x.test' });
    appendFileSync(path, '{"at":"2026-11-27T10:00:00.000Z","action":"suspend_sen');
    // The next process to write: its entry must not be glued to the damaged line.
    await new AuditLog(path).append({ action: 'release', actor: 'cli:lead', account: 'a@x.test' });
    expect((await new AuditLog(path).read()).map((e) => e.action)).toEqual(['strike', 'unreadable_line', 'release']);
  });

  it('numbers lines as they were written: a carriage return in a damaged line does not split it', async () => {
    const path = join(mkdtempSync(join(tmpdir(), 'douane-audit-')), 'audit.log');
    const log = new AuditLog(path);
    await log.append({ action: 'strike', actor: 'douane' });
    appendFileSync(path, 'damaged\rline\n');
    await log.append({ action: 'release', actor: 'cli:lead' });
    appendFileSync(path, 'also damaged\n');
    const entries = await log.read();
    expect(entries.map((e) => [e.action, e.line])).toEqual([['strike', undefined], ['unreadable_line', 2], ['release', undefined], ['unreadable_line', 4]]);
  });

  it('a directory that could not be made is tried again at the next entry', async () => {
    const { rmSync, writeFileSync } = await import('node:fs');
    const dir = mkdtempSync(join(tmpdir(), 'douane-audit-'));
    writeFileSync(join(dir, 'audit'), 'in the way');
    const log = new AuditLog(join(dir, 'audit', 'audit.log'));
    await expect(log.append({ action: 'strike', actor: 'douane' })).rejects.toThrow();
    rmSync(join(dir, 'audit'));
    await log.append({ action: 'strike', actor: 'douane' });
    expect(await log.read()).toHaveLength(1);
  });
});
