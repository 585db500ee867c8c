import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { deflateRawSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { ZipLister } from '../../src/inspect/zip.js';
import { zip as realZip } from '../harness/mime.js';

interface Entry {
  name: string | Buffer;
  data: Buffer;
  /** general purpose flags on top of what the options imply */
  flags?: number;
  deflate?: boolean;
  /** zlib's level for deflate (0: stored blocks, the data verbatim inside the deflate stream) */
  level?: number;
  /** bit 3: sizes zero in the local header, a data descriptor after the data */
  descriptor?: 'signed' | 'unsigned';
  /** sizes as 0xFFFFFFFF in the header, the real ones in a ZIP64 extra field */
  zip64?: boolean;
  /** the name in the central directory, when it is not the local header's */
  centralName?: string;
  /** extra fields, in the local header and the central directory */
  extra?: Buffer;
}

/** A zip built the way the writers in the wild do (local headers, central directory, end record). */
function zip(entries: Entry[]): Buffer {
  const out: Buffer[] = [];
  const central: Buffer[] = [];
  let offset = 0;
  for (const e of entries) {
    const name = typeof e.name === 'string' ? Buffer.from(e.name, 'utf8') : e.name;
    const data = e.deflate ? deflateRawSync(e.data, { level: e.level ?? 6 }) : e.data;
    const flags = (e.flags ?? 0) | (e.descriptor ? 0x0008 : 0) | (typeof e.name === 'string' ? 0x0800 : 0);
    let extra = e.extra ?? Buffer.alloc(0);
    if (e.zip64) {
      extra = Buffer.alloc(20);
      extra.writeUInt16LE(0x0001, 0);
      extra.writeUInt16LE(16, 2);
      extra.writeBigUInt64LE(BigInt(e.data.length), 4);
      extra.writeBigUInt64LE(BigInt(data.length), 12);
    }
    const h = Buffer.alloc(30);
    h.writeUInt32LE(0x04034b50, 0);
    h.writeUInt16LE(e.zip64 ? 45 : 20, 4);
    h.writeUInt16LE(flags, 6);
    h.writeUInt16LE(e.deflate ? 8 : 0, 8);
    h.writeUInt32LE(e.descriptor ? 0 : 0x12345678, 14);
    const sizes = e.descriptor ? [0, 0] : e.zip64 ? [0xffffffff, 0xffffffff] : [data.length, e.data.length];
    h.writeUInt32LE(sizes[0]!, 18);
    h.writeUInt32LE(sizes[1]!, 22);
    h.writeUInt16LE(name.length, 26);
    h.writeUInt16LE(extra.length, 28);
    const before = out.length;
    out.push(h, name, extra, data);
    if (e.descriptor) {
      const d = Buffer.alloc(e.descriptor === 'signed' ? 16 : 12);
      let p = 0;
      if (e.descriptor === 'signed') p = d.writeUInt32LE(0x08074b50, 0);
      p = d.writeUInt32LE(0x12345678, p);
      p = d.writeUInt32LE(data.length, p);
      d.writeUInt32LE(e.data.length, p);
      out.push(d);
    }
    const centralName = e.centralName === undefined ? name : Buffer.from(e.centralName, 'utf8');
    const c = Buffer.alloc(46);
    c.writeUInt32LE(0x02014b50, 0);
    c.writeUInt16LE(flags, 8);
    c.writeUInt16LE(centralName.length, 28);
    c.writeUInt16LE(e.extra?.length ?? 0, 30);
    c.writeUInt32LE(offset, 42);
    central.push(c, centralName, e.extra ?? Buffer.alloc(0));
    offset += out.slice(before).reduce((n, b) => n + b.length, 0);
  }
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(entries.length, 8);
  end.writeUInt16LE(entries.length, 10);
  end.writeUInt32LE(central.reduce((n, b) => n + b.length, 0), 12);
  end.writeUInt32LE(offset, 16);
  return Buffer.concat([...out, ...central, end]);
}

function list(bytes: Buffer, chunkSize = bytes.length || 1, maxEntries?: number) {
  const z = new ZipLister(maxEntries);
  for (let i = 0; i < bytes.length; i += chunkSize) z.push(bytes.subarray(i, i + chunkSize));
  z.end();
  return z.listing;
}

const text = (s: string) => Buffer.from(s);

describe('zip listing from local headers and the central directory', () => {
  it('lists the entries of a plain zip in order, not encrypted', () => {
    const l = list(zip([{ name: 'readme.txt', data: text('hello') }, { name: 'bin/setup.exe', data: Buffer.alloc(3000, 1) }]));
    expect(l).toEqual({ isZip: true, entries: ['readme.txt', 'bin/setup.exe'], entryCount: 2, encrypted: false, complete: true });
  });

  it('reports encryption when any entry has general purpose bit 0', () => {
    const l = list(zip([{ name: 'a.txt', data: text('a') }, { name: 'secret.docx', data: Buffer.alloc(100, 7), flags: 0x0001 }]));
    expect(l.encrypted).toBe(true);
    expect(l.entries).toEqual(['a.txt', 'secret.docx']);
  });

  it('finds the next entry by its signature when sizes follow the data (bit 3), signed descriptor or not', () => {
    const bytes = zip([
      { name: 'one.txt', data: text('first entry '.repeat(500)), deflate: true, descriptor: 'signed' },
      { name: 'two.bin', data: Buffer.alloc(5000, 9), deflate: true, descriptor: 'unsigned' },
      { name: 'three.exe', data: text('MZ third'), descriptor: 'signed' },
    ]);
    expect(list(bytes).entries).toEqual(['one.txt', 'two.bin', 'three.exe']);
  });

  it('gives the same listing however the bytes are chunked (signatures and headers split across chunks)', () => {
    const bytes = zip([
      { name: 'a.txt', data: text('x'.repeat(70)), deflate: true, descriptor: 'signed' },
      { name: 'b.txt', data: text('y'.repeat(40)) },
      { name: 'c.txt', data: text('z'), flags: 1, descriptor: 'unsigned' },
    ]);
    const whole = list(bytes);
    expect(whole.entries).toEqual(['a.txt', 'b.txt', 'c.txt']);
    for (const size of [1, 2, 3, 5, 29, 31, 64]) expect(list(bytes, size)).toEqual(whole);
  });

  it('skips ZIP64 entries by the sizes in their extra field', () => {
    const l = list(zip([{ name: 'big.bin', data: Buffer.from('PK\x03\x04 inside stored data') , zip64: true }, { name: 'after.txt', data: text('ok') }]));
    expect(l.entries).toEqual(['big.bin', 'after.txt']);
  });

  it('lists an archive inside the zip, stored or deflated, sizes known or not, however the bytes are chunked', () => {
    const inner = zip([{ name: 'hidden.exe', data: text('MZ') }, { name: 'lisez-moi.txt', data: text('bonjour '.repeat(300)), deflate: true }]);
    for (const how of [{}, { deflate: true }, { deflate: true, descriptor: 'signed' }, { deflate: true, descriptor: 'unsigned' }] as Partial<Entry>[]) {
      const bytes = zip([{ name: 'docs/inner.zip', data: inner, ...how }, { name: 'note.txt', data: text('hi') }]);
      for (const size of [bytes.length, 1, 7, 100]) {
        expect(list(bytes, size)).toMatchObject({ entries: ['docs/inner.zip', 'docs/inner.zip/hidden.exe', 'docs/inner.zip/lisez-moi.txt', 'note.txt'], complete: true, encrypted: false });
      }
    }
    // An encrypted inner archive is one more name, and the zip says encrypted (as one with an encrypted file inside it does).
    expect(list(zip([{ name: 'inner.zip', data: inner, flags: 0x0001 }]))).toMatchObject({ entries: ['inner.zip'], encrypted: true });
    expect(list(zip([{ name: 'inner.zip', data: zip([{ name: 'secret.pdf', data: text('x'), flags: 0x0001 }]) }]))).toMatchObject({ entries: ['inner.zip', 'inner.zip/secret.pdf'], encrypted: true });
    // Only archives a double click opens: a .bin holding a zip is one name.
    expect(list(zip([{ name: 'data.bin', data: inner }])).entries).toEqual(['data.bin']);
    // Deflated data that does not inflate (its first block has the reserved type): the name stands, nothing breaks.
    const broken = zip([{ name: 'broken.zip', data: Buffer.alloc(500, 7), deflate: true }, { name: 'after.txt', data: text('x') }]);
    broken[30 + 'broken.zip'.length] = 0xff;
    expect(list(broken, 100)).toMatchObject({ entries: ['broken.zip', 'after.txt'], complete: true });
  });

  it('opens three levels of archives below the attachment; one it cannot open (deeper, another method) leaves the listing incomplete', () => {
    let nested = zip([{ name: 'x.exe', data: text('MZ') }]);
    for (const name of ['c.zip', 'b.zip']) nested = zip([{ name, data: nested, deflate: true }]);
    expect(list(zip([{ name: 'a.zip', data: nested, deflate: true }]), 1000)).toMatchObject({ entries: ['a.zip', 'a.zip/b.zip', 'a.zip/b.zip/c.zip', 'a.zip/b.zip/c.zip/x.exe'], complete: true });
    const deeper = list(zip([{ name: 'a.zip', data: zip([{ name: 'd.zip', data: nested, deflate: true }]), deflate: true }]), 1000);
    expect(deeper.entries).toEqual(['a.zip', 'a.zip/d.zip', 'a.zip/d.zip/b.zip', 'a.zip/d.zip/b.zip/c.zip']);
    expect(deeper.complete).toBe(false);
    // bzip2 (method 12), which 7-Zip writes and opens.
    const bzip2 = zip([{ name: 'inner.zip', data: zip([{ name: 'x.exe', data: text('MZ') }]) }]);
    bzip2.writeUInt16LE(12, 8);
    expect(list(bzip2)).toMatchObject({ entries: ['inner.zip'], complete: false });
  });

  it('lists a zip Info-ZIP stored inside another (it does not compress .zip files), after directories, under its name', () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-zip-in-zip-'));
    mkdirSync(join(dir, 'proj', 'emptydir'), { recursive: true });
    writeFileSync(join(dir, 'setup.exe'), 'MZ stand-in');
    writeFileSync(join(dir, 'proj', 'readme.txt'), 'lisez-moi '.repeat(100));
    execFileSync('zip', ['-q', '-X', join(dir, 'proj', 'inner.zip'), 'setup.exe'], { cwd: dir });
    execFileSync('zip', ['-q', '-X', '-r', 'outer.zip', 'proj'], { cwd: dir });
    const outer = readFileSync(join(dir, 'outer.zip'));
    for (const size of [outer.length, 1000]) {
      const l = list(outer, size);
      expect(l.entries).toEqual(expect.arrayContaining(['proj/', 'proj/emptydir/', 'proj/readme.txt', 'proj/inner.zip', 'proj/inner.zip/setup.exe']));
      expect(l.entries).not.toContain('setup.exe');
      expect(l.complete).toBe(true);
    }
  });

  it('opens an inner archive by the name an extractor gives it, and notices one the central directory names differently', () => {
    const inner = zip([{ name: 'x.exe', data: text('MZ') }]);
    expect(list(zip([{ name: 'inner.zip. ', data: inner, deflate: true }])).entries).toEqual(['inner.zip', 'inner.zip/x.exe']);
    expect(list(zip([{ name: 'data.bin', centralName: 'data.zip', data: inner, deflate: true }]))).toMatchObject({ entries: ['data.bin', 'data.zip'], complete: false });
  });

  it('is not stopped by an end record inside an entry of unknown size, nor lists an archive stored in a sized entry as its own', () => {
    const endRecord = Buffer.alloc(22);
    endRecord.writeUInt32LE(0x06054b50, 0);
    const bytes = zip([{ name: 'a.txt', data: Buffer.concat([text('before '), endRecord, text(' after')]), descriptor: 'signed' }, { name: 'evil.exe', data: text('MZ') }]);
    expect(list(bytes, 50).entries).toContain('evil.exe');
    // A browser extension (a zip holding scripts) stored after an entry with a descriptor: its size is in
    // its header, its data is walked by it, and its scripts are not the outer zip's.
    const addon = zip([{ name: 'content/main.js', data: text('x') }, { name: 'tools/install.ps1', data: text('x') }]);
    const streamed = zip([{ name: 'readme.txt', data: text('hi '.repeat(50)), deflate: true, descriptor: 'signed' }, { name: 'addon.xpi', data: addon }]);
    for (const size of [streamed.length, 7, 100]) expect(list(streamed, size)).toMatchObject({ entries: ['readme.txt', 'addon.xpi'], complete: true });
    // An inner zip deflated in stored blocks, its size after the data: its own headers show verbatim in
    // the outer zip, and are its data, not the outer zip's entries.
    const inner = zip([{ name: 'hidden.exe', data: text('MZ') }, { name: 'note.txt', data: text('n') }]);
    const l = list(zip([{ name: 'inner.zip', data: inner, deflate: true, level: 0, descriptor: 'signed' }, { name: 'after.txt', data: text('x') }]), 64);
    expect(l.entries).toEqual(expect.arrayContaining(['inner.zip', 'inner.zip/hidden.exe', 'inner.zip/note.txt', 'after.txt']));
    expect(l.complete).toBe(true);
  });

  it('inflates a bounded amount, however deep the bomb (the listing is incomplete)', () => {
    // 150 MB of zeros deflate to 150 KB; named like a disk image, the entry is inflated until the budget ends.
    const zeros = Buffer.alloc(150 * 1024 * 1024);
    const bomb = list(zip([{ name: 'image.iso', data: zeros, deflate: true }, { name: 'after.txt', data: text('x') }]), 65_536);
    expect(bomb).toMatchObject({ entries: ['image.iso', 'after.txt'], complete: false });
    // Two levels down: the inner zip's whole output reaches the next inflater at once, which must not inflate it all.
    const deep = list(zip([{ name: 'inner.zip', data: zip([{ name: 'x.iso', data: zeros, deflate: true }, { name: 'evil.exe', data: text('MZ') }]), deflate: true }]), 65_536);
    expect(deep.complete).toBe(false);
  });

  it('caps the names kept but still counts entries and sees encryption past the cap', () => {
    const entries: Entry[] = Array.from({ length: 1500 }, (_, i) => ({ name: `f${i}.txt`, data: text(String(i)) }));
    entries[1400]!.flags = 0x0001;
    const l = list(zip(entries), 4096);
    expect(l.entries).toHaveLength(1000);
    expect(l.entries[999]).toBe('f999.txt');
    expect(l.entryCount).toBe(1500);
    expect(l.encrypted).toBe(true);
    expect(list(zip(entries.slice(0, 20)), 4096, 5).entries).toEqual(['f0.txt', 'f1.txt', 'f2.txt', 'f3.txt', 'f4.txt']);
  });

  it('decodes names as UTF-8 when flagged or valid, Latin-1 otherwise', () => {
    const l = list(zip([{ name: 'résumé.pdf', data: text('a') }, { name: Buffer.from([0x63, 0x61, 0x66, 0xe9, 0x2e, 0x74, 0x78, 0x74]), data: text('b') }]));
    expect(l.entries).toEqual(['résumé.pdf', 'café.txt']);
  });

  it('is not a zip when the content does not start with a local header', () => {
    expect(list(Buffer.from('%PDF-1.4 ... PK\x03\x04'))).toEqual({ isZip: false, entries: [], entryCount: 0, encrypted: false, complete: true });
    expect(list(Buffer.alloc(0)).isZip).toBe(false);
  });

  it('lists an archive behind other data (a stub, junk, an image) though the file is not a zip at its start', () => {
    const bytes = Buffer.concat([Buffer.from('GIF89a PK\x05\x06 decoy end record '), Buffer.alloc(64, 0x41), zip([{ name: 'evil.exe', data: text('MZ') }])]);
    for (const size of [bytes.length, 1, 3, 7, 64]) {
      const l = list(bytes, size);
      expect(l.isZip).toBe(false);
      expect(l.entries).toEqual(['evil.exe']);
    }
  });

  it('lists the central directory\'s names too: unzip extracts under them when they disagree with the local headers', () => {
    const l = list(zip([{ name: 'readme.txt', data: text('MZ'), centralName: 'evil.exe' }, { name: 'b.txt', data: text('b') }]));
    expect(l.entries).toEqual(['readme.txt', 'b.txt', 'evil.exe']);
  });

  it('names a file as Windows does: trailing dots and spaces go', () => {
    expect(list(zip([{ name: 'evil.exe.', data: text('a') }, { name: 'other.scr . ', data: text('b') }])).entries).toEqual(['evil.exe', 'other.scr']);
  });

  it('lists a name ending in "/." also as the file bsdtar writes for it ("evil.exe/." is evil.exe)', () => {
    // With real checksums, which bsdtar verifies as it extracts.
    const archive = realZip([
      { name: 'evil.exe/.', content: text('MZ') },
      { name: 'f.exe//./.', content: text('MZ') },
      { name: 'dossier/', content: text('') },
    ]);
    const dir = mkdtempSync(join(tmpdir(), 'douane-zip-dot-'));
    writeFileSync(join(dir, 'a.zip'), archive);
    mkdirSync(join(dir, 'out'));
    execFileSync('bsdtar', ['-xf', join(dir, 'a.zip'), '-C', join(dir, 'out')]);
    expect(readFileSync(join(dir, 'out', 'evil.exe'), 'latin1')).toBe('MZ');
    expect(readFileSync(join(dir, 'out', 'f.exe'), 'latin1')).toBe('MZ');
    expect(list(archive).entries).toEqual(['evil.exe/', 'evil.exe', 'f.exe//./', 'f.exe', 'dossier/']);
  });

  it('past the cap, still lists each name of a kind not seen yet; reports the listing incomplete past twice the cap', () => {
    const filler: Entry[] = Array.from({ length: 1000 }, (_, i) => ({ name: `f${i}.txt`, data: text(String(i)) }));
    const hidden = list(zip([...filler, { name: 'more.txt', data: text('m') }, { name: 'evil.exe', data: text('MZ') }]), 4096);
    expect(hidden.entries).toHaveLength(1001);
    expect(hidden.entries.at(-1)).toBe('evil.exe');
    expect(hidden.complete).toBe(true);
    const kinds: Entry[] = Array.from({ length: 2001 }, (_, i) => ({ name: `f.x${i}`, data: text('k') }));
    const flooded = list(zip([...filler, ...kinds]), 4096);
    expect(flooded.entries).toHaveLength(2000);
    expect(flooded.complete).toBe(false);
  });

  it('says the listing is incomplete when a local header claims more data than there is before the end record (what follows went unread)', () => {
    const honest = zip([{ name: 'readme.txt', data: text('hello world\n'.repeat(50)), deflate: true }, { name: 'evil.exe', data: text('MZ program') }]);
    const lying = Buffer.from(honest);
    lying.writeUInt32LE(0x7fffffff, 18); // the first entry's compressed size
    const bit3 = Buffer.from(lying);
    bit3.writeUInt16LE(bit3.readUInt16LE(6) | 0x0008, 6);
    const commented = Buffer.concat([lying, Buffer.alloc(1000, 0x20)]);
    commented.writeUInt16LE(1000, lying.length - 2); // the end record's comment length
    // Sizes that end the first entry exactly at the end of the file, at the end record, inside it, or before
    // it in the central directory; and junk after the end record, which extractors tolerate.
    const endRecord = honest.length - 22;
    const centralStart = honest.indexOf(Buffer.from([0x50, 0x4b, 0x01, 0x02]));
    const firstData = 30 + 'readme.txt'.length;
    const endingAt = (offset: number) => {
      const b = Buffer.from(honest);
      b.writeUInt32LE(offset - firstData, 18);
      return b;
    };
    const variants = [lying, bit3, commented, Buffer.concat([Buffer.alloc(4096, 0x4d), lying]), Buffer.concat([lying, Buffer.from('x')]), endingAt(honest.length), endingAt(endRecord), endingAt(endRecord + 10)];
    for (const bytes of variants) {
      for (const size of [bytes.length, 1, 7, 64, 1000]) expect(list(bytes, size)).toMatchObject({ entries: ['readme.txt'], complete: false });
    }
    // Central headers put in the end record's comment, where a lying size lands: they are not the central
    // directory the end record describes, and do not count for it.
    const decoy = zip([{ name: 'readme.txt', data: text('a') }, { name: 'notes.txt', data: text('b') }]);
    const decoyCentral = decoy.subarray(decoy.indexOf(Buffer.from([0x50, 0x4b, 0x01, 0x02])), decoy.length - 22);
    const withComment = Buffer.concat([honest, decoyCentral]);
    withComment.writeUInt16LE(decoyCentral.length, honest.length - 2);
    withComment.writeUInt32LE(honest.length - firstData, 18);
    for (const size of [withComment.length, 1, 64]) expect(list(withComment, size)).toMatchObject({ entries: ['readme.txt', 'notes.txt'], complete: false });
    // Over the second entry and the first central header only: the second central header names the
    // program, and the end record counts one central header more than was read.
    expect(list(endingAt(centralStart + 46 + 'readme.txt'.length), 7)).toMatchObject({ entries: ['readme.txt', 'evil.exe'], complete: false });
    expect(list(honest, 64)).toMatchObject({ entries: ['readme.txt', 'evil.exe'], complete: true });
    // Cut short, there is nothing more to read: what was listed is the listing.
    expect(list(lying.subarray(0, 200), 7).complete).toBe(true);
  });

  it('finds every central header of zips as the tools write them, ZIP64 included, however cut: complete', () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-zip-tools-'));
    writeFileSync(join(dir, 'a.txt'), 'hello '.repeat(1000));
    writeFileSync(join(dir, 'b.bin'), Buffer.alloc(5000, 7));
    const made: Buffer[] = [];
    for (const [name, flags] of [['plain.zip', []], ['zip64.zip', ['-fz']], ['descriptors.zip', ['-fd']], ['comment.zip', ['-z']]] as const) {
      // Only -z reads its standard input: given to the others, which exit without reading it, writing it
      // could fail with EPIPE.
      execFileSync('zip', ['-q', '-X', ...flags, name, 'a.txt', 'b.bin'], { cwd: dir, ...(name === 'comment.zip' ? { input: 'a comment with PK\x05\x06 in it\n.\n' } : { stdio: ['ignore', 'pipe', 'pipe'] }) });
      made.push(readFileSync(join(dir, name)));
    }
    // Written to a pipe: sizes after the data.
    made.push(execFileSync('zip', ['-q', '-X', '-', 'a.txt', 'b.bin'], { cwd: dir }));
    for (const bytes of made) {
      for (const size of [bytes.length, 1, 7, 4096]) expect(list(bytes, size)).toMatchObject({ entries: ['a.txt', 'b.bin'], complete: true });
    }
  });

  it('lists the name of a Unicode Path extra field, which unzip and 7-Zip extract under instead of the header name', () => {
    const shown = Buffer.from('évil.exe', 'utf8');
    const field = Buffer.alloc(9);
    field.writeUInt16LE(0x7075, 0);
    field.writeUInt16LE(5 + shown.length, 2);
    field[4] = 1; // version
    field.writeUInt32LE(0x12345678, 5); // the header name's CRC-32, checked by extractors, not here
    const l = list(zip([{ name: 'readme.txt', data: text('MZ program'), extra: Buffer.concat([field, shown]) }]), 5);
    expect(l.entries).toEqual(['readme.txt', 'évil.exe']);
    expect(l.complete).toBe(true);
    // An archive named there is opened as the entry streams by, as one named in the header is.
    const inner = Buffer.from('docs.zip');
    field.writeUInt16LE(5 + inner.length, 2);
    const hidden = list(zip([{ name: 'readme.txt', data: zip([{ name: 'evil.exe', data: text('MZ') }]), extra: Buffer.concat([field, inner]) }]), 7);
    expect(hidden.entries).toEqual(expect.arrayContaining(['docs.zip', 'docs.zip/evil.exe']));
    expect(hidden.complete).toBe(true);
    // A name Windows zip tools write in the DOS code page (bit 11 clear) with its Unicode Path: one archive,
    // opened, under both names.
    const unicodeName = Buffer.from('Données.zip', 'utf8');
    field.writeUInt16LE(5 + unicodeName.length, 2);
    const dos = list(zip([{ name: Buffer.from('Donn\x82es.zip', 'latin1'), data: zip([{ name: 'a.txt', data: text('a') }]), extra: Buffer.concat([field, unicodeName]) }]), 64);
    expect(dos.entries).toEqual(expect.arrayContaining(['Données.zip', 'Donn\x82es.zip/a.txt']));
    expect(dos.complete).toBe(true);
  });

  it('keeps what it listed from a truncated or corrupt archive, without throwing', () => {
    const bytes = zip([{ name: 'ok.txt', data: text('fine') }, { name: 'cut.txt', data: Buffer.alloc(1000) }]);
    expect(list(bytes.subarray(0, 60)).entries).toEqual(['ok.txt']);
    const corrupt = Buffer.from(bytes);
    corrupt.writeUInt16LE(0xffff, 26); // first name length: 64 KB
    expect(() => list(corrupt, 7)).not.toThrow();
    let seed = 1;
    const noise = Buffer.alloc(20000, 0).map(() => (seed = (seed * 1103515245 + 12345) >>> 0) >>> 24);
    expect(() => list(Buffer.concat([Buffer.from('PK\x03\x04'), noise]), 333)).not.toThrow();
  });

  it('walks a large stored entry by its known size (skipped, not scanned for signatures)', () => {
    const big = Buffer.alloc(20 * 1024 * 1024, 0x50); // "PPPP…": many half signatures to trip a scan
    // A whole local header inside the data: a reader that scanned the data instead of skipping it would
    // list this name too.
    zip([{ name: 'inside-the-data.txt', data: text('x') }]).copy(big, 10 * 1024 * 1024);
    const bytes = zip([{ name: 'big.bin', data: big }, { name: 'tail.txt', data: text('end') }]);
    expect(list(bytes, 65536).entries).toEqual(['big.bin', 'tail.txt']);
    // Not only the first entry: after a directory (no data) and another entry, each walked by its size.
    const later = zip([{ name: 'dir/', data: Buffer.alloc(0) }, { name: 'dir/a.txt', data: text('a') }, { name: 'dir/big.bin', data: big }, { name: 'tail.txt', data: text('end') }]);
    expect(list(later, 65536).entries).toEqual(['dir/', 'dir/a.txt', 'dir/big.bin', 'tail.txt']);
  });
});
