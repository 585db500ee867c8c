// 7z archives listed as they stream, and the LZMA decoder their headers need. The archives are made by
// 7-Zip itself (7zz) and by libarchive (bsdtar), and what 7-Zip lists in each is what Douane must find;
// the LZMA streams are made by xz. Then the shipped policy judging what is inside.

import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { crc32 } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { LzmaError, lzma2Decode, lzmaDecode } from '../../src/inspect/lzma.js';
import { SevenZipLister } from '../../src/inspect/sevenzip.js';
import { inspectAttachment, zip } from '../harness/mime.js';
import { num, sevenZip, type SevenZipOptions } from '../harness/sevenzip.js';

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
  // One time for every entry, directories last (adding a file changes its directory's): the archives
  // made of it are the same at every run, so that what 7-Zip makes of a damaged one does not depend on
  // the clock (the header holds the times).
  const when = new Date('2025-03-03T10:15:00Z');
  for (const f of [...files].sort((a, b) => Number(Boolean(a.directory)) - Number(Boolean(b.directory)) || b.name.length - a.name.length)) utimesSync(join(dir, f.name), when, when);
  return dir;
}

/** The archive 7-Zip makes of `files`, with its options (`-mhc=off`, `-p…`). */
function by7zip(files: Entry[], options: string[] = []): Buffer {
  const dir = folderOf(files);
  execFileSync('7zz', ['a', '-bd', '-bso0', ...options, 'out.7z', ...files.map((f) => f.name)], { cwd: dir, env: UTF8 });
  return readFileSync(join(dir, 'out.7z'));
}

/** The archive libarchive makes of `files` (its header packed as the files are: LZMA unless told otherwise). */
function byLibarchive(files: Entry[], compression?: string): Buffer {
  const dir = folderOf(files);
  const options = compression ? ['--options', `7zip:compression=${compression}`] : [];
  execFileSync('bsdtar', ['--format', '7zip', ...options, '-n', '-cf', 'out.7z', ...files.map((f) => f.name)], { cwd: dir, env: UTF8 });
  return readFileSync(join(dir, 'out.7z'));
}

/**
 * What 7-Zip lists in the archive, a folder's name ending with "/" (Douane's convention). Saved as a.7z,
 * 7-Zip opens it as a 7z from its first byte only; saved as a.bin, it looks for one further in.
 */
