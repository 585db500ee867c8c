// Releasing a quarantined message when the upstream refuses some of its recipients: the others get it,
// and the output, the entry and the audit trail say who did not.

import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { AuditLog } from '../../src/audit/log.js';
import { releaseMessage } from '../../src/quarantine/release.js';
import { LocalQuarantine } from '../../src/quarantine/store.js';
import { FakeUpstream } from '../harness/fake-upstream.js';

let upstream: FakeUpstream | undefined;
afterEach(async () => {
  await upstream?.stop();
  upstream = undefined;
});

const RAW = 'From: user1@example.test\r\nSubject: kept\r\n\r\nhello\r\n';

/** A store with one kept message, its audit log, and an endpoint for the fake upstream. */
async function kept(up: FakeUpstream, reference: string, dataTimeout = 5000) {
  const dir = mkdtempSync(join(tmpdir(), 'douane-release-'));
  const store = new LocalQuarantine(join(dir, 'quarantine'));
  const audit = new AuditLog(join(dir, 'audit.log'));
  const meta = await store.put(
    { reference, at: new Date().toISOString(), account: 'user1@example.test', listener: 'trusted', client: '127.0.0.1', sender: 'user1@example.test', recipients: ['bob@example.net'], action: 'quarantine', reason: 'content.forbidden', rule: 'content.phishing-domains', policyVersion: 'abc', size: RAW.length },
    Readable.from([Buffer.from(RAW)]),
  );
  const endpoint = { host: '127.0.0.1', port: up.port, tls: 'none' as const, verifyCertificate: false, heloName: 'douane.test', timeouts: { connect: 2000, command: 2000, data: dataTimeout, keepalive: 60_000 } };
  const auditLines = () => readFileSync(audit.path, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  return { store, audit, meta, endpoint, auditLines };
}

/** A view of `store` whose second write of an entry fails with `error` (the first, a release's mark, works). */
function secondWriteFails(store: LocalQuarantine, error: string): LocalQuarantine {
  let writes = 0;
  return Object.assign(Object.create(store) as LocalQuarantine, {
    update: async (m: Parameters<LocalQuarantine['update']>[0]) => {
      if (++writes === 2) throw new Error(error);
      return store.update(m);
    },
  });
}

describe('quarantine release', () => {
  it('a release whose message went out but got no answer is marked in doubt, audited, and not sent again without --force', async () => {
    let slow = true;
    upstream = await FakeUpstream.start({ dataEnd: () => (slow ? { delayMs: 1500 } : undefined) });
    const { store, audit, meta, endpoint, auditLines } = await kept(upstream, 'D-REL002', 300);
    await expect(releaseMessage(store, meta.id, { endpoint, by: 'cli:alice', audit })).rejects.toThrow(/went to the upstream whole, but no answer came .*may have been delivered/);
    expect((await store.get(meta.id))!.releaseInDoubt).toMatchObject({ by: 'cli:alice', error: expect.stringMatching(/did not answer/) });
    expect(auditLines()).toEqual([expect.objectContaining({ action: 'release_in_doubt', actor: 'cli:alice', quarantine_id: meta.id })]);
    await expect.poll(() => upstream!.messages.length).toBe(1);
    slow = false;
    await expect(releaseMessage(store, meta.id, { endpoint, by: 'cli:bob', audit })).rejects.toThrow(/may already have been delivered.*--force/);
    expect(upstream.messages).toHaveLength(1);
    const forced = await releaseMessage(store, meta.id, { endpoint, by: 'cli:bob', audit, force: true });
    expect(forced.released).toMatchObject({ by: 'cli:bob' });
    expect(forced.releaseInDoubt).toBeUndefined();
    expect(upstream.messages).toHaveLength(2);
  });

  it('a release whose outcome cannot be recorded, or that is cut short, leaves the entry in doubt: not sent again without --force', async () => {
    upstream = await FakeUpstream.start();
    const { store, audit, meta, endpoint } = await kept(upstream, 'D-REL012');
    // The disk fills once the message is out: the first write (the mark) works, the second (the outcome) fails.
    const full = secondWriteFails(store, 'ENOSPC: no space left on device');
    await expect(releaseMessage(full, meta.id, { endpoint, by: 'cli:alice', audit })).rejects.toThrow(/was delivered \(250 .*\), but that could not be recorded .*do not release it again/);
    expect(upstream.messages).toHaveLength(1);
    // As after a release killed before the upstream's answer was recorded: in doubt.
    expect((await store.get(meta.id))!.releaseInDoubt).toMatchObject({ by: 'cli:alice', error: expect.stringMatching(/interrupted/) });
    await expect(releaseMessage(store, meta.id, { endpoint, by: 'cli:bob', audit })).rejects.toThrow(/may already have been delivered/);
    expect(upstream.messages).toHaveLength(1);
    expect((await audit.read()).map((e) => e.action)).toEqual(['release']);
  });

  it('a release refused by the upstream whose entry cannot be put back says that nothing was delivered', async () => {
    upstream = await FakeUpstream.start({ dataEnd: () => '554 5.7.1 No thanks' });
    const { store, audit, meta, endpoint } = await kept(upstream, 'D-REL014');
    const failing = secondWriteFails(store, 'EIO: i/o error');
    await expect(releaseMessage(failing, meta.id, { endpoint, by: 'cli:alice', audit })).rejects.toThrow(/^upstream refused the message: 554 5\.7\.1 No thanks; nothing was delivered, but D-REL014 could not be put back as it was \(EIO: i\/o error\): it stays marked in doubt, release it with --force$/);
    // A mark that fails half way (written, not flushed) is put back too.
    let marks = 0;
    const halfWritten = Object.assign(Object.create(store) as LocalQuarantine, {
      update: async (m: typeof meta) => {
        await store.update(m);
        if (++marks === 1) throw new Error('EIO: flush failed');
      },
    });
    await store.update(meta);
    await expect(releaseMessage(halfWritten, meta.id, { endpoint, by: 'cli:alice', audit })).rejects.toThrow(/could not mark D-REL014 as being released .*nothing was released/);
    expect((await store.get(meta.id))!.releaseInDoubt).toBeUndefined();
  });

  it('two entries of the same reference written at once are both kept, each under its own id with its own message', async () => {
    const dir = join(mkdtempSync(join(tmpdir(), 'douane-put-')), 'quarantine');
    const store = new LocalQuarantine(dir);
    const meta = (sender: string) => ({ reference: 'D-PUT002', at: new Date().toISOString(), account: sender, listener: 'trusted', client: '127.0.0.1', sender, recipients: [`to-${sender}`], action: 'quarantine', policyVersion: 'v', size: 10 });
    // One still arriving while the other is written whole.
    const slow = new Readable({ read() {} });
    slow.push('Subject: first\r\n\r\n');
    const first = store.put(meta('a@example.test'), slow);
    await expect.poll(() => readdirSync(dir).some((n) => n.endsWith('.eml.part'))).toBe(true);
    const second = await store.put(meta('b@example.test'), Readable.from([Buffer.from('Subject: second\r\n\r\n')]));
    slow.push('x\r\n');
    slow.push(null);
    const firstKept = await first;
    // One whose message is in place but not yet its metadata, and another started right then.
    const third = store.put(meta('c@example.test'), Readable.from([Buffer.from('Subject: third\r\n\r\n')]));
    await expect.poll(() => readdirSync(dir).includes('D-PUT002-3.eml'), { interval: 1 }).toBe(true);
    const fourth = store.put(meta('d@example.test'), Readable.from([Buffer.from('Subject: fourth\r\n\r\n')]));
    const kept = [firstKept, second, await third, await fourth];
    expect(new Set(kept.map((k) => k.id)).size).toBe(4);
    for (const [k, subject] of kept.map((k, i) => [k, ['first', 'second', 'third', 'fourth'][i]] as const)) {
      expect(readFileSync(join(dir, `${k.id}.eml`), 'utf8')).toMatch(new RegExp(`^Subject: ${subject}\r\n`));
      expect(JSON.parse(readFileSync(join(dir, `${k.id}.json`), 'utf8'))).toMatchObject({ id: k.id, sender: k.sender, recipients: [`to-${k.sender}`] });
    }
    expect(readdirSync(dir).filter((n) => n.startsWith('.'))).toEqual([]);
  });

  it('a recipient the upstream defers stops the release: nothing is sent, and a later release delivers to everyone', async () => {
    let greylisting = true;
    upstream = await FakeUpstream.start({ rcpt: (to) => (greylisting && to === 'carol@example.net' ? '451 4.7.1 Greylisted, try again later' : undefined) });
    const { store, audit, meta, endpoint } = await kept(upstream, 'D-REL013');
    const entry = { ...meta, recipients: ['bob@example.net', 'carol@example.net'] };
    await store.update(entry);
    await expect(releaseMessage(store, meta.id, { endpoint, by: 'cli:alice', audit })).rejects.toThrow(/upstream deferred carol@example\.net: 451 4\.7\.1 Greylisted.*nothing was released, try again later/);
    expect(upstream.messages).toHaveLength(0);
    expect(await store.get(meta.id)).toEqual(entry);
    greylisting = false;
    await releaseMessage(store, meta.id, { endpoint, by: 'cli:alice', audit });
    expect(upstream.messages.map((m) => m.to)).toEqual([['bob@example.net', 'carol@example.net']]);
  });

  it('two releases at once deliver once: the second reads the entry again under its claim', async () => {
    upstream = await FakeUpstream.start();
    const { store, audit, meta, endpoint, auditLines } = await kept(upstream, 'D-REL003');
    // The second release takes its claim only once the first one is over (as a slow disk or a network file
    // system may have it): it must still see the message released.
    // Bob works through his own view of the same directory, as a second CLI process would.
    let first: Promise<unknown> | undefined;
    const bobs = new LocalQuarantine(store.dir);
    const lock = bobs.lock.bind(bobs);
    bobs.lock = async (id) => {
      await first!.catch(() => undefined);
      return lock(id);
    };
    first = releaseMessage(store, meta.id, { endpoint, by: 'cli:alice', audit });
    const second = releaseMessage(bobs, meta.id, { endpoint, by: 'cli:bob', audit });
    const [a, b] = await Promise.allSettled([first, second]);
    expect(a.status).toBe('fulfilled');
    expect(b).toMatchObject({ status: 'rejected', reason: expect.objectContaining({ message: expect.stringMatching(/already released .* by cli:alice/) }) });
    expect(upstream.messages).toHaveLength(1);
    expect(auditLines().filter((l) => l.action === 'release')).toHaveLength(1);
  });

  it('an audit trail that cannot be written after the upstream accepted does not make the release look in doubt', async () => {
    upstream = await FakeUpstream.start();
    const { store, audit, meta, endpoint } = await kept(upstream, 'D-REL005');
    audit.append = () => Promise.reject(new Error('disk full'));
    // The person is told the message went out, not only that a file could not be written.
    await expect(releaseMessage(store, meta.id, { endpoint, by: 'cli:alice', audit })).rejects.toThrow(/^D-[0-9A-Z]{6}(-\d+)? was delivered \(250 .*\) and marked released, but the audit trail could not be written \(disk full\): record the release by hand$/);
    const after = (await store.get(meta.id))!;
    expect(after.released).toMatchObject({ by: 'cli:alice' });
    expect(after.releaseInDoubt).toBeUndefined();
  });

  it('a message being released cannot be deleted meanwhile, and is not brought back half by the release', async () => {
    upstream = await FakeUpstream.start({ dataEnd: () => ({ delayMs: 300 }) });
    const { store, audit, meta, endpoint } = await kept(upstream, 'D-REL004');
    const release = releaseMessage(store, meta.id, { endpoint, by: 'cli:alice', audit });
    await expect.poll(() => upstream!.commands.includes('DATA')).toBe(true);
    await expect(store.delete(meta.id)).rejects.toThrow(/being released or deleted by someone else/);
    await release;
    expect((await store.get(meta.id))!.released).toMatchObject({ by: 'cli:alice' });
    expect(await store.delete(meta.id)).toBe(true);
    expect(await store.list()).toEqual([]);
  });


  it('counts a recipient the upstream cannot verify but will try (252) as accepted', async () => {
    upstream = await FakeUpstream.start({ rcpt: () => '252 2.1.5 Cannot VRFY user, but will accept message' });
    const { store, audit, meta, endpoint } = await kept(upstream, 'D-REL006');
    const released = await releaseMessage(store, meta.id, { endpoint, by: 'cli:alice', audit });
    expect(upstream.messages).toHaveLength(1);
    expect(released.released).toMatchObject({ by: 'cli:alice' });
    expect(released.released!.refused).toBeUndefined();
  });

  it('a claim left by a release whose process died on this host is taken over; a live one is not', async () => {
    upstream = await FakeUpstream.start();
    const { store, audit, meta, endpoint } = await kept(upstream, 'D-REL007');
    const lockPath = join(store.dir, `${meta.id}.lock`);
    // A process that has exited: its PID is free (until reused, which would only keep the claim).
    const dead = spawnSync(process.execPath, ['-e', '']).pid!;
    writeFileSync(lockPath, JSON.stringify({ pid: dead, host: hostname(), at: '2026-01-01T00:00:00.000Z' }));
    await releaseMessage(store, meta.id, { endpoint, by: 'cli:alice', audit });
    expect(upstream.messages).toHaveLength(1);
    expect(existsSync(lockPath)).toBe(false);

    // The same dead process on another host, or a live process here: nobody can tell, a person decides.
    writeFileSync(lockPath, JSON.stringify({ pid: dead, host: `${hostname()}-other`, at: '2026-01-01T00:00:00.000Z' }));
    await expect(store.delete(meta.id)).rejects.toThrow(new RegExp(`being released or deleted by someone else by process ${dead} on ${hostname()}-other .*remove ${lockPath}`));
    writeFileSync(lockPath, JSON.stringify({ pid: process.ppid, host: hostname(), at: '2026-01-01T00:00:00.000Z' }));
    await expect(store.delete(meta.id)).rejects.toThrow(/being released or deleted by someone else/);
    expect(readFileSync(lockPath, 'utf8')).toContain(`"pid":${process.ppid}`);
  });

  it('a takeover interrupted by its own death is named, with both files to remove', async () => {
    upstream = await FakeUpstream.start();
    const { store, meta } = await kept(upstream, 'D-REL012');
    const lockPath = join(store.dir, `${meta.id}.lock`);
    const dead = spawnSync(process.execPath, ['-e', '']).pid!;
    writeFileSync(lockPath, JSON.stringify({ pid: dead, host: hostname(), at: '2026-01-01T00:00:00.000Z' }));
    writeFileSync(`${lockPath}.takeover`, JSON.stringify({ pid: dead, host: hostname(), at: '2026-01-01T00:00:01.000Z' }));
    await expect(store.delete(meta.id)).rejects.toThrow(`taking over its claim was interrupted (remove ${lockPath}.takeover and ${lockPath})`);
    // A taker still at work: its claim is left alone, as any live claim.
    writeFileSync(`${lockPath}.takeover`, JSON.stringify({ pid: process.ppid, host: hostname(), at: '2026-01-01T00:00:01.000Z' }));
    await expect(store.delete(meta.id)).rejects.toThrow(`being released or deleted by someone else by process ${dead} on ${hostname()}`);
    expect(existsSync(`${lockPath}.takeover`)).toBe(true);
  });

  it('a purge removes what is past retention, keeps the rest, and reports what a release holds', async () => {
    upstream = await FakeUpstream.start();
    const { store } = await kept(upstream, 'D-REL008');
    const old = async (reference: string) =>
      store.put({ reference, at: '2026-01-01T00:00:00.000Z', account: 'user1@example.test', listener: 'trusted', client: '127.0.0.1', sender: 'user1@example.test', recipients: ['bob@example.net'], action: 'quarantine', policyVersion: 'abc', size: RAW.length }, Readable.from([Buffer.from(RAW)]));
    const [gone, held] = [await old('D-REL009'), await old('D-REL010')];
    const unlock = await store.lock(held.id);
    const result = await store.purge(Date.parse('2026-06-01T00:00:00.000Z'));
    expect(result.removed).toBe(1);
    expect(result.claimed).toEqual([{ id: held.id, why: expect.stringMatching(new RegExp(`by process ${process.pid} on `)) }]);
    expect(await store.get(gone.id)).toBeUndefined();
    expect((await store.list()).map((m) => m.id).sort()).toEqual(['D-REL008', held.id]);
    await unlock();
    expect(await store.purge(Date.parse('2026-06-01T00:00:00.000Z'))).toEqual({ removed: 1, entries: [{ id: held.id, account: 'user1@example.test', reference: 'D-REL010' }], claimed: [], failed: [] });
  });

  it('an entry that cannot be written whole leaves nothing behind; one whose metadata is damaged is named, with its message', async () => {
    const dir = join(mkdtempSync(join(tmpdir(), 'douane-put-')), 'quarantine');
    const store = new LocalQuarantine(dir);
    const meta = { reference: 'D-PUT001', at: new Date().toISOString(), account: 'a@example.test', listener: 'trusted', client: '127.0.0.1', sender: 'a@example.test', recipients: ['b@example.net'], action: 'quarantine', policyVersion: 'v', size: 10 };
    // The disk fills half way through the message.
    const failing = new Readable({
      read() {
        this.push(Buffer.alloc(64 * 1024, 'x'));
        this.destroy(new Error('ENOSPC: no space left on device, write'));
      },
    });
    await expect(store.put(meta, failing)).rejects.toThrow(/ENOSPC/);
    expect(readdirSync(dir)).toEqual([]);
    const kept = await store.put(meta, Readable.from([Buffer.from('Subject: x\r\n\r\nx\r\n')]));
    writeFileSync(join(dir, `${kept.id}.json`), '{"id": "D-PUT0');
    await expect(store.get(kept.id)).rejects.toThrow(`quarantine entry D-PUT001: ${join(dir, 'D-PUT001.json')} cannot be read (`);
  });

  it('damaged entries are named and purged past retention by their files\' age; one that cannot be removed stops no other', async () => {
    const dir = join(mkdtempSync(join(tmpdir(), 'douane-damaged-')), 'quarantine');
    const store = new LocalQuarantine(dir);
    const put = (reference: string, at: string) =>
      store.put({ reference, at, account: 'a@example.test', listener: 'trusted', client: '127.0.0.1', sender: 'a@example.test', recipients: ['b@example.net'], action: 'quarantine', policyVersion: 'v', size: 10 }, Readable.from([Buffer.from('Subject: x\r\n\r\nx\r\n')]));
    const old = '2020-01-01T00:00:00.000Z';
    for (const ref of ['D-DMG001', 'D-DMG002', 'D-DMG003', 'D-DMG004', 'D-DMG005', 'D-DMG006']) await put(ref, old);
    await put('D-DMG007', new Date().toISOString());
    const aged = (id: string) => {
      for (const ext of ['json', 'eml']) if (existsSync(join(dir, `${id}.${ext}`))) utimesSync(join(dir, `${id}.${ext}`), new Date(old), new Date(old));
    };
    writeFileSync(join(dir, 'D-DMG001.json'), '{"id": "D-DM'); // cut short
    writeFileSync(join(dir, 'D-DMG002.json'), 'null\n'); // JSON, but no entry
    writeFileSync(join(dir, 'D-DMG003.json'), JSON.stringify({ id: 'D-DMG004', at: old, account: 'a@example.test', reference: 'D-DMG004', recipients: [], size: 1 })); // another entry's
    rmSync(join(dir, 'D-DMG004.json')); // a message without metadata
    for (const id of ['D-DMG001', 'D-DMG002', 'D-DMG003', 'D-DMG004']) aged(id);
    // A damaged entry written just now is kept: it is within retention (or a message still being written).
    writeFileSync(join(dir, 'D-DMG007.json'), '{');
    // One whose message cannot be removed (a directory stands for EACCES, EIO).
    rmSync(join(dir, 'D-DMG005.eml'));
    mkdirSync(join(dir, 'D-DMG005.eml', 'sub'), { recursive: true });
    const scanned = await store.scan();
    expect(scanned.entries.map((m) => m.id)).toEqual(['D-DMG005', 'D-DMG006']);
    expect(scanned.damaged.map((d) => `${d.id}: ${d.why}`)).toEqual([
      expect.stringMatching(/^D-DMG001: its metadata is not JSON \(/),
      'D-DMG002: its metadata is not a JSON object',
      'D-DMG003: its metadata names another entry ("D-DMG004")',
      'D-DMG004: its message has no metadata',
      expect.stringMatching(/^D-DMG007: its metadata is not JSON/),
    ]);
    expect(await store.count()).toMatchObject({ entries: 7 });
    const result = await store.purge(Date.parse('2026-01-01T00:00:00.000Z'));
    expect(result.entries.map((e) => e.id).sort()).toEqual(['D-DMG001', 'D-DMG002', 'D-DMG003', 'D-DMG004', 'D-DMG006']);
    expect(result.entries.find((e) => e.id === 'D-DMG002')).toEqual({ id: 'D-DMG002', reference: 'D-DMG002', damaged: 'its metadata is not a JSON object' });
    expect(result.failed).toEqual([{ id: 'D-DMG005', why: expect.stringMatching(/EISDIR|ERR_FS_EISDIR|directory/) }]);
    expect(readdirSync(dir).sort()).toEqual(['D-DMG005.eml', 'D-DMG005.json', 'D-DMG007.eml', 'D-DMG007.json']);
    // A reference of digits only, and one kept twice: the audit names each by its reference.
    for (const id of ['D-482913', 'D-482913-2']) {
      writeFileSync(join(dir, `${id}.json`), '{"id": "D-4');
      aged(id);
    }
    expect((await store.purge(Date.parse('2026-01-01T00:00:00.000Z'))).entries.map((e) => `${e.id} ${e.reference}`).sort()).toEqual(['D-482913 D-482913', 'D-482913-2 D-482913']);
  });

  it('reading a quarantine that does not exist yet lists nothing and creates no directory', async () => {
    const dir = join(mkdtempSync(join(tmpdir(), 'douane-unmade-')), 'quarantine');
    const store = new LocalQuarantine(dir);
    expect(await store.list()).toEqual([]);
    expect(await store.count()).toEqual({ entries: 0, bytes: 0 });
    expect(await store.purge(Date.now())).toEqual({ removed: 0, entries: [], claimed: [], failed: [] });
    // Left to the gateway's own user, who writes the first entry.
    expect(existsSync(dir)).toBe(false);
  });

  it('several taking over one dead claim at once: one of them holds it, never two', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-claims-'));
    await new LocalQuarantine(dir).list();
    const dead = spawnSync(process.execPath, ['-e', '']).pid!;
    let doubles = 0;
    let nobody = 0;
    for (let i = 0; i < 300; i++) {
      const id = `D-${String(100000 + i)}`;
      writeFileSync(join(dir, `${id}.lock`), JSON.stringify({ pid: dead, host: hostname(), at: new Date().toISOString() }));
      // Three processes' worth of stores, each arriving a few turns of the event loop after the other.
      const got = await Promise.allSettled(
        [0, 1, 2].map(async (k) => {
          for (let n = 0; n < k * (i % 7); n++) await new Promise((r) => setImmediate(r));
          return new LocalQuarantine(dir).lock(id);
        }),
      );
      const holders = got.filter((g) => g.status === 'fulfilled');
      if (holders.length > 1) doubles++;
      if (holders.length === 0) nobody++;
      for (const g of holders) await (g as PromiseFulfilledResult<() => Promise<void>>).value();
    }
    expect(doubles).toBe(0);
    expect(nobody).toBe(0);
  });

  it('gives back only its own claim: one taken over meanwhile stays with its new owner', async () => {
    upstream = await FakeUpstream.start();
    const { store, meta } = await kept(upstream, 'D-REL011');
    const lockPath = join(store.dir, `${meta.id}.lock`);
    const unlock = await store.lock(meta.id);
    const theirs = JSON.stringify({ pid: process.ppid, host: hostname(), at: '2026-01-01T00:00:00.000Z' });
    writeFileSync(lockPath, theirs);
    await unlock();
    expect(readFileSync(lockPath, 'utf8')).toBe(theirs);
  });

  it('a message the scanner found infected is not released without --allow-malware (--force is not enough)', async () => {
    upstream = await FakeUpstream.start();
    const dir = mkdtempSync(join(tmpdir(), 'douane-release-'));
    const store = new LocalQuarantine(join(dir, 'quarantine'));
    const audit = new AuditLog(join(dir, 'audit.log'));
    const meta = await store.put(
      { reference: 'D-MAL001', at: new Date().toISOString(), account: 'user1@example.test', listener: 'trusted', client: '127.0.0.1', sender: 'user1@example.test', recipients: ['bob@example.net'], action: 'quarantine', reason: 'malware.found', rule: 'malware.found', signature: 'Eicar-Test-Signature', policyVersion: 'abc', size: RAW.length },
      Readable.from([Buffer.from(RAW)]),
    );
    const endpoint = { host: '127.0.0.1', port: upstream.port, tls: 'none' as const, verifyCertificate: false, heloName: 'douane.test', timeouts: { connect: 2000, command: 2000, data: 5000, keepalive: 60_000 } };
    for (const force of [false, true]) {
      await expect(releaseMessage(store, meta.id, { endpoint, by: 'cli:test', audit, force })).rejects.toThrow(`${meta.id} holds malware (Eicar-Test-Signature): releasing it would deliver it to its recipients. If the scanner was wrong, release it with --allow-malware`);
    }
    expect(upstream.messages).toHaveLength(0);
    expect((await store.get(meta.id))!.released).toBeUndefined();
    const released = await releaseMessage(store, meta.id, { endpoint, by: 'cli:test', audit, allowMalware: true });
    expect(released.released).toBeDefined();
    expect(upstream.messages).toHaveLength(1);
  });

  it('delivers to the recipients the upstream accepts and records the ones it refused', async () => {
    upstream = await FakeUpstream.start({ rcpt: (to) => (to === 'gone@example.net' ? '550 5.1.1 No such user' : undefined) });
    const dir = mkdtempSync(join(tmpdir(), 'douane-release-'));
    const store = new LocalQuarantine(join(dir, 'quarantine'));
    const audit = new AuditLog(join(dir, 'audit.log'));
    const raw = 'From: user1@example.test\r\nSubject: kept\r\n\r\nhello\r\n';
    const meta = await store.put(
      { reference: 'D-REL001', at: new Date().toISOString(), account: 'user1@example.test', listener: 'trusted', client: '127.0.0.1', sender: 'user1@example.test', recipients: ['bob@example.net', 'gone@example.net'], action: 'quarantine', reason: 'content.forbidden', rule: 'content.phishing-domains', policyVersion: 'abc', size: raw.length },
      Readable.from([Buffer.from(raw)]),
    );
    const endpoint = { host: '127.0.0.1', port: upstream.port, tls: 'none' as const, verifyCertificate: false, heloName: 'douane.test', timeouts: { connect: 2000, command: 2000, data: 5000, keepalive: 60_000 } };
    const released = await releaseMessage(store, meta.id, { endpoint, by: 'cli:test', audit });
    expect(upstream.messages).toHaveLength(1);
    expect(upstream.messages[0]!.to).toEqual(['bob@example.net']);
    expect(released.released!.refused).toEqual(['gone@example.net: 550 5.1.1 No such user']);
    expect((await store.get(meta.id))!.released!.refused).toEqual(['gone@example.net: 550 5.1.1 No such user']);
    const entry = JSON.parse(readFileSync(audit.path, 'utf8').trim()) as Record<string, unknown>;
    expect(entry).toMatchObject({ action: 'release', quarantine_id: meta.id, refused: ['gone@example.net: 550 5.1.1 No such user'] });
  });
});
