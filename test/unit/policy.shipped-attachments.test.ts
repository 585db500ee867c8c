// The shipped rule on attachments Windows runs, installs or mounts with a double click: the same kinds of
// file by name as an attachment and inside an archive, whatever their case, and ordinary documents pass.

import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { inspectAttachment, zip } from '../harness/mime.js';

interface Rule {
  id: string;
  when: { any: Record<string, { in?: string[]; matches?: string }>[] };
}

const rules = parse(readFileSync('policies/rules.yaml', 'utf8')) as { rules: Rule[] };
const executable = rules.rules.find((r) => r.id === 'attachments.executable')!;
const extensions = executable.when.any.find((c) => c['attachments.extensions'])!['attachments.extensions']!.in!;
const entries = new RegExp(executable.when.any.find((c) => c['archive.entries'])!['archive.entries']!.matches!, 'iu');

describe('shipped policy: attachments.executable', () => {
  it('names the same kinds of file as an attachment and inside an archive', () => {
    expect(extensions.length).toBeGreaterThan(30);
    for (const ext of extensions) expect(entries.test(`dossier/facture.${ext}`), ext).toBe(true);
    // Every kind the pattern names is in the list: the pattern is the list's alternatives, no more.
    const alternatives = /^\\\.\((.*)\)\$$/.exec(executable.when.any.find((c) => c['archive.entries'])!['archive.entries']!.matches!)![1]!.split('|');
    expect(alternatives.sort()).toEqual([...extensions].sort());
  });

  it('quarantines what Windows runs or mounts, as an attachment and inside a zip, whatever the case of its name', async () => {
    for (const name of ['disque.vhd', 'Disque.VHDX', 'console.msc', 'lien.url', 'panneau.cpl', 'module.xll', 'aide.chm', 'app.msixbundle', 'recherche.search-ms', 'base.reg', 'script.wsh']) {
      const attached = await inspectAttachment(Buffer.from('not really'), name);
      expect(attached.verdict, name).toMatchObject({ action: 'quarantine', rule: { id: 'attachments.executable' } });
      const zipped = await inspectAttachment(zip([{ name: `docs/${name.toUpperCase()}`, content: Buffer.from('not really') }]), 'docs.zip');
      expect(zipped.verdict, `${name} in a zip`).toMatchObject({ action: 'quarantine', rule: { id: 'attachments.executable' } });
    }
  });

  it('lets ordinary documents through, as attachments and inside a zip', async () => {
    for (const name of ['rapport.pdf', 'tableau.xlsx', 'photo.jpg', 'notes.txt', 'plan.dwg', 'urls.txt', 'regles.odt']) {
      expect((await inspectAttachment(Buffer.from('not really'), name)).verdict.action, name).toBe('continue');
      expect((await inspectAttachment(zip([{ name, content: Buffer.from('not really') }]), 'docs.zip')).verdict.action, `${name} in a zip`).toBe('continue');
    }
  });
});

describe('shipped policy: attachments.unreadable-archive', () => {
  const rule = rules.rules.find((r) => r.id === 'attachments.unreadable-archive')!;

  it('names the same formats as an attachment and inside an archive', () => {
    const [attached, inside] = [rule.when.any[0]!['attachments.extensions']!.matches!, rule.when.any[1]!['archive.entries']!.matches!];
    expect(attached.replace(/^\^/, '\\.')).toBe(inside);
  });

  it('refuses, with its own reason, archives whose files Douane cannot list and parts of split archives, attached and inside a zip', async () => {
    for (const name of ['vieux.arj', 'vieux.arj.', 'archives.LZH ', 'archives.LZH', 'donnees.lha', 'paquet.ace', 'sources.tar.lz', 'fichier.Z', 'install.wim', 'image.esd', 'app.dmg', 'envoi.uue', 'photos.7z.001', 'photos.zip.002', 'photos.z01', 'photos.r00', 'paquet.cpio', 'paquet.xar']) {
      const attached = await inspectAttachment(Buffer.from('not really'), name);
      expect(attached.verdict, name).toMatchObject({ action: 'reject', reason: 'attachment.unreadable_archive', rule: { id: 'attachments.unreadable-archive' } });
      const zipped = await inspectAttachment(zip([{ name: `docs/${name}`, content: Buffer.from('not really') }]), 'docs.zip');
      expect(zipped.verdict, `${name} in a zip`).toMatchObject({ action: 'reject', rule: { id: 'attachments.unreadable-archive' } });
    }
  });

  it('lets through names that only look alike: dated, numbered or other extensions', async () => {
    for (const name of ['rapport.2024.pdf', 'journal.log.1', 'facture-001.pdf', 'photo.zip.txt', 'notes.rtf', 'carte.arjx', 'plan.lzw', 'releve.2024']) {
      expect((await inspectAttachment(Buffer.from('not really'), name)).verdict.action, name).toBe('continue');
      expect((await inspectAttachment(zip([{ name, content: Buffer.from('not really') }]), 'docs.zip')).verdict.action, `${name} in a zip`).toBe('continue');
    }
  });
});