function listedBy7zip(archive: Buffer, name = 'a.7z'): string[] {
  const file = join(mkdtempSync(join(root, 'l-')), name);
  writeFileSync(file, archive);
  // Listed with warnings (an unknown property skipped), 7-Zip exits non-zero: what it listed counts.
  const run = spawnSync('7zz', ['l', '-slt', file], { env: UTF8 });
  const out = run.stdout.toString('utf8');
  if (!out.includes('\n----------\n')) throw new Error(`7-Zip cannot open it: ${out}${run.stderr.toString()}`);
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

  it('decodes what xz encodes as raw LZMA2 (chunks of 2 MB, stored chunks for what does not compress), each input', () => {
    const big = Buffer.concat([Buffer.from(words), randomBytes(100_000), Buffer.from(words), Buffer.alloc(3_000_000, 'a')]);
    for (const [what, data] of [...inputs, ['over several chunks', big] as [string, Buffer]]) {
      for (const options of ['preset=6', 'preset=1,lc=0,lp=2,pb=0', 'preset=6,lc=4,lp=0,pb=4,dict=4KiB']) {
        const stream = execFileSync('xz', ['--format=raw', `--lzma2=${options}`, '-c'], { input: data, maxBuffer: 1 << 26 });
        expect(lzma2Decode(stream, data.length).equals(data), `${what}, ${options}`).toBe(true);
      }
    }
    const stream = execFileSync('xz', ['--format=raw', '--lzma2=preset=6', '-c'], { input: big, maxBuffer: 1 << 26 });
    expect(() => lzma2Decode(stream, big.length + 1)).toThrow(LzmaError);
    expect(() => lzma2Decode(stream, big.length - 1)).toThrow(LzmaError);
    expect(() => lzma2Decode(stream.subarray(0, stream.length >> 1), big.length)).toThrow(LzmaError);
    expect(() => lzma2Decode(Buffer.from([0x80, 0, 0, 0, 0, 0]), 1)).toThrow(LzmaError); // no properties yet
  });

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
    for (const archive of [by7zip(FILES), by7zip(FILES, ['-mhc=off']), by7zip(FILES, ['-m0=lzma2', '-mx=9']), byLibarchive(FILES), byLibarchive(FILES, 'lzma2')]) {
      const names = listedBy7zip(archive);
      expect(names.sort()).toEqual(['Factures/', 'Factures/facture-2025.pdf', 'Factures/facture-2025.pdf.scr', 'LISEZ-MOI.txt', 'vide.txt']);
      expectListing(archive, { is7z: true, entries: listedBy7zip(archive), complete: true, encrypted: false, unnamed: false });
    }
  });

  it('does not decode a packed header over 512 KB, which would hold the thread every session shares; a plain one that size is read', () => {
    // 3000 files of 120-character names: a header of some 800 KB once unpacked.
    const files: Entry[] = Array.from({ length: 3000 }, (_, i) => ({ name: `${String(i).padStart(5, '0')}-${'n'.repeat(114)}.txt`, data: Buffer.from('x') }));
    const packed = list(by7zip(files), 65_536);
    expect(packed).toMatchObject({ is7z: true, entries: [], complete: false });
    const plain = list(by7zip(files, ['-mhc=off']), 65_536);
    expect(plain.complete).toBe(true);
    expect(plain.entries).toHaveLength(1000); // the lister's own cap on names kept
  }, 60_000);

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
    // A signature header whose checksum does not hold: behind other bytes, not one at all; at the start,
    // an archive that cannot be read (7-Zip repairs one whose signature header is zeroed).
    const wrong = Buffer.from(archive);
    wrong[12]! ^= 1;
    expect(list(Buffer.concat([Buffer.from('MZ'), wrong]), 1000)).toEqual({ is7z: false, entries: [], complete: true, encrypted: false, unnamed: false });
    expect(list(wrong, 1000)).toEqual({ is7z: true, entries: [], complete: false, encrypted: false, unnamed: false });
    const zeroed = Buffer.from(archive);
    zeroed.fill(0, 8, 32);
    expect(listedBy7zip(zeroed)).toEqual(listedBy7zip(archive));
    expect(list(zeroed, 1000)).toEqual({ is7z: true, entries: [], complete: false, encrypted: false, unnamed: false });
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
    // Plain headers too: reading one costs as much.
    for (const packed of [by7zip(FILES), by7zip(FILES, ['-mhc=off'])]) {
      const budget = { lzma: 50_000 };
      const listings = Array.from({ length: 200 }, () => {
        const lister = new SevenZipLister(1000, budget);
        lister.push(packed);
        lister.end();
        return lister.listing;
      });
      expect(listings[0]!.complete).toBe(true);
      expect(listings[199]).toMatchObject({ is7z: true, entries: [], complete: false });
      expect(budget.lzma).toBeGreaterThanOrEqual(0);
    }
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

  describe('written otherwise than 7-Zip writes them', () => {
    const FILES7 = [{ name: 'Factures' }, { name: 'Factures/facture.pdf.exe', data: Buffer.from('MZ') }, { name: 'lisez-moi.txt', data: Buffer.from('bonjour') }];
    const LISTED7 = ['Factures/', 'Factures/facture.pdf.exe', 'lisez-moi.txt'];
    /** without a directory's "/" (these archives carry no attributes, so 7-Zip shows none) */
    const bare = (names: string[]) => names.map((n) => n.replace(/\/$/, ''));

    it('reads what 7-Zip reads, at the start and behind other bytes: ids written long, unknown properties skipped, a stored header with bytes after it', () => {
      const variants: Record<string, SevenZipOptions> = {
        'the header id written on two bytes (80 01)': { headerId: Buffer.from([0x80, 0x01]) },
        'an unknown property before the folders': { beforeFolder: Buffer.from([0x25, 0x02, 0xaa, 0xbb]) },
        'a property id past 2^53 among the files': { fileProperties: Buffer.concat([Buffer.from([0xff, 0, 0, 0, 0, 0, 0, 0, 0x80]), num(2), Buffer.from([1, 2])]) },
        'a stored header with bytes after it': { header: 'copy', copyExtra: 16 },
        'a header packed by LZMA': { header: 'lzma' },
      };
      for (const [what, options] of Object.entries(variants)) {
        const archive = sevenZip(FILES7, options);
        for (const before of [0, 100]) {
          const bytes = Buffer.concat([Buffer.alloc(before, 'x'), archive]);
          expect(bare(listedBy7zip(bytes, 'a.bin')), what).toEqual(bare(LISTED7));
          expect(list(bytes, 1000), `${what}, ${before} bytes before`).toEqual({ is7z: true, entries: LISTED7, complete: true, encrypted: false, unnamed: false });
        }
      }
    });

    it('refuses what 7-Zip does not open at the start; behind other bytes, looks past a signature 7-Zip passes over, or refuses', () => {
      const real = sevenZip(FILES7);
      // A major version 7-Zip does not know: passed over.
      const newer = sevenZip([{ name: 'harmless.txt', data: Buffer.from('x') }], { version: 1 });
      expect(() => listedBy7zip(newer)).toThrow();
      expect(list(newer, 1000)).toMatchObject({ is7z: true, complete: false });
      const behind = Buffer.concat([Buffer.from('MZ'), newer, real]);
      expect(bare(listedBy7zip(behind, 'a.bin'))).toEqual(bare(LISTED7));
      expect(list(behind, 1000)).toEqual({ is7z: true, entries: LISTED7, complete: true, encrypted: false, unnamed: false });
      // A header packed twice (7-Zip unpacks one level): its checksum holds, so it is an archive Douane
      // cannot read, wherever it is.
      const twice = sevenZip([{ name: 'harmless.txt', data: Buffer.from('x') }], { header: 'lzma', packTwice: true });
      expect(() => listedBy7zip(twice)).toThrow();
      expect(list(twice, 1000)).toMatchObject({ is7z: true, complete: false });
      expect(list(Buffer.concat([Buffer.from('MZ'), twice, real]), 1000)).toMatchObject({ is7z: true, entries: [], complete: false });
    });

    it('lists the first archive 7-Zip would open, even when a later one is read first', () => {
      // A small archive stored inside the first one's data: its header comes long before the first's.
      const inner = sevenZip([{ name: 'harmless.txt', data: Buffer.from('x') }]);
      const outer = sevenZip([{ name: 'inner.bin', data: inner }, ...FILES7]);
      const behind = Buffer.concat([Buffer.from('MZ'), outer]);
      expect(bare(listedBy7zip(behind, 'a.bin'))).toEqual(['inner.bin', ...bare(LISTED7)]);
      expectListing(behind, { is7z: true, entries: ['inner.bin', ...LISTED7], complete: true, encrypted: false, unnamed: false });
    });

    it('says an archive is encrypted however the AES coder id is written (with a zero byte before it)', () => {
      const aes = sevenZip(FILES7, { coderId: Buffer.from([0x00, 0x06, 0xf1, 0x07, 0x01]) });
      const file = join(mkdtempSync(join(root, 'aes-')), 'a.7z');
      writeFileSync(file, aes);
      expect(spawnSync('7zz', ['l', '-slt', file]).stdout.toString()).toMatch(/^Encrypted = \+$/m);
      expect(list(aes, 1000)).toMatchObject({ is7z: true, encrypted: true, complete: true });
    });

    it('reads a crafted header in time proportional to its size: a million empty properties', () => {
      const many = Array.from({ length: 50_000 }, (_, i) => ({ name: `${i}.txt`, data: Buffer.from('x') }));
      // A vector of empty streams (none is), then properties of "empty files" among them, two bytes each:
      // read one by one against every file, they would take hours, far past the suite's timeout.
      const emptyStreams = Buffer.concat([Buffer.from([0x0e]), num(6_250), Buffer.alloc(6_250)]);
      const archive = sevenZip(many, { fileProperties: Buffer.concat([emptyStreams, Buffer.alloc(2_000_000, Buffer.from([0x0f, 0x00]))]) });
      const listing = list(archive, 65_536);
      expect(listing).toMatchObject({ is7z: true, complete: true });
      expect(listing.entries).toHaveLength(1000);
    });
  });
});
