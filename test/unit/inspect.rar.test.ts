// RAR archives (RAR 5 and RAR 1.5–4) listed as they stream. The archives are written by test/harness/rar.ts
// and each is first listed by two independent readers, libarchive's bsdtar and The Unarchiver's lsar: what
// they show is what Douane must find. Then the shipped policy judging what is inside.

import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { crc32 } from 'node:zlib';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { RarLister } from '../../src/inspect/rar.js';
import { inspectAttachment, zip } from '../harness/mime.js';
import { rar4, rar5, type RarFile } from '../harness/rar.js';

const dir = mkdtempSync(join(tmpdir(), 'douane-rar-'));
const UTF8 = { ...process.env, LANG: 'C.UTF-8', LC_ALL: 'C.UTF-8' };

/** The names one reader lists in the archive (a directory's without its trailing "/"). */
function listedBy(reader: 'bsdtar' | 'lsar', archive: Buffer): string[] {
  const file = join(dir, `a${Math.random().toString(36).slice(2)}.rar`);
  writeFileSync(file, archive);
  const out = execFileSync(reader, reader === 'bsdtar' ? ['-tf', file] : [file], { env: UTF8 }).toString('utf8').split('\n');
  return (reader === 'lsar' ? out.slice(1) : out).filter(Boolean).map((n) => n.replace(/\/$/, ''));
}

/** The names bsdtar and lsar list in the archive (each must list them all, in the same order). */
function namesByReaders(archive: Buffer): { bsdtar: string[]; lsar: string[] } {
  return { bsdtar: listedBy('bsdtar', archive), lsar: listedBy('lsar', archive) };
}

function list(bytes: Buffer, chunk: number) {
  const lister = new RarLister(1000);
  for (let i = 0; i < bytes.length; i += chunk) lister.push(bytes.subarray(i, i + chunk));
  return lister.listing;
}

const FILES: RarFile[] = [
  { name: 'Factures', directory: true },
  { name: 'Factures/facture-2025.pdf', data: Buffer.from('%PDF-1.4 not really') },
  { name: 'Factures/facture-2025.pdf.scr', data: Buffer.from('MZ\x90\x00stand-in program') },
  { name: 'LISEZ-MOI.txt', data: Buffer.alloc(70_000, 'bonjour ') },
];
/** what the readers print (without a directory's trailing "/") */
const NAMES = FILES.map((f) => f.name);
/** what Douane lists: a directory ends with "/" (a folder named "x.exe" is no program) */
const LISTED = FILES.map((f) => (f.directory ? `${f.name}/` : f.name));

