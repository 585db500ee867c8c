// One `douane serve` per state directory. Two instances sharing one (a volume mounted in two
// containers, a second copy started by hand) would each resume the outbox and send every notice, and
// carry out every lifecycle call, twice; their enforcement files would overwrite each other.
//
// Node has no flock: the lock is a file naming its holder (a random id, its PID and host), whose
// modification time the holder refreshes every REFRESH_MS. A lock is held while it is fresh, unless its
// PID is gone on this same host (a crash under systemd: taken over at once); a holder that crashed leaves
// it stale within STALE_MS. The same PID on the same host name is no proof it is gone: two containers
// sharing a host name both run as PID 1, and a container restarted waits out the 30 s.

import { closeSync, mkdirSync, openSync, readFileSync, statSync, unlinkSync, utimesSync, writeFileSync, writeSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { join } from 'node:path';

export const LOCK_FILE = 'douane.lock';
export const STALE_MS = 30_000;
const REFRESH_MS = 10_000;

interface Holder {
  id: string;
  pid: number;
  host: string;
  since: string;
}

export interface StateLock {
  readonly path: string;
  /** what was there before, when a stale lock was taken over */
  readonly tookOver: Holder | undefined;
  release(): void;
}

export class StateDirInUse extends Error {}

export function lockStateDir(dir: string, opts: { pid?: number; host?: string; now?: () => number; pidAlive?: (pid: number) => boolean } = {}): StateLock {
  const pid = opts.pid ?? process.pid;
  const host = opts.host ?? hostname();
  const now = opts.now ?? Date.now;
  const alive = opts.pidAlive ?? pidAlive;
  const path = join(dir, LOCK_FILE);
  const mine: Holder = { id: randomUUID(), pid, host, since: new Date(now()).toISOString() };
  const text = `${JSON.stringify(mine)}\n`;
  let tookOver: Holder | undefined;
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  try {
    const fd = openSync(path, 'wx', 0o600);
    try {
      writeSync(fd, text);
    } finally {
      closeSync(fd);
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    const holder = readHolder(path);
    const age = now() - statSync(path).mtimeMs;
    const gone = holder !== undefined && holder.host === host && holder.pid !== pid && !alive(holder.pid);
    const held = holder !== undefined && age < STALE_MS && !gone;
    if (held) {
      throw new StateDirInUse(
        `state_dir ${dir} is in use by another douane (PID ${holder.pid} on ${holder.host}, since ${holder.since}; ${path} refreshed ${Math.max(0, Math.round(age / 1000))} s ago): two instances on one state directory would send every notice and carry out every suspension twice. Give each instance its own state_dir; if that instance is gone, start again in ${Math.ceil((STALE_MS - age) / 1000)} s`,
      );
    }
    tookOver = holder;
    writeFileSync(path, text, { mode: 0o600 });
  }
  const timer = setInterval(() => {
    try {
      const t = new Date(now());
      utimesSync(path, t, t);
    } catch {
      // Removed by hand: the next start finds no lock, as after a clean stop.
    }
  }, REFRESH_MS);
  timer.unref();
  return {
    path,
    tookOver,
    release() {
      clearInterval(timer);
      // Only our own: a lock another instance took over (after ours went stale) is its own.
      const holder = readHolder(path);
      if (holder?.id === mine.id) {
        try {
          unlinkSync(path);
        } catch {
          // Already gone.
        }
      }
    },
  };
}

function readHolder(path: string): Holder | undefined {
  try {
    const parsed = JSON.parse(readFileSync(path, 'utf8')) as Partial<Holder>;
    if (typeof parsed.pid === 'number' && typeof parsed.host === 'string') return { id: String(parsed.id ?? ''), pid: parsed.pid, host: parsed.host, since: String(parsed.since ?? '') };
  } catch {
    // Unreadable or half written: no holder can be named; it is stale once not refreshed.
  }
  return undefined;
}

/** Whether a process with this PID exists (EPERM: it does, under another user). */
function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
