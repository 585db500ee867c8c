// bzip2-compressed tars (.tar.bz2, .tbz2), listed as they stream, their blocks decoded as they come
// whole. The files are made by bzip2, GNU tar and bsdtar; what `bzip2 -dc` gives back and what
// `tar -tjf` lists is what Douane must find. Then the shipped policy judging what is inside.

import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Bzip2Reader } from '../../src/inspect/bzip2.js';
import { expectCompressedTarJudged, listedByGnuTar, listTar, MEMBERS, NAMES, sampleFolder, tarOfSample, UTF8, words } from '../harness/archives.js';
import { zip } from '../harness/mime.js';

const root = mkdtempSync(join(tmpdir(), 'douane-bzip2-'));
const bzip2 = (data: Buffer | string, ...opts: string[]) => execFileSync('bzip2', ['-c', ...opts], { input: data, maxBuffer: 1 << 28 });

/** What `bzip2 -dc` gives back, and whether it read the file without an error. */
function bunzip2(compressed: Buffer): { data: Buffer; ok: boolean } {
  const run = spawnSync('bzip2', ['-dc'], { input: compressed, maxBuffer: 1 << 28 });
  return { data: run.stdout, ok: run.status === 0 };
}

/** What Douane decodes, the input cut in chunks of `chunk` bytes. */
function decode(compressed: Buffer, chunk: number) {
  const out: Buffer[] = [];
  const reader = new Bzip2Reader((data) => out.push(Buffer.from(data)));
  for (let i = 0; i < compressed.length; i += chunk) reader.push(compressed.subarray(i, i + chunk));
  reader.end();
  return { data: Buffer.concat(out), ended: reader.ended, failure: reader.failure, isBzip2: reader.isBzip2 };
}

/** Whether Douane decodes what bzip2 gives back (compared here: the matcher walks buffers a byte at a time). */
function decodesAsBzip2(compressed: Buffer, chunk: number) {
  const { data, ...rest } = decode(compressed, chunk);
  return { same: data.equals(bunzip2(compressed).data), ...rest };
}

/** What GNU tar lists in a .tar.bz2, and whether it read the whole archive without an error. */
const listedByTar = (archive: Buffer) => listedByGnuTar(root, archive, '-j');

