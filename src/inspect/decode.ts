// Undoes a part's Content-Transfer-Encoding chunk by chunk, synchronously: the inspector hashes and sniffs
// the decoded bytes as they come, so it needs them without the overhead (and the whole-part buffering, for
// libqp's stream) of a Transform stream per part. Each decoder keeps only a few bytes between chunks.

import libbase64 from 'libbase64';

export interface TransferDecoder {
  /** decoded bytes for this chunk (possibly empty: some input is held until the next chunk) */
  push(chunk: Buffer): Buffer;
  /** whatever was held back */
  end(): Buffer;
  /** the encoding can be read in more than one way by mail programs (base64 padding inside a group) */
  readonly ambiguous?: boolean;
}

const EMPTY = Buffer.alloc(0);

/** The encoding's token, without anything written after it ("base64; x=y"), as a reader that reads the token would take it. */
function token(encoding: string | false): string {
  return (encoding || '').split(/[\s;]/, 1)[0]!;
}

/** uuencode: not a MIME encoding, but mail libraries (Python's email, Perl's MIME::Tools, KMime) decode it. */
export function isUuencode(encoding: string | false): boolean {
  return ['x-uuencode', 'uuencode', 'x-uue', 'uue'].includes(token(encoding));
}

/** yEnc, which Thunderbird decodes in a part so labelled. */
export function isYencode(encoding: string | false): boolean {
  return ['x-yencode', 'yencode', 'x-yenc', 'yenc'].includes(token(encoding));
}

export function transferDecoder(encoding: string | false): TransferDecoder {
  if (isUuencode(encoding)) return new UudecodeDecoder();
  if (isYencode(encoding)) return new YencDecoder();
  switch (token(encoding)) {
    case 'base64':
      return new Base64Decoder();
    case 'quoted-printable':
      return new QuotedPrintableDecoder();
    default:
      // 7bit, 8bit, binary, and anything unknown: the bytes as they are, the best guess for a bad label.
      return { push: (chunk) => chunk, end: () => EMPTY };
  }
}

/**
 * Base64, tolerant the way mail clients are: characters outside the alphabet are skipped, and padding in
 * the middle (lines padded one by one) restarts the quartets. Node decodes natively; only the 0–3
 * characters that do not make a full quartet wait for the next chunk.
 */
class Base64Decoder implements TransferDecoder {
  private rest = '';
  ambiguous = false;
  /** characters of the current group of four seen so far, "=" included */
  private phase = 0;
  /** "xx=" was read: the group's last character must be "=" too */
  private awaitingPad = false;
  /** a "=" stood where no padding can (first or second of a group) */
  private strayPad = false;

  push(chunk: Buffer): Buffer {
    let b64 = this.rest + chunk.toString('latin1');
    const seen = this.rest.length;
    this.rest = '';
    if (/[^A-Za-z0-9+/=]/.test(b64)) b64 = b64.replace(/[^A-Za-z0-9+/=]+/g, '');
    if (!this.ambiguous) this.watchPadding(b64, seen);
    // Up to the last padding character everything ends in complete (padded) segments; quartets only
    // count from there on.
    let padded = '';
    const lastPad = b64.lastIndexOf('=');
    if (lastPad >= 0) {
      padded = b64.slice(0, lastPad + 1);
      b64 = b64.slice(lastPad + 1);
    }
    const keep = b64.length % 4;
    if (keep) {
      this.rest = b64.slice(b64.length - keep);
      b64 = b64.slice(0, b64.length - keep);
    }
    const data = padded + b64;
    return data ? libbase64.decode(data) : EMPTY;
  }

  /**
   * Padding where a group of four cannot have it, with data after it: this decoder starts its groups again
   * after it, Thunderbird counts the "=" in its group, and the two read different bytes (a zip one sees and
   * the other does not). No encoder writes it. Only the "=" signs are visited; the rest moves the phase on.
   */
  private watchPadding(b64: string, alreadySeen: number): void {
    // The characters held back from the last chunk were counted then.
    let from = alreadySeen;
    for (let eq = b64.indexOf('=', from); ; eq = b64.indexOf('=', from)) {
      const data = (eq < 0 ? b64.length : eq) - from;
      if (data > 0) {
        // Data after a stray "=", or where the group's last "=" was due: read two ways.
        if (this.strayPad || this.awaitingPad) {
          this.ambiguous = true;
          return;
        }
        this.phase = (this.phase + data) % 4;
      }
      if (eq < 0) return;
      if (this.awaitingPad || this.phase === 3) {
        this.awaitingPad = false;
        this.phase = 0;
      } else if (this.phase === 2) this.awaitingPad = true; // "xx=": one more "=" closes the group
      else this.strayPad = true;
      from = eq + 1;
    }
  }

