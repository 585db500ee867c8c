// Lists the files of a TNEF attachment (winmail.dat, application/ms-tnef) as its bytes stream by: Outlook
// and Exchange, and the mail programs that read TNEF (Thunderbird's LookOut, Apple Mail, tnef), show the
// files inside as the message's attachments, so a program in one is a program in the mail.
//
// A TNEF stream is a signature, a key, then attributes one after the other: a level (message or
// attachment), an id, a length, the data and a checksum. An attachment's files are named twice: by
// attAttachTitle (a short name, NUL-terminated, in the sender's code page) and by the MAPI properties of
// attAttachment, whose PR_ATTACH_LONG_FILENAME (or PR_DISPLAY_NAME) is the name shown. Both are listed.
// Only the data of these two attributes is kept, each up to MAX_KEPT; the rest is skipped as it streams.
// A stream cut short, an attribute past its bounds, or attAttachment properties that cannot be read whole
// leave the listing incomplete: the attachment cannot be judged by its names. An Outlook item attached
// inside (attach method 5) is kept in PR_ATTACH_DATA_OBJ as the GUID IID_IMessage followed by a TNEF stream
// of its own, whose files are listed too, two levels down at most; one that cannot be read so leaves the
// listing incomplete.

import { ArchiveNames, type ArchiveListing } from './archive-names.js';

export interface TnefListing extends ArchiveListing {
  /** the content starts with TNEF's signature */
  isTnef: boolean;
}

const SIGNATURE = 0x223e9f78;
const ATT_ATTACH_TITLE = 0x00018010;
const ATT_ATTACHMENT = 0x00069005;
/** attachment attribute data kept for its names; longer ones are read no further (incomplete) */
const MAX_KEPT = 1 << 20;
const MAX_ATTRIBUTES = 100_000;

const PR_DISPLAY_NAME = 0x3001;
const PR_ATTACH_FILENAME = 0x3704;
const PR_ATTACH_LONG_FILENAME = 0x3707;
const PR_ATTACH_METHOD = 0x3705;
const PR_ATTACH_DATA_OBJ = 0x3701;
const ATTACH_EMBEDDED_MSG = 5;
const IID_IMESSAGE = Buffer.from('0703020000000000c000000000000046', 'hex');
const MAX_EMBEDDED_DEPTH = 2;
const NAME_PROPERTIES = new Set([PR_DISPLAY_NAME, PR_ATTACH_FILENAME, PR_ATTACH_LONG_FILENAME]);

export class TnefLister {
  readonly listing: TnefListing;
  private readonly names: ArchiveNames;
  /** bytes not yet consumed (a header, or the data of an attribute being kept), joined once all are in */
  private pending: Buffer[] = [];
  private pendingLength = 0;
  private state: 'signature' | 'header' | 'data' | 'skip' | 'done' = 'signature';
  private id = 0;
  /** bytes of the current attribute still to come (data and its two-byte checksum) */
  private left = 0;
  private attributes = 0;

  constructor(
    private readonly maxEntries = 1000,
    private readonly depth = 0,
  ) {
    this.names = new ArchiveNames(maxEntries, { opensArchives: false });
    this.listing = { isTnef: false, entries: this.names.entries, complete: true };
  }

  push(data: Buffer): void {
    while (data.length && this.state !== 'done') {
      if (this.state === 'skip') {
        const n = Math.min(this.left, data.length);
        this.left -= n;
        data = data.subarray(n);
        if (this.left === 0) this.state = 'header';
        continue;
      }
      const want = this.state === 'signature' ? 6 : this.state === 'header' ? 9 : this.left;
      const take = Math.min(want - this.pendingLength, data.length);
      this.pending.push(Buffer.from(data.subarray(0, take)));
      this.pendingLength += take;
      data = data.subarray(take);
      if (this.pendingLength < want) return;
      const chunk = Buffer.concat(this.pending, this.pendingLength);
      this.pending = [];
      this.pendingLength = 0;
      this.step(chunk);
    }
  }

  /** The stream ended: one cut short inside an attribute is incomplete. */
  end(): void {
    if (!this.listing.isTnef) return;
    if (this.state !== 'header' || this.pendingLength) this.listing.complete = false;
    // Names left out, or an archive named inside, which is not opened here.
    if (!this.names.complete) this.listing.complete = false;
    this.state = 'done';
  }

  private step(chunk: Buffer): void {
    if (this.state === 'signature') {
      if (chunk.readUInt32LE(0) !== SIGNATURE) {
        this.state = 'done';
        return;
      }
      this.listing.isTnef = true;
      this.state = 'header';
      return;
    }
    if (this.state === 'header') {
      if (++this.attributes > MAX_ATTRIBUTES) return this.incomplete();
      this.id = chunk.readUInt32LE(1);
      const length = chunk.readUInt32LE(5);
      this.left = length + 2;
      const kept = this.id === ATT_ATTACH_TITLE || this.id === ATT_ATTACHMENT;
      if (kept && length > MAX_KEPT) return this.incomplete();
      this.state = kept ? 'data' : 'skip';
      return;
    }
    // The data of a kept attribute, and its checksum.
    const value = chunk.subarray(0, chunk.length - 2);
    if (this.id === ATT_ATTACH_TITLE) this.names.add(cString(value));
    else if (!this.properties(value)) return this.incomplete();
    this.state = 'header';
  }

