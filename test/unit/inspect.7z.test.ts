// 7z archives listed as they stream, and the LZMA decoder their headers need. The archives are made by
// 7-Zip itself (7zz) and by libarchive (bsdtar), and what 7-Zip lists in each is what Douane must find;
// the LZMA streams are made by xz. Then the shipped policy judging what is inside.

import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { crc32 } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { LzmaError, lzmaDecode } from '../../src/inspect/lzma.js';
import { SevenZipLister } from '../../src/inspect/sevenzip.js';
import { inspectAttachment, zip } from '../harness/mime.js';

const root = mkdtempSync(join(tmpdir(), 'douane-7z-'));
const UTF8 = { ...process.env, LANG: 'C.UTF-8', LC_ALL: 'C.UTF-8' };

interface Entry {
  name: string;
  data?: Buffer;
  directory?: true;
}

const FILES: Entry[] = [
  { name: 'Factures', directory: true },
  { name: 'Factures/facture-2025.pdf', data: Buffer.from('%PDF-1.4 not really') },
  { name: 'Factures/facture-2025.pdf.scr', data: Buffer.from('MZ\x90\x00stand-in program') },
  { name: 'LISEZ-MOI.txt', data: Buffer.alloc(70_000, 'bonjour ') },
  { name: 'vide.txt', data: Buffer.alloc(0) },
];

/** A fresh folder holding `files`. */
function folderOf(files: Entry[]): string {
  const dir = mkdtempSync(join(root, 'in-'));
  for (const f of files) {
    if (f.directory) mkdirSync(join(dir, f.name), { recursive: true });
    else {
      mkdirSync(dirname(join(dir, f.name)), { recursive: true });
      writeFileSync(join(dir, f.name), f.data ?? Buffer.alloc(0));
    }
  }
  return dir;
}

/** The archive 7-Zip makes of `files`, with its options (`-mhc=off`, `-p…`). */
function by7zip(files: Entry[], options: string[] = []): Buffer {
  const dir = folderOf(files);
  execFileSync('7zz', ['a', '-bd', '-bso0', ...options, 'out.7z', ...files.map((f) => f.name)], { cwd: dir, env: UTF8 });
  return readFileSync(join(dir, 'out.7z'));
}

/** The archive libarchive makes of `files`. */
function byLibarchive(files: Entry[]): Buffer {
  const dir = folderOf(files);
  execFileSync('bsdtar', ['--format', '7zip', '-n', '-cf', 'out.7z', ...files.map((f) => f.name)], { cwd: dir, env: UTF8 });
  return readFileSync(join(dir, 'out.7z'));
}

/**
 * What 7-Zip lists in the archive, a folder's name ending with "/" (Douane's convention). Saved as a.7z,
 * 7-Zip opens it as a 7z from its first byte only; saved as a.bin, it looks for one further in.
 */
function listedBy7zip(archive: Buffer, name = 'a.7z'): string[] {
  const file = join(mkdtempSync(join(root, 'l-')), name);
  writeFileSync(file, archive);
  const out = execFileSync('7zz', ['l', '-slt', file], { env: UTF8 }).toString('utf8');
  const items = out.slice(out.indexOf('\n----------\n')).split('\n\n').filter((b) => b.includes('Path = '));
  return items.map((b) => {
    const path = /^Path = (.*)$/m.exec(b)![1]!;
    return /^Attributes = D/m.test(b) ? `${path}/` : path;
  });
}

function list(bytes: Buffer, chunk: number) {
  const lister = new SevenZipLister(1000);
  for (let i = 0; i < bytes.length; i += chunk) lister.push(bytes.subarray(i, i + chunk));
  lister.end();
  return lister.listing;
}

/** Every way of cutting the stream into chunks gives `expected`. */
function expectListing(archive: Buffer, expected: object): void {
  for (const chunk of [archive.length, 1, 7, 1000, 65_536]) expect(list(archive, chunk), `chunks of ${chunk}`).toEqual(expected);
}

