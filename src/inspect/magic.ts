// Tells what an attachment really is from the first bytes of its decoded content, whatever its name and
// declared type say: an .exe renamed invoice.pdf is still an executable. The words below are the vocabulary
// of `attachments.detected_types` in policy rules; keep them stable.

export const DETECTED_TYPES = ['executable', 'script', 'zip', 'office-openxml', 'ms-office', 'rar', '7z', 'gzip', 'xz', 'bzip2', 'zstd', 'tar', 'cab', 'iso', 'pdf', 'png', 'jpeg', 'gif', 'html', 'text', 'unknown'] as const;
export type DetectedType = (typeof DETECTED_TYPES)[number];

/** How many leading bytes detectType() looks at; the inspector keeps this much of each attachment. */
export const MAGIC_BYTES = 4096;

// Only the start of the sample is checked for "looks like text": enough to tell, and bounded work.
const TEXT_SAMPLE = 1024;

function startsWith(buf: Buffer, sig: readonly number[], at = 0): boolean {
  if (buf.length < at + sig.length) return false;
  for (let i = 0; i < sig.length; i++) if (buf[at + i] !== sig[i]) return false;
  return true;
}

const ELF = [0x7f, 0x45, 0x4c, 0x46];
// Mach-O 32/64-bit in both byte orders, and the universal ("fat") wrapper in 32 and 64-bit forms.
// CA FE BA BE is also a Java class file's magic; both are code, so both count as executable.
const MACHO = [
  [0xfe, 0xed, 0xfa, 0xce],
  [0xfe, 0xed, 0xfa, 0xcf],
  [0xce, 0xfa, 0xed, 0xfe],
  [0xcf, 0xfa, 0xed, 0xfe],
  [0xca, 0xfe, 0xba, 0xbe],
  [0xca, 0xfe, 0xba, 0xbf],
];
const OLE2 = [0xd0, 0xcf, 0x11, 0xe0, 0xa1, 0xb1, 0x1a, 0xe1];
const RAR = [0x52, 0x61, 0x72, 0x21, 0x1a, 0x07]; // "Rar!\x1a\x07" (v1.5 and v5 share this prefix)
const SEVEN_Z = [0x37, 0x7a, 0xbc, 0xaf, 0x27, 0x1c];
const CAB = [0x4d, 0x53, 0x43, 0x46]; // "MSCF", a Microsoft Cabinet
const XZ = [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00];
const ZSTD = [0x28, 0xb5, 0x2f, 0xfd];
// "BZh", the block size (1–9), then a block's magic (the digits of pi) or the end of an empty stream's.
const BZIP2_BLOCK = [0x31, 0x41, 0x59, 0x26, 0x53, 0x59];
const BZIP2_END = [0x17, 0x72, 0x45, 0x38, 0x50, 0x90];
const PNG = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
// Local file header, end of central directory (an empty zip) and the spanned-archive marker.
const ZIP = [
  [0x50, 0x4b, 0x03, 0x04],
  [0x50, 0x4b, 0x05, 0x06],
  [0x50, 0x4b, 0x07, 0x08],
];

// The WHATWG MIME sniffing standard's list of what a browser takes for HTML at the start of a resource
// (after whitespace), each followed by a space or ">" (here any whitespace: "<html" then a line break is
// as much HTML). A part that a browser would render is HTML here.
const HTML_START = /^(?:\xef\xbb\xbf)?[\t\n\f\r ]*<(?:(?:!doctype html|html|head|script|iframe|h1|div|font|table|a|style|title|b|body|br|p)[\t\n\f\r >]|!--)/i;

/**
 * The type of a content from its first bytes (up to MAGIC_BYTES). `zipEntries`, when the content is a zip
 * whose entries were listed, tells a docx/xlsx/pptx from a plain zip.
 */
