// Lists a 7z attachment's files as its bytes stream by: names for `archive.entries`, and whether the
// content is encrypted. A 7z archive is a signature header (32 bytes) that gives where the archive's
// header is, the packed data, then that header, last; 7-Zip and libarchive compress the header with
// LZMA (libarchive with LZMA2 when told to) and put its packed bytes just before it. So the lister keeps the bytes from a bounded distance
// before the header to its end, and reads them when the stream reaches the end; nothing else is kept.
// Every checksum is verified: the signature header's, the header's, the decoded header's.
//
// Names are what 7-Zip shows: the header's UTF-16 names, Windows' separator read as "/", a directory's
// ending with "/". At the start of the attachment a 7z signature is an archive: one Douane cannot read
// whole is reported incomplete (its header encrypted with `7z -mhe`, packed otherwise than by LZMA(2),
// past the bounds below, cut off before its end as the first volume of a split archive is, a signature
// header zeroed, which 7-Zip repairs, or anything 7-Zip would not accept). Behind other bytes, 7-Zip
// looks for a signature as far as 8 MiB in (a self-extractor's stub comes first) and opens the first
// archive that reads; so does the lister, following each signature whose header's checksum holds until
// its header is reached. One whose header's checksum then fails is taken for chance bytes (a 7z deflated
// inside a zip shows its first bytes); once it holds, the archive is real, and whatever else is wrong
// makes the listing incomplete.

import { crc32 } from 'node:zlib';
import { ArchiveNames, normalizeName, type ArchiveListing } from './archive-names.js';
import { LzmaError, lzma2Decode, lzmaDecode, lzmaProperties } from './lzma.js';

export interface SevenZipListing extends ArchiveListing {
  /** a 7z signature header was found (at the start, or behind other bytes with a valid checksum) */
  is7z: boolean;
  /** some file's content, or the header itself, is encrypted */
  encrypted: boolean;
  /** some file has no name: 7-Zip names it after the archive (see defaultName) */
  unnamed: boolean;
}

const SIGNATURE = Buffer.from([0x37, 0x7a, 0xbc, 0xaf, 0x27, 0x1c]);
const MAJOR_VERSION = 0;
const START_HEADER = 32;
// 7-Zip opens a 7z that begins up to 8 MiB into a file (behind a self-extractor's stub, or any bytes).
const MAX_SIGNATURE_OFFSET = 8 * 1024 * 1024;
// The header, packed or not, is read whole: a name and a few fields per file, about 200 KB for ten
// thousand files. Larger ones are not read (the listing is then incomplete). How much may be read in
// all is the caller's budget (one message's).
const MAX_HEADER = 4 * 1024 * 1024;
// Bytes kept before the header, where its packed form lies.
const MAX_PACKED_HEADER = 4 * 1024 * 1024;
// A packed header is decoded in one call, on the thread every session shares: LZMA decodes about 6 MB a
// second at worst here, so at most this much (under 100 ms; some 25 000 files' names). A larger one is
// not read.
const MAX_DECODED_HEADER = 512 * 1024;
const MAX_FILES = 100_000;
const MAX_FOLDERS = 100_000;
const MAX_CODERS = 32;
// Signatures behind other bytes followed at once: more is a crafted file.
const MAX_CANDIDATES = 4;

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
/** an id too large to be any known one (7-Zip skips such properties) */
const K_UNKNOWN = -1;

// Coder ids, as numbers written in hex (7-Zip reads an id as a big-endian number: leading zero bytes
// change nothing).
const CODER_COPY = '0';
const CODER_LZMA = '30101';
const CODER_LZMA2 = '21';
const CODER_AES = '6f10701';

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

/** What one archive's header says, kept until every earlier signature is settled. */
interface Contents {
  names: string[];
  encrypted: boolean;
  unnamed: boolean;
}

/** A signature header whose checksum holds, followed until its header is reached. */
interface Candidate {
  /** where the signature begins; positions in the archive count from there */
  base: number;
  /** the bytes [keepFrom, end) of the attachment are kept; the header is [header, end) */
  keepFrom: number;
  header: number;
  end: number;
  crc: number;
  kept: Buffer[];
  /** once settled: what it holds, not an archive after all, or an archive that cannot be read whole */
  outcome?: Contents | 'chance' | { unreadable: true; encrypted: boolean };
}

const NOTHING = Buffer.alloc(0);

export class SevenZipLister {
  readonly listing: SevenZipListing;
  private readonly names: ArchiveNames;
  private done = false;
  /** signatures are looked for until one at the start, or 8 MiB in */
  private searching = true;
  /** where in the attachment the next chunk begins */
  private offset = 0;
  /** the last bytes searched: a signature header may straddle two chunks */
  private tail = NOTHING;
  /** in the order of their signatures */
  private readonly candidates: Candidate[] = [];

