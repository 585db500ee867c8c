// Archives Douane lists but does not open the archives of (7z, RAR, cabinets, disk images): one of them
// holding a zip, a tar or another archive cannot be said to hold no program, so it is refused as too
// complex to check, rather than let through with the inner archive's files unseen.

import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { UTF8 } from '../harness/archives.js';
import { inspectAttachment, zip } from '../harness/mime.js';
import { rar4, rar5 } from '../harness/rar.js';

const root = mkdtempSync(join(tmpdir(), 'douane-unopened-'));
const INNER = zip([{ name: 'facture.pdf.exe', content: Buffer.from('MZ\x90\x00') }]);
const PDF = Buffer.from('%PDF-1.4\n%%EOF\n');

/** The archive of each kind holding `name`, and what a real extractor lists in it. */
function archives(name: string, content: Buffer): { kind: string; file: string; archive: Buffer; listed: string }[] {
  const dir = mkdtempSync(join(root, 'a-'));
  writeFileSync(join(dir, name), content);
  execFileSync('7zz', ['a', '-bso0', 'docs.7z', name], { cwd: dir });
  execFileSync('genisoimage', ['-quiet', '-J', '-R', '-o', 'docs.iso', name], { cwd: dir });
  execFileSync('gcab', ['-c', 'docs.cab', name], { cwd: dir });
  writeFileSync(join(dir, 'nouveau.rar'), rar5([{ name, data: content }]));
  writeFileSync(join(dir, 'ancien.rar'), rar4([{ name, data: content }]));
  const list = (tool: string[], file: string) => execFileSync(tool[0]!, [...tool.slice(1), file], { cwd: dir, encoding: 'utf8', env: UTF8 });
  return [
    { kind: '7z', file: 'docs.7z', listed: list(['7zz', 'l'], 'docs.7z') },
    { kind: 'iso', file: 'docs.iso', listed: list(['bsdtar', '-tf'], 'docs.iso') },
    { kind: 'cab', file: 'docs.cab', listed: list(['bsdtar', '-tf'], 'docs.cab') },
    // bsdtar reads a RAR that ends with a stored zip as that zip: The Unarchiver reads it as a RAR.
    { kind: 'rar', file: 'nouveau.rar', listed: list(['lsar'], 'nouveau.rar') },
    { kind: 'rar', file: 'ancien.rar', listed: list(['lsar'], 'ancien.rar') },
  ].map((a) => ({ ...a, archive: readFileSync(join(dir, a.file)) }));
}

describe('an archive inside an archive Douane does not open', () => {
  it('is refused as too complex: a zip holding a program, in a 7z, a disk image, a cabinet or a RAR', async () => {
    for (const { kind, file, archive, listed } of archives('docs.zip', INNER)) {
      expect(listed, file).toContain('docs.zip');
      const { message, verdict } = await inspectAttachment(archive, file);
      // A disk image also shows its 8.3 names, and the zip stored in it is found by its signature.
      expect(message.attachments[0], file).toMatchObject({ detectedType: kind, archiveEntries: expect.arrayContaining(['docs.zip']) });
      expect(message.mimeLimitExceeded, file).toBe('archive_entries');
      // Where the zip is stored as it is (a disk image, a RAR written here), its program shows too, and
      // the rule for programs speaks first.
      const seen = message.attachments[0]!.archiveEntries.some((n) => n.endsWith('.exe'));
      expect(verdict, file).toMatchObject(seen ? { action: 'quarantine', rule: { id: 'attachments.executable' } } : { action: 'reject', rule: { id: 'mime.too-complex' } });
    }
  });

  it('is refused whatever kind of archive it is named (.tar.gz, .7z), and inside a zip too', async () => {
    for (const name of ['sauvegarde.tar.gz', 'photos.7z', 'disque.iso']) {
      const [sevenZip] = archives(name, PDF);
      expect((await inspectAttachment(sevenZip!.archive, 'docs.7z')).message.mimeLimitExceeded, name).toBe('archive_entries');
    }
    const [sevenZip] = archives('docs.zip', INNER);
    const zipped = await inspectAttachment(zip([{ name: 'envoi.7z', content: sevenZip!.archive }]), 'envoi.zip');
    expect(zipped.verdict).toMatchObject({ action: 'reject', rule: { id: 'mime.too-complex' } });
  });

  it('is refused when 7-Zip names it after the 7z it is stored in without a name (docs.zip.7z holds docs.zip)', async () => {
    const dir = mkdtempSync(join(root, 'unnamed-'));
    execFileSync('7zz', ['a', '-bd', '-bso0', '-si', 'docs.zip.7z'], { cwd: dir, input: INNER });
    execFileSync('7zz', ['x', '-bd', '-bso0', '-ox', 'docs.zip.7z'], { cwd: dir });
    expect(readFileSync(join(dir, 'x', 'docs.zip'))).toEqual(INNER);
    const archive = readFileSync(join(dir, 'docs.zip.7z'));
    const attached = await inspectAttachment(archive, 'docs.zip.7z');
    expect(attached.message.attachments[0]!.archiveEntries).toEqual(['docs.zip']);
    expect(attached.verdict).toMatchObject({ action: 'reject', rule: { id: 'mime.too-complex' } });
    const zipped = await inspectAttachment(zip([{ name: 'docs.zip.7z', content: archive }]), 'envoi.zip');
    expect(zipped.message.attachments[0]!.archiveEntries).toContain('docs.zip.7z/docs.zip');
    expect(zipped.verdict).toMatchObject({ action: 'reject', rule: { id: 'mime.too-complex' } });
  });

  it('holding no archive, each is listed and let through', async () => {
    for (const { kind, file, archive } of archives('facture.pdf', PDF)) {
      const { message, verdict } = await inspectAttachment(archive, file);
      expect(message.attachments[0], file).toMatchObject({ detectedType: kind, archiveEntries: expect.arrayContaining(['facture.pdf']) });
      expect(message.mimeLimitExceeded, file).toBeUndefined();
      expect(verdict.action, file).toBe('continue');
    }
  });
});
