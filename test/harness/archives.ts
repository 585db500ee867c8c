// Archives for the inspection tests: a sample folder (a program two levels down, names not in ASCII,
// text and random data), what GNU tar lists in an archive, and Douane's tar lister fed in chunks.

import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { expect } from 'vitest';
import { inflateBudget, type InflateBudget } from '../../src/inspect/deflate.js';
import { TarLister } from '../../src/inspect/tar.js';
import { inspectAttachment, zip } from './mime.js';

export const UTF8 = { ...process.env, LANG: 'C.UTF-8', LC_ALL: 'C.UTF-8' };
export const words = Array.from({ length: 200_000 }, (_, i) => ['facture', 'été', 'Zürich', 'mot', String(i % 977)][i % 5]).join(' ');

/** The sample folder's top-level members, and every name GNU tar lists in a tar of them. */
export const MEMBERS = ['Factures', 'Reçus', 'LISEZ-MOI.txt', 'données.bin'];
export const NAMES = ['Factures/', 'Factures/2025/', 'Factures/2025/facture.pdf.exe', 'Reçus/', 'Reçus/été.txt', 'LISEZ-MOI.txt', 'données.bin'];

/** A folder under `root` with a program two levels down, a name not in ASCII, and `bulk` bytes of text and random data. */
export function sampleFolder(root: string, bulk = 70_000): string {
  const dir = mkdtempSync(join(root, 'in-'));
  const files: Record<string, Buffer> = {
    'Factures/2025/facture.pdf.exe': Buffer.from('MZ\x90\x00stand-in program'),
    'Reçus/été.txt': Buffer.from('bonjour'),
    'LISEZ-MOI.txt': Buffer.from(words.slice(0, bulk)),
    'données.bin': randomBytes(bulk),
  };
  for (const [name, data] of Object.entries(files)) {
    mkdirSync(dirname(join(dir, name)), { recursive: true });
    writeFileSync(join(dir, name), data);
  }
  return dir;
}

/** A tar of a sample folder, by GNU tar or bsdtar. */
export function tarOfSample(root: string, opts: { bulk?: number; tool?: 'tar' | 'bsdtar' } = {}): Buffer {
  return execFileSync(opts.tool ?? 'tar', ['-cf', '-', '-C', sampleFolder(root, opts.bulk), ...MEMBERS], { env: UTF8, maxBuffer: 1 << 28 });
}

/** What GNU tar lists in a compressed tar (`-J`, `-j`, `--zstd`), and whether it read the whole archive without an error. */
export function listedByGnuTar(root: string, archive: Buffer, compression: string): { names: string[]; ok: boolean } {
  const file = join(mkdtempSync(join(root, 'l-')), 'archive');
  writeFileSync(file, archive);
  const run = spawnSync('tar', [compression, '-tf', file], { env: UTF8, maxBuffer: 1 << 26 });
  return { names: run.stdout.toString('utf8').split('\n').filter(Boolean), ok: run.status === 0 };
}

/** Douane's tar lister fed `bytes` in chunks of `chunk`; `budget` is the caller's object, filled in, so that what was spent shows in it. */
export function tarLister(bytes: Buffer, chunk: number, budget: Partial<InflateBudget> = {}): TarLister {
  const lister = new TarLister(1000, Object.assign(budget, { ...inflateBudget(), ...budget }));
  for (let i = 0; i < bytes.length; i += chunk) lister.push(bytes.subarray(i, i + chunk));
  lister.end();
  return lister;
}

export function listTar(bytes: Buffer, chunk: number, budget: Partial<InflateBudget> = {}) {
  return tarLister(bytes, chunk, budget).listing;
}

/**
 * A compressed tar of the sample folder as an attachment and inside a zip, one compressed program inside
 * a zip, and one compressed text, judged by the shipped policy: the program is found each time.
 */
export async function expectCompressedTarJudged(c: { archive: Buffer; type: string; suffix: string; tarSuffix: string; compress: (data: Buffer | string) => Buffer }): Promise<void> {
  const attached = await inspectAttachment(c.archive, `factures.tar.${c.suffix}`);
  expect(attached.message.attachments[0]).toMatchObject({ detectedType: c.type, archiveEntries: NAMES });
  expect(attached.verdict).toMatchObject({ action: 'quarantine', rule: { id: 'attachments.executable' } });

  const inZip = await inspectAttachment(zip([{ name: `docs.${c.tarSuffix}`, content: c.archive }]), 'docs.zip');
  expect(inZip.message.attachments[0]!.archiveEntries).toContain(`docs.${c.tarSuffix}/Factures/2025/facture.pdf.exe`);
  expect(inZip.verdict).toMatchObject({ action: 'quarantine', rule: { id: 'attachments.executable' } });

  const single = await inspectAttachment(zip([{ name: `docs/invoice.exe.${c.suffix}`, content: c.compress('MZ\x90\x00') }]), 'docs.zip');
  expect(single.message.attachments[0]!.archiveEntries).toContain(`docs/invoice.exe.${c.suffix}/invoice.exe`);
  expect(single.verdict).toMatchObject({ action: 'quarantine', rule: { id: 'attachments.executable' } });

  const text = await inspectAttachment(c.compress(words.slice(0, 5000)), `notes.txt.${c.suffix}`);
  expect(text.message.attachments[0]!.archiveEntries).toEqual(['notes.txt']);
  expect(text.verdict.action).toBe('continue');
}

/** A word of letters only, a different one for each n: an extension of a kind of its own (no digits). */
export function letterWord(n: number): string {
  return n.toString(26).replace(/\d/g, (d) => 'qrstuvwxyz'[Number(d)]!);
}

/** A .tar.gz holding a program after `zeros` bytes of zeros (compressed, a few kilobytes): past an inflate budget, it hides the program. */
export function programBehindZeros(zeros: number): Buffer {
  const dir = mkdtempSync(join(tmpdir(), 'douane-zeros-'));
  try {
    writeFileSync(join(dir, 'disk.img'), Buffer.alloc(zeros));
    writeFileSync(join(dir, 'facture.pdf.exe'), Buffer.from('MZ\x90\x00stand-in program'));
    return execFileSync('tar', ['-czf', '-', '-C', dir, 'disk.img', 'facture.pdf.exe']);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