  end(): Buffer {
    const data = this.rest;
    this.rest = '';
    // A dangling 2 or 3 characters still carry a byte or two (a missing "=" is a common sloppiness).
    return data ? libbase64.decode(data) : EMPTY;
  }
}

/**
 * Quoted-printable. Input is decoded up to the last line break of each chunk, so an "=XX" escape or a soft
 * line break ("=" CR LF) is never cut in two; the unfinished line waits. Copies run between "=" signs
 * (Buffer.indexOf), not byte by byte.
 */
class QuotedPrintableDecoder implements TransferDecoder {
  private rest: Buffer | undefined;

  push(chunk: Buffer): Buffer {
    let buf = this.rest ? Buffer.concat([this.rest, chunk]) : chunk;
    this.rest = undefined;
    let cut = buf.lastIndexOf(0x0a) + 1;
    if (cut === 0 && buf.length > 4096) {
      // A line that never ends (malformed, QP lines are 76 characters): decode all but what could be the
      // start of an escape.
      const eq = buf.lastIndexOf(0x3d, buf.length - 1);
      cut = eq >= buf.length - 2 ? eq : buf.length;
    }
    if (cut < buf.length) {
      // Copied so the held bytes do not pin the caller's chunk.
      this.rest = Buffer.from(buf.subarray(cut));
      buf = buf.subarray(0, cut);
    }
    return buf.length ? decodeQuotedPrintable(buf, false) : EMPTY;
  }

  end(): Buffer {
    const rest = this.rest;
    this.rest = undefined;
    return rest ? decodeQuotedPrintable(rest, true) : EMPTY;
  }
}

function hex(c: number | undefined): number {
  if (c === undefined) return -1;
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x41 && c <= 0x46) return c - 0x37;
  if (c >= 0x61 && c <= 0x66) return c - 0x57;
  return -1;
}

/** Decodes whole lines of quoted-printable; `final` lets a trailing "=" count as a soft line break. */
export function decodeQuotedPrintable(buf: Buffer, final: boolean): Buffer {
  const out = Buffer.allocUnsafe(buf.length);
  let o = 0;
  let i = 0;
  const len = buf.length;
  while (i < len) {
    const eq = buf.indexOf(0x3d, i);
    const end = eq === -1 ? len : eq;
    if (end > i) o += buf.copy(out, o, i, end);
    if (eq === -1) break;
    const hi = hex(buf[eq + 1]);
    const lo = hex(buf[eq + 2]);
    if (hi >= 0 && lo >= 0) {
      out[o++] = hi * 16 + lo;
      i = eq + 3;
      continue;
    }
    // A soft line break: "=" then optional (illegal but common) trailing whitespace, then the line end.
    let j = eq + 1;
    while (j < len && (buf[j] === 0x20 || buf[j] === 0x09)) j++;
    if (buf[j] === 0x0d && buf[j + 1] === 0x0a) i = j + 2;
    else if (buf[j] === 0x0a) i = j + 1;
    else if (j === len && final) i = j;
    else {
      // Not an escape: a literal "=", as every decoder in the wild treats it.
      out[o++] = 0x3d;
      i = eq + 1;
    }
  }
  return out.subarray(0, o);
}

/**
 * A part whose transfer encoding is uuencode: the lines between "begin <mode> <name>" and "end", each a
 * length character and then four characters for every three bytes. Whole lines
 * only: the unfinished one waits for the next chunk.
 */
class UudecodeDecoder implements TransferDecoder {
  private rest = '';
  private state: 'before' | 'body' | 'after' = 'before';

