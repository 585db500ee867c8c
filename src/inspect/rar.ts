// Lists a RAR attachment's files as its bytes stream by, without decompressing anything: names for
// `archive.entries`, and whether any file is encrypted. Both formats in use are read: RAR 5 (WinRAR 5 and
// later, the default) and RAR 1.5–4 (still written on request, and by old tools). A RAR archive is a
// sequence of blocks, each a header then its data; the data is skipped by the size its header gives, as
// an extractor does. Every header's checksum is verified. The signature is looked for as far as unrar
// looks (a self-extractor's stub, or other bytes, may come first). Names are read as unrar reads them
// (an extractor's name is what the user sees); a directory's ends with "/".
//
// An archive whose headers are encrypted (`rar -hp`) shows no names until the password is given: it is
// reported encrypted and incomplete, as is one whose headers cannot be read (a bad checksum, a header
// past the bounds below). An archive cut short lists the files before the cut: an extractor sees no others.

import { isUtf8 } from 'node:buffer';
import { crc32 } from 'node:zlib';
import { ArchiveNames, type ArchiveListing } from './archive-names.js';


// RAR 5 allows headers of up to 2 MB; real ones are a name and a few fields. Longer ones are not listed.
const MAX_RAR5_HEADER = 256 * 1024;

// RAR 5 header types and flags
const R5_FILE = 2;
const R5_ENCRYPTION = 4;
const R5_END = 5;
const R5_HAS_EXTRA = 0x1;
const R5_HAS_DATA = 0x2;
const R5_FILE_DIRECTORY = 0x1;
const R5_FILE_MTIME = 0x2;
const R5_FILE_CRC = 0x4;
const R5_EXTRA_ENCRYPTION = 0x1;

// RAR 4 block types and flags
const R4_MAIN = 0x73;
const R4_FILE = 0x74;
const R4_SERVICE = 0x7a;
const R4_END = 0x7b;
const R4_MAIN_ENCRYPTED_HEADERS = 0x80;
const R4_FILE_ENCRYPTED = 0x4;
const R4_FILE_LARGE = 0x100;
const R4_FILE_UNICODE = 0x200;
const R4_FILE_DIRECTORY = 0xe0;
const R4_HAS_DATA = 0x8000;
const R4_FIXED = 7;
const R4_FILE_FIXED = 32;

export interface RarListing extends ArchiveListing {
  /** a RAR signature was found (at the start, or behind a self-extractor's stub or other bytes) */
  isRar: boolean;
  /** some file's content, or the headers themselves, are encrypted */
  encrypted: boolean;
}

// unrar looks this far into a file for the signature (a self-extracting archive's stub comes first).
const MAX_SIGNATURE_OFFSET = 2 * 1024 * 1024;
const SIGNATURE_PREFIX = Buffer.from('Rar!\x1a\x07', 'latin1');
// Headers read at most: each costs a little, and real archives hold one per file.
const MAX_HEADERS = 100_000;
// RAR 4 names are at most this long in unrar; longer packed names are cut there.
const MAX_NAME_CHARACTERS = 2048;

type State =
  | { kind: 'search'; searched: number }
  | { kind: 'header'; need: number }
  | { kind: 'skip'; left: number }
  | { kind: 'done' };

class Malformed extends Error {}

const NOTHING = Buffer.alloc(0);

export class RarLister {
  readonly listing: RarListing;
  private readonly names: ArchiveNames;
  private state: State = { kind: 'search', searched: 0 };
  private version: 4 | 5 = 5;
  /** the header being read, copied into one buffer (grown as its size becomes known) */
  private head = NOTHING;
  private filled = 0;
  /** the last bytes searched: a signature may straddle two chunks */
  private tail = NOTHING;
  private headers = 0;
  /** the signature was found behind other bytes */
  private embedded = false;

  constructor(maxEntries = 1000) {
    this.names = new ArchiveNames(maxEntries, { opensArchives: false });
    this.listing = { isRar: false, entries: this.names.entries, complete: true, encrypted: false };
  }

  push(chunk: Buffer): void {
    if (this.state.kind === 'done') return;
    try {
      this.consume(chunk);
    } catch (err) {
      if (!(err instanceof Malformed)) throw err;
      // A header that cannot be read hides whatever follows it. Behind other bytes, though, the signature
      // was likely not a RAR's at all (a RAR deflated inside a zip shows its first bytes): the zip lister
      // opens such a one.
      if (this.embedded) {
        this.listing.isRar = false;
        this.listing.encrypted = false;
        this.names.clear();
      } else this.listing.complete = false;
      this.finish();
    }
    if (!this.names.complete) {
      // Names are missing already: the rest cannot change that.
      this.listing.complete = false;
      this.finish();
    }
  }