export function detectType(head: Buffer, zipEntries?: readonly string[]): DetectedType {
  if (head.length === 0) return 'unknown';
  // Executables first: whatever else the bytes might also look like, Windows runs a file starting "MZ".
  if (head[0] === 0x4d && head[1] === 0x5a) return 'executable';
  if (startsWith(head, ELF)) return 'executable';
  for (const sig of MACHO) if (startsWith(head, sig)) return 'executable';
  if (head[0] === 0x23 && head[1] === 0x21) return 'script';
  for (const sig of ZIP) if (startsWith(head, sig)) return isOfficeOpenXml(head, zipEntries) ? 'office-openxml' : 'zip';
  if (startsWith(head, OLE2)) return 'ms-office';
  if (startsWith(head, RAR)) return 'rar';
  if (startsWith(head, SEVEN_Z)) return '7z';
  if (head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (startsWith(head, CAB)) return 'cab';
  if (startsWith(head, XZ)) return 'xz';
  if (startsWith(head, ZSTD) || zstdOtherFrame(head)) return 'zstd';
  if (head[0] === 0x42 && head[1] === 0x5a && head[2] === 0x68 && head[3]! >= 0x31 && head[3]! <= 0x39 && (startsWith(head, BZIP2_BLOCK, 4) || startsWith(head, BZIP2_END, 4))) return 'bzip2';
  if (startsWith(head, PNG)) return 'png';
  if (head[0] === 0xff && head[1] === 0xd8 && head[2] === 0xff) return 'jpeg';
  const start = head.toString('latin1', 0, Math.min(head.length, 1024));
  if (start.startsWith('GIF87a') || start.startsWith('GIF89a')) return 'gif';
  // PDF readers accept the header anywhere in the first 1024 bytes, so a prefix does not hide one.
  if (start.includes('%PDF-')) return 'pdf';
  if (HTML_START.test(start)) return 'html';
  if (looksLikeText(head)) return 'text';
  return 'unknown';
}

/** An OOXML package is a zip whose entries name the OPC content types file or an Office part folder. */
function isOfficeOpenXml(head: Buffer, entries: readonly string[] | undefined): boolean {
  if (entries?.some(isOfficeEntry)) return true;
  // Without a listing, the first local header's name is often enough ([Content_Types].xml comes first).
  if (head.length >= 30 && head.readUInt32LE(0) === 0x04034b50) {
    const nameLen = head.readUInt16LE(26);
    return isOfficeEntry(head.toString('latin1', 30, Math.min(head.length, 30 + nameLen)));
  }
  return false;
}

function isOfficeEntry(name: string): boolean {
  return name === '[Content_Types].xml' || name.startsWith('word/') || name.startsWith('xl/') || name.startsWith('ppt/');
}

/**
 * No NUL and hardly any control bytes in the sample: text in an ASCII-compatible charset (UTF-8 and
 * Latin-1 alike), or UTF-16 with its byte order mark.
 */
export function looksLikeText(head: Buffer): boolean {
  if (head.length === 0) return false;
  if ((head[0] === 0xff && head[1] === 0xfe) || (head[0] === 0xfe && head[1] === 0xff)) return true;
  const n = Math.min(head.length, TEXT_SAMPLE);
  if (head.indexOf(0) !== -1 && head.indexOf(0) < n) return false;
  let control = 0;
  for (let i = 0; i < n; i++) {
    const b = head[i]!;
    // TAB, LF, FF, CR and ESC (ISO-2022 charsets) are ordinary in text; other C0 controls and DEL are not.
    if ((b < 0x20 && b !== 0x09 && b !== 0x0a && b !== 0x0c && b !== 0x0d && b !== 0x1b) || b === 0x7f) control++;
  }
  return control * 100 <= n;
}

/**
 * A file zstd decompresses that does not start with a zstd frame: a skippable frame first (its magic
 * 0x184D2A5?, its length), or a frame of zstd before 1.0 (v0.1 to v0.7), which zstd still reads.
 */
function zstdOtherFrame(head: Buffer): boolean {
  if (head.length < 8) return false;
  const magic = head.readUInt32LE(0);
  return (magic & 0xfffffff0) >>> 0 === 0x184d2a50 || (magic >= 0xfd2fb51e && magic <= 0xfd2fb527);
}
