// Lists a tar attachment's files as its bytes stream by, and a gzipped tar's (.tar.gz, .tgz) as it is
// inflated: Windows opens both with a double click, like a zip. A tar is a sequence of 512-byte headers,
// each followed by its file's data, which is skipped. Every name an extractor may write is listed: a pax
// header's `path` (or GNU's sparse name), a GNU long name, else the ustar prefix and name; where GNU tar
// and bsdtar would pick different ones, both. A directory's ends with "/"; links are listed under their
// own names. Every header's checksum is verified: a first block without a valid one is not a tar
// (nothing is listed); a later one means the rest cannot be found, and the listing is incomplete, as it
// is wherever extractors disagree on where the next header is (a symlink or device with data, a pax
// record they would reject). An archive cut short lists the files before the cut.
//
// A file that starts like a gzip is read both ways, as a tar and inflated, since a tar whose first name
// begins with those bytes is still a tar to the extractors. Only the first gzip member is inflated
// (tar, bsdtar and 7-Zip write one); a tar that goes on past it, or whose gzip is cut short, is
// incomplete. Inflating costs the message's inflate budget (shared with archives inside zips) once the
// content reads as a tar; past it the listing is incomplete. A gzipped file of another kind stops being
// inflated at its first block.
//
// A file that starts like an xz (.tar.xz, .txz) is read as an xz too, its LZMA2 decoded as it streams
// (src/inspect/xz.ts), at the same cost to the budget. A tar going on past the xz's blocks, or an xz that
// cannot be read whole (another filter than LZMA2, damaged, cut short) before the tar in it ended, is
// incomplete, as a gzipped one is; an xz too short to hold a tar block is not a tar, unless another
// stream follows it. A gzip or an xz whose content is no tar but another archive, or compressed again
// (a zip, a cpio, a gzip in a gzip...), is incomplete: bsdtar extracts what is in it, and 7-Zip opens it
// by its content. A first header whose checksum only GNU tar reads (blanks or a NUL around the digits) is
// incomplete too.
//
// An archive in the tar (a zip, a disk image, another tar...) is listed too, as its data streams by,
// with the same bounds as one inside a zip (src/inspect/nested.ts): "backup.tar.gz/docs.zip/evil.exe".
//
// A file that starts like a bzip2 (.tar.bz2, .tbz2) or a Zstandard file (.tar.zst, .tzst) is read as one
// too (src/inspect/bzip2.ts, src/inspect/zstd.ts), every stream or frame in it, at the same cost to the
// budget; one that cannot be read whole (damaged, cut short, a zstd window past the one kept) before the
// tar in it ended is incomplete, and one whose content is under a tar block is no tar.
//
// These decoders run in the main thread, so a bomb is stopped by its ratio before the budget: 300 MB of
// zeros is 327 bytes of bzip2, which took over a second of every session's time to decode to the budget.
// Past MAX_RATIO times the compressed bytes received (and a floor), their listing is incomplete.

import { Inflate } from 'fflate';
import { ArchiveNames, nameFromBytes, normalizeName, type ArchiveListing } from './archive-names.js';
import { bytesAfterEnd, deflateEnded, INFLATE_STEP, inflateBudget, type InflateBudget } from './deflate.js';
import { detectType } from './magic.js';
import { LzmaError, lzmaDecode } from './lzma.js';
import { XZ_MAGIC, XzReader } from './xz.js';
import { Bzip2Reader } from './bzip2.js';
import { ZstdReader } from './zstd.js';
import { MAX_NESTING, NESTED_ARCHIVE, NestedArchive } from './nested.js';

const BLOCK = 512;
// A GNU long name, or a pax header, is read whole; real ones are a path or a few. Longer ones are not read.
const MAX_META = 64 * 1024;
// A gzip header's name and comment, together, read at most (its extra field is up to 64 KB by format):
// past that the listing is incomplete.
const MAX_GZIP_NAMES = 64 * 1024;
// What follows a gzip member's deflate stream: its CRC and size.
const GZIP_TRAILER = 8;
// Old GNU sparse headers: the flag saying extension blocks follow, in the header and in each extension.
const SPARSE_EXTENDED = 482;
const SPARSE_EXTENSION_EXTENDED = 504;

export interface TarListing extends ArchiveListing {
  /** the content (as it is, or inflated) begins with a tar header whose checksum holds */
  isTar: boolean;
}

/** Opens the archive in a file of the tar, by its name: none when it is no archive's, false when it cannot be opened. */
type OpenInner = (name: string) => NestedArchive | false | undefined;

