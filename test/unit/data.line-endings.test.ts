import { describe, expect, it } from 'vitest';
import { LineEndingWatch } from '../../src/data/line-endings.js';

function facts(chunks: string[]) {
  const w = new LineEndingWatch();
  for (const c of chunks) w.push(Buffer.from(c, 'latin1'));
  return w.end();
}

describe('line-ending watch', () => {
  it('accepts CRLF-only content, whatever the chunking', () => {
    expect(facts(['a\r\nb\r', '\nc\r\n'])).toEqual({ bareLf: 0, bareCr: 0, nul: 0 });
  });

  it('counts bare LF, bare CR and NUL, with the first offset', () => {
    expect(facts(['ab\ncd'])).toMatchObject({ bareLf: 1, firstOffset: 2 });
    expect(facts(['ab\rcd'])).toMatchObject({ bareCr: 1, firstOffset: 2 });
    expect(facts(['ab\r', 'cd'])).toMatchObject({ bareCr: 1 });
    expect(facts(['ab\r'])).toMatchObject({ bareCr: 1 });
    expect(facts(['\n'])).toMatchObject({ bareLf: 1, firstOffset: 0 });
    expect(facts(['a\r\n\x00.\r\n'])).toMatchObject({ nul: 1, bareLf: 0, bareCr: 0 });
    expect(facts(['x\r\n', '\n.\n'])).toMatchObject({ bareLf: 2 });
  });
});
