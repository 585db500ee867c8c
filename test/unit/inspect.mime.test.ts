import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import v8 from 'node:v8';
import vm from 'node:vm';
import iconv from 'iconv-lite';
import { describe, expect, it, vi } from 'vitest';
import { transferDecoder } from '../../src/inspect/decode.js';
import { htmlToTexts, htmlToText } from '../../src/inspect/html.js';
import { inspectStream, MessageInspector, type InspectLimits } from '../../src/inspect/mime.js';
import { extractUrls, UrlScanner, UrlSet } from '../../src/inspect/urls.js';
import type { MessageFacts } from '../../src/policy/facts.js';
import { letterWord } from '../harness/archives.js';
import { zip } from '../harness/mime.js';

const FIXTURES = new URL('../../fixtures/messages/', import.meta.url);
const LIMITS: InspectLimits = { maxParts: 500, maxDepth: 20, maxHeaderSize: 262_144 };

const load = (name: string) => readFileSync(new URL(name, FIXTURES));
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const eml = (...lines: string[]) => Buffer.from(lines.join('\r\n') + '\r\n', 'utf8');

async function inspect(raw: Buffer, limits: InspectLimits = LIMITS, chunkSize = raw.length || 1): Promise<MessageFacts> {
  const inspector = new MessageInspector(limits);
  for (let i = 0; i < raw.length; i += chunkSize) {
    const wait = inspector.write(raw.subarray(i, i + chunkSize));
    if (wait) await wait;
  }
  return inspector.end();
}

/** The bytes of an attachment, decoded from the fixture independently of the inspector. */
function attachmentBytes(raw: Buffer, filename: string): Buffer {
  const s = raw.toString('latin1');
  const start = s.indexOf('\r\n\r\n', s.indexOf(`filename="${filename}"`)) + 4;
  return Buffer.from(s.slice(start, s.indexOf('\r\n--', start)), 'base64');
}

const head = (from = 'user1@example.test') => [`From: ${from}`, 'To: user2@example.test', 'Subject: test', 'MIME-Version: 1.0'];

/** uuencode's lines for `data`, as the uuencode program writes them (a zero is "`"). */
function uu(data: Buffer): string[] {
  const lines: string[] = [];
  for (let i = 0; i < data.length; i += 45) {
    const chunk = data.subarray(i, i + 45);
    let line = String.fromCharCode(32 + chunk.length);
    for (let j = 0; j < chunk.length; j += 3) {
      const [a = 0, b = 0, c = 0] = [chunk[j], chunk[j + 1], chunk[j + 2]];
      line += [a >> 2, ((a & 3) << 4) | (b >> 4), ((b & 15) << 2) | (c >> 6), c & 63].map((v) => String.fromCharCode(v === 0 ? 96 : 32 + v)).join('');
    }
    lines.push(line);
  }
  return lines;
}