  private consume(chunk: Buffer): void {
    let data = chunk;
    while (data.length && this.state.kind !== 'done') {
      const s = this.state;
      if (s.kind === 'search') {
        data = this.search(s, data);
        continue;
      }
      if (s.kind === 'skip') {
        const n = Math.min(s.left, data.length);
        s.left -= n;
        data = data.subarray(n);
        if (s.left === 0) this.nextHeader();
        continue;
      }
      if (s.kind !== 'header') return;
      // Collect bytes until the header is whole (it may span any number of chunks).
      if (this.head.length < s.need) {
        const grown = Buffer.alloc(s.need);
        this.head.copy(grown, 0, 0, this.filled);
        this.head = grown;
      }
      const take = Math.min(s.need - this.filled, data.length);
      data.copy(this.head, this.filled, 0, take);
      this.filled += take;
      data = data.subarray(take);
      if (this.filled < s.need) continue;
      const header = this.head.subarray(0, this.filled);
      const done = this.version === 5 ? this.rar5(header) : this.rar4(header);
      if (done) this.filled = 0; // else: more bytes needed, the state says how many
    }
  }

  /** Looks for the signature within unrar's reach; returns the bytes after it (none while not found). */
  private search(s: { searched: number }, data: Buffer): Buffer {
    // Only as far as unrar looks, whatever the chunks.
    const within = data.subarray(0, Math.max(0, MAX_SIGNATURE_OFFSET + SIGNATURE_PREFIX.length - s.searched));
    const buf = this.tail.length ? Buffer.concat([this.tail, within]) : within;
    const startsAt = s.searched - this.tail.length;
    this.tail = NOTHING;
    s.searched += within.length;
    for (let at = buf.indexOf(SIGNATURE_PREFIX); at >= 0; at = buf.indexOf(SIGNATURE_PREFIX, at + 1)) {
      const mark = buf[at + 6];
      if (mark === undefined || (mark === 0x01 && buf.length < at + 8)) {
        // The version bytes are in the next chunk.
        this.tail = Buffer.from(buf.subarray(at));
        return NOTHING;
      }
      const version = mark === 0x00 ? 4 : mark === 0x01 && buf[at + 7] === 0x00 ? 5 : undefined;
      if (!version) continue;
      this.version = version;
      this.listing.isRar = true;
      this.embedded = startsAt + at > 0;
      this.nextHeader();
      // The bytes after the signature, in this chunk (buf begins with the tail kept from the last one).
      return data.subarray(at + (version === 5 ? 8 : 7) - (buf.length - within.length));
    }
    if (s.searched >= MAX_SIGNATURE_OFFSET + SIGNATURE_PREFIX.length || within.length < data.length) this.finish();
    else this.tail = Buffer.from(buf.subarray(Math.max(0, buf.length - 7)));
    return NOTHING;
  }

  private nextHeader(): void {
    if (++this.headers > MAX_HEADERS) throw new Malformed();
    this.state = { kind: 'header', need: this.version === 5 ? 7 : R4_FIXED };
  }

  /** After a header: its data is skipped, or the next header follows. Returns true (the header is used). */
  private afterHeader(dataSize: number): true {
    if (dataSize > 0) this.state = { kind: 'skip', left: dataSize };
    else this.nextHeader();
    return true;
  }