  constructor(
    maxEntries = 1000,
    private readonly budget: { lzma: number; exhausted?: boolean } = { lzma: MAX_HEADER },
  ) {
    this.names = new ArchiveNames(maxEntries, { opensArchives: false });
    this.listing = { is7z: false, entries: this.names.entries, complete: true, encrypted: false, unnamed: false };
  }

  push(chunk: Buffer): void {
    const start = this.offset;
    this.offset += chunk.length;
    if (this.done) return;
    if (this.searching) this.search(chunk, start);
    for (const c of this.candidates) if (!c.outcome) this.keep(c, chunk, start);
    this.settle();
  }

  /** The attachment ended: an archive whose header was not reached is cut short. */
  end(): void {
    for (const c of this.candidates) c.outcome ??= c.base === 0 ? { unreadable: true, encrypted: false } : 'chance';
    this.settle();
    this.finish();
  }

  private search(chunk: Buffer, start: number): void {
    const buf = this.tail.length ? Buffer.concat([this.tail, chunk]) : chunk;
    const bufStart = start - this.tail.length;
    this.tail = NOTHING;
    for (let at = buf.indexOf(SIGNATURE); at >= 0 && this.searching; at = buf.indexOf(SIGNATURE, at + 1)) {
      if (bufStart + at > MAX_SIGNATURE_OFFSET) {
        this.searching = false;
        break;
      }
      if (at + START_HEADER > buf.length) {
        // The rest of the signature header is in the next chunk.
        this.tail = Buffer.from(buf.subarray(at));
        return;
      }
      this.startHeader(buf.subarray(at, at + START_HEADER), bufStart + at);
    }
    if (start + chunk.length > MAX_SIGNATURE_OFFSET + SIGNATURE.length) this.searching = false;
    if (this.searching) this.tail = Buffer.from(buf.subarray(Math.max(0, buf.length - SIGNATURE.length + 1)));
  }

  /** The 32-byte signature header at `at`: followed when it is one 7-Zip would open. */
  private startHeader(bytes: Buffer, at: number): void {
    const atStart = at === 0;
    const holds = crc32(bytes.subarray(12, 32)) === bytes.readUInt32LE(8);
    // At the start a signature is an archive, whatever follows it (7-Zip repairs a zeroed signature
    // header by looking for the header at the end); behind other bytes, only with a valid checksum.
    if (!holds && !atStart) return;
    if (atStart) this.searching = false;
    const offset = readUInt64(bytes, 12);
    const size = readUInt64(bytes, 20);
    const unreadable = !holds || bytes[6] !== MAJOR_VERSION || offset === undefined || size === undefined;
    if (!atStart && unreadable) return; // 7-Zip looks further
    const base: Candidate = { base: at, keepFrom: 0, header: 0, end: 0, crc: bytes.readUInt32LE(28), kept: [] };
    if (unreadable || size > MAX_HEADER) {
      this.candidates.push({ ...base, outcome: { unreadable: true, encrypted: false } });
    } else if (size === 0) {
      // An empty archive: no header at all.
      this.candidates.push({ ...base, outcome: { names: [], encrypted: false, unnamed: false } });
    } else {
      const header = at + START_HEADER + offset;
      this.candidates.push({ ...base, keepFrom: Math.max(at + START_HEADER, header - MAX_PACKED_HEADER), header, end: header + size });
    }
    if (this.candidates.filter((c) => !c.outcome).length > MAX_CANDIDATES) {
      this.candidates.push({ ...base, outcome: { unreadable: true, encrypted: false } });
      this.searching = false;
    }
  }

  private keep(c: Candidate, chunk: Buffer, start: number): void {
    const from = Math.max(c.keepFrom, start);
    const to = Math.min(c.end, start + chunk.length);
    if (to > from) c.kept.push(Buffer.from(chunk.subarray(from - start, to - start)));
    if (start + chunk.length < c.end) return;
    const kept = Buffer.concat(c.kept);
    c.kept = [];
    c.outcome = this.read(c, kept);
  }

  /** Commits the first signature's outcome once every earlier one is settled. */
  private settle(): void {
    while (this.candidates.length && this.candidates[0]!.outcome) {
      const outcome = this.candidates.shift()!.outcome!;
      if (outcome === 'chance') continue;
      this.listing.is7z = true;
      this.listing.encrypted = outcome.encrypted;
      if ('unreadable' in outcome) this.listing.complete = false;
      else {
        this.listing.unnamed = outcome.unnamed;
        for (const name of outcome.names) this.names.add(name);
        if (!this.names.complete) this.listing.complete = false;
      }
      this.finish();
      return;
    }
    if (!this.searching && !this.candidates.length) this.finish();
  }

