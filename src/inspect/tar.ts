// Lists a tar attachment's files as its bytes stream by, and a gzipped tar's (.tar.gz, .tgz) as it is
// inflated: Windows opens both with a double click, like a zip. A tar is a sequence of 512-byte headers,
// each followed by its file's data, which is skipped. Names are what an extractor writes: a pax header's
// `path`, else a GNU long name, else the ustar prefix and name; a directory's ends with "/"; links are
// listed under their own names. Every header's checksum is verified: a first block without a valid one
// is not a tar (nothing is listed); a later one means the rest cannot be found, and the listing is
// incomplete. An archive cut short lists the files before the cut.
//
// Inflating a gzip costs the message's inflate budget (shared with archives inside zips); past it the
// listing is incomplete. Only as long as the content reads as a tar: a gzipped file of another kind
// stops being inflated at its first block.

import { Gunzip } from 'fflate';
import { ArchiveNames, type ArchiveListing } from './archive-names.js';
import type { InflateBudget } from './zip.js';

const BLOCK = 512;
// A GNU long name, or a pax header, is read whole; real ones are a path or a few. Longer ones are not read.
const MAX_META = 64 * 1024;
// Compressed bytes given to the inflater at a time: its output per step stays bounded (see zip.ts).
const INFLATE_STEP = 8 * 1024;

export interface TarListing extends ArchiveListing {
  /** the content (inflated, for a gzip) begins with a tar header whose checksum holds */
  isTar: boolean;
}

type State =
  | { kind: 'header' }
  /** file data skipped */
  | { kind: 'skip'; left: number }
  /** a GNU long name or a pax header, kept for the next header; `pad` bytes follow it */
  | { kind: 'meta'; type: 'longname' | 'pax'; size: number; pad: number }
  | { kind: 'done' };

export class TarLister {
  readonly listing: TarListing;
  private readonly names: ArchiveNames;
  private state: State = { kind: 'header' };
  private block = Buffer.alloc(BLOCK);
  private filled = 0;
  private meta: Buffer[] = [];
  private metaFilled = 0;
  /** what the next header's name is, from a GNU long name or a pax header */
  private longName: string | undefined;
  private paxPath: string | undefined;
  /** a pax header's `size`, which extractors take over the header's own */
  private paxSize: number | undefined;
  private headers = 0;
  private zeroBlocks = 0;
  /** undefined until the first bytes say whether the content is gzipped */
  private gunzip: Gunzip | null | undefined;
  private inflateStopped = false;
  /** the first bytes, until there are three */
  private first = Buffer.alloc(0);

  constructor(
    maxEntries = 1000,
    private readonly budget: Pick<InflateBudget, 'bytes'> = { bytes: 128 * 1024 * 1024 },
  ) {
    this.names = new ArchiveNames(maxEntries);
    this.listing = { isTar: false, entries: this.names.entries, complete: true };
  }

  push(data: Buffer): void {
    if (this.state.kind === 'done' || data.length === 0) return;
    let chunk = data;
    if (this.gunzip === undefined) {
      // The gzip signature and deflate method say whether to inflate: the first three bytes, whatever the chunks.
      chunk = this.first.length ? Buffer.concat([this.first, data]) : data;
      if (chunk.length < 3) {
        this.first = Buffer.from(chunk);
        return;
      }
      this.first = Buffer.alloc(0);
      this.gunzip = chunk[0] === 0x1f && chunk[1] === 0x8b && chunk[2] === 8 ? new Gunzip((out) => this.inflated(out)) : null;
    }
    if (!this.gunzip) {
      this.parse(chunk);
      return;
    }
    // A step at a time, so that a gzip bomb is stopped within a step's output.
    for (let at = 0; at < chunk.length && !this.inflateStopped && !this.done; at += INFLATE_STEP) {
      this.inflate(chunk.subarray(at, at + INFLATE_STEP), false);
    }
  }

  private get done(): boolean {
    return this.state.kind === 'done';
  }

