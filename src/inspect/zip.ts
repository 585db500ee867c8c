// Lists a zip attachment's entries as the decoded bytes stream by, without decompressing anything: names
// for `archive.entries`, and whether any entry is encrypted (its content can then be neither scanned nor
// trusted). Both the local file headers and the central directory (at the end) are read, because unzip
// tools extract under the central directory's names and the two may disagree. Data before the archive
// (a self-extractor's stub, or junk put there to hide it) does not hide it: the headers are looked for
// anywhere. Only the first level: a zip inside the zip is one more name.

import { ArchiveNames, type ArchiveListing } from './archive-names.js';

const SIG_LOCAL = 0x04034b50; // PK\x03\x04
const SIG_CENTRAL = 0x02014b50; // PK\x01\x02: the central directory, after the last entry
const SIG_END = 0x06054b50; // PK\x05\x06: end of central directory (alone: an empty zip)
const PK = Buffer.from('PK', 'latin1');

const LOCAL_HEADER_SIZE = 30;
const CENTRAL_HEADER_SIZE = 46;
// Entry names longer than this are not real names (and the 16-bit length could ask for 64 KB).
const MAX_NAME_LENGTH = 4096;

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
  | { kind: 'scan' } // looking for the next signature (after the data, or when its size is unknown)
  | { kind: 'done' };

export class ZipLister {
  private state: State = { kind: 'start' };
  private pending: Buffer[] = [];
  private pendingLength = 0;
  // The last bytes of a chunk scanned without a match: a signature may straddle two chunks.
  private tail: Buffer | undefined;
  private readonly names: ArchiveNames;
  readonly listing: ZipListing;

  constructor(maxEntries = 1000) {
    this.names = new ArchiveNames(maxEntries);
    this.listing = { isZip: false, entries: this.names.entries, entryCount: 0, encrypted: false, complete: true };
  }

  push(chunk: Buffer): void {
    try {
      this.consume(chunk);
    } catch {
      // A malformed archive must not break inspection; what was listed so far stands.
      this.state = { kind: 'done' };
    }
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
          const flags = head.readUInt16LE(8);
          if (flags & 0x0001) this.listing.encrypted = true;
          this.addName(head.subarray(CENTRAL_HEADER_SIZE, CENTRAL_HEADER_SIZE + nameLen), flags);
          this.state = { kind: 'scan' };
          break;
        }
        case 'skip': {
          const n = Math.min(s.left, chunk.length - pos);
          pos += n;
          s.left -= n;
          if (s.left === 0) this.state = { kind: 'scan' };
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
    this.addName(head.subarray(LOCAL_HEADER_SIZE, LOCAL_HEADER_SIZE + nameLen), flags);
    if (compressed === 0xffffffff) {
      const extra = head.subarray(LOCAL_HEADER_SIZE + nameLen, LOCAL_HEADER_SIZE + nameLen + extraLen);
      compressed = zip64CompressedSize(extra, head.readUInt32LE(22) === 0xffffffff) ?? 0;
    }
    // Bit 3: sizes follow the data in a descriptor, and the header's are usually zero. Either way the
    // scan after the data finds the next header (and steps over a descriptor).
    return compressed > 0 ? { kind: 'skip', left: compressed } : { kind: 'scan' };
  }

  private addName(raw: Buffer, flags: number): void {
    this.names.add(decodeName(raw, (flags & 0x0800) !== 0));
    if (!this.names.complete) this.listing.complete = false;
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
    for (let i = buf.indexOf(PK); i !== -1; i = buf.indexOf(PK, i + 1)) {
      if (i + 4 > buf.length) break;
      const sig = buf.readUInt32LE(i);
      if (sig === SIG_END) {
        // The end of an archive only once one began: in the data before it, "PK\x05\x06" is a decoy.
        if (!this.listing.isZip && this.listing.entries.length === 0) continue;
        this.state = { kind: 'done' };
        return chunk.length;
      }
      if (sig === SIG_LOCAL || sig === SIG_CENTRAL) {
        this.pending = [Buffer.from(buf.subarray(i, i + 4))];
        this.pendingLength = 4;
        this.state = sig === SIG_LOCAL ? { kind: 'header', need: LOCAL_HEADER_SIZE } : { kind: 'central', need: CENTRAL_HEADER_SIZE };
        // i counts from the start of buf, which begins `carried` bytes before chunk[pos].
        return pos + (i + 4 - carried);
      }
    }
    // Keep up to 3 bytes: the start of a signature the next chunk completes (copied, not a view that
    // would pin the whole chunk).
    this.tail = Buffer.from(buf.subarray(Math.max(0, buf.length - 3)));
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
  const utf8 = raw.toString('utf8');
  if (utf8Flag || !utf8.includes('\ufffd')) return utf8;
  return raw.toString('latin1');
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
