// Lists a Microsoft Cabinet (.cab) attachment's files as its bytes stream by, without decompressing
// anything: Windows Explorer opens a cabinet with a double click and copies its files out, so a program in
// one is a program in the mail. A cabinet's file table is not compressed: the header gives its offset and
// the number of files, and each entry is a few fixed fields and a name. Only a file that starts with the
// signature is a cabinet: Windows opens no other. cabextract looks further: past the first cabinet's
// end (as its header gives it), or from its fifth byte when libmspack rejects the first, it lists every
// other cabinet it finds in the file; a file where it would find one is incomplete. A file without a name
// is listed as 7-Zip extracts it, under the cabinet's name less its extension. A cabinet of a set names
// the next and previous ones, whose files 7-Zip and cabextract list with its own: inside a zip, where
// they need not be files Douane opens, such a cabinet is incomplete (an attachment of its own is listed
// by its content whatever its name).
//
// A name is UTF-8 when its entry says so, else in the sender's code page (read as UTF-8 when it is valid,
// byte by byte otherwise, as other archives' names); a UTF-8 one is also read as cabextract reads it,
// which decodes overlong sequences ("E0 80 AE" is a dot there). Backslashes separate folders, as in Windows; they are
// listed as "/", as cabextract lists them. A table that cannot be read whole — cut short, a name without
// its terminator within the 256 bytes extractors allow, a table past the bounds below, a header that
// places it elsewhere than after the folders — leaves the listing incomplete: the cabinet cannot be
// judged by its names.

import { ArchiveNames, nameFromBytes, normalizeName, type ArchiveListing } from './archive-names.js';

export interface CabListing extends ArchiveListing {
  /** the content starts with a cabinet's signature */
  isCab: boolean;
  /** some file has an empty name: 7-Zip names it after the cabinet (see defaultName) */
  unnamed: boolean;
  /** the cabinet names a previous or next cabinet of a set, whose files 7-Zip and cabextract list with its own */
  inSet: boolean;
}

/** The name 7-Zip gives a file without one in the cabinet named `archiveName`: its name less its extension. */
export function defaultName(archiveName: string): string {
  const base = archiveName.replace(/^.*[/\\]/, '');
  const dot = base.lastIndexOf('.');
  return normalizeName(dot > 0 ? base.slice(0, dot) : `${base}~`);
}

/**
 * A name as cabextract reads one marked UTF-8: it also decodes overlong 3- and 4-byte sequences
 * (E0 80 AE is "."), where Node (and Windows, 7-Zip) see U+FFFD.
 */
function cabextractUtf8(raw: Buffer): string {
  let out = '';
  for (let i = 0; i < raw.length; ) {
    const c = raw[i++]!;
    const cont = (n: number) => i + n <= raw.length && raw.subarray(i, i + n).every((b) => (b & 0xc0) === 0x80);
    let x = 0xfffd;
    if (c < 0x80) x = c;
    else if (c >= 0xc2 && c < 0xe0 && cont(1)) x = ((c & 0x1f) << 6) | (raw[i++]! & 0x3f);
    else if (c >= 0xe0 && c < 0xf0 && cont(2)) x = ((c & 0x0f) << 12) | ((raw[i++]! & 0x3f) << 6) | (raw[i++]! & 0x3f);
    else if (c >= 0xf0 && c < 0xf5 && cont(3)) x = ((c & 0x07) << 18) | ((raw[i++]! & 0x3f) << 12) | ((raw[i++]! & 0x3f) << 6) | (raw[i++]! & 0x3f);
    if (x <= 0 || x > 0x10ffff || (x >= 0xd800 && x <= 0xdfff) || x === 0xfffe || x === 0xffff) x = 0xfffd;
    out += String.fromCodePoint(x);
  }
  return out;
}

const SIGNATURE = Buffer.from('MSCF', 'latin1');
/** The fixed part of the header: up to the flags, the set id and the cabinet's number in the set. */
const HEADER = 36;
/** A file entry's fixed part: size, offset in its folder, folder, date, time, attributes. */
const ENTRY = 16;
/** cabextract and Windows read a name of at most 255 bytes and its terminator. */
const MAX_NAME = 256;
/** Header flags: a reserved area, the names of the previous and of the next cabinet of a set. */
const PREVIOUS_CABINET = 0x1;
const NEXT_CABINET = 0x2;
const RESERVE_PRESENT = 0x4;
/** The name is UTF-8 (_A_NAME_IS_UTF). */
const NAME_IS_UTF = 0x80;
/**
 * The file table ends within this many bytes of the start. A full one (65 535 files of long names) takes
 * 17 MB; a real one holds a few hundred short names just after the header.
 */
