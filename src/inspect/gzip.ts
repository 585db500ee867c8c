// The file a gzip, xz, bzip2 or zstd attachment holds, by name, for the archive rules: "invoice.pdf.gz"
// may well hold invoice.exe. Each keeps one file. gzip may store its original name in the header (FNAME,
// RFC 1952 2.3.1), within the first bytes the inspector keeps: 7-Zip extracts the file under it, while
// gunzip, by default, names the file after the attachment minus its suffix; both names are listed. xz,
// bzip2 and zstd store no name, and their tools name the file after the attachment the same way. Under a
// suffix the tool does not know ("invoice.exe.bin"), 7-Zip, which opens the file by its content, still
// names what is inside after the attachment less its last extension ("invoice.exe").

import { nameFromBytes } from './archive-names.js';

const FEXTRA = 0x04;
const FNAME = 0x08;

/**
 * The names the file in a gzip is extracted under: the stored one (7-Zip), and gunzip's. Undefined when
 * the stored name goes past the bytes at hand (`head`, of `headSize` bytes when the file is longer):
 * behind a long extra field, 7-Zip still reads it.
 */
export function gzipMemberNames(head: Buffer, attachmentName: string, headSize: number): string[] | undefined {
  if (head.length < 10 || head[0] !== 0x1f || head[1] !== 0x8b) return [];
  const names: string[] = [];
  const flags = head[3]!;
  let at = 10;
  if (flags & FEXTRA) at = head.length >= 12 ? 12 + head.readUInt16LE(10) : head.length;
  if (flags & FNAME) {
    const end = head.indexOf(0, at);
    if (end < 0 && head.length >= headSize) return undefined;
    // RFC 1952 says ISO 8859-1; gzip on today's systems writes the name's bytes as they are, mostly UTF-8.
    if (end > at) names.push(nameFromBytes(head.subarray(at, end)));
  }
  // 7-Zip takes the stored name over the attachment's.
  const gunzip = compressedFileName('gzip', attachmentName, names.length === 0);
  if (gunzip !== undefined && !names.includes(gunzip)) names.push(gunzip);
  return names;
}

/**
 * The names the one file of a compressed attachment (gzip, xz, bzip2, zstd) is extracted under; none for
 * another type; undefined when a name is stored past the first `headSize` bytes, which `head` holds.
 */
export function compressedFileNames(type: string, head: Buffer, attachmentName: string, headSize: number): string[] | undefined {
  if (type === 'gzip') return gzipMemberNames(head, attachmentName, headSize);
  if (type !== 'xz' && type !== 'bzip2' && type !== 'zstd') return [];
  const name = compressedFileName(type, attachmentName);
  return name === undefined ? [] : [name];
}

/** The suffixes each tool takes off when it decompresses, and those that stand for a tar. */
const SUFFIXES = {
  gzip: { file: ['.gz', '.z', '-gz', '-z', '_z'], tar: ['.tgz', '.taz'] },
  xz: { file: ['.xz'], tar: ['.txz'] },
  bzip2: { file: ['.bz2', '.bz'], tar: ['.tbz2', '.tbz'] },
  zstd: { file: ['.zst'], tar: ['.tzst'] },
} as const;

/**
 * The name the tool gives the file it decompresses from this attachment; for a suffix it does not know,
 * the name 7-Zip gives it (unless `as7Zip` is false), the attachment's less its last extension.
 */
export function compressedFileName(kind: keyof typeof SUFFIXES, attachmentName: string, as7Zip = true): string | undefined {
  const base = attachmentName.replace(/^.*[/\\]/, '');
  const lower = base.toLowerCase();
  const { file, tar } = SUFFIXES[kind];
  const ends = (suffix: string) => lower.endsWith(suffix) && lower.length > suffix.length;
  const asTar = tar.find(ends);
  if (asTar) return base.slice(0, -asTar.length) + '.tar';
  const plain = file.find(ends);
  if (plain) return base.slice(0, -plain.length);
  const dot = base.lastIndexOf('.');
  return as7Zip && dot > 0 ? base.slice(0, dot) : undefined;
}

/**
 * The file a compressed attachment holds is a disk image by its name (`facture.iso.gz`): Windows mounts
 * it once decompressed, and its files cannot be listed without decompressing it whole (its mark lies
 * 32 KB in, past the first block the content is looked at for).
 */
export function namesDiskImage(names: readonly string[]): boolean {
  return names.some((name) => /\.(iso|img|udf)$/i.test(name));
}
