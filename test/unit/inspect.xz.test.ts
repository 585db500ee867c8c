// xz-compressed tars (.tar.xz, .txz), listed as they stream, their LZMA2 decoded as it comes; and the one
// file an xz, bzip2 or zstd attachment holds, named as its tool names it. The archives are made by GNU
// tar, bsdtar and xz, and what `tar -tJf` lists in each is what Douane must find. Then the shipped policy
// judging what is inside.

import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Lzma2Stream, LzmaError } from '../../src/inspect/lzma.js';
import { detectType } from '../../src/inspect/magic.js';
import { XzReader } from '../../src/inspect/xz.js';
import { listedByGnuTar, listTar, MEMBERS, NAMES, sampleFolder, tarOfSample, UTF8, words } from '../harness/archives.js';
import { inspectAttachment, zip } from '../harness/mime.js';

const root = mkdtempSync(join(tmpdir(), 'douane-xz-'));
/** A tar of the sample folder, then compressed by xz with these options. */
function tarXz(xzOptions: string[], opts: { bulk?: number; tool?: 'tar' | 'bsdtar' } = {}): Buffer {
  return execFileSync('xz', ['-c', ...xzOptions], { input: tarOfSample(root, opts), maxBuffer: 1 << 28 });
}

/** What GNU tar lists in a .tar.xz, and whether it read the whole archive without an error. */
const listedByTar = (archive: Buffer) => listedByGnuTar(root, archive, '-J');

describe('LZMA2 decoded as it streams', () => {
  it('gives back what xz encoded, however the input is cut, with a window smaller than the output', () => {
    const data = Buffer.concat([Buffer.from(words), randomBytes(300_000), Buffer.from(words), Buffer.alloc(3_000_000, 'a')]);
    for (const [options, window] of [
      ['preset=6', 8 << 20],
      ['preset=6,dict=64KiB', 64 << 10],
      ['preset=1,lc=0,lp=2,pb=0,dict=4KiB', 4 << 10],
    ] as const) {
      const stream = execFileSync('xz', ['--format=raw', `--lzma2=${options}`, '-c'], { input: data, maxBuffer: 1 << 26 });
      for (const chunk of [stream.length, 1, 777, 65_536]) {
        const out: Buffer[] = [];
        const decoder = new Lzma2Stream(window, (b) => out.push(b));
        let taken = 0;
        for (let i = 0; i < stream.length; i += chunk) taken += decoder.push(stream.subarray(i, i + chunk));
        expect(decoder.ended, `${options}, chunks of ${chunk}`).toBe(true);
        expect(taken).toBe(stream.length);
        expect(Buffer.concat(out).equals(data), `${options}, chunks of ${chunk}`).toBe(true);
      }
      // Bytes after the end byte are not taken.
      expect(new Lzma2Stream(window, () => {}).push(Buffer.concat([stream, Buffer.from('after')]))).toBe(stream.length);
    }
  });

  it('refuses a match reaching further back than the window it was given', () => {
    const again = randomBytes(100_000);
    const data = Buffer.concat([again, randomBytes(200_000), again]);
    const stream = execFileSync('xz', ['--format=raw', '--lzma2=preset=6,dict=1MiB', '-c'], { input: data });
    expect(() => new Lzma2Stream(64 << 10, () => {}).push(stream)).toThrow(LzmaError);
    const out: Buffer[] = [];
    new Lzma2Stream(1 << 20, (b) => out.push(b)).push(stream);
    expect(Buffer.concat(out).equals(data)).toBe(true);
  });
});

