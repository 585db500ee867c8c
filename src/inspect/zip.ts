// Lists a zip attachment's entries as the decoded bytes stream by, decompressing only inner archives: names
// for `archive.entries`, and whether any entry is encrypted (its content can then be neither scanned nor
// trusted). Both the local file headers and the central directory (at the end) are read, because unzip
// tools extract under the central directory's names and the two may disagree. Data before the archive
// (a self-extractor's stub, or junk put there to hide it) does not hide it: the headers are looked for
// anywhere; an end record does not end the listing (one inside an entry's data would hide what follows).
//
// An archive inside the zip that a double click opens (zip, RAR, disk image) is listed too, as its entry
// streams by, inflated when deflated: a zip holding a disk image holding a shortcut is a known way past
// filters that only look one level in (src/inspect/nested.ts). Its names come as "outer.zip/inner.iso/name".
// Three levels at most, and a bounded number of bytes inflated (and of inner archives) for the whole
// message: one that cannot be opened (deeper, another method, past the budget: a zip bomb) leaves the
// listing incomplete.
// An encrypted one is one more name, and the zip is said encrypted.

import { inflateBudget, type InflateBudget } from './deflate.js';
import { ArchiveNames, nameFromBytes, normalizeName, type ArchiveListing } from './archive-names.js';
import { MAX_NESTING, NESTED_ARCHIVE, NestedArchive } from './nested.js';

const SIG_LOCAL = 0x04034b50; // PK\x03\x04
const SIG_CENTRAL = 0x02014b50; // PK\x01\x02: the central directory, after the last entry
const SIG_END = 0x06054b50; // PK\x05\x06: end of central directory (alone: an empty zip)
const PK = Buffer.from('PK', 'latin1');
const END_SIGNATURE = Buffer.from([0x50, 0x4b, 0x05, 0x06]);
const SIG_ZIP64_LOCATOR = 0x07064b50; // PK\x06\x07
const ZIP64_LOCATOR_SIZE = 20;
const ZIP64_END_SIGNATURE = Buffer.from([0x50, 0x4b, 0x06, 0x06]);

const LOCAL_HEADER_SIZE = 30;
const CENTRAL_HEADER_SIZE = 46;
const END_RECORD_SIZE = 22;
/** an end record and the longest comment it may carry */
const END_WINDOW = END_RECORD_SIZE + 0xffff;
/** Info-ZIP's Unicode Path extra field: the name unzip and 7-Zip extract under, in place of the header's */
const UNICODE_PATH = 0x7075;
// Entry names longer than this are not real names (and the 16-bit length could ask for 64 KB).
const MAX_NAME_LENGTH = 4096;

const STORED = 0;
const DEFLATED = 8;
export interface ZipListing extends ArchiveListing {
  /** the content starts like a zip */
  isZip: boolean;
  /** how many local headers were seen (may exceed entries.length) */
  entryCount: number;
  /** some entry has the encryption flag (general purpose bit 0) */
  encrypted: boolean;
}

type State =
  | { kind: 'start' } // waiting for the first 4 bytes
  | { kind: 'header'; need: number } // collecting a local header (fixed part, then name and extra field)
  | { kind: 'central'; need: number } // collecting a central directory header (fixed part, name, extra, comment)
  | { kind: 'skip'; left: number } // inside an entry's data of known size
  | { kind: 'next' } // where the next header must begin, the data before it having been walked by its size
  | { kind: 'scan' } // looking for the next signature (after the data, or when its size is unknown)
  | { kind: 'done' };

export class ZipLister {
  private state: State = { kind: 'start' };
  /** the archive inside the entry whose data is streaming by, if it is one */
  private nested: NestedArchive | undefined;
  private pending: Buffer[] = [];
  private pendingLength = 0;
  // The last bytes of a chunk scanned without a match: a signature may straddle two chunks.
  private tail: Buffer | undefined;
  private readonly names: ArchiveNames;
  readonly listing: ZipListing;

  /** the archive names of the local headers seen (to tell whether the central directory names another) */
  private readonly localArchives = new Set<string>();
  /** the attachment's last bytes, where an end record would be: a ring, written at `ringAt` */
  private ring: Buffer | undefined;
  private ringAt = 0;
  private total = 0;
  /** where the current chunk starts in the attachment */
  private chunkStart = 0;
  /** where each central directory header read starts in the attachment */
  private readonly centralStarts: number[] = [];
  /** where the central directory header being collected starts */
  private centralAt = 0;

