// Reads an xz file (`.xz`, `.txz`, `.tar.xz`) as it streams and hands on what it decompresses: the stream
// header, then each block's header, its LZMA2 data, its padding and check, up to the index that ends the
// blocks. Only what `xz` and `tar -J` write by default is decoded: blocks whose only filter is LZMA2.
// Another filter (a BCJ filter for programs, delta), a header whose checksum fails, or LZMA2 that does
// not decode makes the reading fail: what was handed on stands, and whoever reads it decides what a
// failure means. The window kept for LZMA2's matches is the dictionary's size, bounded: a stream that
// reaches further back (a dictionary over 8 MiB, with that much output) fails too. Checks are skipped,
// not verified: a damaged stream is caught by the header checksums and the decoder, and a check failing
// at the very end changes nothing an extractor would have shown before it.

import { crc32 } from 'node:zlib';
import { LzmaError, Lzma2Stream } from './lzma.js';

export const XZ_MAGIC = Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]);

/** The LZMA2 window kept at most, whatever the dictionary size says (xz's default, -6, is 8 MiB). */
export const MAX_XZ_WINDOW = 8 * 1024 * 1024;

const STREAM_HEADER = 12;
const LZMA2_FILTER = 0x21;

type State =
  | { kind: 'stream-header' }
  | { kind: 'block-header'; size?: number }
  | { kind: 'lzma2'; stream: Lzma2Stream; length: number }
  | { kind: 'skip'; left: number }
  | { kind: 'done' };

export class XzReader {
  /** the content is an xz file: its stream header was read and holds */
  isXz = false;
  /** the blocks ended (the index was reached) */
  ended = false;
  /** why the reading stopped before the end: not an xz, damaged, a filter or window not read here */
  failure: string | undefined;
  /** bytes taken: where the index starts once the blocks ended */
  position = 0;
  private state: State = { kind: 'stream-header' };
  private checkSize = 0;
  /** the header being read (stream or block header: at most 1 KB) */
  private head = Buffer.alloc(1024);
  private filled = 0;
  /** the LZMA2 decoder, made at the first block and reset for each next one */
  private lzma2: Lzma2Stream | undefined;

  constructor(private readonly output: (data: Buffer) => void) {}

  /** Reads no more (whoever reads the output has what it needs, or gave up): neither ended nor failed. */
  stop(): void {
    this.lzma2?.stop();
    this.state = { kind: 'done' };
  }

  get done(): boolean {
    return this.state.kind === 'done';
  }

  push(data: Buffer): void {
    try {
      let at = 0;
      while (at < data.length && this.state.kind !== 'done') {
        const taken = this.step(data.subarray(at));
        at += taken;
        this.position += taken;
      }
    } catch (err) {
      this.fail(err instanceof LzmaError ? `LZMA2: ${err.message}` : (err as Error).message);
    }
  }

  /** The file ended: a stream whose blocks had not ended was cut short. */
  end(): void {
    if (this.state.kind !== 'done') this.fail(this.isXz ? 'cut short' : 'not an xz file');
  }

  private fail(why: string): void {
    this.failure ??= why;
    this.state = { kind: 'done' };
  }

  /** Takes some of `data` for the state the reading is in; returns how much. */
  private step(data: Buffer): number {
    const state = this.state;
    switch (state.kind) {
      case 'stream-header': {
        const taken = this.fill(data, STREAM_HEADER);
        if (this.filled < STREAM_HEADER) {
          if (!this.head.subarray(0, Math.min(this.filled, 6)).equals(XZ_MAGIC.subarray(0, Math.min(this.filled, 6)))) this.fail('not an xz file');
          return taken;
        }
        const head = this.head;
        if (!head.subarray(0, 6).equals(XZ_MAGIC)) this.fail('not an xz file');
        else if (head[6] !== 0 || (head[7]! & 0xf0) !== 0 || crc32(head.subarray(6, 8)) !== head.readUInt32LE(8)) this.fail('a damaged stream header');
        if (this.state.kind === 'done') return taken;
        this.isXz = true;
        const check = head[7]!;
        this.checkSize = check === 0 ? 0 : 4 << Math.floor((check - 1) / 3);
        this.filled = 0;
        this.state = { kind: 'block-header' };
        return taken;
      }
      case 'block-header': {
        if (state.size === undefined) {
          // The index indicator: no more blocks in this stream.
          if (data[0] === 0) {
            this.ended = true;
            this.state = { kind: 'done' };
            return 1;
          }
          state.size = (data[0]! + 1) * 4;
        }
        const taken = this.fill(data, state.size);
        if (this.filled < state.size) return taken;
        this.startBlock(this.head.subarray(0, state.size));
        this.filled = 0;
        return taken;
      }
      case 'lzma2': {
        const taken = state.stream.push(data);
        state.length += taken;
        if (state.stream.ended) {
          // The block is padded to four bytes, then its check.
          const padding = (4 - ((state.length + this.blockHeaderSize) % 4)) % 4;
          this.state = { kind: 'skip', left: padding + this.checkSize };
        }
        return taken;
      }
      case 'skip': {
        const taken = Math.min(state.left, data.length);
        state.left -= taken;
        if (state.left === 0) this.state = { kind: 'block-header' };
        return taken;
      }
      case 'done':
        return data.length;
    }
  }

  private blockHeaderSize = 0;

  /** A block header: its checksum, its flags and filters (LZMA2 alone), then its data. */
  private startBlock(header: Buffer): void {
    const end = header.length - 4;
    if (crc32(header.subarray(0, end)) !== header.readUInt32LE(end)) return this.fail('a damaged block header');
    const flags = header[1]!;
    if (flags & 0x3c) return this.fail('a block header with reserved flags');
    const filters = (flags & 3) + 1;
    let at = 2;
    const vli = (): number => {
      let value = 0;
      for (let i = 0; i < 9; i++) {
        if (at >= end) throw new Error('a damaged block header');
        const b = header[at++]!;
        value += (b & 0x7f) * 2 ** (7 * i);
        if ((b & 0x80) === 0) return value;
      }
      throw new Error('a damaged block header');
    };
    if (flags & 0x40) vli();
    if (flags & 0x80) vli();
    if (filters !== 1) return this.fail('a filter other than LZMA2 alone');
    const id = vli();
    const size = vli();
    if (id !== LZMA2_FILTER) return this.fail('a filter other than LZMA2 alone');
    if (size !== 1 || at >= end) return this.fail('a damaged block header');
    const bits = header[at++]! & 0xff;
    if (bits > 40) return this.fail('a damaged block header');
    // The dictionary size: 2 or 3 times a power of two (the largest, 40, means 4 GiB - 1).
    const dictionary = bits === 40 ? 0xffffffff : (2 | (bits & 1)) * 2 ** (Math.floor(bits / 2) + 11);
    for (; at < end; at++) if (header[at] !== 0) return this.fail('a damaged block header');
    this.blockHeaderSize = header.length;
    const window = Math.min(dictionary, MAX_XZ_WINDOW);
    if (this.lzma2) this.lzma2.reset(window);
    else this.lzma2 = new Lzma2Stream(window, this.output);
    this.state = { kind: 'lzma2', stream: this.lzma2, length: 0 };
  }

  /** Copies into the header buffer up to `size` bytes in all; returns how many it took. */
  private fill(data: Buffer, size: number): number {
    const taken = Math.min(size - this.filled, data.length);
    data.copy(this.head, this.filled, 0, taken);
    this.filled += taken;
    return taken;
  }
}