describe('xz-compressed tar listing', () => {
  it('lists what GNU tar lists in a .tar.xz by GNU tar and by bsdtar, with each check, in several blocks, however the stream is cut', () => {
    for (const [tool, options] of [
      ['tar', []],
      ['bsdtar', []],
      ['tar', ['--check=none']],
      ['tar', ['--check=crc32']],
      ['tar', ['--check=sha256']],
      ['tar', ['-T2', '--block-size=20KiB']],
      ['tar', ['-0e']],
    ] as const) {
      const archive = tarXz([...options], { tool });
      const listed = listedByTar(archive);
      expect(listed).toEqual({ names: NAMES, ok: true });
      expect(detectType(archive)).toBe('xz');
      for (const chunk of [archive.length, 1, 511, 65_536]) expect(listTar(archive, chunk), `${tool} ${options.join(' ')}, chunks of ${chunk}`).toEqual({ isTar: true, entries: NAMES, complete: true });
    }
  });

  it('lists a .tar.xz made with a dictionary over the window Douane keeps when its content fits in the window', () => {
    const archive = tarXz(['-9']);
    // The block header's only filter: LZMA2 (0x21), one property byte, the dictionary size (28: 64 MiB).
    expect([archive[14], archive[15], archive[16]]).toEqual([0x21, 1, 28]);
    expect(listTar(archive, 65_536)).toEqual({ isTar: true, entries: NAMES, complete: true });
  });

  it('says the listing is incomplete when the xz cannot be read whole: another filter, a damaged block header, cut short, a far match, a tar going on in a second stream, past the budget', () => {
    const incomplete = (archive: Buffer, why: string, budget?: { bytes: number }) => expect(listTar(archive, 4096, budget).complete, why).toBe(false);

    const bcj = tarXz(['--x86', '--lzma2=preset=6']);
    expect(listedByTar(bcj)).toEqual({ names: NAMES, ok: true });
    incomplete(bcj, 'a BCJ filter before LZMA2');

    const damaged = tarXz([]);
    damaged[13] = damaged[13]! ^ 0x01; // the block header's flags
    expect(listedByTar(damaged).ok).toBe(false);
    incomplete(damaged, 'a damaged block header');

    const whole = tarXz([], { bulk: 400_000 });
    const cut = whole.subarray(0, whole.length >> 1);
    expect(listedByTar(cut).ok).toBe(false);
    expect(listTar(cut, 4096)).toMatchObject({ isTar: true, complete: false });

    // The same megabyte 9 MiB apart, with a 64 MiB dictionary: the second is a match past the 8 MiB kept.
    const again = randomBytes(1 << 20);
    const farDir = mkdtempSync(join(root, 'far-'));
    writeFileSync(join(farDir, 'a.bin'), Buffer.concat([again, randomBytes(9 << 20), again]));
    writeFileSync(join(farDir, 'b.exe'), 'MZ');
    const far = execFileSync('xz', ['-c', '--lzma2=preset=0,dict=64MiB'], { input: execFileSync('tar', ['-cf', '-', '-C', farDir, 'a.bin', 'b.exe'], { maxBuffer: 1 << 26 }), maxBuffer: 1 << 26 });
    expect(listedByTar(far)).toEqual({ names: ['a.bin', 'b.exe'], ok: true });
    expect(listTar(far, 65_536, { bytes: 1 << 30 })).toEqual({ isTar: true, entries: ['a.bin'], complete: false });

    const dir = sampleFolder(root);
    const tar = execFileSync('tar', ['-cf', '-', '-C', dir, ...MEMBERS], { env: UTF8 });
    const twoStreams = Buffer.concat([execFileSync('xz', ['-c'], { input: tar.subarray(0, 1024) }), execFileSync('xz', ['-c'], { input: tar.subarray(1024) })]);
    expect(listedByTar(twoStreams)).toEqual({ names: NAMES, ok: true });
    incomplete(twoStreams, 'a tar going on in a second stream');

    incomplete(tarXz([]), 'past the budget', { bytes: 10_000 });
  });

  it('is not fooled into listing other files: an xz of a text, random bytes after the xz signature', () => {
    expect(listTar(execFileSync('xz', ['-c'], { input: Buffer.from(words) }), 1000)).toEqual({ isTar: false, entries: [], complete: true });
    expect(listTar(Buffer.concat([Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]), randomBytes(5000)]), 1000)).toEqual({ isTar: false, entries: [], complete: true });
  });
});

