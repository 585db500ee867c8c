// Zstandard-compressed tars (.tar.zst, .tzst), listed as they stream, their blocks decoded as they come.
// The files are made by zstd, GNU tar and bsdtar; what `zstd -dc` gives back and what `tar --zstd -tf`
// lists is what Douane must find. Then the shipped policy judging what is inside.

import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { gzipSync } from 'node:zlib';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { detectType } from '../../src/inspect/magic.js';
import { ZstdReader } from '../../src/inspect/zstd.js';
import { expectCompressedTarJudged, listedByGnuTar, listTar, MEMBERS, NAMES, sampleFolder, tarOfSample, UTF8, words } from '../harness/archives.js';
import { inspectAttachment, zip } from '../harness/mime.js';

const root = mkdtempSync(join(tmpdir(), 'douane-zstd-'));
const zstd = (data: Buffer | string, ...opts: string[]) => execFileSync('zstd', ['-c', '-q', ...opts], { input: data, maxBuffer: 1 << 28 });

/** What `zstd -dc` gives back, and whether it read the file without an error. */
function unzstd(compressed: Buffer): { data: Buffer; ok: boolean } {
  const run = spawnSync('zstd', ['-dc', '-q', '--long=27'], { input: compressed, maxBuffer: 1 << 28 });
  return { data: run.stdout, ok: run.status === 0 };
}

/** What Douane decodes, the input cut in chunks of `chunk` bytes. */
function decode(compressed: Buffer, chunk: number) {
  const out: Buffer[] = [];
  const reader = new ZstdReader((data) => out.push(Buffer.from(data)));
  for (let i = 0; i < compressed.length; i += chunk) reader.push(compressed.subarray(i, i + chunk));
  reader.end();
  return { data: Buffer.concat(out), ended: reader.ended, failure: reader.failure, isZstd: reader.isZstd };
}

/** Whether Douane decodes what zstd gives back (compared here: the matcher walks buffers a byte at a time). */
function decodesAsZstd(compressed: Buffer, chunk: number) {
  const { data, ...rest } = decode(compressed, chunk);
  const expected = unzstd(compressed);
  return { same: expected.ok && data.equals(expected.data), ...rest };
}

/** A .tar.zst by bsdtar, written to a file: to a pipe, bsdtar pads it with zeros to 10 KB blocks, which zstd refuses. */
function bsdtarZstd(): Buffer {
  const file = join(mkdtempSync(join(root, 'b-')), 'a.tar.zst');
  execFileSync('bsdtar', ['--zstd', '-cf', file, '-C', sampleFolder(root), ...MEMBERS], { env: UTF8 });
  return readFileSync(file);
}

/** What GNU tar lists in a .tar.zst, and whether it read the whole archive without an error. */
const listedByTar = (archive: Buffer) => listedByGnuTar(root, archive, '--zstd');

/** Where each block header of a zstd frame starts. */
function blockHeaders(frame: Buffer): number[] {
  const descriptor = frame[4]!;
  const single = (descriptor >> 5) & 1;
  const sizeFlag = descriptor >> 6;
  let at = 5 + (single ? 0 : 1) + [0, 1, 2, 4][descriptor & 3]! + (sizeFlag === 0 ? single : 1 << sizeFlag);
  const found: number[] = [];
  for (;;) {
    const header = frame.readUIntLE(at, 3);
    found.push(at);
    at += 3 + (((header >> 1) & 3) === 1 ? 1 : header >>> 3);
    if (header & 1) return found;
  }
}

/** The frame with its `index`th block's type made the reserved one, which zstd rejects. */
function damageBlock(frame: Buffer, index: number): Buffer {
  const damaged = Buffer.from(frame);
  const at = blockHeaders(frame)[index]!;
  damaged[at] = damaged[at]! | 0x06;
  return damaged;
}

/** A skippable frame (magic 0x184D2A5?, its length, its bytes), which zstd reads past. */
function skippable(content: Buffer): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32LE(0x184d2a53, 0);
  head.writeUInt32LE(content.length, 4);
  return Buffer.concat([head, content]);
}

