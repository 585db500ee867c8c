// An LZMA and LZMA2 decoder, for the places Douane needs one: a 7z archive's header, which 7-Zip and
// libarchive compress with LZMA (libarchive with LZMA2 when asked), so a 7z's file names are only seen
// once it is decoded; and the LZMA2 inside an xz file (`.tar.xz`), decoded as it streams. A 7z header is
// decoded whole into one buffer of known (and bounded) size, which is also the dictionary. A stream keeps
// a window of its last output, at most as large as its dictionary, and slides it as output comes. It
// follows the formats as Igor Pavlov's specification describes LZMA (the LZMA SDK's
// lzma-specification.txt) and the xz format describes LZMA2's chunks. Input that is not LZMA throws
// LzmaError: reading past the input, a distance before the output's start (or the last dictionary reset,
// or the window), a first byte other than 0, more output than announced.

export class LzmaError extends Error {}

const PROBABILITY_BITS = 11;
const PROBABILITY_INIT = (1 << PROBABILITY_BITS) >> 1;
const MOVE_BITS = 5;
const TOP = 1 << 24;

const STATES = 12;
const POS_STATES_MAX = 1 << 4;
const LEN_TO_POS_STATES = 4;
const END_POS_MODEL_INDEX = 14;
const FULL_DISTANCES = 1 << (END_POS_MODEL_INDEX >> 1);
const ALIGN_BITS = 4;
const MATCH_MIN_LEN = 2;

/** The range decoder: 32-bit unsigned arithmetic kept with `>>> 0`. */
class RangeDecoder {
  private range = 0xffffffff;
  private code = 0;
  private at: number;

  constructor(
    private readonly input: Buffer,
    start: number,
  ) {
    this.at = start;
    if (this.byte() !== 0) throw new LzmaError('the range coder must start with 0');
    for (let i = 0; i < 4; i++) this.code = ((this.code << 8) | this.byte()) >>> 0;
    if (this.code === this.range) throw new LzmaError('corrupted range coder');
  }

  private byte(): number {
    if (this.at >= this.input.length) throw new LzmaError('the stream ends early');
    return this.input[this.at++]!;
  }

  private normalize(): void {
    if (this.range < TOP) {
      this.range = (this.range << 8) >>> 0;
      this.code = ((this.code << 8) | this.byte()) >>> 0;
    }
  }

  bit(probs: Uint16Array, index: number): number {
    const p = probs[index]!;
    const bound = (this.range >>> PROBABILITY_BITS) * p;
    let bit: number;
    if (this.code < bound) {
      probs[index] = p + (((1 << PROBABILITY_BITS) - p) >>> MOVE_BITS);
      this.range = bound;
      bit = 0;
    } else {
      probs[index] = p - (p >>> MOVE_BITS);
      this.code = (this.code - bound) >>> 0;
      this.range = (this.range - bound) >>> 0;
      bit = 1;
    }
    this.normalize();
    return bit;
  }

  direct(count: number): number {
    let result = 0;
    for (let i = 0; i < count; i++) {
      this.range = this.range >>> 1;
      let bit = 0;
      if (this.code >= this.range) {
        this.code = (this.code - this.range) >>> 0;
        bit = 1;
      }
      result = result * 2 + bit;
      this.normalize();
    }
    return result;
  }

  tree(probs: Uint16Array, base: number, bits: number): number {
    let m = 1;
    for (let i = 0; i < bits; i++) m = (m << 1) + this.bit(probs, base + m);
    return m - (1 << bits);
  }

  reverseTree(probs: Uint16Array, base: number, bits: number): number {
    let m = 1;
    let symbol = 0;
    for (let i = 0; i < bits; i++) {
      const bit = this.bit(probs, base + m);
      m = (m << 1) + bit;
      symbol |= bit << i;
    }
    return symbol;
  }
}

/** A match length: 2–273, in three trees by size. */
class LengthDecoder {
  private readonly choice = new Uint16Array(2);
  private readonly low = new Uint16Array(POS_STATES_MAX << 3);
  private readonly mid = new Uint16Array(POS_STATES_MAX << 3);
  private readonly high = new Uint16Array(256);