describe('LZMA decoding', () => {
  /** xz's LZMA "alone" format: the five property bytes, the size (here unknown), the stream with an end marker. */
  function xzLzma(data: Buffer, options: string): { props: Buffer; stream: Buffer } {
    const out = execFileSync('xz', ['--format=lzma', `--lzma1=${options}`, '-c'], { input: data, maxBuffer: 1 << 26 });
    return { props: out.subarray(0, 5), stream: out.subarray(13) };
  }

  const words = Array.from({ length: 40_000 }, (_, i) => ['facture', 'été', 'Zürich', 'mot', String(i % 977)][i % 5]).join(' ');
  const inputs: [string, Buffer][] = [
    ['text', Buffer.from(words)],
    ['random bytes', randomBytes(70_000)],
    ['one byte repeated', Buffer.alloc(300_000, 0x61)],
    ['text and random mixed', Buffer.concat([Buffer.from(words.slice(0, 5000)), randomBytes(3000), Buffer.from(words.slice(0, 5000))])],
    ['one byte', Buffer.from('x')],
  ];

  for (const [what, data] of inputs) {
    it(`decodes what xz encodes: ${what}, with each literal and position setting`, () => {
      for (const options of ['preset=6', 'preset=1,lc=0,lp=2,pb=0', 'preset=9,lc=4,lp=0,pb=4', 'preset=6,lc=1,lp=3,pb=2,dict=4KiB']) {
        const { props, stream } = xzLzma(data, options);
        expect(lzmaDecode(stream, 0, props, data.length).equals(data), options).toBe(true);
      }
    });
  }

  it('refuses a stream that ends before its announced size, one cut short, and one that is not LZMA', () => {
    const data = Buffer.from(words);
    const { props, stream } = xzLzma(data, 'preset=6');
    // The end marker comes where the data ends, before the size announced.
    expect(() => lzmaDecode(stream, 0, props, data.length + 1)).toThrow(LzmaError);
    expect(() => lzmaDecode(stream.subarray(0, stream.length >> 1), 0, props, data.length)).toThrow(LzmaError);
    expect(() => lzmaDecode(Buffer.concat([Buffer.from([1]), stream.subarray(1)]), 0, props, data.length)).toThrow(LzmaError);
    expect(() => lzmaDecode(stream, 0, Buffer.from([225, 0, 0, 1, 0]), data.length)).toThrow(LzmaError);
    // Random bytes after a valid first byte: some error, never a hang or an out-of-bounds write.
    for (let i = 0; i < 50; i++) {
      const noise = Buffer.concat([Buffer.from([0]), randomBytes(2000)]);
      try {
        lzmaDecode(noise, 0, props, 100_000);
      } catch (err) {
        expect(err).toBeInstanceOf(LzmaError);
      }
    }
  });
});

