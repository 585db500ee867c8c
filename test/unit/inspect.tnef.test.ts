// TNEF attachments (winmail.dat, application/ms-tnef), listed as they stream: Outlook shows the files
// inside as the message's attachments. The streams are written after MS-OXTNEF (test/harness/mime.ts), and
// what the tnef program (Debian's tnef) lists in each is what Douane must find. Then the shipped policy.

import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { TnefLister } from '../../src/inspect/tnef.js';
import { inspectAttachment, tnef, zip } from '../harness/mime.js';

const root = mkdtempSync(join(tmpdir(), 'douane-tnef-'));

/** The names the tnef program lists in a stream (its long names). */
function tnefLists(data: Buffer): string[] {
  const file = join(root, `w-${Math.random().toString(36).slice(2)}.dat`);
  writeFileSync(file, data);
  const r = spawnSync('tnef', ['-t', file], { encoding: 'latin1' });
  expect(r.status, r.stderr).toBe(0);
  return r.stdout.split('\n').filter(Boolean).map((l) => l.split('\t')[0]!);
}

function list(data: Buffer, chunk = data.length || 1): TnefLister {
  const lister = new TnefLister();
  for (let i = 0; i < data.length; i += chunk) lister.push(data.subarray(i, i + chunk));
  lister.end();
  return lister;
}

const FILES = [
  { title: 'FACTUR~1.PDF', long: 'facture mars.pdf', data: Buffer.from('%PDF-1.4 stand-in') },
  { title: 'INVOIC~1.JS', long: 'invoice details.js', data: Buffer.from('WScript.Echo(1)') },
];

describe('TNEF listing', () => {
  it('lists the long names the tnef program lists, and the short ones, however the stream is cut', () => {
    const data = tnef(FILES);
    expect(tnefLists(data)).toEqual(['facture mars.pdf', 'invoice details.js']);
    for (const chunk of [data.length, 100, 7, 1]) {
      const { listing } = list(data, chunk);
      expect(listing).toMatchObject({ isTnef: true, complete: true });
      expect(listing.entries).toEqual(['FACTUR~1.PDF', 'facture mars.pdf', 'INVOIC~1.JS', 'invoice details.js']);
    }
    // Without the MAPI properties (older writers): the short name, which tnef then lists.
    const short = tnef([{ title: 'setup.exe', data: Buffer.from('MZ') }]);
    expect(tnefLists(short)).toEqual(['setup.exe']);
    expect(list(short).listing.entries).toEqual(['setup.exe']);
  });

  it('lists the files of an Outlook item attached inside, two levels down; deeper, or unreadable, it is incomplete', () => {
    const inner = tnef([{ title: 'EVIL~1.SCR', long: 'evil screensaver.scr', data: Buffer.from('MZ') }]);
    const outer = tnef([FILES[0]!, { title: 'FWD', long: 'Fwd: invoice', data: Buffer.alloc(0), embedded: inner }]);
    for (const chunk of [outer.length, 13]) {
      const { listing } = list(outer, chunk);
      expect(listing.complete).toBe(true);
      expect(listing.entries).toEqual(['FACTUR~1.PDF', 'facture mars.pdf', 'FWD', 'Fwd: invoice', 'EVIL~1.SCR', 'evil screensaver.scr']);
    }
    const twice = tnef([{ title: 'FWD', long: 'Fwd', data: Buffer.alloc(0), embedded: outer }]);
    expect(list(twice).listing).toMatchObject({ complete: true, entries: expect.arrayContaining(['evil screensaver.scr']) });
    const thrice = tnef([{ title: 'FWD', long: 'Fwd', data: Buffer.alloc(0), embedded: twice }]);
    expect(list(thrice).listing.complete).toBe(false);
    // An embedded item whose object is not a TNEF stream after IID_IMessage.
    expect(list(tnef([{ title: 'FWD', long: 'Fwd', data: Buffer.alloc(0), embedded: Buffer.from('not TNEF') }])).listing.complete).toBe(false);
  });

  it('a stream cut short, or holding an embedded message it does not carry, is incomplete; another file is not TNEF', () => {
    const data = tnef(FILES);
    expect(list(data.subarray(0, data.length - 20)).listing).toMatchObject({ isTnef: true, complete: false });
    expect(list(tnef([{ title: 'MESSAGE', long: 'forwarded', data: Buffer.alloc(0), method: 5 }])).listing.complete).toBe(false);
    expect(list(Buffer.from('not a TNEF stream at all')).listing).toMatchObject({ isTnef: false, complete: true, entries: [] });
  });

  it('as an attachment: a program inside winmail.dat is quarantined by the shipped policy; documents pass; a zip inside cannot be judged', async () => {
    const withProgram = await inspectAttachment(tnef(FILES), 'winmail.dat');
    expect(withProgram.message.attachments[0]!.archiveEntries).toContain('invoice details.js');
    expect(withProgram.verdict).toMatchObject({ action: 'quarantine', rule: { id: 'attachments.executable' } });
    const documents = await inspectAttachment(tnef([FILES[0]!]), 'winmail.dat');
    expect(documents.verdict.action).toBe('continue');
    // A zip inside a TNEF stream is not opened here: the listing is incomplete, and the message refused.
    const zipped = await inspectAttachment(tnef([{ title: 'DOCS.ZIP', long: 'docs.zip', data: zip([{ name: 'a.exe', content: Buffer.from('MZ') }]) }]), 'winmail.dat');
    expect(zipped.message.mimeLimitExceeded).toBe('archive_entries');
    expect(zipped.verdict.action).not.toBe('continue');
  });
});
