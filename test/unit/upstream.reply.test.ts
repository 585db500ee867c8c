import { describe, expect, it } from 'vitest';
import { ReplyParser, formatReply } from '../../src/upstream/reply.js';

describe('upstream reply parsing', () => {
  it('assembles multi-line replies split across chunks and separates the enhanced code', () => {
    const p = new ReplyParser();
    expect(p.push('250-upstream.test\r\n250-PIPE')).toEqual([]);
    const [ehlo] = p.push('LINING\r\n250 ENHANCEDSTATUSCODES\r\n');
    expect(ehlo).toEqual({ code: 250, lines: ['upstream.test', 'PIPELINING', 'ENHANCEDSTATUSCODES'] });
    const [r] = p.push('550 5.1.1 <x@y>: Recipient address rejected\r\n');
    expect(r).toEqual({ code: 550, enhanced: '5.1.1', lines: ['<x@y>: Recipient address rejected'] });
    expect(formatReply(r!)).toBe('550 5.1.1 <x@y>: Recipient address rejected');
  });

  it('does not take a mismatched class as an enhanced code', () => {
    const [r] = new ReplyParser().push('250 5.0.0 odd\r\n');
    expect(r!.enhanced).toBeUndefined();
  });

  it('rejects malformed or unbounded input', () => {
    expect(() => new ReplyParser().push('hello\r\n')).toThrow(/malformed/);
    expect(() => new ReplyParser().push('250-a\r\n550 b\r\n')).toThrow(/changed its code/);
    expect(() => new ReplyParser(100).push('2'.repeat(200))).toThrow(/longer than 100/);
    for (const line of ['600 what', '999 what', '000 what', '199 what', '260 what', '2500 ok', '250x', '25 ok']) {
      expect(() => new ReplyParser().push(`${line}\r\n`), line).toThrow(/malformed/);
    }
    expect(new ReplyParser().push('250\r\n')).toEqual([{ code: 250, lines: [''] }]);
  });
});
