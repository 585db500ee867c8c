// An LZMA decoder, for the one place Douane needs it: a 7z archive's header, which 7-Zip and libarchive
// compress with LZMA, so a 7z's file names are only seen once it is decoded. It decodes a whole stream
// of known (and bounded) size into one buffer, which is also the dictionary; nothing is streamed. It
// follows the format as Igor Pavlov's specification describes it (the LZMA SDK's lzma-specification.txt).
// Input that is not LZMA throws LzmaError: reading past the input, a distance before the output's start,
// a first byte other than 0, more output than announced.

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

  /** The stream is whole when the code is 0 (the encoder flushed it). */
  get finishedOk(): boolean {
    return this.code === 0;
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
  private readonly choice = new Uint16Array(2).fill(PROBABILITY_INIT);
  private readonly low = new Uint16Array(POS_STATES_MAX << 3).fill(PROBABILITY_INIT);
  private readonly mid = new Uint16Array(POS_STATES_MAX << 3).fill(PROBABILITY_INIT);
  private readonly high = new Uint16Array(256).fill(PROBABILITY_INIT);

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
  let d = props[0]!;
  if (d >= 9 * 5 * 5) throw new LzmaError('bad LZMA properties');
  const lc = d % 9;
  d = (d - lc) / 9;
  const lp = d % 5;
  const pb = (d - lp) / 5;
  return { lc, lp, pb };
}

/**
 * Decodes `size` bytes of LZMA from `input` (from `start`), with the properties given apart (as 7z gives
 * them). An end marker before `size` bytes is an error; one right at `size` is allowed.
 */
export function lzmaDecode(input: Buffer, start: number, props: Buffer, size: number): Buffer {
  const { lc, lp, pb } = lzmaProperties(props);
  const out = Buffer.alloc(size);
  const rc = new RangeDecoder(input, start);

  const literals = new Uint16Array(0x300 << (lc + lp)).fill(PROBABILITY_INIT);
  const isMatch = new Uint16Array(STATES << 4).fill(PROBABILITY_INIT);
  const isRep = new Uint16Array(STATES).fill(PROBABILITY_INIT);
  const isRepG0 = new Uint16Array(STATES).fill(PROBABILITY_INIT);
  const isRepG1 = new Uint16Array(STATES).fill(PROBABILITY_INIT);
  const isRepG2 = new Uint16Array(STATES).fill(PROBABILITY_INIT);
  const isRep0Long = new Uint16Array(STATES << 4).fill(PROBABILITY_INIT);
  const posSlots = new Uint16Array(LEN_TO_POS_STATES << 6).fill(PROBABILITY_INIT);
  const posDecoders = new Uint16Array(1 + FULL_DISTANCES - END_POS_MODEL_INDEX).fill(PROBABILITY_INIT);
  const align = new Uint16Array(1 << ALIGN_BITS).fill(PROBABILITY_INIT);
  const lengths = new LengthDecoder();
  const repLengths = new LengthDecoder();

  const pbMask = (1 << pb) - 1;
  const lpMask = (1 << lp) - 1;
  let pos = 0;
  let state = 0;
  let rep0 = 0;
  let rep1 = 0;
  let rep2 = 0;
  let rep3 = 0;

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

  while (pos < size) {
    const posState = pos & pbMask;
    if (rc.bit(isMatch, (state << 4) + posState) === 0) {
      const prev = pos > 0 ? out[pos - 1]! : 0;
      const base = 0x300 * (((pos & lpMask) << lc) + (prev >>> (8 - lc)));
      let symbol = 1;
      if (state >= 7) {
        if (rep0 >= pos) throw new LzmaError('a distance before the start');
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
      if (pos === 0) throw new LzmaError('a repeated match at the start');
      if (rc.bit(isRepG0, state) === 0) {
        if (rc.bit(isRep0Long, (state << 4) + posState) === 0) {
          if (rep0 >= pos) throw new LzmaError('a distance before the start');
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
    if (rep0 >= pos) throw new LzmaError('a distance before the start');
    if (len > size - pos) throw new LzmaError('more output than announced');
    for (let from = pos - rep0 - 1, end = pos + len; pos < end; ) out[pos++] = out[from++]!;
  }
  return out;
}
