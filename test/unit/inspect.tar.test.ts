// Tar archives, plain and gzipped, listed as they stream. The archives are made by GNU tar in each of its
// formats and by libarchive (bsdtar), and what GNU tar lists in each is what Douane must find. Then the
// shipped policy judging what is inside.

import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, linkSync, mkdirSync, mkdtempSync, openSync, readFileSync, symlinkSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { crc32, deflateRawSync, gzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { letterWord, listTar, tarLister } from '../harness/archives.js';
import { inspectAttachment, zip } from '../harness/mime.js';

const root = mkdtempSync(join(tmpdir(), 'douane-tar-'));

/** `days` gzipped logs rotated by date in `dir` (app.log-20230101.gz, …); their names, in order. */
function datedLogs(dir: string, days: number): string[] {
  return Array.from({ length: days }, (_, day) => {
    const name = `app.log-${String(20230101 + day)}.gz`;
    writeFileSync(join(dir, name), gzipSync(`ligne ${day}\n`));
    return name;
  });
}

const UTF8 = { ...process.env, LANG: 'C.UTF-8', LC_ALL: 'C.UTF-8' };
const LONG = `${'Dossier-comptable-2025/'.repeat(6)}facture-du-mois-de-novembre.pdf.exe`;

/** A folder with a directory, files (one with a path over 100 bytes, one not in ASCII), a symlink and a hard link. */
function folder(long = true): string {
  const dir = mkdtempSync(join(root, 'in-'));
  const files: Record<string, Buffer> = {
    'Factures/facture-2025.pdf': Buffer.from('%PDF-1.4 not really'),
    'Factures/facture-2025.pdf.scr': Buffer.from('MZ\x90\x00stand-in program'),
    'LISEZ-MOI.txt': Buffer.alloc(70_000, 'bonjour '),
    'vide.txt': Buffer.alloc(0),
  };
  if (long) {
    files[LONG] = Buffer.from('MZ');
    files['Reçus/été.js'] = Buffer.from('WScript.Echo(1)');
  }
  for (const [name, data] of Object.entries(files)) {
    mkdirSync(dirname(join(dir, name)), { recursive: true });
    writeFileSync(join(dir, name), data);
  }
  symlinkSync('LISEZ-MOI.txt', join(dir, 'lien.lnk'));
  linkSync(join(dir, 'vide.txt'), join(dir, 'dur.bat'));
  return dir;
}

function gnuTar(format: string, gzip = false, long = true): Buffer {
  const dir = folder(long);
  execFileSync('tar', [`--format=${format}`, gzip ? '-czf' : '-cf', join(dir, 'out'), '-C', dir, 'Factures', 'LISEZ-MOI.txt', 'vide.txt', 'lien.lnk', 'dur.bat', ...(long ? ['Dossier-comptable-2025', 'Reçus'] : [])], { env: UTF8 });
  return readFileSync(join(dir, 'out'));
}

function libarchiveTar(gzip = false): Buffer {
  const dir = folder();
  execFileSync('bsdtar', [gzip ? '-czf' : '-cf', join(dir, 'out'), '-C', dir, 'Factures', 'LISEZ-MOI.txt', 'vide.txt', 'lien.lnk', 'dur.bat', 'Dossier-comptable-2025', 'Reçus'], { env: UTF8 });
  return readFileSync(join(dir, 'out'));
}

/** What GNU tar lists (a directory's name ends with "/", as Douane's do). */
function listedByTar(archive: Buffer): string[] {
  const file = join(mkdtempSync(join(root, 'l-')), 'a');
  writeFileSync(file, archive);
  return execFileSync('tar', ['-tf', file], { env: UTF8 }).toString('utf8').split('\n').filter(Boolean);
}

/** A copy of a header with fields written over (offset: text), its checksum made to hold again. */
function rewritten(header: Buffer, fields: Record<number, string>): Buffer {
  const copy = Buffer.from(header);
  for (const [offset, value] of Object.entries(fields)) copy.write(value, Number(offset), 'latin1');
  copy.write('        ', 148, 'latin1');
  let sum = 0;
  for (const b of copy) sum += b;
  copy.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return copy;
}

/** A ustar header of that type, its checksum made to hold, then its data, padded to blocks. */
function block(name: string | Buffer, size: number, type: string, data: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(512);
  (typeof name === 'string' ? Buffer.from(name) : name).copy(h, 0, 0, 100);
  h.write('0000644\0', 100, 'latin1');
  h.write(`${size.toString(8).padStart(11, '0')}\0`, 124, 'latin1');
  h.write(type, 156, 'latin1');
  h.write('ustar\x0000', 257, 'latin1');
  return Buffer.concat([rewritten(h, {}), data, Buffer.alloc((512 - (data.length % 512)) % 512)]);
}

/** One pax record, its length counting itself. */
function record(key: string, value: string): string {
  const body = ` ${key}=${value}\n`;
  let length = body.length + 1;
  while (String(length).length + body.length !== length) length = String(length).length + body.length;
  return `${length}${body}`;
}

/** A pax header (type x, X or g) holding `records`. */
function paxHeader(type: string, records: string): Buffer {
  const data = Buffer.from(records);
  return block(`PaxHeader/${type}`, data.length, type, data);
}

const EOF_BLOCKS = Buffer.alloc(1024);

/** What GNU tar lists, warnings or not. */
function listedByTarAnyway(archive: Buffer): string[] {
  const file = join(mkdtempSync(join(root, 'g-')), 'a.tar');
  writeFileSync(file, archive);
  return spawnSync('tar', ['-tf', file], { env: UTF8 }).stdout.toString('utf8').split('\n').filter(Boolean);
}

function listedByBsdtar(archive: Buffer): string[] {
  const file = join(mkdtempSync(join(root, 'b-')), 'a.tar');
  writeFileSync(file, archive);
  // With a warning (a pax record ignored) bsdtar exits non-zero: what it listed counts.
  return spawnSync('bsdtar', ['-tf', file], { env: UTF8 }).stdout.toString('utf8').split('\n').filter(Boolean);
}

function expectListing(archive: Buffer, expected: object): void {
  for (const chunk of [archive.length, 1, 7, 511, 513, 65_536]) expect(listTar(archive, chunk), `chunks of ${chunk}`).toEqual(expected);
}

describe('tar listing', () => {
  for (const format of ['gnu', 'oldgnu', 'ustar', 'posix', 'v7']) {
    it(`lists what GNU tar lists, in its ${format} format, plain and gzipped, however the stream is cut`, () => {
      // v7 holds no path over 100 bytes (ustar splits one between its prefix and name fields).
      const long = format !== 'v7';
      for (const gzip of [false, true]) {
        const archive = gnuTar(format, gzip, long);
        const names = listedByTar(archive);
        expect(names).toContain('Factures/facture-2025.pdf.scr');
        if (long) expect(names).toEqual(expect.arrayContaining([LONG, 'Reçus/été.js', 'lien.lnk', 'dur.bat']));
        expectListing(archive, { isTar: true, entries: names, complete: true });
      }
    });
  }

  it('lists what GNU tar lists in archives by libarchive (pax headers for names not in ASCII), plain and gzipped', () => {
    for (const gzip of [false, true]) {
      const archive = libarchiveTar(gzip);
      const names = listedByTar(archive);
      expect(names).toEqual(expect.arrayContaining([LONG, 'Reçus/été.js']));
      expectListing(archive, { isTar: true, entries: names, complete: true });
    }
  });

  it('is not fooled into listing other files: a gzipped text, random bytes, an empty file', () => {
    for (const other of [gzipSync(Buffer.alloc(100_000, 'texte ')), randomBytes(5000), Buffer.alloc(0), Buffer.alloc(2048)]) {
      expect(listTar(other, 1000)).toEqual({ isTar: false, entries: [], complete: true });
    }
  });

  it('says the listing is incomplete when a later header is damaged, a symbolic link claims data, or the inflate budget runs out', () => {
    const archive = gnuTar('gnu');
    // The second header's checksum, broken: GNU tar skips to the next header it finds, bsdtar stops.
    const damaged = Buffer.from(archive);
    const second = 512; // "Factures/" is a header with no data; its first file's header follows
    expect(listedByTar(archive.subarray(0, 512))[0]).toBe('Factures/');
    damaged[second + 1]! ^= 0x20;
    expect(listTar(damaged, 1000)).toMatchObject({ isTar: true, entries: ['Factures/'], complete: false });
    // The first header damaged: not a tar at all.
    const first = Buffer.from(archive);
    first[1]! ^= 0x20;
    expect(listTar(first, 1000)).toEqual({ isTar: false, entries: [], complete: true });

    // A directory with a size: every extractor reads the next header right after it. A symbolic link
    // with one: bsdtar does, GNU tar skips the size, so where the next header is cannot be told.
    const sized = Buffer.concat([rewritten(archive.subarray(0, 512), { 124: '00000001000\0' }), archive.subarray(512)]);
    expect(listTar(sized, 1000)).toEqual({ isTar: true, entries: listedByTar(sized), complete: true });
    const link = Buffer.concat([rewritten(archive.subarray(0, 512), { 124: '00000001000\0', 156: '2' }), archive.subarray(512)]);
    expect(listTar(link, 1000)).toMatchObject({ isTar: true, complete: false });

    // 20 MB of zeros, then a program: inflated within the budget, or not at all past it.
    const bomb = mkdtempSync(join(root, 'bomb-'));
    writeFileSync(join(bomb, 'zeros.bin'), Buffer.alloc(20 * 1024 * 1024));
    writeFileSync(join(bomb, 'setup.exe'), Buffer.from('MZ'));
    execFileSync('tar', ['-czf', 'out.tgz', 'zeros.bin', 'setup.exe'], { cwd: bomb });
    const gz = readFileSync(join(bomb, 'out.tgz'));
    expect(listTar(gz, 1000)).toEqual({ isTar: true, entries: ['zeros.bin', 'setup.exe'], complete: true });
    const budget = { bytes: 12 * 1024 * 1024 };
    expect(listTar(gz, 1000, budget)).toEqual({ isTar: true, entries: ['zeros.bin'], complete: false });
    expect(budget.bytes).toBeLessThan(0);
    // bzip2 packs runs of zeros far tighter than deflate (64 MB of zeros in a few hundred bytes): decoded
    // in the main thread, such a bomb is given up at a hundred thousand times its size, not at the budget;
    // a log that compresses well, and a tar that begins with tens of megabytes of zeros in xz or zstd (a
    // disk image), are read to their end.
    writeFileSync(join(bomb, 'zeros.bin'), Buffer.alloc(64 * 1024 * 1024));
    const log = Array.from({ length: 120_000 }, (_, i) => `2026-11-29 07:${String(i % 60).padStart(2, '0')} relais ${i} accepte\n`).join('');
    writeFileSync(join(bomb, 'journal.log'), log);
    writeFileSync(join(bomb, 'random.bin'), randomBytes(2 * 1024 * 1024));
    for (const [flag, suffix] of [['-j', 'bz2'], ['-J', 'xz'], ['--zstd', 'zst']] as const) {
      execFileSync('tar', [flag, '-cf', `out.tar.${suffix}`, 'zeros.bin', 'setup.exe'], { cwd: bomb });
      const packed = readFileSync(join(bomb, `out.tar.${suffix}`));
      const spent = { bytes: 128 * 1024 * 1024 };
      if (suffix === 'bz2') {
        expect(listTar(packed, 65_536, spent), suffix).toMatchObject({ isTar: true, complete: false });
        expect(128 * 1024 * 1024 - spent.bytes, suffix).toBeLessThan(48 * 1024 * 1024);
        // Bytes after the bomb, in the same chunk, do not count as what it was made from.
        const padded = { bytes: 128 * 1024 * 1024 };
        expect(listTar(Buffer.concat([packed, randomBytes(60_000)]), 65_536, padded)).toMatchObject({ isTar: true, complete: false });
        expect(128 * 1024 * 1024 - padded.bytes).toBeLessThan(48 * 1024 * 1024);
      } else {
        expect(listTar(packed, 65_536, spent), suffix).toEqual({ isTar: true, entries: ['zeros.bin', 'setup.exe'], complete: true });
      }
      // Zeros first, then data that does not compress: the whole file is some 30 times its size.
      execFileSync('tar', [flag, '-cf', `image.tar.${suffix}`, 'zeros.bin', 'random.bin', 'setup.exe'], { cwd: bomb });
      if (suffix !== 'bz2') expect(listTar(readFileSync(join(bomb, `image.tar.${suffix}`)), 57), suffix).toEqual({ isTar: true, entries: ['zeros.bin', 'random.bin', 'setup.exe'], complete: true });
      execFileSync('tar', [flag, '-cf', `log.tar.${suffix}`, 'journal.log', 'setup.exe'], { cwd: bomb });
      const logs = readFileSync(join(bomb, `log.tar.${suffix}`));
      expect(logs.length * 10, suffix).toBeLessThan(log.length);
      expect(listTar(logs, 65_536), suffix).toEqual({ isTar: true, entries: ['journal.log', 'setup.exe'], complete: true });
    }
    // A gzipped file that is no tar costs nothing.
    const text = { bytes: 1000 };
    expect(listTar(gzipSync(Buffer.alloc(5_000_000, 'texte ')), 1000, text)).toEqual({ isTar: false, entries: [], complete: true });
    expect(text.bytes).toBe(1000);
  });

  it('ends the name of a directory with "/" even when the archive does not (a folder called x.exe is no program)', () => {
    const archive = gnuTar('gnu', false, false);
    expect(archive.toString('latin1', 0, 10)).toBe('Factures/\0');
    const bare = rewritten(archive.subarray(0, 512), { 0: 'Factures.exe\0' });
    expect(listTar(Buffer.concat([bare, archive.subarray(512)]), 1000).entries[0]).toBe('Factures.exe/');
  });

  it('takes a pax size over the size in the header, as extractors do: the next header is where they find it', () => {
    for (const [paxSize, headerSize, data] of [['0', 1024, Buffer.alloc(0)], ['1500', 0, Buffer.alloc(1500, 'a')]] as const) {
      const pax = Buffer.from(record('size', paxSize));
      const archive = Buffer.concat([
        block('PaxHeader/a.txt', pax.length, 'x', pax),
        block('a.txt', headerSize, '0', data),
        block('facture.pdf.exe', 0, '0'),
        Buffer.alloc(1024),
      ]);
      expect(listedByTar(archive), `pax size ${paxSize}`).toEqual(['a.txt', 'facture.pdf.exe']);
      expectListing(archive, { isTar: true, entries: ['a.txt', 'facture.pdf.exe'], complete: true });
    }
  });

  it('reads what extractors read: old GNU sparse maps, pax headers one after another, X and global headers, sparse names, empty paths', () => {
    // tar -S with more than four data regions: extension blocks follow the header.
    const dir = mkdtempSync(join(root, 'sparse-'));
    const image = Buffer.alloc(40 * 65_536 + 1000);
    for (let i = 0; i < 40; i++) image.fill('X', i * 65_536, i * 65_536 + 100);
    writeFileSync(join(dir, 'pic.img'), image);
    writeFileSync(join(dir, 'evil.exe'), 'MZ');
    for (const flags of ['-Scf', '-Sczf']) {
      execFileSync('tar', ['--format=gnu', flags, 'out', 'pic.img', 'evil.exe'], { cwd: dir });
      const archive = readFileSync(join(dir, 'out'));
      expect(listedByTar(archive)).toEqual(['pic.img', 'evil.exe']);
      expectListing(archive, { isTar: true, entries: ['pic.img', 'evil.exe'], complete: true });
    }
    const cases: [string, Buffer, string[]][] = [
      // Only the last pax header before a file counts.
      ['two pax headers', Buffer.concat([paxHeader('x', record('path', 'a.txt')), paxHeader('x', record('comment', 'hello')), block('evil.exe', 2, '0', Buffer.from('MZ'))]), ['evil.exe']],
      ['a Solaris pax header (X)', Buffer.concat([paxHeader('X', record('path', 'evil.exe')), block('a.txt', 0, '0')]), ['evil.exe']],
      ['a sparse name', Buffer.concat([paxHeader('x', record('GNU.sparse.name', 'evil.exe')), block('a.txt', 0, '0')]), ['evil.exe']],
      ['an empty path', Buffer.concat([paxHeader('x', record('path', '')), block('evil.exe', 0, '0')]), ['evil.exe']],
      ['a global path', Buffer.concat([paxHeader('g', record('path', 'evil.exe')), block('a.txt', 0, '0')]), ['evil.exe', 'a.txt']],
      ['a long name, then a pax path (bsdtar takes the one, GNU tar the other)', Buffer.concat([block('././@LongLink', 9, 'L', Buffer.from('evil.exe\0')), paxHeader('x', record('path', 'a.txt')), block('b.txt', 0, '0')]), ['a.txt', 'evil.exe']],
      ['a first name that starts like a gzip', Buffer.concat([block(Buffer.from('\x1f\x8b\x08Photo.jpg', 'latin1'), 1, '0', Buffer.from('x')), block('evil.exe', 0, '0')]), ['\x1f\x8b\x08Photo.jpg', 'evil.exe']],
      ['a file written as evil.exe/.', block('evil.exe/.', 2, '0', Buffer.from('MZ')), ['evil.exe']],
    ];
    for (const [what, body, expected] of cases) {
      const archive = Buffer.concat([body, EOF_BLOCKS]);
      const seen = [...new Set([...listedByTarAnyway(archive), ...listedByBsdtar(archive)])].map((n) => n.replace(/\/\.$/, ''));
      expect(seen.filter((n) => n.endsWith('.exe')), `${what}: what the extractors show`).toContain('evil.exe');
      const listing = listTar(archive, 100);
      expect(listing, what).toMatchObject({ isTar: true, complete: true });
      expect([...listing.entries].sort(), what).toEqual(expect.arrayContaining([...expected].sort()));
    }
  });

  it('says the listing is incomplete where extractors would read a header otherwise: a malformed pax record, a device with data, a gzip cut short', () => {
    const after = Buffer.concat([block('evil.exe', 0, '0'), EOF_BLOCKS]);
    for (const [what, body] of [
      ['a record without its newline', paxHeader('x', '19 path=a.txtX')],
      ['a length with a sign', paxHeader('x', '+14 path=a.txt\n')],
      ['a device with data', block('a.dev', 512, '3', Buffer.alloc(512))],
    ] as const) {
      expect(listTar(Buffer.concat([body, block('a.txt', 0, '0'), after]), 100), what).toMatchObject({ isTar: true, complete: false });
    }
    // Random content is deflated in stored blocks, which the inflater gives out whole: cut inside one,
    // the names after it are never seen.
    const dir = mkdtempSync(join(root, 'cut-'));
    writeFileSync(join(dir, 'a.txt'), randomBytes(100_000));
    writeFileSync(join(dir, 'evil.exe'), 'MZ');
    execFileSync('tar', ['-czf', 'out.tgz', 'a.txt', 'evil.exe'], { cwd: dir });
    const tgz = readFileSync(join(dir, 'out.tgz'));
    const cut = tgz.subarray(0, tgz.length - 200);
    expect(listTar(cut, 1000)).toMatchObject({ isTar: true, complete: false });
  });

  it('reads a crafted gzip header in time proportional to its size: a name that never ends is not read past 64 KB', () => {
    const endless = Buffer.concat([Buffer.from([0x1f, 0x8b, 0x08, 0x08, 0, 0, 0, 0, 0, 3]), Buffer.alloc(16 * 1024 * 1024, 'A')]);
    expect(listTar(endless, 65_536)).toEqual({ isTar: false, entries: [], complete: false });
  });

  it('reads the gzip as extractors do: an extra field of 64 KB, a second member (incomplete), a stored block cut short (incomplete)', () => {
    const tar = Buffer.concat([block('a.txt', 1, '0', Buffer.from('x')), block('evil.exe', 2, '0', Buffer.from('MZ')), EOF_BLOCKS]);
    const gz = gzipSync(tar);
    // The extra field at its largest (FEXTRA set in the flags, 65 535 bytes).
    const extra = Buffer.concat([gz.subarray(0, 3), Buffer.from([gz[3]! | 0x04]), gz.subarray(4, 10), Buffer.from([0xff, 0xff]), Buffer.alloc(65_535), gz.subarray(10)]);
    expect(listedByTarAnyway(extra)).toEqual(['a.txt', 'evil.exe']);
    expect(listTar(extra, 1000)).toEqual({ isTar: true, entries: ['a.txt', 'evil.exe'], complete: true });
    // An empty member first: the tar is in the second one, which extractors read.
    const second = Buffer.concat([gzipSync(Buffer.alloc(0)), gz]);
    expect(listedByTarAnyway(second)).toEqual(['a.txt', 'evil.exe']);
    expect(listTar(second, 1000)).toMatchObject({ complete: false });
    // Stored (level 0) and cut short: the inflater gives nothing of a stored block until it is whole.
    const stored = gzipSync(tar, { level: 0 });
    expect(listedByTarAnyway(stored.subarray(0, stored.length - 20))).toContain('evil.exe');
    expect(listTar(stored.subarray(0, stored.length - 20), 1000)).toMatchObject({ complete: false });
    // Whole, the same file is read whole; a lone member with its trailer is no cause for doubt.
    expect(listTar(stored, 1000)).toEqual({ isTar: true, entries: ['a.txt', 'evil.exe'], complete: true });
    expect(listTar(gzipSync(Buffer.from('a short note')), 1000)).toEqual({ isTar: false, entries: [], complete: true });
  });

  it('lists the files before the cut of an archive cut short, as extractors do', () => {
    const archive = gnuTar('gnu');
    const cut = archive.subarray(0, 3 * 512);
    expect(listTar(cut, 100)).toMatchObject({ isTar: true, complete: true });
    expect(listTar(cut, 100).entries).toEqual(listedByTar(archive).slice(0, 2));
  });

  it('as an attachment: a .tar.gz holding a program is quarantined by the shipped policy, a tar inside a zip too', async () => {
    const tgz = await inspectAttachment(gnuTar('posix', true), 'factures.tar.gz');
    expect(tgz.message.attachments[0]).toMatchObject({ name: 'factures.tar.gz', detectedType: 'gzip' });
    expect(tgz.message.attachments[0]!.archiveEntries).toContain('Factures/facture-2025.pdf.scr');
    expect(tgz.verdict).toMatchObject({ action: 'quarantine', rule: { id: 'attachments.executable' } });

    const plain = await inspectAttachment(gnuTar('gnu', false, false), 'factures.dat');
    expect(plain.message.attachments[0]).toMatchObject({ detectedType: 'tar' });
    expect(plain.verdict).toMatchObject({ action: 'quarantine', rule: { id: 'attachments.executable' } });

    const dir = mkdtempSync(join(root, 'zip-'));
    writeFileSync(join(dir, 'docs.tar'), gnuTar('gnu', false, false));
    execFileSync('zip', ['-q', '-X', 'docs.zip', 'docs.tar'], { cwd: dir });
    const zipped = readFileSync(join(dir, 'docs.zip'));
    expect(zipped.readUInt16LE(8), 'deflated').toBe(8);
    const inZip = await inspectAttachment(zipped, 'docs.zip');
    expect(inZip.message.attachments[0]!.archiveEntries).toContain('docs.tar/Factures/facture-2025.pdf.scr');
    expect(inZip.verdict).toMatchObject({ action: 'quarantine', rule: { id: 'attachments.executable' } });

    const clean = await inspectAttachment(gzipSync(Buffer.alloc(10_000, 'bonjour ')), 'notes.txt.gz');
    expect(clean.message.attachments[0]!.archiveEntries).toEqual(['notes.txt']);
    expect(clean.verdict.action).toBe('continue');
  });
});

/** A tar (GNU tar) of these files, gzipped when asked. */
function tarOf(files: Record<string, Buffer>, gzip = false): Buffer {
  const dir = mkdtempSync(join(root, 'of-'));
  for (const [name, data] of Object.entries(files)) {
    mkdirSync(dirname(join(dir, 'in', name)), { recursive: true });
    writeFileSync(join(dir, 'in', name), data);
  }
  execFileSync('tar', [gzip ? '-czf' : '-cf', join(dir, 'out'), '-C', join(dir, 'in'), ...Object.keys(files)], { env: UTF8 });
  return readFileSync(join(dir, 'out'));
}

const program = Buffer.from('MZ\x90\x00stand-in program');

describe('archives inside a tar', () => {
  it('lists the archives in a tar as they stream by: a zip, a 7z, a gzipped tar, each under the name of its file', () => {
    const dir = mkdtempSync(join(root, 'inner-'));
    writeFileSync(join(dir, 'outil.exe'), program);
    execFileSync('7zz', ['a', '-bd', '-y', join(dir, 'outils.7z'), join(dir, 'outil.exe')], { stdio: 'ignore' });
    const outer = tarOf({
      'LISEZ-MOI.txt': Buffer.alloc(3000, 'bonjour '),
      'annexes/docs.zip': zip([{ name: 'facture.exe', content: program }]),
      'outils.7z': readFileSync(join(dir, 'outils.7z')),
      'sauvegarde.tgz': tarOf({ 'script.js': Buffer.from('WScript.Echo(1)') }, true),
    }, true);
    // What bsdtar extracts from the zip in the tar.
    const file = join(dir, 'outer.tar.gz');
    writeFileSync(file, outer);
    const inner = execFileSync('bsdtar', ['-xOf', file, 'annexes/docs.zip']);
    expect(execFileSync('bsdtar', ['-tf', '-'], { input: inner }).toString()).toBe('facture.exe\n');

    const expected = ['LISEZ-MOI.txt', 'annexes/docs.zip', 'annexes/docs.zip/facture.exe', 'outils.7z', 'outils.7z/outil.exe', 'sauvegarde.tgz', 'sauvegarde.tgz/script.js'];
    for (const chunk of [outer.length, 1000, 65_536]) {
      const listing = listTar(outer, chunk);
      expect([...listing.entries].sort(), `chunks of ${chunk}`).toEqual(expected);
      expect(listing).toMatchObject({ isTar: true, complete: true });
    }
  });

  it('opens three levels below the attachment and no more, within the message budget of inner archives; an encrypted zip in a tar is said so', () => {
    const level3 = zip([{ name: 'evil.exe', content: program }]);
    const level2 = tarOf({ 'l3.zip': level3 });
    const level1 = zip([{ name: 'l2.tar', content: level2 }]);
    const three = tarOf({ 'l1.zip': level1 });
    expect(listTar(three, 4096)).toMatchObject({ complete: true, entries: expect.arrayContaining(['l1.zip/l2.tar/l3.zip/evil.exe']) });
    const four = tarOf({ 'l0.tar': three });
    expect(listTar(four, 4096)).toMatchObject({ complete: false, entries: expect.arrayContaining(['l0.tar/l1.zip/l2.tar/l3.zip']) });

    const withZip = tarOf({ 'docs.zip': level3 });
    expect(listTar(withZip, 4096, { archives: 0 })).toMatchObject({ complete: false, entries: ['docs.zip'] });

    const encrypted = tarLister(tarOf({ 'docs.zip': zip([{ name: 'facture.exe', content: program }], { encrypted: true }) }), 4096);
    expect(encrypted.listing).toMatchObject({ complete: true, entries: ['docs.zip', 'docs.zip/facture.exe'] });
    expect(encrypted.encrypted).toBe(true);
    expect(tarLister(withZip, 4096).encrypted).toBe(false);
  });

  it('as an attachment: a .tar.gz holding a zip holding a program is quarantined by the shipped policy', async () => {
    const found = await inspectAttachment(tarOf({ 'docs.zip': zip([{ name: 'facture.pdf.exe', content: program }]), 'notes.txt': Buffer.from('bonjour') }, true), 'archives.tar.gz');
    expect(found.message.attachments[0]!.archiveEntries).toContain('docs.zip/facture.pdf.exe');
    expect(found.verdict).toMatchObject({ action: 'quarantine', rule: { id: 'attachments.executable' } });

    const encrypted = await inspectAttachment(tarOf({ 'docs.zip': zip([{ name: 'facture.pdf', content: program }], { encrypted: true }) }), 'archives.tar');
    expect(encrypted.message.attachments[0]).toMatchObject({ detectedType: 'tar', encrypted: true });
  });
});

describe('archives inside a tar, as extractors reach them', () => {
  const innerZip = zip([{ name: 'evil.exe', content: program }]);

  it('opens a file of a type extractors do not know (they write it as a regular file), one named by a pax path up to a NUL, and one named by a global path', () => {
    for (const type of ['Q', '8']) {
      const archive = Buffer.concat([block('inner.zip', innerZip.length, type, innerZip), EOF_BLOCKS]);
      expect(listedByBsdtar(archive), type).toEqual(['inner.zip']);
      expect(listTar(archive, 1000), type).toMatchObject({ complete: true, entries: ['inner.zip', 'inner.zip/evil.exe'] });
    }
    const nul = Buffer.concat([paxHeader('x', record('path', 'inner.zip\0.txt')), block('other', innerZip.length, '0', innerZip), EOF_BLOCKS]);
    expect(listedByBsdtar(nul)).toEqual(['inner.zip']);
    expect(listTar(nul, 1000)).toMatchObject({ complete: true, entries: expect.arrayContaining(['inner.zip/evil.exe']) });
    const global = Buffer.concat([paxHeader('g', record('path', 'inner.zip')), block('other', innerZip.length, '0', innerZip), EOF_BLOCKS]);
    expect(listedByTarAnyway(global)).toContain('inner.zip');
    expect(listTar(global, 1000)).toMatchObject({ complete: true, entries: expect.arrayContaining(['inner.zip/evil.exe']) });
  });

  it('a sparse file, a multi-volume part, or a link named like an archive leading to a file of the tar not opened, leaves the listing incomplete; a link to an archive listed here, or out of the tar, does not', () => {
    const dir = mkdtempSync(join(root, 'sparse-'));
    // A zip after a hole of a megabyte: extractors open it whole, its data in the tar is not laid out so.
    const fd = openSync(join(dir, 'inner.zip'), 'w');
    writeSync(fd, innerZip, 0, innerZip.length, 1 << 20);
    closeSync(fd);
    for (const format of [['--format=gnu'], ['--format=pax', '--sparse-version=1.0'], ['--format=pax', '--sparse-version=0.1']]) {
      const archive = execFileSync('tar', ['--sparse', ...format, '-cf', '-', '-C', dir, 'inner.zip']);
      expect(listedByTar(archive), format.join(' ')).toEqual(['inner.zip']);
      expect(listTar(archive, 4096), format.join(' ')).toMatchObject({ complete: false });
    }

    const links = mkdtempSync(join(root, 'links-'));
    writeFileSync(join(links, 'notes.txt'), innerZip);
    linkSync(join(links, 'notes.txt'), join(links, 'inner.zip'));
    symlinkSync('notes.txt', join(links, 'lien.zip'));
    writeFileSync(join(links, 'a.zip'), innerZip);
    linkSync(join(links, 'a.zip'), join(links, 'b.zip'));
    const tarOfLinks = (...names: string[]) => execFileSync('tar', ['-cf', '-', '-C', links, ...names]);
    expect(listTar(tarOfLinks('notes.txt', 'inner.zip'), 4096), 'a hard link named .zip to a text').toMatchObject({ complete: false });
    expect(listTar(tarOfLinks('notes.txt', 'lien.zip'), 4096), 'a symbolic link named .zip').toMatchObject({ complete: false });
    expect(listTar(tarOfLinks('a.zip', 'b.zip'), 4096), 'a hard link to a zip listed here').toMatchObject({ complete: true, entries: ['a.zip', 'a.zip/evil.exe', 'b.zip'] });
    // Written as "./notes.txt" and "./lien.zip" (tar -C dir .): the same files, the link's folder read as the tar's top.
    const dotted = execFileSync('tar', ['-cf', '-', '-C', links, './notes.txt', './inner.zip']);
    expect(listTar(dotted, 4096), 'names starting with ./').toMatchObject({ complete: false });
    const dottedSymlink = execFileSync('tar', ['-cf', '-', '-C', links, './notes.txt', './lien.zip']);
    expect(listTar(dottedSymlink, 4096), 'a symbolic link written ./lien.zip').toMatchObject({ complete: false });
    // A symbolic link to an archive of the tar, written before it (latest.tar.gz next to the versions),
    // or leading out of the tar, brings nothing unlisted.
    const releases = mkdtempSync(join(root, 'releases-'));
    mkdirSync(join(releases, 'versions'));
    writeFileSync(join(releases, 'versions', 'app-1.2.tar.gz'), gzipSync(tarOf({ 'app.js': Buffer.from('1') })));
    symlinkSync('versions/app-1.2.tar.gz', join(releases, 'latest.tar.gz'));
    symlinkSync('../../ailleurs.zip', join(releases, 'versions', 'dehors.zip'));
    const linkFirst = execFileSync('tar', ['-cf', '-', '-C', releases, 'latest.tar.gz', 'versions']);
    expect(listedByTar(linkFirst)[0]).toBe('latest.tar.gz');
    expect(listTar(linkFirst, 4096)).toMatchObject({ complete: true, entries: expect.arrayContaining(['versions/app-1.2.tar.gz/app.js']) });

    expect(listTar(Buffer.concat([block('inner.zip', innerZip.length, 'M', innerZip), EOF_BLOCKS]), 1000), 'a multi-volume part').toMatchObject({ complete: false });
  });

  it('opens each of the 1500 gzipped logs of a tar (a year and more of rotated logs), and lists it whole', () => {
    const dir = mkdtempSync(join(root, 'logs-'));
    const names = datedLogs(dir, 1500);
    writeFileSync(join(dir, 'files'), names.join('\n'));
    const archive = execFileSync('tar', ['-czf', '-', '-T', 'files'], { cwd: dir, maxBuffer: 1 << 26 });
    const listing = listTar(archive, 65_536);
    expect(listing.complete).toBe(true);
    expect(listing.entries).toEqual(expect.arrayContaining(['app.log-20230101.gz', 'app.log-20230101.gz/app.log-20230101']));
  });

  it('at the gateway limit of 1000 names, a tar of 2000 logs rotated by date (app.log-20230101.gz) is listed: dated extensions are one kind', () => {
    const dir = mkdtempSync(join(root, 'dated-'));
    const names = datedLogs(dir, 2000);
    // Past the first 1000 names, a program still shows, and so does each new kind of extension.
    writeFileSync(join(dir, 'facture.pdf.exe'), 'MZ');
    writeFileSync(join(dir, 'setup.ps1'), 'Write-Host');
    writeFileSync(join(dir, 'notes.log-v2'), 'v2');
    names.push('facture.pdf.exe', 'setup.ps1', 'notes.log-v2');
    writeFileSync(join(dir, 'files'), names.join('\n'));
    const archive = execFileSync('tar', ['-cf', '-', '-T', 'files'], { cwd: dir, maxBuffer: 1 << 26 });
    const listing = listTar(archive, 1000);
    expect(listing.complete).toBe(true);
    expect(listing.entries).toEqual(expect.arrayContaining(['app.log-20230101.gz', 'app.log-20230101.gz/app.log-20230101', 'facture.pdf.exe', 'setup.ps1', 'notes.log-v2']));

    // 1001 new kinds of extension past the limit are still more than can be listed.
    const many = mkdtempSync(join(root, 'kinds-'));
    const kinds: string[] = [];
    for (let i = 0; i < 2100; i++) kinds.push(i < 1000 ? `f${i}.txt` : `f.${letterWord(i)}`);
    kinds.forEach((n) => writeFileSync(join(many, n), ''));
    writeFileSync(join(many, 'files'), kinds.join('\n'));
    expect(listTar(execFileSync('tar', ['-cf', '-', '-T', 'files'], { cwd: many, maxBuffer: 1 << 26 }), 1000).complete).toBe(false);
  });

  it('lists a GNU incremental backup whole: its directories (type D) carry their list of names as data, which extractors skip', () => {
    const dir = mkdtempSync(join(root, 'incremental-'));
    mkdirSync(join(dir, 'docs'));
    writeFileSync(join(dir, 'docs', 'facture.pdf'), '%PDF');
    const archive = execFileSync('tar', ['-g', join(dir, 'snapshot'), '-cf', '-', '-C', dir, 'docs']);
    expect(archive[156]).toBe('D'.charCodeAt(0));
    expect(listedByTar(archive)).toEqual(['docs/', 'docs/facture.pdf']);
    expect(listTar(archive, 4096)).toEqual({ isTar: true, entries: ['docs/', 'docs/facture.pdf'], complete: true });
  });

  it('a tar cut short inside an archive still lists what it showed, and the one file of a small gzip in it', () => {
    const gz = gzipSync(Buffer.from('@echo off'));
    const full = tarOf({ 'run.bat.gz': gz });
    // Cut right after the file's bytes: before its padding and the end blocks.
    const cut = full.subarray(0, 512 + gz.length);
    expect(listedByBsdtar(cut)).toEqual(['run.bat.gz']);
    expect(listTar(cut, 4096)).toMatchObject({ isTar: true, entries: ['run.bat.gz', 'run.bat.gz/run.bat'] });
  });

  it('says the listing is incomplete where extractors read a hard link size, or a file named like a directory, as data of their own', () => {
    const hidden = block('evil.exe', program.length, '0', program);
    const linkWithData = Buffer.concat([block('lien.txt', hidden.length, '1', hidden), EOF_BLOCKS]);
    expect(listedByBsdtar(linkWithData)).toContain('lien.txt');
    expect(listTar(linkWithData, 1000)).toMatchObject({ complete: false });
    const directoryWithData = Buffer.concat([block('docs/', hidden.length, '0', hidden), EOF_BLOCKS]);
    expect(listedByBsdtar(directoryWithData)).toEqual(['docs/', 'evil.exe']);
    expect(listTar(directoryWithData, 1000)).toMatchObject({ complete: false });
  });
});

describe('gzip names and encryption as 7-Zip and the policy see them', () => {
  it('a gzip whose stored name lies past the bytes kept, behind a long extra field, is refused: 7-Zip extracts it under that name', async () => {
    const head = Buffer.from([0x1f, 0x8b, 0x08, 0x0c, 0, 0, 0, 0, 0, 3]);
    const extra = Buffer.concat([Buffer.from('XY'), Buffer.alloc(2), Buffer.alloc(4996)]);
    extra.writeUInt16LE(4996, 2);
    const length = Buffer.alloc(2);
    length.writeUInt16LE(extra.length);
    const trailer = Buffer.alloc(8);
    trailer.writeUInt32LE(crc32(program), 0);
    trailer.writeUInt32LE(program.length, 4);
    const gz = Buffer.concat([head, length, extra, Buffer.from('evil.exe\0'), deflateRawSync(program), trailer]);
    const dir = mkdtempSync(join(root, 'fname-'));
    writeFileSync(join(dir, 'notes.txt.gz'), gz);
    expect(execFileSync('7zz', ['l', '-slt', join(dir, 'notes.txt.gz')]).toString()).toMatch(/^Path = evil\.exe$/m);
    const found = await inspectAttachment(gz, 'notes.txt.gz');
    expect(found.verdict).toMatchObject({ action: 'reject', rule: { id: 'mime.too-complex' } });
    expect(listTar(tarOf({ 'notes.txt.gz': gz }), 4096)).toMatchObject({ complete: false });
  });

  it('a disk image compressed (facture.iso.gz), whose files cannot be listed without decompressing it whole, is refused, as an attachment and inside a zip', async () => {
    const dir = mkdtempSync(join(root, 'image-'));
    mkdirSync(join(dir, 'in'));
    writeFileSync(join(dir, 'in', 'facture.exe'), program);
    execFileSync('genisoimage', ['-quiet', '-o', join(dir, 'facture.iso'), join(dir, 'in')]);
    const gz = gzipSync(readFileSync(join(dir, 'facture.iso')));
    writeFileSync(join(dir, 'facture.iso.gz'), gz);
    expect(execFileSync('7zz', ['l', '-slt', join(dir, 'facture.iso.gz')]).toString()).toMatch(/^Path = facture\.iso$/m);
    const attached = await inspectAttachment(gz, 'facture.iso.gz');
    expect(attached.verdict).toMatchObject({ action: 'reject', rule: { id: 'mime.too-complex' } });
    const zipped = await inspectAttachment(zip([{ name: 'docs/facture.iso.gz', content: gz }]), 'docs.zip');
    expect(zipped.verdict).toMatchObject({ action: 'reject', rule: { id: 'mime.too-complex' } });
    // A tar named so is listed, and judged by what it holds.
    const tarred = await inspectAttachment(gzipSync(tarOf({ 'notes.txt': Buffer.from('bonjour') })), 'sauvegarde.img.gz');
    expect(tarred.verdict.action).toBe('continue');
  });

  it('a tar holding an encrypted zip is encrypted, also when it holds a 7z as well', async () => {
    const dir = mkdtempSync(join(root, 'enc-'));
    writeFileSync(join(dir, 'notes.txt'), 'bonjour');
    execFileSync('7zz', ['a', '-bd', '-y', join(dir, 'in.7z'), join(dir, 'notes.txt')], { stdio: 'ignore' });
    const archive = tarOf({ 'in.7z': readFileSync(join(dir, 'in.7z')), 'enc.zip': zip([{ name: 'facture.pdf', content: Buffer.from('%PDF') }], { encrypted: true }) });
    const found = await inspectAttachment(archive, 'archives.tar');
    expect(found.message.attachments[0]).toMatchObject({ encrypted: true });
  });
});