  constructor(
    private readonly maxEntries = 1000,
    private readonly depth = 0,
    private readonly budget: InflateBudget = inflateBudget(),
  ) {
    this.names = new ArchiveNames(maxEntries);
    this.listing = { isZip: false, entries: this.names.entries, entryCount: 0, encrypted: false, complete: true };
  }

  push(chunk: Buffer): void {
    this.chunkStart = this.total;
    this.keepLast(chunk);
    try {
      this.consume(chunk);
    } catch {
      // A malformed archive must not break inspection; what was listed so far stands, but names past the
      // fault may be missing.
      if (this.listing.isZip) this.listing.complete = false;
      this.state = { kind: 'done' };
      this.endNested();
    }
  }

  /** The attachment ended: an inner archive still open (the zip was cut short) gives its last names. */
  end(): void {
    this.endNested();
    // Extractors go by the central directory the end record describes: the `size` bytes just before it (or
    // before the ZIP64 end record). Local headers were read, yet fewer central headers in that range than
    // the end record counts (or none at all, when its count and size are not known): a local header's size
    // lied, and what the walk stepped over unread, entries and central headers, is what extractors extract.
    // Headers found elsewhere (in a comment after a lying size) do not count. (A zip cut short has no end
    // record.)
    if (this.listing.entryCount > 0) {
      const end = this.endRecord();
      if (end) {
        const from = end.exact ? end.at - end.size : 0;
        const read = this.centralStarts.filter((at) => at >= from && at < end.at).length;
        if (read === 0 || (end.exact && read < end.count)) this.listing.complete = false;
      }
    }
    this.ring = undefined;
  }

  /** Copies the chunk's last bytes into the ring: each byte once, however small the chunks. */
  private keepLast(chunk: Buffer): void {
    this.ring ??= Buffer.allocUnsafe(END_WINDOW);
    this.total += chunk.length;
    const part = chunk.length > END_WINDOW ? chunk.subarray(chunk.length - END_WINDOW) : chunk;
    const first = Math.min(part.length, END_WINDOW - this.ringAt);
    part.copy(this.ring, this.ringAt, 0, first);
    part.copy(this.ring, 0, first);
    this.ringAt = (this.ringAt + part.length) % END_WINDOW;
  }

  /**
   * The last end of central directory record in the attachment's last bytes whose comment fits before the
   * end (what follows it is tolerated, as extractors do): where the central directory it closes ends, its
   * entry count and size — from the ZIP64 end record when there is one (`zip -fz`, over 65535 entries).
   * Not `exact` when those are not known: then only "some" central header is expected before it.
   */
  private endRecord(): { at: number; count: number; size: number; exact: boolean } | undefined {
    const ring = this.ring ?? Buffer.alloc(0);
    const tail = this.total < END_WINDOW ? ring.subarray(0, this.total) : Buffer.concat([ring.subarray(this.ringAt), ring.subarray(0, this.ringAt)]);
    const base = this.total - tail.length;
    for (let i = tail.lastIndexOf(END_SIGNATURE); i >= 0; i = i > 0 ? tail.lastIndexOf(END_SIGNATURE, i - 1) : -1) {
      if (i + END_RECORD_SIZE > tail.length || i + END_RECORD_SIZE + tail.readUInt16LE(i + 20) > tail.length) continue;
      const count = tail.readUInt16LE(i + 10);
      const size = tail.readUInt32LE(i + 12);
      // A ZIP64 locator just before it points to the ZIP64 end record, which just precedes the locator.
      const locator = i - ZIP64_LOCATOR_SIZE;
      if (locator >= 0 && tail.readUInt32LE(locator) === SIG_ZIP64_LOCATOR) {
        const record = tail.lastIndexOf(ZIP64_END_SIGNATURE, locator - 1);
        const whole = record >= 0 && record + 56 <= locator && record + 12 + Number(tail.readBigUInt64LE(record + 4)) === locator;
        if (!whole) return { at: base + i, count, size, exact: false };
        return { at: base + record, count: Number(tail.readBigUInt64LE(record + 32)), size: Number(tail.readBigUInt64LE(record + 40)), exact: true };
      }
      return { at: base + i, count, size, exact: count !== 0xffff && size !== 0xffffffff };
    }
    return undefined;
  }