describe('compressed files as attachments', () => {
  it('a .tar.xz holding a program is quarantined by the shipped policy, one inside a zip too; an xz of a program is named as xz names it', async () => {
    const txz = await inspectAttachment(tarXz([]), 'factures.tar.xz');
    expect(txz.message.attachments[0]).toMatchObject({ detectedType: 'xz', archiveEntries: NAMES });
    expect(txz.verdict).toMatchObject({ action: 'quarantine', rule: { id: 'attachments.executable' } });

    const inZip = await inspectAttachment(zip([{ name: 'docs.txz', content: tarXz([]) }]), 'docs.zip');
    expect(inZip.message.attachments[0]!.archiveEntries).toContain('docs.txz/Factures/2025/facture.pdf.exe');
    expect(inZip.verdict).toMatchObject({ action: 'quarantine', rule: { id: 'attachments.executable' } });

    const program = Buffer.from('MZ\x90\x00stand-in program');
    const xz = await inspectAttachment(execFileSync('xz', ['-c'], { input: program }), 'facture.pdf.exe.xz');
    expect(xz.message.attachments[0]).toMatchObject({ detectedType: 'xz', archiveEntries: ['facture.pdf.exe'] });
    expect(xz.verdict).toMatchObject({ action: 'quarantine', rule: { id: 'attachments.executable' } });

    const text = await inspectAttachment(execFileSync('xz', ['-c'], { input: Buffer.from(words.slice(0, 5000)) }), 'notes.txt.xz');
    expect(text.message.attachments[0]!.archiveEntries).toEqual(['notes.txt']);
    expect(text.verdict.action).toBe('continue');
  });

  it('the file in a gzip is listed under its stored name (7-Zip) and the name gunzip gives it, with each suffix gunzip knows', async () => {
    const dir = mkdtempSync(join(root, 'gz-'));
    writeFileSync(join(dir, 'readme.txt'), Buffer.from('MZ\x90\x00stand-in program'));
    const stored = execFileSync('gzip', ['-c', '-N', 'readme.txt'], { cwd: dir });
    writeFileSync(join(dir, 'evil.exe.gz'), stored);
    execFileSync('gzip', ['-d', 'evil.exe.gz'], { cwd: dir });
    expect(readFileSync(join(dir, 'evil.exe'), 'latin1')).toMatch(/^MZ/);
    const found = await inspectAttachment(stored, 'evil.exe.gz');
    expect(found.message.attachments[0]!.archiveEntries).toEqual(['readme.txt', 'evil.exe']);
    expect(found.verdict).toMatchObject({ action: 'quarantine', rule: { id: 'attachments.executable' } });
    for (const suffix of ['-gz', '_z', '-z']) {
      const other = await inspectAttachment(execFileSync('gzip', ['-c'], { input: 'MZ' }), `evil.exe${suffix}`);
      expect(other.message.attachments[0]!.archiveEntries, suffix).toEqual(['evil.exe']);
    }
  });

  it('the file in a bzip2 or a zstd attachment is named as bzip2 and zstd name it', async () => {
    const program = Buffer.from('MZ\x90\x00stand-in program');
    for (const [tool, suffix, type] of [
      ['bzip2', 'bz2', 'bzip2'],
      ['zstd', 'zst', 'zstd'],
    ] as const) {
      const compressed = execFileSync(tool, ['-c'], { input: program });
      const found = await inspectAttachment(compressed, `facture.pdf.exe.${suffix}`);
      expect(found.message.attachments[0]).toMatchObject({ detectedType: type, archiveEntries: ['facture.pdf.exe'] });
      expect(found.verdict).toMatchObject({ action: 'quarantine', rule: { id: 'attachments.executable' } });
      const tarball = await inspectAttachment(execFileSync(tool, ['-c'], { input: Buffer.from(words.slice(0, 5000)) }), `sauvegarde.t${suffix === 'bz2' ? 'bz2' : 'zst'}`);
      expect(tarball.message.attachments[0]!.archiveEntries).toEqual(['sauvegarde.tar']);
      expect(tarball.verdict.action).toBe('continue');
    }
    expect(detectType(execFileSync('bzip2', ['-c'], { input: Buffer.alloc(0) }))).toBe('bzip2');
  });

  it('the file in a compressed attachment under a suffix its tool does not know is named as 7-Zip extracts it, the attachment less its last extension', async () => {
    const program = Buffer.from('MZ\x90\x00stand-in program');
    const dir = mkdtempSync(join(root, 'seven-'));
    for (const [tool, args] of [
      ['gzip', ['-n', '-c']],
      ['xz', ['-c']],
      ['bzip2', ['-c']],
      ['zstd', ['-q', '-c']],
    ] as const) {
      const compressed = execFileSync(tool, args, { input: program });
      const out = mkdtempSync(join(dir, `${tool}-`));
      writeFileSync(join(out, 'facture.pdf.exe.bin'), compressed);
      execFileSync('7zz', ['x', '-y', '-bd', `-o${join(out, 'x')}`, join(out, 'facture.pdf.exe.bin')], { stdio: 'ignore' });
      expect(readdirSync(join(out, 'x')), tool).toEqual(['facture.pdf.exe']);
      const found = await inspectAttachment(compressed, 'facture.pdf.exe.bin');
      expect(found.message.attachments[0]!.archiveEntries, tool).toEqual(['facture.pdf.exe']);
      expect(found.verdict, tool).toMatchObject({ action: 'quarantine', rule: { id: 'attachments.executable' } });
    }
    // A gzip that stores a name is extracted under it by 7-Zip, whatever the attachment is called.
    writeFileSync(join(dir, 'rapport.txt'), 'bonjour');
    const stored = execFileSync('gzip', ['-c', '-N', 'rapport.txt'], { cwd: dir });
    expect((await inspectAttachment(stored, 'rapport.exe.bin')).message.attachments[0]!.archiveEntries).toEqual(['rapport.txt']);
    expect(detectType(Buffer.from('BZh9 is how this note starts'))).not.toBe('bzip2');
  });
});

