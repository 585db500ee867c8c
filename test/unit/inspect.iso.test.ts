// ISO 9660 images listed as they stream, from images made by genisoimage: Rock Ridge, Joliet and plain
// ISO names, nested directories, any chunking; and the shipped policy judging what is inside.

import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { IsoLister } from '../../src/inspect/iso.js';
import { inspectAttachment } from '../harness/mime.js';

/** An image of these files (path → content), made by genisoimage with its options. */
function image(files: Record<string, string>, options: string[]): Buffer {
  const dir = mkdtempSync(join(tmpdir(), 'douane-iso-'));
  for (const [path, content] of Object.entries(files)) {
    mkdirSync(join(dir, 'tree', path, '..'), { recursive: true });
    writeFileSync(join(dir, 'tree', path), content);
  }
  execFileSync('genisoimage', ['-quiet', ...options, '-o', join(dir, 'image.iso'), join(dir, 'tree')]);
  return readFileSync(join(dir, 'image.iso'));
}

function list(bytes: Buffer, chunk: number) {
  const lister = new IsoLister(1000);
  for (let i = 0; i < bytes.length; i += chunk) lister.push(bytes.subarray(i, i + chunk));
  return lister.listing;
}

const FILES = { 'LISEZ-MOI.txt': 'bonjour', 'Documents/Factures/facture-2025.pdf.lnk': 'L\0\0\0', 'Documents/photo.jpg': 'x' };

