// Lists the files of an ISO 9660 disk image attachment (.iso, .img) as its bytes stream by: mounted with a
// double click, it shows them like a folder, and shortcuts and programs travel in them past filters that
// only open zips. Every tree a reader may show is read: the ISO 9660 names, their Rock Ridge long names
// (continuation areas included), and the Joliet tree Windows shows; an image may name one file differently
// in each. An image that also holds a UDF tree, which Windows shows instead, is reported incomplete:
// that tree is not read, and its names are the image maker's choice.
//
// The image is not kept: directories are read as the stream reaches them. Tools write them before the
// files; one placed before the directory that names it cannot be reached again, and the listing then
// says it is incomplete, as it does past any bound below.

import { ArchiveNames, type ArchiveListing } from './archive-names.js';

const SECTOR = 2048;
const FIRST_DESCRIPTOR = 16 * SECTOR;
// Volume descriptors and recognition sectors read at most (boot records and padding included).
const MAX_DESCRIPTOR_SECTORS = 128;
// Directory and continuation bytes read at most over the whole image; directories; nesting; path length.
const MAX_DIRECTORY_BYTES = 1 << 20;
const MAX_DIRECTORIES = 4096;
// Rock Ridge continuation areas (the rest of a long name): real images have a few.
const MAX_CONTINUATIONS = 4096;
const MAX_DEPTH = 32;
const MAX_PATH = 1024;

/** Incomplete also when a directory was out of reach or a tree was not read. */
export interface IsoListing extends ArchiveListing {
  /** "CD001" where the first volume descriptor belongs */
  isIso: boolean;
}

/** A range of the image to read whole before it can be parsed, and what it is. */
type Wanted = { start: number; size: number } & (
  | { kind: 'descriptor' }
  | { kind: 'directory'; path: string; depth: number; joliet: boolean }
  /** a Rock Ridge continuation area: the rest of a name begun in a directory record */
  | { kind: 'continuation'; parent: string; name: string; file: boolean }
);

type Extent = Wanted & { filled: number; data?: Buffer };

/** What a record's Rock Ridge entries say: the name so far, and where it goes on, if it does. */
interface RockRidge {
  name?: string;
  more?: { start: number; size: number };
}

export class IsoLister {
  private readonly names: ArchiveNames;
  readonly listing: IsoListing;
  private offset = 0;
  private chunkStart = 0;
  /** by start, ascending */
  private pending: Extent[] = [{ kind: 'descriptor', start: FIRST_DESCRIPTOR, size: SECTOR, filled: 0 }];
  /** where the walk over `pending` goes on after a parse: before any extent the parse added */
  private rewind = 0;
  private readonly seen = new Set<string>();
  private descriptorSectors = 0;
  /** the descriptors' terminator was read: what follows is UDF's recognition sequence, if anything */
  private terminated = false;
  private budget = MAX_DIRECTORY_BYTES;
  private directories = 0;
  private continuations = 0;

  constructor(maxEntries = 1000) {
    this.names = new ArchiveNames(maxEntries, { opensArchives: false });
    this.listing = { isIso: false, entries: this.names.entries, complete: true };
  }

  push(chunk: Buffer): void {
    const start = this.offset;
    this.chunkStart = start;
    this.offset += chunk.length;
    try {
      // The extents are kept in the order of their start: only those begun by the end of this chunk are
      // looked at, however many wait further on. Parsing one may ask for more, possibly in this same chunk
      // and before it: the walk then goes back to where the new one was put.
      for (let i = 0; i < this.pending.length && this.pending[i]!.start < this.offset; ) {
        const e = this.pending[i]!;
        const from = Math.max(e.start + e.filled, start);
        const to = Math.min(e.start + e.size, this.offset);
        if (to > from) {
          e.data ??= Buffer.alloc(e.size);
          chunk.copy(e.data, from - e.start, from - start, to - start);
          e.filled = to - e.start;
        }
        if (e.filled < e.size) {
          i++;
          continue;
        }
        this.pending.splice(i, 1);
        this.rewind = i;
        if (e.kind === 'descriptor') this.descriptor(e.data!, e.start);
        else if (e.kind === 'directory') this.directory(e, e.data!);
        else this.continuation(e, e.data!);
        i = this.rewind;
      }
    } catch {
      // A malformed image must not break inspection; what was listed so far stands, marked incomplete.
      if (this.listing.isIso) this.listing.complete = false;
      this.pending = [];
    }
    if (!this.names.complete) this.listing.complete = false;
  }

