// Reads a Zstandard file (`.zst`, `.tar.zst`, `.tzst`) as it streams and hands on what it decompresses,
// for the tar lister: Windows, bsdtar and 7-Zip open a tar compressed with zstd as they open a gzipped
// one. The format is RFC 8878: frames (zstd and bsdtar read every frame of a file, and skip skippable
// ones), each of blocks stored, repeated or compressed; a compressed block is its literals (stored,
// repeated, or Huffman-coded in one or four streams) and its sequences (literal lengths, offsets and
// match lengths, coded with FSE tables described in the block or predefined), which copy the literals
// and earlier output. Each block is decoded once its bytes are all here (at most 128 KB) and its output,
// at most 128 KB, is handed on at once.
//
// The window kept for matches is the frame's, bounded like xz's: at least the last 8 MiB of output are
// kept (a quarter more as the buffer slides), and a frame reaching further back fails (zstd -19 uses
// 8 MiB; --ultra and --long may reach further). A frame that needs a dictionary, one of zstd before 1.0,
// a damaged block, bytes that are no frame after one, or a file cut short fail too: what was handed on
// stands, and whoever reads it decides what a failure means. Where libzstd reads more than RFC 8878
// allows (12-bit Huffman codes, a bit stream read past its start, reserved bits), so does this reader.
// Content checksums are skipped, not verified, as in the xz reader: a damaged block is caught by the
// decoding itself, and a checksum fails only once the tools have written out the content.

/** The window kept at most, whatever the frame says. */
export const MAX_ZSTD_WINDOW = 8 * 1024 * 1024;
/** A block's content, compressed or not, is at most this (RFC 8878, Block_Maximum_Size). */
const MAX_BLOCK = 128 * 1024;
/** The longest Huffman code libzstd reads (RFC 8878 says 11; zstd, bsdtar and 7-Zip read 12). */
const MAX_HUFFMAN_LOG = 12;

const FRAME_MAGIC = 0xfd2fb528;
/** Frames of zstd before 1.0 (v0.1 to v0.7): zstd and GNU tar still read them, Douane does not. */
const LEGACY_MAGIC = [0xfd2fb51e, 0xfd2fb527];
/** Skippable frames: 0x184D2A50 to 0x184D2A5F. */
const SKIPPABLE_MASK = 0xfffffff0;
const SKIPPABLE_MAGIC = 0x184d2a50;

// Literal length and match length codes: the baseline and the extra bits that follow it.
const LITERAL_BASE = [...Array.from({ length: 16 }, (_, i) => i), 16, 18, 20, 22, 24, 28, 32, 40, 48, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536];
const LITERAL_BITS = [...Array<number>(16).fill(0), 1, 1, 1, 1, 2, 2, 3, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];
const MATCH_BASE = [...Array.from({ length: 32 }, (_, i) => i + 3), 35, 37, 39, 41, 43, 47, 51, 59, 67, 83, 99, 131, 259, 515, 1027, 2051, 4099, 8195, 16387, 32771, 65539];
const MATCH_BITS = [...Array<number>(32).fill(0), 1, 1, 1, 1, 2, 2, 3, 3, 4, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];

// The predefined distributions (RFC 8878, 3.1.1.3.2.2), for blocks that do not describe their own.
const PREDEFINED_LITERALS = [4, 3, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 2, 1, 1, 1, 1, 1, -1, -1, -1, -1];
const PREDEFINED_MATCHES = [1, 4, 3, 2, 2, 2, 2, 2, 2, ...Array<number>(37).fill(1), ...Array<number>(7).fill(-1)];
const PREDEFINED_OFFSETS = [1, 1, 1, 1, 1, 1, 2, 2, 2, ...Array<number>(15).fill(1), ...Array<number>(5).fill(-1)];

class ZstdError extends Error {}

function corrupt(): never {
  throw new ZstdError('damaged block');
}

