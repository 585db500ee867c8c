// A directory only the service reads (0700), made at its first use. A failure is not kept: the
// directory made (or the disk mended) later is used at the next one.

import { chmodSync, mkdirSync, statSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';

export class PrivateDirectory {
  private ready: Promise<void> | undefined;

  constructor(readonly path: string) {}

  made(): Promise<void> {
    this.ready ??= mkdir(this.path, { recursive: true, mode: 0o700 }).then(
      () => undefined,
      (err: unknown) => {
        this.ready = undefined;
        throw err;
      },
    );
    return this.ready;
  }
}

/**
 * A directory of Douane's own inside the state directory (quarantine, outbox): made 0700 when missing. One
 * left open to others by an earlier install is closed (0700), since a local user who could write in it
 * could swap a quarantined message before its release, or a pending suspension before it runs; the mode
 * it had is returned, for the log. One another user owns is refused. `uid` is the process's own, passed
 * in for the tests.
 */
export function securePrivateDir(path: string, uid = process.getuid?.() ?? 0, groups = processGroups()): { was?: number } {
  mkdirSync(path, { recursive: true, mode: 0o700 });
  const st = statSync(path);
  if (!st.isDirectory()) throw new Error(`${path} is not a directory`);
  const mode = st.mode & 0o7777;
  if (st.uid !== uid && st.uid !== 0) {
    throw new Error(`${path} belongs to uid ${st.uid}, not to the user Douane runs as (uid ${uid}): that user could read or replace what Douane keeps there; remove it`);
  }
  if (!(mode & 0o077)) return {};
  if (st.uid !== uid) {
    // Root's, and Douane may not change it: only others' writing is a danger then.
    const who = writersBesides(st, groups);
    if (who) throw new Error(`${path} can be written by ${who} (mode ${mode.toString(8).padStart(4, '0')}) and only root may change that: make it 0700`);
    return {};
  }
  chmodSync(path, 0o700);
  return { was: mode };
}

/** The groups the process is in: its own and its supplementary ones. */
export function processGroups(): Set<number> {
  return new Set([process.getgid?.() ?? 0, ...(process.getgroups?.() ?? [])]);
}

/**
 * Who, beside the owner, may write in a directory: every user (o+w), or a group Douane is not in. Its own
 * group writing there is how it writes in a volume root owns (root:douane 0770, Kubernetes' fsGroup).
 */
export function writersBesides(st: { mode: number; gid: number }, groups: Set<number>): string | undefined {
  if (st.mode & 0o002) return 'every user';
  if (st.mode & 0o020 && !groups.has(st.gid)) return `group ${st.gid}, which Douane is not in`;
  return undefined;
}
