// S/MIME opaque-signed messages (smime.p7m, signed-data) hold the message a mail program shows inside the
// signature: its attachments and text count like an attached message's. The messages here are signed by
// OpenSSL, the way mail programs write them (DER, and BER with indefinite lengths when streamed).

import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { MessageInspector } from '../../src/inspect/mime.js';
import { SignedDataReader } from '../../src/inspect/pkcs7.js';
import type { MessageFacts } from '../../src/policy/facts.js';
import { mimeMessage, shippedVerdict } from '../harness/mime.js';

const dir = mkdtempSync(join(tmpdir(), 'douane-smime-'));
const KEY = join(dir, 'key.pem');
const CERT = join(dir, 'cert.pem');
execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', KEY, '-out', CERT, '-days', '2', '-subj', '/CN=user1@example.test'], { stdio: 'ignore' });

const PROGRAM = Buffer.concat([Buffer.from('MZ\x90\x00\x03\x00\x00\x00', 'latin1'), Buffer.alloc(200, 0x41)]);
const INNER = mimeMessage({ from: 'user1@example.test', subject: 'facture', text: 'Ci-joint la facture, a regler avant vendredi.', attachments: [{ name: 'facture.exe', content: PROGRAM }] });

/** `openssl cms` run on `input` with `args`, its output as bytes. */
function cms(args: string[], input: string | Buffer): Buffer {
  const file = join(dir, `in-${Math.random().toString(36).slice(2)}`);
  writeFileSync(file, input);
  return execFileSync('openssl', ['cms', ...args, '-in', file]);
}

/** The inner entity's MIME headers and body only: a signed message carries no From or Subject inside. */
const entity = (message: string) => message.slice(message.indexOf('MIME-Version:'));

/** The whole message, signed opaquely, with `outer` headers before the S/MIME ones OpenSSL writes. */
function signedMessage(content: string, extra: string[] = []): Buffer {
  const smime = cms(['-sign', '-nodetach', '-signer', CERT, '-inkey', KEY, '-outform', 'SMIME', ...extra], content);
  return Buffer.concat([Buffer.from('From: user1@example.test\r\nTo: user2@example.test\r\nSubject: facture\r\n'), Buffer.from(smime.toString('latin1').replace(/\r?\n/g, '\r\n'), 'latin1')]);
}

/** A message with `p7m` (DER) attached as smime.p7m, with its Content-Type. */
function attached(p7m: Buffer, type = 'application/pkcs7-mime; smime-type=signed-data; name="smime.p7m"', filename = 'smime.p7m'): Buffer {
  const b64 = p7m.toString('base64').replace(/.{76}/g, '$&\r\n');
  return Buffer.from(
    [
      'From: user1@example.test',
      'To: user2@example.test',
      'Subject: facture',
      'MIME-Version: 1.0',
      `Content-Type: ${type}`,
      'Content-Transfer-Encoding: base64',
      `Content-Disposition: attachment; filename="${filename}"`,
      '',
      b64,
      '',
    ].join('\r\n'),
  );
}

async function inspect(raw: Buffer, chunk = 997): Promise<MessageFacts> {
  const inspector = new MessageInspector({ maxParts: 100, maxDepth: 10, maxHeaderSize: 65_536 });
  for (let i = 0; i < raw.length; i += chunk) await inspector.write(raw.subarray(i, i + chunk));
  return inspector.end();
}

const verdict = shippedVerdict;