  end(): void {
    if (this.first.length) {
      // Fewer than three bytes in all: read as they are.
      this.gunzip = null;
      this.parse(this.first);
    }
    if (this.gunzip && !this.inflateStopped && !this.done) this.inflate(new Uint8Array(0), true);
    this.finish();
  }

  private inflate(data: Uint8Array, final: boolean): void {
    try {
      this.gunzip!.push(data, final);
    } catch (err) {
      // Not a gzip stream after all, or damaged (fflate's format errors carry a code): an extractor fails
      // there too, and what was listed stands. Anything else (memory) leaves names unread.
      this.inflateStopped = true;
      if (typeof (err as { code?: unknown }).code !== 'number') this.listing.complete = false;
      this.finish();
    }
  }

  private inflated(data: Uint8Array): void {
    if (this.state.kind === 'done') return;
    this.parse(Buffer.from(data.buffer, data.byteOffset, data.length));
    // Charged once the content reads as a tar: a gzipped file of another kind costs only its first step.
    if (!this.listing.isTar) return;
    this.budget.bytes -= data.length;
    if (this.budget.bytes < 0 && !this.done) {
      // A gzip bomb, or more than any real mail carries: the rest is not looked at.
      this.listing.complete = false;
      this.finish();
    }
  }

  private parse(data: Buffer): void {
    let at = 0;
    while (at < data.length && this.state.kind !== 'done') {
      const s = this.state;
      if (s.kind === 'skip') {
        const n = Math.min(s.left, data.length - at);
        s.left -= n;
        at += n;
        if (s.left === 0) this.state = { kind: 'header' };
        continue;
      }
      if (s.kind === 'meta') {
        const n = Math.min(s.size - this.metaFilled, data.length - at);
        this.meta.push(Buffer.from(data.subarray(at, at + n)));
        this.metaFilled += n;
        at += n;
        if (this.metaFilled === s.size) this.endMeta(s);
        continue;
      }
      if (s.kind !== 'header') return;
      const n = Math.min(BLOCK - this.filled, data.length - at);
      data.copy(this.block, this.filled, at, at + n);
      this.filled += n;
      at += n;
      if (this.filled === BLOCK) {
        this.filled = 0;
        this.header(this.block);
      }
    }
    if (!this.names.complete) {
      this.listing.complete = false;
      this.finish();
    }
  }

  private header(block: Buffer): void {
    if (block.every((b) => b === 0)) {
      // The end: two zero blocks (one is enough for some readers; nothing real follows one).
      if (++this.zeroBlocks >= 2 || !this.listing.isTar) this.finish();
      return;
    }
    this.zeroBlocks = 0;
    if (!checksumHolds(block)) {
      // Before the first header: not a tar. After: the next header cannot be found.
      if (this.listing.isTar) this.listing.complete = false;
      this.finish();
      return;
    }
    this.listing.isTar = true;
    this.headers++;
    const type = String.fromCharCode(block[156]!);
    const meta = type === 'L' || type === 'x';
    // A pax size stands for the next file's header's own (which may say 0, or be too small for the file).
    const forFile = !meta && type !== 'K' && type !== 'g';
    const size = forFile && this.paxSize !== undefined ? this.paxSize : octal(block.subarray(124, 136));
    if (forFile) this.paxSize = undefined;
    if (size === undefined) {
      this.listing.complete = false;
      this.finish();
      return;
    }
    const padded = Math.ceil(size / BLOCK) * BLOCK;
    if (meta) {
      if (size > MAX_META) {
        this.listing.complete = false;
        this.finish();
        return;
      }
      this.meta = [];
      this.metaFilled = 0;
      this.state = size > 0 ? { kind: 'meta', type: type === 'L' ? 'longname' : 'pax', size, pad: padded - size } : { kind: 'header' };
      return;
    }
    if ((type === '1' || type === '2' || type === '5') && size > 0) {
      // Links and directories carry no data, but readers differ on whether to skip a size given anyway:
      // where the next header is depends on the reader.
      this.listing.complete = false;
      this.finish();
      return;
    }
    if (type !== 'g' && type !== 'K' && type !== 'V') this.entry(block, type);
    this.state = padded > 0 ? { kind: 'skip', left: padded } : { kind: 'header' };
  }

