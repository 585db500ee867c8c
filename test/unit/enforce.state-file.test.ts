// Without Redis, the enforcement state survives a restart: it is kept in a file of the state directory.

import { existsSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { FileEnforcementState } from '../../src/enforce/state.js';

const HOUR = 3_600_000;

describe('enforcement state in a file (one instance, no Redis)', () => {
  it('a change that cannot be written is not kept in memory either: what is in force is what the file says', async () => {
    const { rmSync } = await import('node:fs');
    const dir = mkdtempSync(join(tmpdir(), 'douane-state-'));
    const file = join(dir, 'state', 'enforcement.json');
    const state = new FileEnforcementState(file);
    await state.addStrike('a@x.test', { id: 's1', event: 'malware', weight: 10, at: Date.now(), reference: 'D-AAAAAA' }, HOUR);
    // The directory is gone and a file stands in its place: no write can succeed (as with a full disk).
    rmSync(join(dir, 'state'), { recursive: true });
    writeFileSync(join(dir, 'state'), 'in the way');
    await expect(state.setSuspension('a@x.test', { since: Date.now(), action: 'suspend_account', reason: 'r', reference: 'D-BBBBBB', by: 'douane' })).rejects.toThrow(/EEXIST|ENOTDIR/);
    expect(await state.account('a@x.test')).toEqual({});
    await expect(state.addStrike('a@x.test', { id: 's2', event: 'malware', weight: 10, at: Date.now(), reference: 'D-CCCCCC' }, HOUR)).rejects.toThrow();
    expect((await state.strikes('a@x.test', HOUR)).map((s) => s.id)).toEqual(['s1']);
    // The disk is back: the next change is written, with what was in force before it.
    rmSync(join(dir, 'state'));
    await state.setBreaker({ open: true, since: Date.now(), reason: 'r' });
    const again = new FileEnforcementState(file);
    expect((await again.strikes('a@x.test', HOUR)).map((s) => s.id)).toEqual(['s1']);
    expect(await again.account('a@x.test')).toEqual({});
  });

  it('a suspension, strikes, claims, a pending approval and the breaker outlive the process', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-state-'));
    const file = join(dir, 'state', 'enforcement.json');
    const t = Date.now();
    const first = new FileEnforcementState(file, () => t);
    expect(await first.addStrike('Mallory@x.test', { id: 's1', event: 'malware', weight: 10, at: t, reference: 'D-AAAAAA' }, 24 * HOUR)).toBe(10);
    expect(await first.claim('step:{mallory@x.test}:2', 24 * HOUR)).toBe(true);
    expect(await first.claim('cooldown:{mallory@x.test}:limit_reached', HOUR, 'strike-1')).toBe(true);
    await first.setSuspension('mallory@x.test', { since: t, action: 'suspend_sending', reason: 'strike total 20 reached 20', reference: 'D-AAAAAA', by: 'douane' });
    await first.setPending('eve@x.test', { action: 'suspend_account', at: t, total: 30, reference: 'D-BBBBBB', reason: 'r' });
    await first.setBreaker({ open: true, since: t, reason: 'too many' });
    await first.setOwner('Jo@x.test', 'Joe@x.test');
    // A reinstatement clears the account's state, not the mark of a lock Douane may hold.
    await first.setLockHeld('Trent@x.test', true);
    await first.resetAccount('trent@x.test');
    expect(statSync(file).mode & 0o777).toBe(0o600);

    const again = new FileEnforcementState(file, () => t + 1000);
    expect((await again.account('mallory@x.test')).suspension).toMatchObject({ action: 'suspend_sending', reference: 'D-AAAAAA' });
    expect((await again.strikes('mallory@x.test', 24 * HOUR)).map((s) => s.id)).toEqual(['s1']);
    expect(await again.claim('step:{mallory@x.test}:2', 24 * HOUR)).toBe(false);
    // The strike that took a cooldown, counted again after the restart, still holds it; another does not.
    expect(await again.claim('cooldown:{mallory@x.test}:limit_reached', HOUR, 'strike-1')).toBe(true);
    expect(await again.claim('cooldown:{mallory@x.test}:limit_reached', HOUR, 'strike-2')).toBe(false);
    // When trent was reinstated: a strike from before it, counted late, is known to be from before.
    expect(await again.reinstatedAt('trent@x.test')).toBe(t);
    expect(await again.pendingAccounts()).toEqual(['eve@x.test']);
    expect(await again.lockHeld('trent@x.test')).toBe(true);
    expect(await again.breaker()).toMatchObject({ open: true });
    expect(await again.owner('jo@x.test')).toBe('joe@x.test');
    expect(await new FileEnforcementState(file, () => t + 31 * 24 * HOUR).owner('jo@x.test')).toBeUndefined();
    await again.resetAccount('mallory@x.test');
    expect(await new FileEnforcementState(file).account('mallory@x.test')).toEqual({});
    expect(readdirSync(join(dir, 'state'))).toEqual(['enforcement.json']);
  });

  it('keeps what is in force, not what has expired: a password sprayer\'s made-up logins do not stay for good', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-state-'));
    const file = join(dir, 'enforcement.json');
    let t = Date.parse('2026-01-01T00:00:00Z');
    const state = new FileEnforcementState(file, () => t);
    const week = 7 * 24 * HOUR;
    for (let i = 0; i < 300; i++) {
      const a = `u${i}@spray.test`;
      await state.claim(`cooldown:{${a}}:brute_force`, 15 * 60_000);
      await state.addStrike(a, { id: `r${i}`, event: 'brute_force', weight: 3, at: t, reference: `D-${i}` }, week);
    }
    await state.setSuspension('timed@x.test', { since: t, until: t + HOUR, action: 'suspend_sending', reason: 'r', reference: 'D-T', by: 'douane' });
    await state.setSuspension('locked@x.test', { since: t, action: 'suspend_account', reason: 'r', reference: 'D-L', by: 'douane' });
    const full = statSync(file).size;
    t += 30 * 24 * HOUR;
    await state.addStrike('other@x.test', { id: 'o', event: 'malware', weight: 10, at: t, reference: 'D-O' }, week);
    const snap = JSON.parse(readFileSync(file, 'utf8')) as { strikes: unknown[]; claims: unknown[]; accounts: [string, unknown][] };
    expect(snap.strikes).toHaveLength(1);
    expect(snap.claims).toEqual([]);
    // A lock in force stays; a suspension whose time ran out goes.
    expect(snap.accounts.map(([a]) => a)).toEqual(['locked@x.test']);
    expect(statSync(file).size).toBeLessThan(full / 20);
    expect((await new FileEnforcementState(file, () => t).account('locked@x.test')).suspension).toMatchObject({ action: 'suspend_account' });
  });

  it('a damaged file is kept aside and reported, and the state starts empty and is kept again', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-state-'));
    const file = join(dir, 'enforcement.json');
    writeFileSync(file, '{"strikes": [');
    const reports: string[] = [];
    const state = new FileEnforcementState(file, Date.now, (d) => reports.push(d));
    expect(reports).toHaveLength(1);
    expect(reports[0]).toMatch(/enforcement\.json could not be read .*; kept as .*enforcement\.json\.unreadable-\d+$/);
    expect(existsSync(file)).toBe(false);
    expect(readdirSync(dir).some((f) => f.startsWith('enforcement.json.unreadable-'))).toBe(true);
    expect(await state.suspendedAccounts()).toEqual([]);
    // What is decided next is written to a new file, which the next start reads.
    await state.setSuspension('next@x.test', { since: Date.now(), action: 'suspend_sending', reason: 'r', reference: 'D-CCCCCC', by: 'douane' });
    const restarted = new FileEnforcementState(file, Date.now, (d) => reports.push(d));
    expect((await restarted.account('next@x.test')).suspension).toMatchObject({ reference: 'D-CCCCCC' });
    expect(reports).toHaveLength(1);
  });
});
