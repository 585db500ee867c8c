// Writes RAR archives for the inspection tests: no RAR writer is free software, so these are built here,
// files stored (not compressed), from the format's published description (RAR 5: rarlab's technote;
// RAR 1.5–4: unrar's sources as documented by libarchive). Every test checks its archive with two
// independent readers (libarchive's bsdtar and The Unarchiver's lsar) before Douane sees it.

import { crc32 } from 'node:zlib';

export interface RarFile {
  name: string;
  data?: Buffer;
  /** the file's content is encrypted (its header says so; the data here is stand-in bytes) */
  encrypted?: boolean;
  directory?: boolean;
  /** RAR 4: the name in the DOS code page next to the packed Unicode one (default: "_" for each non-ASCII character) */
  dosName?: string;
  /** the name field's bytes exactly (RAR 4: the whole field, with the Unicode flag when `unicodeFlag`) */
  rawName?: Buffer;
  unicodeFlag?: boolean;
  /** RAR 4: header flags to clear (0x8000: no "data follows" flag, which a file header does not need) */
  clearFlags?: number;
  /** RAR 4, with the large option: the high 32 bits of the packed size */
  highPackSize?: number;
}

// ------------------------------------------------------------------------------------------- RAR 5

function vint(n: number): Buffer {
  const out: number[] = [];
  do {
    let byte = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) byte |= 0x80;
    out.push(byte);
  } while (n > 0);
  return Buffer.from(out);
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0);
  return b;
}

function block5(fields: Buffer[]): Buffer {
  const header = Buffer.concat(fields);
  const sized = Buffer.concat([vint(header.length), header]);
  return Buffer.concat([u32(crc32(sized)), sized]);
}

export function rar5(files: RarFile[], opts: { encryptedHeaders?: boolean; prefix?: Buffer } = {}): Buffer {
  const parts: Buffer[] = [opts.prefix ?? Buffer.alloc(0), Buffer.from('Rar!\x1a\x07\x01\x00', 'latin1')];
  if (opts.encryptedHeaders) {
    // Archive encryption header: version 0 (AES-256), no password check value, KDF count, salt; then
    // every header is encrypted (an IV, then AES blocks): stand-in bytes here.
    parts.push(block5([vint(4), vint(0), vint(0), vint(0), Buffer.from([15]), Buffer.alloc(16, 7)]));
    parts.push(Buffer.alloc(96, 0x5a));
    return Buffer.concat(parts);
  }
  parts.push(block5([vint(1), vint(0), vint(0)])); // main header, no archive flags
  for (const f of files) {
    const data = f.data ?? Buffer.alloc(0);
    const name = f.rawName ?? Buffer.from(f.name, 'utf8');
    // Encryption record: version 0, flags 0, KDF count, salt, IV.
    const record = f.encrypted ? Buffer.concat([vint(1), vint(0), vint(0), Buffer.from([15]), Buffer.alloc(16, 1), Buffer.alloc(16, 2)]) : Buffer.alloc(0);
    const extra = f.encrypted ? Buffer.concat([vint(record.length), record]) : Buffer.alloc(0);
    const flags = 0x2 | (extra.length ? 0x1 : 0);
    const fields = [
      vint(2),
      vint(flags),
      ...(extra.length ? [vint(extra.length)] : []),
      vint(data.length),
      vint((f.directory ? 0x1 : 0) | 0x4), // data CRC32 present
      vint(data.length),
      vint(f.directory ? 0x10 : 0x20),
      u32(crc32(data)),
      vint(0), // compression: version 0, stored
      vint(0), // host OS: Windows
      vint(name.length),
      name,
      extra,
    ];
    parts.push(block5(fields), data);
  }
  parts.push(block5([vint(5), vint(0), vint(0)])); // end of archive
  return Buffer.concat(parts);
}

// ------------------------------------------------------------------------------------------- RAR 4

function block4(type: number, flags: number, rest: Buffer): Buffer {
  const head = Buffer.alloc(5);
  head[0] = type;
  head.writeUInt16LE(flags, 1);
  head.writeUInt16LE(7 + rest.length, 3);
  const body = Buffer.concat([head, rest]);
  const crc = Buffer.alloc(2);
  crc.writeUInt16LE(crc32(body) & 0xffff);
  return Buffer.concat([crc, body]);
}

/**
 * unrar's packed Unicode name: a high byte, then flag bytes, each announcing four characters as one byte,
 * one byte under the high byte, two bytes, or a run from the DOS name (corrected by a constant or not).
 */