  /** The names among attAttachment's MAPI properties; false if they cannot be read whole. */
  private properties(data: Buffer): boolean {
    const r = new Reader(data);
    const count = r.u32();
    if (count === undefined || count > 10_000) return false;
    let embedded = false;
    let opened = false;
    for (let i = 0; i < count; i++) {
      const type = r.u16();
      const id = r.u16();
      if (type === undefined || id === undefined) return false;
      // A named property: its GUID, then a number or a name; never one of the names looked for.
      if (id >= 0x8000) {
        if (!r.skip(16)) return false;
        const kind = r.u32();
        if (kind === 0) {
          if (!r.skip(4)) return false;
        } else if (kind === 1) {
          const length = r.u32();
          if (length === undefined || !r.skip(padded(length))) return false;
        } else return false;
      }
      const values = readValues(r, type);
      if (values === undefined) return false;
      if (NAME_PROPERTIES.has(id)) for (const v of values) if (Buffer.isBuffer(v)) this.names.add(type === 0x001f ? utf16(v) : cString(v));
      if (id === PR_ATTACH_METHOD && values[0] === ATTACH_EMBEDDED_MSG) embedded = true;
      if (id === PR_ATTACH_DATA_OBJ && (type & 0x0fff) === 0x000d && Buffer.isBuffer(values[0])) opened = this.embeddedMessage(values[0]);
    }
    if (embedded && !opened) this.listing.complete = false;
    return true;
  }

  /** The files of an Outlook item attached inside; false if it cannot be read as one. */
  private embeddedMessage(object: Buffer): boolean {
    if (this.depth >= MAX_EMBEDDED_DEPTH || object.length < IID_IMESSAGE.length || !object.subarray(0, IID_IMESSAGE.length).equals(IID_IMESSAGE)) return false;
    const inner = new TnefLister(this.maxEntries, this.depth + 1);
    inner.push(object.subarray(IID_IMESSAGE.length));
    inner.end();
    if (!inner.listing.isTnef) return false;
    for (const name of inner.listing.entries) this.names.add(name);
    if (!inner.listing.complete) this.listing.complete = false;
    return true;
  }

  private incomplete(): void {
    this.listing.complete = false;
    this.state = 'done';
  }
}

/** The MAPI property types of a fixed size, and that size as TNEF writes it (short and boolean padded to four). */
const FIXED_SIZES: Record<number, number> = { 0x0002: 4, 0x0003: 4, 0x0004: 4, 0x0005: 8, 0x0006: 8, 0x0007: 8, 0x000a: 4, 0x000b: 4, 0x0014: 8, 0x0040: 8, 0x0048: 16 };

/** A property's values: numbers for the fixed-size types read here, buffers for strings and binaries. */
function readValues(r: Reader, type: number): (number | Buffer)[] | undefined {
  const multi = (type & 0x1000) !== 0;
  const base = type & 0x0fff;
  const size = FIXED_SIZES[base];
  const count = multi || size === undefined ? r.u32() : 1;
  if (count === undefined || count > 100_000) return undefined;
  const out: (number | Buffer)[] = [];
  for (let i = 0; i < count; i++) {
    if (size !== undefined) {
      const v = size === 4 ? r.u32() : r.skip(size) ? 0 : undefined;
      if (v === undefined) return undefined;
      out.push(v);
      continue;
    }
    if (base !== 0x001e && base !== 0x001f && base !== 0x0102 && base !== 0x000d) return undefined;
    const length = r.u32();
    if (length === undefined) return undefined;
    const bytes = r.bytes(length);
    if (!bytes || !r.skip(padded(length) - length)) return undefined;
    out.push(bytes);
  }
  return out;
}

const padded = (n: number) => (n + 3) & ~3;

function cString(raw: Buffer): string {
  const end = raw.indexOf(0);
  const bytes = end < 0 ? raw : raw.subarray(0, end);
  const utf8 = bytes.toString('utf8');
  return utf8.includes('\ufffd') ? bytes.toString('latin1') : utf8;
}

function utf16(raw: Buffer): string {
  const text = raw.subarray(0, raw.length & ~1).toString('utf16le');
  const end = text.indexOf('\0');
  return end < 0 ? text : text.slice(0, end);
}

class Reader {
  private at = 0;
  constructor(private readonly data: Buffer) {}

  u16(): number | undefined {
    if (this.at + 2 > this.data.length) return undefined;
    const v = this.data.readUInt16LE(this.at);
    this.at += 2;
    return v;
  }

  u32(): number | undefined {
    if (this.at + 4 > this.data.length) return undefined;
    const v = this.data.readUInt32LE(this.at);
    this.at += 4;
    return v;
  }

  bytes(n: number): Buffer | undefined {
    if (this.at + n > this.data.length) return undefined;
    const v = this.data.subarray(this.at, this.at + n);
    this.at += n;
    return v;
  }

  skip(n: number): boolean {
    if (this.at + n > this.data.length) return false;
    this.at += n;
    return true;
  }
}
