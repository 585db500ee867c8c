// One `douane serve` per state directory. Two instances sharing one (a volume mounted in two
// containers, a second copy started by hand) would each resume the outbox and send every notice, and
// carry out every lifecycle call, twice; their enforcement files would overwrite each other.
//
// Node has no flock: the lock is a file naming its holder (a random id, its PID, host and PID namespace),
// whose modification time the holder refreshes every REFRESH_MS. A lock is held while it is fresh, unless
// its PID is gone on this same host and PID namespace (a crash under systemd: taken over at once); a
// holder that crashed leaves it stale within STALE_MS. Two containers sharing a host name (host
// networking) see neither each other's PIDs nor a PID of their own that proves anything: a container
// restarted waits out the 30 s. A lock that cannot be read while fresh is one being written. Several
// starts at once get it one at a time (created exclusively; a stale one moved aside first).

import { closeSync, mkdirSync, openSync, readFileSync, readlinkSync, renameSync, rmSync, statSync, unlinkSync, utimesSync, writeSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { processAlive } from './process.js';

export const LOCK_FILE = 'douane.lock';
export const STALE_MS = 30_000;
const REFRESH_MS = 10_000;

interface Holder {
  id: string;
  pid: number;
  host: string;
  /** its PID namespace (Linux: /proc/self/ns/pid) */
  ns?: string;
  since: string;
}

export interface StateLock {
  readonly path: string;
  /** what was there before, when a stale lock was taken over */
  readonly tookOver: Holder | undefined;
  release(): void;
}

export class StateDirInUse extends Error {}

export function lockStateDir(dir: string, opts: { pid?: number; host?: string; pidNamespace?: string; now?: () => number; pidAlive?: (pid: number) => boolean } = {}): StateLock {
  const pid = opts.pid ?? process.pid;
  const host = opts.host ?? hostname();
  const ns = opts.pidNamespace ?? pidNamespace();
  const now = opts.now ?? Date.now;
  const alive = opts.pidAlive ?? processAlive;
  const path = join(dir, LOCK_FILE);
  const mine: Holder = { id: randomUUID(), pid, host, ...(ns ? { ns } : {}), since: new Date(now()).toISOString() };
  const text = `${JSON.stringify(mine)}\n`;
  let tookOver: Holder | undefined;
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const create = () => {
    const fd = openSync(path, 'wx', 0o600);
    try {
      writeSync(fd, text);
    } finally {
      closeSync(fd);
    }
  };
  const inUse = (holder: Holder | undefined, age: number) =>
    new StateDirInUse(
      `state_dir ${dir} is in use by another douane (${holder ? `PID ${holder.pid} on ${holder.host}, since ${holder.since}` : 'its lock is being written, or damaged'}; ${path} refreshed ${Math.max(0, Math.round(age / 1000))} s ago): two instances on one state directory would send every notice and carry out every suspension twice. Give each instance its own state_dir; if that instance is gone, start again in ${Math.max(1, Math.ceil((STALE_MS - age) / 1000))} s`,
    );
  try {
    create();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    const staleText = readText(path);
    const holder = holderOf(staleText);
    const age = now() - statSync(path).mtimeMs;
    // Gone only where its PID means something: this host, this PID namespace (a container with host
    // networking shares the host name, not the PIDs).
    const gone = holder !== undefined && holder.host === host && ns !== undefined && holder.ns === ns && holder.pid !== pid && !alive(holder.pid);
    // A lock that cannot be read while fresh is one being written by another start.
    if (age < STALE_MS && !gone) throw inUse(holder, age);
    // Taken over in steps that two starts at once cannot both get through: the stale lock is moved aside
    // (one of them moves it), checked to be the one judged stale, and the new one is created exclusively.
    const aside = `${path}.${mine.id}`;
    try {
      renameSync(path, aside);
    } catch {
      throw inUse(readHolder(path), 0);
    }
    if (readText(aside) !== staleText) {
      // Another start's fresh lock, created since: put back.
      renameSync(aside, path);
      throw inUse(readHolder(path), 0);
    }
    rmSync(aside, { force: true });
    try {
      create();
    } catch {
      throw inUse(readHolder(path), 0);
    }
    tookOver = holder;
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

function readText(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

function readHolder(path: string): Holder | undefined {
  return holderOf(readText(path));
}

function holderOf(text: string | undefined): Holder | undefined {
  try {
    const parsed = JSON.parse(text ?? '') as Partial<Holder>;
    if (typeof parsed.pid === 'number' && typeof parsed.host === 'string') return { id: String(parsed.id ?? ''), pid: parsed.pid, host: parsed.host, ...(typeof parsed.ns === 'string' ? { ns: parsed.ns } : {}), since: String(parsed.since ?? '') };
  } catch {
    // Unreadable or half written: no holder can be named; it is stale once not refreshed.
  }
  return undefined;
}

/** This process's PID namespace (Linux), which says whether another PID is one this process can see. */
function pidNamespace(): string | undefined {
  try {
    return readlinkSync('/proc/self/ns/pid');
  } catch {
    return undefined;
  }
}