describe('MIME inspector: fixtures', () => {
  it('clean-text.eml: root headers, From, Subject and the body of a plain personal note', async () => {
    const raw = load('clean-text.eml');
    const f = await inspect(raw);
    expect(f.size).toBe(raw.length);
    expect(f.from).toEqual(['user1@example.test']);
    expect(f.sender).toBeUndefined();
    expect(f.subject).toBe('Dinner on Friday');
    expect(f.headers.get('from')).toEqual(['Alice Martin <user1@example.test>']);
    expect(f.headers.get('message-id')).toEqual(['<clean-text@example.test>']);
    expect([...f.headers.keys()]).toEqual(['from', 'to', 'subject', 'date', 'message-id', 'mime-version', 'content-type', 'content-transfer-encoding']);
    expect(f.body).toBe(
      'Hi Bob,\n\nAre we still on for dinner on Friday? I booked a table for seven at the\nlittle place near the station. Tell Claire she is welcome too.\n\nSee you,\nAlice',
    );
    expect(f.urls).toEqual([]);
    expect(f.attachments).toEqual([]);
    expect(f.mimeLimitExceeded).toBeUndefined();
  });

  it('clean-attachments.eml: a real PDF and PNG, with decoded size and SHA-256; only the text is body', async () => {
    const raw = load('clean-attachments.eml');
    const pdf = attachmentBytes(raw, 'report.pdf');
    const png = attachmentBytes(raw, 'chart.png');
    const f = await inspect(raw);
    expect(f.body).toBe('Hello,\n\nPlease find the quarterly report and the chart attached.\n\nRegards,\nUser One');
    expect(f.attachments).toEqual([
      { name: 'report.pdf', extension: 'pdf', declaredType: 'application/pdf', detectedType: 'pdf', size: pdf.length, sha256: sha256(pdf), encrypted: false, archiveEntries: [] },
      { name: 'chart.png', extension: 'png', declaredType: 'image/png', detectedType: 'png', size: png.length, sha256: sha256(png), encrypted: false, archiveEntries: [] },
    ]);
    expect(pdf.subarray(0, 5).toString()).toBe('%PDF-');
  });

  it('newsletter-html.eml: text and HTML alternatives, HTML as text, links from both, deduplicated', async () => {
    const f = await inspect(load('newsletter-html.eml'));
    expect(f.body).toContain('Spring sale: https://shop.example.test/spring-sale');
    expect(f.body).toContain('Our spring sale is on — shop now.');
    expect(f.body).toContain('Café corner: read the blog');
    expect(f.body).toContain('Unsubscribe © 2025 Example News');
    // Not shown to a reader: tags, the title, style and script content.
    expect(f.body).not.toMatch(/<|script-content|hidden-style|March newsletter<\/title>|color: #333/);
    expect(f.urls).toEqual([
      'https://shop.example.test/spring-sale',
      'https://blog.example.test/2025/03/hello',
      'https://news.example.test/unsubscribe?u=42',
      'https://shop.example.test/spring-sale?utm_source=mail&utm_medium=email',
      'https://cdn.example.test/logo.png',
    ]);
    expect(f.attachments).toEqual([]);
  });

  it('keeps apart what a mail program shows: of each multipart/alternative, the last alternative with text', async () => {
    const alt = (plain: string, html: string, b: string) => [`Content-Type: multipart/alternative; boundary="${b}"`, '', `--${b}`, 'Content-Type: text/plain', '', plain, `--${b}`, 'Content-Type: text/html', '', html, `--${b}--`, ''].join('\r\n');
    const mixed = Buffer.from(
      ['From: a@example.test', 'Subject: s', 'MIME-Version: 1.0', 'Content-Type: multipart/mixed; boundary="M"', '', '--M', alt('decoy words nobody reads', '<p>The offer everyone sees</p>', 'A'), '--M', 'Content-Type: text/plain', 'Content-Disposition: inline', '', 'A note shown after it', '--M--', ''].join('\r\n'),
    );
    const f = await inspect(mixed);
    expect(f.body).toContain('decoy words nobody reads');
    expect(f.shownBody).toBe('The offer everyone sees\nA note shown after it');
    // Hidden HTML padding: in the body (the rules read it), not in what is shown.
    const padded = await inspect(Buffer.from(['Subject: s', 'MIME-Version: 1.0', 'Content-Type: text/html', '', '<div style="display:none">qwxz padding vbnm</div><p>The offer</p>', ''].join('\r\n')));
    expect(padded.body).toContain('qwxz padding vbnm');
    expect(padded.shownBody).toBe('The offer');
    // Nothing to leave out: no shown body of its own.
    expect((await inspect(load('qp-latin1.eml'))).shownBody).toBeUndefined();
    expect((await inspect(Buffer.from(['Subject: s', 'MIME-Version: 1.0', alt('', '<p>only html</p>', 'B')].join('\r\n')))).shownBody).toBeUndefined();
  });

  it('qp-latin1.eml: quoted-printable ISO-8859-1 body and RFC 2047 headers come out as proper text', async () => {
    const f = await inspect(load('qp-latin1.eml'));
    expect(f.subject).toBe('Réunion du comité');
    expect(f.headers.get('subject')).toEqual(['Réunion du comité']);
    expect(f.headers.get('from')).toEqual(['Hélène Leclerc <user1@example.test>']);
    expect(f.from).toEqual(['user1@example.test']);
    expect(f.body).toBe(
      "Bonjour à tous,\n\nLa réunion du comité aura lieu jeudi à l'hôtel de ville, dans la salle des fêtes. Apportez vos idées pour le décor de Noël.\n\nTrès cordialement,\nHélène",
    );
  });

  it('exe-renamed-pdf.eml: an executable named invoice.pdf and declared application/pdf is detected as executable', async () => {
    const raw = load('exe-renamed-pdf.eml');
    const exe = attachmentBytes(raw, 'invoice.pdf');
    const f = await inspect(raw);
    expect(f.attachments).toEqual([
      { name: 'invoice.pdf', extension: 'pdf', declaredType: 'application/pdf', detectedType: 'executable', size: 512, sha256: sha256(exe), encrypted: false, archiveEntries: [] },
    ]);
  });

  it('forwarded-exe.eml: the executable inside a base64-encoded attached message is found; the message\'s own headers stay its own', async () => {
    const raw = load('forwarded-exe.eml');
    const inner = attachmentBytes(raw, 'invoice.eml');
    const exe = attachmentBytes(inner, 'invoice.pdf');
    expect(exe.length).toBe(512);
    const f = await inspect(raw);
    expect(f.attachments).toEqual([
      { name: 'invoice.eml', extension: 'eml', declaredType: 'message/rfc822', detectedType: 'text', size: inner.length, sha256: sha256(inner), encrypted: false, archiveEntries: [] },
      { name: 'invoice.pdf', extension: 'pdf', declaredType: 'application/pdf', detectedType: 'executable', size: 512, sha256: sha256(exe), encrypted: false, archiveEntries: [] },
    ]);
    expect(f.body).toBe('See the message below.\nPlease pay the attached invoice today.');
    expect(f.subject).toBe('Fwd: Invoice 2025-0312');
    expect(f.from).toEqual(['user1@example.test']);
    expect(f.headers.get('message-id')).toEqual(['<forwarded-exe@example.test>']);
  });

  it('zip-with-exe.eml: the zip is listed (setup.exe inside), not encrypted', async () => {
    const f = await inspect(load('zip-with-exe.eml'));
    expect(f.attachments).toHaveLength(1);
    expect(f.attachments[0]).toMatchObject({ name: 'documents.zip', extension: 'zip', declaredType: 'application/zip', detectedType: 'zip', encrypted: false, archiveEntries: ['readme.txt', 'setup.exe'] });
  });

  it('an archive behind junk is listed; one with more kinds of names than can be listed goes over a limit', async () => {
    const entry = (name: string) => {
      const h = Buffer.alloc(30);
      h.writeUInt32LE(0x04034b50, 0);
      h.writeUInt32LE(2, 18);
      h.writeUInt16LE(name.length, 26);
      return Buffer.concat([h, Buffer.from(name), Buffer.from('MZ')]);
    };
    const message = (data: Buffer) =>
      eml(...head(), 'Content-Type: multipart/mixed; boundary="b"', '', '--b', 'Content-Type: text/plain', '', 'see attached', '--b', 'Content-Type: application/octet-stream', 'Content-Disposition: attachment; filename="photos.bin"', 'Content-Transfer-Encoding: base64', '', ...(data.toString('base64').match(/.{1,76}/g) ?? []), '--b--');
    const hidden = await inspect(message(Buffer.concat([Buffer.alloc(64, 0x41), entry('evil.exe')])));
    expect(hidden.attachments[0]).toMatchObject({ detectedType: 'unknown', archiveEntries: ['evil.exe'] });
    expect(hidden.mimeLimitExceeded).toBeUndefined();
    const flooded = await inspect(message(Buffer.concat(Array.from({ length: 2100 }, (_, i) => entry(`f.x${letterWord(i)}`)))));
    expect(flooded.mimeLimitExceeded).toBe('archive_entries');
  });

  it('two-content-types.eml and its kind: a header a part may have once, found twice, is reported', async () => {
    expect((await inspect(load('two-content-types.eml'))).mimeAmbiguous).toBe('content-type');
    const nested = eml(...head(), 'Content-Type: multipart/mixed; boundary="b"', '', '--b', 'Content-Type: application/octet-stream', 'Content-Transfer-Encoding: base64', 'Content-Transfer-Encoding: 7bit', '', 'TVo=', '--b--');
    expect((await inspect(nested)).mimeAmbiguous).toBe('content-transfer-encoding');
    const boundaries = eml(...head(), 'Content-Type: multipart/mixed; boundary="a"; boundary="b"', '', '--a', 'Content-Type: text/plain', '', 'x', '--a--');
    expect((await inspect(boundaries)).mimeAmbiguous).toBe('boundary');
    expect((await inspect(load('clean-attachments.eml'))).mimeAmbiguous).toBeUndefined();
  });

  it('a boundary given twice in two RFC 2231 forms, which programs choose between, is ambiguous; one continued boundary is not', async () => {
    const split = (ct: string, boundary: string) => eml(...head(), `Content-Type: ${ct}`, '', `--${boundary}`, 'Content-Type: text/plain', '', 'hi', `--${boundary}`, 'Content-Type: application/octet-stream', 'Content-Disposition: attachment; filename="evil.js"', '', 'x', `--${boundary}--`);
    expect((await inspect(split('multipart/mixed; boundary*0="Z"; boundary="Q"', 'Q'))).mimeAmbiguous).toBe('boundary');
    expect((await inspect(split('multipart/mixed; boundary*="Z"; boundary="Q"', 'Q'))).mimeAmbiguous).toBe('boundary');
    expect((await inspect(split('multipart/mixed; boundary*0="Q"; boundary*0="Z"', 'Q'))).mimeAmbiguous).toBe('boundary');
    const continued = await inspect(split('multipart/mixed; boundary*0="ab"; boundary*1="cd"', 'abcd'));
    expect(continued.mimeAmbiguous).toBeUndefined();
    expect(continued.attachments.map((a) => a.name)).toEqual(['evil.js']);
  });

  it('a file name a mail program may read otherwise is ambiguous: given twice, name and filename on other extensions, a NUL in it', async () => {
    const attached = (...headers: string[]) => eml(...head(), 'Content-Type: multipart/mixed; boundary="b"', '', '--b', 'Content-Type: text/plain', '', 'hi', '--b', ...headers, 'Content-Transfer-Encoding: base64', '', 'dmFyIHM7', '--b--');
    const ambiguous = async (...headers: string[]) => (await inspect(attached(...headers))).mimeAmbiguous;
    expect(await ambiguous('Content-Type: application/octet-stream; name="evil.js"', 'Content-Disposition: attachment; filename="evil.txt"')).toBe('filename');
    // A name without an extension next to one with: taken under the one with it, not ambiguous (Thunderbird
    // writes its OpenPGP signature so).
    const named = async (...headers: string[]) => (await inspect(attached(...headers))).attachments.map((a) => [a.name, a.extension]);
    expect(await named('Content-Type: application/octet-stream; name="evil.js"', 'Content-Disposition: attachment; filename="evil"')).toEqual([['evil.js', 'js']]);
    expect(await ambiguous('Content-Type: application/octet-stream; name="evil.js"', 'Content-Disposition: attachment; filename="evil"')).toBeUndefined();
    expect(await named('Content-Type: application/pgp-signature; name="OpenPGP_signature.asc"', 'Content-Description: OpenPGP digital signature', 'Content-Disposition: attachment; filename="OpenPGP_signature"')).toEqual([['OpenPGP_signature.asc', 'asc']]);
    expect(await ambiguous('Content-Type: application/pgp-signature; name="OpenPGP_signature.asc"', 'Content-Disposition: attachment; filename="OpenPGP_signature"')).toBeUndefined();
    expect(await ambiguous('Content-Type: application/octet-stream', 'Content-Disposition: attachment; filename="evil.txt"; filename="evil.js"')).toBe('filename');
    expect(await ambiguous('Content-Type: application/octet-stream', "Content-Disposition: attachment; filename*=utf-8''evil.js%00.txt")).toBe('filename');
    expect(await ambiguous('Content-Type: application/octet-stream', 'Content-Disposition: attachment; filename="evil.js\x00.txt"')).toBe('filename');
    expect(await ambiguous('Content-Type: application/octet-stream', "Content-Disposition: attachment; filename*0*=utf-8''evil.j; filename*1*=s%00.txt")).toBe('filename');
    // What mail programs write: the same name twice, in plain and RFC 2231 forms, or encoded; continued names.
    expect(await ambiguous('Content-Type: application/pdf; name="Facture mars.pdf"', 'Content-Disposition: attachment; filename="Facture mars.pdf"')).toBeUndefined();
    expect(await ambiguous('Content-Type: application/pdf; name="=?UTF-8?Q?r=C3=A9sum=C3=A9.pdf?="', "Content-Disposition: attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf; filename=\"resume.pdf\"")).toBeUndefined();
    expect(await ambiguous('Content-Type: application/pdf', "Content-Disposition: attachment; filename*0*=UTF-8''tr%C3%A8s%20long%20nom; filename*1*=%20de%20fichier.pdf")).toBeUndefined();
    expect(await ambiguous('Content-Type: application/pdf; name="x.pdf"', 'Content-Disposition: attachment; filename="x.PDF"')).toBeUndefined();
  });

  it('what Thunderbird reads otherwise than mailsplit is ambiguous: a comma before the parameters, a space or quote in an unquoted value, a gap in a continued one', async () => {
    const attached = (...headers: string[]) => eml(...head(), 'Content-Type: multipart/mixed; boundary="b"', '', '--b', 'Content-Type: text/plain', '', 'hi', '--b', ...headers, 'Content-Transfer-Encoding: base64', '', 'TVqQAAMAAAAEAAAA', '--b--');
    const ambiguous = async (...headers: string[]) => (await inspect(attached(...headers))).mimeAmbiguous;
    // An executable there, a text here.
    expect(await ambiguous('Content-Type: application/x-msdownload, name="invoice.exe"')).toBe('content-type');
    expect(await ambiguous('Content-Type: application/octet-stream', 'Content-Disposition: attachment, filename="invoice.js"')).toBe('content-disposition');
    expect(await ambiguous('Content-Type: application/octet-stream', 'Content-Disposition: attachment; filename=invoice.js x.txt')).toBe('filename');
    expect(await ambiguous('Content-Type: application/octet-stream', 'Content-Disposition: attachment; filename=inv"oice.js; x=".txt"')).toBe('filename');
    expect(await ambiguous('Content-Type: application/octet-stream', 'Content-Disposition: attachment; filename*0="invoice.js"; filename*2=".txt"')).toBe('filename');
    expect(await ambiguous('Content-Type: application/octet-stream', 'Content-Disposition: attachment; filename*0="invoice.js"; filename*01=".txt"')).toBe('filename');
    // A multipart there, one block of text here; or split on another boundary.
    const split = (ct: string) => eml(...head(), `Content-Type: ${ct}`, '', '--b1', 'Content-Type: text/plain', '', 'hi', '--b1', 'Content-Type: application/octet-stream; name="evil.exe"', '', 'x', '--b1--');
    expect((await inspect(split('multipart/mixed, boundary="b1"'))).mimeAmbiguous).toBe('content-type');
    expect((await inspect(split('multipart/mixed; boundary*0="b"; boundary*2="1"'))).mimeAmbiguous).toBe('boundary');
    expect((await inspect(split('multipart/mixed; boundary=b1 extra'))).mimeAmbiguous).toBe('boundary');
    // Slips that read the same both ways: a missing ";" before a parameter of a text, a space in a name
    // that leaves no other extension, a comment.
    expect(await ambiguous('Content-Type: text/plain charset=us-ascii')).toBeUndefined();
    expect(await ambiguous('Content-type: text/html charset=iso-8859-1')).toBeUndefined();
    expect(await ambiguous('Content-Type: text/html, charset=UTF-8')).toBeUndefined();
    expect(await ambiguous('Content-Type: application/pdf charset=x')).toBe('content-type');
    expect(await ambiguous('Content-Type: application/pdf', 'Content-Disposition: attachment; filename=my document.pdf')).toBeUndefined();
    expect(await ambiguous('Content-Type: application/pdf (a comment); name="a.pdf"')).toBeUndefined();
    expect(await ambiguous('Content-Type: application/pdf; name=report.pdf')).toBeUndefined();
  });

  it('a part without Content-Type in a multipart/digest is an attached message (RFC 2046), read as one', async () => {
    const inner = ['From: c@z.test', 'MIME-Version: 1.0', 'Content-Type: multipart/mixed; boundary=I', '', '--I', 'Content-Type: text/plain', '', 'inner text', '--I', 'Content-Type: application/octet-stream', 'Content-Disposition: attachment; filename="evil.js"', 'Content-Transfer-Encoding: base64', '', 'dmFyIHM7', '--I--'];
    const digest = await inspect(eml(...head(), 'Content-Type: multipart/digest; boundary=D', '', '--D', '', ...inner, '--D--'));
    expect(digest.attachments.map((a) => a.name)).toContain('evil.js');
    // A typed part of a digest is what its type says.
    const typed = await inspect(eml(...head(), 'Content-Type: multipart/digest; boundary=D', '', '--D', 'Content-Type: text/plain', '', 'just text', '--D--'));
    expect(typed.attachments).toEqual([]);
    expect(typed.body).toContain('just text');
  });

  it('a text part named .eml is read as the text it is and as the message a mail program opens', async () => {
    const inner = ['From: c@z.test', 'MIME-Version: 1.0', 'Content-Type: multipart/mixed; boundary=I', '', '--I', 'Content-Type: text/plain', '', 'x', '--I', 'Content-Type: application/octet-stream', 'Content-Disposition: attachment; filename="evil.js"', 'Content-Transfer-Encoding: base64', '', 'dmFyIHM7', '--I--'];
    const facts = await inspect(eml(...head(), 'Content-Type: multipart/mixed; boundary=D', '', '--D', 'Content-Type: text/plain; name="fwd.eml"', '', ...inner, '--D--'));
    expect(facts.attachments.map((a) => a.name)).toEqual(['fwd.eml', 'evil.js']);
  });

  it('base64 with a "=" inside a group of four, which Thunderbird reads otherwise, is ambiguous; padding mail programs write is not', async () => {
    const zipped = zip([{ name: 'facture.pdf.exe', content: Buffer.from('MZ' + '\0'.repeat(62)) }]).toString('base64');
    const part = (body: string) => eml(...head(), 'Content-Type: multipart/mixed; boundary="b"', '', '--b', 'Content-Type: application/octet-stream; name="docs.bin"', 'Content-Disposition: attachment; filename="docs.bin"', 'Content-Transfer-Encoding: base64', '', ...body.match(/.{1,76}/g)!, '--b--');
    // "Q=QQ": this decoder starts again after the "=", Thunderbird decodes two bytes and then the zip.
    for (const chunk of [1, 7, 100_000]) expect([chunk, (await inspect(part(`Q=QQ${zipped}`), LIMITS, chunk)).mimeAmbiguous]).toEqual([chunk, 'base64-padding']);
    expect((await inspect(part(`QUJD=${zipped}`))).mimeAmbiguous).toBe('base64-padding');
    // Lines padded one by one, and padding at the end: every program reads them alike.
    const padded = ['QQ==', 'QkM=', 'REVG'].join('');
    for (const body of [padded, zipped, `${zipped}\n=\n`]) expect((await inspect(part(body))).mimeAmbiguous).toBeUndefined();
  });

  it('reads "From : x" on the first line as the From: header it is, not as an mbox envelope line to drop', async () => {
    const raw = eml('From : ceo@bank.example', 'To: user2@example.test', 'Subject: wire', '', 'Please wire the money.');
    expect((await inspect(raw)).from).toEqual(['ceo@bank.example']);
    expect((await inspect(raw, LIMITS, 3)).from).toEqual(['ceo@bank.example']);
    const spaced = eml(`From${' '.repeat(70)}\t:ceo@bank.example`, 'To: user2@example.test', 'Subject: wire', '', 'Please wire the money.');
    expect((await inspect(spaced, LIMITS, 5)).from).toEqual(['ceo@bank.example']);
  });

  it('a file uuencoded into the text ("begin 644 setup.exe") is an attachment, typed by its first bytes', async () => {
    const pe = Buffer.concat([Buffer.from('MZ'), Buffer.alloc(200, 0x90)]);
    const raw = eml(...head(), 'Content-Type: text/plain', '', 'Here is the tool:', '', 'begin 644 setup.exe', ...uu(pe), '`', 'end', '', 'Run it.');
    const f = await inspect(raw);
    expect(f.attachments).toMatchObject([{ name: 'setup.exe', extension: 'exe', detectedType: 'executable' }]);
    expect((await inspect(eml(...head(), 'Content-Type: text/plain', '', 'We begin 644 tasks at 9.'))).attachments).toEqual([]);
  });

  it('a file yEnc-encoded into the text ("=ybegin … name=setup.exe") is an attachment, typed by its first bytes, read in chunks', async () => {
    // yEnc as its writers do it: each byte 42 more, NUL, LF, CR and "=" escaped, lines of 128.
    const yenc = (data: Buffer) => {
      let line = '';
      const lines: string[] = [];
      for (const b of data) {
        const o = (b + 42) & 255;
        line += o === 0 || o === 10 || o === 13 || o === 61 ? `=${String.fromCharCode((o + 64) & 255)}` : String.fromCharCode(o);
        if (line.length >= 128) lines.push(line), (line = '');
      }
      if (line) lines.push(line);
      return lines.join('\r\n');
    };
    const pe = Buffer.concat([Buffer.from('MZ'), Buffer.alloc(300, 0x90), Buffer.from([0, 10, 13, 61 - 42, 214])]);
    const raw = Buffer.concat([
      eml(...head(), 'Content-Type: text/plain; charset=iso-8859-1', '', 'Here is the tool:', '', `=ybegin line=128 size=${pe.length} name=setup.exe`),
      Buffer.from(yenc(pe), 'latin1'),
      Buffer.from(`\r\n=yend size=${pe.length}\r\n\r\nRun it.\r\n`),
    ]);
    for (const chunk of [raw.length, 100, 7]) {
      expect((await inspect(raw, LIMITS, chunk)).attachments).toMatchObject([{ name: 'setup.exe', extension: 'exe', detectedType: 'executable' }]);
    }
    // A multi-part yEnc file: its =ypart line is not data.
    const part = Buffer.concat([eml(...head(), 'Content-Type: text/plain', '', '=ybegin part=1 line=128 size=5000 name=tool.js', '=ypart begin=1 end=301'), Buffer.from(yenc(pe), 'latin1'), Buffer.from('\r\n=yend size=301 part=1\r\n')]);
    expect((await inspect(part)).attachments).toMatchObject([{ name: 'tool.js', extension: 'js', detectedType: 'executable' }]);
    expect((await inspect(eml(...head(), 'Content-Type: text/plain', '', '=ybegin is how yEnc starts'))).attachments).toEqual([]);
  });

  it('finds a file uuencoded into the text past the bytes kept for the body, however the text is cut, and in a later text part', async () => {
    const pe = Buffer.concat([Buffer.from('MZ'), Buffer.alloc(200, 0x90)]);
    const padding = Array.from({ length: 5000 }, (_, i) => `line ${i} of the report, nothing to see here at all, just text`);
    const raw = eml(...head(), 'Content-Type: text/plain', '', ...padding, 'begin 644 invoice.exe', ...uu(pe), '`', 'end', '', 'Run it.');
    expect(raw.length).toBeGreaterThan(256 * 1024);
    for (const chunk of [raw.length, 65_536, 1000, 7]) {
      expect((await inspect(raw, LIMITS, chunk)).attachments).toMatchObject([{ name: 'invoice.exe', extension: 'exe', detectedType: 'executable' }]);
    }
    // An attachment sent as x-uuencode is decoded: the zip it is, and the program in it.
    const zipped = zip([{ name: 'facture.pdf.exe', content: pe }]);
    const attached = eml(...head(), 'Content-Type: multipart/mixed; boundary="b"', '', '--b', 'Content-Type: text/plain', '', 'the invoice', '--b', 'Content-Type: application/zip; name="docs.zip"', 'Content-Disposition: attachment; filename="docs.zip"', 'Content-Transfer-Encoding: x-uuencode', '', 'begin 644 docs.zip', ...uu(zipped), '`', 'end', '--b--');
    expect((await inspect(attached, LIMITS, 64)).attachments).toMatchObject([{ name: 'docs.zip', detectedType: 'zip', archiveEntries: ['facture.pdf.exe'] }]);
    // As Thunderbird reads it: a begin line with any mode, and lines after an empty one ("`") up to "end".
    for (const [begin, before] of [['begin 999 docs.zip', []], ['begin 644 docs.zip', ['`']]] as const) {
      const odd = eml(...head(), 'Content-Type: multipart/mixed; boundary="b"', '', '--b', 'Content-Type: application/zip; name="docs.zip"', 'Content-Disposition: attachment; filename="docs.zip"', 'Content-Transfer-Encoding: x-uuencode', '', begin, ...before, ...uu(zipped), '`', 'end', '--b--');
      expect((await inspect(odd, LIMITS, 64)).attachments).toMatchObject([{ name: 'docs.zip', detectedType: 'zip', archiveEntries: ['facture.pdf.exe'] }]);
    }
    // yEnc, which Thunderbird decodes in a part labelled x-yencode: the zip, and the program in it.
    const yenc = (data: Buffer): string[] => {
      const out: number[] = [];
      for (const b of data) {
        const v = (b + 42) & 255;
        if (v === 0 || v === 10 || v === 13 || v === 61) out.push(61, (v + 64) & 255);
        else out.push(v);
      }
      const text = Buffer.from(out).toString('latin1');
      const lines: string[] = [];
      // Lines of 128, an escape never cut in two.
      for (let i = 0; i < text.length; ) {
        const end = text[i + 127] === '=' ? i + 129 : i + 128;
        lines.push(text.slice(i, end));
        i = end;
      }
      return lines;
    };
    // Bytes yEnc must escape ("=", NUL, LF, CR once shifted) in the stored content.
    const yzipped = zip([{ name: 'facture.pdf.exe', content: Buffer.concat([pe, Buffer.from([0x13, 0xd6, 0xe0, 0xe3])]) }]);
    const ydata = yenc(yzipped);
    expect(ydata.join('').includes('=')).toBe(true); // escapes are exercised
    const yencoded = Buffer.from(['From: user1@example.test', 'Subject: test', 'MIME-Version: 1.0', 'Content-Type: multipart/mixed; boundary="b"', '', '--b', 'Content-Type: application/octet-stream; name="docs.zip"', 'Content-Disposition: attachment; filename="docs.zip"', 'Content-Transfer-Encoding: x-yencode', '', `=ybegin line=128 size=${yzipped.length} name=docs.zip`, ...ydata, `=yend size=${yzipped.length}`, '--b--', ''].join('\r\n'), 'latin1');
    for (const chunk of [64, 100_000]) expect((await inspect(yencoded, LIMITS, chunk)).attachments).toMatchObject([{ name: 'docs.zip', detectedType: 'zip', archiveEntries: ['facture.pdf.exe'] }]);
    // So is a text part with a file name, inline or not: an attachment.
    for (const disposition of ['Content-Disposition: inline; filename="docs.zip"', 'X-Nothing: here']) {
      const named = eml(...head(), 'Content-Type: text/plain; name="docs.zip"', disposition, 'Content-Transfer-Encoding: x-uuencode', '', 'begin 644 docs.zip', ...uu(zipped), '`', 'end');
      expect((await inspect(named, LIMITS, 64)).attachments).toMatchObject([{ name: 'docs.zip', detectedType: 'zip', archiveEntries: ['facture.pdf.exe'] }]);
    }
    // A text part labelled x-uuencode is read as text: its begin line names the file.
    const labelled = eml(...head(), 'Content-Type: text/plain', 'Content-Transfer-Encoding: x-uuencode', '', 'begin 644 facture.exe', ...uu(pe), '`', 'end');
    expect((await inspect(labelled, LIMITS, 7)).attachments).toMatchObject([{ name: 'facture.exe', detectedType: 'executable' }]);
    // The body's room used up by a first part, the file in the second.
    const two = eml(...head(), 'Content-Type: multipart/mixed; boundary="b"', '', '--b', 'Content-Type: text/plain', '', ...padding, '--b', 'Content-Type: text/plain', '', 'begin 600 tool.scr', ...uu(pe), 'end', '--b--');
    expect((await inspect(two, LIMITS, 4096)).attachments).toMatchObject([{ name: 'tool.scr', detectedType: 'executable' }]);
    // A "begin" inside a line, or on a line too long to be a begin line, is no file.
    expect((await inspect(eml(...head(), 'Content-Type: text/plain', '', `${'x'.repeat(5000)} begin 644 a.exe`, ...uu(pe)), LIMITS, 100)).attachments).toEqual([]);
  });

  it('finds the links of UTF-16 HTML wherever they are: past the kept text, and in an attachment known by its byte-order mark', async () => {
    const utf16 = (s: string) => Buffer.from(s, 'utf16le');
    const b64 = (b: Buffer) => b.toString('base64').match(/.{1,76}/g)!;
    const padded = utf16(`<html><body>${'<p>padding</p>'.repeat(90_000)}<a href="https://far.example.test/login">x</a></body></html>`);
    const part = eml(...head(), 'Content-Type: text/html; charset=utf-16le', 'Content-Transfer-Encoding: base64', '', ...b64(padded));
    expect((await inspect(part, LIMITS, 65_536)).urls).toEqual(['https://far.example.test/login']);
    const page = Buffer.concat([Buffer.from([0xff, 0xfe]), utf16('<html><a href="https://bom.example.test/login">sign in</a></html>')]);
    const attached = eml(...head(), 'Content-Type: multipart/mixed; boundary="b"', '', '--b', 'Content-Type: text/plain', '', 'see the page', '--b', 'Content-Type: application/octet-stream', 'Content-Disposition: attachment; filename="login.htm"', 'Content-Transfer-Encoding: base64', '', ...b64(page), '--b--');
    expect((await inspect(attached)).urls).toEqual(['https://bom.example.test/login']);
    // "utf-16" names no byte order: a big-endian mark says it, for the links as for the body; little-endian
    // without one. Cut after the mark's first byte by the chunks it arrives in.
    const be = Buffer.concat([Buffer.from([0xfe, 0xff]), Buffer.from(utf16('Votre compte: <a href="https://be.example.test/login">connexion</a>')).swap16()]);
    for (const chunk of [be.length + 200, 1]) {
      const f = await inspect(eml(...head(), 'Content-Type: text/html; charset="utf-16"', 'Content-Transfer-Encoding: base64', '', ...b64(be)), LIMITS, chunk);
      expect([chunk, f.body, f.urls]).toEqual([chunk, 'Votre compte: connexion', ['https://be.example.test/login']]);
    }
    const le = await inspect(eml(...head(), 'Content-Type: text/html; charset=utf-16', 'Content-Transfer-Encoding: base64', '', ...b64(utf16('<a href="https://le.example.test/">x</a>'))));
    expect(le.urls).toEqual(['https://le.example.test/']);
  });

  it('decodes UTF-7, which mail programs still show: the links, the body and the subject it would hide', async () => {
    // "Verify" and "https" written entirely in UTF-7's base64: the raw bytes show neither.
    const utf7 = (s: string) => iconv.encode(s, 'utf7');
    const hidden = '+AFYAZQByAGkAZgB5- your account: +AGgAdAB0AHAAcw-://login.evil.example.test/x'.replace('+AFYAZQByAGkAZgB5-', utf7('Vérify').toString());
    const plain = await inspect(eml(...head(), 'Content-Type: text/plain; charset=UTF-7', '', hidden));
    expect(plain.urls).toEqual(['https://login.evil.example.test/x']);
    expect(plain.body).toBe('Vérify your account: https://login.evil.example.test/x');
    // Cut anywhere by the chunks it arrives in, and in HTML.
    const html = eml(...head(), 'Content-Type: text/html; charset=x-unicode-2-0-utf-7', '', '<a href=+ACI-+AGgAdAB0AHAAcw-://html.evil.example.test/+ACI->here</a>');
    expect((await inspect(html, LIMITS, 7)).urls).toEqual(['https://html.evil.example.test/']);
    const subject = `=?utf-7?B?${utf7('Vérifiez votre compte').toString('base64')}?= =?UTF-7?Q?+AKA-maintenant?=`;
    expect((await inspect(eml(`Subject: ${subject}`, 'From: a@example.test', 'Content-Type: text/plain', '', 'x'))).subject).toBe('Vérifiez votre compte\u00a0maintenant');
    // A base64 stretch that goes on from one word to the next, and the charset's long name.
    const split = '=?utf-7?Q?+AGgAdA?= =?utf-7?B?QjBBSEFBY3ctOi8v?= =?unicode-1-1-utf-7?Q?split.example.test?=';
    expect((await inspect(eml(`Subject: ${split}`, 'From: a@example.test', 'Content-Type: text/plain', '', 'x'))).subject).toBe('https://split.example.test');
    // File names: an encoded word, and RFC 2231 (continued); a script's extension must show.
    const named = (disposition: string) =>
      eml(...head(), 'Content-Type: multipart/mixed; boundary="b"', '', '--b', 'Content-Type: text/plain', '', 'see', '--b', 'Content-Type: application/octet-stream', disposition, '', 'WScript.Echo 1', '--b--');
    const names = await Promise.all(
      ['Content-Disposition: attachment; filename="=?utf-7?Q?facture+AC4-vbs?="', "Content-Disposition: attachment; filename*=utf-7''facture+AC4-vbs", "Content-Disposition: attachment; filename*0*=UTF-7''factur; filename*1*=e+AC4-vbs"].map(async (d) => (await inspect(named(d))).attachments[0]),
    );
    expect(names.map((a) => [a!.name, a!.extension])).toEqual(Array(3).fill(['facture.vbs', 'vbs']));
    // Other charsets are left as mailsplit read them.
    expect((await inspect(named("Content-Disposition: attachment; filename*=utf-8''r%C3%A9sum%C3%A9+AC4-pdf"))).attachments[0]!.name).toBe('résumé+AC4-pdf');
  });

  it('names the file inside a gzip attachment: the name gzip stored (7-Zip extracts under it) and the attachment\'s without .gz (gunzip\'s)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-gz-'));
    writeFileSync(join(dir, 'facture-2025.exe'), Buffer.concat([Buffer.from('MZ'), Buffer.alloc(500, 1)]));
    const named = execFileSync('gzip', ['-c', join(dir, 'facture-2025.exe')]);
    const bare = execFileSync('gzip', ['-c', '-n', join(dir, 'facture-2025.exe')]);
    const attached = (gz: Buffer, name: string) =>
      eml(...head(), 'Content-Type: multipart/mixed; boundary="b"', '', '--b', 'Content-Type: text/plain', '', 'la facture', '--b', 'Content-Type: application/gzip', `Content-Disposition: attachment; filename="${name}"`, 'Content-Transfer-Encoding: base64', '', ...gz.toString('base64').match(/.{1,76}/g)!, '--b--');
    // The name inside counts whatever the outside says, and so does the outside.
    expect((await inspect(attached(named, 'facture.pdf.gz'))).attachments).toMatchObject([{ name: 'facture.pdf.gz', detectedType: 'gzip', archiveEntries: ['facture-2025.exe', 'facture.pdf'] }]);
    expect((await inspect(attached(bare, 'facture.exe.gz'))).attachments[0]!.archiveEntries).toEqual(['facture.exe']);
    expect((await inspect(attached(bare, 'sources.tgz'))).attachments[0]!.archiveEntries).toEqual(['sources.tar']);
    // A suffix gunzip does not know: 7-Zip, opening it by its content, names the file without the last extension.
    expect((await inspect(attached(bare, 'blob.bin'))).attachments[0]!.archiveEntries).toEqual(['blob']);
  });

  it('encrypted-zip.eml: a zip with the encryption flag is reported encrypted, its names still listed', async () => {
    const f = await inspect(load('encrypted-zip.eml'));
    expect(f.attachments[0]).toMatchObject({ name: 'contract.zip', detectedType: 'zip', encrypted: true, archiveEntries: ['contract.txt'] });
  });

  it('phishing-urls.eml: href targets behind innocent text, a soft-broken QP href, an entity-hidden scheme, a scheme-relative link', async () => {
    const f = await inspect(load('phishing-urls.eml'));
    expect(f.urls).toEqual([
      'https://examp1e-bank.test/login?session=8f2a',
      'https://www.bank.example/login',
      'https://secure-bank-example.test/verify',
      'http://bank-example-support.test/help',
    ]);
    expect(f.body).toContain('Verify it now at https://www.bank.example/login.');
    expect(f.body).not.toContain('examp1e');
  });

  it('spoofed-from.eml: From: a foreign bank address', async () => {
    const f = await inspect(load('spoofed-from.eml'));
    expect(f.from).toEqual(['someone-else@bank.example']);
    expect(f.headers.get('from')).toEqual(['Bank Security <someone-else@bank.example>']);
  });

  it('multiple-from.eml: every From: address, lower-cased, and the Sender:', async () => {
    const f = await inspect(load('multiple-from.eml'));
    expect(f.from).toEqual(['user1@example.test', 'user3@example.test']);
    expect(f.sender).toBe('user1@example.test');
  });

  it('deeply-nested.eml: 30 levels of multipart go over maxDepth 20; with room they are read to the bottom', async () => {
    const raw = load('deeply-nested.eml');
    const over = await inspect(raw, { ...LIMITS, maxDepth: 20 });
    expect(over.mimeLimitExceeded).toBe('depth');
    expect(over.subject).toBe('Nested 30 deep');
    expect(over.size).toBe(raw.length);
    expect(over.body).toBe('');
    // The root is depth 0, the text part at the bottom depth 30.
    expect((await inspect(raw, { ...LIMITS, maxDepth: 29 })).mimeLimitExceeded).toBe('depth');
    const fits = await inspect(raw, { ...LIMITS, maxDepth: 30 });
    expect(fits.mimeLimitExceeded).toBeUndefined();
    expect(fits.body).toBe('The innermost part.');
  });

  it('many-parts.eml: 600 parts go over maxParts 500, and the parts before the limit are kept', async () => {
    const raw = load('many-parts.eml');
    const over = await inspect(raw, { ...LIMITS, maxParts: 500 }, 4096);
    expect(over.mimeLimitExceeded).toBe('parts');
    expect(over.size).toBe(raw.length);
    // The root multipart is part 1: texts 1 to 499 were read before part 501 went over.
    expect(over.body.split('\n')).toHaveLength(499);
    expect(over.body).toMatch(/^part 1\npart 2\n/);
    const fits = await inspect(raw, { ...LIMITS, maxParts: 601 });
    expect(fits.mimeLimitExceeded).toBeUndefined();
    expect(fits.body.split('\n')).toHaveLength(600);
    expect(fits.body.endsWith('part 600')).toBe(true);
    expect((await inspect(raw, { ...LIMITS, maxParts: 600 })).mimeLimitExceeded).toBe('parts');
  });

  it('huge-header.eml: a 340 KB header is over maxHeaderSize; under a larger limit it is unfolded whole', async () => {
    const raw = load('huge-header.eml');
    const over = await inspect(raw, { ...LIMITS, maxHeaderSize: 262_144 }, 65_536);
    expect(over.mimeLimitExceeded).toBe('header_size');
    expect(over.size).toBe(raw.length);
    const fits = await inspect(raw, { ...LIMITS, maxHeaderSize: 1_048_576 }, 65_536);
    expect(fits.mimeLimitExceeded).toBeUndefined();
    const value = fits.headers.get('x-long-header')![0]!;
    expect(value.length).toBeGreaterThan(300_000);
    expect(value.startsWith('start segment-00000-xxx')).toBe(true);
    expect(value).not.toMatch(/[\r\n\t]/);
    expect(value.endsWith('segment-04999-' + 'x'.repeat(52))).toBe(true);
    expect(fits.body).toBe('The body after a huge header.');
  });

  it('malformed-mime.eml: no closing delimiter, bad base64, garbage Content-Type: best effort, no exception', async () => {
    const f = await inspect(load('malformed-mime.eml'));
    expect(f.mimeLimitExceeded).toBeUndefined();
    // A Content-Type that does not parse reads as text/plain (RFC 2045).
    expect(f.body).toBe('First part, intact.\nText under a garbage type, see https://malformed.example.test/page');
    expect(f.urls).toEqual(['https://malformed.example.test/page']);
    // Characters outside the base64 alphabet are skipped, as mail clients do.
    expect(f.attachments).toEqual([
      { name: 'data.bin', extension: 'bin', declaredType: 'application/octet-stream', detectedType: 'text', size: 12, sha256: sha256(Buffer.from('Hello world!')), encrypted: false, archiveEntries: [] },
    ]);
  });

  it('gives the same facts however the message is chunked (boundaries, escapes and URLs split across writes)', async () => {
    const names = readdirSync(FIXTURES).filter((n) => n.endsWith('.eml'));
    expect(names.length).toBeGreaterThanOrEqual(14);
    for (const name of names) {
      const raw = load(name);
      const whole = await inspect(raw);
      const sizes = raw.length < 4000 ? [1, 3, 77, 1000] : [1000, 4096, 65_536];
      for (const size of sizes) expect(await inspect(raw, LIMITS, size), `${name} in ${size}-byte chunks`).toEqual(whole);
    }
  });
});

