import { gzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { detectType, looksLikeText } from '../../src/inspect/magic.js';

const bytes = (...b: number[]) => Buffer.from(b);
const latin1 = (s: string) => Buffer.from(s, 'latin1');

/** The first local header of a zip whose first entry is `name`. */
function zipHead(name: string): Buffer {
  const h = Buffer.alloc(30);
  h.writeUInt32LE(0x04034b50, 0);
  h.writeUInt16LE(20, 4);
  h.writeUInt16LE(name.length, 26);
  return Buffer.concat([h, latin1(name), Buffer.alloc(64, 0x11)]);
}

/** A DOS header pointing at a PE signature, as every Windows executable starts. */
function peHead(): Buffer {
  const b = Buffer.alloc(256);
  b.write('MZ', 0, 'latin1');
  b.writeUInt32LE(0x80, 0x3c);
  b.write('PE\0\0', 0x80, 'latin1');
  return b;
}

describe('content type from magic bytes', () => {
  it('recognises executables: PE (MZ), ELF, Mach-O in both byte orders and fat binaries', () => {
    expect(detectType(peHead())).toBe('executable');
    expect(detectType(latin1('MZ'))).toBe('executable');
    expect(detectType(bytes(0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0))).toBe('executable');
    for (const m of [[0xfe, 0xed, 0xfa, 0xce], [0xfe, 0xed, 0xfa, 0xcf], [0xce, 0xfa, 0xed, 0xfe], [0xcf, 0xfa, 0xed, 0xfe], [0xca, 0xfe, 0xba, 0xbe]]) {
      expect(detectType(bytes(...m, 0, 0, 0, 2))).toBe('executable');
    }
  });

  it('calls an executable an executable whatever else its bytes contain (an .exe renamed .pdf)', () => {
    const exe = peHead();
    exe.write('%PDF-1.4', 0x90, 'latin1');
    expect(detectType(exe)).toBe('executable');
  });

  it('recognises scripts by their #! line', () => {
    expect(detectType(latin1('#!/bin/sh\necho hi\n'))).toBe('script');
    expect(detectType(latin1('#!/usr/bin/env python3\n'))).toBe('script');
  });

  it('tells a plain zip from an Office Open XML package', () => {
    expect(detectType(zipHead('readme.txt'))).toBe('zip');
    expect(detectType(zipHead('[Content_Types].xml'))).toBe('office-openxml');
    expect(detectType(zipHead('word/document.xml'))).toBe('office-openxml');
    // The first entry says nothing, the listing does.
    expect(detectType(zipHead('_rels/.rels'), ['_rels/.rels', 'xl/workbook.xml'])).toBe('office-openxml');
    expect(detectType(zipHead('docProps/app.xml'), ['docProps/app.xml', 'ppt/presentation.xml'])).toBe('office-openxml');
    expect(detectType(zipHead('a.txt'), ['a.txt', 'b/word.txt'])).toBe('zip');
    expect(detectType(bytes(0x50, 0x4b, 0x05, 0x06, ...new Array(18).fill(0)))).toBe('zip');
  });

  it('recognises the other archive and document formats', () => {
    expect(detectType(bytes(0xd0, 0xcf, 0x11, 0xe0, 0xa1, 0xb1, 0x1a, 0xe1, 0, 0))).toBe('ms-office');
    expect(detectType(latin1('Rar!\x1a\x07\x00\xcf\x90'))).toBe('rar');
    expect(detectType(latin1('Rar!\x1a\x07\x01\x00'))).toBe('rar');
    expect(detectType(bytes(0x37, 0x7a, 0xbc, 0xaf, 0x27, 0x1c, 0, 4))).toBe('7z');
    expect(detectType(gzipSync(Buffer.from('hello')))).toBe('gzip');
    expect(detectType(latin1('%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj'))).toBe('pdf');
    // Readers accept junk before the header, within the first 1024 bytes.
    expect(detectType(Buffer.concat([Buffer.alloc(500, 0x20), latin1('%PDF-1.4\n')]))).toBe('pdf');
  });

  it('recognises images', () => {
    expect(detectType(bytes(0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13))).toBe('png');
    expect(detectType(bytes(0xff, 0xd8, 0xff, 0xe0, 0, 0x10, 0x4a, 0x46))).toBe('jpeg');
    expect(detectType(latin1('GIF89a\x01\x00\x01\x00'))).toBe('gif');
    expect(detectType(latin1('GIF87a\x01\x00\x01\x00'))).toBe('gif');
  });

  it('recognises HTML the way a browser sniffs it (leading whitespace, BOM, any case)', () => {
    expect(detectType(latin1('<!DOCTYPE html><html><body>x</body></html>'))).toBe('html');
    expect(detectType(latin1('\r\n  <HTML>\n<head>'))).toBe('html');
    expect(detectType(latin1('<html\r\n  lang="en">'))).toBe('html');
    expect(detectType(latin1('\xef\xbb\xbf<html lang="fr">'))).toBe('html');
    expect(detectType(latin1('<script>location="https://x.test"</script>'))).toBe('html');
    expect(detectType(latin1('<a href="https://x.test">click</a>'))).toBe('html');
    expect(detectType(latin1('<!-- saved page -->\n<div>'))).toBe('html');
    // Markup-ish text that a browser would not take for HTML.
    expect(detectType(latin1('<abbr>not sniffed</abbr>'))).toBe('text');
    expect(detectType(latin1('<?xml version="1.0"?><root/>'))).toBe('text');
  });

  it('calls text what has no NUL and hardly any control bytes, in any ASCII-compatible charset', () => {
    expect(detectType(latin1('Hello,\r\nthis is a plain note.\r\n'))).toBe('text');
    expect(detectType(Buffer.from('Réunion à l’hôtel — 東京\n', 'utf8'))).toBe('text');
    expect(detectType(latin1('Caf\xe9 cr\xe8me\tprix: 3\xa0\x80\n'))).toBe('text');
    expect(detectType(Buffer.from('\ufeffhello', 'utf16le'))).toBe('text');
    expect(looksLikeText(latin1('a'.repeat(200) + '\x01'))).toBe(true);
    expect(looksLikeText(latin1('a'.repeat(20) + '\x01\x02\x03'))).toBe(false);
    expect(looksLikeText(latin1('text with a NUL\x00 inside'))).toBe(false);
  });

  it('says unknown for binary it does not know and for empty content', () => {
    expect(detectType(Buffer.alloc(0))).toBe('unknown');
    expect(detectType(bytes(0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07))).toBe('unknown');
    expect(detectType(bytes(0x4d))).toBe('text'); // a lone "M" is not "MZ"
    let seed = 7;
    const noise = Buffer.from(Buffer.alloc(4096).map(() => (seed = (seed * 1103515245 + 12345) >>> 0) >>> 24));
    noise[0] = 0x00;
    expect(detectType(noise)).toBe('unknown');
  });
});