type State =
  | { kind: 'header' }
  /** file data skipped */
  | { kind: 'skip'; left: number }
  /** a GNU long name or a pax header, kept for the next header; `pad` bytes follow it */
  | { kind: 'meta'; type: 'longname' | 'pax' | 'global'; size: number; pad: number }
  /** old GNU sparse extension blocks, then the file's data */
  | { kind: 'sparse'; data: number }
  | { kind: 'done' };

/** What pax headers say of the next file. */
interface Pax {
  path?: string;
  sparseName?: string;
  size?: number;
  /** the file is stored sparse (GNU's pax sparse formats): its data is not the file as it is laid out */
  sparse?: boolean;
  linkPath?: string;
}

/** One reading of the bytes as a tar: the raw ones, or the inflated ones. */
class TarParser {
  isTar = false;
  complete = true;
  /** the end-of-archive blocks were read */
  ended = false;
  /** the first block, when it showed the content is no tar */
  private notTar: Buffer | undefined;
  private state: State = { kind: 'header' };
  private readonly block = Buffer.alloc(BLOCK);
  private filled = 0;
  private meta: Buffer[] = [];
  private metaFilled = 0;
  private longName: string | undefined;
  private pax: Pax = {};
  private zeroBlocks = 0;
  /** the archive in the file whose data is streaming by, and how much of its data is still to come */
  private inner: { archive: NestedArchive; left: number } | undefined;
  /** an archive in the tar is encrypted */
  encrypted = false;
  /** a global pax header's path, which GNU tar gives the next file */
  private globalPath: string | undefined;
  /** the names of the files opened as archives (a link to one of them is one too) */
  private readonly opened = new Set<string>();
  /** the names of the files with data of their own, whatever they are named */
  private readonly files = new Set<string>();
  /** links named like an archive, by where they lead: judged once the tar is read */
  private links: string[] = [];

  constructor(
    private readonly names: ArchiveNames,
    private readonly openInner: OpenInner = () => undefined,
  ) {}

  get done(): boolean {
    return this.state.kind === 'done';
  }

  /** The content's first bytes (its first block, or what came of it), once it is known to be no tar. */
  notTarStart(ended: boolean): Buffer | undefined {
    if (this.isTar) return undefined;
    return this.notTar ?? (ended && this.filled > 0 ? this.block.subarray(0, this.filled) : undefined);
  }

  /** Gives up: names may be missing. */
  fail(): void {
    this.complete = false;
    this.finish();
  }

