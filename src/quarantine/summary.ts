// What a person reviewing a kept message needs before releasing or deleting it (`douane quarantine
// show`): its headers decoded (=?UTF-8?B?…?= subjects, names), the start of its text — from the HTML
// part when there is no plain one — and its attachments, read with mailparser. Attachments are streamed
// and only measured, never held; an attached message's own attachments are listed after it (the gateway
// looks inside attached messages too). Everything printed is stripped of control characters: a hostile
// message must not be able to drive the reviewer's terminal.

import { PassThrough, type Readable } from 'node:stream';
import { MailParser, type AddressObject, type AttachmentStream, type MessageText } from 'mailparser';
import { htmlToText } from '../inspect/html.js';
import { isAttachedMessage } from '../inspect/mime.js';

export interface MessageSummary {
  from?: string;
  to?: string;
  cc?: string;
  subject?: string;
  date?: string;
  /** the first lines of the text, blank lines folded */
  text: string[];
  /** there was more text than `text` shows */
  more: boolean;
  attachments: { filename: string; contentType: string; size: number }[];
}

const MAX_LINE = 200;
/** attached messages inside attached messages are opened down to this depth (deeper than the gateway's MIME depth allows) */
const MAX_EMBEDDED_DEPTH = 20;

/** Control characters (C0 but tab, DEL, C1, bidi overrides) become U+FFFD. */
export function printable(s: string): string {
  // eslint-disable-next-line no-control-regex
  return s.replace(/[\u0000-\u0008\u000a-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g, '\ufffd');
}

/**
 * JSON for a terminal: C1 controls, bidi overrides and characters shown as nothing (zero-width, format) written as \uXXXX
 * escapes, which a program reads back as the same text and a terminal shows as text. (JSON.stringify
 * already escapes the C0 controls.)
 */
export function terminalJson(value: unknown, indent?: number): string {
  return JSON.stringify(value, null, indent).replace(/[\u007f-\u009f\u2028\u2029\p{Cf}\p{Default_Ignorable_Code_Point}]/gu, (c) => (c.length === 1 ? `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}` : c.split('').map((u) => `\\u${u.charCodeAt(0).toString(16)}`).join('')));
}

function addresses(a: AddressObject | AddressObject[] | undefined): string | undefined {
  if (!a) return undefined;
  return (Array.isArray(a) ? a : [a]).map((x) => x.text).join(', ');
}

export async function summarise(input: Readable, maxLines = 15, depth = 0): Promise<MessageSummary> {
  const parser = new MailParser({ skipTextToHtml: true, skipTextLinks: true, skipImageLinks: true });
  const summary: MessageSummary = { text: [], more: false, attachments: [] };
  const embedded: Promise<MessageSummary['attachments']>[] = [];
  parser.on('headers', (headers) => {
    summary.from = addresses(headers.get('from') as AddressObject | undefined);
    summary.to = addresses(headers.get('to') as AddressObject | undefined);
    summary.cc = addresses(headers.get('cc') as AddressObject | undefined);
    const subject = headers.get('subject');
    if (typeof subject === 'string') summary.subject = subject;
    const date = headers.get('date');
    if (date instanceof Date && !Number.isNaN(date.getTime())) summary.date = date.toISOString();
  });
  parser.on('data', (data: AttachmentStream | MessageText) => {
    if (data.type === 'attachment') {
      const entry = { filename: data.filename ?? '(no name)', contentType: data.contentType, size: 0 };
      summary.attachments.push(entry);
      // An attached message is read by a parser of its own, fed from here rather than piped: if that
      // parser gives up (a malformed message), this attachment's content must still flow to its end.
      let inner: PassThrough | undefined;
      if (isAttachedMessage(data.contentType, entry.filename) && depth < MAX_EMBEDDED_DEPTH) {
        const feed = new PassThrough();
        inner = feed;
        embedded.push(
          summarise(feed, 0, depth + 1).then(
            (s) => s.attachments.map((a) => ({ ...a, filename: `${entry.filename} › ${a.filename}` })),
            () => {
              inner = undefined;
              feed.destroy();
              return [{ filename: `${entry.filename} › (could not be read as a message)`, contentType: '', size: 0 }];
            },
          ),
        );
      }
      data.content.on('data', (chunk: Buffer) => {
        entry.size += chunk.length;
        inner?.write(chunk);
      });
      data.content.on('end', () => {
        inner?.end();
        data.release?.();
      });
      return;
    }
    // mailparser converts HTML to text only when it is the message's root or has a plain sibling.
    const text = data.text?.trim() ? data.text : typeof data.html === 'string' ? htmlToText(data.html, 64 * 1024) : '';
    const lines = text.split(/\r?\n/).map((l) => l.trimEnd());
    const kept = lines.filter((l, i) => l !== '' || (i > 0 && lines[i - 1] !== '')).slice(0, maxLines + 1);
    summary.more = kept.length > maxLines;
    summary.text = kept.slice(0, maxLines).map((l) => (l.length > MAX_LINE ? `${l.slice(0, MAX_LINE)}…` : l));
  });
  await new Promise<void>((resolve, reject) => {
    parser.on('end', resolve);
    parser.on('error', reject);
    input.on('error', reject);
    input.pipe(parser);
  });
  for (const inner of await Promise.all(embedded)) summary.attachments.push(...inner);
  return summary;
}

export function formatSummary(s: MessageSummary): string {
  const out: string[] = [];
  for (const [label, value] of [['From', s.from], ['To', s.to], ['Cc', s.cc], ['Subject', s.subject], ['Date', s.date]] as const) {
    if (value !== undefined) out.push(`${`${label}:`.padEnd(9)}${printable(value)}`);
  }
  out.push(s.text.length ? 'Text:' : 'Text:    (none)');
  for (const line of s.text) out.push(`  | ${printable(line)}`);
  if (s.more) out.push('  | …');
  out.push(s.attachments.length ? `Attachments (${s.attachments.length}):` : 'Attachments: none');
  for (const a of s.attachments) out.push(`  ${printable(a.filename)}  ${printable(a.contentType)}  ${a.size} bytes`);
  return out.join('\n');
}