const MAX_TABLE_END = 4 * 1024 * 1024;

export class CabLister {
  readonly listing: CabListing;
  private readonly names: ArchiveNames;
  /** the bytes so far, up to the end of the file table (grown as they come) */
  private bytes = Buffer.alloc(0);
  private received = 0;
  /** where the next file entry starts, once the header was read */
  private next = -1;
  private left = 0;
  private done = false;
  /** where the header says the file table is, and where reading in order finds it (once known) */
  private declaredTable: number | undefined;
  private sequentialTable: number | undefined;
  /** every byte seen, past the table too (cabextract's search looks at the whole file) */
  private total = 0;
  /** the last bytes scanned, at `tailAt`: a signature and its fields may straddle two chunks */
  private tail = Buffer.alloc(0);
  private tailAt = 0;
  /** "MSCF" further in that libmspack's search would try: offset, cabinet size, file table offset */
  private readonly others: [number, number, number][] = [];
  /** the first cabinet as libmspack reads it: rejected (no folders or files, an empty string or name) */
  private rejected = false;
  private size = 0;
  private filesAt = 0;

  constructor(maxEntries = 1000) {
    this.names = new ArchiveNames(maxEntries, { opensArchives: false });
    this.listing = { isCab: false, entries: this.names.entries, complete: true, unnamed: false, inSet: false };
  }

  push(data: Buffer): void {
    if (data.length === 0) return;
    if (!this.done || this.listing.isCab) this.search(data);
    this.total += data.length;
    if (this.done) return;
    const room = MAX_TABLE_END - this.received;
    const kept = data.subarray(0, room);
    if (this.received + kept.length > this.bytes.length) {
      const grown = Buffer.alloc(Math.min(MAX_TABLE_END, Math.max(this.bytes.length * 2, this.received + kept.length, 4096)));
      this.bytes.copy(grown, 0, 0, this.received);
      this.bytes = grown;
    }
    kept.copy(this.bytes, this.received);
    this.received += kept.length;
    this.read();
    // Past the bounds with entries still unread: they cannot be listed.
    if (!this.done && this.received >= MAX_TABLE_END && this.listing.isCab) this.fail();
  }

  /** The attachment ended: a table not read whole was cut short. */
  end(): void {
    if (!this.done && this.listing.isCab) this.fail();
    this.done = true;
    if (!this.listing.isCab) return;
    // Wherever a tool looks for the table (after the folders, or where the header says), it is past the
    // end of the file: no tool lists a file in it. A file that only starts like a cabinet (a text
    // beginning "MSCF", a cabinet cut before its table) hides nothing, but what follows its start still
    // may, for cabextract's search.
    const places = [this.sequentialTable, this.declaredTable];
    if (this.names.entries.length === 0 && places.every((at) => at === undefined || at >= this.total)) {
      this.listing.isCab = false;
      this.listing.complete = true;
      this.rejected = true;
    }
    // cabextract lists every cabinet its search finds: past the first when libmspack read it, else from
    // its 5th byte on (libmspack's cabd_find).
    const fits = (at: number, size: number, table: number) => table < size && at + table < this.total + 32 && at + size < this.total + 32;
    const from = !this.rejected && fits(0, this.size, this.filesAt) ? this.size : 4;
    if (this.others.some(([at, size, table]) => at >= from && fits(at, size, table))) {
      this.listing.isCab = true;
      this.listing.complete = false;
    }
  }

  /** Looks for more signatures (bounded: past a few thousand, the file cannot be judged). */
  private search(data: Buffer): void {
    const window = this.tail.length ? Buffer.concat([this.tail, data]) : data;
    const at = this.tail.length ? this.tailAt : this.total;
    for (let i = window.indexOf(SIGNATURE, at === 0 ? 1 : 0); i >= 0 && i + 20 <= window.length; i = window.indexOf(SIGNATURE, i + 1)) {
      if (this.others.length >= 4096) {
        this.listing.complete = false;
        break;
      }
      this.others.push([at + i, window.readUInt32LE(i + 8), window.readUInt32LE(i + 16)]);
    }
    const keep = Math.min(window.length, 19);
    this.tail = Buffer.from(window.subarray(window.length - keep));
    this.tailAt = at + window.length - keep;
  }