  private endMeta(s: State & { kind: 'meta' }): void {
    const bytes = Buffer.concat(this.meta);
    this.meta = [];
    if (s.type === 'longname') this.longName = text(bytes.subarray(0, nul(bytes)));
    else {
      const pax = paxRecords(bytes);
      if (pax.path !== undefined) this.paxPath = pax.path;
      if (pax.size !== undefined) {
        const size = /^[0-9]{1,15}$/.test(pax.size) ? Number(pax.size) : undefined;
        if (size === undefined) {
          // A size extractors may read otherwise: where the next header is cannot be told.
          this.listing.complete = false;
          this.finish();
          return;
        }
        this.paxSize = size;
      }
    }
    this.state = s.pad > 0 ? { kind: 'skip', left: s.pad } : { kind: 'header' };
  }

  private entry(block: Buffer, type: string): void {
    let name = this.paxPath ?? this.longName;
    this.paxPath = undefined;
    this.longName = undefined;
    if (name === undefined) {
      name = text(block.subarray(0, nul(block.subarray(0, 100))));
      // POSIX ustar keeps a path's start in the prefix field; GNU's "ustar  " uses those bytes otherwise.
      if (block.subarray(257, 263).toString('latin1') === 'ustar\0') {
        const prefix = block.subarray(345, 500);
        const p = text(prefix.subarray(0, nul(prefix)));
        if (p) name = `${p}/${name}`;
      }
    }
    if (type === '5' && !name.endsWith('/')) name += '/';
    if (name !== '') this.names.add(name);
  }

  private finish(): void {
    this.state = { kind: 'done' };
    this.meta = [];
  }
}

/** The checksum field holds the sum of the header's bytes, the field itself counted as spaces. */
function checksumHolds(block: Buffer): boolean {
  const stored = octal(block.subarray(148, 156));
  if (stored === undefined) return false;
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const b = i >= 148 && i < 156 ? 0x20 : block[i]!;
    unsigned += b;
    signed += b > 127 ? b - 256 : b;
  }
  // Old tars summed signed bytes.
  return stored === unsigned || stored === signed;
}

/** An octal number field (leading spaces, ending at a space or NUL), or GNU's base-256 for large sizes. */
function octal(field: Buffer): number | undefined {
  if (field[0]! & 0x80) {
    let value = 0;
    for (let i = 1; i < field.length; i++) value = value * 256 + field[i]!;
    if (field[0] !== 0x80 || value > Number.MAX_SAFE_INTEGER) return undefined;
    return value;
  }
  const digits = field.toString('latin1').replace(/^ +/, '').replace(/[ \0].*$/s, '');
  if (!/^[0-7]+$/.test(digits)) return undefined;
  return parseInt(digits, 8);
}

/** The path and size in pax records ("<length> path=<value>\n"), the last one winning as in extractors. */
function paxRecords(bytes: Buffer): { path?: string; size?: string } {
  const found: { path?: string; size?: string } = {};
  for (let at = 0; at < bytes.length; ) {
    const space = bytes.indexOf(0x20, at);
    if (space < 0) break;
    const length = Number(bytes.toString('latin1', at, space));
    if (!Number.isInteger(length) || length <= space - at + 1 || at + length > bytes.length) break;
    const record = bytes.subarray(space + 1, at + length - 1);
    const eq = record.indexOf(0x3d);
    const key = eq > 0 ? record.toString('latin1', 0, eq) : '';
    if (key === 'path' || key === 'size') found[key] = record.toString('utf8', eq + 1);
    at += length;
  }
  return found;
}

function nul(bytes: Buffer): number {
  const i = bytes.indexOf(0);
  return i < 0 ? bytes.length : i;
}

/** Names are bytes: UTF-8 on today's systems, else read one byte a character. */
function text(bytes: Buffer): string {
  const utf8 = bytes.toString('utf8');
  return utf8.includes('\ufffd') ? bytes.toString('latin1') : utf8;
}