/** An FSE decoding table: for each state, its symbol, the bits to read and the base of the next state. */
interface FseTable {
  log: number;
  symbol: Uint8Array;
  bits: Uint8Array;
  next: Uint16Array;
}

const PREDEFINED = {
  literals: buildFse(PREDEFINED_LITERALS, 6),
  offsets: buildFse(PREDEFINED_OFFSETS, 5),
  matches: buildFse(PREDEFINED_MATCHES, 6),
};

/** A Huffman decoding table indexed by the next `log` bits: each entry's symbol and code length. */
interface HuffmanTable {
  log: number;
  symbol: Uint8Array;
  bits: Uint8Array;
}

/** What a frame's blocks inherit from the ones before them. */
interface FrameState {
  window: number;
  huffman: HuffmanTable | undefined;
  literals: FseTable | undefined;
  offsets: FseTable | undefined;
  matches: FseTable | undefined;
  repeats: [number, number, number];
  last: boolean;
  checksum: boolean;
}

type State =
  | { kind: 'magic' }
  | { kind: 'frame-header'; size: number }
  | { kind: 'block-header' }
  | { kind: 'block'; type: number; size: number }
  | { kind: 'skippable-size' }
  | { kind: 'skip'; left: number }
  | { kind: 'done' };

export class ZstdReader {
  /** the content is a Zstandard file: its first frame's header was read */
  isZstd = false;
  /** the last frame ended with the file */
  ended = false;
  /** why the reading stopped before the end: not zstd, damaged, a dictionary, a legacy frame, a window past the one kept, cut short */
  failure: string | undefined;
  private state: State = { kind: 'magic' };
  private frame: FrameState | undefined;
  /** bytes gathered for the unit being read (a magic number, a header, a block) */
  private pending: Buffer[] = [];
  private pendingLength = 0;
  /** output kept for matches: the last `window` bytes (at most MAX_ZSTD_WINDOW) */
  private history = Buffer.alloc(0);
  private historyLength = 0;
  /** output of the current frame so far: matches cannot reach before its start */
  private frameOutput = 0;
  private frames = 0;
  /** a compressed block's output, decoded into the same buffer each time */
  private blockOutput: Buffer | undefined;

  constructor(private readonly output: (data: Buffer) => void) {}

  /** Reads no more (whoever reads the output has what it needs, or gave up): neither ended nor failed. */
  stop(): void {
    this.state = { kind: 'done' };
    this.pending = [];
    this.history = Buffer.alloc(0);
  }

  get done(): boolean {
    return this.state.kind === 'done';
  }

  /** The content is of this kind, for whoever reads several kinds alike. */
  get recognised(): boolean {
    return this.isZstd;
  }

  push(data: Buffer): void {
    let at = 0;
    try {
      while (at < data.length && this.state.kind !== 'done') {
        const s = this.state;
        if (s.kind === 'skip') {
          const n = Math.min(s.left, data.length - at);
          s.left -= n;
          at += n;
          if (s.left === 0) this.state = { kind: 'magic' };
          continue;
        }
        const need = this.needed(s);
        const n = Math.min(need - this.pendingLength, data.length - at);
        this.pending.push(data.subarray(at, at + n));
        this.pendingLength += n;
        at += n;
        if (this.pendingLength < need) continue;
        const unit = this.pending.length === 1 ? this.pending[0]! : Buffer.concat(this.pending);
        this.pending = [];
        this.pendingLength = 0;
        this.read(unit);
      }
    } catch (err) {
      if (!(err instanceof ZstdError)) throw err;
      this.failure = err.message;
      this.stop();
    }
  }

  end(): void {
    if (this.state.kind === 'done') return;
    // Between frames, the file may end; anywhere else it was cut short.
    if (this.state.kind === 'magic' && this.pendingLength === 0 && this.frames > 0) this.ended = true;
    else this.failure = this.isZstd ? 'cut short' : 'not zstd';
    this.stop();
  }