  private consume(chunk: Buffer): void {
    let pos = 0;
    while (pos < chunk.length) {
      const s = this.state;
      switch (s.kind) {
        case 'done':
          return;
        case 'start': {
          pos = this.collect(chunk, pos, 4);
          if (this.pendingLength < 4) return;
          const first = this.takePending();
          const sig = first.readUInt32LE(0);
          if (sig === SIG_LOCAL) {
            this.listing.isZip = true;
            this.pending = [PK_LOCAL];
            this.pendingLength = 4;
            this.state = { kind: 'header', need: LOCAL_HEADER_SIZE };
          } else if (sig === SIG_END) {
            this.listing.isZip = true;
            this.state = { kind: 'done' };
          } else {
            // Not a zip at its start: one may still follow whatever comes first.
            this.tail = Buffer.from(first.subarray(1));
            this.state = { kind: 'scan' };
          }
          break;
        }
        case 'header': {
          pos = this.collect(chunk, pos, s.need);
          if (this.pendingLength < s.need) return;
          const head = this.pending.length === 1 ? this.pending[0]! : Buffer.concat(this.pending, this.pendingLength);
          const nameLen = head.readUInt16LE(26);
          const extraLen = head.readUInt16LE(28);
          if (nameLen > MAX_NAME_LENGTH) {
            // Not a plausible header: a signature found by chance inside compressed data.
            this.takePending();
            this.state = { kind: 'scan' };
            break;
          }
          const full = LOCAL_HEADER_SIZE + nameLen + extraLen;
          if (s.need < full) {
            this.pending = [head];
            this.state = { kind: 'header', need: full };
            break;
          }
          this.takePending();
          this.state = this.entry(head);
          break;
        }
        case 'central': {
          pos = this.collect(chunk, pos, s.need);
          if (this.pendingLength < s.need) return;
          const head = this.pending.length === 1 ? this.pending[0]! : Buffer.concat(this.pending, this.pendingLength);
          const nameLen = head.readUInt16LE(28);
          if (nameLen > MAX_NAME_LENGTH) {
            this.takePending();
            this.state = { kind: 'scan' };
            break;
          }
          const full = CENTRAL_HEADER_SIZE + nameLen + head.readUInt16LE(30) + head.readUInt16LE(32);
          if (s.need < full) {
            this.pending = [head];
            this.state = { kind: 'central', need: full };
            break;
          }
          this.takePending();
          this.centralStarts.push(this.centralAt);
          const flags = head.readUInt16LE(8);
          if (flags & 0x0001) this.listing.encrypted = true;
          const name = this.addName(head.subarray(CENTRAL_HEADER_SIZE, CENTRAL_HEADER_SIZE + nameLen), flags);
          // Extractors go by the central directory: an archive it names that no local header did was not opened.
          if (NESTED_ARCHIVE.test(normalizeName(name)) && !this.localArchives.has(normalizeName(name))) this.listing.complete = false;
          const unicode = this.addUnicodePath(head.subarray(CENTRAL_HEADER_SIZE + nameLen, CENTRAL_HEADER_SIZE + nameLen + head.readUInt16LE(30)));
          if (unicode !== undefined && NESTED_ARCHIVE.test(unicode) && !this.localArchives.has(unicode)) this.listing.complete = false;
          this.state = { kind: 'scan' };
          break;
        }
        case 'skip': {
          const n = Math.min(s.left, chunk.length - pos);
          if (this.nested) this.feedNested(chunk.subarray(pos, pos + n));
          pos += n;
          s.left -= n;
          if (s.left === 0) {
            this.endNested();
            this.state = { kind: 'next' };
          }
          break;
        }
        case 'next': {
          pos = this.collect(chunk, pos, 4);
          if (this.pendingLength < 4) return;
          const sig = (this.pending.length === 1 ? this.pending[0]! : Buffer.concat(this.pending, this.pendingLength)).readUInt32LE(0);
          if (sig === SIG_LOCAL) this.state = { kind: 'header', need: LOCAL_HEADER_SIZE };
          else if (sig === SIG_CENTRAL) {
            this.centralAt = this.chunkStart + pos - 4;
            this.state = { kind: 'central', need: CENTRAL_HEADER_SIZE };
          }
          else {
            // A data descriptor, or not a header at all: the scan finds what follows, these bytes included.
            this.tail = this.takePending();
            this.state = { kind: 'scan' };
          }
          break;
        }
        case 'scan':
          pos = this.scan(chunk, pos);
          break;
      }
    }
  }