  private read(): void {
    if (this.next < 0) {
      const signature = Math.min(this.received, SIGNATURE.length);
      if (!this.bytes.subarray(0, signature).equals(SIGNATURE.subarray(0, signature))) {
        this.done = true;
        return;
      }
      if (this.received < HEADER) return;
      this.listing.isCab = true;
      this.declaredTable = this.bytes.readUInt32LE(16);
      const tableAt = this.tableStart();
      this.sequentialTable = tableAt;
      this.size = this.bytes.readUInt32LE(8);
      this.filesAt = this.bytes.readUInt32LE(16);
      if (this.bytes.readUInt16LE(26) === 0 || this.bytes.readUInt16LE(28) === 0) this.rejected = true;
      if (this.bytes.readUInt16LE(30) & (PREVIOUS_CABINET | NEXT_CABINET)) this.listing.inSet = true;
      if (tableAt === undefined) return;
      this.left = this.bytes.readUInt16LE(28);
      // cabextract and bsdtar refuse a table anywhere but right after the folders; 7-Zip reads it where
      // the header says. Both places hold the same table in every cabinet a tool writes: one whose two
      // places differ may hold a decoy, and cannot be judged by either.
      if (tableAt !== this.bytes.readUInt32LE(16) || tableAt >= MAX_TABLE_END) {
        if (this.left > 0) this.fail();
        this.done = true;
        return;
      }
      this.next = tableAt;
    }
    while (this.left > 0) {
      const nameAt = this.next + ENTRY;
      const end = this.stringEnd(nameAt);
      if (end === undefined) return;
      if (end === false) return this.fail();
      const raw = this.bytes.subarray(nameAt, end);
      const utf = (this.bytes.readUInt16LE(this.next + 14) & NAME_IS_UTF) !== 0;
      const name = (utf ? raw.toString('utf8') : nameFromBytes(raw)).replace(/\\/g, '/');
      if (name) this.names.add(name);
      else {
        this.listing.unnamed = true;
        this.rejected = true;
      }
      if (utf) {
        const lenient = cabextractUtf8(raw).replace(/\\/g, '/');
        if (lenient !== name) this.names.add(lenient);
      }
      this.next = end + 1;
      this.left--;
    }
    this.finish();
  }

  /**
   * Where the file table starts when read in order, as extractors read it: after the header, its reserved
   * area, the names of the previous and next cabinets of a set, and the folders. Undefined while the
   * bytes that say are still to come; past the bounds, MAX_TABLE_END.
   */
  private tableStart(): number | undefined {
    const flags = this.bytes.readUInt16LE(30);
    let at = HEADER;
    let folderReserve = 0;
    if (flags & RESERVE_PRESENT) {
      if (this.received < at + 4) return undefined;
      folderReserve = this.bytes.readUInt8(at + 2);
      at += 4 + this.bytes.readUInt16LE(at);
    }
    const strings = (flags & PREVIOUS_CABINET ? 2 : 0) + (flags & NEXT_CABINET ? 2 : 0);
    for (let i = 0; i < strings; i++) {
      const end = this.stringEnd(at);
      if (end === undefined) return this.received >= MAX_TABLE_END ? MAX_TABLE_END : undefined;
      if (end === false) return MAX_TABLE_END;
      if (end === at) this.rejected = true;
      at = end + 1;
    }
    return at + this.bytes.readUInt16LE(26) * (8 + folderReserve);
  }

  /** The end of a NUL-terminated string at `at`: undefined while its bytes are to come, false if it has none. */
  private stringEnd(at: number): number | false | undefined {
    const end = Math.min(this.received, at + MAX_NAME);
    const terminator = at < end ? this.bytes.indexOf(0, at) : -1;
    if (terminator >= 0 && terminator < end) return terminator;
    // No terminator within the bytes a name may take: not a name any extractor reads.
    return end === at + MAX_NAME ? false : undefined;
  }

  private fail(): void {
    this.listing.complete = false;
    this.finish();
  }

  private finish(): void {
    this.done = true;
    this.listing.complete &&= this.names.complete;
    this.bytes = Buffer.alloc(0);
  }
}
