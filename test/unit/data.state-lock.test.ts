// The lock that keeps two `douane serve` off one state directory: who holds it, and when a lock left
// behind (a crash, a container gone) is taken over.

import { existsSync, mkdtempSync, readdirSync, readFileSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { LOCK_FILE, lockStateDir, STALE_MS } from '../../src/data/state-lock.js';

const T0 = Date.parse('2026-11-29T08:00:00Z');

/** A state directory whose lock was written by `holder`, last refreshed `ageMs` before T0. */
function lockedBy(holder: { pid: number; host: string; ns?: string } | string, ageMs: number): string {
  const dir = mkdtempSync(join(tmpdir(), 'douane-lock-'));
  writeFileSync(join(dir, LOCK_FILE), typeof holder === 'string' ? holder : JSON.stringify({ ns: 'pid:[1]', ...holder, since: '2026-11-29T07:00:00.000Z' }));
  const at = new Date(T0 - ageMs);
  utimesSync(join(dir, LOCK_FILE), at, at);
  return dir;
}

const at = (pid: number, host: string, alive: number[] = [], ns = 'pid:[1]') => ({ pid, host, pidNamespace: ns, now: () => T0, pidAlive: (p: number) => alive.includes(p) });

describe('state directory lock', () => {
  it('is taken in an empty directory, names its holder, and is removed on release', () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-lock-'));
    const lock = lockStateDir(dir, at(100, 'gw1'));
    expect(JSON.parse(readFileSync(join(dir, LOCK_FILE), 'utf8'))).toMatchObject({ pid: 100, host: 'gw1' });
    expect(lock.tookOver).toBeUndefined();
    lock.release();
    expect(existsSync(join(dir, LOCK_FILE))).toBe(false);
  });

  it('is refused while a live process on this host holds it, any process on another host refreshes it, or one with the same PID and host name (two containers)', () => {
    expect(() => lockStateDir(lockedBy({ pid: 200, host: 'gw1' }, 1000), at(100, 'gw1', [200]))).toThrow(/is in use by another douane \(PID 200 on gw1, since 2026-11-29T07:00:00\.000Z; .* refreshed 1 s ago\).*start again in 29 s$/);
    expect(() => lockStateDir(lockedBy({ pid: 1, host: 'container-a' }, STALE_MS - 1000), at(1, 'container-b'))).toThrow(/PID 1 on container-a/);
    // Both PID 1 under one host name (host networking): the PID says nothing; a restarted container waits 30 s.
    expect(() => lockStateDir(lockedBy({ pid: 1, host: 'gw1' }, 1000), at(1, 'gw1', [1]))).toThrow(/PID 1 on gw1/);
    // Another PID namespace under the same host name: its PIDs cannot be seen from here, so "gone" proves nothing.
    expect(() => lockStateDir(lockedBy({ pid: 200, host: 'gw1', ns: 'pid:[2]' }, 1000), at(100, 'gw1', []))).toThrow(/PID 200 on gw1/);
    // Empty or half written by a start at the same moment.
    expect(() => lockStateDir(lockedBy('', 1000), at(100, 'gw1'))).toThrow(/its lock is being written, or damaged/);
    expect(() => lockStateDir(lockedBy('{"pid": 2', 1000), at(100, 'gw1'))).toThrow(/its lock is being written, or damaged/);
  });

  it('is taken over from a process gone on this host, and from a lock no one refreshed for 30 s', () => {
    for (const [dir, who] of [
      [lockedBy({ pid: 200, host: 'gw1' }, 1000), at(100, 'gw1', [])],
      [lockedBy({ pid: 200, host: 'gw1' }, STALE_MS + 1000), at(100, 'gw1', [200])],
      [lockedBy({ pid: 1, host: 'container-a' }, STALE_MS + 1000), at(1, 'container-b')],
      [lockedBy({ pid: 1, host: 'gw1' }, STALE_MS + 1000), at(1, 'gw1', [1])],
      [lockedBy('', STALE_MS + 1000), at(1, 'gw1')],
    ] as const) {
      const lock = lockStateDir(dir, who);
      expect(readdirSync(dir)).toEqual([LOCK_FILE]);
      expect(JSON.parse(readFileSync(join(dir, LOCK_FILE), 'utf8'))).toMatchObject({ pid: who.pid, host: who.host });
      lock.release();
    }
  });

  it('leaves on release a lock another instance took over, even one with its own PID and host name', () => {
    for (const other of [{ pid: 300, host: 'gw2' }, { pid: 100, host: 'gw1' }]) {
      const dir = mkdtempSync(join(tmpdir(), 'douane-lock-'));
      const lock = lockStateDir(dir, at(100, 'gw1'));
      writeFileSync(join(dir, LOCK_FILE), JSON.stringify({ id: 'theirs', ...other, since: 'x' }));
      lock.release();
      expect(JSON.parse(readFileSync(join(dir, LOCK_FILE), 'utf8'))).toMatchObject({ id: 'theirs' });
    }
  });
});
