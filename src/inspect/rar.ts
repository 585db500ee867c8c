// Lists a RAR attachment's files as its bytes stream by, without decompressing anything: names for
// `archive.entries`, and whether any file is encrypted. Both formats in use are read: RAR 5 (WinRAR 5 and
// later, the default) and RAR 1.5–4 (still written on request, and by old tools). A RAR archive is a
// sequence of blocks, each a header then its data; the data is skipped by the size its header gives, as
// an extractor does. Every header's checksum is verified.
//
// An archive whose headers are encrypted (`rar -hp`) shows no names until the password is given: it is
// reported encrypted and incomplete, as is one whose headers cannot be read (a bad checksum, a header
// past the bounds below). An archive cut short lists the files before the cut: an extractor sees no others.

import { crc32 } from 'node:zlib';
import { ArchiveNames, type ArchiveListing } from './archive-names.js';

const RAR4_SIGNATURE = Buffer.from('Rar!\x1a\x07\x00', 'latin1');
const RAR5_SIGNATURE = Buffer.from('Rar!\x1a\x07\x01\x00', 'latin1');

// RAR 5 allows headers of up to 2 MB; real ones are a name and a few fields. Longer ones are not listed.
const MAX_RAR5_HEADER = 256 * 1024;

// RAR 5 header types and flags
const R5_FILE = 2;
const R5_ENCRYPTION = 4;
const R5_END = 5;
const R5_HAS_EXTRA = 0x1;
const R5_HAS_DATA = 0x2;
const R5_FILE_MTIME = 0x2;
const R5_FILE_CRC = 0x4;
const R5_EXTRA_ENCRYPTION = 0x1;

// RAR 4 block types and flags
const R4_MAIN = 0x73;
const R4_FILE = 0x74;
const R4_END = 0x7b;
const R4_MAIN_ENCRYPTED_HEADERS = 0x80;
const R4_FILE_ENCRYPTED = 0x4;
const R4_FILE_LARGE = 0x100;
const R4_FILE_UNICODE = 0x200;
const R4_HAS_DATA = 0x8000;
const R4_FIXED = 7;
const R4_FILE_FIXED = 32;

export interface RarListing extends ArchiveListing {
  /** the content starts with a RAR signature */
  isRar: boolean;
  /** some file's content, or the headers themselves, are encrypted */
  encrypted: boolean;
}

type State =
  | { kind: 'signature' }
  | { kind: 'header'; need: number }
  | { kind: 'skip'; left: number }
  | { kind: 'done' };

class Malformed extends Error {}

export class RarLister {
  readonly listing: RarListing;
  private readonly names: ArchiveNames;
  private state: State = { kind: 'signature' };
  private version: 4 | 5 = 5;
  private buffered: Buffer[] = [];
  private bufferedLength = 0;

  constructor(maxEntries = 1000) {
    this.names = new ArchiveNames(maxEntries);
    this.listing = { isRar: false, entries: this.names.entries, complete: true, encrypted: false };
  }

  push(chunk: Buffer): void {
    if (this.state.kind === 'done') return;
    try {
      this.consume(chunk);
    } catch (err) {
      // A header that cannot be read hides whatever follows it.
      if (!(err instanceof Malformed)) throw err;
      this.listing.complete = false;
      this.finish();
    }
    if (!this.names.complete) this.listing.complete = false;
  }

  private consume(chunk: Buffer): void {
    let data = chunk;
    while (data.length && this.state.kind !== 'done') {
      if (this.state.kind === 'skip') {
        const n = Math.min(this.state.left, data.length);
        this.state.left -= n;
        data = data.subarray(n);
        if (this.state.left === 0) this.state = { kind: 'header', need: this.version === 5 ? 7 : R4_FIXED };
        continue;
      }
      // Collect bytes until what the state needs is there (a header may span any number of chunks).
      const need = this.state.kind === 'signature' ? RAR5_SIGNATURE.length : this.state.need;
      const take = Math.min(need - this.bufferedLength, data.length);
      this.buffered.push(data.subarray(0, take));
      this.bufferedLength += take;
      data = data.subarray(take);
      if (this.bufferedLength < need) continue;
      const bytes = Buffer.concat(this.buffered, this.bufferedLength);
      const used = this.state.kind === 'signature' ? this.signature(bytes) : this.version === 5 ? this.rar5(bytes) : this.rar4(bytes);
      if (used === undefined) continue; // more bytes needed, state updated; the buffer stays
      this.buffered = [];
      this.bufferedLength = 0;
      // A RAR 4 signature is one byte shorter than the bytes read to tell the two apart.
      if (used < bytes.length) data = Buffer.concat([bytes.subarray(used), data]);
    }
  }