describe('bzip2 decoded as it streams', () => {
  it('gives back what bzip2 encoded, at each block size, however the input is cut', () => {
    const samples: Record<string, Buffer> = {
      text: Buffer.from(words),
      random: randomBytes(300_000),
      // runs of every length around the four bytes where bzip2 starts counting, and long ones
      runs: Buffer.concat(Array.from({ length: 600 }, (_, i) => Buffer.alloc(1 + (i % 300), i % 7))),
      zeros: Buffer.alloc(2_500_000),
      'one byte': Buffer.from('x'),
      empty: Buffer.alloc(0),
    };
    for (const [name, data] of Object.entries(samples)) {
      for (const level of ['-1', '-9']) {
        const compressed = bzip2(data, level);
        const bzip2Output = bunzip2(compressed);
        expect(bzip2Output.ok && bzip2Output.data.equals(data)).toBe(true);
        for (const chunk of [compressed.length || 1, 7, 4096]) {
          expect(decodesAsBzip2(compressed, chunk), `${name} ${level}, chunks of ${chunk}`).toEqual({ same: true, ended: true, failure: undefined, isBzip2: true });
        }
      }
    }
  });

  it('reads every stream of a file made of several, as pbzip2 writes them, and ignores what follows the last, as bzip2 does', () => {
    const parts = [Buffer.from(words.slice(0, 300_000)), randomBytes(1000), Buffer.from('fin')];
    const joined = Buffer.concat(parts.map((p) => bzip2(p, '-1')));
    expect(bunzip2(joined).data.equals(Buffer.concat(parts))).toBe(true);
    expect(decodesAsBzip2(joined, 1000)).toEqual({ same: true, ended: true, failure: undefined, isBzip2: true });

    const trailing = Buffer.concat([bzip2(parts[0]!), Buffer.from('trailing bytes\n')]);
    expect(bunzip2(trailing)).toMatchObject({ ok: true });
    expect(bunzip2(trailing).data.equals(parts[0]!)).toBe(true);
    expect(decodesAsBzip2(trailing, 4096)).toEqual({ same: true, ended: true, failure: undefined, isBzip2: true });
  });

  it('fails where bzip2 fails: cut short, a damaged block, a wrong stream checksum, a randomised block; a file that is no bzip2 is said so', () => {
    const data = Buffer.from(words);
    const whole = bzip2(data);

    const cut = whole.subarray(0, whole.length - 20);
    expect(bunzip2(cut).ok).toBe(false);
    expect(decode(cut, 4096)).toMatchObject({ ended: false, failure: 'cut short' });

    const damaged = Buffer.from(whole);
    damaged[whole.length >> 1] = damaged[whole.length >> 1]! ^ 0x10;
    expect(bunzip2(damaged).ok).toBe(false);
    expect(decode(damaged, 4096)).toMatchObject({ ended: false, failure: expect.stringMatching(/damaged block|block checksum/) });

    // The stream's checksum ends at most seven padding bits before the file does.
    const wrongStream = Buffer.from(whole);
    wrongStream[whole.length - 2] = wrongStream[whole.length - 2]! ^ 0x01;
    expect(bunzip2(wrongStream).ok).toBe(false);
    const decoded = decode(wrongStream, 4096);
    expect(decoded).toMatchObject({ ended: false, failure: 'stream checksum' });
    expect(decoded.data.equals(data)).toBe(true);

    // The flag right after the first block's checksum: "BZh9", the block magic, 32 bits of CRC.
    const randomised = Buffer.from(whole);
    randomised[14] = randomised[14]! | 0x80;
    expect(decode(randomised, 4096)).toMatchObject({ data: Buffer.alloc(0), failure: 'randomised block' });

    expect(decode(Buffer.from('BZh9 is how this note starts, and nothing more'), 100)).toMatchObject({ isBzip2: false, ended: false, failure: 'damaged block' });
    expect(decode(Buffer.from('Bonjour'), 100)).toMatchObject({ isBzip2: false, ended: false, failure: 'not bzip2' });
  });

  it('decodes nothing more once its reader stops it: a bomb is not decoded to its end', () => {
    const bomb = bzip2(Buffer.alloc(64 << 20));
    let decoded = 0;
    const reader: Bzip2Reader = new Bzip2Reader((out) => {
      decoded += out.length;
      reader.stop();
    });
    reader.push(bomb);
    reader.end();
    expect(decoded).toBeGreaterThan(0);
    expect(decoded).toBeLessThanOrEqual(64 * 1024);
    expect(reader).toMatchObject({ done: true, ended: false, failure: undefined });
  });
});