  private needed(s: Exclude<State, { kind: 'skip' | 'done' }>): number {
    switch (s.kind) {
      case 'magic':
      case 'skippable-size':
        return 4;
      case 'frame-header':
        return s.size;
      case 'block-header':
        return 3;
      case 'block':
        return s.type === 1 ? 1 : s.size;
    }
  }

  private read(unit: Buffer): void {
    const s = this.state;
    if (s.kind === 'magic') {
      const magic = unit.readUInt32LE(0);
      if (magic === FRAME_MAGIC) {
        // The descriptor byte says how long the rest of the header is; read it with the header.
        this.state = { kind: 'frame-header', size: 1 };
        return;
      }
      if (((magic & SKIPPABLE_MASK) >>> 0) === SKIPPABLE_MAGIC) {
        this.state = { kind: 'skippable-size' };
        return;
      }
      if (magic >= LEGACY_MAGIC[0]! && magic <= LEGACY_MAGIC[1]!) {
        this.isZstd = true;
        throw new ZstdError('legacy frame');
      }
      throw new ZstdError(this.frames > 0 ? 'unknown frame' : 'not zstd');
    }
    if (s.kind === 'skippable-size') {
      const size = unit.readUInt32LE(0);
      this.state = size > 0 ? { kind: 'skip', left: size } : { kind: 'magic' };
      return;
    }
    if (s.kind === 'frame-header') return this.frameHeader(unit, s);
    if (s.kind === 'block-header') {
      const header = unit[0]! | (unit[1]! << 8) | (unit[2]! << 16);
      const type = (header >> 1) & 3;
      const size = header >>> 3;
      this.frame!.last = (header & 1) === 1;
      if (type === 3 || size > MAX_BLOCK || (type === 2 && size === 0)) corrupt();
      if (type === 0 && size === 0) return this.blockDone(Buffer.alloc(0));
      this.state = { kind: 'block', type, size };
      return;
    }
    if (s.kind === 'block') {
      if (s.type === 0) return this.blockDone(unit);
      if (s.type === 1) return this.blockDone(Buffer.alloc(s.size, unit[0]!));
      return this.blockDone(this.compressedBlock(unit));
    }
  }

  private frameHeader(unit: Buffer, s: { size: number }): void {
    const descriptor = unit[0]!;
    const single = (descriptor >> 5) & 1;
    const dictionaryBytes = [0, 1, 2, 4][descriptor & 3]!;
    const sizeFlag = descriptor >> 6;
    const contentSizeBytes = sizeFlag === 0 ? single : 1 << sizeFlag;
    const total = 1 + (single ? 0 : 1) + dictionaryBytes + contentSizeBytes;
    if (s.size < total) {
      if (descriptor & 0x08) throw new ZstdError(this.frames > 0 ? 'damaged frame header' : 'not zstd');
      this.state = { kind: 'frame-header', size: total };
      // Read again once the whole header is here.
      this.pending = [unit];
      this.pendingLength = unit.length;
      return;
    }
    let at = 1;
    let window = 0;
    if (!single) {
      const exponent = unit[at]! >> 3;
      const base = 2 ** (10 + exponent);
      window = base + (base / 8) * (unit[at]! & 7);
      at++;
    }
    let dictionary = 0;
    for (let i = 0; i < dictionaryBytes; i++) dictionary += unit[at + i]! * 2 ** (8 * i);
    at += dictionaryBytes;
    let contentSize = 0;
    for (let i = 0; i < contentSizeBytes; i++) contentSize += unit[at + i]! * 2 ** (8 * i);
    if (contentSizeBytes === 2) contentSize += 256;
    if (single) window = contentSize;
    this.isZstd = true;
    if (dictionary !== 0) throw new ZstdError('dictionary');
    this.frame = {
      window,
      huffman: undefined,
      literals: undefined,
      offsets: undefined,
      matches: undefined,
      repeats: [1, 4, 8],
      last: false,
      checksum: ((descriptor >> 2) & 1) === 1,
    };
    this.frameOutput = 0;
    this.frames++;
    this.state = { kind: 'block-header' };
  }

