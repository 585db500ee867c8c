import { describe, expect, it } from 'vitest';
import { DotStuffer } from '../../src/upstream/smtp-client.js';

function stuff(chunks: string[]): string {
  const s = new DotStuffer();
  return chunks.map((c) => s.push(Buffer.from(c)).toString()).join('') + s.end().toString();
}

describe('dot-stuffing of relayed messages', () => {
  it('doubles a leading dot on every line, also across chunk boundaries', () => {
    expect(stuff(['.first\r\nmiddle\r\n.', 'second\r\n..third\r\n'])).toBe('..first\r\nmiddle\r\n..second\r\n...third\r\n.\r\n');
    expect(stuff(['a\r\n', '.b\r\n'])).toBe('a\r\n..b\r\n.\r\n');
    expect(stuff(['a\r', '\n.b\r\n'])).toBe('a\r\n..b\r\n.\r\n');
  });

  it('terminates a message that does not end with CRLF', () => {
    expect(stuff(['no newline'])).toBe('no newline\r\n.\r\n');
    expect(stuff([])).toBe('.\r\n'); // an empty message is just the terminator
  });

  it('leaves dots inside lines alone', () => {
    expect(stuff(['a.b\r\nc .d\r\n'])).toBe('a.b\r\nc .d\r\n.\r\n');
  });
});