describe('Zstandard decoded as it streams', () => {
  it('gives back what zstd encoded, at each level, however the input is cut', () => {
    const samples: Record<string, Buffer> = {
      text: Buffer.from(words),
      random: randomBytes(300_000),
      runs: Buffer.concat(Array.from({ length: 600 }, (_, i) => Buffer.alloc(1 + (i % 300), i % 7))),
      zeros: Buffer.alloc(2_500_000),
      'one byte': Buffer.from('x'),
      empty: Buffer.alloc(0),
    };
    for (const [name, data] of Object.entries(samples)) {
      // --ultra -22 (a 128 MiB window) takes zstd seconds per sample: one sample is enough.
      for (const level of [['-1'], ['-3'], ['-19'], ['--fast=5'], ...(name === 'text' ? [['--ultra', '-22']] : [])]) {
        const compressed = zstd(data, ...level);
        const zstdOutput = unzstd(compressed);
        expect(zstdOutput.ok && zstdOutput.data.equals(data)).toBe(true);
        for (const chunk of [compressed.length || 1, 4096, ...(compressed.length < 50_000 ? [7] : [])]) {
          const { data: decoded, ...rest } = decode(compressed, chunk);
          expect({ same: decoded.equals(data), ...rest }, `${name} ${level.join(' ')}, chunks of ${chunk}`).toEqual({ same: true, ended: true, failure: undefined, isZstd: true });
        }
      }
    }
  });

  it('reads every frame of a file made of several, and past skippable frames, as zstd does', () => {
    const parts = [Buffer.from(words.slice(0, 300_000)), randomBytes(1000), Buffer.from('fin')];
    const joined = Buffer.concat([zstd(parts[0]!), skippable(Buffer.from('metadata')), zstd(parts[1]!, '--no-check'), zstd(parts[2]!, '-19'), skippable(Buffer.alloc(0))]);
    expect(unzstd(joined).data.equals(Buffer.concat(parts))).toBe(true);
    expect(decodesAsZstd(joined, 1000)).toEqual({ same: true, ended: true, failure: undefined, isZstd: true });
  });

  it('fails where zstd fails: cut short, a damaged block, bytes after the last frame, a dictionary; a file that is no zstd is said so', () => {
    const data = Buffer.from(words);
    const whole = zstd(data);

    const cut = whole.subarray(0, whole.length - 20);
    expect(unzstd(cut).ok).toBe(false);
    expect(decode(cut, 4096)).toMatchObject({ ended: false, failure: 'cut short' });

    // A byte changed inside a block's content is caught by the content checksum only, which Douane
    // does not verify (what comes out is what zstd wrote out before failing at the end); a damaged
    // block header or entropy table fails where it is.
    const damaged = damageBlock(whole, 5);
    expect(unzstd(damaged).ok).toBe(false);
    expect(decode(damaged, 4096)).toMatchObject({ ended: false, failure: 'damaged block' });

    const trailing = Buffer.concat([whole, Buffer.from('trailing bytes\n')]);
    expect(unzstd(trailing).ok).toBe(false);
    expect(decode(trailing, 4096)).toMatchObject({ ended: false, failure: 'unknown frame' });

    // The header's dictionary flag set, and a dictionary number after the window byte.
    const small = zstd('bonjour', '--no-check');
    const descriptor = small[4]!;
    expect(descriptor & 3).toBe(0);
    const withDictionary = Buffer.concat([small.subarray(0, 4), Buffer.from([descriptor | 1]), small.subarray(5, 6), Buffer.from([7]), small.subarray(6)]);
    expect(unzstd(withDictionary).ok).toBe(false);
    expect(decode(withDictionary, 100)).toMatchObject({ isZstd: true, failure: 'dictionary' });

    expect(decode(Buffer.from('Pas un zstd'), 100)).toMatchObject({ isZstd: false, ended: false, failure: 'not zstd' });
  });

  it('fails on a match reaching further back than it keeps (8 MiB, a quarter more as it slides), and decodes what fits', () => {
    const again = randomBytes(1 << 20);
    const near = Buffer.concat([again, randomBytes(17 << 20), again]);
    const far = zstd(near, '--long=27', '-1');
    expect(unzstd(far).ok).toBe(true);
    // The long-distance match found: the second copy is not stored again.
    expect(far.length).toBeLessThan(near.length - (1 << 19));
    const decoded = decode(far, 65_536);
    expect(decoded).toMatchObject({ ended: false, failure: 'window past the one kept' });
    expect(decoded.data.equals(near.subarray(0, decoded.data.length))).toBe(true);
    // The same bytes without long matches (zstd -19's window is 8 MiB) decode whole.
    expect(decodesAsZstd(zstd(near, '-19'), 65_536)).toMatchObject({ same: true, failure: undefined });
  });

  it('decodes nothing more once its reader stops it: a bomb is not decoded to its end', () => {
    const bomb = zstd(Buffer.alloc(64 << 20), '-19');
    let decoded = 0;
    const reader: ZstdReader = new ZstdReader((out) => {
      decoded += out.length;
      reader.stop();
    });
    reader.push(bomb);
    reader.end();
    expect(decoded).toBeGreaterThan(0);
    expect(decoded).toBeLessThanOrEqual(128 * 1024);
    expect(reader).toMatchObject({ done: true, ended: false, failure: undefined });
  });
});