  private blockDone(content: Buffer): void {
    if (content.length > MAX_BLOCK) corrupt();
    const frame = this.frame!;
    if (content.length > 0) {
      this.remember(content);
      this.frameOutput += content.length;
      this.output(content);
      if (this.state.kind === 'done') return;
    }
    if (!frame.last) {
      this.state = { kind: 'block-header' };
      return;
    }
    this.frame = undefined;
    // The content checksum (XXH64's low 4 bytes), not verified, then the next frame.
    this.state = frame.checksum ? { kind: 'skip', left: 4 } : { kind: 'magic' };
  }

  /**
   * Keeps the last bytes of output that matches may reach (the window, at most 8 MiB). The buffer grows
   * with the output up to a quarter more than the window, so that sliding it (dropping the oldest bytes)
   * moves a window's worth of bytes once per quarter window of output, not at every block.
   */
  private remember(content: Buffer): void {
    const keep = Math.min(MAX_ZSTD_WINDOW, Math.max(this.frame!.window, MAX_BLOCK));
    const capacity = keep + Math.max(MAX_BLOCK, keep >> 2);
    const needed = this.historyLength + content.length;
    if (needed > this.history.length && this.history.length < capacity) {
      const grown = Buffer.allocUnsafe(Math.min(capacity, Math.max(2 * this.history.length, needed, 4 * MAX_BLOCK)));
      this.history.copy(grown, 0, 0, this.historyLength);
      this.history = grown;
    }
    if (needed > this.history.length) {
      const drop = this.historyLength - (keep - content.length);
      this.history.copy(this.history, 0, drop, this.historyLength);
      this.historyLength -= drop;
    }
    content.copy(this.history, this.historyLength);
    this.historyLength += content.length;
  }

  /** One compressed block: its literals, then its sequences executed against them and the output before. */
  private compressedBlock(block: Buffer): Buffer {
    const frame = this.frame!;
    const { literals, at } = this.readLiterals(block, frame);
    // One buffer for every block: what is handed on is read (and copied where kept) before the next.
    const out = (this.blockOutput ??= Buffer.allocUnsafe(MAX_BLOCK));
    let written = 0;
    let literal = 0;
    const sequences = readSequenceCount(block, at);
    let position = sequences.at;
    if (sequences.count > 0) {
      if (position >= block.length) corrupt();
      // Its two low bits are reserved: libzstd ignores them, and so does Douane.
      const modes = block[position++]!;
      const ll = this.sequenceTable(block, position, modes >> 6, PREDEFINED.literals, frame.literals, 35, 9);
      frame.literals = ll.table;
      const of = this.sequenceTable(block, ll.at, (modes >> 4) & 3, PREDEFINED.offsets, frame.offsets, 31, 8);
      frame.offsets = of.table;
      const ml = this.sequenceTable(block, of.at, (modes >> 2) & 3, PREDEFINED.matches, frame.matches, 52, 9);
      frame.matches = ml.table;
      const bits = new BackwardBits(block, ml.at, block.length);
      let llState = bits.read(ll.table.log);
      let ofState = bits.read(of.table.log);
      let mlState = bits.read(ml.table.log);
      const repeats = frame.repeats;
      for (let n = 0; n < sequences.count; n++) {
        const ofCode = of.table.symbol[ofState]!;
        const llCode = ll.table.symbol[llState]!;
        const mlCode = ml.table.symbol[mlState]!;
        if (llCode > 35 || mlCode > 52 || ofCode > 31) corrupt();
        const offsetValue = 2 ** ofCode + bits.read(ofCode);
        const matchLength = MATCH_BASE[mlCode]! + bits.read(MATCH_BITS[mlCode]!);
        const literalLength = LITERAL_BASE[llCode]! + bits.read(LITERAL_BITS[llCode]!);
        let offset: number;
        if (offsetValue > 3) {
          offset = offsetValue - 3;
          repeats[2] = repeats[1];
          repeats[1] = repeats[0];
          repeats[0] = offset;
        } else {
          const index = offsetValue + (literalLength === 0 ? 1 : 0);
          if (index === 1) offset = repeats[0];
          else if (index === 2) {
            offset = repeats[1];
            repeats[1] = repeats[0];
            repeats[0] = offset;
          } else {
            offset = index === 3 ? repeats[2] : repeats[0] - 1;
            repeats[2] = repeats[1];
            repeats[1] = repeats[0];
            repeats[0] = offset;
          }
        }
        if (n < sequences.count - 1) {
          llState = ll.table.next[llState]! + bits.read(ll.table.bits[llState]!);
          mlState = ml.table.next[mlState]! + bits.read(ml.table.bits[mlState]!);
          ofState = of.table.next[ofState]! + bits.read(of.table.bits[ofState]!);
        }
        if (literal + literalLength > literals.length || written + literalLength + matchLength > MAX_BLOCK) corrupt();
        // Short copies byte by byte: Buffer.copy costs more than it moves for a few bytes.
        if (literalLength < 32) for (let i = 0; i < literalLength; i++) out[written + i] = literals[literal + i]!;
        else out.set(literals.subarray(literal, literal + literalLength), written);
        literal += literalLength;
        written += literalLength;
        written = this.copyMatch(out, written, offset, matchLength);
      }
      // Bits left over are damage; reading past the start (zeros) is accepted, as libzstd does.
      if (!bits.consumed && !bits.overflowed) corrupt();
    }
    if (written + literals.length - literal > MAX_BLOCK) corrupt();
    literals.copy(out, written, literal);
    written += literals.length - literal;
    return out.subarray(0, written);
  }