  push(data: Buffer): void {
    let at = 0;
    while (at < data.length && this.state.kind !== 'done') {
      const s = this.state;
      if (s.kind === 'skip') {
        const n = Math.min(s.left, data.length - at);
        if (this.inner) this.feedInner(data.subarray(at, at + n));
        s.left -= n;
        at += n;
        if (s.left === 0) {
          this.endInner();
          this.state = { kind: 'header' };
        }
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
      const n = Math.min(BLOCK - this.filled, data.length - at);
      data.copy(this.block, this.filled, at, at + n);
      this.filled += n;
      at += n;
      if (this.filled < BLOCK) continue;
      this.filled = 0;
      if (s.kind === 'sparse') this.sparseExtension(s, this.block);
      else this.header(this.block);
    }
    if (!this.names.complete) this.fail();
  }

  private header(block: Buffer): void {
    if (block.every((b) => b === 0)) {
      // The end: two zero blocks (one is enough for some readers; nothing real follows one).
      if (++this.zeroBlocks >= 2 || !this.isTar) {
        this.ended = this.isTar;
        this.finish();
      }
      return;
    }
    this.zeroBlocks = 0;
    if (!checksumHolds(block)) {
      // Before the first header: not a tar. After: the next header cannot be found. A first header whose
      // checksum GNU tar reads (blanks around it, a NUL before it) is a tar to GNU tar: not listed here.
      if (this.isTar || checksumHolds(block, true)) this.complete = false;
      else this.notTar = Buffer.from(block);
      this.finish();
      return;
    }
    this.isTar = true;
    const type = String.fromCharCode(block[156]!);
    const meta = type === 'L' || type === 'x' || type === 'X' || type === 'g';
    // A pax size stands for the next file's header's own (which may say 0, or be too small for the file).
    const forFile = !meta && type !== 'K';
    const size = forFile && this.pax.size !== undefined ? this.pax.size : octal(block.subarray(124, 136));
    if (size === undefined) return this.fail();
    const padded = Math.ceil(size / BLOCK) * BLOCK;
    if (meta) {
      if (size > MAX_META) return this.fail();
      // Only the last pax header before a file counts, as extractors read them.
      if (type === 'x' || type === 'X') this.pax = {};
      this.meta = [];
      this.metaFilled = 0;
      const kind = type === 'L' ? 'longname' : type === 'g' ? 'global' : 'pax';
      this.state = size > 0 ? { kind: 'meta', type: kind, size, pad: padded - size } : { kind: 'header' };
      return;
    }
    if (type === 'K') {
      this.state = padded > 0 ? { kind: 'skip', left: padded } : { kind: 'header' };
      return;
    }
    // Links, devices, fifos and volume labels carry no data, but readers differ on whether to skip a size
    // given anyway (bsdtar reads a hard link's as its data): where the next header is depends on the
    // reader. Directories they all read as having none.
    if ('12346V'.includes(type) && size > 0) return this.fail();
    const data = type === '5' ? 0 : padded;
    const pax = this.pax;
    const names = type === 'V' ? [] : this.entry(block, type);
    // A file whose name ends with "/" is a directory to extractors, which read the next header in its data
    // (a GNU incremental dump's directory, type D, carries its list of names as data, which they skip).
    if (data > 0 && type !== 'D' && names.some((n) => n.endsWith('/'))) return this.fail();
    this.openArchive(names, type, pax, block, size);
    if (type === 'S' && block[SPARSE_EXTENDED]) this.state = { kind: 'sparse', data };
    else this.state = data > 0 ? { kind: 'skip', left: data } : { kind: 'header' };
  }

  /** An old GNU sparse extension block: more of the map, and whether another block follows. */
  private sparseExtension(s: State & { kind: 'sparse' }, block: Buffer): void {
    if (block[SPARSE_EXTENSION_EXTENDED]) return;
    this.state = s.data > 0 ? { kind: 'skip', left: s.data } : { kind: 'header' };
  }

  private endMeta(s: State & { kind: 'meta' }): void {
    const bytes = Buffer.concat(this.meta);
    this.meta = [];
    this.state = s.pad > 0 ? { kind: 'skip', left: s.pad } : { kind: 'header' };
    if (s.type === 'longname') {
      this.longName = nameFromBytes(bytes.subarray(0, nul(bytes)));
      return;
    }
    const records = paxRecords(bytes);
    if (!records) return this.fail(); // extractors reject it, or read it otherwise
    if (s.type === 'global') {
      // GNU tar names the next file after a global path too.
      if (records.path) {
        this.names.add(records.path);
        this.globalPath = records.path;
      }
      return;
    }
    if (records.path) this.pax.path = records.path;
    if (records['GNU.sparse.name']) this.pax.sparseName = records['GNU.sparse.name'];
    if (Object.keys(records).some((key) => key.startsWith('GNU.sparse.'))) this.pax.sparse = true;
    if (records.linkpath) this.pax.linkPath = records.linkpath;
    if (records.size !== undefined) {
      if (!/^[0-9]{1,15}$/.test(records.size)) return this.fail();
      this.pax.size = Number(records.size);
    }
  }

  /** Lists the file's names; returns them. */
  private entry(block: Buffer, type: string): string[] {
    const names = [this.pax.path, this.pax.sparseName, this.longName].filter((n): n is string => Boolean(n));
    this.pax = {};
    this.longName = undefined;
    if (!names.length) {
      let name = nameFromBytes(block.subarray(0, nul(block.subarray(0, 100))));
      // POSIX ustar keeps a path's start in the prefix field; GNU's "ustar  " uses those bytes otherwise.
      if (block.subarray(257, 263).toString('latin1') === 'ustar\0') {
        const prefix = block.subarray(345, 500);
        const p = nameFromBytes(prefix.subarray(0, nul(prefix)));
        if (p) name = `${p}/${name}`;
      }
      names.push(name);
    }
    const listed: string[] = [];
    for (let name of names) {
      // "evil.exe/." is written as the file evil.exe.
      name = name.replace(/(\/+\.)+$/, '');
      if (type === '5' && !name.endsWith('/')) name += '/';
      if (name === '') continue;
      this.names.add(name);
      listed.push(name);
    }
    return listed;
  }

  /**
   * The file is an archive by its name (as extractors write it: up to a NUL, without trailing dots):
   * its data is fed to an inner lister as it streams by. Extractors write a file of a type they do not
   * know as a regular one. A sparse file's data is not the file as it is laid out, and a multi-volume
   * continuation is not the whole of it: those leave the listing incomplete. A link named like an
   * archive opens its target: one in the tar that was not opened leaves the listing incomplete too.
   */
  private openArchive(names: string[], type: string, pax: Pax, block: Buffer, size: number): void {
    const global = this.globalPath;
    this.globalPath = undefined;
    const all = [...names, ...(global ? [global] : [])].map(normalizeName);
    if (!'123456VD'.includes(type)) for (const n of all) this.files.add(resolvePath('', n));
    const archiveName = all.find((n) => NESTED_ARCHIVE.test(n));
    if (archiveName === undefined) return;
    if (type === '1' || type === '2') {
      const target = normalizeName(pax.linkPath ?? nameFromBytes(block.subarray(157, 157 + nul(block.subarray(157, 257)))));
      // A hard link names a file of the tar; a symbolic link's target is relative to its own folder.
      this.links.push(resolvePath(type === '1' ? '' : archiveName, target));
      return;
    }
    if ('346V5'.includes(type)) return;
    if (type === 'S' || type === 'M' || pax.sparse) {
      this.complete = false;
      return;
    }
    if (size === 0) return;
    const archive = this.openInner(archiveName);
    if (archive === false) this.complete = false;
    else if (archive) {
      this.inner = { archive, left: size };
      for (const n of all) this.opened.add(resolvePath('', n));
    }
  }

  /** The tar's bytes ended (it may have been cut short): the archive being listed in it gives its last names. */
  close(): void {
    this.endInner();
    this.judgeLinks();
  }

  /**
   * A link named like an archive leads to a file of the tar that was not opened (its own name is no
   * archive's): extractors write the link, and opening it opens that file. One leading out of the tar
   * brings nothing of its own.
   */
  private judgeLinks(): void {
    for (const target of this.links) if (this.files.has(target) && !this.opened.has(target)) this.complete = false;
    this.links = [];
  }

  /** Gives the archive in the file its next bytes (not the padding after the file), and takes its names. */
  private feedInner(data: Buffer): void {
    const inner = this.inner!;
    const n = Math.min(inner.left, data.length);
    if (n === 0) return;
    inner.archive.push(data.subarray(0, n));
    inner.left -= n;
    this.takeInner(inner.archive);
  }

  /** The file's data ended (or the tar did): the inner archive's last names. */
  private endInner(): void {
    const inner = this.inner;
    if (!inner) return;
    this.inner = undefined;
    inner.archive.end();
    this.takeInner(inner.archive);
  }

  private takeInner(archive: NestedArchive): void {
    for (const name of archive.newNames()) this.names.add(`${archive.name}/${name}`);
    if (!archive.complete) this.complete = false;
    if (archive.encrypted) this.encrypted = true;
  }

  private finish(): void {
    this.endInner();
    this.judgeLinks();
    this.state = { kind: 'done' };
    this.meta = [];
  }
}

/**
 * Where `target` leads from the folder of `from`, as one path inside the archive ("./", "." and ".."
 * resolved), so that names written differently compare: `resolvePath('', name)` is the name's own.
 */
function resolvePath(from: string, target: string): string {
  if (target.startsWith('/')) return target;
  const parts: string[] = [];
  for (const part of [...from.split('/').slice(0, -1), ...target.split('/')]) {
    if (part === '..') parts.pop();
    else if (part !== '.' && part !== '') parts.push(part);
  }
  return parts.join('/');
}

/** A gzip member's header, read as its bytes come (its name and comment may be long). */
class GzipHeader {
  private bytes: Buffer = Buffer.alloc(0);