describe('MIME inspector: behaviour', () => {
  it('reads a header parameter whose value holds a long run of spaces in one pass (it once took minutes: every session waited)', async () => {
    const spaces = ' '.repeat(250_000);
    const raw = Buffer.from(`From: a@x.test\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset="${spaces}utf-8"\r\nSubject: s\r\n\r\nhello\r\n`);
    const facts = await inspect(raw, { ...LIMITS, maxHeaderSize: 512 * 1024 });
    expect(facts.mimeLimitExceeded).toBeUndefined();
    const part = Buffer.from(`From: a@x.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: application/octet-stream; name="report${spaces}.exe"; x=a${spaces}b\r\n\r\nMZ\r\n--B--\r\n`);
    const withPart = await inspect(part, { ...LIMITS, maxHeaderSize: 1024 * 1024 });
    // The name as written, its extension read.
    expect(withPart.attachments.map((a) => a.extension)).toEqual(['exe']);
  });

  it('more distinct links than are kept go over a limit (urls), so a link past the bound is not unseen; repeats of kept ones do not', async () => {
    const links = (n: number) => Array.from({ length: n }, (_, i) => `https://news${i}.example.org/`);
    const over = await inspect(eml(...head(), 'Content-Type: text/plain', '', ...links(1000), 'https://login.examp1e-bank.test/verify', ''));
    expect(over.mimeLimitExceeded).toBe('urls');
    const repeated = await inspect(eml(...head(), 'Content-Type: text/plain', '', ...links(1000), ...links(1000), ''));
    expect(repeated.mimeLimitExceeded).toBeUndefined();
    expect(repeated.urls).toHaveLength(1000);
  });

  it('a part named only by Content-Name or X-Sun-Data-Name carries that name, as Thunderbird shows it', async () => {
    for (const header of ['Content-Name: invoice.js', 'X-Sun-Data-Name: invoice.js', 'Content-Name: =?UTF-8?Q?facture=2Ejs?=']) {
      const facts = await inspect(eml(...head(), 'Content-Type: multipart/mixed; boundary="b"', '', '--b', 'Content-Type: text/plain', '', 'hi', '--b', 'Content-Type: application/octet-stream', header, '', 'var s;', '--b--'));
      expect(facts.attachments.map((a) => a.extension)).toEqual(['js']);
    }
  });

  it('an SVG attachment opens in the browser: its links count like an HTML page\'s', async () => {
    const svg = '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink"><a xlink:href="https://login.examp1e-bank.test/verify"><text>Open</text></a></svg>';
    for (const type of ['image/svg+xml; name="invoice.svg"', 'application/octet-stream; name="invoice.svg"']) {
      const facts = await inspect(eml(...head(), 'Content-Type: multipart/mixed; boundary="b"', '', '--b', 'Content-Type: text/plain', '', 'see attached', '--b', `Content-Type: ${type}`, 'Content-Disposition: attachment; filename="invoice.svg"', '', svg, '--b--'));
      expect(facts.urls).toContain('https://login.examp1e-bank.test/verify');
    }
  });

  it('a failure inside the inspector (a bug) fails the inspection, in an attached message too, rather than judge on what came before', async () => {
    const failing = vi.spyOn(UrlSet.prototype, 'add').mockImplementation(() => {
      throw new Error('a bug');
    });
    try {
      const plain = eml(...head(), 'Content-Type: text/plain', '', 'see https://example.org/ then', '');
      await expect(inspect(plain)).rejects.toThrow('the message could not be inspected: a bug');
      const attached = eml(...head(), 'Content-Type: multipart/mixed; boundary="b"', '', '--b', 'Content-Type: text/plain', '', 'hi', '--b', 'Content-Type: message/rfc822', '', ...head(), 'Content-Type: text/plain', '', 'see https://example.org/', '--b--');
      await expect(inspect(attached)).rejects.toThrow('a bug');
    } finally {
      failing.mockRestore();
    }
  });

  it('decodes header values: RFC 2047 words, folding, raw UTF-8, and keeps repeated headers in order', async () => {
    const f = await inspect(
      eml(
        'Received: from a.example.test by b.example.test;',
        '\tMon, 3 Mar 2025 10:00:00 +0100',
        'Received: from c.example.test by a.example.test',
        'From: user1@example.test',
        'Subject: =?UTF-8?B?Q2Fmw6k=?= and =?utf-8?q?cr=C3=A8me?=',
        'X-Raw: déjà vu',
        '',
        'body',
      ),
    );
    expect(f.headers.get('received')).toEqual(['from a.example.test by b.example.test; Mon, 3 Mar 2025 10:00:00 +0100', 'from c.example.test by a.example.test']);
    expect(f.subject).toBe('Café and crème');
    expect(f.headers.get('x-raw')).toEqual(['déjà vu']);
  });

  it('takes addresses before decoding, so an encoded display name cannot add one', async () => {
    const f = await inspect(eml('From: =?utf-8?q?ceo=40bank=2Eexample_=3Cceo=40bank=2Eexample=3E=2C?= <User1@Example.TEST>', 'Sender: "Ops" <OPS@example.test>, other@example.test', '', 'x'));
    expect(f.from).toEqual(['user1@example.test']);
    expect(f.sender).toBe('ops@example.test');
    expect(f.headers.get('from')).toEqual(['ceo@bank.example <ceo@bank.example>, <User1@Example.TEST>']);
  });

  it('only reads the root headers into `headers`', async () => {
    const f = await inspect(eml(...head(), 'Content-Type: multipart/mixed; boundary=b', '', '--b', 'Content-Type: text/plain', 'X-Inner: yes', '', 'inner', '--b--'));
    expect(f.headers.has('x-inner')).toBe(false);
    expect(f.body).toBe('inner');
  });

  it('classifies parts: attachment disposition is not body; a named inline text part is both; a nameless image is an attachment', async () => {
    const png = Buffer.from('89504e470d0a1a0a0000000d49484452', 'hex');
    const f = await inspect(
      eml(
        ...head(),
        'Content-Type: multipart/mixed; boundary=sep',
        '',
        '--sep',
        'Content-Type: text/plain',
        'Content-Disposition: attachment; filename="notes.txt"',
        '',
        'attached text, not body',
        '--sep',
        'Content-Type: text/plain; name="inline.txt"',
        'Content-Disposition: inline',
        '',
        'inline named text',
        '--sep',
        'Content-Type: image/png',
        'Content-Transfer-Encoding: base64',
        '',
        png.toString('base64'),
        '--sep--',
      ),
    );
    expect(f.body).toBe('inline named text');
    expect(f.attachments.map((a) => [a.name, a.extension, a.declaredType, a.detectedType, a.size])).toEqual([
      ['notes.txt', 'txt', 'text/plain', 'text', 23],
      ['inline.txt', 'txt', 'text/plain', 'text', 17],
      ['', '', 'image/png', 'png', 16],
    ]);
  });

  it('reads file names (RFC 2231, RFC 2047) and extensions the way Windows does', async () => {
    const part = (disposition: string) => ['--s', 'Content-Type: application/octet-stream', `Content-Disposition: ${disposition}`, '', 'data'];
    const f = await inspect(
      eml(
        ...head(),
        'Content-Type: multipart/mixed; boundary=s',
        '',
        ...part("attachment; filename*=utf-8''r%C3%A9sum%C3%A9.PDF"),
        ...part('attachment; filename="=?utf-8?q?facture=5Fmars.Exe?="'),
        ...part('attachment; filename="payload.exe. . "'),
        ...part('attachment; filename="README"'),
        ...part('attachment; filename="dir.d/file"'),
        '--s',
        'Content-Disposition: attachment; filename="undeclared.pdf"',
        '',
        '%PDF-1.4',
        '--s--',
      ),
    );
    // No Content-Type at all: nothing declared (the parser's guess from the name is not a declaration).
    expect(f.attachments[5]).toMatchObject({ name: 'undeclared.pdf', declaredType: '', detectedType: 'pdf' });
    f.attachments.pop();
    expect(f.attachments.map((a) => [a.name, a.extension])).toEqual([
      ['résumé.PDF', 'pdf'],
      ['facture_mars.Exe', 'exe'],
      ['payload.exe. . ', 'exe'],
      ['README', ''],
      ['dir.d/file', ''],
    ]);
  });

  it('lists an Office Open XML attachment as office-openxml with its entries', async () => {
    const h = Buffer.alloc(30);
    h.writeUInt32LE(0x04034b50, 0);
    const entry = (name: string, data: string) => {
      const e = Buffer.from(h);
      e.writeUInt32LE(data.length, 18);
      e.writeUInt32LE(data.length, 22);
      e.writeUInt16LE(name.length, 26);
      return Buffer.concat([e, Buffer.from(name), Buffer.from(data)]);
    };
    const docx = Buffer.concat([entry('[Content_Types].xml', '<Types/>'), entry('word/document.xml', '<w:document/>'), Buffer.from('PK\x01\x02', 'latin1')]);
    const f = await inspect(eml(...head(), 'Content-Type: application/vnd.openxmlformats-officedocument.wordprocessingml.document; name="cv.docx"', 'Content-Transfer-Encoding: base64', '', docx.toString('base64')));
    expect(f.attachments[0]).toMatchObject({ name: 'cv.docx', extension: 'docx', detectedType: 'office-openxml', archiveEntries: ['[Content_Types].xml', 'word/document.xml'] });
  });

  it('takes links from an HTML file sent as an attachment (it opens in a browser)', async () => {
    const html = '<html><body><a href="https://evil.example.test/login">Open</a></body></html>';
    const f = await inspect(eml(...head(), 'Content-Type: text/html; name="statement.html"', 'Content-Disposition: attachment; filename="statement.html"', 'Content-Transfer-Encoding: base64', '', Buffer.from(html).toString('base64')));
    expect(f.body).toBe('');
    expect(f.urls).toEqual(['https://evil.example.test/login']);
    expect(f.attachments[0]).toMatchObject({ name: 'statement.html', detectedType: 'html', size: html.length });
  });

  it('reports an attached message (message/rfc822) as an attachment, and reads inside it', async () => {
    const f = await inspect(eml(...head(), 'Content-Type: multipart/mixed; boundary=m', '', '--m', 'Content-Type: message/rfc822', 'Content-Disposition: attachment; filename="fwd.eml"', '', 'From: x@example.test', 'Subject: inner', '', 'inner body https://inner.example.test/x', '--m--'));
    expect(f.attachments.map((a) => [a.name, a.declaredType, a.detectedType])).toEqual([['fwd.eml', 'message/rfc822', 'text']]);
    expect(f.subject).toBe('test');
    expect(f.from).toEqual(['user1@example.test']);
    expect(f.body).toBe('inner body https://inner.example.test/x');
    expect(f.urls).toEqual(['https://inner.example.test/x']);
  });

  it('attached messages share the message\'s inflate budget: a bomb in each does not get a fresh one', async () => {
    // 40 MB of zeros, then a program, in a .tar.gz of about 40 KB: listing it inflates the 40 MB.
    const dir = mkdtempSync(join(tmpdir(), 'douane-budget-'));
    writeFileSync(join(dir, 'zeros.bin'), Buffer.alloc(40 * 1024 * 1024));
    writeFileSync(join(dir, 'setup.exe'), Buffer.from('MZ'));
    execFileSync('tar', ['-czf', 'logs.tar.gz', 'zeros.bin', 'setup.exe'], { cwd: dir });
    const tgz = readFileSync(join(dir, 'logs.tar.gz')).toString('base64');
    const inner = ['From: x@example.test', 'Subject: logs', 'Content-Type: application/gzip; name="logs.tar.gz"', 'Content-Disposition: attachment; filename="logs.tar.gz"', 'Content-Transfer-Encoding: base64', '', tgz];
    const parts = Array.from({ length: 5 }, (_, i) => ['--m', 'Content-Type: message/rfc822', `Content-Disposition: attachment; filename="fwd${i}.eml"`, '', ...inner]).flat();
    const f = await inspect(eml(...head(), 'Content-Type: multipart/mixed; boundary=m', '', ...parts, '--m--'));
    // 128 MB in all: three listings whole, the fourth cut short, the fifth not inflated.
    expect(f.attachments.flatMap((a) => a.archiveEntries).filter((e) => e === 'setup.exe')).toHaveLength(3);
    expect(f.mimeLimitExceeded).toBe('archive_entries');
  });

  it('attached messages inside attached messages: the parts and depth limits hold across the nesting', async () => {
    // Each level: a multipart (depth d) holding a text part and the next level as an attached message (d + 1).
    const level = (n: number): string[] =>
      n === 0
        ? ['Content-Type: application/octet-stream; name="deep.exe"', 'Content-Disposition: attachment; filename="deep.exe"', 'Content-Transfer-Encoding: base64', '', Buffer.from('MZ' + '\0'.repeat(62)).toString('base64')]
        : ['Content-Type: multipart/mixed; boundary=b' + n, '', '--b' + n, 'Content-Type: text/plain', '', `level ${n}`, '--b' + n, 'Content-Type: message/rfc822', 'Content-Transfer-Encoding: base64', '', ...Buffer.from(['Subject: x', ...level(n - 1)].join('\r\n') + '\r\n').toString('base64').match(/.{1,76}/g)!, '--b' + n + '--'];
    const raw = eml(...head(), ...level(4));
    // Root multipart 0, attached message 1, its root 2, ... the executable at the bottom: depth 8. Parts: 3 per level and the executable.
    const fits = await inspect(raw, { ...LIMITS, maxDepth: 8, maxParts: 13 });
    expect(fits.mimeLimitExceeded).toBeUndefined();
    expect(fits.attachments.map((a) => [a.name, a.detectedType])).toEqual([['', 'text'], ['', 'text'], ['', 'text'], ['', 'text'], ['deep.exe', 'executable']]);
    expect(fits.body).toBe('level 4\nlevel 3\nlevel 2\nlevel 1');
    expect((await inspect(raw, { ...LIMITS, maxDepth: 7 })).mimeLimitExceeded).toBe('depth');
    const tooMany = await inspect(raw, { ...LIMITS, maxParts: 12 });
    expect(tooMany.mimeLimitExceeded).toBe('parts');
    expect(tooMany.attachments.some((a) => a.name === 'deep.exe')).toBe(false);
  });

  it('attached messages give the same facts however the input is cut, the shared parts limit included', async () => {
    const b64 = (text: string) => Buffer.from(text).toString('base64').replace(/.{76}/g, '$&\r\n');
    const inner = (n: number) =>
      ['Subject: inner ' + n, 'Content-Type: multipart/mixed; boundary=i' + n, '', '--i' + n, 'Content-Type: text/plain', '', `inner ${n} https://inner${n}.example.test/`, ...[1, 2, 3, 4].flatMap((k) => ['--i' + n, 'Content-Type: application/octet-stream; name="f' + n + k + '.exe"', 'Content-Disposition: attachment; filename="f' + n + k + '.exe"', '', 'MZ' + 'x'.repeat(k)]), '--i' + n + '--', ''].join('\r\n');
    const raw = eml(...head(), 'Content-Type: multipart/mixed; boundary=o', '', '--o', 'Content-Type: text/plain', '', 'outer text', ...[1, 2, 3].flatMap((n) => ['--o', 'Content-Type: message/rfc822', 'Content-Transfer-Encoding: base64', '', b64(inner(n))]), '--o', 'Content-Type: text/plain', '', 'after', '--o--');
    const view = (f: MessageFacts) => JSON.stringify({ a: f.attachments, b: f.body, u: f.urls, l: f.mimeLimitExceeded ?? null });
    // The root, 2 text parts, 3 attached messages and 6 parts inside each: 24 parts.
    for (const maxParts of [24, 23, 20, 12]) {
      const whole = await inspect(raw, { ...LIMITS, maxParts });
      expect(whole.mimeLimitExceeded).toBe(maxParts >= 24 ? undefined : 'parts');
      for (const size of [1460, 97, 7]) expect(view(await inspect(raw, { ...LIMITS, maxParts }, size))).toBe(view(whole));
    }
    const all = await inspect(raw);
    expect(all.attachments.filter((a) => a.extension === 'exe')).toHaveLength(12);
    expect(all.urls).toEqual(['https://inner1.example.test/', 'https://inner2.example.test/', 'https://inner3.example.test/']);
    expect(all.body).toBe('outer text\nafter\ninner 1 https://inner1.example.test/\ninner 2 https://inner2.example.test/\ninner 3 https://inner3.example.test/');
  });

  it('opens a part named .eml whatever type it declares, as mail clients do', async () => {
    const inner = ['Subject: x', 'Content-Type: application/octet-stream; name="run.exe"', 'Content-Disposition: attachment; filename="run.exe"', 'Content-Transfer-Encoding: base64', '', Buffer.from('MZ' + '\0'.repeat(62)).toString('base64'), ''].join('\r\n');
    const f = await inspect(eml(...head(), 'Content-Type: multipart/mixed; boundary=m', '', '--m', 'Content-Type: application/octet-stream; name="scan.eml"', 'Content-Disposition: attachment; filename="scan.eml"', 'Content-Transfer-Encoding: base64', '', Buffer.from(inner).toString('base64'), '--m--'));
    expect(f.attachments.map((a) => [a.name, a.detectedType])).toEqual([['scan.eml', 'text'], ['run.exe', 'executable']]);
  });

  it('waits on an attached message without piling up listeners, in small chunks', async () => {
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(w.name);
    process.on('warning', onWarning);
    try {
      const inner = ['Subject: big', 'Content-Type: application/octet-stream; name="big.bin"', 'Content-Transfer-Encoding: base64', '', Buffer.alloc(2_000_000, 0x42).toString('base64').replace(/.{76}/g, '$&\r\n')].join('\r\n') + '\r\n';
      const raw = eml(...head(), 'Content-Type: multipart/mixed; boundary=m', '', '--m', 'Content-Type: message/rfc822', 'Content-Transfer-Encoding: base64', '', Buffer.from(inner).toString('base64').replace(/.{76}/g, '$&\r\n'), '--m--');
      const f = await inspect(raw, LIMITS, 1000);
      expect(f.attachments.find((a) => a.name === 'big.bin')!.size).toBe(2_000_000);
      await new Promise((r) => setImmediate(r));
      expect(warnings.filter((w) => w === 'MaxListenersExceededWarning')).toEqual([]);
    } finally {
      process.off('warning', onWarning);
    }
  });

  it('an attachment inside a 6 MB attached message, streamed in 64 KB chunks: right size and SHA-256', async () => {
    const payload = Buffer.alloc(6_000_000, 0x41);
    const base64Lines = (b: Buffer) => b.toString('base64').replace(/.{76}/g, '$&\r\n');
    const inner = ['Subject: big', 'Content-Type: application/octet-stream; name="big.bin"', 'Content-Transfer-Encoding: base64', '', base64Lines(payload)].join('\r\n') + '\r\n';
    const raw = eml(...head(), 'Content-Type: multipart/mixed; boundary=m', '', '--m', 'Content-Type: message/rfc822', 'Content-Transfer-Encoding: base64', '', base64Lines(Buffer.from(inner)), '--m--');
    const f = await inspect(raw, LIMITS, 65_536);
    expect(f.attachments.find((a) => a.name === 'big.bin')).toMatchObject({ size: payload.length, sha256: sha256(payload) });
  });

  it('reads a multipart without a boundary as text rather than hiding its content', async () => {
    const f = await inspect(eml(...head(), 'Content-Type: multipart/mixed', '', 'visible text https://hidden.example.test/x'));
    expect(f.body).toBe('visible text https://hidden.example.test/x');
    expect(f.urls).toEqual(['https://hidden.example.test/x']);
  });

  it('decodes the body in its charset (windows-1252, UTF-16) and strips invisible characters', async () => {
    const cp = await inspect(Buffer.concat([eml(...head(), 'Content-Type: text/plain; charset=windows-1252', ''), Buffer.from('\x93quoted\x94 \u20ac'.replace('\u20ac', '\x80'), 'latin1'), Buffer.from('\r\n')]));
    expect(cp.body).toBe('“quoted” €');
    const u16 = Buffer.from('Hi https://u16.example.test/p', 'utf16le');
    const f = await inspect(eml(...head(), 'Content-Type: text/plain; charset=utf-16le', 'Content-Transfer-Encoding: base64', '', u16.toString('base64')));
    expect(f.body).toBe('Hi https://u16.example.test/p');
    expect(f.urls).toEqual(['https://u16.example.test/p']);
    const zw = await inspect(eml(...head(), 'Content-Type: text/plain; charset=utf-8', '', 'pay\u200bpal ver\u00adify'));
    expect(zw.body).toBe('paypal verify');
    const idn = await inspect(eml(...head(), 'Content-Type: text/plain; charset=utf-8', 'Content-Transfer-Encoding: 8bit', '', 'Voir https://bücher.example.test/livre-été.'));
    expect(idn.urls).toEqual(['https://bücher.example.test/livre-été']);
  });

  it('caps the body at maxTextBytes but still finds links past the cap', async () => {
    const filler = ('lorem ipsum dolor sit amet '.repeat(3) + '\r\n').repeat(30_000); // about 2.4 MB
    const raw = eml(...head(), 'Content-Type: text/plain', '', 'start', filler, 'end https://late.example.test/after-the-cap');
    const f = await inspect(raw, { ...LIMITS, maxTextBytes: 10_000 }, 65_536);
    expect(Buffer.byteLength(f.body)).toBeLessThanOrEqual(10_000);
    expect(f.body.startsWith('start\nlorem ipsum')).toBe(true);
    expect(f.urls).toEqual(['https://late.example.test/after-the-cap']);
    const def = await inspect(raw, LIMITS, 65_536);
    expect(Buffer.byteLength(def.body)).toBeLessThanOrEqual(262_144);
    expect(Buffer.byteLength(def.body)).toBeGreaterThan(250_000);
  });

  it('caps the URLs at maxUrls', async () => {
    const lines = Array.from({ length: 50 }, (_, i) => `https://u${i}.example.test/`);
    const f = await inspect(eml(...head(), '', ...lines), { ...LIMITS, maxUrls: 10 });
    expect(f.urls).toEqual(lines.slice(0, 10));
  });

  it('stops work at a limit but keeps consuming input, and reports the parts read before it', async () => {
    const parts = Array.from({ length: 10 }, (_, i) => ['--b', 'Content-Type: application/octet-stream', `Content-Disposition: attachment; filename="f${i}.bin"`, '', `data ${i}`]).flat();
    const raw = eml(...head(), 'Content-Type: multipart/mixed; boundary=b', '', ...parts, '--b--');
    const f = await inspect(raw, { ...LIMITS, maxParts: 4 }, 50);
    expect(f.mimeLimitExceeded).toBe('parts');
    expect(f.size).toBe(raw.length);
    expect(f.attachments.map((a) => a.name)).toEqual(['f0.bin', 'f1.bin', 'f2.bin']);
    expect(f.subject).toBe('test');
  });

  it('reports header_size for an inner part whose header block is over the limit', async () => {
    const big = 'X-Pad: ' + 'p'.repeat(3000);
    const raw = eml(...head(), 'Content-Type: multipart/mixed; boundary=b', '', '--b', 'Content-Type: text/plain', '', 'first', '--b', big, 'Content-Type: text/plain', '', 'second', '--b--');
    const f = await inspect(raw, { ...LIMITS, maxHeaderSize: 2048 });
    expect(f.mimeLimitExceeded).toBe('header_size');
    expect(f.body).toBe('first');
    expect((await inspect(raw, { ...LIMITS, maxHeaderSize: 4096 })).mimeLimitExceeded).toBeUndefined();
  });

  it('keeps the attachment before a header block so large the parser gives up on it', async () => {
    const raw = eml(
      ...head(),
      'Content-Type: multipart/mixed; boundary=b',
      '',
      '--b',
      'Content-Type: application/pdf; name="a.pdf"',
      'Content-Transfer-Encoding: base64',
      '',
      Buffer.from('%PDF-1.4 tiny').toString('base64'),
      '--b',
      ...Array.from({ length: 3000 }, (_, i) => `X-Pad-${i}: ${'p'.repeat(60)}`),
      '',
      'never read',
      '--b--',
    );
    const f = await inspect(raw, { ...LIMITS, maxHeaderSize: 4096 }, 8192);
    expect(f.mimeLimitExceeded).toBe('header_size');
    expect(f.size).toBe(raw.length);
    expect(f.attachments).toEqual([
      { name: 'a.pdf', extension: 'pdf', declaredType: 'application/pdf', detectedType: 'pdf', size: 13, sha256: sha256(Buffer.from('%PDF-1.4 tiny')), encrypted: false, archiveEntries: [] },
    ]);
  });

  it('never throws: garbage, empty input, headers only, writes after end, end twice', async () => {
    let seed = 42;
    const rnd = () => (seed = (seed * 1103515245 + 12345) >>> 0) >>> 24;
    for (const n of [1, 100, 10_000, 200_000]) {
      const junk = Buffer.from(Buffer.alloc(n).map(rnd));
      await expect(inspect(junk, LIMITS, 997)).resolves.toMatchObject({ size: n });
      const withCrlf = Buffer.from(junk.toString('latin1').replace(/[\r\n]/g, '').replace(/(.{60})/g, '$1\r\n'), 'latin1');
      await expect(inspect(Buffer.concat([eml(...head(), 'Content-Type: multipart/mixed; boundary=""', 'Content-Transfer-Encoding: base64'), withCrlf]), LIMITS, 4096)).resolves.toBeTruthy();
    }
    const empty = await inspect(Buffer.alloc(0));
    expect(empty).toMatchObject({ size: 0, from: [], subject: '', body: '', urls: [], attachments: [] });
    const headersOnly = await inspect(Buffer.from('From: user1@example.test\r\nSubject: only headers'));
    expect(headersOnly).toMatchObject({ from: ['user1@example.test'], subject: 'only headers', body: '' });
    const insp = new MessageInspector(LIMITS);
    insp.write(eml(...head(), '', 'hello'));
    const first = insp.end();
    expect(insp.write(Buffer.from('more'))).toBeUndefined();
    expect(insp.end()).toBe(first);
    expect(await first).toMatchObject({ body: 'hello', size: eml(...head(), '', 'hello').length });
  });

  // A quadratic scan of this markup runs for minutes: the test's timeout is the guard, the speed itself
  // is measured by `npm run bench:checks`.
  it('handles hostile markup (unclosed tags, quotes and scripts) without stalling', { timeout: 20_000 }, async () => {
    const hostile = '<a href="'.repeat(40_000) + '<script>'.repeat(20_000) + 'x&#'.repeat(20_000);
    const f = await inspect(eml(...head(), 'Content-Type: text/html', '', hostile), LIMITS, 65_536);
    expect(f.urls).toEqual([]);
  });

  it('asks for backpressure with a promise and works from an async iterable', async () => {
    const raw = load('clean-attachments.eml');
    const insp = new MessageInspector(LIMITS);
    const big = Buffer.concat([raw.subarray(0, raw.length - 2), Buffer.alloc(100_000, 0x41), Buffer.from('\r\n')]);
    const wait = insp.write(big);
    expect(wait).toBeInstanceOf(Promise);
    await wait;
    await insp.end();
    async function* chunks() {
      for (let i = 0; i < raw.length; i += 100) yield raw.subarray(i, i + 100);
    }
    expect(await inspectStream(chunks(), LIMITS)).toEqual(await inspect(raw));
    expect(await inspectStream([raw], LIMITS)).toEqual(await inspect(raw));
  });

  it('streams a 25 MB base64 attachment in 64 KB chunks: right size and SHA-256, bounded memory', async () => {
    v8.setFlagsFromString('--expose-gc');
    const gc = vm.runInNewContext('gc') as () => void;
    const BLOCK = 47_616; // a multiple of 3: each block's base64 follows on from the last
    const BLOCKS = 551; // 26.2 MB
    const expected = createHash('sha256');
    function* message(): Generator<Buffer> {
      yield eml(...head(), 'Content-Type: multipart/mixed; boundary=big', '', '--big', 'Content-Type: text/plain', '', 'see attached', '--big', 'Content-Type: application/octet-stream; name="big.bin"', 'Content-Transfer-Encoding: base64', '');
      const block = Buffer.alloc(BLOCK);
      let seed = 1;
      for (let b = 0; b < BLOCKS; b++) {
        for (let i = 0; i < BLOCK; i += 4) block.writeUInt32LE((seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0), i);
        expected.update(block);
        yield Buffer.from(block.toString('base64').replace(/.{64}/g, '$&\r\n'), 'latin1');
      }
      yield eml('', '--big--');
    }
    // Re-cut into exact 64 KB writes.
    function* chunks(): Generator<Buffer> {
      let pending = Buffer.alloc(0);
      for (const piece of message()) {
        pending = Buffer.concat([pending, piece]);
        while (pending.length >= 65_536) {
          yield pending.subarray(0, 65_536);
          pending = pending.subarray(65_536);
        }
      }
      if (pending.length) yield pending;
    }
    const insp = new MessageInspector(LIMITS);
    // heapUsed, as asked, plus the memory of Buffers, which lives outside the JS heap: an inspector that
    // kept the attachment's bytes would show there.
    const used = () => {
      const m = process.memoryUsage();
      return { heap: m.heapUsed, all: m.heapUsed + m.arrayBuffers };
    };
    gc();
    const before = used();
    let fed = 0;
    for (const c of chunks()) {
      fed += c.length;
      const wait = insp.write(c);
      if (wait) await wait;
    }
    gc();
    const after = used();
    const f = await insp.end();
    expect(f.size).toBe(fed);
    expect(f.body).toBe('see attached');
    expect(f.attachments).toHaveLength(1);
    expect(f.attachments[0]).toMatchObject({ name: 'big.bin', size: BLOCK * BLOCKS, sha256: expected.digest('hex'), detectedType: 'unknown' });
    expect(after.heap - before.heap).toBeLessThan(15 * 1024 * 1024);
    expect(after.all - before.all).toBeLessThan(15 * 1024 * 1024);
  });
});

