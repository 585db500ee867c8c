// Lists a 7z attachment's files as its bytes stream by: names for `archive.entries`, and whether the
// content is encrypted. A 7z archive is a signature header (32 bytes) that gives where the archive's
// header is, the packed data, then that header, last; 7-Zip and libarchive compress the header with
// LZMA and put its packed bytes just before it. So the lister keeps the bytes from a bounded distance
// before the header to its end, and reads them when the stream reaches the end; nothing else is kept.
// Every checksum is verified: the signature header's, the header's, the decoded header's.
//
// Names are what 7-Zip shows: the header's UTF-16 names, Windows' separator read as "/", a directory's
// ending with "/". The signature is looked for as far as 7-Zip looks (a self-extractor's stub comes
// first); the first one found with a valid checksum is the archive. An archive whose header cannot be
// read is reported incomplete: its header encrypted (`7z -mhe`), compressed by a method other than LZMA,
// past the bounds below, cut off before its end (the first volume of a split archive too), or corrupt.
// Behind other bytes, a signature that leads to no readable header is taken for chance bytes (a 7z
// deflated inside a zip shows its first bytes), as 7-Zip itself would not open it there.

import { crc32 } from 'node:zlib';
import { ArchiveNames, normalizeName, type ArchiveListing } from './archive-names.js';
import { LzmaError, lzmaDecode } from './lzma.js';

export interface SevenZipListing extends ArchiveListing {
  /** a 7z signature header with a valid checksum was found */
  is7z: boolean;
  /** some file's content, or the header itself, is encrypted */
  encrypted: boolean;
  /** some file has no name: 7-Zip names it after the archive (see defaultName) */
  unnamed: boolean;
}

const SIGNATURE = Buffer.from([0x37, 0x7a, 0xbc, 0xaf, 0x27, 0x1c]);
const START_HEADER = 32;
// 7-Zip opens a 7z that begins up to 8 MiB into a file (behind a self-extractor's stub, or any bytes).
const MAX_SIGNATURE_OFFSET = 8 * 1024 * 1024;
// The header, packed or not, is read whole: a name and a few fields per file, about 200 KB for ten
// thousand files. Larger ones are not read (the listing is then incomplete). How much may be decoded in
// all is the caller's budget (one message's).
const MAX_HEADER = 4 * 1024 * 1024;
// Bytes kept before the header, where its packed form lies.
const MAX_PACKED_HEADER = 4 * 1024 * 1024;
const MAX_FILES = 1_000_000;
const MAX_CODERS = 32;
// A header may be packed by a header that is itself packed: 7-Zip writes one level.
const MAX_HEADER_LEVELS = 4;

// Property ids
const K_END = 0x00;
const K_HEADER = 0x01;
const K_ARCHIVE_PROPERTIES = 0x02;
const K_ADDITIONAL_STREAMS = 0x03;
const K_MAIN_STREAMS = 0x04;
const K_FILES = 0x05;
const K_PACK_INFO = 0x06;
const K_UNPACK_INFO = 0x07;
const K_SUBSTREAMS = 0x08;
const K_SIZE = 0x09;
const K_CRC = 0x0a;
const K_FOLDER = 0x0b;
const K_UNPACK_SIZE = 0x0c;
const K_NUM_UNPACK_STREAMS = 0x0d;
const K_EMPTY_STREAM = 0x0e;
const K_EMPTY_FILE = 0x0f;
const K_NAME = 0x11;
const K_ENCODED_HEADER = 0x17;

const CODER_COPY = '00';
const CODER_LZMA = '030101';
const CODER_AES = '06f10701';

/** Bytes that are not a 7z header: chance bytes behind other data, or a corrupt archive. */
class Malformed extends Error {}
/** A 7z header Douane does not read: the listing is incomplete. */
class Unreadable extends Error {}

interface Coder {
  id: string;
  inStreams: number;
  outStreams: number;
  properties: Buffer;
}

interface Folder {
  coders: Coder[];
  /** the sizes of every coder's output, in order; the folder's own output is the unbound one */
  unpackSizes: number[];
  unpackCrc?: number;
  packedStreams: number;
}