  /** Copies a match of `length` bytes from `offset` back, in this block's output or the frame's before it. */
  private copyMatch(out: Buffer, written: number, offset: number, length: number): number {
    if (offset === 0 || offset > this.frameOutput + written) corrupt();
    if (offset > written && offset - written > this.historyLength) throw new ZstdError('window past the one kept');
    let to = written;
    let left = length;
    if (offset > to) {
      // The part in the output before this block.
      const from = this.historyLength - (offset - to);
      const n = Math.min(left, offset - to);
      this.history.copy(out, to, from, from + n);
      to += n;
      left -= n;
    }
    if (left < 16) {
      for (; left > 0; left--, to++) out[to] = out[to - offset]!;
      return to;
    }
    // Within this block: copied a stretch at a time, a stretch as long as the distance (overlapping
    // matches repeat what they copy), which doubles as it goes.
    const from = to - offset;
    while (left > 0) {
      const n = Math.min(left, to - from);
      out.copyWithin(to, from, from + n);
      to += n;
      left -= n;
    }
    return to;
  }

  /** The literals section: its bytes, and where the sequences section starts. */
  private readLiterals(block: Buffer, frame: FrameState): { literals: Buffer; at: number } {
    const b0 = block[0]!;
    const type = b0 & 3;
    const format = (b0 >> 2) & 3;
    if (type < 2) {
      let size: number;
      let at: number;
      if ((format & 1) === 0) [size, at] = [b0 >> 3, 1];
      else if (format === 1) [size, at] = [(b0 >> 4) | (byte(block, 1) << 4), 2];
      else [size, at] = [(b0 >> 4) | (byte(block, 1) << 4) | (byte(block, 2) << 12), 3];
      if (size > MAX_BLOCK) corrupt();
      if (type === 0) {
        if (at + size > block.length) corrupt();
        return { literals: block.subarray(at, at + size), at: at + size };
      }
      if (at >= block.length) corrupt();
      return { literals: Buffer.alloc(size, block[at]!), at: at + 1 };
    }
    let regenerated: number;
    let compressed: number;
    let at: number;
    if (format < 2) {
      regenerated = (b0 >> 4) | ((byte(block, 1) & 0x3f) << 4);
      compressed = (byte(block, 1) >> 6) | (byte(block, 2) << 2);
      at = 3;
    } else if (format === 2) {
      regenerated = (b0 >> 4) | (byte(block, 1) << 4) | ((byte(block, 2) & 3) << 12);
      compressed = (byte(block, 2) >> 2) | (byte(block, 3) << 6);
      at = 4;
    } else {
      regenerated = (b0 >> 4) | (byte(block, 1) << 4) | ((byte(block, 2) & 0x3f) << 12);
      compressed = (byte(block, 2) >> 6) | (byte(block, 3) << 2) | (byte(block, 4) << 10);
      at = 5;
    }
    const streams = format === 0 ? 1 : 4;
    const end = at + compressed;
    if (regenerated > MAX_BLOCK || end > block.length) corrupt();
    if (type === 2) {
      const described = readHuffman(block, at, end);
      frame.huffman = described.table;
      at = described.at;
    } else if (!frame.huffman) corrupt();
    const table = frame.huffman!;
    const literals = Buffer.allocUnsafe(regenerated);
    if (streams === 1) decodeHuffman(table, block, at, end, literals, 0, regenerated, true);
    else {
      if (at + 6 > end) corrupt();
      const sizes = [block.readUInt16LE(at), block.readUInt16LE(at + 2), block.readUInt16LE(at + 4)];
      const part = Math.ceil(regenerated / 4);
      if (3 * part > regenerated) corrupt();
      let from = at + 6;
      for (let i = 0; i < 4; i++) {
        const to = i < 3 ? from + sizes[i]! : end;
        if (to > end || to < from) corrupt();
        const start = Math.min(i * part, regenerated);
        decodeHuffman(table, block, from, to, literals, start, i < 3 ? Math.min(start + part, regenerated) : regenerated, false);
        from = to;
      }
    }
    return { literals, at: end };
  }