describe('7z listing', () => {
  it('lists what 7-Zip lists, in archives by 7-Zip (header packed or not) and by libarchive, however the stream is cut', () => {
    for (const archive of [by7zip(FILES), by7zip(FILES, ['-mhc=off']), by7zip(FILES, ['-m0=lzma2', '-mx=9']), byLibarchive(FILES)]) {
      const names = listedBy7zip(archive);
      expect(names.sort()).toEqual(['Factures/', 'Factures/facture-2025.pdf', 'Factures/facture-2025.pdf.scr', 'LISEZ-MOI.txt', 'vide.txt']);
      expectListing(archive, { is7z: true, entries: listedBy7zip(archive), complete: true, encrypted: false, unnamed: false });
    }
  });

  it('reads names in any script, and a thousand files', () => {
    const unicode: Entry[] = [
      { name: 'Facturé € 2025.pdf', data: Buffer.from('x') },
      { name: 'Счета/日本語の請求書.exe', data: Buffer.from('MZ') },
      { name: '😀.txt', data: Buffer.from('y') },
    ];
    const archive = by7zip(unicode);
    expectListing(archive, { is7z: true, entries: listedBy7zip(archive), complete: true, encrypted: false, unnamed: false });
    expect(list(archive, 1000).entries).toContain('Счета/日本語の請求書.exe');

    const many: Entry[] = Array.from({ length: 1000 }, (_, i) => ({ name: `photos/IMG_${String(i).padStart(4, '0')}.jpg`, data: randomBytes(64) }));
    const big = by7zip([...many, { name: 'photos/lisez-moi.vbs', data: Buffer.from('MsgBox 1') }]);
    const listing = list(big, 65_536);
    expect(listing.complete).toBe(true);
    expect(listing.entries).toContain('photos/lisez-moi.vbs');
  });

  it('says so of an encrypted archive: names listed when only the content is encrypted, incomplete when the header is', () => {
    const content = by7zip(FILES, ['-pSecret']);
    expectListing(content, { is7z: true, entries: listedBy7zip(content), complete: true, encrypted: true, unnamed: false });
    const header = by7zip(FILES, ['-pSecret', '-mhe=on']);
    expectListing(header, { is7z: true, entries: [], complete: false, encrypted: true, unnamed: false });
  });

  it('reports a file with no name, which 7-Zip names after the archive (7z a -si)', () => {
    const dir = mkdtempSync(join(root, 'si-'));
    execFileSync('7zz', ['a', '-bd', '-bso0', '-si', 'out.7z'], { cwd: dir, input: 'MZ program' });
    const archive = readFileSync(join(dir, 'out.7z'));
    expect(listedBy7zip(archive)).toEqual(['a']); // the name of the file listedBy7zip writes, less ".7z"
    expectListing(archive, { is7z: true, entries: [], complete: true, encrypted: false, unnamed: true });
  });

  it('finds an archive behind other bytes as far as 7-Zip looks (8 MiB), and not further', () => {
    const archive = by7zip(FILES);
    const names = listedBy7zip(archive);
    for (const before of [1, 5000, 3_000_000, 8 * 1024 * 1024 - 32]) {
      const behind = Buffer.concat([Buffer.alloc(before, 'x'), archive]);
      expect(listedBy7zip(behind, 'a.bin'), `${before} bytes before`).toEqual(names);
      expect(list(behind, 65_536)).toEqual({ is7z: true, entries: names, complete: true, encrypted: false, unnamed: false });
    }
    const far = Buffer.concat([Buffer.alloc(8 * 1024 * 1024 + 100, 'x'), archive]);
    expect(() => listedBy7zip(far, 'a.bin')).toThrow();
    expect(list(far, 65_536)).toEqual({ is7z: false, entries: [], complete: true, encrypted: false, unnamed: false });
  });

  it('takes a signature with no readable header behind other bytes for chance bytes, and one at the start for an archive it cannot read', () => {
    const archive = by7zip(FILES);
    // The signature header alone, as in the first bytes of a 7z deflated into stored blocks.
    const start = archive.subarray(0, 32);
    const chance = Buffer.concat([randomBytes(100), start, randomBytes(5000)]);
    expect(list(chance, 1000)).toEqual({ is7z: false, entries: [], complete: true, encrypted: false, unnamed: false });
    // A checksum that does not hold: not a signature header at all.
    const wrong = Buffer.from(archive);
    wrong[12]! ^= 1;
    expect(list(wrong, 1000)).toEqual({ is7z: false, entries: [], complete: true, encrypted: false, unnamed: false });
    // At the start: cut short (the first volume of a split archive), or its header damaged.
    expectListing(archive.subarray(0, archive.length - 10), { is7z: true, entries: [], complete: false, encrypted: false, unnamed: false });
    const damaged = Buffer.from(archive);
    damaged[damaged.length - 5]! ^= 0x40;
    expect(list(damaged, 1000)).toEqual({ is7z: true, entries: [], complete: false, encrypted: false, unnamed: false });
  });

  it('does not read a header past its bounds: the listing is incomplete', () => {
    const archive = Buffer.from(by7zip(FILES, ['-mhc=off']));
    // The signature header says the header is 9 MB long (its checksum made to match).
    archive.writeUInt32LE(9 * 1024 * 1024, 20);
    archive.writeUInt32LE(crc32(archive.subarray(12, 32)), 8);
    expect(list(archive, 1000)).toEqual({ is7z: true, entries: [], complete: false, encrypted: false, unnamed: false });
    // Headers decoded are counted against the caller's budget (one message's): past it, none is read.
    const packed = by7zip(FILES);
    const budget = { lzma: 1000 };
    const within = new SevenZipLister(1000, budget);
    within.push(packed);
    within.end();
    expect(within.listing.complete).toBe(true);
    expect(budget.lzma).toBeLessThan(1000);
    const past = new SevenZipLister(1000, budget);
    past.push(by7zip([...FILES, ...Array.from({ length: 50 }, (_, i) => ({ name: `more/${i}.txt`, data: Buffer.from('x') }))]));
    past.end();
    expect(past.listing).toMatchObject({ is7z: true, entries: [], complete: false });
    // Behind other bytes too: the header is not read, so nothing says these are chance bytes.
    expect(list(Buffer.concat([Buffer.alloc(100), archive]), 1000)).toEqual({ is7z: true, entries: [], complete: false, encrypted: false, unnamed: false });
  });

  it('as an attachment: listed whatever its name, its program quarantined by the shipped policy; an encrypted header is refused as too complex', async () => {
    const plain = await inspectAttachment(by7zip(FILES), 'facture.pdf');
    expect(plain.message.attachments[0]).toMatchObject({ name: 'facture.pdf', detectedType: '7z', encrypted: false });
    expect(plain.message.attachments[0]!.archiveEntries).toContain('Factures/facture-2025.pdf.scr');
    expect(plain.message.mimeLimitExceeded).toBeUndefined();
    expect(plain.verdict).toMatchObject({ action: 'quarantine', rule: { id: 'attachments.executable' } });

    const clean = await inspectAttachment(by7zip(FILES.filter((f) => !f.name.endsWith('.scr'))), 'factures.7z');
    expect(clean.message.attachments[0]!.archiveEntries).toHaveLength(4);
    expect(clean.verdict.action).toBe('continue');

    // Stored in a zip: found there too.
    const zipped = await inspectAttachment(zip([{ name: 'docs.7z', content: by7zip(FILES) }]), 'docs.zip');
    expect(zipped.message.attachments[0]!.archiveEntries).toEqual(expect.arrayContaining(['docs.7z', 'Factures/facture-2025.pdf.scr']));
    expect(zipped.verdict).toMatchObject({ action: 'quarantine', rule: { id: 'attachments.executable' } });

    // Deflated in a zip, by Info-ZIP (a 7z that stores its files compresses well): inflated as it
    // streams, and listed under its name.
    const stored = by7zip(FILES, ['-m0=copy']);
    const zipDir = folderOf([{ name: 'docs.7z', data: stored }]);
    execFileSync('zip', ['-q', '-X', 'docs.zip', 'docs.7z'], { cwd: zipDir });
    const deflated = readFileSync(join(zipDir, 'docs.zip'));
    expect(deflated.readUInt16LE(8), 'deflated').toBe(8);
    const inflated = await inspectAttachment(deflated, 'docs.zip');
    expect(inflated.message.attachments[0]!.archiveEntries).toEqual(['docs.7z', ...listedBy7zip(stored).map((n) => `docs.7z/${n}`)]);
    expect(inflated.message.mimeLimitExceeded).toBeUndefined();
    expect(inflated.verdict).toMatchObject({ action: 'quarantine', rule: { id: 'attachments.executable' } });

    // A file without a name takes the archive's: invoice.exe.7z holds "invoice.exe".
    const dir = mkdtempSync(join(root, 'si-'));
    execFileSync('7zz', ['a', '-bd', '-bso0', '-si', 'out.7z'], { cwd: dir, input: 'MZ program' });
    const unnamed = await inspectAttachment(readFileSync(join(dir, 'out.7z')), 'invoice.exe.7z');
    expect(unnamed.message.attachments[0]!.archiveEntries).toEqual(['invoice.exe']);
    expect(unnamed.verdict).toMatchObject({ action: 'quarantine', rule: { id: 'attachments.executable' } });
    const zippedUnnamed = await inspectAttachment(zip([{ name: 'invoice.exe.7z', content: readFileSync(join(dir, 'out.7z')) }]), 'invoice.zip');
    expect(zippedUnnamed.message.attachments[0]!.archiveEntries).toContain('invoice.exe.7z/invoice.exe');

    const hidden = await inspectAttachment(by7zip(FILES, ['-pSecret', '-mhe=on']), 'facture.7z');
    expect(hidden.message.attachments[0]).toMatchObject({ detectedType: '7z', encrypted: true, archiveEntries: [] });
    expect(hidden.message.mimeLimitExceeded).toBe('archive_entries');
    expect(hidden.verdict).toMatchObject({ action: 'reject', rule: { id: 'mime.too-complex' } });
  });
});
