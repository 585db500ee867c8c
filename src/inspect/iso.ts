// Lists the files of an ISO 9660 disk image attachment (.iso, .img) as its bytes stream by: mounted with a
// double click, it shows them like a folder, and shortcuts and programs travel in them past filters that
// only open zips. Every tree a reader may show is read: the ISO 9660 names, their Rock Ridge long names,
// and the Joliet tree Windows shows (an image may name one file differently in each). A UDF tree, which
// Windows prefers when there is one, is not read: its files are named from the other trees when an image
// has both, and are left to clamd otherwise.
//
// The image is not kept: directories are read as the stream reaches them. Tools write them before the
// files; a directory placed before its parent was read cannot be reached again, and the listing then
// says it is incomplete.

import { ArchiveNames } from './archive-names.js';

const SECTOR = 2048;
const FIRST_DESCRIPTOR = 16 * SECTOR;
const MAX_DESCRIPTORS = 64;
// Directory bytes read at most, over the whole image; directories read at most.
const MAX_DIRECTORY_BYTES = 1 << 20;
const MAX_DIRECTORIES = 4096;

export interface IsoListing {
  /** "CD001" where the first volume descriptor belongs */
  isIso: boolean;
  entries: string[];
  /** false when names may be missing: too many, or a directory out of reach */
  complete: boolean;
}

/** A range of the image to read whole before it can be parsed. */
interface Extent {
  start: number;
  size: number;
  kind: 'descriptor' | 'directory';
  /** directory: its path inside the image ("" for the root), and whether its names are Joliet's */
  path?: string;
  joliet?: boolean;
  data?: Buffer;
  filled: number;
}

export class IsoLister {
  private readonly names: ArchiveNames;
  readonly listing: IsoListing;
  private offset = 0;
  private chunkStart = 0;
  private pending: Extent[] = [{ start: FIRST_DESCRIPTOR, size: SECTOR, kind: 'descriptor', filled: 0 }];
  private readonly seen = new Set<string>();
  private descriptors = 0;
  private directoryBytes = 0;
  private directories = 0;

  constructor(maxEntries = 1000) {
    this.names = new ArchiveNames(maxEntries);
    this.listing = { isIso: false, entries: this.names.entries, complete: true };
  }

  push(chunk: Buffer): void {
    const start = this.offset;
    this.chunkStart = start;
    this.offset += chunk.length;
    try {
      // Parsing an extent may ask for more, possibly in this same chunk: go on until nothing is left to fill.
      for (let progressed = true; progressed && this.pending.length; ) {
        progressed = false;
        for (const e of [...this.pending]) {
          const from = Math.max(e.start + e.filled, start);
          const to = Math.min(e.start + e.size, this.offset);
          if (to <= from) continue;
          e.data ??= Buffer.alloc(e.size);
          chunk.copy(e.data, from - e.start, from - start, to - start);
          e.filled = to - e.start;
          if (e.filled < e.size) continue;
          this.pending.splice(this.pending.indexOf(e), 1);
          if (e.kind === 'descriptor') this.descriptor(e.data, e.start);
          else this.directory(e);
          progressed = true;
        }
      }
    } catch {
      // A malformed image must not break inspection; what was listed so far stands, marked incomplete.
      if (this.listing.isIso) this.listing.complete = false;
      this.pending = [];
    }
    if (!this.names.complete) this.listing.complete = false;
  }

  private descriptor(sector: Buffer, at: number): void {
    if (sector.toString('latin1', 1, 6) !== 'CD001') return; // not an image, or the end of its descriptors
    this.listing.isIso = true;
    const type = sector[0];
    if (type === 255 || ++this.descriptors > MAX_DESCRIPTORS) return;
    // The primary tree, and a supplementary one with Joliet's escape sequence (UCS-2 names).
    const joliet = type === 2 && /^%\/[@CE]/.test(sector.toString('latin1', 88, 91));
    if (type === 1 || joliet) {
      const root = sector.subarray(156, 156 + 34);
      this.want({ start: root.readUInt32LE(2) * SECTOR, size: root.readUInt32LE(10), kind: 'directory', path: '', joliet, filled: 0 });
    }
    this.want({ start: at + SECTOR, size: SECTOR, kind: 'descriptor', filled: 0 });
  }

  private want(e: Extent): void {
    if (e.kind === 'directory') {
      const key = `${e.joliet ? 'j' : 'p'}:${e.start}`;
      if (e.size === 0 || this.seen.has(key)) return; // malformed, a loop, or reached twice
      this.seen.add(key);
      this.directoryBytes += e.size;
      if (++this.directories > MAX_DIRECTORIES || this.directoryBytes > MAX_DIRECTORY_BYTES) {
        this.listing.complete = false;
        return;
      }
    }
    // Its start was streamed past (the current chunk is still at hand): it cannot be read any more.
    if (e.start < this.chunkStart) {
      this.listing.complete = false;
      return;
    }
    this.pending.push(e);
  }

  private directory(e: Extent): void {
    const data = e.data!;
    for (let at = 0; at < data.length; ) {
      const length = data[at]!;
      // A zero length pads to the end of the sector: records do not cross sectors.
      if (length === 0) {
        at = (Math.floor(at / SECTOR) + 1) * SECTOR;
        continue;
      }
      if (length < 34 || at + length > data.length) break;
      const rec = data.subarray(at, at + length);
      at += length;
      const idLength = rec[32]!;
      const id = rec.subarray(33, 33 + idLength);
      if (idLength === 1 && (id[0] === 0 || id[0] === 1)) continue; // the directory itself, its parent
      const isDirectory = (rec[25]! & 0x02) !== 0;
      // The Rock Ridge name first: a directory is walked under the first of its names.
      const names = e.joliet ? [jolietName(id)] : [rockRidgeName(rec.subarray(33 + idLength + (idLength % 2 === 0 ? 1 : 0))), isoName(id)];
      for (const name of new Set(names.filter((n): n is string => Boolean(n)))) {
        const path = e.path ? `${e.path}/${name}` : name;
        if (isDirectory) this.want({ start: rec.readUInt32LE(2) * SECTOR, size: rec.readUInt32LE(10), kind: 'directory', path, joliet: e.joliet, filled: 0 });
        else this.names.add(path);
      }
    }
  }
}

/** "INVOICE.EXE;1" → INVOICE.EXE; "README.;1" → README (ISO 9660 writes a dot when there is no extension). */
function isoName(id: Buffer): string {
  return id.toString('latin1').replace(/;\d*$/, '').replace(/\.$/, '');
}

function jolietName(id: Buffer): string {
  const even = id.length - (id.length % 2);
  return Buffer.from(id.subarray(0, even)).swap16().toString('utf16le').replace(/;\d*$/, '');
}

/** The Rock Ridge "NM" entries of a record's system use area: the POSIX name, in pieces. */
function rockRidgeName(area: Buffer): string | undefined {
  let name = '';
  let found = false;
  for (let at = 0; at + 4 <= area.length; ) {
    const length = area[at + 2]!;
    if (length < 4 || at + length > area.length) break;
    if (area.toString('latin1', at, at + 2) === 'NM' && length >= 5) {
      const flags = area[at + 4]!;
      // CURRENT (".") and PARENT ("..") are not names of files.
      if (!(flags & 0x06)) {
        name += area.toString('utf8', at + 5, at + length);
        found = true;
      }
    }
    at += length;
  }
  return found ? name : undefined;
}
