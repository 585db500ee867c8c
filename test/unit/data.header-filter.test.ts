// A client's own X-Douane-Tags never reaches the upstream: the field, with its folded lines, is taken out
// of the top-level header however the message is cut into chunks; nothing else changes by a byte.

import { describe, expect, it } from 'vitest';
import { withoutHeaderFields } from '../../src/data/header-filter.js';

async function filtered(message: string, cuts: number[], names = ['X-Douane-Tags']): Promise<string> {
  const bytes = Buffer.from(message, 'latin1');
  const chunks: Buffer[] = [];
  let from = 0;
  for (const at of [...cuts, bytes.length]) {
    chunks.push(bytes.subarray(from, at));
    from = at;
  }
  async function* source(): AsyncGenerator<Buffer> {
    for (const c of chunks) yield c;
  }
  const out: Buffer[] = [];
  for await (const c of withoutHeaderFields(source(), names)) out.push(c);
  return Buffer.concat(out).toString('latin1');
}

/** Every way of cutting the message in two and in three (the second cut after the first). */
async function everyCut(message: string, expected: string): Promise<void> {
  for (let i = 0; i <= message.length; i++) {
    expect(await filtered(message, [i]), `cut at ${i}`).toBe(expected);
    for (let j = i; j <= message.length; j += 7) expect(await filtered(message, [i, j]), `cuts at ${i}, ${j}`).toBe(expected);
  }
}

describe('withoutHeaderFields', () => {
  it('takes out the field and its folded lines, in any case, wherever the chunks are cut', async () => {
    const message = 'From: a@example.test\r\nx-douane-TAGS: forged.one,\r\n\tforged.two\r\nSubject: hi\r\nX-Douane-Tags : other\r\nTo: b@example.net\r\n\r\nbody\r\n';
    await everyCut(message, 'From: a@example.test\r\nSubject: hi\r\nTo: b@example.net\r\n\r\nbody\r\n');
  });

  it('leaves the body, and the header of an attached message, byte for byte', async () => {
    const message = 'Subject: fwd\r\nContent-Type: message/rfc822\r\n\r\nX-Douane-Tags: quoted\r\n\r\nX-Douane-Tags: in the text\r\n';
    await everyCut(message, message);
  });

  it('keeps fields whose name only starts like it, and lines without a colon', async () => {
    const message = 'X-Douane-Tagsx: keep\r\nX-Douane: keep\r\nnot a field\r\n' + 'Y'.repeat(300) + '\r\n\r\n';
    await everyCut(message, message);
  });

  it('takes out a field that ends the header, and one that is the first line', async () => {
    await everyCut('X-Douane-Tags: a\r\nFrom: x@example.test\r\nX-Douane-Tags: b\r\n folded\r\n\r\nbody', 'From: x@example.test\r\n\r\nbody');
  });

  it('passes a message with no body, or a header cut short, as it came', async () => {
    await everyCut('From: x@example.test\r\nSubject: none', 'From: x@example.test\r\nSubject: none');
    expect(await filtered('From: x@example.test\r\nX-Douane-Tags: a', [])).toBe('From: x@example.test\r\n');
  });
});
