// The spool: memory up to the threshold, then a private file; a file error is reported, never thrown at the process.

import { once } from 'node:events';
import { mkdtempSync, readdirSync, readlinkSync, rmSync, statSync, utimesSync, writeFileSync, type WriteStream } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Spool } from '../../src/data/spool.js';

const dirs: string[] = [];
function spoolDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'douane-spool-'));
  dirs.push(dir);
  return dir;
}
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

async function readAll(spool: Spool): Promise<string> {
  const parts: Buffer[] = [];
  for await (const c of spool.reader()) parts.push(c as Buffer);
  return Buffer.concat(parts).toString();
}

describe('spool', () => {
  it('keeps a small message in memory and a large one in a private file it removes', async () => {
    const dir = spoolDir();
    const small = new Spool(dir, 100);
    await small.write(Buffer.from('hello '));
    await small.write(Buffer.from('world'));
    await small.finish();
    expect(small.onDisk).toBe(false);
    expect(await readAll(small)).toBe('hello world');

    const large = new Spool(dir, 10);
    await large.write(Buffer.from('0123456789'));
    await large.write(Buffer.from('abcdef'));
    await large.finish();
    expect(large.onDisk).toBe(true);
    const [file] = readdirSync(dir);
    expect(statSync(join(dir, file!)).mode & 0o777).toBe(0o600);
    expect(await readAll(large)).toBe('0123456789abcdef');
    await large.dispose();
    expect(readdirSync(dir)).toEqual([]);
  });

  it('closes the readers it handed out that nobody read to the end: no descriptor, no deleted file kept', async () => {
    const dir = spoolDir();
    const spool = new Spool(dir, 10);
    await spool.write(Buffer.alloc(100_000, 'x'));
    await spool.finish();
    const [name] = readdirSync(dir);
    const openOnIt = () => readdirSync('/proc/self/fd').filter((fd) => {
      try {
        return readlinkSync(`/proc/self/fd/${fd}`).includes(name!);
      } catch {
        return false;
      }
    });
    // One opened and never read (an upstream that refused DATA), one never even opened yet.
    const opened = spool.reader();
    await once(opened, 'open');
    spool.reader();
    expect(openOnIt().length).toBeGreaterThan(0);
    await spool.dispose();
    await new Promise((r) => setTimeout(r, 50));
    expect(openOnIt()).toEqual([]);
    expect(readdirSync(dir)).toEqual([]);
  });

  it('at start, removes the files a crashed run left, older than the session deadline, and nothing else', () => {
    const dir = spoolDir();
    const old = join(dir, 'msg-1700000000000-0123456789ab.eml');
    const fresh = join(dir, 'msg-1700000000001-ba9876543210.eml');
    const other = join(dir, 'notes.txt');
    for (const f of [old, fresh, other]) writeFileSync(f, 'x');
    const hourAgo = new Date(Date.now() - 3_600_000);
    utimesSync(old, hourAgo, hourAgo);
    utimesSync(other, hourAgo, hourAgo);
    expect(Spool.prepare(dir, 1_800_000)).toBe(1);
    expect(readdirSync(dir).sort()).toEqual(['msg-1700000000001-ba9876543210.eml', 'notes.txt']);
  });

  it('a file error while nobody waits on the file (disk full after a write that did not block) fails the next write and finish', async () => {
    const dir = spoolDir();
    const spool = new Spool(dir, 10);
    await spool.write(Buffer.alloc(100, 'a'));
    expect(spool.onDisk).toBe(true);
    // What the file system does on ENOSPC, at a moment when no write is waiting for 'drain'. Without a
    // listener of the spool's own, this 'error' event would end the process.
    const file = (spool as unknown as { file: WriteStream }).file;
    file.destroy(Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' }));
    await new Promise((r) => setImmediate(r));
    await expect(spool.write(Buffer.alloc(10, 'b'))).rejects.toThrow(/ENOSPC/);
    await expect(spool.finish()).rejects.toThrow(/ENOSPC/);
    await spool.dispose();
    expect(readdirSync(dir)).toEqual([]);
  });
});