  /** Records one entry from its complete local header, and says how to get past its data. */
  private entry(head: Buffer): State {
    const flags = head.readUInt16LE(6);
    const nameLen = head.readUInt16LE(26);
    const extraLen = head.readUInt16LE(28);
    let compressed = head.readUInt32LE(18);
    if (flags & 0x0001) this.listing.encrypted = true;
    this.listing.entryCount++;
    this.endNested();
    const name = normalizeName(this.addName(head.subarray(LOCAL_HEADER_SIZE, LOCAL_HEADER_SIZE + nameLen), flags));
    const extra = head.subarray(LOCAL_HEADER_SIZE + nameLen, LOCAL_HEADER_SIZE + nameLen + extraLen);
    // The same data under either of its names (a Unicode Path name is the header's in another encoding,
    // or another name altogether): opened if either says archive, and known under both.
    const names = [name, this.addUnicodePath(extra)].filter((n): n is string => n !== undefined && NESTED_ARCHIVE.test(n));
    if (names.length) this.openNested(names[0]!, head.readUInt16LE(8), (flags & 0x0001) !== 0);
    for (const n of names) this.localArchives.add(n);
    if (compressed === 0xffffffff) compressed = zip64CompressedSize(extra, head.readUInt32LE(22) === 0xffffffff) ?? 0;
    // Bit 3: sizes follow the data in a descriptor, and the header's are usually zero: the scan after the
    // data finds the next header (and steps over a descriptor). Otherwise the data is walked by its size
    // (an archive inside is data, not entries), and the next header is expected right after it.
    if (compressed > 0) return { kind: 'skip', left: compressed };
    return flags & 0x0008 ? { kind: 'scan' } : { kind: 'next' };
  }

  /** An archive inside this one: listed as its data streams by, or the listing says it could not be. */
  private openNested(name: string, method: number, encrypted: boolean): void {
    this.localArchives.add(name);
    // Encrypted, it is one more name (the zip is said encrypted, which the policy judges).
    if (encrypted) return;
    if (this.depth >= MAX_NESTING || (method !== STORED && method !== DEFLATED) || this.budget.archives <= 0) {
      if (this.depth < MAX_NESTING && (method === STORED || method === DEFLATED)) this.budget.exhausted = true;
      this.listing.complete = false;
      return;
    }
    this.budget.archives--;
    this.nested = new NestedArchive(name, method === DEFLATED, this.depth + 1, this.maxEntries, this.budget);
  }

  /**
   * Lists the name in a Unicode Path extra field, which unzip and 7-Zip extract under instead of the
   * header's (when its checksum of the header's name holds; listed whether or not it does: one more name
   * is safe), and returns it.
   */
  private addUnicodePath(extra: Buffer): string | undefined {
    for (let p = 0; p + 4 <= extra.length; p += 4 + extra.readUInt16LE(p + 2)) {
      const len = extra.readUInt16LE(p + 2);
      if (extra.readUInt16LE(p) !== UNICODE_PATH || len < 5 || p + 4 + len > extra.length || extra[p + 4] !== 1) continue;
      return normalizeName(this.addName(extra.subarray(p + 9, p + 4 + len), 0x0800));
    }
    return undefined;
  }

  private addName(raw: Buffer, flags: number): string {
    const name = decodeName(raw, (flags & 0x0800) !== 0);
    this.names.add(name);
    if (!this.names.complete) this.listing.complete = false;
    return name;
  }

  /** Gives an inner archive its entry's next bytes, and takes the names it found in them. */
  private feedNested(data: Buffer): void {
    const nested = this.nested!;
    nested.push(data);
    this.takeNested(nested);
  }

  /** The entry's data ended: the inner archive's last names. */
  private endNested(): void {
    const nested = this.nested;
    if (!nested) return;
    this.nested = undefined;
    nested.end();
    this.takeNested(nested);
  }

  private takeNested(nested: NestedArchive): void {
    for (const name of nested.newNames()) this.names.add(`${nested.name}/${name}`);
    if (!this.names.complete || !nested.complete) this.listing.complete = false;
    if (nested.encrypted) this.listing.encrypted = true;
  }

