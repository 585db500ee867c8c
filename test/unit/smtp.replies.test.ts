import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { REASONS, type ReasonCode } from '../../src/reasons.js';
import { newReference, replyFor } from '../../src/smtp/replies.js';

describe('reply table', () => {
  it('turns a verdict into code, enhanced code, sentence, reference and rule', () => {
    const r = replyFor({ action: 'reject', reason: 'message.too_big', detail: { limit: 1000 } }, 'data', 'D-7K2M9Q');
    expect(r).toEqual({ code: 552, enhanced: '5.3.4', text: 'Message too big: the limit is 1000 bytes. Ref D-7K2M9Q.', close: false });
    const withRule = replyFor({ action: 'reject', reason: 'message.bare_line_ending', rule: { id: 'smtp.smuggling', article: '4.4' } }, 'data', 'D-AAAAAA');
    expect(withRule.text).toMatch(/ Ref D-AAAAAA, rule smtp\.smuggling, art\. 4\.4\.$/);
  });

  it('has a reply with a class-matching enhanced code for every reason', () => {
    for (const reason of Object.keys(REASONS) as ReasonCode[]) {
      for (const action of ['reject', 'tempfail'] as const) {
        const r = replyFor({ action, reason }, 'mail', 'D-000000');
        expect(String(r.code)[0], reason).toBe(r.enhanced[0]);
        expect(r.code >= 400 && r.code < 600, reason).toBe(true);
        expect(r.text, reason).toMatch(/ Ref D-000000\.$/);
      }
    }
  });

  it('reads as a sentence whatever values are missing: nothing dangling, no raw placeholder', () => {
    const some = { account: 'a@x.test', limit: 'messages per minute' };
    for (const reason of Object.keys(REASONS) as ReasonCode[]) {
      for (const detail of [{}, some]) {
        const text = replyFor({ action: 'reject', reason, detail }, 'mail', 'D-000000').text;
        expect(text, reason).not.toMatch(/[{}[\]]|\(\s*\)|\s[.;,)]|\b(?:in|since|is|incident|contact|limit)[.;,]/);
        expect(text.split('(').length, `${reason}: parentheses`).toBe(text.split(')').length);
      }
    }
  });

  it('a locked account reads its own sentence, with whom to write to when known', () => {
    expect(replyFor({ action: 'reject', reason: 'account.locked', detail: { account: 'a@x.test', contact: 'abuse@p.test' } }, 'mail', 'D-1').text).toBe('This account (a@x.test) is locked and cannot send mail; contact abuse@p.test. Ref D-1.');
    expect(replyFor({ action: 'reject', reason: 'account.suspended', detail: { account: 'a@x.test' } }, 'mail', 'D-1').text).toBe('Sending is suspended for this account (a@x.test). Ref D-1.');
  });

  it('shows a value as written, "$&" and "$`" in an address included', () => {
    expect(replyFor({ action: 'reject', reason: 'from.not_owned', detail: { from: 'x$&y@evil.example' } }, 'data', 'D-1').text).toContain('x$&y@evil.example');
    expect(replyFor({ action: 'reject', reason: 'sender.not_owned', detail: { sender: 'a$`b$\'c@evil.example' } }, 'mail', 'D-1').text).toContain('a$`b$\'c@evil.example');
  });

  it('never lets a value end the reply line: a line break in it shows as a space', () => {
    const r = replyFor({ action: 'reject', reason: 'account.locked', detail: { account: 'a@x.test', contact: 'abuse@p.test\r\n250 OK' } }, 'mail', 'D-1');
    expect(r.text).toBe('This account (a@x.test) is locked and cannot send mail; contact abuse@p.test 250 OK. Ref D-1.');
    expect(replyFor({ action: 'reject', reason: 'from.not_owned', detail: { from: 'x\n354 go@evil.example\u2028' } }, 'data', 'D-1').text).not.toMatch(/[\r\n\u2028]/);
  });

  it('keeps a reply line within 512 octets when the client chose a very long value', () => {
    const from = `${'a'.repeat(3000)}@evil.example`;
    const reply = replyFor({ action: 'reject', reason: 'from.not_owned', rule: { id: 'from.not-owned', article: '4.1', source: 'policies/rules.yaml:120' }, detail: { from } }, 'data', 'D-ABCDEF');
    expect(Buffer.byteLength(`${reply.code} ${reply.enhanced} ${reply.text}`)).toBeLessThanOrEqual(512);
    expect(reply.text).toContain(`(${'a'.repeat(117)}...)`);
    // Octets, not characters: SMTPUTF8 lets a client write its address in CJK, three octets each.
    for (const reason of ['sender.not_owned', 'from.not_owned', 'account.lockout', 'sender.unverifiable'] as const) {
      const wide = replyFor({ action: 'reject', reason, rule: { id: 'r', article: '4.1', source: 'policies/rules.yaml:1' }, detail: { sender: '漢'.repeat(3000), from: '漢'.repeat(3000), account: '漢'.repeat(3000), contact: '漢'.repeat(3000) } }, 'data', 'D-ABCDEF');
      expect(Buffer.byteLength(`${wide.code} ${wide.enhanced} ${wide.text}`), reason).toBeLessThanOrEqual(512);
      expect(wide.text).not.toContain('\ufffd');
    }
  });

  it('documents every reason in docs/REASONS.md', () => {
    const doc = readFileSync('docs/REASONS.md', 'utf8');
    for (const reason of Object.keys(REASONS)) expect(doc, reason).toContain(`| \`${reason}\` |`);
  });

  it('makes references of the documented form', () => {
    const refs = new Set(Array.from({ length: 200 }, () => newReference()));
    for (const r of refs) expect(r).toMatch(/^D-[0-9A-HJKMNP-TV-Z]{6}$/);
    expect(refs.size).toBeGreaterThan(195);
  });
});