export function packUnicodeName(name: string, dos: Buffer): Buffer {
  const chars = [...name].map((c) => c.charCodeAt(0));
  const highs = chars.filter((c) => c > 0xff).map((c) => c >> 8);
  const high = highs[0] ?? 0;
  const ops: { kind: number; bytes: number[] }[] = [];
  for (let i = 0; i < chars.length; ) {
    // A run copied from the DOS name, as is or corrected: two characters at least.
    let same = 0;
    while (i + same < chars.length && same < 0x81 && chars[i + same] === dos[i + same]) same++;
    if (same >= 2) {
      ops.push({ kind: 3, bytes: [same - 2] });
      i += same;
      continue;
    }
    const correction = ((chars[i]! & 0xff) - (dos[i] ?? 0)) & 0xff;
    let corrected = 0;
    while (i + corrected < chars.length && corrected < 0x81 && chars[i + corrected]! >> 8 === high && (((chars[i + corrected]! & 0xff) - (dos[i + corrected] ?? 0)) & 0xff) === correction) corrected++;
    if (corrected >= 2 && high !== 0) {
      ops.push({ kind: 3, bytes: [0x80 | (corrected - 2), correction] });
      i += corrected;
      continue;
    }
    const c = chars[i++]!;
    if (c <= 0xff) ops.push({ kind: 0, bytes: [c] });
    else if (c >> 8 === high) ops.push({ kind: 1, bytes: [c & 0xff] });
    else ops.push({ kind: 2, bytes: [c & 0xff, c >> 8] });
  }
  const out: number[] = [high];
  for (let g = 0; g < ops.length; g += 4) {
    const group = ops.slice(g, g + 4);
    out.push(group.reduce((flags, op, k) => flags | (op.kind << (6 - 2 * k)), 0));
    for (const op of group) out.push(...op.bytes);
  }
  return Buffer.from(out);
}

export function rar4(files: RarFile[], opts: { encryptedHeaders?: boolean; large?: boolean; prefix?: Buffer } = {}): Buffer {
  const parts: Buffer[] = [opts.prefix ?? Buffer.alloc(0), Buffer.from('Rar!\x1a\x07\x00', 'latin1')];
  parts.push(block4(0x73, opts.encryptedHeaders ? 0x80 : 0, Buffer.alloc(6)));
  if (opts.encryptedHeaders) {
    parts.push(Buffer.alloc(96, 0x5a)); // encrypted headers: a salt, then AES blocks
    return Buffer.concat(parts);
  }
  for (const f of files) {
    const data = f.data ?? Buffer.alloc(0);
    const win = f.name.replace(/\//g, '\\'); // RAR 4 keeps Windows' separator
    const ascii = /^[\x20-\x7e]*$/.test(win);
    const dos = Buffer.from(f.dosName ?? [...win].map((c) => (c.charCodeAt(0) < 0x80 ? c : '_')).join(''), 'latin1');
    const unicode = f.rawName ? f.unicodeFlag === true : !ascii;
    const name = f.rawName ?? (ascii ? Buffer.from(win, 'latin1') : Buffer.concat([dos, Buffer.from([0]), packUnicodeName(win, dos)]));
    const fixed = Buffer.alloc(25 + (opts.large ? 8 : 0));
    fixed.writeUInt32LE(data.length, 0); // packed size
    fixed.writeUInt32LE(data.length, 4); // unpacked size
    fixed[8] = 2; // host OS: Windows
    fixed.writeUInt32LE(crc32(data) >>> 0, 9);
    fixed.writeUInt32LE(0x5b7a0000, 13); // DOS time: 2025-11-26
    fixed[17] = 29; // version needed: 2.9
    fixed[18] = 0x30; // method: store
    fixed.writeUInt16LE(name.length, 19);
    fixed.writeUInt32LE(f.directory ? 0x10 : 0x20, 21);
    // With the large flag, the high 32 bits of both sizes (zero) follow.
    if (opts.large) fixed.writeUInt32LE(f.highPackSize ?? 0, 25);
    const flags = (0x8000 | (unicode ? 0x200 : 0) | (f.encrypted ? 0x4 : 0) | (f.directory ? 0xe0 : 0) | (opts.large ? 0x100 : 0)) & ~(f.clearFlags ?? 0);
    parts.push(block4(0x74, flags, Buffer.concat([fixed, name])), data);
  }
  parts.push(block4(0x7b, 0x4000, Buffer.alloc(0)));
  return Buffer.concat(parts);
}