describe('S/MIME opaque-signed messages', () => {
  it('the program inside a message signed with openssl cms (DER) is found and quarantined, its text read', async () => {
    const raw = signedMessage(entity(INNER));
    expect(raw.toString()).toMatch(/application\/(x-)?pkcs7-mime; smime-type=signed-data/);
    const facts = await inspect(raw);
    expect(facts.attachments.map((a) => a.name)).toEqual(['smime.p7m', 'facture.exe']);
    expect(facts.attachments[1]).toMatchObject({ detectedType: 'executable', size: PROGRAM.length });
    expect(facts.body).toContain('a regler avant vendredi');
    expect(facts.mimeLimitExceeded).toBeUndefined();
    expect(verdict(facts)).toMatchObject({ action: 'quarantine', rule: { id: 'attachments.executable' } });
  });

  it('one streamed (BER: indefinite lengths, the content in pieces) is read the same, whatever the chunks', async () => {
    const der = cms(['-sign', '-nodetach', '-stream', '-signer', CERT, '-inkey', KEY, '-outform', 'DER'], entity(INNER));
    // openssl writes a streamed signature with indefinite lengths: 0x30 0x80 at its start.
    expect([der[0], der[1]]).toEqual([0x30, 0x80]);
    for (const chunk of [1, 7, 4096]) {
      const facts = await inspect(attached(der), chunk);
      expect(facts.attachments.map((a) => a.name), `chunks of ${chunk}`).toEqual(['smime.p7m', 'facture.exe']);
      expect(facts.mimeLimitExceeded).toBeUndefined();
    }
  });

  it('gives out exactly the signed content, as openssl verifies it, in DER and BER', () => {
    for (const extra of [[], ['-stream']]) {
      const der = cms(['-sign', '-nodetach', ...extra, '-signer', CERT, '-inkey', KEY, '-outform', 'DER'], entity(INNER));
      const verified = execFileSync('openssl', ['cms', '-verify', '-noverify', '-inform', 'DER', '-in', writeTemp(der)]);
      for (const chunk of [1, 3, 64, der.length]) {
        const reader = new SignedDataReader();
        const out: Buffer[] = [];
        for (let i = 0; i < der.length; i += chunk) out.push(...reader.push(der.subarray(i, i + chunk)).map((b) => Buffer.from(b)));
        reader.end();
        expect(Buffer.concat(out).equals(verified), `${extra.join(' ') || 'DER'} in chunks of ${chunk}`).toBe(true);
        expect(reader).toMatchObject({ signed: true, complete: true, malformed: false });
      }
    }
  });

  it('a signed message cut short is refused as too complex to check; a signature alone is not', async () => {
    const der = cms(['-sign', '-nodetach', '-signer', CERT, '-inkey', KEY, '-outform', 'DER'], entity(INNER));
    // Cut inside the signed content's headers, before the program: what follows is unknown.
    const cut = await inspect(attached(der.subarray(0, der.indexOf('Content-Type') + 40)));
    expect(cut.mimeLimitExceeded).toBe('signed_content');
    expect(verdict(cut)).toMatchObject({ action: 'reject', rule: { id: 'mime.too-complex' } });
    // Declared signed, and not CMS at all.
    const garbage = await inspect(attached(Buffer.from('MZ this is not a signature at all')));
    expect(garbage.mimeLimitExceeded).toBe('signed_content');
    // A detached signature (the content travels beside it): nothing inside, nothing refused.
    const detached = cms(['-sign', '-signer', CERT, '-inkey', KEY, '-outform', 'DER'], entity(INNER));
    const alone = await inspect(attached(detached, 'application/pkcs7-signature; name="smime.p7s"'));
    expect(alone.mimeLimitExceeded).toBeUndefined();
  });

  it('an encrypted one (enveloped-data) is left as it is: its content needs the recipient\'s key', async () => {
    const enveloped = cms(['-encrypt', '-aes256', '-outform', 'DER', '-recip', CERT], entity(INNER));
    const facts = await inspect(attached(enveloped, 'application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"'));
    expect(facts.attachments.map((a) => a.name)).toEqual(['smime.p7m']);
    expect(facts.mimeLimitExceeded).toBeUndefined();
  });

  it('a signed file that is no message (a CAdES e-invoice, a signed PDF) is the file its tool extracts, not a refusal', async () => {
    const pdf = Buffer.from('%PDF-1.4\n' + '1 0 obj << /Type /Catalog >> endobj\n'.repeat(9000) + '%%EOF\n');
    const xml = Buffer.from('<?xml version="1.0" encoding="UTF-8"?>\n<p:FatturaElettronica versione="FPR12">\n' + '  <Linea>Consulenza</Linea>\n'.repeat(12000) + '</p:FatturaElettronica>\n');
    const signedPdf = cms(['-sign', '-nodetach', '-binary', '-signer', CERT, '-inkey', KEY, '-outform', 'DER'], pdf);
    // Some signing tools save the DER as base64 text.
    const signedXml = Buffer.from(cms(['-sign', '-nodetach', '-binary', '-signer', CERT, '-inkey', KEY, '-outform', 'DER'], xml).toString('base64'));
    for (const [file, name, type] of [[signedPdf, 'contratto.pdf.p7m', 'pdf'], [signedXml, 'IT01234567890_FPR12.xml.p7m', 'text']] as const) {
      for (const declared of [`application/pkcs7-mime; name="${name}"`, `application/octet-stream; name="${name}"`]) {
        const facts = await inspect(attached(file, declared, name));
        expect(facts.mimeLimitExceeded, `${name} as ${declared}`).toBeUndefined();
        expect(facts.attachments.map((a) => a.name)).toEqual([name, name.replace(/\.p7m$/, '')]);
        expect(facts.attachments[1]).toMatchObject({ detectedType: type, size: (type === 'pdf' ? pdf : xml).length });
        expect(verdict(facts)).toMatchObject({ action: 'continue' });
      }
    }
    // A program signed the same way is seen for what it is.
    const program = cms(['-sign', '-nodetach', '-binary', '-signer', CERT, '-inkey', KEY, '-outform', 'DER'], PROGRAM);
    const facts = await inspect(attached(program, 'application/pkcs7-mime; name="facture.pdf.p7m"', 'facture.pdf.p7m'));
    expect(facts.attachments[1]).toMatchObject({ name: 'facture.pdf', detectedType: 'executable' });
    expect(verdict(facts)).toMatchObject({ action: 'quarantine', rule: { id: 'attachments.executable' } });
  });

  it('reads lengths written with leading zeros, as OpenSSL does; refuses nesting deeper than OpenSSL reads, and a cut DER whatever its label', async () => {
    const der = cms(['-sign', '-nodetach', '-signer', CERT, '-inkey', KEY, '-outform', 'DER'], entity(INNER));
    expect([der[0], der[1]]).toEqual([0x30, 0x82]);
    // 30 82 LL LL written 30 86 00 00 00 00 LL LL: OpenSSL verifies it and shows the program.
    const padded = Buffer.concat([Buffer.from([0x30, 0x86, 0, 0, 0, 0, der[2]!, der[3]!]), der.subarray(4)]);
    const shown = execFileSync('openssl', ['cms', '-verify', '-noverify', '-inform', 'DER', '-in', writeTemp(padded)]).toString();
    expect(shown).toContain('facture.exe');
    const facts = await inspect(attached(padded, 'application/pkcs7-mime; name="smime.p7m"'));
    expect(facts.attachments.map((a) => a.name)).toContain('facture.exe');
    // 40 levels of constructed OCTET STRING: malformed, and refused, however little it weighs.
    const oid = Buffer.from([0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02]);
    const deep = Buffer.concat([Buffer.from([0x30, 0x80]), oid, Buffer.from([0xa0, 0x80, 0x30, 0x80, 0x02, 0x01, 0x01, 0x31, 0x00, 0x30, 0x80, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01, 0xa0, 0x80]), Buffer.from('2480'.repeat(40), 'hex')]);
    const nested = new SignedDataReader();
    nested.push(deep);
    expect(nested.malformed).toBe(true);
    expect((await inspect(attached(deep, 'application/octet-stream; name="smime.p7m"'))).mimeLimitExceeded).toBe('signed_content');
    // Cut short, with no smime-type to say it is signed: it began as a signature, and is refused.
    expect((await inspect(attached(der.subarray(0, 200), 'application/pkcs7-mime; name="smime.p7m"'))).mimeLimitExceeded).toBe('signed_content');
  });

  it('is read as a mail program reads it and as a signature tool extracts it, however the content is dressed', async () => {
    const sign = (content: string | Buffer) => cms(['-sign', '-nodetach', '-binary', '-signer', CERT, '-inkey', KEY, '-outform', 'DER'], content);
    const quarantined = async (p7m: Buffer, name = 'smime.p7m') => verdict(await inspect(attached(p7m, `application/pkcs7-mime; name="${name}"`, name)));
    // A header block past any first look, then the attachment.
    const padded = Array.from({ length: 250 }, (_, i) => `X-Pad-${i}: ${'x'.repeat(60)}`).join('\r\n') + '\r\n' + entity(INNER);
    expect(await quarantined(sign(padded))).toMatchObject({ action: 'quarantine', rule: { id: 'attachments.executable' } });
    // No Content-Type, a text body with a uuencoded program in it (Thunderbird shows it as an attachment).
    const uu = ['begin 644 evil.exe', 'M35J0``,`````' + '`'.repeat(47), '`', 'end'].join('\r\n');
    expect(await quarantined(sign(`Subject: invoice\r\n\r\nSee attached.\r\n${uu}\r\n`))).toMatchObject({ action: 'quarantine', rule: { id: 'attachments.executable' } });
    // A program whose first bytes pass for a header block, signed as "fattura.exe.p7m": the tool extracts fattura.exe.
    const poly = Buffer.concat([Buffer.from('MZ:a\r\nContent-Type:a\r\n\r\n'), PROGRAM.subarray(2)]);
    expect(await quarantined(sign(poly), 'fattura.exe.p7m')).toMatchObject({ action: 'quarantine', rule: { id: 'attachments.executable' } });
    // PEM with text before its armour, which OpenSSL skips.
    const pem = cms(['-sign', '-nodetach', '-signer', CERT, '-inkey', KEY, '-outform', 'PEM'], entity(INNER)).toString();
    expect(execFileSync('openssl', ['cms', '-verify', '-noverify', '-inform', 'PEM', '-in', writeTemp(Buffer.from(`Signed copy\n\n${pem}`))]).toString()).toContain('facture.exe');
    expect(await quarantined(Buffer.from(`Signed copy\n\n${pem}`))).toMatchObject({ action: 'quarantine', rule: { id: 'attachments.executable' } });
    // Neither DER nor base64 nor PEM: no signature anything opens; refused rather than let through unread.
    const text = await inspect(attached(Buffer.from('Ceci est une facture.\n'.repeat(300)), 'application/octet-stream; name="facture.p7m"', 'facture.p7m'));
    expect(text.mimeLimitExceeded).toBe('signed_content');
  });

  it('a signed message attached under another type but named .p7m is opened too', async () => {
    const der = cms(['-sign', '-nodetach', '-signer', CERT, '-inkey', KEY, '-outform', 'DER'], entity(INNER));
    const facts = await inspect(attached(der, 'application/octet-stream; name="smime.p7m"'));
    expect(facts.attachments.map((a) => a.name)).toContain('facture.exe');
  });
});

function writeTemp(data: Buffer): string {
  const file = join(dir, `der-${Math.random().toString(36).slice(2)}`);
  writeFileSync(file, data);
  return file;
}