describe('ISO 9660 listing', () => {
  it('lists every tree a reader may show (Rock Ridge, Joliet, the 8.3 names), nested, however the image is cut', () => {
    const iso = image(FILES, ['-J', '-R']);
    for (const chunk of [iso.length, 7, 1000, 2048, 65_536]) {
      const l = list(iso, chunk);
      expect(l.isIso).toBe(true);
      expect(l.complete).toBe(true);
      expect(l.entries).toEqual(expect.arrayContaining(['LISEZ-MOI.txt', 'Documents/Factures/facture-2025.pdf.lnk', 'Documents/photo.jpg']));
      // the plain ISO 9660 names too: a reader without Joliet or Rock Ridge shows those
      expect(l.entries.some((e) => /^Documents\/Factures\/FACTURE_?\w*\.LNK$/.test(e))).toBe(true);
    }
    // Without extensions, the 8.3 names are all there is.
    expect(list(image(FILES, []), 4096).entries).toEqual(expect.arrayContaining(['LISEZ_MO.TXT', 'DOCUMENT/PHOTO.JPG']));
  });

  it('is not fooled by other content, and says when names are left out', () => {
    expect(list(Buffer.alloc(100_000, 0x41), 4096)).toMatchObject({ isIso: false, entries: [], complete: true });
    // Past 10 names, only new extensions are kept (10 more): 30 kinds of names are too many.
    const many = Object.fromEntries(Array.from({ length: 30 }, (_, i) => [`f${i}.e${i}`, 'x']));
    const lister = new IsoLister(10);
    lister.push(image(many, ['-J']));
    expect(lister.listing.complete).toBe(false);

    // A directory placed before its parent cannot be reached once streamed past: moved to sector 17 here.
    const moved = image(FILES, []);
    const root = moved.readUInt32LE(16 * 2048 + 156 + 2) * 2048;
    const at = moved.indexOf('DOCUMENT', root, 'latin1') - 33;
    expect(moved[at + 32]).toBe(8);
    moved.writeUInt32LE(17, at + 2);
    moved.writeUInt32BE(17, at + 6);
    expect(list(moved, 2048)).toMatchObject({ isIso: true, complete: false });
    expect(list(moved, 2048).entries).toContain('LISEZ_MO.TXT');
  });

  it('reads past a sector that is not a descriptor, follows Rock Ridge continuations, and reports a UDF tree it does not read', () => {
    // Sectors 16, 17, 18: primary, Joliet, terminator (sector 19 is unused). A junk sector before Joliet
    // does not stop a reader from showing the Joliet names.
    const iso = image({ 'LISEZ-MOI.txt': 'x' }, ['-J']);
    expect(iso.toString('latin1', 17 * 2048 + 1, 17 * 2048 + 6)).toBe('CD001');
    const moved = Buffer.from(iso);
    iso.copy(moved, 19 * 2048, 18 * 2048, 19 * 2048); // the terminator, one sector on
    iso.copy(moved, 18 * 2048, 17 * 2048, 18 * 2048); // Joliet, one sector on
    moved.fill(0x5a, 17 * 2048, 18 * 2048); // junk where Joliet was
    expect(list(moved, 2048)).toMatchObject({ isIso: true, complete: true, entries: expect.arrayContaining(['LISEZ-MOI.txt', 'LISEZ_MO.TXT']) });

    const long = `${'x'.repeat(240)}.lnk`;
    expect(list(image({ [long]: 'L' }, ['-R']), 1000).entries).toContain(long);

    const udf = list(image({ 'a.txt': 'x' }, ['-udf']), 4096);
    expect(udf).toMatchObject({ isIso: true, complete: false, entries: ['A.TXT'] });
  });

  it('stays bounded on hostile images: nesting too deep, paths too long, a record of a broken length', () => {
    const deep = Array.from({ length: 40 }, () => 'd').join('/');
    expect(list(image({ [`${deep}/x.lnk`]: 'L' }, ['-R', '-D']), 4096)).toMatchObject({ isIso: true, complete: false });
    // Joliet's long names, eleven levels of a hundred characters: past the longest path listed.
    const longPath = Array.from({ length: 11 }, (_, i) => `${String(i)}${'p'.repeat(99)}`).join('/');
    const tooLong = list(image({ [`${longPath}/x.lnk`]: 'L' }, ['-J', '-joliet-long', '-D']), 4096);
    expect(tooLong).toMatchObject({ isIso: true, complete: false });
    expect(tooLong.entries.every((e) => e.length <= 1024)).toBe(true);
    // The root's first record claims a length past its directory.
    const broken = image({ 'a.txt': 'x' }, []);
    broken[broken.readUInt32LE(16 * 2048 + 156 + 2) * 2048] = 33;
    expect(list(broken, 4096)).toMatchObject({ isIso: true, complete: false });
  });

  it('names a file whose Rock Ridge name points to an empty continuation area, and stops waiting for thousands of areas', () => {
    // A root directory of `count` file records, each with a Rock Ridge name and a continuation area (CE) of
    // `areaSize` bytes far past the end of the image, then `padding` bytes.
    const handMade = (count: number, areaSize: number, padding: number): Buffer => {
      const both32 = (v: number) => {
        const b = Buffer.alloc(8);
        b.writeUInt32LE(v, 0);
        b.writeUInt32BE(v, 4);
        return b;
      };
      const record = (lba: number, size: number, flags: number, id: Buffer, su = Buffer.alloc(0)) => {
        const body = Buffer.concat([both32(lba), both32(size), Buffer.alloc(7), Buffer.from([flags, 0, 0, 0, 1, 0, 1, id.length]), id, id.length % 2 === 0 ? Buffer.alloc(1) : Buffer.alloc(0), su]);
        return Buffer.concat([Buffer.from([2 + body.length, 0]), body]);
      };
      const records: Buffer[] = [];
      for (let i = 0; i < count; i++) {
        const name = Buffer.from(`file-${i}.lnk`);
        const nm = Buffer.concat([Buffer.from(['N'.charCodeAt(0), 'M'.charCodeAt(0), 5 + name.length, 1, 0]), name]);
        const ce = Buffer.concat([Buffer.from('CE'), Buffer.from([28, 1]), both32(0x7fffff), both32(0), both32(areaSize)]);
        records.push(record(0, 0, 0, Buffer.from(`F${i};1`), Buffer.concat([nm, ce])));
      }
      // Records do not cross sectors: each sector holds what fits, the rest is zero.
      const sectors: Buffer[] = [];
      let sector: Buffer[] = [record(20, 0, 2, Buffer.from([0])), record(20, 0, 2, Buffer.from([1]))];
      for (const r of records) {
        if (sector.reduce((n, b) => n + b.length, 0) + r.length > 2048) {
          sectors.push(Buffer.concat(sector));
          sector = [];
        }
        sector.push(r);
      }
      sectors.push(Buffer.concat(sector));
      const dir = Buffer.alloc(sectors.length * 2048);
      sectors.forEach((b, i) => b.copy(dir, i * 2048));
      const img = Buffer.alloc(20 * 2048 + dir.length + padding);
      const pvd = img.subarray(16 * 2048);
      pvd[0] = 1;
      pvd.write('CD001', 1, 'latin1');
      pvd[6] = 1;
      record(20, dir.length, 2, Buffer.from([0])).copy(pvd, 156);
      const end = img.subarray(17 * 2048);
      end[0] = 255;
      end.write('CD001', 1, 'latin1');
      end[6] = 1;
      dir.copy(img, 20 * 2048);
      return img;
    };
    // An empty area adds nothing to the name: it is whole, and the file is named.
    const empty = list(handMade(50, 0, 4096), 1000);
    expect(empty).toMatchObject({ isIso: true, complete: true });
    expect(empty.entries).toEqual(expect.arrayContaining(['file-0.lnk', 'file-49.lnk']));
    // Past 4096 areas (real images have a few), the listing is incomplete.
    expect(list(handMade(5000, 1, 65_536), 16_384)).toMatchObject({ isIso: true, complete: false });
    expect(list(handMade(100, 1, 4096), 16_384)).toMatchObject({ isIso: true, complete: true });
  });

  it('as an attachment: detected as an image whatever its name, its shortcut quarantined by the shipped policy', async () => {
    const { message, verdict } = await inspectAttachment(image(FILES, ['-J', '-R']), 'facture.pdf');
    expect(message.attachments[0]).toMatchObject({ name: 'facture.pdf', detectedType: 'iso' });
    expect(message.attachments[0]!.archiveEntries).toContain('Documents/Factures/facture-2025.pdf.lnk');
    expect(message.mimeLimitExceeded).toBeUndefined();
    expect(verdict).toMatchObject({ action: 'quarantine', rule: { id: 'attachments.executable' } });
  });

  it('inside a zip, made by zip or by bsdtar (sizes after the data): the shortcut in the image is found and quarantined', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-iso-zip-'));
    writeFileSync(join(dir, 'facture.iso'), image(FILES, ['-J', '-R']));
    writeFileSync(join(dir, 'lisez-moi.txt'), 'Ouvrez la facture.');
    execFileSync('zip', ['-q', '-X', 'infozip.zip', 'facture.iso', 'lisez-moi.txt'], { cwd: dir });
    execFileSync('bsdtar', ['-a', '-cf', 'libarchive.zip', 'facture.iso', 'lisez-moi.txt'], { cwd: dir });
    const infozip = readFileSync(join(dir, 'infozip.zip'));
    const libarchive = readFileSync(join(dir, 'libarchive.zip'));
    // Both deflate the image; libarchive writes its sizes in a descriptor after the data (bit 3).
    for (const z of [infozip, libarchive]) expect(z.readUInt16LE(8)).toBe(8);
    expect(libarchive.readUInt16LE(6) & 0x0008).toBe(0x0008);
    expect(infozip.readUInt16LE(6) & 0x0008).toBe(0);
    for (const z of [infozip, libarchive]) {
      const { message, verdict } = await inspectAttachment(z, 'factures.zip');
      expect(message.attachments[0]).toMatchObject({ detectedType: 'zip', encrypted: false });
      expect(message.attachments[0]!.archiveEntries).toEqual(expect.arrayContaining(['facture.iso', 'lisez-moi.txt', 'facture.iso/Documents/Factures/facture-2025.pdf.lnk']));
      expect(message.mimeLimitExceeded).toBeUndefined();
      expect(verdict).toMatchObject({ action: 'quarantine', rule: { id: 'attachments.executable' } });
    }
  });
});

