// An archive inside another one (an entry of a zip, a file in a tar), whatever kind it turns out to be,
// listed as its bytes stream by: a zip holding a disk image holding a shortcut, or a .tar.gz holding a
// zip holding a program, is a known way past filters that only look one level in. Its names come as
// "outer.zip/inner.iso/name". Three levels at most below the attachment, and a bounded number of inner
// archives and of bytes inflated for the whole message (the budget in deflate.ts).

import { Inflate } from 'fflate';
import { namesArchive, type ArchiveListing } from './archive-names.js';
import { CabLister, defaultName as cabDefaultName } from './cab.js';
import { deflateEnded, INFLATE_STEP, type InflateBudget } from './deflate.js';
import { compressedFileNames, namesDiskImage } from './gzip.js';
import { IsoLister } from './iso.js';
import { detectType, MAGIC_BYTES } from './magic.js';
import { RarLister, type RarListing } from './rar.js';
import { defaultName, SevenZipLister, type SevenZipListing } from './sevenzip.js';
import { TarLister } from './tar.js';
import { ZipLister, type ZipListing } from './zip.js';

export { NESTED_ARCHIVE } from './archive-names.js';
/** Levels of archives opened below the attachment itself. */
export const MAX_NESTING = 3;

/**
 * The archive inside one entry, whatever kind it turns out to be (each lister recognises its own), fed
 * the entry's bytes as they stream by, inflated first when deflated (a zip entry).
 */
export class NestedArchive {
  private readonly listers: ArchiveListing[];
  private readonly taken: number[];
  private readonly inflater: Inflate | undefined;
  private readonly sinks: { push(data: Buffer): void }[];
  private readonly sevenZip: SevenZipLister;
  private readonly tar: TarLister;
  private readonly cab: CabLister;
  /** false once names may be missing: an inner listing was, or the inflate budget ran out */
  complete = true;
  encrypted = false;
  private stopped = false;
  private unnamedTaken = false;
  private cabUnnamedTaken = false;
  /** the entry's first bytes: a gzip, xz, bzip2 or zstd holds one file, named as its tool and 7-Zip name it */
  private head = Buffer.alloc(0);
  private compressedTaken = false;

  private readonly zip: ZipLister;

  /** `depth`: the level of the archive inside, 1 for one in the attachment. */
  constructor(
    readonly name: string,
    deflated: boolean,
    depth: number,
    maxEntries: number,
    private readonly budget: InflateBudget,
  ) {
    this.zip = new ZipLister(maxEntries, depth, budget);
    const zip = this.zip;
    const rar = new RarLister(maxEntries);
    const iso = new IsoLister(maxEntries);
    this.sevenZip = new SevenZipLister(maxEntries, budget);
    this.tar = new TarLister(maxEntries, budget, depth);
    this.cab = new CabLister(maxEntries);
    this.sinks = [zip, rar, iso, this.sevenZip, this.tar, this.cab];
    this.listers = [zip.listing, rar.listing, iso.listing, this.sevenZip.listing, this.tar.listing, this.cab.listing];
    this.taken = this.listers.map(() => 0);
    if (deflated) {
      this.inflater = new Inflate();
      this.inflater.ondata = (data) => this.give(Buffer.from(data.buffer, data.byteOffset, data.length));
    }
  }

  push(data: Buffer): void {
    if (!this.inflater) {
      if (!this.stopped) this.give(data);
      return;
    }
    // A step at a time, so that a bomb is stopped within a step's output, and not past the stream's end
    // (bytes after it would only pile up in the inflater).
    for (let at = 0; at < data.length && !this.stopped; at += INFLATE_STEP) {
      if (this.inflaterDone()) {
        this.stopped = true;
        break;
      }
      this.inflate(data.subarray(at, at + INFLATE_STEP), false);
    }
  }

  end(): void {
    if (!this.stopped && this.inflater && !this.inflaterDone()) this.inflate(new Uint8Array(0), true);
    this.stopped = true;
    this.zip.end();
    this.sevenZip.end();
    this.tar.end();
    this.cab.end();
  }

  private inflate(data: Uint8Array, final: boolean): void {
    try {
      this.inflater!.push(data, final);
    } catch (err) {
      // Not a deflate stream after all (fflate's format errors carry a code): an extractor fails on it
      // too, and what was listed stands. Anything else (memory) leaves names unread.
      this.stopped = true;
      if (typeof (err as { code?: unknown }).code !== 'number') this.complete = false;
    }
  }

  /** Inflating a stream that has not ended yet. */
  get streaming(): boolean {
    return this.inflater !== undefined && !this.stopped && !this.inflaterDone();
  }

  private inflaterDone(): boolean {
    return this.inflater !== undefined && deflateEnded(this.inflater);
  }

  /** Names found since the last call, from whichever lister recognised the archive. */
  newNames(): string[] {
    const names: string[] = [];
    this.listers.forEach((listing, i) => {
      names.push(...listing.entries.slice(this.taken[i]));
      this.taken[i] = listing.entries.length;
      if (!listing.complete) this.complete = false;
    });
    const [zip, rar, , sevenZip] = this.listers as [ZipListing, RarListing, unknown, SevenZipListing];
    if ((zip.isZip && zip.encrypted) || (rar.isRar && rar.encrypted) || (sevenZip.is7z && sevenZip.encrypted)) this.encrypted = true;
    // A file 7-Zip stores without a name is extracted under the inner archive's name less ".7z".
    if (sevenZip.unnamed && !this.unnamedTaken) {
      this.unnamedTaken = true;
      const named = defaultName(this.name);
      names.push(named);
      if (namesArchive(named)) this.complete = false;
    }
    const cab = this.cab.listing;
    if (cab.unnamed && !this.cabUnnamedTaken) {
      this.cabUnnamedTaken = true;
      const named = cabDefaultName(this.name);
      names.push(named);
      if (namesArchive(named)) this.complete = false;
    }
    // A cabinet of a set: 7-Zip and cabextract list the other cabinets' files, found by the names this
    // one gives them, which need not be names opened here.
    if (cab.isCab && cab.inSet) this.complete = false;
    // invoice.exe.xz inside a zip holds invoice.exe, whatever its content lists as.
    // Its first bytes say once they are all in (or no more will come).
    if (!this.compressedTaken && (this.head.length >= MAGIC_BYTES || this.stopped)) {
      this.compressedTaken = true;
      const type = detectType(this.head);
      const compressed = compressedFileNames(type, this.head, this.name, MAGIC_BYTES);
      if (compressed === undefined || (!this.tar.listing.isTar && namesDiskImage(compressed))) this.complete = false;
      for (const name of compressed ?? []) if (!/\.tar$/i.test(name)) names.push(name);
    }
    return names;
  }

  private give(data: Buffer): void {
    if (this.stopped) return;
    if (this.head.length < MAGIC_BYTES) this.head = Buffer.concat([this.head, data.subarray(0, MAGIC_BYTES - this.head.length)]);
    if (this.inflater) {
      this.budget.bytes -= data.length;
      if (this.budget.bytes < 0) {
        // A zip bomb, or more than any real mail carries: the rest is not looked at.
        this.budget.exhausted = true;
        this.stopped = true;
        this.complete = false;
        return;
      }
    }
    for (const sink of this.sinks) sink.push(data);
  }
}