  reset(): void {
    for (const probs of [this.choice, this.low, this.mid, this.high]) probs.fill(PROBABILITY_INIT);
  }

  /** The length less MATCH_MIN_LEN. */
  decode(rc: RangeDecoder, posState: number): number {
    if (rc.bit(this.choice, 0) === 0) return rc.tree(this.low, posState << 3, 3);
    if (rc.bit(this.choice, 1) === 0) return 8 + rc.tree(this.mid, posState << 3, 3);
    return 16 + rc.tree(this.high, 0, 8);
  }
}

/** LZMA's five property bytes: lc, lp and pb packed in one, then the dictionary size. */
export interface LzmaProperties {
  lc: number;
  lp: number;
  pb: number;
}

export function lzmaProperties(props: Buffer): LzmaProperties {
  if (props.length < 5) throw new LzmaError('LZMA properties are five bytes');
  return packedProperties(props[0]!);
}

function packedProperties(byte: number): LzmaProperties {
  let d = byte;
  if (d >= 9 * 5 * 5) throw new LzmaError('bad LZMA properties');
  const lc = d % 9;
  d = (d - lc) / 9;
  const lp = d % 5;
  const pb = (d - lp) / 5;
  return { lc, lp, pb };
}

/**
 * The decoder's state, kept from one LZMA2 chunk to the next: the output so far (the dictionary), the
 * probabilities, the state machine and the last four distances.
 */
class Decoder {
  private literals = new Uint16Array(0);
  private readonly isMatch = new Uint16Array(STATES << 4);
  private readonly isRep = new Uint16Array(STATES);
  private readonly isRepG0 = new Uint16Array(STATES);
  private readonly isRepG1 = new Uint16Array(STATES);
  private readonly isRepG2 = new Uint16Array(STATES);
  private readonly isRep0Long = new Uint16Array(STATES << 4);
  private readonly posSlots = new Uint16Array(LEN_TO_POS_STATES << 6);
  private readonly posDecoders = new Uint16Array(1 + FULL_DISTANCES - END_POS_MODEL_INDEX);
  private readonly align = new Uint16Array(1 << ALIGN_BITS);
  private readonly lengths = new LengthDecoder();
  private readonly repLengths = new LengthDecoder();
  private props: LzmaProperties = { lc: 0, lp: 0, pb: 0 };
  pos = 0;
  /**
   * where the dictionary was last reset: no match reaches before it, and positions count from it. Below 0
   * once the window slid past it.
   */
  private dictionaryStart = 0;
  private state = 0;
  private rep0 = 0;
  private rep1 = 0;
  private rep2 = 0;
  private rep3 = 0;

  /** @param reach how far back a match may reach: the window a stream keeps (no bound for a whole buffer) */
  constructor(
    public out: Buffer,
    private reach = Infinity,
  ) {}

  /** Starts another stream (an xz's next block) in the same buffer: nothing before it can be reached. */
  restart(reach: number): void {
    this.pos = 0;
    this.dictionaryStart = 0;
    this.reach = reach;
  }

  /**
   * Makes room for `size` more bytes of output: the buffer grows up to `window` bytes and a chunk beyond,
   * then the last `window` bytes move to its start. Matches reach no further back than the window.
   */
  makeRoom(size: number, window: number): void {
    if (this.pos + size <= this.out.length) return;
    const most = window + MAX_CHUNK;
    if (this.out.length < most) {
      const grown = Buffer.alloc(Math.min(most, Math.max(this.out.length * 2, this.pos + size)));
      this.out.copy(grown, 0, 0, this.pos);
      this.out = grown;
      if (this.pos + size <= this.out.length) return;
    }
    const keep = Math.min(window, this.pos - Math.max(this.dictionaryStart, 0));
    const from = this.pos - keep;
    this.out.copyWithin(0, from, this.pos);
    this.pos = keep;
    this.dictionaryStart -= from;
  }

  setProperties(props: LzmaProperties): void {
    this.props = props;
    // resetState() follows, which sets every probability: an array of the right size is reused.
    const size = 0x300 << (props.lc + props.lp);
    if (this.literals.length !== size) this.literals = new Uint16Array(size);
  }

