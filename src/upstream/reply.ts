// SMTP reply parsing: accumulates lines until a final "NNN " line, and splits off the enhanced status code.

export interface SmtpReply {
  code: number;
  /** RFC 3463 enhanced status code, e.g. "2.1.5", when the server sent one */
  enhanced?: string;
  /** text lines without code and enhanced code */
  lines: string[];
}

const ENHANCED = /^([245])\.(\d{1,3})\.(\d{1,3})(?: |$)/;

export function replyText(reply: SmtpReply): string {
  return reply.lines.join(' ').trim();
}

export function formatReply(reply: SmtpReply): string {
  return `${reply.code}${reply.enhanced ? ' ' + reply.enhanced : ''} ${replyText(reply)}`.trim();
}

export class ReplyParser {
  private lines: string[] = [];
  private code = 0;
  private buffer = '';

  constructor(private readonly maxLineLength = 4096, private readonly maxLines = 512) {}

  /** nothing held back: no part of a line, no lines of an unfinished multi-line reply */
  get idle(): boolean {
    return this.buffer === '' && this.lines.length === 0;
  }

  /** Feeds raw bytes; returns the replies completed by this chunk. Throws on a protocol violation. */
  push(chunk: string): SmtpReply[] {
    this.buffer += chunk;
    const out: SmtpReply[] = [];
    let nl: number;
    while ((nl = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, nl).replace(/\r$/, '');
      this.buffer = this.buffer.slice(nl + 1);
      const reply = this.line(line);
      if (reply) out.push(reply);
    }
    if (this.buffer.length > this.maxLineLength) throw new Error(`upstream reply line longer than ${this.maxLineLength} bytes`);
    return out;
  }

  private line(line: string): SmtpReply | undefined {
    // RFC 5321 §4.2: a code of class 2 to 5, then a space, a hyphen or the end of the line. Anything else
    // ("600", "000", "2500") is not an answer to act on: passed on, it would reach the client as a code it
    // cannot read, or as a permanent refusal.
    const m = /^([2-5][0-5]\d)(?:([ -])(.*))?$/.exec(line);
    if (!m) throw new Error(`malformed upstream reply line: ${JSON.stringify(line.slice(0, 80))}`);
    const code = Number(m[1]);
    if (this.lines.length && code !== this.code) throw new Error('upstream multi-line reply changed its code midway');
    this.code = code;
    this.lines.push(m[3] ?? '');
    if (this.lines.length > this.maxLines) throw new Error('upstream reply has too many lines');
    if (m[2] === '-') return undefined;
    const lines = this.lines;
    this.lines = [];
    return splitEnhanced(code, lines);
  }
}

/** Separates the enhanced status code from each line (all lines of a reply carry the same one). */
export function splitEnhanced(code: number, lines: string[]): SmtpReply {
  const first = ENHANCED.exec(lines[0] ?? '');
  if (!first || first[1] !== String(code)[0]) return { code, lines };
  const enhanced = `${first[1]}.${first[2]}.${first[3]}`;
  return {
    code,
    enhanced,
    lines: lines.map((l) => (l.startsWith(enhanced) ? l.slice(enhanced.length).trimStart() : l)),
  };
}