  private descriptor(sector: Buffer, at: number): void {
    const id = sector.toString('latin1', 1, 6);
    if (at === FIRST_DESCRIPTOR) {
      if (id !== 'CD001') return; // not an image
      this.listing.isIso = true;
    }
    if (++this.descriptorSectors > MAX_DESCRIPTOR_SECTORS) {
      this.listing.complete = false;
      return;
    }
    if (this.terminated) {
      // UDF's volume recognition sequence: BEA01, then NSR02 or NSR03 for a UDF tree, then TEA01.
      if (id === 'NSR02' || id === 'NSR03') this.listing.complete = false;
      if (id === 'TEA01' || !/^(?:BEA01|NSR0[23]|BOOT2|CDW02)$/.test(id)) return;
    } else if (id === 'CD001') {
      const type = sector[0];
      if (type === 255) this.terminated = true;
      // The primary tree, and a supplementary one with Joliet's escape sequence (UCS-2 names).
      const joliet = type === 2 && /^%\/[@CE]/.test(sector.toString('latin1', 88, 91));
      if (type === 1 || joliet) {
        const root = sector.subarray(156, 156 + 34);
        this.want({ kind: 'directory', start: root.readUInt32LE(2) * SECTOR, size: root.readUInt32LE(10), path: '', depth: 0, joliet });
      }
    }
    // A sector that is not a descriptor between two that are is stepped over: a reader looks further.
    this.want({ kind: 'descriptor', start: at + SECTOR, size: SECTOR });
  }

  private want(w: Wanted): void {
    if (w.kind !== 'descriptor') {
      if (w.kind === 'directory') {
        const key = `${w.joliet ? 'j' : 'p'}:${w.start}`;
        if (w.size === 0 || this.seen.has(key)) return; // malformed, a loop, or reached twice
        this.seen.add(key);
      }
      this.budget -= w.size;
      const many = w.kind === 'directory' ? ++this.directories > MAX_DIRECTORIES || w.depth > MAX_DEPTH : ++this.continuations > MAX_CONTINUATIONS;
      if (this.budget < 0 || many) {
        this.listing.complete = false;
        return;
      }
    }
    // Its start was streamed past (the current chunk is still at hand): it cannot be read any more.
    if (w.start < this.chunkStart) {
      this.listing.complete = false;
      return;
    }
    let at = this.pending.length;
    while (at > 0 && this.pending[at - 1]!.start > w.start) at--;
    this.pending.splice(at, 0, { ...w, filled: 0 });
    this.rewind = Math.min(this.rewind, at);
  }

  private directory(e: Extent & { kind: 'directory' }, data: Buffer): void {
    for (let at = 0; at < data.length; ) {
      const length = data[at]!;
      // A zero length pads to the end of the sector: records do not cross sectors.
      if (length === 0) {
        at = (Math.floor(at / SECTOR) + 1) * SECTOR;
        continue;
      }
      if (length < 34 || at + length > data.length) {
        this.listing.complete = false;
        return;
      }
      const rec = data.subarray(at, at + length);
      at += length;
      const idLength = rec[32]!;
      const id = rec.subarray(33, 33 + idLength);
      if (idLength === 1 && (id[0] === 0 || id[0] === 1)) continue; // the directory itself, its parent
      const isDirectory = (rec[25]! & 0x02) !== 0;
      let names: (string | undefined)[];
      if (e.joliet) names = [jolietName(id)];
      else {
        const rr = rockRidge(rec.subarray(33 + idLength + (idLength % 2 === 0 ? 1 : 0)));
        // A long name goes on elsewhere: read there, and named when it is whole. (An empty continuation area
        // adds nothing: the name is whole.)
        const more = rr.more && rr.more.size > 0 ? rr.more : undefined;
        if (more) this.want({ kind: 'continuation', ...more, parent: e.path, name: rr.name ?? '', file: !isDirectory });
        // The Rock Ridge name first: a directory is walked under the first of its names.
        names = [more ? undefined : rr.name, isoName(id)];
      }
      for (const name of new Set(names.filter((n): n is string => Boolean(n)))) {
        const path = this.path(e.path, name);
        if (path === undefined) continue;
        if (isDirectory) this.want({ kind: 'directory', start: rec.readUInt32LE(2) * SECTOR, size: rec.readUInt32LE(10), path, depth: e.depth + 1, joliet: e.joliet });
        else this.names.add(path);
      }
    }
  }

  private continuation(e: Extent & { kind: 'continuation' }, data: Buffer): void {
    const rr = rockRidge(data);
    const name = e.name + (rr.name ?? '');
    if (rr.more && rr.more.size > 0) this.want({ kind: 'continuation', ...rr.more, parent: e.parent, name, file: e.file });
    else if (e.file && name) {
      const path = this.path(e.parent, name);
      if (path !== undefined) this.names.add(path);
    }
  }

  private path(parent: string, name: string): string | undefined {
    const path = parent ? `${parent}/${name}` : name;
    if (path.length <= MAX_PATH) return path;
    this.listing.complete = false;
    return undefined;
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

/** The Rock Ridge entries of a system use area: "NM" pieces of the POSIX name, "CE" where they go on. */
function rockRidge(area: Buffer): RockRidge {
  const out: RockRidge = {};
  for (let at = 0; at + 4 <= area.length; ) {
    const length = area[at + 2]!;
    if (length < 4 || at + length > area.length) break;
    const sig = area.toString('latin1', at, at + 2);
    // CURRENT (".") and PARENT ("..") are not names of files.
    if (sig === 'NM' && length >= 5 && !(area[at + 4]! & 0x06)) out.name = (out.name ?? '') + area.toString('utf8', at + 5, at + length);
    if (sig === 'CE' && length >= 28) out.more = { start: area.readUInt32LE(at + 4) * SECTOR + area.readUInt32LE(at + 12), size: area.readUInt32LE(at + 20) };
    if (sig === 'ST') break;
    at += length;
  }
  return out;
}