  /** Looks for the next local header or the central directory; returns where to continue in `chunk`. */
  private scan(chunk: Buffer, pos: number): number {
    let buf = chunk.subarray(pos);
    let carried = 0;
    if (this.tail) {
      carried = this.tail.length;
      buf = Buffer.concat([this.tail, buf]);
      this.tail = undefined;
    }
    // Inside an inner archive's deflate stream, whatever looks like a header is its data: the scan
    // resumes in the chunk where the stream ends.
    let fed = false;
    if (this.nested?.streaming) {
      this.feedNested(buf);
      fed = true;
      if (this.nested?.streaming) return chunk.length;
    }
    for (let i = buf.indexOf(PK); i !== -1; i = buf.indexOf(PK, i + 1)) {
      if (i + 4 > buf.length) break;
      const sig = buf.readUInt32LE(i);
      // An end record does not end the scan: one inside an entry's data (an archive stored in it, or a
      // decoy) would hide the entries after it, which extractors find by the last one.
      if (sig === SIG_END) continue;
      if (sig === SIG_LOCAL || sig === SIG_CENTRAL) {
        // An entry of unknown size (bit 3) ends where the next header begins (its data descriptor, a
        // few bytes after its deflated stream, is ignored by the inflater).
        if (this.nested && !fed) this.feedNested(buf.subarray(0, i));
        this.endNested();
        this.pending = [Buffer.from(buf.subarray(i, i + 4))];
        this.pendingLength = 4;
        this.state = sig === SIG_LOCAL ? { kind: 'header', need: LOCAL_HEADER_SIZE } : { kind: 'central', need: CENTRAL_HEADER_SIZE };
        if (sig === SIG_CENTRAL) this.centralAt = this.chunkStart + pos - carried + i;
        // i counts from the start of buf, which begins `carried` bytes before chunk[pos].
        return pos + (i + 4 - carried);
      }
    }
    // Keep up to 3 bytes: the start of a signature the next chunk completes (copied, not a view that
    // would pin the whole chunk). An inner archive gets the rest now, and those bytes with the next chunk.
    const keep = Math.max(0, buf.length - 3);
    if (this.nested && !fed) this.feedNested(buf.subarray(0, keep));
    this.tail = Buffer.from(buf.subarray(keep));
    return chunk.length;
  }

  /** Appends bytes from chunk[pos..] to the pending buffer until it holds `need` bytes. */
  private collect(chunk: Buffer, pos: number, need: number): number {
    const n = Math.min(need - this.pendingLength, chunk.length - pos);
    if (n <= 0) return pos;
    // Copied: a header is small, and a view would keep the caller's whole chunk alive.
    this.pending.push(Buffer.from(chunk.subarray(pos, pos + n)));
    this.pendingLength += n;
    return pos + n;
  }

  private takePending(): Buffer {
    const b = this.pending.length === 1 ? this.pending[0]! : Buffer.concat(this.pending, this.pendingLength);
    this.pending = [];
    this.pendingLength = 0;
    return b;
  }
}

const PK_LOCAL = Buffer.from([0x50, 0x4b, 0x03, 0x04]);
/** Bit 11 says UTF-8; otherwise CP437 in theory, but many tools write UTF-8 anyway. */
function decodeName(raw: Buffer, utf8Flag: boolean): string {
  return utf8Flag ? raw.toString('utf8') : nameFromBytes(raw);
}

/** The compressed size from a ZIP64 extended information extra field (id 0x0001), if present. */
function zip64CompressedSize(extra: Buffer, hasUncompressed: boolean): number | undefined {
  let p = 0;
  while (p + 4 <= extra.length) {
    const id = extra.readUInt16LE(p);
    const len = extra.readUInt16LE(p + 2);
    if (id === 0x0001) {
      // The field holds the uncompressed size first, then the compressed size, each only when the
      // header's own field is 0xFFFFFFFF.
      const at = p + 4 + (hasUncompressed ? 8 : 0);
      if (at + 8 > p + 4 + len || at + 8 > extra.length) return undefined;
      const size = extra.readBigUInt64LE(at);
      return size <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(size) : undefined;
    }
    p += 4 + len;
  }
  return undefined;
}