  /**
   * The header's length once whole, undefined while more bytes are needed, false when it is no gzip,
   * 'too long' past the bound on its name and comment.
   */
  push(data: Buffer): number | undefined | false | 'too long' {
    this.bytes = this.bytes.length ? Buffer.concat([this.bytes, data]) : data;
    const b = this.bytes;
    if (b.length < 10) return undefined;
    const flags = b[3]!;
    if (b[0] !== 0x1f || b[1] !== 0x8b || b[2] !== 8 || flags & 0xe0) return false;
    let at = 10;
    if (flags & 0x04) {
      if (b.length < 12) return undefined;
      at = 12 + b.readUInt16LE(10);
    }
    const names = at;
    for (const flag of [0x08, 0x10]) {
      if (!(flags & flag)) continue;
      const end = b.indexOf(0, at);
      if (end < 0) return b.length - names > MAX_GZIP_NAMES ? 'too long' : undefined;
      at = end + 1;
    }
    if (at - names > MAX_GZIP_NAMES) return 'too long';
    if (flags & 0x02) at += 2;
    return b.length >= at ? at : undefined;
  }

  /** The bytes received so far. */
  get received(): Buffer {
    return this.bytes;
  }
}

/**
 * Decompressed bytes per compressed byte received past which an xz, bzip2 or zstd tar is taken for a
 * bomb. A log that compresses well is 10 to 100 times smaller; a tar beginning with tens of megabytes of
 * zeros (a disk image) reaches about 7 000 in xz and 30 000 in zstd at that point, and passes. bzip2 packs
 * runs of one byte further (45 MB in a few dozen bytes): that is where a 327-byte file held the event
 * loop for a second. A .tar.gz is left to the budget: deflate cannot go past 1032, and fflate is fed a
 * step at a time.
 */
const MAX_RATIO = 100_000;
/** Decompressed bytes always allowed, whatever the ratio. */
const RATIO_FLOOR = 8 * 1024 * 1024;

export class TarLister {
  readonly listing: TarListing;
  /** the attachment's bytes received so far */
  private received = 0;
  /** bytes decoded per xz, bzip2 or zstd reading, to compare with `received` */
  private readonly produced = new Map<TarParser, number>();
  private readonly names: ArchiveNames;
  private readonly raw: TarParser;
  /** the inflated reading, for a file that starts like a gzip */
  private gz: { header?: GzipHeader; inflater?: Inflate; parser: TarParser; stopped: boolean; after?: number } | undefined;
  /** the decompressed reading, for a file that starts like an xz */
  private xz: { reader: XzReader; parser: TarParser; tail: Buffer; anotherStream: boolean } | undefined;
  /** the decompressed readings, for a file that starts like a bzip2 or a Zstandard file */
  private readonly decoded: { reader: Bzip2Reader | ZstdReader; parser: TarParser }[] = [];
  private first = true;
  /** the attachment ended */
  private ended = false;