  resetState(): void {
    for (const probs of [this.literals, this.isMatch, this.isRep, this.isRepG0, this.isRepG1, this.isRepG2, this.isRep0Long, this.posSlots, this.posDecoders, this.align]) {
      probs.fill(PROBABILITY_INIT);
    }
    this.lengths.reset();
    this.repLengths.reset();
    this.state = 0;
    this.rep0 = this.rep1 = this.rep2 = this.rep3 = 0;
  }

  resetDictionary(): void {
    this.dictionaryStart = this.pos;
  }

  /** Stored bytes (an LZMA2 chunk not compressed): part of the dictionary like any output. */
  copy(data: Buffer): void {
    if (data.length > this.out.length - this.pos) throw new LzmaError('more output than announced');
    data.copy(this.out, this.pos);
    this.pos += data.length;
  }

  /** Decodes until the output reaches `end`, with a range coder of its own over `input` from `start`. */
  decode(input: Buffer, start: number, end: number): void {
    const { lc, lp, pb } = this.props;
    const { out, literals, isMatch, isRep, isRepG0, isRepG1, isRepG2, isRep0Long, posSlots, posDecoders, align, lengths, repLengths } = this;
    const rc = new RangeDecoder(input, start);
    const pbMask = (1 << pb) - 1;
    const lpMask = (1 << lp) - 1;
    const origin = this.dictionaryStart;
    // The oldest byte still held: the dictionary's start, or the window's once it slid past it.
    const floor = Math.max(origin, 0);
    const reach = this.reach;
    let { pos, state, rep0, rep1, rep2, rep3 } = this;

    const distance = (len: number): number => {
      const lenState = Math.min(len, LEN_TO_POS_STATES - 1);
      const slot = rc.tree(posSlots, lenState << 6, 6);
      if (slot < 4) return slot;
      const directBits = (slot >>> 1) - 1;
      let dist = (2 | (slot & 1)) * 2 ** directBits;
      if (slot < END_POS_MODEL_INDEX) return dist + rc.reverseTree(posDecoders, dist - slot, directBits);
      dist += rc.direct(directBits - ALIGN_BITS) * (1 << ALIGN_BITS);
      return dist + rc.reverseTree(align, 0, ALIGN_BITS);
    };

    while (pos < end) {
      const posState = (pos - origin) & pbMask;
      if (rc.bit(isMatch, (state << 4) + posState) === 0) {
        const prev = pos > origin ? out[pos - 1]! : 0;
        const base = 0x300 * ((((pos - origin) & lpMask) << lc) + (prev >>> (8 - lc)));
        let symbol = 1;
        if (state >= 7) {
          if (rep0 >= pos - floor || rep0 >= reach) throw new LzmaError('a distance before the start');
          let matchByte = out[pos - rep0 - 1]!;
          do {
            const matchBit = (matchByte >>> 7) & 1;
            matchByte <<= 1;
            const bit = rc.bit(literals, base + ((1 + matchBit) << 8) + symbol);
            symbol = (symbol << 1) | bit;
            if (matchBit !== bit) break;
          } while (symbol < 0x100);
        }
        while (symbol < 0x100) symbol = (symbol << 1) | rc.bit(literals, base + symbol);
        out[pos++] = symbol - 0x100;
        state = state < 4 ? 0 : state < 10 ? state - 3 : state - 6;
        continue;
      }
      let len: number;
      if (rc.bit(isRep, state) === 0) {
        rep3 = rep2;
        rep2 = rep1;
        rep1 = rep0;
        len = lengths.decode(rc, posState);
        state = state < 7 ? 7 : 10;
        rep0 = distance(len);
        if (rep0 === 0xffffffff) {
          // The end marker: only where the announced size says the stream ends.
          throw new LzmaError('the stream ends before its size');
        }
      } else {
        if (pos === origin) throw new LzmaError('a repeated match at the start');
        if (rc.bit(isRepG0, state) === 0) {
          if (rc.bit(isRep0Long, (state << 4) + posState) === 0) {
            if (rep0 >= pos - floor || rep0 >= reach) throw new LzmaError('a distance before the start');
            state = state < 7 ? 9 : 11;
            out[pos] = out[pos - rep0 - 1]!;
            pos++;
            continue;
          }
        } else {
          let dist: number;
          if (rc.bit(isRepG1, state) === 0) dist = rep1;
          else {
            if (rc.bit(isRepG2, state) === 0) dist = rep2;
            else {
              dist = rep3;
              rep3 = rep2;
            }
            rep2 = rep1;
          }
          rep1 = rep0;
          rep0 = dist;
        }
        len = repLengths.decode(rc, posState);
        state = state < 7 ? 8 : 11;
      }
      len += MATCH_MIN_LEN;
      if (rep0 >= pos - floor || rep0 >= reach) throw new LzmaError('a distance before the start');
      if (len > end - pos) throw new LzmaError('more output than announced');
      for (let from = pos - rep0 - 1, stop = pos + len; pos < stop; ) out[pos++] = out[from++]!;
    }
    Object.assign(this, { pos, state, rep0, rep1, rep2, rep3 });
  }
}