interface StreamsInfo {
  packPos: number;
  packSizes: number[];
  folders: Folder[];
}

type State =
  | { kind: 'search'; searched: number }
  /** keeping the bytes [keepFrom, end) of the stream; the header is [header, end) */
  | { kind: 'keep'; keepFrom: number; header: number; end: number; crc: number; kept: Buffer[] }
  | { kind: 'done' };

const NOTHING = Buffer.alloc(0);

export class SevenZipLister {
  readonly listing: SevenZipListing;
  private readonly names: ArchiveNames;
  private state: State = { kind: 'search', searched: 0 };
  /** where in the attachment the next chunk begins */
  private offset = 0;
  /** the last bytes searched: a signature header may straddle two chunks */
  private tail = NOTHING;
  /** where the signature header begins; positions in the archive count from there */
  private base = 0;

  constructor(
    maxEntries = 1000,
    private readonly budget: { lzma: number } = { lzma: MAX_HEADER },
  ) {
    this.names = new ArchiveNames(maxEntries);
    this.listing = { is7z: false, entries: this.names.entries, complete: true, encrypted: false, unnamed: false };
  }

  push(chunk: Buffer): void {
    const start = this.offset;
    this.offset += chunk.length;
    if (this.state.kind === 'done') return;
    this.guard(() => {
      if (this.state.kind === 'search') this.search(this.state, chunk, start);
      if (this.state.kind === 'keep') this.keep(this.state, chunk, start);
    });
  }

  /** The attachment ended: an archive whose header was not reached is cut short. */
  end(): void {
    if (this.state.kind === 'keep') this.guard(() => {
      throw new Malformed();
    });
    this.finish();
  }

  private guard(step: () => void): void {
    try {
      step();
    } catch (err) {
      if (err instanceof LzmaError || err instanceof Malformed) {
        if (this.base > 0) {
          // Chance bytes behind other data, not an archive 7-Zip would open there.
          this.listing.is7z = false;
          this.listing.encrypted = false;
          this.listing.unnamed = false;
          this.names.clear();
        } else this.listing.complete = false;
      } else if (err instanceof Unreadable) this.listing.complete = false;
      else throw err;
      this.finish();
    }
    if (!this.names.complete) {
      this.listing.complete = false;
      this.finish();
    }
  }

  private search(s: { searched: number }, chunk: Buffer, start: number): void {
    const buf = this.tail.length ? Buffer.concat([this.tail, chunk]) : chunk;
    const bufStart = start - this.tail.length;
    this.tail = NOTHING;
    for (let at = buf.indexOf(SIGNATURE); at >= 0; at = buf.indexOf(SIGNATURE, at + 1)) {
      if (bufStart + at > MAX_SIGNATURE_OFFSET) break;
      if (at + START_HEADER > buf.length) {
        // The rest of the signature header is in the next chunk.
        this.tail = Buffer.from(buf.subarray(at));
        return;
      }
      if (this.startHeader(buf.subarray(at, at + START_HEADER), bufStart + at)) return;
    }
    s.searched = start + chunk.length;
    if (s.searched > MAX_SIGNATURE_OFFSET + SIGNATURE.length) this.finish();
    else this.tail = Buffer.from(buf.subarray(Math.max(0, buf.length - SIGNATURE.length + 1)));
  }

  /** The 32-byte signature header at `at`: true when it is one (its checksum holds). */
  private startHeader(bytes: Buffer, at: number): boolean {
    if (crc32(bytes.subarray(12, 32)) !== bytes.readUInt32LE(8)) return false;
    this.listing.is7z = true;
    this.base = at;
    const offset = readUInt64(bytes, 12);
    const size = readUInt64(bytes, 20);
    const crc = bytes.readUInt32LE(28);
    if (size === 0) {
      // An empty archive: no header at all.
      this.finish();
      return true;
    }
    if (size > MAX_HEADER) throw new Unreadable();
    const header = at + START_HEADER + offset;
    this.state = { kind: 'keep', keepFrom: Math.max(at + START_HEADER, header - MAX_PACKED_HEADER), header, end: header + size, crc, kept: [] };
    return true;
  }