  /** `depth`: 0 for the attachment, and one more for each archive this tar is in. */
  constructor(
    private readonly maxEntries = 1000,
    private readonly budget: InflateBudget = inflateBudget(),
    private readonly depth = 0,
  ) {
    this.names = new ArchiveNames(maxEntries);
    this.raw = this.parser();
    this.listing = { isTar: false, entries: this.names.entries, complete: true };
  }

  /** An archive in the tar is encrypted (its content can then be neither scanned nor trusted). */
  get encrypted(): boolean {
    return [this.raw, this.gz?.parser, this.xz?.parser, ...this.decoded.map((d) => d.parser)].some((p) => p?.encrypted);
  }

  /** One reading of the tar, opening the archives in it (at most three levels down, within the budget). */
  private parser(): TarParser {
    return new TarParser(this.names, (name) => {
      if (this.depth >= MAX_NESTING) return false;
      if (this.budget.archives <= 0) {
        this.budget.exhausted = true;
        return false;
      }
      this.budget.archives--;
      return new NestedArchive(name, false, this.depth + 1, this.maxEntries, this.budget);
    });
  }

  push(data: Buffer): void {
    if (data.length === 0) return;
    this.received += data.length;
    if (this.first) {
      this.first = false;
      // The gzip signature, at least its first byte: the header reader says the rest.
      if (data[0] === 0x1f) this.gz = { header: new GzipHeader(), parser: this.parser(), stopped: false };
      if (data[0] === 0xfd) {
        const parser = this.parser();
        this.produced.set(parser, 0);
        const reader = new XzReader((out) => {
          this.decompressed(parser, out);
          // Not a tar, its end read, or past the budget: nothing more to decode (a bomb's next chunks).
          if (parser.done) reader.stop();
        });
        this.xz = { reader, parser, tail: Buffer.alloc(0), anotherStream: false };
      }
      // "BZh"; a zstd frame (28 B5 2F FD), a skippable one (5x 2A 4D 18), which zstd reads past, or one
      // of zstd before 1.0 (1E..27 B5 2F FD), which zstd still reads and Douane does not.
      if (data[0] === 0x42) this.decodeWith((output) => new Bzip2Reader(output));
      if (data[0] === 0x28 || (data[0]! & 0xf0) === 0x50 || (data[0]! >= 0x1e && data[0]! <= 0x27)) this.decodeWith((output) => new ZstdReader(output));
    }
    if (!this.raw.done) this.raw.push(data);
    const xz = this.xz;
    if (xz && !xz.reader.done && !xz.parser.done) {
      const before = xz.reader.position;
      xz.reader.push(data);
      if (xz.reader.ended) this.afterIndex(xz, data.subarray(xz.reader.position - before));
      this.xzStopped(xz, false);
    } else if (xz?.reader.ended) this.afterIndex(xz, data);
    for (const d of this.decoded) {
      if (d.reader.done || d.parser.done) continue;
      d.reader.push(data);
      this.decodingStopped(d);
    }
    if (this.gz?.after !== undefined) this.afterMember(this.gz, data.length);
    else if (this.gz && !this.gz.stopped) this.gunzip(this.gz, data);
    this.update();
  }