describe('RAR listing', () => {
  for (const [version, write] of [['RAR 5', rar5], ['RAR 4', rar4]] as const) {
    it(`${version}: lists what bsdtar and lsar list, however the archive is cut`, () => {
      const archive = write(FILES);
      const readers = namesByReaders(archive);
      expect(readers.bsdtar).toEqual(NAMES);
      expect(readers.lsar).toEqual(NAMES);
      for (const chunk of [archive.length, 1, 7, 1000, 65_536]) {
        expect(list(archive, chunk)).toEqual({ isRar: true, entries: LISTED, complete: true, encrypted: false });
      }
    });

    it(`${version}: Unicode names`, () => {
      // RAR 4 packs a Unicode name against its DOS name: this mix uses each of its ways of doing so
      // (one byte, one under the common high byte, two bytes, runs copied from the DOS name as they are
      // or corrected by a constant).
      const files: RarFile[] = [
        { name: 'Überweisung für Müller.exe', data: Buffer.from('MZ') },
        { name: 'счёт-фактура.pdf.js', data: Buffer.from('x') },
        { name: 'ЖЖЖЖ.txt', dosName: '\x86\x86\x86\x86.txt', data: Buffer.from('x') },
        { name: 'facture €2025 — 日本.lnk', data: Buffer.from('L') },
      ];
      const archive = write(files);
      const names = files.map((f) => f.name);
      const readers = namesByReaders(archive);
      expect(readers.bsdtar).toEqual(names);
      expect(readers.lsar).toEqual(names);
      for (const chunk of [archive.length, 3]) expect(list(archive, chunk).entries).toEqual(names);
    });

    it(`${version}: an encrypted file is listed and the archive said encrypted; encrypted headers hide every name: incomplete`, () => {
      const archive = write([{ name: 'readme.txt', data: Buffer.from('hello') }, { name: 'setup.exe', data: Buffer.alloc(64, 0x33), encrypted: true }]);
      expect(namesByReaders(archive).bsdtar).toEqual(['readme.txt', 'setup.exe']);
      expect(list(archive, 100)).toEqual({ isRar: true, entries: ['readme.txt', 'setup.exe'], complete: true, encrypted: true });

      expect(list(write(FILES, { encryptedHeaders: true }), 100)).toEqual({ isRar: true, entries: [], complete: false, encrypted: true });
    });

    it(`${version}: a header that does not check is not trusted (incomplete); a cut archive lists what is before the cut`, () => {
      const archive = write(FILES);
      const name = archive.indexOf('facture-2025.pdf.scr', 0, 'latin1');
      const broken = Buffer.from(archive);
      broken[name] = 0x46; // "Factures/Facture-…": the header's checksum no longer matches
      expect(list(broken, 512)).toMatchObject({ isRar: true, entries: ['Factures/', 'Factures/facture-2025.pdf'], complete: false });

      const cut = archive.subarray(0, archive.indexOf('LISEZ-MOI', 0, 'latin1') - 4);
      expect(list(cut, 512)).toEqual({ isRar: true, entries: LISTED.slice(0, 3), complete: true, encrypted: false });
    });
  }

  it('RAR 4: the sizes of a large file (high 32 bits) are read', () => {
    const archive = rar4(FILES, { large: true });
    const readers = namesByReaders(archive);
    expect(readers.bsdtar).toEqual(NAMES);
    expect(readers.lsar).toEqual(NAMES);
    expect(list(archive, 4096).entries).toEqual(LISTED);
    // A first file of 4 GB and more: what follows it is past this attachment's end.
    const files = [{ ...FILES[1]!, highPackSize: 1 }, FILES[2]!];
    expect(list(rar4(files, { large: true }), 4096).entries).toEqual(['Factures/facture-2025.pdf']);
  });

  it('reads names as the extractors do: up to a NUL or a byte that is not UTF-8 (unrar), and with it replaced (others)', () => {
    // unrar (non-free, not installed here) cuts a name at a NUL or at a byte that is not UTF-8; The
    // Unarchiver shows the rest with the byte replaced; both names are listed, so that neither
    // "evil.exe\0.txt" nor "readme.txt\0.exe" passes for harmless. Where bsdtar or lsar show one of
    // the names, they confirm it; packed RAR 4 names are unpacked as unrar's EncodeFileName::Decode does.
    const exe = Buffer.from('evil.exe', 'latin1');
    const packed = (bytes: number[]) => Buffer.concat([exe, Buffer.from([0, ...bytes])]);
    const MZ = Buffer.from('MZ');
    const cases: { archive: Buffer; listed: string[]; shown?: ['bsdtar' | 'lsar', string] }[] = [
      { archive: rar5([{ name: '', rawName: Buffer.from('evil.exe\0.txt', 'latin1'), data: MZ }]), listed: ['evil.exe', 'evil.exe_.txt'], shown: ['bsdtar', 'evil.exe'] },
      { archive: rar4([{ name: '', rawName: Buffer.from('evil.exe\0.txt', 'latin1'), data: MZ }]), listed: ['evil.exe', 'evil.exe_.txt'], shown: ['bsdtar', 'evil.exe'] },
      { archive: rar4([{ name: '', rawName: Buffer.from('readme.txt\0.exe', 'latin1'), data: MZ }]), listed: ['readme.txt', 'readme.txt_.exe'] },
      { archive: rar5([{ name: '', rawName: Buffer.concat([exe, Buffer.from([0xff]), Buffer.from('.txt')]), data: MZ }]), listed: ['evil.exe', 'evil.exe\ufffd.txt'], shown: ['lsar', 'evil.exe%ff.txt'] },
      // U+FFFD written in UTF-8 is a character like any other.
      { archive: rar5([{ name: 'readme.txt\ufffd.exe', data: MZ }]), listed: ['readme.txt\ufffd.exe'], shown: ['bsdtar', 'readme.txt\ufffd.exe'] },
      // Packed: nothing packed at all (the byte name stands); a flags byte and nothing after it; a copied
      // run longer than the byte name (it reads on into the field: its zero, then the high byte).
      { archive: rar4([{ name: '', rawName: packed([]), unicodeFlag: true, data: MZ }]), listed: ['evil.exe'], shown: ['lsar', 'evil.exe'] },
      { archive: rar4([{ name: '', rawName: packed([0x00, 0x00]), unicodeFlag: true, data: MZ }]), listed: ['evil.exe'] },
      { archive: rar4([{ name: '', rawName: packed([0x00, 0xc0, 0x08, 0x2e, 0x74, 0x78, 0x00, 0x74]), unicodeFlag: true, data: MZ }]), listed: ['evil.exe', 'evil.exe__.txt'], shown: ['bsdtar', 'evil.exe'] },
    ];
    for (const { archive, listed, shown } of cases) {
      if (shown) expect(listedBy(shown[0], archive)).toEqual([shown[1]]);
      for (const chunk of [archive.length, 5]) expect(list(archive, chunk).entries).toEqual(listed);
    }
  });

  it('RAR 4: a file header without the "data follows" flag still has its data skipped (data that looks like an end block hides nothing)', () => {
    const end = Buffer.from([0xc4, 0x3d, 0x7b, 0x00, 0x40, 0x07, 0x00]);
    const archive = rar4([{ name: 'readme.txt', data: end, clearFlags: 0x8000 }, { name: 'payload.exe', data: Buffer.from('MZ') }]);
    expect(end.readUInt16LE(0)).toBe(crc32(end.subarray(2)) & 0xffff); // a valid end block
    const readers = namesByReaders(archive);
    expect(readers.bsdtar).toEqual(['readme.txt', 'payload.exe']);
    expect(readers.lsar).toEqual(['readme.txt', 'payload.exe']);
    expect(list(archive, 64)).toEqual({ isRar: true, entries: ['readme.txt', 'payload.exe'], complete: true, encrypted: false });
  });

  it('finds an archive behind other bytes, as unrar does (a self-extractor\'s stub, or anything)', () => {
    const prefix = Buffer.from('MZ\x90\x00 stub or junk\r\nRar!\x1a\x07\x02 not quite');
    // lsar finds the RAR 4 one ("Embedded RAR"); unrar looks for either in the first 2 MB.
    expect(listedBy('lsar', rar4([{ name: 'payload.exe', data: Buffer.from('MZ') }], { prefix }))).toEqual(['payload.exe']);
    for (const write of [rar4, rar5]) {
      const archive = write([{ name: 'payload.exe', data: Buffer.from('MZ') }], { prefix });
      for (const chunk of [archive.length, 1, 3, 9]) expect(list(archive, chunk)).toMatchObject({ isRar: true, entries: ['payload.exe'], complete: true });
    }
    // Not past where unrar looks (2 MB).
    expect(list(rar5([{ name: 'payload.exe', data: Buffer.from('MZ') }], { prefix: Buffer.alloc(3 * 1024 * 1024, 0x41) }), 65_536)).toMatchObject({ isRar: false, entries: [] });
  });

  it('is not fooled by other content, and stops at a header larger than any real one', () => {
    expect(list(Buffer.from('Rar! is how this text file starts'), 10)).toMatchObject({ isRar: false, entries: [], complete: true });
    expect(list(Buffer.alloc(100_000, 0x41), 4096)).toMatchObject({ isRar: false, entries: [] });
    // A RAR 5 header claiming 512 KB (a 3-byte size, as real ones are written): not waited for.
    const huge = Buffer.concat([Buffer.from('Rar!\x1a\x07\x01\x00', 'latin1'), Buffer.from([0, 0, 0, 0, 0x80, 0x80, 0x20]), Buffer.alloc(300_000)]);
    expect(list(huge, 4096)).toMatchObject({ isRar: true, complete: false });
    // A hundred thousand empty blocks (valid, of a type extractors skip): past the headers read.
    const empty = Buffer.from([0x77, 0, 0, 7, 0]);
    const block = Buffer.concat([Buffer.alloc(2), empty]);
    block.writeUInt16LE(crc32(empty) & 0xffff, 0);
    const late = rar4([{ name: 'late.exe', data: Buffer.from('MZ') }]).subarray(7);
    const blocks = (n: number) => Buffer.concat([Buffer.from('Rar!\x1a\x07\x00', 'latin1'), ...Array.from({ length: n }, () => block), late]);
    expect(list(blocks(1000), 65_536)).toMatchObject({ entries: ['late.exe'], complete: true });
    expect(list(blocks(100_001), 65_536)).toMatchObject({ isRar: true, complete: false });
    // Past 10 names, only new extensions are kept (10 more): 30 kinds of names are too many.
    const lister = new RarLister(10);
    lister.push(rar5(Array.from({ length: 30 }, (_, i) => ({ name: `f${i}.e${i}`, data: Buffer.from('x') }))));
    expect(lister.listing.complete).toBe(false);
  });

  it('as an attachment: listed whatever its name, its program quarantined by the shipped policy; encrypted headers are refused as too complex', async () => {
    const plain = await inspectAttachment(rar5(FILES), 'facture.pdf');
    expect(plain.message.attachments[0]).toMatchObject({ name: 'facture.pdf', detectedType: 'rar', encrypted: false, archiveEntries: LISTED });
    expect(plain.message.mimeLimitExceeded).toBeUndefined();
    expect(plain.verdict).toMatchObject({ action: 'quarantine', rule: { id: 'attachments.executable' } });

    // Inside a zip, the same.
    const zipped = await inspectAttachment(zip([{ name: 'docs.rar', content: rar4(FILES) }]), 'docs.zip');
    expect(zipped.message.attachments[0]!.archiveEntries).toEqual(expect.arrayContaining(['docs.rar', ...LISTED.map((n) => `docs.rar/${n}`)]));
    expect(zipped.verdict).toMatchObject({ action: 'quarantine', rule: { id: 'attachments.executable' } });

    // Zipped by zip and by bsdtar: the RAR, incompressible, is deflated in stored blocks, so its first bytes
    // show in the zip; the zip lister opens it, and nothing is taken for a broken archive.
    const photos: RarFile[] = [{ name: 'a.jpg', data: randomBytes(200_000) }, { name: 'b.jpg', data: randomBytes(200_000) }];
    for (const write of [rar4, rar5]) {
      const zipDir = mkdtempSync(join(tmpdir(), 'douane-rar-zip-'));
      writeFileSync(join(zipDir, 'photos.rar'), write(photos));
      execFileSync('zip', ['-q', '-X', 'infozip.zip', 'photos.rar'], { cwd: zipDir });
      execFileSync('bsdtar', ['-a', '-cf', 'libarchive.zip', 'photos.rar'], { cwd: zipDir });
      for (const made of ['infozip.zip', 'libarchive.zip']) {
        const { message, verdict } = await inspectAttachment(readFileSync(join(zipDir, made)), 'photos.zip');
        expect(message.attachments[0]!.archiveEntries).toEqual(['photos.rar', 'photos.rar/a.jpg', 'photos.rar/b.jpg']);
        expect(message.mimeLimitExceeded).toBeUndefined();
        expect(verdict.action).toBe('continue');
      }
    }

    const hidden = await inspectAttachment(rar4(FILES, { encryptedHeaders: true }), 'facture.pdf');
    expect(hidden.message.attachments[0]).toMatchObject({ detectedType: 'rar', encrypted: true, archiveEntries: [] });
    expect(hidden.message.mimeLimitExceeded).toBe('archive_entries');
    expect(hidden.verdict).toMatchObject({ action: 'reject', rule: { id: 'mime.too-complex' } });
  });
});
