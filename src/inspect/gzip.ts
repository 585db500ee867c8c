// The file a gzip attachment holds, by name, for the archive rules: "invoice.pdf.gz" may well hold
// invoice.exe. gzip keeps one file and may store its original name in the header (FNAME, RFC 1952 2.3.1),
// within the first bytes the inspector keeps; without it, gunzip names the file after the attachment
// minus ".gz", and so does this.

import { nameFromBytes } from './archive-names.js';

const FEXTRA = 0x04;
const FNAME = 0x08;

export function gzipMemberName(head: Buffer, attachmentName: string): string | undefined {
  if (head.length < 10 || head[0] !== 0x1f || head[1] !== 0x8b) return undefined;
  const flags = head[3]!;
  let at = 10;
  if (flags & FEXTRA) at = head.length >= 12 ? 12 + head.readUInt16LE(10) : head.length;
  if (flags & FNAME) {
    const end = head.indexOf(0, at);
    if (end > at) // RFC 1952 says ISO 8859-1; gzip on today's systems writes the name's bytes as they are, mostly UTF-8.
    return nameFromBytes(head.subarray(at, end));
  }
  const base = attachmentName.replace(/^.*[/\\]/, '');
  // The suffixes gunzip knows: .gz, .z, and .tgz or .taz for a tar.
  if (/.\.t[ag]z$/i.test(base)) return base.slice(0, -4) + '.tar';
  return /.\.g?z$/i.test(base) ? base.replace(/\.g?z$/i, '') : undefined;
}