/**
 * Decodes `size` bytes of LZMA from `input` (from `start`), with the properties given apart (as 7z gives
 * them). An end marker before `size` bytes is an error; one right at `size` is allowed.
 */
export function lzmaDecode(input: Buffer, start: number, props: Buffer, size: number): Buffer {
  const decoder = new Decoder(Buffer.alloc(size));
  decoder.setProperties(lzmaProperties(props));
  decoder.resetState();
  decoder.decode(input, start, size);
  return decoder.out;
}

/** An LZMA2 chunk's header: the end byte, stored bytes, or LZMA with what it resets. */
type Lzma2Chunk =
  | { kind: 'end'; headerLength: 1 }
  | { kind: 'stored'; headerLength: number; resetDictionary: boolean; unpacked: number; packed: number }
  | { kind: 'lzma'; headerLength: number; resetDictionary: boolean; resetState: boolean; props?: LzmaProperties; unpacked: number; packed: number };

/** The header of the chunk at `at`, or undefined when its bytes are still to come. */
function chunkHeader(input: Buffer, at: number): Lzma2Chunk | undefined {
  if (at >= input.length) return undefined;
  const control = input[at]!;
  if (control === 0x00) return { kind: 'end', headerLength: 1 };
  if (control === 0x01 || control === 0x02) {
    if (at + 3 > input.length) return undefined;
    const length = input.readUInt16BE(at + 1) + 1;
    return { kind: 'stored', headerLength: 3, resetDictionary: control === 0x01, unpacked: length, packed: length };
  }
  if (control < 0x80) throw new LzmaError('bad LZMA2 chunk');
  const reset = (control >>> 5) & 3;
  const headerLength = reset >= 2 ? 6 : 5;
  if (at + headerLength > input.length) return undefined;
  const unpacked = (control & 0x1f) * 65536 + input.readUInt16BE(at + 1) + 1;
  const packed = input.readUInt16BE(at + 3) + 1;
  let props: LzmaProperties | undefined;
  if (reset >= 2) {
    props = packedProperties(input[at + 5]!);
    if (props.lc + props.lp > 4) throw new LzmaError('bad LZMA2 properties');
  }
  return { kind: 'lzma', headerLength, resetDictionary: reset === 3, resetState: reset >= 1, props, unpacked, packed };
}

/** The largest output of one chunk (21 bits of size, plus one), and the largest chunk with its header. */
const MAX_CHUNK = 1 << 21;
const MAX_PACKED_CHUNK = 6 + (1 << 16);

/** Applies one whole chunk (its header at `at`, its data after) to the decoder. */
function decodeChunk(decoder: Decoder, chunk: Exclude<Lzma2Chunk, { kind: 'end' }>, input: Buffer, at: number, hasProperties: boolean): void {
  const data = input.subarray(at + chunk.headerLength, at + chunk.headerLength + chunk.packed);
  if (chunk.resetDictionary) decoder.resetDictionary();
  if (chunk.kind === 'stored') {
    decoder.copy(data);
    return;
  }
  if (chunk.props) decoder.setProperties(chunk.props);
  else if (!hasProperties) throw new LzmaError('an LZMA2 chunk without properties');
  if (chunk.resetState) decoder.resetState();
  if (chunk.unpacked > decoder.out.length - decoder.pos) throw new LzmaError('more output than announced');
  decoder.decode(data, 0, decoder.pos + chunk.unpacked);
}

