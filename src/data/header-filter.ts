// Removes named fields from a message's top-level header as it streams to the upstream. Douane's own
// headers (X-Douane-Tags) tell the upstream's filters what Douane found; one written by the client would
// speak for Douane, so it never reaches the upstream. Only the header is looked at: the body, and headers of
// attached messages, pass byte for byte.

const LF = 0x0a;
const CR = 0x0d;
const SP = 0x20;
const HT = 0x09;
const COLON = 0x3a;
/** A field name is short; a line start this long without a colon is no field of ours. */
const NAME_WINDOW = 256;

/** The message without the top-level header fields named (case-insensitive), with their folded lines. */
export async function* withoutHeaderFields(source: AsyncIterable<Buffer>, names: readonly string[]): AsyncGenerator<Buffer> {
  const wanted = new Set(names.map((n) => n.toLowerCase()));
  let inBody = false;
  /** the start of the current line, until it is known whether the line is kept */
  let pending: Buffer | undefined;
  /** whether the current line (once decided) is dropped; a folded line follows its field */
  let dropping = false;
  let decided = false;
  let fieldDropped = false;
  for await (const raw of source) {
    let chunk = raw as Buffer;
    if (inBody) {
      yield chunk;
      continue;
    }
    const out: Buffer[] = [];
    while (chunk.length > 0 && !inBody) {
      if (!decided) {
        pending = pending ? Buffer.concat([pending, chunk]) : chunk;
        chunk = Buffer.alloc(0);
        const verdict = classify(pending, wanted);
        if (verdict === undefined) break; // more bytes needed
        if (verdict === 'end') {
          inBody = true;
          out.push(pending);
          pending = undefined;
          break;
        }
        dropping = verdict === 'continuation' ? fieldDropped : verdict === 'drop';
        if (verdict !== 'continuation') fieldDropped = dropping;
        decided = true;
        chunk = pending;
        pending = undefined;
      }
      const eol = chunk.indexOf(LF);
      const line = eol < 0 ? chunk : chunk.subarray(0, eol + 1);
      if (!dropping) out.push(line);
      chunk = eol < 0 ? Buffer.alloc(0) : chunk.subarray(eol + 1);
      if (eol >= 0) decided = false;
    }
    if (inBody && chunk.length > 0) out.push(chunk);
    if (out.length > 0) yield out.length === 1 ? out[0]! : Buffer.concat(out);
  }
  if (pending) yield pending; // a header cut short: passed as it came
}

/** What the start of a header line is: the blank line ending the header, a folded line, or a field to keep or drop. */
function classify(start: Buffer, wanted: Set<string>): 'end' | 'continuation' | 'keep' | 'drop' | undefined {
  const first = start[0]!;
  if (first === LF) return 'end';
  if (first === CR) return start.length < 2 ? undefined : start[1] === LF ? 'end' : 'keep';
  if (first === SP || first === HT) return 'continuation';
  const colon = start.indexOf(COLON);
  if (colon < 0) {
    const eol = start.indexOf(LF);
    return eol >= 0 || start.length >= NAME_WINDOW ? 'keep' : undefined;
  }
  const eol = start.indexOf(LF);
  if (eol >= 0 && eol < colon) return 'keep';
  // The obsolete syntax allows white space before the colon (RFC 5322, 4.5.3).
  const name = start.subarray(0, colon).toString('latin1').replace(/[ \t]+$/, '').toLowerCase();
  return wanted.has(name) ? 'drop' : 'keep';
}
