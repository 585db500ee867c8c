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