describe('HTML to text and URL extraction', () => {
  it('drops tags, comments and hidden elements, breaks lines at blocks, decodes entities', () => {
    expect(htmlToText('<p>One&nbsp;&amp;&#32;two</p><!-- hidden --><div>Three<br>four</div><style>x{}</style><SCRIPT>alert(1)</SCRIPT>5 &lt; 6 &#x263A; &unknown;', 1000)).toBe(
      'One & two\n\nThree\nfour\n5 < 6 ☺ &unknown;',
    );
    expect(htmlToText('<table><tr><td>a</td><td>b</td></tr></table>', 100)).toBe('a b');
    expect(htmlToText('a < b and <notatag', 100)).toBe('a < b and');
    expect(htmlToText('x'.repeat(1000), 10)).toHaveLength(10);
  });

  it('keeps apart, for the bulk fingerprint, what a div or span\'s own attributes hide from every reader; the text keeps it', () => {
    const both = (html: string) => htmlToTexts(html, 1000);
    const hide = (attrs: string, tag = 'div') => both(`<p>Seen before.</p><${tag} ${attrs}>pad <span>one</span> <${tag}>two</${tag}> three</${tag}><p>Seen after.</p>`);
    for (const attrs of ['style="display:none"', "style='DISPLAY : none;max-height:0'", 'style="color:red; display: none !important"', 'hidden', 'class=x hidden=""', 'style="display:block;display:none"']) {
      const { text, visible } = hide(attrs);
      expect(visible, attrs).toBe('Seen before.\n\nSeen after.');
      // The rules read all of it: a wrong guess here must not hide shown text from them.
      expect(text, attrs).toContain('pad one');
    }
    expect(hide('style="display:none"', 'span').visible).toBe('Seen before.\n\nSeen after.');
    // Shown: what an element inside can undo, a comment, a later rule, a style in another attribute's value,
    // a class, elements a mail program closes by themselves.
    for (const attrs of ['style="visibility:hidden"', 'style="font-size:0"', 'style="/*;display:none*/"', 'style="display:none;display:block"', 'title=" style=display:none"', 'data-x="hidden"', 'class="hidden"', 'aria-hidden="true"']) {
      expect(hide(attrs).visible, attrs).toContain('pad one');
    }
    for (const tag of ['p', 'table', 'h1', 'a']) expect(hide('style="display:none"', tag).visible, tag).toContain('pad one');
    // An enclosing element's end ends the hidden one too, as in a browser.
    expect(both('<div><span style="display:none">pad</div>Pay here now</span>').visible).toBe('Pay here now');
    expect(both('<div style="display:none">pad <b>x</b> <span>y</span></div>Pay here now').visible).toBe('Pay here now');
    // Never closed: shown, as far as the markup goes (no text is dropped on a guess).
    expect(both('<p>a</p><div style="display:none">b <div>c</div>').visible).toBe('a\n\nb\nc');
    // Nothing hidden: the one text.
    const plain = both('<p>Hello</p>');
    expect(plain.visible).toBe(plain.text);
  });

  it('finds a URL written out in HTML with character references in its scheme, which is shown (and linked) decoded', () => {
    const html = '<p>https&#58;//examp1e-bank.test/x and &#104;ttps&#x3a;&#x2f;&#x2F;evil.test/a, HTTP&colon;&sol;&sol;third.test/b</p>';
    expect(extractUrls(html, true)).toEqual(['https://examp1e-bank.test/x', 'https://evil.test/a', 'http://third.test/b']);
    // A reference for a space ends it, as shown; an attribute's value is read as hrefs are.
    expect(extractUrls('<p>https&#58;//cut.test/a&#32;b</p><img alt="https&#58;//alt.test/">', true)).toEqual(['https://cut.test/a']);
    // In plain text the references are text, as mail programs show them.
    expect(extractUrls('https&#58;//examp1e-bank.test/x', false)).toEqual([]);
  });

  it('finds written-out URLs and href targets, trims sentence punctuation, lower-cases scheme and host', () => {
    expect(extractUrls('See HTTPS://Example.TEST/Path?Q=1. And (https://b.example.test/x), https://w.example.test/wiki/A_(b).', false)).toEqual([
      'https://example.test/Path?Q=1',
      'https://b.example.test/x',
      'https://w.example.test/wiki/A_(b)',
    ]);
    expect(extractUrls('<a href = "\n https://h.example.test/a?x=1&amp;y=2 ">t</a><a href=\'mailto:x@y\'>m</a><a href=https://bare.example.test/u>u</a><a href="#top">', true)).toEqual([
      'https://h.example.test/a?x=1&y=2',
      'https://bare.example.test/u',
    ]);
    expect(extractUrls('no links here, http:// alone, ftp://x.example.test', false)).toEqual([]);
  });

  it('finds the links a browser or a mail program would follow: "https:/x", "http:\\\\x", a trailing dot, "www." without a scheme', () => {
    expect(extractUrls('<a href="https:/one.example.test/login">a</a><a href="https:two.example.test/x">b</a><a href="http:\\\\three.example.test\\p">c</a>', true)).toEqual([
      'https://one.example.test/login',
      'https://two.example.test/x',
      'http://three.example.test/p',
    ]);
    expect(extractUrls('Log in at https://Four.Example.Test./x or at www.five.example.test/login today.', false)).toEqual(['https://four.example.test/x', 'http://www.five.example.test/login']);
    // Not links: an address, a path, a word that starts like one.
    expect(extractUrls('mail me at bob@www.example.test, see /srv/www.example.test/, or wwwexample.test', false)).toEqual([]);
  });

  it('reads an href as a browser does: every HTML5 entity, control characters around it, padding of any length', () => {
    expect(extractUrls('<a href="ht&Tab;tps://tab.example.test/x">a</a><a href="&#1;&#104;ttps://ctl.example.test/">b</a><a href="https&colon;&sol;&sol;named.example.test&NewLine;/y">c</a>', true)).toEqual([
      'https://tab.example.test/x',
      'https://ctl.example.test/',
      'https://named.example.test/y',
    ]);
    // Past 2 KB of leading spaces, or with a long query, the link is still one (kept to its first 2 KB).
    const padded = extractUrls(`<a href="${' '.repeat(2100)}https://padded.example.test/login">x</a><a href="https://query.example.test/?${'q'.repeat(3000)}">y</a>`, true);
    expect(padded.map((u) => new URL(u).host)).toEqual(['padded.example.test', 'query.example.test']);
    // However long the padding, and wherever the pieces it streams in are cut.
    for (const spaces of [8200, 100_000]) {
      const urls = new UrlSet();
      const s = new UrlScanner(urls, true);
      const text = `<p>hello</p><a href="${' '.repeat(spaces)}&#104;ttps://far.example.test/x">x</a>${' y'.repeat(30_000)}`;
      for (let i = 0; i < text.length; i += 7919) s.push(text.slice(i, i + 7919));
      s.end();
      expect([spaces, urls.list()]).toEqual([spaces, ['https://far.example.test/x']]);
    }
    // In an attribute, a legacy name written without ";" before "=" is text: the link the browser follows.
    expect(extractUrls('<a href="https://amp.example.test/?a=1&copy=2">x</a>', true)).toContain('https://amp.example.test/?a=1&copy=2');
  });

  it('finds a long www. link however a batch of streamed pieces cuts it', () => {
    const host = 'www.' + Array.from({ length: 9 }, (_, i) => `l${i}`.padEnd(63, 'x')).join('.');
    const link = `${host}/${'p'.repeat(1990)}`;
    for (const at of [32_768 - 2300, 32_768 - 1200, 32_768 - 10]) {
      const urls = new UrlSet();
      const s = new UrlScanner(urls, false);
      const text = 'x '.repeat(at / 2) + link + ' ' + 'y '.repeat(20_000);
      for (let i = 0; i < text.length; i += 4096) s.push(text.slice(i, i + 4096));
      s.end();
      expect(urls.list().map((u) => u.slice(0, 40)), `link at ${at}`).toEqual([`http://${host}`.slice(0, 40)]);
    }
  });

  it('finds a URL split across streamed pieces, once, wherever the cut falls', () => {
    // Pieces of 7919 are scanned in batches of five (39 595 characters): move the link across that cut.
    for (let at = 39_520; at < 39_600; at += 3) {
      const urls = new UrlSet();
      const s = new UrlScanner(urls, true);
      const text = 'x'.repeat(at) + ' <a href="https://split.example.test/p/q"> ' + 'y'.repeat(at) + ' https://text.example.test/r/s ' + 'z'.repeat(90_000);
      for (let i = 0; i < text.length; i += 7919) s.push(text.slice(i, i + 7919));
      s.end();
      expect(urls.list(), `link at ${at}`).toEqual(['https://split.example.test/p/q', 'https://text.example.test/r/s']);
    }
  });
});

