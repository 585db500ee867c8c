// Lists a Microsoft Cabinet (.cab) attachment's files as its bytes stream by, without decompressing
// anything: Windows Explorer opens a cabinet with a double click and copies its files out, so a program in
// one is a program in the mail. A cabinet's file table is not compressed: the header gives its offset and
// the number of files, and each entry is a few fixed fields and a name. Only a file that starts with the
// signature is a cabinet: Windows opens no other (cabextract also looks further, for cabinets inside
// self-extractors, which are programs already).
//
// A name is UTF-8 when its entry says so, else in the sender's code page (read as UTF-8 when it is valid,
// byte by byte otherwise, as other archives' names). Backslashes separate folders, as in Windows; they are
// listed as "/", as cabextract lists them. A table that cannot be read whole — cut short, a name without
// its terminator within the 256 bytes extractors allow, a table past the bounds below, a header that
// places it elsewhere than after the folders — leaves the listing incomplete: the cabinet cannot be
// judged by its names.

import { ArchiveNames, nameFromBytes, type ArchiveListing } from './archive-names.js';

export interface CabListing extends ArchiveListing {
  /** the content starts with a cabinet's signature */
  isCab: boolean;
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

  constructor(maxEntries = 1000) {
    this.names = new ArchiveNames(maxEntries);
    this.listing = { isCab: false, entries: this.names.entries, complete: true };
  }

  push(data: Buffer): void {
    if (this.done || data.length === 0) return;
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
      const tableAt = this.tableStart();
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
