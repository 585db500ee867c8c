// Messages refused for malware or content are kept here, so that a false positive is never lost: the
// original bytes and their metadata (account, envelope, verdict, rule, signature, policy version, time),
// readable only by the service (files 0600 in a 0700 directory), kept for a retention period.
// Storage is an interface: the local directory below serves one instance (or several sharing a network
// file system); another backend (object storage) implements the same five operations.

import { randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { open, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { Readable } from 'node:stream';
import { syncFile } from '../data/durable.js';
import { processAlive } from '../data/process.js';
import { PrivateDirectory } from '../data/private-dir.js';
import type { WrittenParams } from '../upstream/params.js';

export interface QuarantineMeta {
  id: string;
  reference: string;
  at: string;
  account: string;
  listener: string;
  client: string;
  sender: string;
  recipients: string[];
  /** MAIL FROM parameters as the client wrote them, sent again at a release (entries from older versions have none) */
  mailParams?: WrittenParams;
  /** RCPT TO parameters as written, by recipient */
  recipientParams?: Record<string, WrittenParams>;
  action: string;
  reason?: string;
  rule?: string;
  article?: string;
  signature?: string;
  policyVersion: string;
  size: number;
  subject?: string;
  messageId?: string;
  released?: { at: string; by: string; reply: string; /** recipients the upstream refused at the release */ refused?: string[] };
  /** a release sent the message whole and got no answer: the upstream may have it */
  releaseInDoubt?: { at: string; by: string; error: string };
}

export interface QuarantineStore {
  put(meta: Omit<QuarantineMeta, 'id'>, content: Readable): Promise<QuarantineMeta>;
  list(): Promise<QuarantineMeta[]>;
  /** the entries, and those whose metadata cannot be read (kept for a person, purged past retention all the same) */
  scan(): Promise<Scan>;
  get(id: string): Promise<QuarantineMeta | undefined>;
  open(id: string): Readable;
  update(meta: QuarantineMeta): Promise<void>;
  /** an exclusive claim on one entry (release); resolves to the function that gives it back */
  lock(id: string): Promise<() => Promise<void>>;
  /** false when there was no such entry; refuses (throws) while the entry is claimed by a release */
  delete(id: string): Promise<boolean>;
  /**
   * Removes entries older than `olderThan` (ms since epoch), except those being released; damaged entries
   * and leftovers by their files' age. One that cannot be removed is reported, and the others still are.
   */
  purge(olderThan: number): Promise<PurgeResult>;
  count(): Promise<{ entries: number; bytes: number }>;
}

const ID = /^D-[0-9A-Z]{6}(-\d+)?$/;

/** Quarantine IDs are the transaction's reference, with a suffix if one transaction was kept twice. */
export function isQuarantineId(id: string): boolean {
  return ID.test(id);
}

/** The entry is claimed by a release or a deletion in progress. */
export class EntryClaimed extends Error {}

export interface PurgeResult {
  removed: number;
  /**
   * What was removed: each entry's evidence is gone, and the audit trail says so by account. A damaged
   * entry has no account to name: `damaged` says why.
   */
  entries: { id: string; account?: string; reference: string; damaged?: string }[];
  /** entries past retention left in place because a release or deletion holds them, and why */
  claimed: { id: string; why: string }[];
  /** entries past retention that could not be removed, and why */
  failed: { id: string; why: string }[];
}

/** An entry whose metadata cannot be read or is not an entry's, or a message file without metadata. */
export interface DamagedFile {
  id: string;
  why: string;
  /** when its newest file was last written (ms since epoch): its age, for retention */
  modified: number;
  bytes: number;
}

export interface Scan {
  entries: QuarantineMeta[];
  damaged: DamagedFile[];
}

/** The fields everything else reads: a file without them is damaged, not an entry. */
function entryProblem(meta: unknown, id: string): string | undefined {
  if (!meta || typeof meta !== 'object' || Array.isArray(meta)) return 'its metadata is not a JSON object';
  const m = meta as Partial<QuarantineMeta>;
  if (m.id !== id) return `its metadata names another entry (${JSON.stringify(m.id)})`;
  if (typeof m.at !== 'string' || Number.isNaN(Date.parse(m.at))) return 'its metadata has no valid time ("at")';
  if (typeof m.account !== 'string' || typeof m.reference !== 'string' || !Array.isArray(m.recipients) || typeof m.size !== 'number') return 'its metadata lacks the account, reference, recipients or size';
  return undefined;
}

/** Who holds a claim: written into the lock file, so that a claim whose process died can be recognised. */
interface ClaimOwner {
  pid: number;
  host: string;
  at: string;
}

function readOwner(text: string): ClaimOwner | undefined {
  try {
    const o = JSON.parse(text) as Partial<ClaimOwner>;
    return typeof o.pid === 'number' && typeof o.host === 'string' && typeof o.at === 'string' ? (o as ClaimOwner) : undefined;
  } catch {
    return undefined;
  }
}

/** This process's claim, as a claim file holds it. */
function ownClaim(): string {
  return JSON.stringify({ pid: process.pid, host: hostname(), at: new Date().toISOString() } satisfies ClaimOwner);
}


/** An entry whose metadata cannot be read: named, with its message file, for a person to look at. */
export class DamagedEntry extends Error {}

export class LocalQuarantine implements QuarantineStore {
  private readonly directory: PrivateDirectory;

  constructor(readonly dir: string) {
    this.directory = new PrivateDirectory(dir);
  }

  private init(): Promise<void> {
    return this.directory.made();
  }

  private path(id: string, ext: 'eml' | 'json' | 'lock'): string {
    if (!ID.test(id)) throw new Error(`not a quarantine id: ${JSON.stringify(id)}`);
    return join(this.dir, `${id}.${ext}`);
  }

  async put(meta: Omit<QuarantineMeta, 'id'>, content: Readable): Promise<QuarantineMeta> {
    await this.init();
    // On the disk before the client is told "refused" (for good: it will not send it again), and nothing
    // left behind when it cannot be (a full disk): the client is then asked to retry.
    const tmp = join(this.dir, `.${meta.reference}.${randomBytes(4).toString('hex')}.eml.part`);
    const made: string[] = [tmp];
    let full: QuarantineMeta;
    try {
      await pipeline(content, createWriteStream(tmp, { mode: 0o600, flags: 'wx' }));
      await syncFile(tmp);
      // The reference names the entry; a second entry with the same reference (rare) gets a suffix. The
      // name is taken by creating its message file exclusively (O_EXCL, which network file systems
      // keep too), then the message renamed over that file of its own: two entries written at the same
      // moment cannot both take one name (a plain rename would put one message in place of the other).
      let id = meta.reference;
      for (let n = 2; ; n++) {
        const taken = await stat(this.path(id, 'json')).then(() => true, () => false);
        if (!taken) {
          try {
            await (await open(this.path(id, 'eml'), 'wx', 0o600)).close();
            break;
          } catch (err) {
            if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
          }
        }
        id = `${meta.reference}-${n}`;
      }
      made.push(this.path(id, 'eml'));
      await rename(tmp, this.path(id, 'eml'));
      full = { id, ...meta };
      // The metadata is written last: an entry without it is incomplete and is not listed.
      made.push(this.path(id, 'json'));
      await this.writeMeta(full);
    } catch (err) {
      for (const path of made) await rm(path, { force: true }).catch(() => undefined);
      throw err;
    }
    return full;
  }

  /** Written whole or not at all (a temporary file renamed), and flushed to the disk with its directory. */
  private async writeMeta(meta: QuarantineMeta): Promise<void> {
    const tmp = join(this.dir, `.${meta.id}.json.part`);
    try {
      await writeFile(tmp, JSON.stringify(meta, null, 2) + '\n', { mode: 0o600 });
      await syncFile(tmp);
      await rename(tmp, this.path(meta.id, 'json'));
    } catch (err) {
      await rm(tmp, { force: true }).catch(() => undefined);
      throw err;
    }
    await syncFile(this.dir, true);
  }

  async list(): Promise<QuarantineMeta[]> {
    return (await this.scan()).entries;
  }

  async scan(): Promise<Scan> {
    // Reading never creates the directory: `douane quarantine list` run as root before the first
    // entry would leave a root-owned directory the gateway's own user cannot write to.
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { entries: [], damaged: [] };
      throw err;
    }
    const present = new Set(names);
    const entries: QuarantineMeta[] = [];
    const damaged: DamagedFile[] = [];
    for (const n of names.sort()) {
      const [, id, ext] = /^(.+)\.(json|eml)$/.exec(n) ?? [];
      if (!id || !ID.test(id)) continue;
      // A message without metadata: a put still writing it (young), or one a crash or a failed deletion left.
      if (ext === 'eml') {
        if (!present.has(`${id}.json`)) await this.damagedFile(id, 'its message has no metadata', damaged);
        continue;
      }
      let text: string;
      try {
        text = await readFile(join(this.dir, n), 'utf8');
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue; // removed while listing
        await this.damagedFile(id, `its metadata cannot be read (${(err as Error).message})`, damaged);
        continue;
      }
      let meta: unknown;
      try {
        meta = JSON.parse(text);
      } catch (err) {
        await this.damagedFile(id, `its metadata is not JSON (${(err as Error).message})`, damaged);
        continue;
      }
      const problem = entryProblem(meta, id);
      if (problem) await this.damagedFile(id, problem, damaged);
      else entries.push(meta as QuarantineMeta);
    }
    return { entries: entries.sort((a, b) => a.at.localeCompare(b.at)), damaged };
  }

  /** Notes a damaged entry with the age and size of its files (gone meanwhile: not noted). */
  private async damagedFile(id: string, why: string, into: DamagedFile[]): Promise<void> {
    const stats = await Promise.all([this.path(id, 'json'), this.path(id, 'eml')].map((p) => stat(p).catch(() => undefined)));
    const found = stats.filter((x) => x !== undefined);
    if (found.length === 0) return;
    into.push({ id, why, modified: Math.max(...found.map((x) => x.mtimeMs)), bytes: stats[1]?.size ?? 0 });
  }

  async get(id: string): Promise<QuarantineMeta | undefined> {
    let text: string;
    try {
      text = await readFile(this.path(id, 'json'), 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    let meta: unknown;
    try {
      meta = JSON.parse(text);
    } catch (err) {
      throw new DamagedEntry(`quarantine entry ${id}: ${this.path(id, 'json')} cannot be read (${(err as Error).message}); its message is ${this.path(id, 'eml')}`);
    }
    // Metadata naming another entry (restored from a backup into the wrong name, edited by hand) would send
    // this message with that one's envelope, and mark that one released.
    const problem = entryProblem(meta, id);
    if (problem) throw new DamagedEntry(`quarantine entry ${id}: ${this.path(id, 'json')} is damaged: ${problem}; its message is ${this.path(id, 'eml')}`);
    return meta as QuarantineMeta;
  }

  open(id: string): Readable {
    return createReadStream(this.path(id, 'eml'));
  }

  async update(meta: QuarantineMeta): Promise<void> {
    await this.writeMeta(meta);
  }

  async lock(id: string): Promise<() => Promise<void>> {
    const path = this.path(id, 'lock');
    const mine = ownClaim();
    for (let attempt = 0; ; attempt++) {
      try {
        await writeFile(path, mine, { flag: 'wx', mode: 0o600 });
        break;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        const held = await readFile(path, 'utf8').catch(() => '');
        // A release killed mid-way (^C, a crash) leaves its claim behind: on this host its process is
        // known to be gone, and the claim is taken over once. Elsewhere nobody can tell, and a person decides.
        const takeover = attempt === 0 ? await this.takeOverDeadClaim(path, held) : 'held';
        if (takeover === 'taken') continue;
        const owner = readOwner(held);
        const by = owner ? ` by process ${owner.pid} on ${owner.host} since ${owner.at}` : '';
        if (takeover === 'interrupted') {
          throw new EntryClaimed(`${id} was claimed${by}, which is gone, and taking over its claim was interrupted (remove ${path}.takeover and ${path})`);
        }
        throw new EntryClaimed(`${id} is being released or deleted by someone else${by} (remove ${path} if that process died)`);
      }
    }
    // Only our own claim is given back: one taken over meanwhile is its new owner's.
    return async () => {
      if ((await readFile(path, 'utf8').catch(() => undefined)) === mine) await rm(path, { force: true });
    };
  }

  /**
   * Removes a claim held by a process of this host that no longer runs. The claim file itself is never
   * moved: the removal is made under a second exclusive file, and only if the claim is still the dead one,
   * so that two takers cannot remove a live claim. 'taken': try the claim again; 'interrupted': a taker
   * that is itself gone left its file, which only a person can tell from one still at work.
   */
  private async takeOverDeadClaim(path: string, held: string): Promise<'taken' | 'held' | 'interrupted'> {
    const owner = readOwner(held);
    if (!owner || owner.host !== hostname() || owner.pid === process.pid || processAlive(owner.pid)) return 'held';
    const takeover = `${path}.takeover`;
    const mine = ownClaim();
    try {
      await writeFile(takeover, mine, { flag: 'wx', mode: 0o600 });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const taker = readOwner(await readFile(takeover, 'utf8').catch(() => ''));
      const gone = taker !== undefined && taker.host === hostname() && !processAlive(taker.pid);
      return gone ? 'interrupted' : 'held'; // someone else is taking it over: theirs
    }
    try {
      const now = await readFile(path, 'utf8').catch(() => undefined);
      if (now === held) await rm(path, { force: true });
      // Gone meanwhile (its owner was done): free to try; anything else is a live claim.
      return now === held || now === undefined ? 'taken' : 'held';
    } finally {
      await rm(takeover, { force: true });
    }
  }

  async delete(id: string): Promise<boolean> {
    // Under the release's claim: a release in progress would write the entry back once done.
    const unlock = await this.lock(id);
    try {
      // Its files, whether or not its metadata can be read: a damaged entry can be deleted too.
      const existed = (await Promise.all([this.path(id, 'json'), this.path(id, 'eml')].map((p) => stat(p).then(() => true, () => false)))).some(Boolean);
      // The message first: stopped in between, what is left is metadata that lists it, not a message nothing names.
      await rm(this.path(id, 'eml'), { force: true });
      await rm(this.path(id, 'json'), { force: true });
      return existed;
    } finally {
      await unlock();
    }
  }

  async purge(olderThan: number): Promise<PurgeResult> {
    const result: PurgeResult = { removed: 0, entries: [], claimed: [], failed: [] };
    const { entries, damaged } = await this.scan();
    const due = [
      ...entries.filter((m) => Date.parse(m.at) < olderThan).map((m) => ({ id: m.id, account: m.account, reference: m.reference })),
      // No time of its own to go by: the age of its files. Its reference is its name, less any suffix.
      ...damaged.filter((d) => d.modified < olderThan).map((d) => ({ id: d.id, reference: d.id.replace(/^(D-[0-9A-Z]{6})-\d+$/, '$1'), damaged: d.why })),
    ];
    for (const entry of due) {
      // One being released is left for the next purge; one that cannot be removed is reported. Either way
      // the others are purged, and what was removed is returned to be audited.
      try {
        if (!(await this.delete(entry.id))) continue;
        result.removed++;
        result.entries.push(entry);
      } catch (err) {
        if (err instanceof EntryClaimed) result.claimed.push({ id: entry.id, why: err.message });
        else result.failed.push({ id: entry.id, why: (err as Error).message });
      }
    }
    await this.removeLeftovers(olderThan);
    return result;
  }

  /** Temporary files a crash left while writing an entry, once older than the retention. */
  private async removeLeftovers(olderThan: number): Promise<void> {
    const names = await readdir(this.dir).catch(() => [] as string[]);
    for (const n of names) {
      if (!/^\.D-[0-9A-Z]{6}(-\d+)?(\.[0-9a-f]{8})?\.(eml|json)\.part$/.test(n)) continue;
      const at = await stat(join(this.dir, n)).then((x) => x.mtimeMs, () => undefined);
      if (at !== undefined && at < olderThan) await rm(join(this.dir, n), { force: true }).catch(() => undefined);
    }
  }

  async count(): Promise<{ entries: number; bytes: number }> {
    const { entries, damaged } = await this.scan();
    return { entries: entries.length + damaged.length, bytes: entries.reduce((a, m) => a + m.size, 0) + damaged.reduce((a, d) => a + d.bytes, 0) };
  }
}
