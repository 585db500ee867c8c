// Reads a bzip2 file (`.bz2`, `.tar.bz2`, `.tbz2`) as it streams and hands on what it decompresses, for
// the tar lister: Windows, bsdtar and 7-Zip open a bzipped tar as they open a gzipped one. A bzip2 stream
// is a header ("BZh" and the block size), blocks that each decode on their own (Huffman codes, then
// move-to-front, then the Burrows-Wheeler transform undone, then runs of four or more bytes expanded),
// and an end marker with the checksum of every block. Streams may follow one another (pbzip2 writes one
// per block); bzip2 and bsdtar read them all, and ignore anything else after the last.
//
// Blocks are not byte-aligned and say nothing of their length, so a block is decoded once its bytes are
// all here: the attempt is made again when the bytes held have doubled, which keeps the work linear. A
// block's output (up to 45 MB from 900 KB, by its runs) is handed on a piece at a time, so that whoever
// reads it can stop a bomb within a piece. Each block's checksum and the stream's are verified: a
// damaged file fails, as it fails in bzip2 and bsdtar. A failure leaves what was handed on standing;
// whoever reads it decides what it means. Randomised blocks (bzip2 0.9.0 and older wrote them) are not
// decoded: they fail.

/** A block holds at most this many bytes per level (the digit after "BZh"). */
const LEVEL_BYTES = 100_000;
const GROUP_SYMBOLS = 50;
const MAX_CODE_LENGTH = 20;
/** bzip2 reads more selectors than this, and keeps only these. */
const MAX_SELECTORS = 18_002;
/** The longest run bzip2 lets RUNA/RUNB symbols add up to at once. */
const MAX_RUN_WEIGHT = 2 * 1024 * 1024;
/** Bytes held before a block is tried the first time it ran short. */
const FIRST_RETRY = 64 * 1024;
/** Output handed on at a time. */
const PIECE = 64 * 1024;

const BLOCK_MAGIC = [0x314159, 0x265359];
const END_MAGIC = [0x177245, 0x385090];

/** bzip2's CRC: CRC-32 with the bits in the other order than zlib's. */
const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i << 24;
    for (let k = 0; k < 8; k++) c = c & 0x80000000 ? (c << 1) ^ 0x04c11db7 : c << 1;
    table[i] = c >>> 0;
  }
  return table;
})();

/** Thrown when a block's bytes are not all here yet; it is read again from its start later. */
const SHORT = Symbol('bytes ran short');

class Bzip2Error extends Error {}

/** One Huffman table of a block, as bzip2 builds it: code limits and bases per length, symbols in code order. */
interface Table {
  minLength: number;
  limit: Int32Array;
  base: Int32Array;
  symbols: Uint16Array;
}

type Phase = 'stream-header' | 'block' | 'done';

export class Bzip2Reader {
  /** the content is a bzip2 file: its header and its first block's (or end marker's) magic hold */
  isBzip2 = false;
  /** the last stream's end marker was read */
  ended = false;
  /** why the reading stopped before the end: not bzip2, damaged, cut short, a randomised block */
  failure: string | undefined;
  private phase: Phase = 'stream-header';
  /** a stream ended: what follows is another stream, or ignored */
  private streams = 0;
  private blockBytes = 0;
  private combinedCrc = 0;
  /** the transform's vector, kept for the next block */
  private vector: Uint32Array | undefined;

  // The bytes held from the start of the unit being read (a stream header, a block).
  private input = Buffer.alloc(0);
  private filled = 0;
  private inputEnded = false;
  /** bytes held before the next attempt at the unit being read */
  private retryAt = 0;
  // The bit reader: the next byte, and bits read ahead of the current position.
  private at = 0;
  private acc = 0;
  private held = 0;
  /** the start of the unit being read, to read it again when its bytes ran short */
  private mark = { at: 0, acc: 0, held: 0 };

  /** bytes of the stream dropped from the front of `input` */
  private dropped = 0;

  constructor(private readonly output: (data: Buffer) => void) {}

  /** Bytes of the stream read so far: what the output so far came from (a ratio to guard against bombs). */
  get consumed(): number {
    return this.dropped + this.at;
  }

  /** Reads no more (whoever reads the output has what it needs, or gave up): neither ended nor failed. */
  stop(): void {
    this.phase = 'done';
    this.input = Buffer.alloc(0);
    this.vector = undefined;
  }