describe('transfer decoders', () => {
  function decodeInPieces(encoding: string, input: Buffer, size: number): Buffer {
    const d = transferDecoder(encoding);
    const out: Buffer[] = [];
    for (let i = 0; i < input.length; i += size) out.push(d.push(input.subarray(i, i + size)));
    out.push(d.end());
    return Buffer.concat(out);
  }

  it('decodes base64 split anywhere, with odd line lengths, stray characters and padding mid-stream', () => {
    let seed = 3;
    const data = Buffer.from(Buffer.alloc(5000).map(() => (seed = (seed * 1103515245 + 12345) >>> 0) >>> 24));
    const odd = data.toString('base64').replace(/.{75}/g, '$&\r\n');
    const perLine = [data.subarray(0, 10), data.subarray(10, 21), data.subarray(21)].map((b) => b.toString('base64')).join('\r\n');
    for (const size of [1, 2, 3, 5, 7, 76, 1000, 4096]) {
      expect(decodeInPieces('base64', Buffer.from(odd), size).equals(data), `odd lines in ${size}`).toBe(true);
      expect(decodeInPieces('base64', Buffer.from(perLine), size).equals(data), `padded lines in ${size}`).toBe(true);
    }
    expect(decodeInPieces('base64', Buffer.from('SGVsbG8g*&^%$ d29y!!bGQh'), 5).toString()).toBe('Hello world!');
    expect(decodeInPieces('base64', Buffer.from('SGk'), 1).toString()).toBe('Hi'); // missing "="
  });

  it('decodes quoted-printable split anywhere: escapes, soft breaks, literal "=", over-long lines', () => {
    const qp = Buffer.from('caf=C3=A9 cr=C3=A8=\r\nme =3D ok=\r\n joined\r\n= not an escape =ZZ\r\ntrailing soft=  \r\nend=');
    const expected = 'café crème = ok joined\r\n= not an escape =ZZ\r\ntrailing softend';
    for (const size of [1, 2, 3, 4, 9, 64, 1000]) expect(decodeInPieces('quoted-printable', qp, size).toString(), `in ${size}`).toBe(expected);
    const long = Buffer.from(('ab=3D' + 'x'.repeat(50)).repeat(400)); // 22 KB without a line break
    const longExpected = ('ab=' + 'x'.repeat(50)).repeat(400);
    for (const size of [4097, 5000, 65_536]) expect(decodeInPieces('quoted-printable', long, size).toString(), `long in ${size}`).toBe(longExpected);
  });

  it('passes 7bit, 8bit, binary and unknown encodings through', () => {
    for (const enc of ['7bit', '8bit', 'binary', 'x-unknown', '']) expect(decodeInPieces(enc, Buffer.from('a=3Db'), 2).toString()).toBe('a=3Db');
  });

  it('decodes a part sent as x-uuencode (which mail libraries decode) between its begin and end lines, however cut', () => {
    let seed = 5;
    const data = Buffer.from(Buffer.alloc(3000).map(() => (seed = (seed * 1103515245 + 12345) >>> 0) >>> 24));
    const encoded = Buffer.from(['preamble', 'begin 644 docs.zip', ...uu(data), '`', 'end', 'trailer', ''].join('\r\n'));
    for (const enc of ['x-uuencode', 'uuencode', 'x-uue']) {
      for (const size of [encoded.length, 61, 7, 1]) expect(decodeInPieces(enc, encoded, size).equals(data)).toBe(true);
    }
  });

  it('reads the encoding as its token, without what is written after it ("base64; x=y")', () => {
    expect(decodeInPieces('base64; x=y', Buffer.from('TVogcHJvZ3JhbQ=='), 3).toString()).toBe('MZ program');
    expect(decodeInPieces('quoted-printable (comment)', Buffer.from('a=3Db'), 2).toString()).toBe('a=b');
  });
});