  push(chunk: Buffer): Buffer {
    const text = this.rest + chunk.toString('latin1');
    const cut = text.lastIndexOf('\n') + 1;
    // A line that never ends is no uuencoded line: only its last few characters wait.
    this.rest = cut === 0 && text.length > 4096 ? text.slice(-100) : text.slice(cut);
    return this.lines(text.slice(0, cut));
  }

  end(): Buffer {
    const rest = this.rest;
    this.rest = '';
    return this.lines(rest);
  }

  private lines(text: string): Buffer {
    const out: Buffer[] = [];
    for (const raw of text.split('\n')) {
      const line = raw.replace(/\r$/, '');
      // As Thunderbird reads a part so labelled: any "begin " line opens the file (whatever its mode), and
      // only "end" closes it; a "`" line holds no byte, and lines after it are still the file's.
      if (this.state === 'before') {
        if (/^begin[ \t]/.test(line)) this.state = 'body';
      } else if (this.state === 'body') {
        if (line === 'end') this.state = 'after';
        else if (line !== '') out.push(uudecodeLine(line));
      }
    }
    return out.length ? Buffer.concat(out) : EMPTY;
  }
}

/** One uuencoded line: its length character says how many bytes its groups of four characters hold. */
export function uudecodeLine(line: string): Buffer {
  const length = (line.charCodeAt(0) - 32) & 63;
  const out = Buffer.alloc(length);
  let o = 0;
  for (let i = 1; o < length; i += 4) {
    const c0 = ((line.charCodeAt(i) || 32) - 32) & 63;
    const c1 = ((line.charCodeAt(i + 1) || 32) - 32) & 63;
    const c2 = ((line.charCodeAt(i + 2) || 32) - 32) & 63;
    const c3 = ((line.charCodeAt(i + 3) || 32) - 32) & 63;
    out[o++] = (c0 << 2) | (c1 >> 4);
    if (o < length) out[o++] = ((c1 << 4) | (c2 >> 2)) & 255;
    if (o < length) out[o++] = ((c2 << 6) | c3) & 255;
  }
  return out;
}

/**
 * A part whose transfer encoding is yEnc: the lines between "=ybegin …" and "=yend …" ("=ypart" lines
 * skipped), each byte written as itself plus 42, and "=" with the next byte plus 64 for those that would
 * be special. Whole lines only: the unfinished one waits for the next chunk.
 */
class YencDecoder implements TransferDecoder {
  private rest: Buffer = EMPTY;
  private state: 'before' | 'body' | 'after' = 'before';

  push(chunk: Buffer): Buffer {
    const buf = this.rest.length ? Buffer.concat([this.rest, chunk]) : chunk;
    const cut = buf.lastIndexOf(0x0a) + 1;
    // A line that never ends is decoded as it comes, but for a last "=" whose byte may follow.
    const upTo = cut === 0 && buf.length > 4096 ? buf.length - (buf[buf.length - 1] === 0x3d ? 1 : 0) : cut;
    this.rest = Buffer.from(buf.subarray(upTo));
    return this.lines(buf.subarray(0, upTo));
  }

  end(): Buffer {
    const rest = this.rest;
    this.rest = EMPTY;
    return this.lines(rest);
  }

  private lines(buf: Buffer): Buffer {
    const out = Buffer.allocUnsafe(buf.length);
    let o = 0;
    let start = 0;
    while (start < buf.length) {
      let end = buf.indexOf(0x0a, start);
      if (end < 0) end = buf.length;
      let last = end;
      if (last > start && buf[last - 1] === 0x0d) last--;
      const keyword = buf.toString('latin1', start, Math.min(last, start + 7));
      if (this.state === 'before') {
        if (keyword.startsWith('=ybegin')) this.state = 'body';
      } else if (this.state === 'body') {
        if (keyword.startsWith('=yend')) this.state = 'after';
        else if (!keyword.startsWith('=ypart')) {
          for (let i = start; i < last; i++) {
            let c = buf[i]!;
            if (c === 0x3d && i + 1 < last) c = (buf[++i]! - 64) & 255;
            out[o++] = (c - 42) & 255;
          }
        }
      }
      start = end + 1;
    }
    return o ? Buffer.from(out.subarray(0, o)) : EMPTY;
  }
}