  /** One of the three sequence tables, as its mode says: predefined, one symbol, described here, or the previous one. */
  private sequenceTable(block: Buffer, at: number, mode: number, predefined: FseTable, previous: FseTable | undefined, maxSymbol: number, maxLog: number): { table: FseTable; at: number } {
    if (mode === 0) return { table: predefined, at };
    if (mode === 1) {
      if (at >= block.length || block[at]! > maxSymbol) corrupt();
      return { table: { log: 0, symbol: Uint8Array.of(block[at]!), bits: Uint8Array.of(0), next: Uint16Array.of(0) }, at: at + 1 };
    }
    if (mode === 2) {
      const described = readFseDescription(block, at, block.length, maxSymbol, maxLog);
      return { table: buildFse(described.counts, described.log), at: described.at };
    }
    if (!previous) corrupt();
    return { table: previous, at };
  }
}

function byte(block: Buffer, at: number): number {
  if (at >= block.length) corrupt();
  return block[at]!;
}

function readSequenceCount(block: Buffer, at: number): { count: number; at: number } {
  const b0 = byte(block, at);
  if (b0 < 128) return { count: b0, at: at + 1 };
  if (b0 < 255) return { count: ((b0 - 128) << 8) + byte(block, at + 1), at: at + 2 };
  return { count: byte(block, at + 1) + (byte(block, at + 2) << 8) + 0x7f00, at: at + 3 };
}

/** A bit stream read from its end backwards, as FSE and Huffman streams are: the last byte's top set bit marks the start. */
class BackwardBits {
  /** bits left to read, below this position */
  private position: number;

  constructor(
    private readonly data: Buffer,
    private readonly start: number,
    end: number,
  ) {
    if (end <= start || data[end - 1] === 0) corrupt();
    this.position = (end - 1 - start) * 8 + (31 - Math.clz32(data[end - 1]!));
  }