  end(): void {
    this.ended = true;
    const gz = this.gz;
    if (gz && !gz.stopped && gz.inflater) this.inflate(gz, new Uint8Array(0), true);
    // The gzip ended before the tar in it did: cut short.
    if (gz && gz.parser.isTar && !gz.parser.ended && !gz.parser.done) gz.parser.fail();
    if (this.xz) {
      if (!this.xz.reader.done && !this.xz.parser.done) this.xz.reader.end();
      this.xzStopped(this.xz, true);
    }
    for (const d of this.decoded) {
      if (!d.reader.done && !d.parser.done) d.reader.end();
      this.decodingStopped(d);
    }
    for (const p of [this.raw, gz?.parser, this.xz?.parser, ...this.decoded.map((d) => d.parser)]) p?.close();
    this.update();
  }

  /**
   * A bzip2 or zstd reading stopped: as for an xz, names past that point cannot be read, unless the
   * content was shown not to be a tar, or the tar's end was read. Its streams ended before a whole tar
   * block came out: no tar. A file that is not of its kind says nothing; one that is, and fails before
   * anything came out, hides what the tools that read it further (an old or unusual encoder's blocks,
   * other formats after an empty frame) would extract.
   */
  private decodingStopped({ reader, parser }: TarLister['decoded'][number]): void {
    if (!reader.done || !reader.recognised) return;
    if (reader.ended && !parser.isTar && !parser.done) return;
    if (!parser.ended && !(parser.done && !parser.isTar)) parser.fail();
  }

  /**
   * The xz reading stopped (its blocks ended, or it failed): names past that point cannot be read, unless
   * the content was shown not to be a tar, or the tar's end was read. A file that is no xz says nothing.
   */
  private xzStopped(xz: NonNullable<TarLister['xz']>, atEnd: boolean): void {
    const { reader, parser } = xz;
    if (!reader.done || !reader.isXz) return;
    // The stream ended before a whole tar block came out (notes.txt.xz): no tar, unless another stream
    // follows, which xz and tar read on from where this one stopped. Known once the file ended.
    if (reader.ended && !parser.isTar && !parser.done && (!atEnd || !xz.anotherStream)) return;
    if (!parser.ended && !(parser.done && !parser.isTar)) parser.fail();
  }

  /** Bytes after the xz's index (its footer, padding): another stream starts with the xz signature. */
  private afterIndex(xz: NonNullable<TarLister['xz']>, data: Buffer): void {
    if (xz.anotherStream || data.length === 0) return;
    const bytes = Buffer.concat([xz.tail, data]);
    if (bytes.includes(XZ_MAGIC)) xz.anotherStream = true;
    xz.tail = Buffer.from(bytes.subarray(Math.max(0, bytes.length - (XZ_MAGIC.length - 1))));
  }

  /** Bytes after the first member's deflate stream: past its trailer, another member (read by extractors). */
  private afterMember(gz: NonNullable<TarLister['gz']>, bytes: number): void {
    gz.after = (gz.after ?? 0) + bytes;
    // Unless the content was shown not to be a tar, or its end was read, what follows may hold names.
    if (gz.after > GZIP_TRAILER && !gz.parser.ended && !(gz.parser.done && !gz.parser.isTar)) gz.parser.fail();
  }

  private gunzip(gz: NonNullable<TarLister['gz']>, data: Buffer): void {
    let body = data;
    if (gz.header) {
      const length = gz.header.push(data);
      if (length === undefined) return;
      if (length === false || length === 'too long') {
        gz.stopped = true;
        if (length === 'too long') gz.parser.fail();
        return;
      }
      body = gz.header.received.subarray(length);
      gz.header = undefined;
      gz.inflater = new Inflate((out) => this.inflated(gz, out));
    }
    // A step at a time, so that a gzip bomb is stopped within a step's output.
    for (let at = 0; at < body.length && !gz.stopped; at += INFLATE_STEP) {
      this.inflate(gz, body.subarray(at, at + INFLATE_STEP), false);
      if (!gz.stopped && deflateEnded(gz.inflater!)) {
        // The first member ended: what follows its trailer is another member, or junk.
        gz.stopped = true;
        this.afterMember(gz, bytesAfterEnd(gz.inflater!) + Math.max(0, body.length - at - INFLATE_STEP));
      }
    }
  }

  private inflate(gz: NonNullable<TarLister['gz']>, data: Uint8Array, final: boolean): void {
    try {
      gz.inflater!.push(data, final);
    } catch {
      gz.stopped = true;
      // Damaged or cut short: names past the damage cannot be read, unless the content was shown not to
      // be a tar, or the tar's end was read (the inflater holds a stored block back until it is whole,
      // so a tar's first header may never have come out).
      if (!gz.parser.ended && !(gz.parser.done && !gz.parser.isTar)) gz.parser.fail();
    }
  }

