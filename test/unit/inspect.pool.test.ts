// A message is inspected in the thread every session shares only within a small budget; one whose
// archives decompress past it is inspected again, whole, in an inspection thread, with the same facts
// as a full inspection would give.

import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FIRST_LOOK_BUDGET } from '../../src/inspect/deflate.js';
import { inspectStream, type InspectLimits } from '../../src/inspect/mime.js';
import { InspectionPool, MessageInspection } from '../../src/inspect/pool.js';
import type { MessageFacts } from '../../src/policy/facts.js';
import { programBehindZeros } from '../harness/archives.js';
import { mimeMessage } from '../harness/mime.js';

const LIMITS: InspectLimits = { maxParts: 500, maxDepth: 20, maxHeaderSize: 65_536 };
const FAULTY = new URL('../harness/faulty-inspection-worker.mjs', import.meta.url);
const pools: InspectionPool[] = [];
afterAll(async () => {
  await Promise.all(pools.map((p) => p.close()));
});

function pool(options: ConstructorParameters<typeof InspectionPool>[1] = {}): InspectionPool {
  const p = new InspectionPool(1, options);
  pools.push(p);
  return p;
}


function chunked(message: string | Buffer, size = 65_536): Buffer[] {
  const bytes = Buffer.from(message);
  const chunks: Buffer[] = [];
  for (let at = 0; at < bytes.length; at += size) chunks.push(bytes.subarray(at, at + size));
  return chunks;
}

async function inspect(inspection: MessageInspection, chunks: Buffer[]): Promise<MessageFacts> {
  for (const chunk of chunks) await inspection.write(chunk);
  return inspection.end(() => (async function* () {
    yield* chunks;
  })());
}