  /** Every bit was read, and no more. */
  get consumed(): boolean {
    return this.position === 0;
  }

  /** Read past the start (the bits past it read as zeros). */
  get overflowed(): boolean {
    return this.position < 0;
  }

  read(count: number): number {
    if (count === 0) return 0;
    this.position -= count;
    if (count <= 24) return this.at(this.position, count);
    return this.at(this.position + 16, count - 16) * 65536 + this.at(this.position, 16);
  }

  peek(count: number): number {
    return this.at(this.position - count, count);
  }

  skip(count: number): void {
    this.position -= count;
  }

  /** `count` bits (at most 24) from bit `from` of the stream read as one little-endian number. */
  private at(from: number, count: number): number {
    if (from < 0) return from + count <= 0 ? 0 : this.at(0, count + from) << -from;
    const d = this.data;
    const i = this.start + (from >> 3);
    const value = d[i]! | ((d[i + 1] ?? 0) << 8) | ((d[i + 2] ?? 0) << 16) | ((d[i + 3] ?? 0) << 24);
    return (value >>> (from & 7)) & ((1 << count) - 1);
  }
}

/**
 * An FSE table description (RFC 8878, 4.1.1), read forward from `at`: the accuracy, then each symbol's
 * normalised count (-1 for "less than one"), zeros in runs.
 */
function readFseDescription(data: Buffer, at: number, end: number, maxSymbol: number, maxLog: number): { counts: number[]; log: number; at: number } {
  let bit = at * 8;
  const read = (count: number, consume = true): number => {
    let value = 0;
    for (let i = 0; i < count; i++) {
      const b = bit + i;
      if (b >> 3 >= end) corrupt();
      value |= ((data[b >> 3]! >> (b & 7)) & 1) << i;
    }
    if (consume) bit += count;
    return value;
  };
  const log = read(4) + 5;
  if (log > maxLog) corrupt();
  let remaining = (1 << log) + 1;
  let threshold = 1 << log;
  let bits = log + 1;
  const counts: number[] = [];
  let previousZero = false;
  while (remaining > 1 && counts.length <= maxSymbol) {
    if (previousZero) {
      for (;;) {
        const repeat = read(2);
        for (let i = 0; i < repeat; i++) counts.push(0);
        if (repeat !== 3) break;
      }
      if (counts.length > maxSymbol) corrupt();
    }
    const max = 2 * threshold - 1 - remaining;
    let count: number;
    const low = read(bits - 1, false) & (threshold - 1);
    if (low < max) {
      count = low;
      bit += bits - 1;
    } else {
      count = read(bits) & (2 * threshold - 1);
      if (count >= threshold) count -= max;
    }
    count--;
    remaining -= Math.abs(count);
    counts.push(count);
    previousZero = count === 0;
    while (remaining < threshold) {
      bits--;
      threshold >>= 1;
    }
  }
  if (remaining !== 1 || counts.length > maxSymbol + 1) corrupt();
  return { counts, log, at: (bit + 7) >> 3 };
}

/** The decoding table for normalised counts (RFC 8878, 4.1.1): symbols spread over the states, "less than one" ones at the end. */
function buildFse(counts: number[], log: number): FseTable {
  const size = 1 << log;
  const symbol = new Uint8Array(size);
  const bits = new Uint8Array(size);
  const next = new Uint16Array(size);
  const nextOf = new Uint32Array(counts.length);
  let high = size - 1;
  counts.forEach((count, s) => {
    if (count === -1) {
      symbol[high--] = s;
      nextOf[s] = 1;
    } else nextOf[s] = count;
  });
  const step = (size >> 1) + (size >> 3) + 3;
  let position = 0;
  counts.forEach((count, s) => {
    for (let i = 0; i < count; i++) {
      symbol[position] = s;
      do position = (position + step) & (size - 1);
      while (position > high);
    }
  });
  if (position !== 0) corrupt();
  for (let state = 0; state < size; state++) {
    const s = symbol[state]!;
    const n = nextOf[s]!++;
    const b = log - (31 - Math.clz32(n));
    bits[state] = b;
    next[state] = (n << b) - size;
  }
  return { log, symbol, bits, next };
}