  private keep(s: State & { kind: 'keep' }, chunk: Buffer, start: number): void {
    const from = Math.max(s.keepFrom, start);
    const to = Math.min(s.end, start + chunk.length);
    if (to > from) s.kept.push(Buffer.from(chunk.subarray(from - start, to - start)));
    if (start + chunk.length < s.end) return;
    const kept = Buffer.concat(s.kept);
    s.kept = [];
    this.read(kept, s.keepFrom, s.header - s.keepFrom, s.crc);
    this.finish();
  }

  /** Reads the header at `at` in `kept` (which begins at `keptFrom` in the attachment). */
  private read(kept: Buffer, keptFrom: number, at: number, crc: number): void {
    let header = kept.subarray(at);
    if (crc32(header) !== crc) throw new Malformed();
    for (let level = 0; header[0] === K_ENCODED_HEADER; level++) {
      if (level >= MAX_HEADER_LEVELS) throw new Unreadable();
      const r = new Reader(header, 1);
      const streams = readStreamsInfo(r);
      header = this.unpackHeader(streams, kept, keptFrom);
    }
    if (header[0] !== K_HEADER) throw new Malformed();
    this.header(new Reader(header, 1));
  }

  /** The packed header, decoded: one folder of LZMA (or stored), its bytes among those kept. */
  private unpackHeader(streams: StreamsInfo, kept: Buffer, keptFrom: number): Buffer {
    const folder = streams.folders[0];
    if (streams.folders.length !== 1 || !folder || folder.packedStreams !== 1 || streams.packSizes.length < 1) throw new Malformed();
    if (folder.coders.some((c) => c.id === CODER_AES)) {
      this.listing.encrypted = true;
      throw new Unreadable();
    }
    const coder = folder.coders[0]!;
    if (folder.coders.length !== 1 || (coder.id !== CODER_LZMA && coder.id !== CODER_COPY)) throw new Unreadable();
    const size = folder.unpackSizes[0]!;
    if (size > MAX_HEADER) throw new Unreadable();
    const packedAt = this.base + START_HEADER + streams.packPos - keptFrom;
    const packedSize = streams.packSizes[0]!;
    if (packedAt < 0) throw new Unreadable();
    if (packedAt + packedSize > kept.length) throw new Malformed();
    const packed = kept.subarray(packedAt, packedAt + packedSize);
    let header: Buffer;
    if (coder.id === CODER_COPY) {
      if (packedSize !== size) throw new Malformed();
      header = packed;
    } else {
      if (size > this.budget.lzma) throw new Unreadable();
      this.budget.lzma -= size;
      header = lzmaDecode(packed, 0, coder.properties, size);
    }
    if (folder.unpackCrc !== undefined && crc32(header) !== folder.unpackCrc) throw new Malformed();
    return header;
  }

  /** The header proper: the streams (for encryption) and the files (for names). */
  private header(r: Reader): void {
    let id = r.number();
    if (id === K_ARCHIVE_PROPERTIES) {
      for (let type = r.number(); type !== K_END; type = r.number()) r.skip(r.number());
      id = r.number();
    }
    if (id === K_ADDITIONAL_STREAMS) {
      readStreamsInfo(r);
      id = r.number();
    }
    if (id === K_MAIN_STREAMS) {
      const main = readStreamsInfo(r);
      if (main.folders.some((f) => f.coders.some((c) => c.id === CODER_AES))) this.listing.encrypted = true;
      id = r.number();
    }
    if (id === K_FILES) {
      this.files(r);
      id = r.number();
    }
    if (id !== K_END) throw new Malformed();
  }