  get done(): boolean {
    return this.phase === 'done';
  }

  /** The content is of this kind, for whoever reads several kinds alike. */
  get recognised(): boolean {
    return this.isBzip2;
  }

  push(data: Buffer): void {
    if (this.phase === 'done' || data.length === 0) return;
    this.append(data);
    this.run();
  }

  end(): void {
    if (this.phase === 'done') return;
    this.inputEnded = true;
    this.run();
  }

  private run(): void {
    while (this.phase !== 'done') {
      if (!this.inputEnded && this.filled - this.mark.at < this.retryAt) return;
      try {
        if (this.phase === 'stream-header') this.streamHeader();
        else this.block();
      } catch (err) {
        if (err === SHORT) {
          this.at = this.mark.at;
          this.acc = this.mark.acc;
          this.held = this.mark.held;
          if (this.inputEnded) this.fail(this.isBzip2 ? 'cut short' : 'not bzip2');
          else this.retryAt = Math.max(FIRST_RETRY, 2 * (this.filled - this.mark.at));
          return;
        }
        if (err instanceof Bzip2Error) return this.fail(err.message);
        throw err;
      }
    }
  }

  private fail(reason: string): void {
    this.failure = reason;
    this.stop();
  }

  /** The unit read so far is whole: bytes before it are no longer needed. */
  private commit(): void {
    this.mark = { at: this.at, acc: this.acc, held: this.held };
    this.retryAt = 0;
  }

  private streamHeader(): void {
    if (this.streams > 0) {
      // After a stream, on a byte boundary: another stream, or the end (bzip2 ignores trailing bytes).
      if (this.inputEnded && this.at >= this.filled) return this.finish();
      if (!this.startsAnotherStream()) return this.finish();
    }
    if (this.bits(8) !== 0x42 || this.bits(8) !== 0x5a || this.bits(8) !== 0x68) throw new Bzip2Error('not bzip2');
    const level = this.bits(8) - 0x30;
    if (level < 1 || level > 9) throw new Bzip2Error('not bzip2');
    this.blockBytes = level * LEVEL_BYTES;
    this.combinedCrc = 0;
    this.phase = 'block';
    this.commit();
  }

  /** Whether the bytes after a stream begin another ("BZh" and a level); too few bytes held to tell: short. */
  private startsAnotherStream(): boolean {
    const head = this.input.subarray(this.at, this.at + 4);
    const signature = Buffer.from('BZh');
    const prefix = head.subarray(0, 3);
    if (!signature.subarray(0, prefix.length).equals(prefix)) return false;
    if (head.length < 4) {
      if (this.inputEnded) return false;
      throw SHORT;
    }
    return head[3]! >= 0x31 && head[3]! <= 0x39;
  }

  private finish(): void {
    this.ended = true;
    this.stop();
  }

  private block(): void {
    const magic = [this.bits(24), this.bits(24)];
    if (magic[0] === END_MAGIC[0] && magic[1] === END_MAGIC[1]) {
      this.isBzip2 = true;
      if (this.bits32() !== this.combinedCrc) throw new Bzip2Error('stream checksum');
      // The next stream starts on a byte boundary.
      this.held -= this.held % 8;
      this.streams++;
      this.phase = 'stream-header';
      this.commit();
      return;
    }
    if (magic[0] !== BLOCK_MAGIC[0] || magic[1] !== BLOCK_MAGIC[1]) throw new Bzip2Error('damaged block');
    this.isBzip2 = true;
    const expectedCrc = this.bits32();
    if (this.bits(1)) throw new Bzip2Error('randomised block');
    const origin = this.bits(24);
    const length = this.readSymbols();
    if (origin >= length) throw new Bzip2Error('damaged block');
    // Everything the block needs was read: what follows is the next block's.
    this.commit();
    const crc = this.emit(origin, length);
    if (this.phase === 'done') return;
    if (crc !== expectedCrc) throw new Bzip2Error('block checksum');
    this.combinedCrc = (((this.combinedCrc << 1) | (this.combinedCrc >>> 31)) ^ crc) >>> 0;
  }