/** A Huffman tree description (RFC 8878, 4.2.1): weights stored in 4 bits each, or FSE-coded; the last one implied. */
function readHuffman(data: Buffer, at: number, end: number): { table: HuffmanTable; at: number } {
  const header = byte(data, at);
  const weights: number[] = [];
  let after: number;
  if (header >= 128) {
    const count = header - 127;
    after = at + 1 + Math.ceil(count / 2);
    if (after > end) corrupt();
    for (let i = 0; i < count; i++) weights.push(i % 2 === 0 ? data[at + 1 + (i >> 1)]! >> 4 : data[at + 1 + (i >> 1)]! & 15);
  } else {
    after = at + 1 + header;
    if (after > end) corrupt();
    const described = readFseDescription(data, at + 1, after, 255, 6);
    const table = buildFse(described.counts, described.log);
    const bits = new BackwardBits(data, described.at, after);
    let one = bits.read(table.log);
    let two = bits.read(table.log);
    // Two states taking turns until the stream runs out; then the other state's symbol is the last.
    for (;;) {
      if (weights.length > 254) corrupt();
      weights.push(table.symbol[one]!);
      one = table.next[one]! + bits.read(table.bits[one]!);
      if (bits.overflowed) {
        weights.push(table.symbol[two]!);
        break;
      }
      weights.push(table.symbol[two]!);
      two = table.next[two]! + bits.read(table.bits[two]!);
      if (bits.overflowed) {
        weights.push(table.symbol[one]!);
        break;
      }
    }
  }
  if (weights.length > 255) corrupt();
  let total = 0;
  for (const w of weights) {
    if (w > MAX_HUFFMAN_LOG) corrupt();
    if (w > 0) total += 1 << (w - 1);
  }
  if (total === 0) corrupt();
  const log = 32 - Math.clz32(total);
  if (log > MAX_HUFFMAN_LOG) corrupt();
  const rest = (1 << log) - total;
  // The last symbol's weight fills the tree to a power of two.
  if (rest & (rest - 1)) corrupt();
  weights.push(31 - Math.clz32(rest) + 1);
  const size = 1 << log;
  const symbol = new Uint8Array(size);
  const lengths = new Uint8Array(size);
  // Lowest weights (longest codes) first, each symbol taking 2^(weight-1) entries, in symbol order.
  const perWeight = new Array<number>(log + 1).fill(0);
  for (const w of weights) perWeight[w]!++;
  const start: number[] = [];
  for (let w = 1, next = 0; w <= log; w++) {
    start[w] = next;
    next += perWeight[w]! << (w - 1);
  }
  weights.forEach((w, s) => {
    if (w === 0) return;
    const length = 1 << (w - 1);
    const from = start[w]!;
    symbol.fill(s, from, from + length);
    lengths.fill(log + 1 - w, from, from + length);
    start[w] = from + length;
  });
  return { table: { log, symbol, bits: lengths }, at: after };
}

/**
 * One Huffman stream, decoded into `out` from `from` to `to`. A single stream must end exactly where its
 * bits do, as libzstd checks; of four streams, libzstd's fast path checks only the output's length, so
 * bits left over or read past the start are not taken for damage.
 */
function decodeHuffman(table: HuffmanTable, data: Buffer, start: number, end: number, out: Buffer, from: number, to: number, exact: boolean): void {
  const bits = new BackwardBits(data, start, end);
  for (let i = from; i < to; i++) {
    const index = bits.peek(table.log);
    out[i] = table.symbol[index]!;
    bits.skip(table.bits[index]!);
  }
  if (exact && !bits.consumed) corrupt();
}
