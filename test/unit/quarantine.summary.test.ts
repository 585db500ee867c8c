import { Readable } from 'node:stream';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { formatSummary, printable, summarise, terminalJson } from '../../src/quarantine/summary.js';

const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');
const attachment = Buffer.alloc(3000, 0x41);

function message(subject: string, body: string, type = 'text/html; charset=utf-8'): Buffer {
  return Buffer.from(
    [
      `From: =?UTF-8?B?${b64('Élodie Martin')}?= <elodie@example.com>`,
      'To: bob@example.net, "Carol" <carol@example.org>',
      `Subject: =?UTF-8?B?${b64(subject)}?=`,
      'Date: Fri, 27 Nov 2026 10:00:00 +0100',
      'MIME-Version: 1.0',
      'Content-Type: multipart/mixed; boundary="b1"',
      '',
      '--b1',
      `Content-Type: ${type}`,
      'Content-Transfer-Encoding: base64',
      '',
      b64(body),
      '--b1',
      `Content-Type: application/pdf; name="=?UTF-8?B?${b64('facture réglée.pdf')}?="`,
      'Content-Disposition: attachment',
      'Content-Transfer-Encoding: base64',
      '',
      attachment.toString('base64').replace(/.{76}/g, '$&\r\n'),
      '--b1--',
      '',
    ].join('\r\n'),
  );
}

describe('quarantine show: the kept message decoded for a person', () => {
  it('decodes headers, takes the text from the HTML when there is no plain part, and measures attachments', async () => {
    const s = await summarise(Readable.from([message('Facture réglée', '<p>Bonjour,</p><p>Voir la <a href="https://x.example/p">facture</a>.</p>')]));
    expect(s).toMatchObject({ from: '"Élodie Martin" <elodie@example.com>', to: 'bob@example.net, "Carol" <carol@example.org>', subject: 'Facture réglée', date: '2026-11-27T09:00:00.000Z' });
    expect(s.text.join('\n')).toMatch(/Bonjour,[\s\S]*Voir la facture/);
    expect(s.attachments).toEqual([{ filename: 'facture réglée.pdf', contentType: 'application/pdf', size: 3000 }]);
    const text = formatSummary(s);
    expect(text).toContain('Subject: Facture réglée');
    expect(text).toContain('Attachments (1):\n  facture réglée.pdf  application/pdf  3000 bytes');
  });

  it('shows only the first lines of a long text', async () => {
    const body = Array.from({ length: 40 }, (_, i) => `line ${i + 1}`).join('\n');
    const s = await summarise(Readable.from([message('long', body, 'text/plain; charset=utf-8')]), 5);
    expect(s.text).toEqual(['line 1', 'line 2', 'line 3', 'line 4', 'line 5']);
    expect(formatSummary(s)).toContain('  | line 5\n  | …\n');
  });

  it('a hostile subject cannot reach the terminal as control sequences', async () => {
    const s = await summarise(Readable.from([message('\u001b[2J\u001b]0;owned\u0007 pay now \u202e', 'x', 'text/plain')]));
    const text = formatSummary(s);
    expect(text).not.toMatch(/[\u001b\u0007\u202e]/);
    expect(text).toContain('Subject: \ufffd[2J\ufffd]0;owned\ufffd pay now \ufffd');
    expect(printable('tab\tkept')).toBe('tab\tkept');
  });

  it('a malformed message still gives what can be read', async () => {
    const s = await summarise(Readable.from([readFileSync('fixtures/messages/malformed-mime.eml')]));
    expect(s).toMatchObject({ from: 'user1@example.test', subject: 'Broken structure' });
    expect(s.text.length).toBeGreaterThan(0);
  });
});

describe('attached messages', () => {
  it('lists the attachments inside an attached message (here base64-encoded), after it', async () => {
    const raw = readFileSync('fixtures/messages/forwarded-exe.eml');
    const s = await summarise(Readable.from([raw]));
    expect(s.text).toEqual(['See the message below.']);
    expect(s.attachments.map((a) => [a.filename, a.contentType, a.size])).toEqual([
      ['invoice.eml', 'message/rfc822', expect.any(Number)],
      ['invoice.eml › invoice.pdf', 'application/pdf', 512],
    ]);
    expect(formatSummary(s)).toMatch(/^Attachments \(2\):\n {2}invoice\.eml {2}message\/rfc822 {2}\d+ bytes\n {2}invoice\.eml › invoice\.pdf {2}application\/pdf {2}512 bytes$/m);
  });
});

describe('an attached message that cannot be read', () => {
  it('does not stop the summary: the rest is listed, and the attached message is marked', async () => {
    // Inside: a header block of 3 MB, more than mailparser takes.
    const inner = `Subject: x\r\nX-Long: ${'a'.repeat(3_000_000)}\r\n\r\nbody\r\n`;
    const raw = Buffer.from(
      [
        'From: a@example.test',
        'Subject: outer',
        'MIME-Version: 1.0',
        'Content-Type: multipart/mixed; boundary="o"',
        '',
        '--o',
        'Content-Type: application/octet-stream; name="setup.exe"',
        'Content-Disposition: attachment; filename="setup.exe"',
        'Content-Transfer-Encoding: base64',
        '',
        Buffer.from('MZ').toString('base64'),
        '--o',
        'Content-Type: message/rfc822; name="fwd.eml"',
        'Content-Disposition: attachment; filename="fwd.eml"',
        'Content-Transfer-Encoding: base64',
        '',
        Buffer.from(inner).toString('base64').replace(/.{76}/g, '$&\r\n'),
        '--o--',
        '',
      ].join('\r\n'),
    );
    const s = await summarise(Readable.from([raw]));
    expect(s.subject).toBe('outer');
    expect(s.attachments.map((a) => a.filename)).toEqual(['setup.exe', 'fwd.eml', 'fwd.eml › (could not be read as a message)']);
    expect(s.attachments[1]!.size).toBe(Buffer.byteLength(inner));
  }, 20_000);
});

describe('terminalJson', () => {
  it('escapes what a terminal would obey (C1 controls, bidi overrides, line separators), and reads back as the same text', () => {
    const subject = 'Invoice \u009b2J\u001b[31m \u202egpj.exe \u2066x\u2069 \u2028 dou\u200bane \u{e0041} é€';
    const text = terminalJson({ subject }, 2);
    expect(text).not.toMatch(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u2028\u2029\p{Cf}\p{Default_Ignorable_Code_Point}]/u);
    expect(text).toContain('\\u009b2J');
    expect(text).toContain('é€');
    expect(JSON.parse(text)).toEqual({ subject });
  });
});