  /**
   * The block's symbols, decoded into the vector's low bytes: its byte map, Huffman tables and
   * selectors, then the move-to-front values with their runs. Returns how many bytes the block holds.
   */
  private readSymbols(): number {
    const used = new Uint8Array(256);
    let inUse = 0;
    const ranges = this.bits(16);
    for (let i = 0; i < 16; i++) {
      if (!(ranges & (0x8000 >> i))) continue;
      const bytes = this.bits(16);
      for (let j = 0; j < 16; j++) if (bytes & (0x8000 >> j)) used[inUse++] = i * 16 + j;
    }
    if (inUse === 0) throw new Bzip2Error('damaged block');
    const alphabet = inUse + 2;
    const groups = this.bits(3);
    const selectorCount = this.bits(15);
    if (groups < 2 || groups > 6 || selectorCount < 1) throw new Bzip2Error('damaged block');
    const order = [0, 1, 2, 3, 4, 5];
    const selectors = new Uint8Array(Math.min(selectorCount, MAX_SELECTORS));
    for (let i = 0; i < selectorCount; i++) {
      let j = 0;
      while (this.bits(1)) if (++j >= groups) throw new Bzip2Error('damaged block');
      const group = order[j]!;
      for (let k = j; k > 0; k--) order[k] = order[k - 1]!;
      order[0] = group;
      if (i < MAX_SELECTORS) selectors[i] = group;
    }
    const tables: Table[] = [];
    for (let t = 0; t < groups; t++) {
      const lengths = new Uint8Array(alphabet);
      let length = this.bits(5);
      for (let s = 0; s < alphabet; s++) {
        for (;;) {
          if (length < 1 || length > MAX_CODE_LENGTH) throw new Bzip2Error('damaged block');
          if (!this.bits(1)) break;
          length += this.bits(1) ? -1 : 1;
        }
        lengths[s] = length;
      }
      tables.push(decodeTable(lengths));
    }

    let vector = this.vectorFor(0);
    const front = new Uint8Array(256);
    for (let i = 0; i < 256; i++) front[i] = i;
    const endOfBlock = inUse + 1;
    let count = 0;
    let run = 0;
    let weight = 1;
    let selector = 0;
    let left = 0;
    let table = tables[0]!;
    for (;;) {
      if (left === 0) {
        if (selector >= selectors.length) throw new Bzip2Error('damaged block');
        table = tables[selectors[selector++]!]!;
        left = GROUP_SYMBOLS;
      }
      left--;
      const symbol = this.symbol(table, alphabet);
      if (symbol <= 1) {
        // RUNA and RUNB: a run of the front byte, its length in bijective base 2.
        if (weight >= MAX_RUN_WEIGHT) throw new Bzip2Error('damaged block');
        run += (symbol + 1) * weight;
        weight <<= 1;
        continue;
      }
      if (run > 0) {
        if (count + run > this.blockBytes) throw new Bzip2Error('damaged block');
        if (count + run > vector.length) vector = this.vectorFor(count + run);
        const byte = used[front[0]!]!;
        vector.fill(byte, count, count + run);
        count += run;
        run = 0;
        weight = 1;
      }
      if (symbol === endOfBlock) return count;
      const position = symbol - 1;
      const value = front[position]!;
      // Move to front: a loop for the near ones (most of them), memmove for the far.
      if (position < 16) for (let k = position; k > 0; k--) front[k] = front[k - 1]!;
      else front.copyWithin(1, 0, position);
      front[0] = value;
      if (count >= this.blockBytes) throw new Bzip2Error('damaged block');
      if (count >= vector.length) vector = this.vectorFor(count + 1);
      const byte = used[value]!;
      vector[count++] = byte;
    }
  }

  /** One Huffman-coded symbol. */
  private symbol(table: Table, alphabet: number): number {
    let length = table.minLength;
    let code = this.bits(length);
    while (code > table.limit[length]!) {
      if (++length > MAX_CODE_LENGTH) throw new Bzip2Error('damaged block');
      code = (code << 1) | this.bits(1);
    }
    const index = code - table.base[length]!;
    if (index < 0 || index >= alphabet) throw new Bzip2Error('damaged block');
    return table.symbols[index]!;
  }

