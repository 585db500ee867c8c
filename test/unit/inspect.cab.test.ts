// Microsoft Cabinet (.cab) archives, listed as they stream. Windows Explorer opens them with a double
// click. The archives are made by gcab (stored and MSZIP), and what cabextract lists in each is what
// Douane must find; crafted ones (names in a code page, a table cut or out of bounds) are checked with
// cabextract too. Then the shipped policy judging what is inside.

import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CabLister } from '../../src/inspect/cab.js';
import { detectType } from '../../src/inspect/magic.js';
import { inspectAttachment, zip } from '../harness/mime.js';

const root = mkdtempSync(join(tmpdir(), 'douane-cab-'));
const UTF8 = { ...process.env, LANG: 'C.UTF-8', LC_ALL: 'C.UTF-8' };

/** A cabinet made by gcab of a folder with a program two levels down, a name not in ASCII and a big file. */
function gcab(compress: boolean): Buffer {
  const dir = mkdtempSync(join(root, 'in-'));
  const files: Record<string, Buffer> = {
    'Factures/2025/facture.pdf.exe': Buffer.from('MZ\x90\x00stand-in program'),
    'Reçus/été.txt': Buffer.from('bonjour'),
    'gros.bin': randomBytes(100_000),
  };
  for (const [name, data] of Object.entries(files)) {
    mkdirSync(dirname(join(dir, name)), { recursive: true });
    writeFileSync(join(dir, name), data);
  }
  execFileSync('gcab', ['-c', ...(compress ? ['-z'] : []), 'out.cab', ...Object.keys(files)], { cwd: dir, env: UTF8 });
  return readFileSync(join(dir, 'out.cab'));
}

/** What cabextract lists (its exit status says whether it could read the whole table). */
function listedByCabextract(cabinet: Buffer): { names: string[]; ok: boolean } {
  const file = join(mkdtempSync(join(root, 'l-')), 'a.cab');
  writeFileSync(file, cabinet);
  const run = spawnSync('cabextract', ['-l', file], { env: UTF8 });
  const names = run.stdout
    .toString('utf8')
    .split('\n')
    .filter((line) => /^\s*\d+ \|/.test(line))
    .map((line) => line.split(' | ').slice(2).join(' | '));
  return { names, ok: run.status === 0 };
}

/**
 * A stored cabinet written by hand: the header (with a reserved area, and the names of the cabinets before
 * and after it in a set, when asked), its folders, the file table (names as given, bytes and all, with the
 * UTF-8 attribute when asked), then the files' data in one block. `tableAt` writes another offset for the
 * table into the header than where it is.
 */
function cabinet(
  files: { name: Buffer | string; utf8?: boolean }[],
  opts: { reserve?: { header: number; folder: number }; previous?: boolean; next?: boolean; folders?: number; tableAt?: number } = {},
): Buffer {
  const content = Buffer.from('data');
  const entries = files.map(({ name, utf8 }, i) => {
    const raw = typeof name === 'string' ? Buffer.from(name, 'latin1') : name;
    const entry = Buffer.alloc(16);
    entry.writeUInt32LE(content.length, 0);
    entry.writeUInt32LE(0, 4); // every file is the same bytes, at the folder's start
    entry.writeUInt16LE(0, 8);
    entry.writeUInt16LE(0x5b7c, 10);
    entry.writeUInt16LE(0x2000 + i, 12);
    entry.writeUInt16LE(0x20 | (utf8 ? 0x80 : 0), 14);
    return Buffer.concat([entry, raw, Buffer.from([0])]);
  });
  const table = Buffer.concat(entries);
  const header = Buffer.alloc(36);
  let flags = 0;
  const extra: Buffer[] = [];
  if (opts.reserve) {
    flags |= 0x4;
    const sizes = Buffer.alloc(4);
    sizes.writeUInt16LE(opts.reserve.header, 0);
    sizes.writeUInt8(opts.reserve.folder, 2);
    extra.push(sizes, Buffer.alloc(opts.reserve.header, 0xaa));
  }
  if (opts.previous) {
    flags |= 0x1;
    extra.push(Buffer.from('avant.cab\0Disque 1\0', 'latin1'));
  }
  if (opts.next) {
    flags |= 0x2;
    extra.push(Buffer.from('apres.cab\0Disque 3\0', 'latin1'));
  }
  const folderCount = opts.folders ?? 1;
  const folderSize = 8 + (opts.reserve?.folder ?? 0);
  const tableAt = 36 + extra.reduce((n, b) => n + b.length, 0) + folderCount * folderSize;
  const dataAt = tableAt + table.length;
  const folders = Buffer.alloc(folderCount * folderSize);
  for (let i = 0; i < folderCount; i++) {
    folders.writeUInt32LE(dataAt, i * folderSize);
    folders.writeUInt16LE(1, i * folderSize + 4);
  }
  const block = Buffer.alloc(8);
  block.writeUInt16LE(content.length, 4);
  block.writeUInt16LE(content.length, 6);
  header.write('MSCF', 0, 'latin1');
  header.writeUInt32LE(dataAt + 8 + content.length, 8);
  header.writeUInt32LE(opts.tableAt ?? tableAt, 16);
  header.writeUInt8(3, 24);
  header.writeUInt8(1, 25);
  header.writeUInt16LE(folderCount, 26);
  header.writeUInt16LE(files.length, 28);
  header.writeUInt16LE(flags, 30);
  return Buffer.concat([header, ...extra, folders, table, block, content]);
}