describe('zstd-compressed tar listing', () => {
  it('lists what GNU tar lists in a .tar.zst by GNU tar and by bsdtar, at several levels, in several frames, however it is cut', () => {
    const archives: [string, Buffer][] = [
      ['tar --zstd', execFileSync('tar', ['--zstd', '-cf', '-', '-C', sampleFolder(root), ...MEMBERS], { env: UTF8 })],
      ['bsdtar --zstd', bsdtarZstd()],
      ['zstd -19 of a larger tar', zstd(tarOfSample(root, { bulk: 400_000 }), '-19')],
    ];
    const tar = tarOfSample(root);
    archives.push(['two frames, cut inside a header', Buffer.concat([zstd(tar.subarray(0, 700)), zstd(tar.subarray(700))])]);
    for (const [how, archive] of archives) {
      expect(listedByTar(archive), how).toEqual({ names: NAMES, ok: true });
      for (const chunk of [archive.length, 511, 65_536]) expect(listTar(archive, chunk), `${how}, chunks of ${chunk}`).toEqual({ isTar: true, entries: NAMES, complete: true });
    }
  });

  it('says the listing is incomplete when the zstd cannot be read whole before the tar in it ended: damaged, cut short, past the budget', () => {
    const whole = zstd(tarOfSample(root, { bulk: 400_000 }));
    const cut = whole.subarray(0, whole.length >> 1);
    expect(listedByTar(cut).ok).toBe(false);
    expect(listTar(cut, 4096)).toMatchObject({ isTar: true, complete: false });

    const damaged = damageBlock(whole, blockHeaders(whole).length >> 1);
    expect(listedByTar(damaged).ok).toBe(false);
    expect(listTar(damaged, 4096)).toMatchObject({ isTar: true, complete: false });

    expect(listTar(whole, 4096, { bytes: 10_000 })).toMatchObject({ isTar: true, complete: false });
  });

  it('is not fooled: a zstd of a text, or of a few bytes, is no tar; a damaged first block, or another archive inside, which bsdtar extracts, is incomplete', () => {
    expect(listTar(zstd(words), 1000)).toEqual({ isTar: false, entries: [], complete: true });
    expect(listTar(zstd('bonjour'), 1000)).toEqual({ isTar: false, entries: [], complete: true });
    // A frame header, then a block of the reserved type: zstd fails on it, and what it hides cannot be known.
    expect(listTar(Buffer.concat([Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x00]), Buffer.alloc(5000, 0xff)]), 1000)).toEqual({ isTar: false, entries: [], complete: false });
    expect(listTar(Buffer.from('Pièce jointe: '.repeat(100)), 1000)).toEqual({ isTar: false, entries: [], complete: true });

    const zipped = zip([{ name: 'facture.exe', content: Buffer.from('MZ') }]);
    const file = join(mkdtempSync(join(root, 'z-')), 'a.zst');
    writeFileSync(file, zstd(zipped));
    expect(execFileSync('bsdtar', ['-tf', file]).toString()).toBe('facture.exe\n');
    expect(listTar(zstd(zipped), 1000)).toMatchObject({ isTar: false, complete: false });
  });
});

describe('zstd-compressed tars as attachments', () => {
  it('a .tar.zst holding a program is quarantined by the shipped policy, one inside a zip too, and the file in a .zst inside a zip is named', async () => {
    await expectCompressedTarJudged({ archive: zstd(tarOfSample(root)), type: 'zstd', suffix: 'zst', tarSuffix: 'tzst', compress: (data) => zstd(data) });
  });
});