  /** Bytes used by the signature, or the lister stops: not a RAR archive. */
  private signature(bytes: Buffer): number | undefined {
    if (bytes.equals(RAR5_SIGNATURE)) this.version = 5;
    else if (bytes.subarray(0, RAR4_SIGNATURE.length).equals(RAR4_SIGNATURE)) this.version = 4;
    else return this.finish();
    this.listing.isRar = true;
    this.state = { kind: 'header', need: this.version === 5 ? 7 : R4_FIXED };
    return this.version === 5 ? RAR5_SIGNATURE.length : RAR4_SIGNATURE.length;
  }

  /**
   * A RAR 5 block: CRC32, header size (vint), then the header. Called with the first 7 bytes (enough for
   * the CRC and the size), then again with the whole header.
   */
  private rar5(bytes: Buffer): number | undefined {
    const size = new Reader(bytes, 4);
    const headerSize = size.vint();
    if (headerSize > MAX_RAR5_HEADER || headerSize < 2) throw new Malformed();
    const total = size.at + headerSize;
    if (bytes.length < total) {
      this.state = { kind: 'header', need: total };
      return undefined;
    }
    if (crc32(bytes.subarray(4, total)) !== bytes.readUInt32LE(0)) throw new Malformed();
    const h = new Reader(bytes.subarray(0, total), size.at);
    const type = h.vint();
    const flags = h.vint();
    const extraSize = flags & R5_HAS_EXTRA ? h.vint() : 0;
    const dataSize = flags & R5_HAS_DATA ? h.vint() : 0;
    if (type === R5_FILE) {
      const fileFlags = h.vint();
      h.vint(); // unpacked size
      h.vint(); // attributes
      if (fileFlags & R5_FILE_MTIME) h.skip(4);
      if (fileFlags & R5_FILE_CRC) h.skip(4);
      h.vint(); // compression
      h.vint(); // host OS
      const name = h.bytes(h.vint()).toString('utf8');
      if (this.rar5Encrypted(bytes.subarray(total - extraSize, total))) this.listing.encrypted = true;
      this.names.add(name);
    } else if (type === R5_ENCRYPTION) {
      this.listing.encrypted = true;
      this.listing.complete = false;
      return this.finish() ?? total;
    } else if (type === R5_END) {
      return this.finish() ?? total;
    }
    this.state = dataSize > 0 ? { kind: 'skip', left: dataSize } : { kind: 'header', need: 7 };
    return total;
  }

  /** Whether a RAR 5 file header's extra area holds an encryption record. */
  private rar5Encrypted(extra: Buffer): boolean {
    const r = new Reader(extra, 0);
    while (r.at < extra.length) {
      const size = r.vint();
      const start = r.at;
      if (r.vint() === R5_EXTRA_ENCRYPTION) return true;
      r.at = start;
      r.skip(size);
    }
    return false;
  }