  /**
   * Reads a candidate's header from the bytes kept (which begin at its keepFrom). Chance bytes until
   * the header's checksum holds; an archive that cannot be read whole after that.
   */
  private read(c: Candidate, kept: Buffer): Candidate['outcome'] {
    const plain = kept.subarray(c.header - c.keepFrom);
    if (crc32(plain) !== c.crc) return c.base === 0 ? { unreadable: true, encrypted: false } : 'chance';
    const contents: Contents = { names: [], encrypted: false, unnamed: false };
    try {
      this.charge(plain.length);
      const r = new Reader(plain, 0);
      let id = r.id();
      let header = plain;
      if (id === K_ENCODED_HEADER) {
        // One level, as 7-Zip reads it.
        header = this.unpackHeader(readStreamsInfo(r), kept, c, contents);
        const packed = new Reader(header, 0);
        id = packed.id();
        readHeader(packed, contents, id);
      } else readHeader(r, contents, id);
      return contents;
    } catch (err) {
      if (err instanceof Malformed || err instanceof Unreadable || err instanceof LzmaError) return { unreadable: true, encrypted: contents.encrypted };
      throw err;
    }
  }

  /** Counts header bytes against the budget: past it, none is read. */
  private charge(cost: number): void {
    if (cost > this.budget.lzma) {
      this.budget.exhausted = true;
      throw new Unreadable();
    }
    this.budget.lzma -= cost;
  }

  /** The packed header, decoded: one folder of LZMA, LZMA2 or stored, its bytes among those kept. */
  private unpackHeader(streams: StreamsInfo, kept: Buffer, c: Candidate, contents: Contents): Buffer {
    const folder = streams.folders[0];
    if (streams.folders.length !== 1 || !folder || folder.packedStreams !== 1 || streams.packSizes.length < 1) throw new Malformed();
    if (folder.coders.some((coder) => coder.id === CODER_AES)) {
      contents.encrypted = true;
      throw new Unreadable();
    }
    const coder = folder.coders[0]!;
    if (folder.coders.length !== 1 || ![CODER_LZMA, CODER_LZMA2, CODER_COPY].includes(coder.id)) throw new Unreadable();
    const size = folder.unpackSizes[0]!;
    if (size > MAX_HEADER) throw new Unreadable();
    const packedAt = c.base + START_HEADER + streams.packPos - c.keepFrom;
    const packedSize = streams.packSizes[0]!;
    if (packedAt < 0) throw new Unreadable();
    if (packedAt + packedSize > kept.length) throw new Malformed();
    const packed = kept.subarray(packedAt, packedAt + packedSize);
    let header: Buffer;
    if (coder.id === CODER_COPY) {
      if (packedSize < size) throw new Malformed();
      header = packed.subarray(0, size);
    } else if (size > MAX_DECODED_HEADER) {
      throw new Unreadable();
    } else if (coder.id === CODER_LZMA2) {
      // LZMA2 allows literal settings up to 4 bits in all (see below).
      this.charge(size + (0x300 << 4));
      header = lzma2Decode(packed, size);
    } else {
      // The decoder's tables cost as much as the output, for the largest literal settings.
      const { lc, lp } = lzmaProperties(coder.properties);
      this.charge(size + (0x300 << (lc + lp)));
      header = lzmaDecode(packed, 0, coder.properties, size);
    }
    if (folder.unpackCrc !== undefined && crc32(header) !== folder.unpackCrc) throw new Malformed();
    return header;
  }

  private finish(): void {
    this.done = true;
    this.searching = false;
    this.tail = NOTHING;
    this.candidates.length = 0;
  }
}

/** The header proper (after its first id): the streams (for encryption) and the files (for names). */
function readHeader(r: Reader, contents: Contents, first: number): void {
  if (first !== K_HEADER) throw new Malformed();
  let id = r.id();
  if (id === K_ARCHIVE_PROPERTIES) {
    for (let type = r.id(); type !== K_END; type = r.id()) r.skip(r.number());
    id = r.id();
  }
  if (id === K_ADDITIONAL_STREAMS) {
    readStreamsInfo(r);
    id = r.id();
  }
  if (id === K_MAIN_STREAMS) {
    const main = readStreamsInfo(r);
    if (main.folders.some((f) => f.coders.some((c) => c.id === CODER_AES))) contents.encrypted = true;
    id = r.id();
  }
  if (id === K_FILES) {
    readFiles(r, contents);
    id = r.id();
  }
  if (id !== K_END) throw new Malformed();
}