describe('bzip2-compressed tar listing', () => {
  it('lists what GNU tar lists in a .tar.bz2 by GNU tar and by bsdtar, at each block size, in several streams, however it is cut', () => {
    const archives: [string, Buffer][] = [
      ['tar -j', execFileSync('tar', ['-cjf', '-', '-C', sampleFolder(root), ...MEMBERS], { env: UTF8 })],
      ['bsdtar -j', execFileSync('bsdtar', ['-cjf', '-', '-C', sampleFolder(root), ...MEMBERS], { env: UTF8 })],
      ['bzip2 -1 of a larger tar', bzip2(tarOfSample(root, { bulk: 400_000 }), '-1')],
    ];
    const tar = tarOfSample(root);
    archives.push(['two streams, cut inside a header', Buffer.concat([bzip2(tar.subarray(0, 700)), bzip2(tar.subarray(700))])]);
    for (const [how, archive] of archives) {
      expect(listedByTar(archive), how).toEqual({ names: NAMES, ok: true });
      for (const chunk of [archive.length, 511, 65_536]) expect(listTar(archive, chunk), `${how}, chunks of ${chunk}`).toEqual({ isTar: true, entries: NAMES, complete: true });
    }
  });

  it('says the listing is incomplete when the bzip2 cannot be read whole before the tar in it ended: damaged, cut short, past the budget', () => {
    // Blocks of 100 KB, so that the cut and the damage come after the first blocks came out.
    const whole = bzip2(tarOfSample(root, { bulk: 400_000 }), '-1');
    const cut = whole.subarray(0, whole.length >> 1);
    expect(listedByTar(cut).ok).toBe(false);
    expect(listTar(cut, 4096)).toMatchObject({ isTar: true, complete: false });

    const damaged = Buffer.from(whole);
    damaged[whole.length >> 1] = damaged[whole.length >> 1]! ^ 0x10;
    expect(listedByTar(damaged).ok).toBe(false);
    expect(listTar(damaged, 4096)).toMatchObject({ isTar: true, complete: false });

    expect(listTar(whole, 4096, { bytes: 10_000 })).toMatchObject({ isTar: true, complete: false });

    // Cut in its first block: no tool extracts anything, but what the file hides cannot be known.
    const firstBlock = whole.subarray(0, 2000);
    expect(listedByTar(firstBlock).names).toEqual([]);
    expect(listTar(firstBlock, 4096)).toEqual({ isTar: false, entries: [], complete: false });
  });

  it('is not fooled: a bzip2 of a text, or of a few bytes, is no tar; a damaged first block, or another archive inside, which bsdtar extracts, is incomplete', () => {
    expect(listTar(bzip2(words), 1000)).toEqual({ isTar: false, entries: [], complete: true });
    expect(listTar(bzip2('bonjour'), 1000)).toEqual({ isTar: false, entries: [], complete: true });
    // A bzip2 header and block magic, then bytes that decode as no block: what they hide cannot be known.
    expect(listTar(Buffer.concat([Buffer.from('BZh91AY&SY'), randomBytes(5000)]), 1000)).toEqual({ isTar: false, entries: [], complete: false });
    expect(listTar(Buffer.from('BZh9 is how this note starts, and nothing more'), 1000)).toEqual({ isTar: false, entries: [], complete: true });

    const zipped = zip([{ name: 'facture.exe', content: Buffer.from('MZ') }]);
    const file = join(mkdtempSync(join(root, 'z-')), 'a.bz2');
    writeFileSync(file, bzip2(zipped));
    expect(execFileSync('bsdtar', ['-tf', file]).toString()).toBe('facture.exe\n');
    expect(listTar(bzip2(zipped), 1000)).toMatchObject({ isTar: false, complete: false });
  });
});

describe('bzip2-compressed tars as attachments', () => {
  it('a .tar.bz2 holding a program is quarantined by the shipped policy, one inside a zip too, and the file in a .bz2 inside a zip is named', async () => {
    await expectCompressedTarJudged({ archive: bzip2(tarOfSample(root)), type: 'bzip2', suffix: 'bz2', tarSuffix: 'tbz2', compress: (data) => bzip2(data) });
  });
});

describe('what bzip2 and bsdtar read beyond what bzip2 writes', () => {
  it('a randomised block (bzip2 0.9.0), which bzip2 1.0, bsdtar and 7-Zip still read, is not decoded: the listing is incomplete', () => {
    const archive = readFileSync(join('fixtures/archives', 'bzip2-randomised.tar.bz2'));
    expect(listedByTar(archive)).toEqual({ names: ['notes.txt', 'evil.exe'], ok: true });
    expect(decode(archive, 4096)).toMatchObject({ isBzip2: true, failure: 'randomised block' });
    expect(listTar(archive, 4096)).toEqual({ isTar: false, entries: [], complete: false });
  });
});