/**
 * Decodes `size` bytes of LZMA2 from `input`: chunks, each stored or LZMA with its own range coder,
 * which may reset the state, set new properties, reset the dictionary; then an end byte.
 */
export function lzma2Decode(input: Buffer, size: number): Buffer {
  const decoder = new Decoder(Buffer.alloc(size));
  let at = 0;
  let hasProperties = false;
  for (;;) {
    const chunk = chunkHeader(input, at);
    if (!chunk || at + chunk.headerLength + (chunk.kind === 'end' ? 0 : chunk.packed) > input.length) throw new LzmaError('the stream ends early');
    if (chunk.kind === 'end') break;
    decodeChunk(decoder, chunk, input, at, hasProperties);
    hasProperties ||= chunk.kind === 'lzma';
    at += chunk.headerLength + chunk.packed;
  }
  if (decoder.pos !== size) throw new LzmaError('the stream ends before its size');
  return decoder.out;
}

/**
 * LZMA2 decoded as it streams: each chunk once all its bytes came (a chunk packs at most 64 KB), its
 * output handed on at once. The decoder keeps the last `window` bytes (the dictionary's size, or less
 * when the caller bounds it: a match reaching further back is then an error). push() returns how many of
 * the bytes given it took: after the end byte it takes no more.
 */
export class Lzma2Stream {
  private readonly decoder: Decoder;
  /** bytes of the chunk not whole yet (at most a chunk: 64 KB and its header) */
  private pending = Buffer.alloc(MAX_PACKED_CHUNK);
  private filled = 0;
  private hasProperties = false;
  ended = false;
  /** the reader wants no more output: nothing more is decoded */
  private stopped = false;

  constructor(
    private window: number,
    private readonly output: (data: Buffer) => void,
  ) {
    this.decoder = new Decoder(Buffer.alloc(0), window);
  }

  /**
   * Starts another LZMA2 stream (an xz's next block, which the first chunk must reset), keeping the
   * buffers: a crafted xz of many tiny blocks costs no allocations per block.
   */
  reset(window: number): void {
    this.window = window;
    this.decoder.restart(window);
    this.filled = 0;
    this.hasProperties = false;
    this.ended = false;
  }

  /** Decodes nothing more, from the next chunk on (called from the output callback). */
  stop(): void {
    this.stopped = true;
  }

  push(data: Buffer): number {
    let taken = 0;
    while (taken < data.length && !this.ended && !this.stopped) {
      const room = Math.min(data.length - taken, this.pending.length - this.filled);
      data.copy(this.pending, this.filled, taken, taken + room);
      this.filled += room;
      taken += room;
      const used = this.chunks();
      if (this.ended) return taken - (this.filled - used);
      this.pending.copyWithin(0, used, this.filled);
      this.filled -= used;
    }
    return taken;
  }

  /** Decodes the whole chunks pending; returns how many bytes they took. */
  private chunks(): number {
    const input = this.pending.subarray(0, this.filled);
    let at = 0;
    for (;;) {
      if (this.stopped) return at;
      const chunk = chunkHeader(input, at);
      if (!chunk) return at;
      if (chunk.kind === 'end') {
        this.ended = true;
        return at + 1;
      }
      if (at + chunk.headerLength + chunk.packed > input.length) return at;
      this.decoder.makeRoom(chunk.unpacked, this.window);
      const from = this.decoder.pos;
      decodeChunk(this.decoder, chunk, input, at, this.hasProperties);
      this.hasProperties ||= chunk.kind === 'lzma';
      at += chunk.headerLength + chunk.packed;
      // A copy: the window slides over these bytes later.
      this.output(Buffer.from(this.decoder.out.subarray(from, this.decoder.pos)));
    }
  }
}