function readFiles(r: Reader, contents: Contents): void {
  const count = r.number();
  if (count > MAX_FILES) throw new Unreadable();
  let emptyStream: boolean[] | undefined;
  let empties = 0;
  let emptyFile: boolean[] | undefined;
  let names: string[] | undefined;
  for (let type = r.id(); type !== K_END; type = r.id()) {
    const size = r.number();
    const data = new Reader(r.bytes(size), 0);
    if (type === K_EMPTY_STREAM) {
      emptyStream = data.bits(count);
      empties = emptyStream.filter(Boolean).length;
    } else if (type === K_EMPTY_FILE) emptyFile = data.bits(empties);
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
    if (name === '' || name === '/') contents.unnamed = true;
    else contents.names.push(name);
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
  let id = r.id();
  if (id === K_PACK_INFO) {
    info.packPos = r.number();
    const count = r.count();
    for (id = r.id(); id !== K_END; id = r.id()) {
      if (id === K_SIZE) for (let i = 0; i < count; i++) info.packSizes.push(r.number());
      else if (id === K_CRC) r.skipDigests(count);
      else r.skip(r.number());
    }
    id = r.id();
  }
  if (id === K_UNPACK_INFO) {
    r.waitFor(K_FOLDER);
    const count = r.count();
    if (count > MAX_FOLDERS) throw new Unreadable();
    // Folders held in another stream ("external"): no writer does this.
    if (r.byte() !== 0) throw new Unreadable();
    for (let i = 0; i < count; i++) info.folders.push(readFolder(r));
    r.waitFor(K_UNPACK_SIZE);
    for (const folder of info.folders) {
      const outputs = folder.coders.reduce((n, c) => n + c.outStreams, 0);
      for (let i = 0; i < outputs; i++) folder.unpackSizes.push(r.number());
    }
    for (id = r.id(); id !== K_END; id = r.id()) {
      if (id === K_CRC) {
        const crcs = r.digests(count);
        info.folders.forEach((f, i) => (f.unpackCrc = crcs[i]));
      } else r.skip(r.number());
    }
    id = r.id();
  }
  if (id === K_SUBSTREAMS) {
    readSubStreams(r, info.folders);
    id = r.id();
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
    // At most eight bytes, as 7-Zip reads them; as a number (leading zero bytes dropped).
    if ((flags & 0x0f) > 8) throw new Unreadable();
    const id = BigInt(`0x${r.bytes(flags & 0x0f).toString('hex') || '0'}`).toString(16);
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
  let id = r.id();
  for (; ; id = r.id()) {
    if (id === K_NUM_UNPACK_STREAMS) {
      for (let i = 0; i < folders.length; i++) streams[i] = r.count();
      continue;
    }
    if (id === K_CRC || id === K_SIZE || id === K_END) break;
    r.skip(r.number());
  }
  if (id === K_SIZE) {
    for (const n of streams) for (let i = 1; i < n; i++) r.number();
    id = r.id();
  }
  const digests = folders.reduce((sum, f, i) => sum + (streams[i] === 1 && f.unpackCrc !== undefined ? 0 : streams[i]!), 0);
  for (; id !== K_END; id = r.id()) {
    if (id === K_CRC) r.skipDigests(digests);
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

  /** A size or a count: one past what a number holds exactly is not a real one. */
  number(): number {
    const value = this.uint64();
    if (value > Number.MAX_SAFE_INTEGER) throw new Malformed();
    return value;
  }

  /** A property id: any too large to be a known one is read as unknown (7-Zip skips those). */
  id(): number {
    const value = this.uint64();
    return value > Number.MAX_SAFE_INTEGER ? K_UNKNOWN : value;
  }

  /** 7z's variable-length number: the first byte's leading one bits say how many bytes follow. */
  private uint64(): number {
    const first = this.byte();
    let mask = 0x80;
    let value = 0;
    for (let i = 0; i < 8; i++) {
      if (!(first & mask)) return value + (first & (mask - 1)) * 2 ** (8 * i);
      value += this.byte() * 2 ** (8 * i);
      mask >>= 1;
    }
    return value;
  }

  /** Skips properties (each with its size) until `id`, as 7-Zip does. */
  waitFor(id: number): void {
    for (let type = this.id(); type !== id; type = this.id()) {
      if (type === K_END) throw new Malformed();
      this.skip(this.number());
    }
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

  /** Skips CRCs for `count` items (see digests) without keeping them. */
  skipDigests(count: number): void {
    let defined = count;
    if (!this.byte()) {
      defined = 0;
      const bits = this.bytes(Math.ceil(count / 8));
      bits.forEach((byte, i) => {
        // The last byte's bits past `count` are padding.
        let b = i === bits.length - 1 && count % 8 ? byte & (0xff << (8 - (count % 8))) : byte;
        for (; b; b &= b - 1) defined++;
      });
    }
    this.skip(defined * 4);
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

/** A 64-bit field, or undefined past what a number holds exactly. */
function readUInt64(buf: Buffer, at: number): number | undefined {
  const value = buf.readUInt32LE(at) + buf.readUInt32LE(at + 4) * 2 ** 32;
  return value > Number.MAX_SAFE_INTEGER ? undefined : value;
}