  private files(r: Reader): void {
    const count = r.number();
    if (count > MAX_FILES) throw new Unreadable();
    let emptyStream: boolean[] | undefined;
    let emptyFile: boolean[] | undefined;
    let names: string[] | undefined;
    for (let type = r.number(); type !== K_END; type = r.number()) {
      const size = r.number();
      const data = new Reader(r.bytes(size), 0);
      if (type === K_EMPTY_STREAM) emptyStream = data.bits(count);
      else if (type === K_EMPTY_FILE) emptyFile = data.bits(emptyStream?.filter(Boolean).length ?? 0);
      else if (type === K_NAME) {
        // Names held in another stream ("external"): no writer does this.
        if (data.byte() !== 0) throw new Unreadable();
        names = utf16Names(data.bytes(size - 1), count);
      }
    }
    let empty = 0;
    for (let i = 0; i < count; i++) {
      let name = (names?.[i] ?? '').replace(/\\/g, '/');
      if (emptyStream?.[i]) {
        const isDirectory = !emptyFile?.[empty];
        empty++;
        if (isDirectory && !name.endsWith('/')) name += '/';
      }
      // 7-Zip names such a file after the archive, which only the caller knows.
      if (name === '' || name === '/') this.listing.unnamed = true;
      else this.names.add(name);
    }
  }

  private finish(): void {
    this.state = { kind: 'done' };
    this.tail = NOTHING;
  }
}

/** The name 7-Zip gives a file without one in the archive named `archiveName` (its name less ".7z"). */
export function defaultName(archiveName: string): string {
  const base = archiveName.replace(/^.*[/\\]/, '');
  return normalizeName(/.\.7z$/i.test(base) ? base.slice(0, -3) : `${base}~`);
}

/** The streams: where the packed streams are and their sizes, and the folders (coders) that unpack them. */
function readStreamsInfo(r: Reader): StreamsInfo {
  const info: StreamsInfo = { packPos: 0, packSizes: [], folders: [] };
  let id = r.number();
  if (id === K_PACK_INFO) {
    info.packPos = r.number();
    const count = r.count();
    for (id = r.number(); id !== K_END; id = r.number()) {
      if (id === K_SIZE) for (let i = 0; i < count; i++) info.packSizes.push(r.number());
      else if (id === K_CRC) r.digests(count);
      else r.skip(r.number());
    }
    id = r.number();
  }
  if (id === K_UNPACK_INFO) {
    if (r.number() !== K_FOLDER) throw new Malformed();
    const count = r.count();
    // Folders held in another stream ("external"): no writer does this.
    if (r.byte() !== 0) throw new Unreadable();
    for (let i = 0; i < count; i++) info.folders.push(readFolder(r));
    if (r.number() !== K_UNPACK_SIZE) throw new Malformed();
    for (const folder of info.folders) {
      const outputs = folder.coders.reduce((n, c) => n + c.outStreams, 0);
      for (let i = 0; i < outputs; i++) folder.unpackSizes.push(r.number());
    }
    for (id = r.number(); id !== K_END; id = r.number()) {
      if (id === K_CRC) {
        const crcs = r.digests(count);
        info.folders.forEach((f, i) => (f.unpackCrc = crcs[i]));
      } else r.skip(r.number());
    }
    id = r.number();
  }
  if (id === K_SUBSTREAMS) {
    readSubStreams(r, info.folders);
    id = r.number();
  }
  if (id !== K_END) throw new Malformed();
  return info;
}

function readFolder(r: Reader): Folder {
  const count = r.number();
  if (count === 0 || count > MAX_CODERS) throw new Unreadable();
  const coders: Coder[] = [];
  let inputs = 0;
  let outputs = 0;
  for (let i = 0; i < count; i++) {
    const flags = r.byte();
    if (flags & 0xc0) throw new Unreadable();
    const id = r.bytes(flags & 0x0f).toString('hex');
    const complex = (flags & 0x10) !== 0;
    const inStreams = complex ? r.number() : 1;
    const outStreams = complex ? r.number() : 1;
    if (inStreams > MAX_CODERS || outStreams > MAX_CODERS) throw new Unreadable();
    const properties = flags & 0x20 ? r.bytes(r.number()) : NOTHING;
    coders.push({ id, inStreams, outStreams, properties });
    inputs += inStreams;
    outputs += outStreams;
  }
  const bindPairs = outputs - 1;
  if (bindPairs > inputs) throw new Malformed();
  for (let i = 0; i < bindPairs; i++) {
    r.number();
    r.number();
  }
  const packedStreams = inputs - bindPairs;
  if (packedStreams > 1) for (let i = 0; i < packedStreams; i++) r.number();
  return { coders, unpackSizes: [], packedStreams };
}