describe('inspection: a first look here, a second look in a thread', () => {
  it('a message within the first look\'s budget is not read again', async () => {
    const chunks = chunked(mimeMessage({ from: 'a@example.test', attachments: [{ name: 'logs.tar.gz', content: programBehindZeros(100_000) }] }));
    const inspection = new MessageInspection(LIMITS, pool());
    let reread = false;
    for (const chunk of chunks) await inspection.write(chunk);
    const facts = await inspection.end(() => {
      reread = true;
      return chunks;
    });
    expect(reread).toBe(false);
    expect(inspection.secondLook).toBe(false);
    expect(facts.attachments[0]!.archiveEntries).toEqual(['disk.img', 'facture.pdf.exe']);
  });

  it('a program behind more zeros than the first look decompresses is found by the second, with the facts of a full inspection', async () => {
    const zeros = FIRST_LOOK_BUDGET.bytes * 2;
    const chunks = chunked(mimeMessage({ from: 'a@example.test', subject: 'disk image', attachments: [{ name: 'image.tar.gz', content: programBehindZeros(zeros) }] }));
    const inspection = new MessageInspection(LIMITS, pool());
    const facts = await inspect(inspection, chunks);
    expect(inspection.secondLook).toBe(true);
    expect(facts.attachments[0]!.archiveEntries).toEqual(['disk.img', 'facture.pdf.exe']);
    expect(facts.mimeLimitExceeded).toBeUndefined();
    // Maps, text, attachments: the facts come back from the thread as they are made here.
    expect(facts).toEqual(await inspectStream(chunks, LIMITS));
    expect(facts.headers).toBeInstanceOf(Map);
    expect(facts.subject).toBe('disk image');
  });

  it('each budget the first look can run out of sends the message to a second look, which lists what is behind it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-pool-'));
    const run = (cmd: string, args: string[]) => execFileSync(cmd, args, { cwd: dir, maxBuffer: 1 << 28 });
    try {
      writeFileSync(join(dir, 'disk.img'), Buffer.alloc(FIRST_LOOK_BUDGET.bytes * 2));
      writeFileSync(join(dir, 'facture.pdf.exe'), Buffer.from('MZ\x90\x00stand-in program'));
      run('tar', ['-cf', 'image.tar', 'disk.img', 'facture.pdf.exe']);
      // Nested archives: more than the first look opens, the program in the last one.
      const many = FIRST_LOOK_BUDGET.archives + 20;
      const empty = Buffer.from('504b0506' + '00'.repeat(18), 'hex');
      for (let i = 0; i < many; i++) writeFileSync(join(dir, `part-${String(i).padStart(4, '0')}.zip`), empty);
      run('zip', ['-q', 'last.zip', 'facture.pdf.exe']);
      const parts = [...Array.from({ length: many }, (_, i) => `part-${String(i).padStart(4, '0')}.zip`), 'last.zip'];
      // 7z headers: 2000 files of long names unpack to some 150 KB.
      const names = Array.from({ length: 2000 }, (_, i) => `${String(i).padStart(5, '0')}-${'n'.repeat(60)}.txt`);
      mkdirSync(join(dir, 'many'));
      for (const name of names) writeFileSync(join(dir, 'many', name), 'x');
      writeFileSync(join(dir, 'many', 'zz-facture.pdf.exe'), 'MZ');
      const cases: [string, string, Buffer, string][] = [
        ['inflated bytes, .tar.xz', 'image.tar.xz', run('xz', ['-c', 'image.tar']), 'facture.pdf.exe'],
        ['inflated bytes, .tar.zst', 'image.tar.zst', run('zstd', ['-q', '-c', 'image.tar']), 'facture.pdf.exe'],
        ['inflated bytes, .tar.bz2', 'image.tar.bz2', run('bzip2', ['-c', 'image.tar']), 'facture.pdf.exe'],
        ['inflated bytes, a tar deflated in a zip', 'image.zip', (run('zip', ['-q', 'image.zip', 'image.tar']), readFileSync(join(dir, 'image.zip'))), 'image.tar/facture.pdf.exe'],
        ['archives opened, in a tar', 'parts.tar', run('tar', ['-cf', '-', ...parts]), 'last.zip/facture.pdf.exe'],
        ['archives opened, in a zip', 'parts.zip', (run('zip', ['-q', '-0', 'parts.zip', ...parts]), readFileSync(join(dir, 'parts.zip'))), 'last.zip/facture.pdf.exe'],
        ['7z headers decoded', 'many.7z', (execFileSync('7zz', ['a', '-bd', '-bso0', '../many.7z', '.'], { cwd: join(dir, 'many') }), readFileSync(join(dir, 'many.7z'))), 'zz-facture.pdf.exe'],
      ];
      for (const [what, name, content, last] of cases) {
        const chunks = chunked(mimeMessage({ from: 'a@example.test', attachments: [{ name, content }] }));
        const second = new MessageInspection(LIMITS, pool());
        const found = await inspect(second, chunks);
        expect(second.secondLook, what).toBe(true);
        expect(found.attachments[0]!.archiveEntries, what).toContain(last);
        expect(found, what).toEqual(await inspectStream(chunks, LIMITS));
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);

  it('many attachments, or much HTML, are looked at again too: the facts of a full inspection', async () => {
    const many = mimeMessage({ from: 'a@example.test', attachments: Array.from({ length: FIRST_LOOK_BUDGET.attachments + 20 }, (_, i) => ({ name: i === FIRST_LOOK_BUDGET.attachments + 10 ? 'facture.pdf.exe' : `photo-${i}.bin`, content: Buffer.from(`picture ${i}`) })) });
    const page = `<html><body>${'<p>Nouveautés de la semaine &amp; offres</p>'.repeat(Math.ceil(FIRST_LOOK_BUDGET.html / 40))}<a href="https://late.example/after">lien</a></body></html>`;
    const html = `From: a@example.test\r\nSubject: newsletter\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n${page}\r\n`;
    for (const [what, message] of [['attachments', many], ['HTML', html]] as const) {
      const chunks = chunked(message);
      const inspection = new MessageInspection(LIMITS, pool());
      const facts = await inspect(inspection, chunks);
      expect(inspection.secondLook, what).toBe(true);
      expect(facts, what).toEqual(await inspectStream(chunks, LIMITS));
    }
    const facts = await inspectStream(chunked(many), LIMITS);
    expect(facts.attachments.map((a) => a.name)).toContain('facture.pdf.exe');
    expect(facts.attachments).toHaveLength(FIRST_LOOK_BUDGET.attachments + 20);
  });

  it('past the full budget too, the listing says it is incomplete, as a full inspection does', async () => {
    const chunks = chunked(mimeMessage({ from: 'a@example.test', attachments: [{ name: 'bomb.tar.gz', content: programBehindZeros(140 * 1024 * 1024) }] }));
    const inspection = new MessageInspection(LIMITS, pool());
    const facts = await inspect(inspection, chunks);
    expect(inspection.secondLook).toBe(true);
    expect(facts.mimeLimitExceeded).toBe('archive_entries');
    expect(facts).toEqual(await inspectStream(chunks, LIMITS));
  });

  it('a large message reaches the thread whole and in order, however much the reading holds back', async () => {
    const filler = Buffer.alloc(6 * 1024 * 1024, 'filler line of text\r\n');
    const message = mimeMessage({ from: 'a@example.test', text: 'first words', attachments: [{ name: 'image.tar.gz', content: programBehindZeros(FIRST_LOOK_BUDGET.bytes * 2) }, { name: 'notes.txt', content: filler, type: 'text/plain' }] });
    const chunks = chunked(message, 16_384);
    const inspection = new MessageInspection(LIMITS, pool());
    const facts = await inspect(inspection, chunks);
    expect(inspection.secondLook).toBe(true);
    expect(facts.size).toBe(Buffer.byteLength(message));
    expect(facts.attachments.map((a) => [a.name, a.size])).toEqual([
      ['image.tar.gz', expect.any(Number)],
      ['notes.txt', filler.length],
    ]);
  });

  it('messages inspected at once in one thread each get their own facts', async () => {
    const shared = pool();
    const messages = ['one', 'two', 'three', 'four'].map((subject) => chunked(mimeMessage({ from: `${subject}@example.test`, subject, attachments: [{ name: `${subject}.tar.gz`, content: programBehindZeros(FIRST_LOOK_BUDGET.bytes + 1024 * 1024) }] }), 8192));
    const results = await Promise.all(messages.map((chunks) => inspect(new MessageInspection(LIMITS, shared), chunks)));
    expect(results.map((f) => [f.subject, f.from, f.attachments[0]!.name])).toEqual([
      ['one', ['one@example.test'], 'one.tar.gz'],
      ['two', ['two@example.test'], 'two.tar.gz'],
      ['three', ['three@example.test'], 'three.tar.gz'],
      ['four', ['four@example.test'], 'four.tar.gz'],
    ]);
  });

  it('a thread that dies fails the messages it had, and is started again for the next one', async () => {
    const failures: [string, number][] = [];
    const crashing = pool({ script: FAULTY });
    crashing.onThreadFailure((err, messages) => failures.push([err.message, messages]));
    const image = programBehindZeros(FIRST_LOOK_BUDGET.bytes * 2);
    const doomed = new MessageInspection(LIMITS, crashing);
    await expect(inspect(doomed, chunked(mimeMessage({ from: 'a@example.test', subject: 'CRASH-THE-THREAD', attachments: [{ name: 'a.tar.gz', content: image }] })))).rejects.toThrow(
      /the message could not be inspected: the inspection thread stopped \(exit code 70\)/,
    );
    expect(failures).toEqual([['the inspection thread stopped (exit code 70)', 1]]);
    const next = new MessageInspection(LIMITS, crashing);
    const facts = await inspect(next, chunked(mimeMessage({ from: 'a@example.test', subject: 'fine', attachments: [{ name: 'b.tar.gz', content: image }] })));
    expect(next.secondLook).toBe(true);
    expect(facts.attachments[0]!.archiveEntries).toEqual(['disk.img', 'facture.pdf.exe']);
    expect(crashing.running).toBe(0);
  });

  it('a thread stuck on a message past the deadline is stopped: that message fails, the ones queued behind it are inspected', async () => {
    const failures: string[] = [];
    const stuck = pool({ script: FAULTY, deadlineMs: 4000 });
    stuck.onThreadFailure((err) => failures.push(err.message));
    const image = programBehindZeros(FIRST_LOOK_BUDGET.bytes * 2);
    const spinning = inspect(new MessageInspection(LIMITS, stuck), chunked(mimeMessage({ from: 'a@example.test', subject: 'SPIN-THE-THREAD', attachments: [{ name: 'a.tar.gz', content: image }] })));
    // Queued behind it on the one thread: its turn comes on the thread started after the stuck one.
    const queued = new MessageInspection(LIMITS, stuck);
    const after = inspect(queued, chunked(mimeMessage({ from: 'b@example.test', attachments: [{ name: 'b.tar.gz', content: image }] })));
    await expect(spinning).rejects.toThrow(/could not be inspected: a message took longer than 4 s to inspect/);
    expect((await after).attachments[0]!.archiveEntries).toEqual(['disk.img', 'facture.pdf.exe']);
    expect(queued.secondLook).toBe(true);
    expect(failures).toEqual(['a message took longer than 4 s to inspect']);
    expect(stuck.running).toBe(0);
  });

  it('the deadline counts from a message\'s turn: messages queued behind slow ones are not failed for the wait', async () => {
    const slow = pool({ script: FAULTY, deadlineMs: 3000 });
    const failures: string[] = [];
    slow.onThreadFailure((err) => failures.push(err.message));
    const image = programBehindZeros(FIRST_LOOK_BUDGET.bytes * 2);
    // Seven of over half a second each on one thread: past the deadline in all, each well within its own.
    const names = ['one', 'two', 'three', 'four', 'five', 'six', 'seven'];
    const all = await Promise.all(names.map((n) => inspect(new MessageInspection(LIMITS, slow), chunked(mimeMessage({ from: `${n}@example.test`, subject: `SLOW-THE-THREAD ${n}`, attachments: [{ name: `${n}.tar.gz`, content: image }] })))));
    expect(all.map((f) => f.subject)).toEqual(names.map((n) => `SLOW-THE-THREAD ${n}`));
    expect(failures).toEqual([]);
  });

  it('a message waiting for its turn is read again only when its turn comes: its spool is not held open meanwhile', async () => {
    const slow = pool({ script: FAULTY });
    const image = programBehindZeros(FIRST_LOOK_BUDGET.bytes * 2);
    const first = chunked(mimeMessage({ from: 'a@example.test', subject: 'SLOW-THE-THREAD', attachments: [{ name: 'a.tar.gz', content: image }] }));
    const second = chunked(mimeMessage({ from: 'b@example.test', attachments: [{ name: 'b.tar.gz', content: image }] }));
    const one = new MessageInspection(LIMITS, slow);
    const two = new MessageInspection(LIMITS, slow);
    for (const chunk of first) await one.write(chunk);
    for (const chunk of second) await two.write(chunk);
    let firstRead = false;
    let readAfterFirst: boolean | undefined;
    await Promise.all([
      one.end(() =>
        (async function* () {
          yield* first;
          // A spool on a slow disk: the first message takes a while to read.
          await new Promise((r) => setTimeout(r, 300));
          firstRead = true;
        })(),
      ),
      two.end(() => {
        readAfterFirst = firstRead;
        return second;
      }),
    ]);
    expect(readAfterFirst).toBe(true);
  });

  it('a spool that cannot be read again fails its second look, and the thread forgets the message', async () => {
    const reading = pool();
    const chunks = chunked(mimeMessage({ from: 'a@example.test', attachments: [{ name: 'a.tar.gz', content: programBehindZeros(FIRST_LOOK_BUDGET.bytes * 2) }] }), 4096);
    const inspection = new MessageInspection(LIMITS, reading);
    for (const chunk of chunks) await inspection.write(chunk);
    const broken = async function* () {
      yield chunks[0]!;
      throw Object.assign(new Error('EIO: i/o error, read'), { code: 'EIO' });
    };
    await expect(inspection.end(broken)).rejects.toThrow(/EIO/);
    expect(reading.running).toBe(0);
    // The thread goes on with the next one.
    const next = new MessageInspection(LIMITS, reading);
    expect((await inspect(next, chunks)).attachments[0]!.archiveEntries).toEqual(['disk.img', 'facture.pdf.exe']);
  });

  it('a thread that cannot start fails the message (tempfailed by the gateway), it does not hang', async () => {
    const missing = pool({ script: new URL('../harness/no-such-worker.mjs', import.meta.url) });
    const inspection = new MessageInspection(LIMITS, missing);
    await expect(inspect(inspection, chunked(mimeMessage({ from: 'a@example.test', attachments: [{ name: 'a.tar.gz', content: programBehindZeros(FIRST_LOOK_BUDGET.bytes * 2) }] })))).rejects.toThrow(/could not be inspected/);
  });

  it('after close, a second look is refused at once', async () => {
    const closed = pool();
    await closed.close();
    const inspection = new MessageInspection(LIMITS, closed);
    await expect(inspect(inspection, chunked(mimeMessage({ from: 'a@example.test', attachments: [{ name: 'a.tar.gz', content: programBehindZeros(FIRST_LOOK_BUDGET.bytes * 2) }] })))).rejects.toThrow(/shutting down/);
  });
});