  private inflated(gz: NonNullable<TarLister['gz']>, data: Uint8Array): void {
    if (gz.parser.done) {
      gz.stopped = true;
      return;
    }
    this.decompressed(gz.parser, Buffer.from(data.buffer, data.byteOffset, data.length));
  }

  private decodeWith(make: (output: (data: Buffer) => void) => Bzip2Reader | ZstdReader): void {
    const parser = this.parser();
    this.produced.set(parser, 0);
    // bzip2 says how much of its input its output came from: bytes received after a bomb (padding) do
    // not raise what the bomb may decode to.
    const consumed = () => ('consumed' in reader ? reader.consumed : this.received);
    const reader = make((out) => {
      this.decompressed(parser, out, consumed());
      // Not a tar, its end read, or past the budget: nothing more to decode (a bomb's next blocks).
      if (parser.done) reader.stop();
    });
    this.decoded.push({ reader, parser });
  }

  /** Decompressed bytes for a tar parser, made from `from` bytes of the attachment (all received so far, unless the decoder says). */
  private decompressed(parser: TarParser, data: Buffer, from = this.received): void {
    if (parser.done) return;
    parser.push(data);
    // Charged once the content reads as a tar: a compressed file of another kind costs only its first step.
    if (!parser.isTar) return;
    this.budget.bytes -= data.length;
    const before = this.produced.get(parser);
    let bomb = false;
    if (before !== undefined) {
      const produced = before + data.length;
      this.produced.set(parser, produced);
      bomb = produced > RATIO_FLOOR && produced > MAX_RATIO * from;
    }
    // A bomb, or more than any real mail carries: the rest is not looked at.
    if (this.budget.bytes < 0 && !parser.done) this.budget.exhausted = true;
    if ((this.budget.bytes < 0 || bomb) && !parser.done) parser.fail();
  }