  /**
   * A RAR 4 block: CRC16, type, flags, header size, then the rest of the header; the data size follows
   * when the flags say so. Called with the 7 fixed bytes, then again with the whole header.
   */
  private rar4(bytes: Buffer): number | undefined {
    const type = bytes[2]!;
    const flags = bytes.readUInt16LE(3);
    const headerSize = bytes.readUInt16LE(5);
    if (headerSize < R4_FIXED + (flags & R4_HAS_DATA ? 4 : 0)) throw new Malformed();
    if (bytes.length < headerSize) {
      this.state = { kind: 'header', need: headerSize };
      return undefined;
    }
    if ((crc32(bytes.subarray(2, headerSize)) & 0xffff) !== bytes.readUInt16LE(0)) throw new Malformed();
    let dataSize = flags & R4_HAS_DATA ? bytes.readUInt32LE(7) : 0;
    if (type === R4_MAIN && flags & R4_MAIN_ENCRYPTED_HEADERS) {
      this.listing.encrypted = true;
      this.listing.complete = false;
      return this.finish() ?? headerSize;
    }
    if (type === R4_FILE) {
      const large = flags & R4_FILE_LARGE ? 8 : 0;
      if (headerSize < R4_FILE_FIXED + large) throw new Malformed();
      if (large) dataSize += bytes.readUInt32LE(R4_FILE_FIXED) * 2 ** 32;
      const nameSize = bytes.readUInt16LE(26);
      const start = R4_FILE_FIXED + large;
      if (start + nameSize > headerSize) throw new Malformed();
      this.names.add(rar4Name(bytes.subarray(start, start + nameSize), (flags & R4_FILE_UNICODE) !== 0));
      if (flags & R4_FILE_ENCRYPTED) this.listing.encrypted = true;
    } else if (type === R4_END) {
      return this.finish() ?? headerSize;
    }
    this.state = dataSize > 0 ? { kind: 'skip', left: dataSize } : { kind: 'header', need: R4_FIXED };
    return headerSize;
  }

  private finish(): undefined {
    this.state = { kind: 'done' };
    this.buffered = [];
    this.bufferedLength = 0;
    return undefined;
  }
}

/**
 * A RAR 4 file name. Names with the Unicode flag are either UTF-8 (no zero byte) or a byte name, a zero,
 * then the Unicode name packed against the byte name (unrar's scheme: each pair of flag bits says whether
 * the next character is one byte, one byte under the common high byte, two bytes, or a run copied from
 * the byte name, corrected or not). Byte names are in the DOS code page; their ASCII is what matters here.
 * Windows' separator becomes "/".
 */
export function rar4Name(raw: Buffer, unicode: boolean): string {
  const zero = raw.indexOf(0);
  let name: string;
  if (!unicode) name = raw.toString('latin1');
  else if (zero < 0) name = raw.toString('utf8');
  else {
    const ascii = raw.subarray(0, zero);
    const packed = raw.subarray(zero + 1);
    const out: number[] = [];
    let at = 0;
    const high = packed[at++] ?? 0;
    let flags = 0;
    let flagBits = 0;
    while (at < packed.length) {
      if (flagBits === 0) {
        flags = packed[at++]!;
        flagBits = 8;
      }
      switch (flags >> 6) {
        case 0:
          out.push(packed[at++] ?? 0);
          break;
        case 1:
          out.push((packed[at++] ?? 0) + (high << 8));
          break;
        case 2:
          out.push((packed[at] ?? 0) + ((packed[at + 1] ?? 0) << 8));
          at += 2;
          break;
        default: {
          let length = packed[at++] ?? 0;
          if (length & 0x80) {
            const correction = packed[at++] ?? 0;
            for (length = (length & 0x7f) + 2; length > 0 && out.length < ascii.length; length--) out.push((((ascii[out.length] ?? 0) + correction) & 0xff) + (high << 8));
          } else {
            for (length += 2; length > 0 && out.length < ascii.length; length--) out.push(ascii[out.length] ?? 0);
          }
        }
      }
      flags = (flags << 2) & 0xff;
      flagBits -= 2;
    }
    name = String.fromCharCode(...out);
  }
  return name.replace(/\\/g, '/');
}

/** Reads RAR 5's variable-length integers and fixed fields, bounds checked. */
class Reader {
  constructor(
    private readonly buf: Buffer,
    public at: number,
  ) {}

  /** 7 bits per byte, least significant first; at most 64 bits. */
  vint(): number {
    let value = 0;
    for (let shift = 0; shift < 70; shift += 7) {
      if (this.at >= this.buf.length) throw new Malformed();
      const byte = this.buf[this.at++]!;
      value += (byte & 0x7f) * 2 ** shift;
      if (!(byte & 0x80)) return value;
    }
    throw new Malformed();
  }

  skip(n: number): void {
    if (this.at + n > this.buf.length) throw new Malformed();
    this.at += n;
  }

  bytes(n: number): Buffer {
    const start = this.at;
    this.skip(n);
    return this.buf.subarray(start, start + n);
  }
}