/** A ustar header for `name`, its checksum field written by `field` from the sum (by default as tar writes it). */
function header(name: string, size: number, field?: (sum: number) => string): Buffer {
  const b = Buffer.alloc(512);
  b.write(name, 0, 'latin1');
  b.write('0000644\0', 100);
  b.write(size.toString(8).padStart(11, '0') + '\0', 124);
  b.write('00000000000\0', 136);
  b.write('0', 156);
  b.write('ustar\u000000', 257, 'latin1');
  b.fill(0x20, 148, 156);
  const sum = b.reduce((a, x) => a + x, 0);
  b.write(field ? field(sum) : sum.toString(8).padStart(6, '0') + '\0 ', 148, 'latin1');
  return b;
}
const program = Buffer.concat([Buffer.from('MZ\x90\x00'), Buffer.alloc(600, 1)]);
const tarOf = (h: Buffer) => Buffer.concat([h, program, Buffer.alloc(512 - (program.length % 512)), Buffer.alloc(1024)]);
const xz = (data: Buffer, ...opts: string[]) => execFileSync('xz', ['-c', ...opts], { input: data, maxBuffer: 1 << 26 });

describe('what extractors make of an xz beyond a plain tar', () => {
  it('a small file compressed by xz is no tar (no tar block came out of it); a tar going on in a second stream is incomplete', () => {
    expect(listTar(xz(Buffer.from('notes de la réunion\n')), 1)).toEqual({ isTar: false, entries: [], complete: true });
    const tar = tarOf(header('evil.exe', program.length));
    const twoStreams = Buffer.concat([xz(tar.subarray(0, 100)), xz(tar.subarray(100))]);
    expect(listedByTar(twoStreams)).toEqual({ names: ['evil.exe'], ok: true });
    expect(listTar(twoStreams, 7).complete).toBe(false);
  });

  it('another archive inside an xz or a gzip, which bsdtar extracts, is incomplete; so is a first checksum only GNU tar reads', () => {
    const inner = zip([{ name: 'evil.exe', content: program }]);
    const dir = mkdtempSync(join(root, 'inner-'));
    writeFileSync(join(dir, 'docs.txz'), xz(inner));
    expect(spawnSync('bsdtar', ['-tf', join(dir, 'docs.txz')]).stdout.toString()).toBe('evil.exe\n');
    expect(listTar(xz(inner), 4096).complete).toBe(false);
    expect(listTar(execFileSync('gzip', ['-c'], { input: inner }), 4096).complete).toBe(false);
    expect(listTar(xz(execFileSync('gzip', ['-c'], { input: tarOf(header('evil.exe', program.length)) })), 4096).complete).toBe(false);
    // An old binary cpio (its magic, then a name ending where the header says), but not any file
    // that starts with the same two bytes.
    writeFileSync(join(dir, 'evil.exe'), program);
    const cpioWithProgram = execFileSync('cpio', ['-o', '-H', 'bin', '--quiet'], { cwd: dir, input: 'evil.exe\n' });
    expect(cpioWithProgram.readUInt16LE(0)).toBe(0o70707);
    writeFileSync(join(dir, 'a.cpio.gz'), execFileSync('gzip', ['-c'], { input: cpioWithProgram }));
    expect(spawnSync('bsdtar', ['-tf', join(dir, 'a.cpio.gz')]).stdout.toString()).toBe('evil.exe\n');
    expect(listTar(execFileSync('gzip', ['-c'], { input: cpioWithProgram }), 4096).complete).toBe(false);
    const alike = Buffer.concat([Buffer.from([0xc7, 0x71]), randomBytes(2000)]);
    alike.writeUInt16LE(20, 20);
    alike[26 + 19] = 0x41; // where the name's NUL would be
    expect(listTar(execFileSync('gzip', ['-c'], { input: alike }), 4096)).toEqual({ isTar: false, entries: [], complete: true });
    // An .lzma gzipped (bsdtar reads one compression after another), but not a file of zeros and a power of two.
    const lzmaTar = execFileSync('xz', ['-c', '--format=lzma'], { input: tarOf(header('evil.exe', program.length)) });
    expect(listTar(execFileSync('gzip', ['-c'], { input: lzmaTar }), 4096).complete).toBe(false);
    const zeros = Buffer.concat([Buffer.from([0, 0, 0, 1]), Buffer.alloc(2000)]);
    expect(listTar(execFileSync('gzip', ['-c'], { input: zeros }), 4096)).toEqual({ isTar: false, entries: [], complete: true });
    // A MATLAB v4 matrix (type 0, 1 row, 500 columns, real, its name) starts with numbers that read as an
    // .lzma header; what follows does not decode as LZMA.
    const matrixHeader = Buffer.alloc(20);
    [0, 1, 500, 0, 7].forEach((n, i) => matrixHeader.writeUInt32LE(n, i * 4));
    const matrix = Buffer.concat([matrixHeader, Buffer.from('signal\0'), randomBytes(4000)]);
    expect(listTar(execFileSync('gzip', ['-c'], { input: matrix }), 4096)).toEqual({ isTar: false, entries: [], complete: true });
    const smallZipLzma = execFileSync('xz', ['-c', '--format=lzma'], { input: zip([{ name: 'evil.exe', content: Buffer.from('MZ') }]) });
    expect(listTar(execFileSync('gzip', ['-c'], { input: smallZipLzma }), 4096).complete).toBe(false);
    const tabbed = tarOf(header('evil.exe', program.length, (sum) => '\t' + sum.toString(8).padStart(6, '0') + '\0'));
    expect(execFileSync('tar', ['-tf', '-'], { input: tabbed }).toString()).toBe('evil.exe\n');
    expect(listTar(xz(tabbed), 4096).complete).toBe(false);
    expect(listTar(tabbed, 4096).complete).toBe(false);
  });

  it('an .lzma (tar --lzma) named like a compressed file, which xz and bsdtar read, is refused; other files starting alike are not', async () => {
    const lzma = xz(tarOf(header('evil.exe', program.length)), '--format=lzma');
    expect(listedByTar(lzma)).toEqual({ names: ['evil.exe'], ok: true });
    for (const name of ['docs.txz', 'docs.tar.lzma', 'docs.tar.xz']) {
      const found = await inspectAttachment(lzma, name);
      expect(found.verdict, name).toMatchObject({ action: 'reject', rule: { id: 'mime.too-complex' } });
    }
    expect((await inspectAttachment(lzma, 'mesures.dat')).verdict.action).toBe('continue');
  });

  it('the file an xz holds is named even when its content lists as a tar, and inside a zip', async () => {
    const hta = await inspectAttachment(xz(tarOf(header('page.html', program.length))), 'invoice.hta.xz');
    expect(hta.message.attachments[0]!.archiveEntries).toEqual(['page.html', 'invoice.hta']);
    expect(hta.verdict).toMatchObject({ action: 'quarantine', rule: { id: 'attachments.executable' } });
    const inZip = await inspectAttachment(zip([{ name: 'invoice.exe.xz', content: xz(program) }]), 'docs.zip');
    expect(inZip.message.attachments[0]!.archiveEntries).toContain('invoice.exe.xz/invoice.exe');
    expect(inZip.verdict).toMatchObject({ action: 'quarantine', rule: { id: 'attachments.executable' } });
  });

  it('decodes nothing more once its reader stops it: a bomb is not decoded to its end', () => {
    const bomb = xz(Buffer.alloc(64 << 20), '-0');
    let decoded = 0;
    const reader: XzReader = new XzReader((out) => {
      decoded += out.length;
      reader.stop();
    });
    reader.push(bomb);
    expect(decoded).toBeGreaterThan(0);
    expect(decoded).toBeLessThanOrEqual(2 << 20);
    expect(reader).toMatchObject({ done: true, ended: false, failure: undefined });
  });
});