  /**
   * A RAR 5 block: CRC32, header size (vint), then the header. Called with the first 7 bytes (enough for
   * the CRC and the size), then again with the whole header. False while more bytes are needed.
   */
  private rar5(bytes: Buffer): boolean {
    const size = new Reader(bytes, 4);
    const headerSize = size.vint();
    if (headerSize > MAX_RAR5_HEADER || headerSize < 2) throw new Malformed();
    const total = size.at + headerSize;
    if (bytes.length < total) {
      this.state = { kind: 'header', need: total };
      return false;
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
      const raw = h.bytes(h.vint());
      if (extraSize > total || this.rar5Encrypted(bytes.subarray(total - extraSize, total))) this.listing.encrypted = true;
      const slash = fileFlags & R5_FILE_DIRECTORY ? '/' : '';
      // A byte that is not UTF-8: unrar's conversion stops there, other extractors show it replaced.
      // Both names are listed.
      const name = raw.toString('utf8');
      if (!isUtf8(raw)) this.names.add(name.slice(0, name.indexOf('\ufffd')) + slash);
      this.names.add(name + slash);
    } else if (type === R5_ENCRYPTION) {
      this.listing.encrypted = true;
      this.listing.complete = false;
      this.finish();
      return true;
    } else if (type === R5_END) {
      this.finish();
      return true;
    }
    return this.afterHeader(dataSize);
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
   * A RAR 4 block: CRC16, type, flags, header size, then the rest of the header. Called with the 7 fixed
   * bytes, then again with the whole header. False while more bytes are needed.
   */
  private rar4(bytes: Buffer): boolean {
    const type = bytes[2]!;
    const flags = bytes.readUInt16LE(3);
    const headerSize = bytes.readUInt16LE(5);
    // A file (or a service block, laid out like one) always has its packed size, whatever the flags say.
    const sized = type === R4_FILE || type === R4_SERVICE;
    if (headerSize < (sized ? R4_FILE_FIXED : R4_FIXED + (flags & R4_HAS_DATA ? 4 : 0))) throw new Malformed();
    if (bytes.length < headerSize) {
      this.state = { kind: 'header', need: headerSize };
      return false;
    }
    if ((crc32(bytes.subarray(2, headerSize)) & 0xffff) !== bytes.readUInt16LE(0)) throw new Malformed();
    if (type === R4_MAIN && flags & R4_MAIN_ENCRYPTED_HEADERS) {
      this.listing.encrypted = true;
      this.listing.complete = false;
      this.finish();
      return true;
    }
    if (type === R4_END) {
      this.finish();
      return true;
    }
    let dataSize = sized || flags & R4_HAS_DATA ? bytes.readUInt32LE(7) : 0;
    if (sized) {
      const large = flags & R4_FILE_LARGE ? 8 : 0;
      if (headerSize < R4_FILE_FIXED + large) throw new Malformed();
      if (large) dataSize += bytes.readUInt32LE(R4_FILE_FIXED) * 2 ** 32;
      if (type === R4_FILE) {
        const nameSize = bytes.readUInt16LE(26);
        const start = R4_FILE_FIXED + large;
        if (start + nameSize > headerSize) throw new Malformed();
        const name = rar4Name(bytes.subarray(start, start + nameSize), (flags & R4_FILE_UNICODE) !== 0);
        this.names.add((flags & R4_FILE_DIRECTORY) === R4_FILE_DIRECTORY ? `${name}/` : name);
        if (flags & R4_FILE_ENCRYPTED) this.listing.encrypted = true;
      }
    }
    return this.afterHeader(dataSize);
  }

  private finish(): void {
    this.state = { kind: 'done' };
    this.head = NOTHING;
    this.tail = NOTHING;
  }
}

/**
 * A RAR 4 file name, as unrar reads it. Names with the Unicode flag are either UTF-8 (no zero byte) or a
 * byte name, a zero, then the Unicode name packed against the bytes of the whole field (each pair of flag
 * bits says whether the next character is one byte, one byte under the common high byte, two bytes, or a
 * run copied from the field's bytes, corrected or not); the name ends at its first zero, and an empty one
 * is the byte name. Byte names are in the DOS code page; their ASCII is what matters here. Windows'
 * separator becomes "/".
 */
export function rar4Name(raw: Buffer, unicode: boolean): string {
  const zero = raw.indexOf(0);
  let name = '';
  if (unicode && zero < 0) name = raw.toString('utf8');
  else if (unicode) name = unpackName(raw, raw.subarray(zero + 1));
  // unrar falls back to the byte name when the Unicode one is empty (up to its first NUL); without the
  // Unicode flag, the bytes are the name (a NUL in them is read both ways by ArchiveNames).
  if (!unicode) name = raw.toString('latin1');
  else if (!name || name.startsWith('\0')) name = (zero < 0 ? raw : raw.subarray(0, zero)).toString('latin1');
  return name.replace(/\\/g, '/');
}

/** unrar's packed Unicode names (EncodeFileName::Decode); zero characters kept (ArchiveNames reads them). */
function unpackName(field: Buffer, packed: Buffer): string {
  const out: number[] = [];
  let at = 0;
  const high = at < packed.length ? packed[at++]! : 0;
  let flags = 0;
  let flagBits = 0;
  const byteAt = (i: number) => (i < field.length ? field[i]! : 0);
  decoding: while (at < packed.length && out.length < MAX_NAME_CHARACTERS) {
    if (flagBits === 0) {
      flags = packed[at++]!;
      flagBits = 8;
    }
    switch (flags >> 6) {
      case 0:
        if (at >= packed.length) break decoding;
        out.push(packed[at++]!);
        break;
      case 1:
        if (at >= packed.length) break decoding;
        out.push(packed[at++]! + (high << 8));
        break;
      case 2:
        if (at + 1 >= packed.length) break decoding;
        out.push(packed[at]! + (packed[at + 1]! << 8));
        at += 2;
        break;
      default: {
        if (at >= packed.length) break decoding;
        let length = packed[at++]!;
        if (length & 0x80) {
          if (at >= packed.length) break decoding;
          const correction = packed[at++]!;
          for (length = (length & 0x7f) + 2; length > 0 && out.length < MAX_NAME_CHARACTERS && out.length < field.length; length--) out.push(((byteAt(out.length) + correction) & 0xff) + (high << 8));
        } else {
          for (length += 2; length > 0 && out.length < MAX_NAME_CHARACTERS && out.length < field.length; length--) out.push(byteAt(out.length));
        }
      }
    }
    flags = (flags << 2) & 0xff;
    flagBits -= 2;
  }
  return String.fromCharCode(...out);
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