function list(bytes: Buffer, chunk: number) {
  const lister = new CabLister(1000);
  for (let i = 0; i < bytes.length; i += chunk) lister.push(bytes.subarray(i, i + chunk));
  lister.end();
  const { isCab, entries, complete } = lister.listing;
  return { isCab, entries, complete };
}

/** What 7-Zip lists (the paths of `7zz l -slt`, past the archive's own). */
function listedBy7zip(cabinet: Buffer, name = 'a.cab'): string[] {
  const file = join(mkdtempSync(join(root, 's-')), name);
  writeFileSync(file, cabinet);
  const out = spawnSync('7zz', ['l', '-slt', file]).stdout.toString('utf8');
  return out.split('----------')[1]?.split('\n').filter((l) => l.startsWith('Path = ')).map((l) => l.slice(7)) ?? [];
}

function expectListing(bytes: Buffer, expected: object): void {
  for (const chunk of [bytes.length, 1, 7, 50, 4096]) expect(list(bytes, chunk), `chunks of ${chunk}`).toEqual(expected);
}

describe('cabinet listing', () => {
  for (const compress of [false, true]) {
    it(`lists what cabextract lists in a cabinet made by gcab, ${compress ? 'MSZIP-compressed' : 'stored'}, however the stream is cut`, () => {
      const archive = gcab(compress);
      const listed = listedByCabextract(archive);
      expect(listed).toEqual({ names: ['Factures/2025/facture.pdf.exe', 'Reçus/été.txt', 'gros.bin'], ok: true });
      expect(detectType(archive)).toBe('cab');
      expectListing(archive, { isCab: true, entries: listed.names, complete: true });
    });
  }

  it('reads a name in the UTF-8 the entry declares, and one without that attribute in UTF-8 when it is valid, else byte by byte', () => {
    const archive = cabinet([{ name: Buffer.from('Reçus\\note.txt', 'utf8'), utf8: true }, { name: 'r\xe9sum\xe9.pdf.exe' }, { name: Buffer.from('déjà.js', 'utf8') }]);
    // cabextract prints a name in a code page as its bytes; Windows shows it in its own (é is 0xE9 in Windows-1252).
    expect(listedByCabextract(archive)).toEqual({ names: ['Reçus/note.txt', 'r\ufffdsum\ufffd.pdf.exe', 'déjà.js'], ok: true });
    expectListing(archive, { isCab: true, entries: ['Reçus/note.txt', 'résumé.pdf.exe', 'déjà.js'], complete: true });
  });

  it('finds the table after a reserved area, the names of the other cabinets of a set, and many folders', () => {
    const archive = cabinet([{ name: 'lisez-moi.txt' }, { name: 'setup.exe' }], { reserve: { header: 6144, folder: 12 }, previous: true, next: true, folders: 40 });
    const listed = listedByCabextract(archive);
    expect(listed).toEqual({ names: ['lisez-moi.txt', 'setup.exe'], ok: true });
    expectListing(archive, { isCab: true, entries: listed.names, complete: true });
  });

  it('says the listing is incomplete when the table cannot be read whole: cut short, a name without its end, a table past the bounds, a header giving another place for it', () => {
    const whole = cabinet([{ name: 'a.txt' }, { name: 'b.exe' }]);
    const cut = whole.subarray(0, 44 + 16 + 6 + 16 + 3);
    expect(listedByCabextract(cut).ok).toBe(false);
    expectListing(cut, { isCab: true, entries: ['a.txt'], complete: false });
    expectListing(whole.subarray(0, 30), { isCab: false, entries: [], complete: true });
    // Cut before its table: no tool lists a file in it, so nothing is hidden.
    expect(listedByCabextract(whole.subarray(0, 40)).names).toEqual([]);
    expectListing(whole.subarray(0, 40), { isCab: false, entries: [], complete: true });

    const endless = cabinet([{ name: 'a.txt' }, { name: `${'x'.repeat(300)}.exe` }]);
    expect(listedByCabextract(endless).names).not.toContain(`${'x'.repeat(300)}.exe`);
    expectListing(endless, { isCab: true, entries: ['a.txt'], complete: false });
    const set = cabinet([{ name: 'a.exe' }], { next: true });
    const endlessSet = Buffer.concat([set.subarray(0, 36), Buffer.alloc(300, 'A'), set.subarray(36)]);
    expect(listedByCabextract(endlessSet).ok).toBe(false);
    expectListing(endlessSet, { isCab: true, entries: [], complete: false });

    // 20 000 folders of 263 bytes: 5 MB before the table, which cabextract still reads.
    const far = cabinet([{ name: 'a.txt' }, { name: 'b.exe' }], { reserve: { header: 0, folder: 255 }, folders: 20_000 });
    expect(listedByCabextract(far)).toEqual({ names: ['a.txt', 'b.exe'], ok: true });
    expect(list(far, 65_536)).toEqual({ isCab: true, entries: [], complete: false });

    // A decoy where the header points, the real table where extractors reading in order find it.
    const real = cabinet([{ name: 'facture.pdf.exe' }]);
    const decoy = Buffer.concat([real, Buffer.from('\0'.repeat(16) + 'facture.pdf\0', 'latin1')]);
    decoy.writeUInt32LE(real.length, 16);
    expect(listedByCabextract(decoy).names).not.toContain('facture.pdf');
    expectListing(decoy, { isCab: true, entries: [], complete: false });
  });

  it('lists a file without a name under the name 7-Zip gives it: the cabinet name less its extension', async () => {
    const archive = cabinet([{ name: 'lisez-moi.txt' }, { name: '' }]);
    expect(listedBy7zip(archive, 'facture.exe.cab')).toEqual(['lisez-moi.txt', 'facture.exe']);
    const found = await inspectAttachment(archive, 'facture.exe.cab');
    expect(found.message.attachments[0]!.archiveEntries).toEqual(['lisez-moi.txt', 'facture.exe']);
    expect(found.verdict).toMatchObject({ action: 'quarantine', rule: { id: 'attachments.executable' } });
  });

  it('a file without a name in a cabinet named like an archive inside (docs.zip.cab) is an archive not opened: refused', async () => {
    const archive = cabinet([{ name: '' }]);
    expect(listedBy7zip(archive, 'docs.zip.cab')).toEqual(['docs.zip']);
    const found = await inspectAttachment(archive, 'docs.zip.cab');
    expect(found.message.attachments[0]!.archiveEntries).toEqual(['docs.zip']);
    expect(found.verdict).toMatchObject({ action: 'reject', rule: { id: 'mime.too-complex' } });
    const zipped = await inspectAttachment(zip([{ name: 'envoi/docs.zip.cab', content: archive }]), 'envoi.zip');
    expect(zipped.message.attachments[0]!.archiveEntries).toContain('envoi/docs.zip.cab/docs.zip');
    expect(zipped.verdict).toMatchObject({ action: 'reject', rule: { id: 'mime.too-complex' } });
  });

  it('reads a name marked UTF-8 as cabextract also does: overlong sequences decoded', () => {
    const overlong = Buffer.concat([Buffer.from('evil'), Buffer.from([0xe0, 0x80, 0xae]), Buffer.from('exe')]);
    const archive = cabinet([{ name: overlong, utf8: true }]);
    expect(listedByCabextract(archive).names).toEqual(['evil.exe']);
    expect(list(archive, 3).entries).toContain('evil.exe');
  });

  it('says the listing is incomplete when cabextract would find another cabinet in the file: after the first, or after one it rejects', () => {
    const decoy = cabinet([{ name: 'lisez-moi.txt' }]);
    const evil = cabinet([{ name: 'evil.exe' }]);
    const backToBack = Buffer.concat([decoy, evil]);
    expect(listedByCabextract(backToBack).names).toEqual(['lisez-moi.txt', 'evil.exe']);
    expectListing(backToBack, { isCab: true, entries: ['lisez-moi.txt'], complete: false });

    const empty = cabinet([]);
    const afterEmpty = Buffer.concat([empty, evil]);
    expect(listedByCabextract(afterEmpty).names).toEqual(['evil.exe']);
    expectListing(afterEmpty, { isCab: true, entries: [], complete: false });

    // A cabinet stored in another one is the outer's file: cabextract does not look inside it, and
    // neither does the search for a further cabinet here.
    const dir = mkdtempSync(join(root, 'nested-'));
    writeFileSync(join(dir, 'inner.bin'), gcab(false));
    writeFileSync(join(dir, 'lisez-moi.txt'), 'bonjour');
    execFileSync('gcab', ['-c', 'outer.cab', 'inner.bin', 'lisez-moi.txt'], { cwd: dir });
    const outer = readFileSync(join(dir, 'outer.cab'));
    expect(listedByCabextract(outer)).toEqual({ names: ['inner.bin', 'lisez-moi.txt'], ok: true });
    expectListing(outer, { isCab: true, entries: ['inner.bin', 'lisez-moi.txt'], complete: true });
    // Named as a cabinet, Windows opens it with a double click, and its files are not listed here.
    writeFileSync(join(dir, 'inner.cab'), gcab(false));
    execFileSync('gcab', ['-c', 'named.cab', 'inner.cab', 'lisez-moi.txt'], { cwd: dir });
    expectListing(readFileSync(join(dir, 'named.cab')), { isCab: true, entries: ['inner.cab', 'lisez-moi.txt'], complete: false });
  });

  it('is not fooled into listing other files: random bytes, a text, a signature further in, an empty file', () => {
    expectListing(randomBytes(10_000), { isCab: false, entries: [], complete: true });
    expectListing(Buffer.from('MSC is not MSCF, and this is a note.'), { isCab: false, entries: [], complete: true });
    // A text that starts with the signature: its "table" would be hundreds of megabytes in.
    const note = Buffer.from('MSCF report generated 2024 for the accounting team\nline 2\n'.repeat(20));
    expect(listedByCabextract(note).names).toEqual([]);
    expectListing(note, { isCab: false, entries: [], complete: true });
    expectListing(Buffer.concat([Buffer.from('MZ'), cabinet([{ name: 'b.exe' }])]), { isCab: false, entries: [], complete: true });
    expect(list(Buffer.alloc(0), 1)).toEqual({ isCab: false, entries: [], complete: true });
  });

  it('as an attachment: a cabinet holding a program is quarantined by the shipped policy, one inside a zip too; a cut one is refused', async () => {
    const cab = await inspectAttachment(gcab(true), 'factures.cab');
    expect(cab.message.attachments[0]).toMatchObject({ name: 'factures.cab', detectedType: 'cab' });
    expect(cab.message.attachments[0]!.archiveEntries).toContain('Factures/2025/facture.pdf.exe');
    expect(cab.verdict).toMatchObject({ action: 'quarantine', rule: { id: 'attachments.executable' } });

    const zipped = zip([{ name: 'docs.cab', content: gcab(false) }]);
    const inZip = await inspectAttachment(zipped, 'docs.zip');
    expect(inZip.message.attachments[0]!.archiveEntries).toContain('docs.cab/Factures/2025/facture.pdf.exe');
    expect(inZip.verdict).toMatchObject({ action: 'quarantine', rule: { id: 'attachments.executable' } });

    const clean = await inspectAttachment(cabinet([{ name: 'lisez-moi.txt' }, { name: 'tarifs.pdf' }]), 'tarifs.cab');
    expect(clean.message.attachments[0]!.archiveEntries).toEqual(['lisez-moi.txt', 'tarifs.pdf']);
    expect(clean.verdict.action).toBe('continue');

    const archive = gcab(true);
    const cut = await inspectAttachment(archive.subarray(0, 60), 'factures.cab');
    expect(cut.verdict).toMatchObject({ action: 'reject', rule: { id: 'mime.too-complex' } });
    expect((await inspectAttachment(Buffer.from('MSCF report generated 2024\nline 2\n'), 'rapport.txt')).verdict.action).toBe('continue');

    // A cabinet of a set inside a zip: 7-Zip lists the next cabinet's files with its own, whatever the
    // next one is called in the zip.
    const inSet = await inspectAttachment(zip([{ name: 'a.cab', content: cabinet([{ name: 'lisez-moi.txt' }], { next: true }) }]), 'docs.zip');
    expect(inSet.verdict).toMatchObject({ action: 'reject', rule: { id: 'mime.too-complex' } });
  });
});