  private update(): void {
    // Decompressed content that is no tar but another archive, or compressed again: bsdtar extracts it
    // (zip, cpio, ar..., one compression after another), 7-Zip opens it by its content.
    for (const p of [this.gz?.parser, this.xz?.parser, ...this.decoded.map((d) => d.parser)]) {
      const start = p?.notTarStart(this.ended);
      if (start && p!.complete && isArchive(start)) p!.fail();
    }
    const parsers = [this.raw, this.gz?.parser, this.xz?.parser, ...this.decoded.map((d) => d.parser)].filter((p) => p !== undefined);
    this.listing.isTar = parsers.some((p) => p.isTar);
    this.listing.complete = parsers.every((p) => p.complete) && this.names.complete;
  }
}

/** Content an extractor (bsdtar, 7-Zip) opens as an archive, or decompresses again, from its first bytes. */
function isArchive(head: Buffer): boolean {
  if (head.length < 4) return false;
  const type = detectType(head);
  if (['zip', 'office-openxml', 'rar', '7z', 'gzip', 'xz', 'bzip2', 'zstd', 'cab'].includes(type)) return true;
  const start = head.toString('latin1', 0, 8);
  // cpio (odc, newc, crc; binary either way), ar, xar, LHA, lzip
  if (/^07070[127]/.test(start) || binaryCpio(head, 'LE') || binaryCpio(head, 'BE')) return true;
  if (start.startsWith('!<arch>\n') || start.startsWith('xar!') || /^..-l[hz][0-9a-z ]-/s.test(start) || start.startsWith('LZIP')) return true;
  // LZ4 (and its legacy frames), lrzip, lzop, grzip, RPM, WARC, mtree: libarchive reads each.
  if ([0x184d2204, 0x184c2102].includes(head.readUInt32LE(0))) return true;
  if (/^(LRZI|\x89LZO|GRZipII|\xed\xab\xee\xdb|WARC\/|#mtree)/.test(start)) return true;
  // A uuencoded file, whose "begin" line libarchive finds after other lines too (within the bytes here).
  if (/(^|\n)begin(-base64)? [0-7]{3,4} \S/.test(head.toString('latin1'))) return true;
  // LZMA alone
  return lzmaAlone(head);
}

const GARBAGE = ['a distance before the start', 'a repeated match at the start', 'corrupted range coder', 'the range coder must start with 0'];

/**
 * Whether the bytes after an .lzma header decode as LZMA, as far as they go: some data files start with
 * numbers that read as a plausible header (a MATLAB v4 matrix), and garbage soon asks for a match before
 * the start. Bytes running out first prove nothing: taken for LZMA.
 */
function decodesAsLzma(head: Buffer): boolean {
  const high = head.readUInt32LE(9);
  const size = high === 0xffffffff ? 1024 : Math.min(1024, high * 2 ** 32 + head.readUInt32LE(5));
  try {
    lzmaDecode(head, 13, head.subarray(0, 5), size);
    return true;
  } catch (err) {
    // Only what LZMA never writes is a sign of garbage; running out of bytes, an end marker (a small
    // file) or a match across the 1 KB decoded here are not.
    return !(err instanceof LzmaError) || !GARBAGE.includes(err.message);
  }
}

/**
 * Old binary cpio, in either byte order: its two-byte magic, then a name ending where the header says.
 * The magic alone would be one binary file in 32 768.
 */
function binaryCpio(head: Buffer, order: 'LE' | 'BE'): boolean {
  if (head.length < 26) return false;
  const read = (at: number) => (order === 'LE' ? head.readUInt16LE(at) : head.readUInt16BE(at));
  if (read(0) !== 0o70707) return false;
  const nameSize = read(20);
  // A name longer than the bytes at hand cannot be checked: taken for cpio.
  return nameSize >= 2 && (26 + nameSize > head.length || (head[26 + nameSize - 1] === 0 && head.indexOf(0, 26) === 26 + nameSize - 1));
}

/** The 13-byte header of an .lzma file (xz --format=lzma, tar --lzma), as xz and libarchive take it. */
export function lzmaAlone(head: Buffer): boolean {
  if (head.length < 13 || head[0]! >= 9 * 5 * 5) return false;
  // liblzma (xz, bsdtar) reads no more than four literal context and position bits together.
  if ((head[0]! % 9) + (Math.floor(head[0]! / 9) % 5) > 4) return false;
  const dict = head.readUInt32LE(1);
  // 2^n or 2^n + 2^(n-1) as xz takes it (from 4 KiB, what encoders write: fewer false alarms on other
  // files), or "unknown"; then the size unknown, or below 256 GiB.
  let pow = 4096;
  while (pow * 2 <= dict) pow *= 2;
  if (dict !== 0xffffffff && dict !== pow && dict !== pow + pow / 2) return false;
  const high = head.readUInt32LE(9);
  const low = head.readUInt32LE(5);
  if (high === 0xffffffff ? low !== 0xffffffff : high >= 0x40) return false;
  // Nothing in it (a size of 0, no stream) hides nothing; and the range coder's first byte is always 0.
  // Both spare files that start with zeros and a power of two (an H.264 stream's 00 00 00 01...).
  return (high !== 0 || low !== 0) && head.length > 13 && head[13] === 0 && decodesAsLzma(head);
}

/**
 * The checksum field holds the sum of the header's bytes, the field itself counted as spaces. `asGnuTar`
 * reads the field as GNU tar does: one NUL, then any blanks (tab, newline...) before the digits, any blank
 * or NUL after them.
 */
function checksumHolds(block: Buffer, asGnuTar = false): boolean {
  const field = block.subarray(148, 156);
  const gnu = /^\0?[\t\n\v\f\r ]*([0-7]+)(?:[\t\n\v\f\r \0][^]*)?$/.exec(field.toString('latin1'));
  const stored = asGnuTar ? (gnu ? parseInt(gnu[1]!, 8) : undefined) : octal(field);
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
  // All NULs: extractors read 0.
  if (digits === '') return field.every((b) => b === 0) ? 0 : undefined;
  if (!/^[0-7]+$/.test(digits)) return undefined;
  return parseInt(digits, 8);
}

/**
 * Pax records ("<length> <key>=<value>\n", the length counting the whole record), the last one of a key
 * winning as in extractors; undefined when one is malformed (extractors reject or skip it: what they
 * would read cannot be told).
 */
function paxRecords(bytes: Buffer): Record<string, string> | undefined {
  const found: Record<string, string> = {};
  for (let at = 0; at < bytes.length; ) {
    // Padding after the last record.
    if (bytes[at] === 0) break;
    const space = bytes.indexOf(0x20, at);
    if (space < 0) return undefined;
    const digits = bytes.toString('latin1', at, space);
    if (!/^[0-9]{1,9}$/.test(digits)) return undefined;
    const length = Number(digits);
    const end = at + length;
    if (length <= space - at + 1 || end > bytes.length || bytes[end - 1] !== 0x0a) return undefined;
    const record = bytes.subarray(space + 1, end - 1);
    const eq = record.indexOf(0x3d);
    if (eq <= 0) return undefined;
    found[record.toString('utf8', 0, eq)] = record.toString('utf8', eq + 1);
    at = end;
  }
  return found;
}

function nul(bytes: Buffer): number {
  const i = bytes.indexOf(0);
  return i < 0 ? bytes.length : i;
}