/** How each folder's output splits into files; read only to get past it. */
function readSubStreams(r: Reader, folders: Folder[]): void {
  const streams = folders.map(() => 1);
  let id = r.number();
  for (; ; id = r.number()) {
    if (id === K_NUM_UNPACK_STREAMS) {
      for (let i = 0; i < folders.length; i++) streams[i] = r.count();
      continue;
    }
    if (id === K_CRC || id === K_SIZE || id === K_END) break;
    r.skip(r.number());
  }
  if (id === K_SIZE) {
    for (const n of streams) for (let i = 1; i < n; i++) r.number();
    id = r.number();
  }
  const digests = folders.reduce((sum, f, i) => sum + (streams[i] === 1 && f.unpackCrc !== undefined ? 0 : streams[i]!), 0);
  for (; id !== K_END; id = r.number()) {
    if (id === K_CRC) r.digests(digests);
    else r.skip(r.number());
  }
}

/** `count` names in UTF-16LE, each ending with a zero character. */
function utf16Names(bytes: Buffer, count: number): string[] {
  const names: string[] = [];
  let start = 0;
  for (let at = 0; names.length < count; at += 2) {
    if (at + 1 >= bytes.length) throw new Malformed();
    if (bytes[at] === 0 && bytes[at + 1] === 0) {
      names.push(bytes.toString('utf16le', start, at));
      start = at + 2;
    }
  }
  return names;
}

/** 7z's numbers: the first byte's leading one bits say how many bytes follow (little-endian). */
class Reader {
  constructor(
    private readonly buf: Buffer,
    private at: number,
  ) {}

  byte(): number {
    if (this.at >= this.buf.length) throw new Malformed();
    return this.buf[this.at++]!;
  }

  number(): number {
    const first = this.byte();
    let mask = 0x80;
    let value = 0;
    for (let i = 0; i < 8; i++) {
      if (!(first & mask)) return value + (first & (mask - 1)) * 2 ** (8 * i);
      value += this.byte() * 2 ** (8 * i);
      mask >>= 1;
    }
    if (value > Number.MAX_SAFE_INTEGER) throw new Malformed();
    return value;
  }

  /** A count of items that each take at least a byte: no more than the bytes left. */
  count(): number {
    const n = this.number();
    if (n > this.buf.length - this.at + 1) throw new Malformed();
    return n;
  }

  skip(n: number): void {
    if (n > this.buf.length - this.at) throw new Malformed();
    this.at += n;
  }

  bytes(n: number): Buffer {
    const start = this.at;
    this.skip(n);
    return this.buf.subarray(start, start + n);
  }

  /** `count` bits, most significant first. */
  bits(count: number): boolean[] {
    const bytes = this.bytes(Math.ceil(count / 8));
    const bits: boolean[] = [];
    for (let i = 0; i < count; i++) bits.push((bytes[i >> 3]! & (0x80 >> (i & 7))) !== 0);
    return bits;
  }

  /** CRCs for `count` items: an "all defined" byte (or a bit per item), then one UInt32 per defined. */
  digests(count: number): (number | undefined)[] {
    const defined = this.byte() ? undefined : this.bits(count);
    // Each defined one takes four bytes: a count larger than the bytes left is not allocated.
    if (!defined && count * 4 > this.buf.length - this.at) throw new Malformed();
    const crcs: (number | undefined)[] = [];
    for (let i = 0; i < count; i++) crcs.push(!defined || defined[i] ? this.bytes(4).readUInt32LE(0) : undefined);
    return crcs;
  }
}

function readUInt64(buf: Buffer, at: number): number {
  const value = buf.readUInt32LE(at) + buf.readUInt32LE(at + 4) * 2 ** 32;
  if (value > Number.MAX_SAFE_INTEGER) throw new Malformed();
  return value;
}