  /**
   * Undoes the transform from `origin` and expands runs (four equal bytes, then a count of more), handing
   * the output on a piece at a time. Returns the block's CRC.
   */
  private emit(origin: number, length: number): number {
    const vector = this.vector!;
    const starts = new Int32Array(256);
    for (let i = 0; i < length; i++) starts[vector[i]! & 0xff]!++;
    for (let i = 0, sum = 0; i < 256; i++) {
      const n = starts[i]!;
      starts[i] = sum;
      sum += n;
    }
    for (let i = 0; i < length; i++) vector[starts[vector[i]! & 0xff]!++]! |= i << 8;

    let piece = Buffer.allocUnsafe(PIECE);
    let used = 0;
    let crc = 0xffffffff;
    const put = (byte: number): boolean => {
      piece[used++] = byte;
      crc = (crc << 8) ^ CRC_TABLE[((crc >>> 24) ^ byte) & 0xff]!;
      if (used < PIECE) return true;
      this.output(piece);
      piece = Buffer.allocUnsafe(PIECE);
      used = 0;
      return this.phase !== 'done';
    };
    let position = vector[origin]! >>> 8;
    let last = -1;
    let same = 0;
    for (let i = 0; i < length; i++) {
      const entry = vector[position]!;
      const byte = entry & 0xff;
      position = entry >>> 8;
      if (same === 4) {
        for (let k = 0; k < byte; k++) if (!put(last)) return 0;
        same = 0;
        continue;
      }
      if (byte === last) same++;
      else {
        last = byte;
        same = 1;
      }
      if (!put(byte)) return 0;
    }
    if (used > 0) this.output(piece.subarray(0, used));
    return ~crc >>> 0;
  }

  /**
   * The vector, holding at least `size` entries: kept from block to block, and grown by doubling as a
   * block turns out larger (a small file does not take the 3.6 MB a 900 KB block needs).
   */
  private vectorFor(size: number): Uint32Array {
    if (this.vector && this.vector.length >= size) return this.vector;
    const grown = new Uint32Array(Math.min(this.blockBytes, Math.max(size, 2 * (this.vector?.length ?? 0), FIRST_RETRY)));
    if (this.vector) grown.set(this.vector);
    this.vector = grown;
    return grown;
  }

  private append(data: Buffer): void {
    const kept = this.filled - this.mark.at;
    if (this.filled + data.length > this.input.length) {
      // Bytes before the unit being read are dropped; the buffer grows to twice what is kept, so that
      // it is not moved again at every chunk.
      const needed = kept + data.length;
      const next = needed * 2 > this.input.length ? Buffer.allocUnsafe(Math.max(FIRST_RETRY, needed * 2)) : this.input;
      this.input.copy(next, 0, this.mark.at, this.filled);
      this.input = next;
      this.dropped += this.mark.at;
      this.at -= this.mark.at;
      this.mark.at = 0;
      this.filled = kept;
    }
    data.copy(this.input, this.filled);
    this.filled += data.length;
  }

  /** The next `count` bits (up to 24), most significant first. */
  private bits(count: number): number {
    while (this.held < count) {
      if (this.at >= this.filled) throw SHORT;
      this.acc = (this.acc << 8) | this.input[this.at++]!;
      this.held += 8;
    }
    this.held -= count;
    return (this.acc >>> this.held) & ((1 << count) - 1);
  }

  private bits32(): number {
    return ((this.bits(16) << 16) | this.bits(16)) >>> 0;
  }
}

/** A group's decoding table from its code lengths (canonical Huffman codes, shortest first). */
function decodeTable(lengths: Uint8Array): Table {
  let minLength = MAX_CODE_LENGTH;
  let maxLength = 0;
  for (const l of lengths) {
    minLength = Math.min(minLength, l);
    maxLength = Math.max(maxLength, l);
  }
  const symbols = new Uint16Array(lengths.length);
  let n = 0;
  for (let l = minLength; l <= maxLength; l++) for (let s = 0; s < lengths.length; s++) if (lengths[s] === l) symbols[n++] = s;
  // Codes shorter than each length, then each length's last code, and where its first code's index lies.
  const shorter = new Int32Array(MAX_CODE_LENGTH + 2);
  for (const l of lengths) shorter[l + 1]!++;
  for (let l = 1; l < shorter.length; l++) shorter[l]! += shorter[l - 1]!;
  const limit = new Int32Array(MAX_CODE_LENGTH + 1).fill(-1);
  const base = new Int32Array(MAX_CODE_LENGTH + 1);
  let code = 0;
  for (let l = minLength; l <= maxLength; l++) {
    code += shorter[l + 1]! - shorter[l]!;
    limit[l] = code - 1;
    base[l] = code - shorter[l + 1]!;
    code <<= 1;
  }
  return { minLength, limit, base, symbols };
}
