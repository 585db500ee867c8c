// A 7z writer for the tests that need archives 7-Zip would not write itself: every file stored (Copy),
// the header plain or packed (stored, or LZMA by xz), and knobs to write each part otherwise than 7-Zip
// does. What 7-Zip makes of the result is checked by the tests that use it.

import { execFileSync } from 'node:child_process';
import { crc32 } from 'node:zlib';

const SIGNATURE = Buffer.from([0x37, 0x7a, 0xbc, 0xaf, 0x27, 0x1c]);

/** 7z's variable-length number. */
export function num(n: number): Buffer {
  for (let extra = 0; extra < 8; extra++) {
    // `extra` bytes follow a first byte whose low bits hold what does not fit in them.
    const lowBits = 7 - extra;
    if (n < 2 ** (8 * extra + lowBits)) {
      const out = Buffer.alloc(1 + extra);
      const high = Math.floor(n / 2 ** (8 * extra));
      out[0] = ((0xff00 >> extra) & 0xff) | high;
      for (let i = 0; i < extra; i++) out[1 + i] = Math.floor(n / 2 ** (8 * i)) % 256;
      return out;
    }
  }
  const out = Buffer.alloc(9, 0);
  out[0] = 0xff;
  out.writeBigUInt64LE(BigInt(n), 1);
  return out;
}

export interface SevenZipOptions {
  /** how the header is written: as it is, stored in a packed stream, or packed with LZMA */
  header?: 'plain' | 'copy' | 'lzma';
  /** the header's first id as written (7-Zip reads it as a number: 80 01 is 1 too) */
  headerId?: Buffer;
  /** bytes put in the unpack info before its kFolder */
  beforeFolder?: Buffer;
  /** properties put in the files info before the names */
  fileProperties?: Buffer;
  /** zero bytes after a stored header, inside its packed stream */
  copyExtra?: number;
  /** the coder id of the files' folder (default Copy: 00) */
  coderId?: Buffer;
  /** the signature header's major version */
  version?: number;
  /** the header packed twice */
  packTwice?: boolean;
}

function streamsInfo(packPos: number, packSize: number, coder: Buffer, unpackSize: number, opts: { crc?: number; beforeFolder?: Buffer; substreams?: Buffer } = {}): Buffer {
  return Buffer.concat([
    Buffer.from([0x06]), num(packPos), num(1), Buffer.from([0x09]), num(packSize), Buffer.from([0x00]),
    Buffer.from([0x07]), opts.beforeFolder ?? Buffer.alloc(0), Buffer.from([0x0b]), num(1), Buffer.from([0x00]),
    Buffer.from([0x01]), coder,
    Buffer.from([0x0c]), num(unpackSize),
    opts.crc === undefined ? Buffer.alloc(0) : Buffer.concat([Buffer.from([0x0a, 0x01]), u32(opts.crc)]),
    Buffer.from([0x00]),
    opts.substreams ?? Buffer.alloc(0),
    Buffer.from([0x00]),
  ]);
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0);
  return b;
}

/** LZMA by xz: its five property bytes, and the stream (with an end marker after the data, which 7-Zip allows). */
function lzma(data: Buffer): { props: Buffer; stream: Buffer } {
  const out = execFileSync('xz', ['--format=lzma', '-c'], { input: data, maxBuffer: 1 << 26 });
  return { props: out.subarray(0, 5), stream: out.subarray(13) };
}

/** Packs a header into a packed stream placed at `packPos`; returns the stream and the encoded header. */
function pack(header: Buffer, mode: 'copy' | 'lzma', packPos: number, o: SevenZipOptions): { packed: Buffer; encoded: Buffer } {
  if (mode === 'copy') {
    const packed = Buffer.concat([header, Buffer.alloc(o.copyExtra ?? 0)]);
    return { packed, encoded: Buffer.concat([Buffer.from([0x17]), streamsInfo(packPos, packed.length, Buffer.from([0x01, 0x00]), header.length, { crc: crc32(header) })]) };
  }
  const { props, stream } = lzma(header);
  const coder = Buffer.concat([Buffer.from([0x23, 0x03, 0x01, 0x01, 0x05]), props]);
  return { packed: stream, encoded: Buffer.concat([Buffer.from([0x17]), streamsInfo(packPos, stream.length, coder, header.length, { crc: crc32(header) })]) };
}

/** A 7z archive of `files` (a directory when its data is undefined), every file stored. */
export function sevenZip(files: { name: string; data?: Buffer }[], o: SevenZipOptions = {}): Buffer {
  const withData = files.filter((f) => f.data !== undefined && f.data.length > 0);
  const data = Buffer.concat(withData.map((f) => f.data!));
  const parts: Buffer[] = [];
  if (withData.length) {
    const substreams = Buffer.concat([
      Buffer.from([0x08, 0x0d]), num(withData.length),
      withData.length > 1 ? Buffer.concat([Buffer.from([0x09]), ...withData.slice(0, -1).map((f) => num(f.data!.length))]) : Buffer.alloc(0),
      Buffer.from([0x0a, 0x01]), ...withData.map((f) => u32(crc32(f.data!))),
      Buffer.from([0x00]),
    ]);
    const coder = Buffer.concat([Buffer.from([o.coderId?.length ?? 1]), o.coderId ?? Buffer.from([0x00])]);
    parts.push(Buffer.from([0x04]), streamsInfo(0, data.length, coder, data.length, { beforeFolder: o.beforeFolder, substreams }));
  }
  const empty = files.map((f) => f.data === undefined || f.data.length === 0);
  const bits = (flags: boolean[]) => {
    const out = Buffer.alloc(Math.ceil(flags.length / 8));
    flags.forEach((f, i) => f && (out[i >> 3]! |= 0x80 >> (i & 7)));
    return out;
  };
  const fileProps: Buffer[] = [];
  if (empty.some(Boolean)) {
    const emptyStream = bits(empty);
    const emptyFile = bits(files.filter((_, i) => empty[i]).map((f) => f.data !== undefined));
    fileProps.push(Buffer.from([0x0e]), num(emptyStream.length), emptyStream, Buffer.from([0x0f]), num(emptyFile.length), emptyFile);
  }
  if (o.fileProperties) fileProps.push(o.fileProperties);
  const names = Buffer.concat([Buffer.from([0x00]), ...files.map((f) => Buffer.from(`${f.name}\0`, 'utf16le'))]);
  fileProps.push(Buffer.from([0x11]), num(names.length), names);
  parts.push(Buffer.from([0x05]), num(files.length), ...fileProps, Buffer.from([0x00]));
  let header: Buffer = Buffer.concat([o.headerId ?? Buffer.from([0x01]), ...parts, Buffer.from([0x00])]);
  let after: Buffer = data;
  const mode = o.header ?? 'plain';
  if (mode !== 'plain') {
    let packed = pack(header, mode, after.length, o);
    after = Buffer.concat([after, packed.packed]);
    header = packed.encoded;
    if (o.packTwice) {
      packed = pack(header, mode, after.length, o);
      after = Buffer.concat([after, packed.packed]);
      header = packed.encoded;
    }
  }
  const start = Buffer.alloc(20);
  start.writeBigUInt64LE(BigInt(after.length), 0);
  start.writeBigUInt64LE(BigInt(header.length), 8);
  start.writeUInt32LE(crc32(header), 16);
  return Buffer.concat([SIGNATURE, Buffer.from([o.version ?? 0, 4]), u32(crc32(start)), start, after, header]);
}
