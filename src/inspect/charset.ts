// Text in a part's charset. Most charsets keep ASCII as ASCII, so links can be found in the raw bytes;
// UTF-16 puts a NUL beside each letter, and UTF-7 writes any letter it likes in base64
// ("+AGgAdAB0AHA-s://" is "https://"): a mail program shows the link, so both are decoded as they stream.
// libmime's charset table has no UTF-7 at all; iconv-lite's decoder (libmime's own dependency) does.

import iconv from 'iconv-lite';
import { decode as decodeCharset } from 'libmime/lib/charset.js';

/** Decodes a part's bytes chunk by chunk; `decode()` with no input ends it. TextDecoder is one. */
export interface StreamDecoder {
  decode(input?: Uint8Array, options?: { stream?: boolean }): string;
}

/** UTF-7's names: its own, RFC 1642's, the IANA alias, and the one Windows components write. */
export const UTF7_CHARSET = '(?:utf-?7|unicode-1-1-utf-7|csunicode11utf7|(?:x-)?unicode-2-0-utf-7)';
const UTF7 = new RegExp(`^${UTF7_CHARSET}$`);

function name(charset: string): string {
  return charset.trim().toLowerCase();
}

export function isUtf7(charset: string): boolean {
  return UTF7.test(name(charset));
}

/** Whether links can be looked for in the part's raw bytes. */
export function asciiCompatible(charset: string): boolean {
  return !/^(?:utf-?(?:16|32)|ucs-?[24]|unicode)/.test(name(charset)) && !isUtf7(charset);
}

/** A streaming decoder for a charset whose raw bytes hide links (UTF-16, UTF-7); undefined for others (UTF-32 has no decoder). */
export function streamDecoder(charset: string): StreamDecoder | undefined {
  const c = name(charset);
  if (/^utf-?16-?be$|^unicodefffe$/.test(c)) return new TextDecoder('utf-16be');
  if (/^utf-?16-?le$/.test(c)) return new TextDecoder('utf-16le');
  if (/^utf-?16$|^unicode$|^ucs-?2$/.test(c)) return byteOrderFromMark();
  if (isUtf7(c)) {
    const d = iconv.getDecoder('utf7');
    return {
      decode: (input, options) => (input?.length ? d.write(Buffer.from(input.buffer, input.byteOffset, input.byteLength)) : '') + (options?.stream ? '' : (d.end() ?? '')),
    };
  }
  return undefined;
}

/**
 * UTF-16 without a byte order in its name: the text's byte-order mark says (FE FF big-endian), as the body's
 * own decoding reads it; little-endian without one, as Windows writes it.
 */
function byteOrderFromMark(): StreamDecoder {
  let inner: StreamDecoder | undefined;
  let first = new Uint8Array(0);
  return {
    decode(input, options) {
      if (inner) return inner.decode(input, options);
      const bytes = new Uint8Array(first.length + (input?.length ?? 0));
      bytes.set(first);
      if (input) bytes.set(input, first.length);
      if (bytes.length < 2 && options?.stream) {
        first = bytes;
        return '';
      }
      inner = new TextDecoder(bytes[0] === 0xfe && bytes[1] === 0xff ? 'utf-16be' : 'utf-16le');
      return inner.decode(bytes, options);
    },
  };
}

/** A whole text in its charset; an unknown or broken charset is read as UTF-8. */
export function decodeText(buf: Buffer, charset: string): string {
  try {
    return isUtf7(charset) ? iconv.decode(buf, 'utf7') : decodeCharset(buf, charset || 'utf-8');
  } catch {
    return buf.toString('utf8');
  }
}

/** URLs are found in the Latin-1 view of raw bytes; one with 8-bit bytes is decoded in the part's charset. */
export function recoder(charset: string): (s: string) => string {
  return (s) => (/[\x80-\xff]/.test(s) ? decodeText(Buffer.from(s, 'latin1'), charset || 'utf-8') : s);
}

const UTF7_WORD = `=\\?${UTF7_CHARSET}(?:\\*[^?]*)?\\?([qb])\\?([^?]*)\\?=`;
/** Neighbouring words (only white space between them) are one text, as RFC 2047 6.2 joins them. */
const UTF7_RUN = new RegExp(`${UTF7_WORD}(?:\\s+${UTF7_WORD})*`, 'gi');
const ONE_UTF7_WORD = new RegExp(UTF7_WORD, 'gi');

/**
 * RFC 2047 encoded words in UTF-7 (=?utf-7?B?…?=), which libmime leaves as they are, rewritten as the
 * same text in a UTF-8 word for libmime to decode with the rest: a subject must not hide from the rules.
 * A run of them is decoded as one text, since a base64 stretch of UTF-7 may go on from one word to the next.
 */
export function utf7WordsAsUtf8(value: string): string {
  if (!/utf-?7|unicode11utf7/i.test(value)) return value;
  return value.replace(UTF7_RUN, (run) => {
    const bytes = [...run.matchAll(ONE_UTF7_WORD)].map(([, encoding, text]) => (encoding!.toLowerCase() === 'b' ? Buffer.from(text!, 'base64') : qBytes(text!)));
    return `=?UTF-8?B?${Buffer.from(iconv.decode(Buffer.concat(bytes), 'utf7'), 'utf8').toString('base64')}?=`;
  });
}

/** A text written in UTF-7 (an RFC 2231 parameter in that charset, as libmime hands it back undecoded). */
export function fromUtf7(text: string): string {
  return iconv.decode(Buffer.from(text, 'latin1'), 'utf7');
}

/** The "Q" encoding of RFC 2047: "_" is a space, =XX a byte. */
function qBytes(text: string): Buffer {
  return Buffer.from(text.replace(/_/g, ' ').replace(/=([0-9a-f]{2})/gi, (_m, hex: string) => String.fromCharCode(parseInt(hex, 16))), 'latin1');
}