describe('what zstd and bsdtar read beyond what zstd writes', () => {
  // Crafted by a hand-written encoder (fixtures/archives/README.md): each holds a tar of evil.exe.
  const fixture = (name: string) => readFileSync(join('fixtures/archives', name));

  it('lists the tar in frames libzstd reads though the format says otherwise: 12-bit Huffman codes, sequences read past their start, four literal streams with bits left, reserved mode bits', () => {
    for (const name of ['zstd-huffman-12-bits.tar.zst', 'zstd-sequences-read-past.tar.zst', 'zstd-four-streams-bits-left.tar.zst', 'zstd-modes-reserved-bits.tar.zst']) {
      const archive = fixture(name);
      expect(listedByTar(archive), name).toEqual({ names: ['evil.exe'], ok: true });
      expect(listTar(archive, 4096), name).toEqual({ isTar: true, entries: ['evil.exe'], complete: true });
    }
  });

  it('says the listing is incomplete when a zstd file fails before anything came out: zstd before 1.0, another format after an empty frame', () => {
    const dir = mkdtempSync(join(root, 'one-'));
    writeFileSync(join(dir, 'evil.exe'), 'MZ');
    const tar = execFileSync('tar', ['-cf', '-', '-C', dir, 'evil.exe']);
    // An empty frame, then a gzip: zstd decompresses one after the other, and GNU tar lists what came out.
    const mixed = Buffer.concat([zstd(Buffer.alloc(0)), gzipSync(tar)]);
    expect(listedByTar(mixed)).toEqual({ names: ['evil.exe'], ok: true });
    expect(listTar(mixed, 4096)).toMatchObject({ complete: false });
    // A frame of zstd 0.7 (its magic, then what Douane does not decode).
    const legacy = Buffer.concat([Buffer.from([0x27, 0xb5, 0x2f, 0xfd]), randomBytes(200)]);
    expect(detectType(legacy)).toBe('zstd');
    expect(listTar(legacy, 4096)).toMatchObject({ complete: false });
  });

  it('a file starting with a skippable frame is zstd: compressed again inside, it is incomplete; one program in it is named', async () => {
    const program = Buffer.from('MZ\x90\x00stand-in program');
    const skippableFirst = Buffer.concat([skippable(Buffer.from('meta')), zstd(program)]);
    expect(unzstd(skippableFirst)).toMatchObject({ ok: true });
    expect(detectType(skippableFirst)).toBe('zstd');
    const found = await inspectAttachment(skippableFirst, 'invoice.exe.zst');
    expect(found.message.attachments[0]).toMatchObject({ detectedType: 'zstd', archiveEntries: ['invoice.exe'] });
    expect(found.verdict).toMatchObject({ action: 'quarantine', rule: { id: 'attachments.executable' } });

    const twice = zstd(Buffer.concat([skippable(Buffer.from('meta')), zstd(tarOfSample(root))]));
    expect(listTar(twice, 4096)).toMatchObject({ isTar: false, complete: false });
  });

  it('content bsdtar opens as an archive after decompressing is incomplete: WARC, uuencoded, LZ4 legacy', () => {
    const warc = Buffer.from('WARC/1.0\r\nWARC-Type: resource\r\nWARC-Target-URI: file:///evil.exe\r\nWARC-Date: 2026-11-28T00:00:00Z\r\nContent-Length: 2\r\n\r\nMZ\r\n\r\n');
    const file = join(mkdtempSync(join(root, 'warc-')), 'a.warc.zst');
    writeFileSync(file, zstd(warc));
    expect(execFileSync('bsdtar', ['-tf', file]).toString()).toContain('evil.exe');
    // As uuencode writes it: the begin line, a line of 2 bytes ("MZ"), the empty line, end.
    const uuencoded = Buffer.from('Pièce jointe :\nbegin 644 evil.exe\n"35H\n`\nend\n');
    const lz4Legacy = Buffer.concat([Buffer.from([0x02, 0x21, 0x4c, 0x18]), randomBytes(100)]);
    for (const [name, content] of [['WARC', warc], ['uuencoded', uuencoded], ['LZ4 legacy', lz4Legacy]] as const) {
      expect(listTar(zstd(content), 4096), name).toMatchObject({ isTar: false, complete: false });
      expect(listTar(gzipSync(content), 4096), `${name}, gzipped`).toMatchObject({ isTar: false, complete: false });
    }
  });
});
