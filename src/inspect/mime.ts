// Looks inside a message once, as its raw bytes stream by on their way to the spool, and gathers the facts
// content rules use (MessageFacts): root headers, From/Sender/Subject, the text of the message, its links,
// and per attachment the name, declared and real type, size, SHA-256 and archive listing. Memory is bounded
// whatever the message size: attachments are hashed and sniffed on the fly, never kept; text is kept up to
// maxTextBytes. Malformed input gives partial facts, never an exception. mailsplit does the MIME splitting
// (the same parser mailparser uses, so parts are where mail clients find them).
//
// An attached message (message/rfc822 sent as an attachment, or transfer-encoded, which mailsplit does
// not open; or any part named *.eml, which mail clients open as a message) is read too, by an inspector
// of its own fed with its decoded bytes: its attachments, links and text count as the message's, so an
// executable cannot pass by being forwarded inside an .eml. Its own headers are not the message's. The
// inner inspector runs on its own, asynchronously, so nothing it does may depend on how far the outer one
// got: it gets fixed budgets when it starts (parts and depth left, a share of the text budget), its facts
// are merged in document order at the end, and the parts limit is checked again on the sum.

import { createHash, type Hash } from 'node:crypto';
import type { Transform } from 'node:stream';
import { Splitter, type MimeNode, type SplitterChunk } from '@zone-eu/mailsplit';
import libmime from 'libmime';
import addressparser from 'nodemailer/lib/addressparser';
import type { AttachmentFacts, MessageFacts } from '../policy/facts.js';
import { asciiCompatible, decodeText, fromUtf7, recoder, streamDecoder, UTF7_CHARSET, utf7WordsAsUtf8, type StreamDecoder } from './charset.js';
import { isUuencode, transferDecoder, uudecodeLine, type TransferDecoder } from './decode.js';
import { htmlToTexts, normalizeText } from './html.js';
import { compressedFileNames, namesDiskImage } from './gzip.js';
import { namesArchive } from './archive-names.js';
import { CabLister, defaultName as cabDefaultName } from './cab.js';
import { IsoLister } from './iso.js';
import { RarLister } from './rar.js';
import { TnefLister } from './tnef.js';
import { SignedContent, type Readings } from './pkcs7.js';
import { defaultName as sevenZipDefaultName, SevenZipLister } from './sevenzip.js';
import { lzmaAlone, TarLister } from './tar.js';
import { detectType, MAGIC_BYTES } from './magic.js';
import { UrlScanner, UrlSet } from './urls.js';
import { inflateBudget, type InflateBudget } from './deflate.js';
import { ZipLister } from './zip.js';

export interface InspectLimits {
  /** MIME parts (every entity, the root and multipart containers included) before mimeLimitExceeded = 'parts' */
  maxParts: number;
  /** nesting depth (the root is 0) before mimeLimitExceeded = 'depth' */
  maxDepth: number;
  /** bytes in one part's header block before mimeLimitExceeded = 'header_size' */
  maxHeaderSize: number;
  /** text kept for `body`, in UTF-8 bytes (default 256 KB) */
  maxTextBytes?: number;
  /** URLs kept (default 1000) */
  maxUrls?: number;
}

const DEFAULT_MAX_TEXT = 262_144;
const DEFAULT_MAX_URLS = 1000;
// An HTML part is kept up to this many times the text budget: markup is most of a newsletter's bytes.
const HTML_SOURCE_FACTOR = 4;
const MAX_ARCHIVE_ENTRIES = 1000;
const EMPTY = Buffer.alloc(0);

/**
 * Headers a part may have once: with two, the inspector reads one and a mail program may read the other
 * (a text part for Douane, a multipart with an executable for the recipient). The values of `mime.ambiguous`.
 */
export const SINGLE_HEADERS = ['content-type', 'content-transfer-encoding', 'content-disposition', 'boundary'] as const;
/**
 * The values of `mime.ambiguous`: a header found twice, or one whose type or disposition Thunderbird reads
 * otherwise (a "," before its parameters); base64 padding inside a group (decode.ts); a boundary read two
 * ways; or a file name a mail program may read otherwise (filename: given twice, Content-Type's name and
 * Content-Disposition's filename on different extensions, an unquoted one with a space or quote in it, a
 * continued one with a gap, or a control character such as NUL in it).
 */
export const AMBIGUITIES = [...SINGLE_HEADERS, 'base64-padding', 'filename'] as const;
type SingleHeader = (typeof AMBIGUITIES)[number];

/** The inspection limits a message can go over, and S/MIME signed content not readable to its end: the values of `mime.limit_exceeded`. */
export const INSPECTION_LIMITS = ['parts', 'depth', 'header_size', 'archive_entries', 'urls', 'signed_content'] as const;
type Limit = (typeof INSPECTION_LIMITS)[number];

interface TextPart {
  html: boolean;
  charset: string;
  /** the kept bytes, in a buffer that grows up to `cap` */
  kept: Buffer;
  bytes: number;
  /** decoded bytes kept for the body; the rest is only scanned for links */
  cap: number;
  urls?: UrlScanner;
  /** a UTF-16 part, decoded as it streams for the link scanner (which reads ASCII-compatible bytes) */
  wide?: StreamDecoder;
  /** uuencoded files in a plain text part, all of it (not only the kept bytes), when its charset is ASCII's */
  uu?: UuencodeWatch;
}

interface AttachmentPart {
  facts: AttachmentFacts;
  hash: Hash;
  head: Buffer[];
  headLength: number;
  zip: ZipLister;
  iso: IsoLister;
  rar: RarLister;
  sevenZip: SevenZipLister;
  tar: TarLister;
  cab: CabLister;
  tnef: TnefLister;
  urls?: UrlScanner;
  wide?: StreamDecoder;
  /** an HTML file by its type or name: its links count, whatever its charset turns out to be */
  html: boolean;
}

interface Leaf {
  node: MimeNode;
  decoder: TransferDecoder;
  text?: TextPart;
  attachment?: AttachmentPart;
  /** an attached message, read by an inspector of its own */
  embedded?: MessageInspector;
  /** an S/MIME or signed-file part (.p7m): its signed content, read out of it for `embedded` (as a message) and `embeddedFile` */
  signed?: SignedContent;
  /** the file a signature tool extracts from a .p7m named "x.ext.p7m", read by an inspector of its own */
  embeddedFile?: MessageInspector;
}

const MESSAGE_TYPES = new Set(['message/rfc822', 'message/global']);
const SMIME_TYPES = new Set(['application/pkcs7-mime', 'application/x-pkcs7-mime']);

/** Whether a part that is not read as the message's text is an attached message (mail clients open a .eml as one). */
export function isAttachedMessage(type: string, filename: string): boolean {
  return MESSAGE_TYPES.has(type.toLowerCase()) || extensionOf(filename) === 'eml';
}

/** An attached message's text budget is at most this share of the message's: siblings each get one. */
const EMBEDDED_TEXT_SHARE = 8;

export class MessageInspector {
  // Typed as the Transform it is: mailsplit's typings only declare its `data` event.
  private readonly splitter: Transform;
  private readonly maxText: number;
  private readonly depths = new WeakMap<object, number>();
  /** what opening archives inside zips may cost, for the whole message: its attached messages share it */
  private readonly inflateBudget: InflateBudget;
  private size = 0;
  /** parts read, attached messages' included once they end */
  private parts = 0;
  private stopped = false;
  /** what failed inside the inspector (a bug): the message cannot be judged on the facts gathered */
  private failure: Error | undefined;
  private leaf: Leaf | undefined;
  private ending: Promise<MessageFacts> | undefined;
  private headers = new Map<string, string[]>();
  private from: string[] = [];
  private sender: string | undefined;
  private subject = '';
  private body: string[] = [];
  /** the part each piece of the body comes from (none: an attached message's text) */
  private bodyParts: (MimeNode | undefined)[] = [];
  /** each piece as a reader sees it (an HTML part without its hidden elements), where that differs */
  private bodyVisible: (string | undefined)[] = [];
  private bodyBytes = 0;
  private readonly urls: UrlSet;
  private attachments: AttachmentFacts[] = [];
  private limitExceeded: Limit | undefined;
  private ambiguous: SingleHeader | undefined;
  /** the message's first bytes, held until its first line is known */
  private start: Buffer | undefined = Buffer.alloc(0);
  /** attached messages being read, in document order */
  private readonly embedded: { inspector: MessageInspector; facts: Promise<MessageFacts | undefined> }[] = [];
  /** an attached message's inspector asked to wait: the next write waits for it */
  private embeddedWait: Promise<void> | undefined;
  /** one pending wait for the splitter's drain, however many writes ask for it */
  private drain: Promise<void> | undefined;

  constructor(
    private readonly limits: InspectLimits,
    budget: InflateBudget = inflateBudget(),
  ) {
    this.inflateBudget = budget;
    this.maxText = limits.maxTextBytes ?? DEFAULT_MAX_TEXT;
    this.urls = new UrlSet(limits.maxUrls ?? DEFAULT_MAX_URLS);
    this.splitter = new Splitter({
      // mailsplit counts every header line as at least 64 bytes; the exact check is ours (on _headerlen),
      // this only bounds what mailsplit holds before we get to see the part.
      maxHeadSize: limits.maxHeaderSize * 2 + 65_536,
      maxChildNodes: limits.maxParts + 2,
    }) as unknown as Transform;
    this.splitter.on('data', (chunk: SplitterChunk) => {
      if (this.stopped) return;
      try {
        this.onChunk(chunk);
      } catch (err) {
        // A bug or an input nobody foresaw must not take the connection down; nor may the message be
        // judged on what was gathered before it (an executable further on unseen): end() fails, and the
        // message is tempfailed as one that could not be checked.
        this.failure ??= err instanceof Error ? err : new Error(String(err));
        this.leaf = undefined;
        this.stop();
      }
    });
    this.splitter.on('error', (err: Error & { code?: string }) => {
      // mailsplit gives up on a header block or a part count over its bounds, at a delimiter line (the
      // part before is complete, end() finishes it). Anything else is input it cannot read further. The
      // facts so far stand.
      if (err.code === 'EMAXLEN') this.limit(/header/i.test(err.message) ? 'header_size' : 'parts');
      else this.stop();
    });
  }

  /** Feeds raw message bytes in order; a returned promise asks the caller to wait (backpressure). */
  write(chunk: Buffer): Promise<void> | void {
    if (this.ending) return;
    this.size += chunk.length;
    // After a limit or a parser failure the rest is only counted (the caller's stream still has to end).
    if (this.stopped || chunk.length === 0 || this.splitter.destroyed) return;
    if (this.start) {
      // Until the first line is whole (or long enough to tell), see unhideFirstFrom.
      this.start = Buffer.concat([this.start, chunk]);
      if (this.start.length < FIRST_LINE && !this.start.includes(0x0a)) return;
      chunk = unhideFirstFrom(this.start);
      this.start = undefined;
    }
    const drained = this.splitter.write(chunk) ? undefined : (this.drain ??= this.settled('drain').finally(() => (this.drain = undefined)));
    const embedded = this.embeddedWait;
    this.embeddedWait = undefined;
    return both(drained, embedded);
  }

  /** Call once after the last chunk; resolves with the facts (partial if a limit was hit). */
  end(): Promise<MessageFacts> {
    this.ending ??= this.finish();
    return this.ending;
  }

  private async finish(): Promise<MessageFacts> {
    if (this.start?.length && !this.stopped && !this.splitter.destroyed) this.splitter.write(unhideFirstFrom(this.start));
    this.start = undefined;
    if (!this.stopped && !this.splitter.destroyed) {
      const done = this.settled('end');
      this.splitter.end();
      await done;
    }
    // The last part ends with the input, closing delimiter or not.
    this.finishLeafSafely();
    this.stopped = true;
    if (!this.splitter.destroyed) this.splitter.destroy();
    for (const { inspector, facts } of this.embedded) {
      const inner = await facts;
      this.parts += inspector.parts;
      if (inner) this.merge(inner);
    }
    if (this.failure) throw new Error(`the message could not be inspected: ${this.failure.message}`, { cause: this.failure });
    if (this.parts > this.limits.maxParts) this.limitExceeded ??= 'parts';
    // More distinct links than are kept: one past the bound (a phishing link after a thousand others)
    // would go unseen by the link rules.
    if (this.urls.dropped) this.limitExceeded ??= 'urls';
    const facts: MessageFacts = {
      size: this.size,
      headers: this.headers,
      from: this.from,
      subject: this.subject,
      body: this.body.join('\n'),
      urls: this.urls.list(),
      attachments: this.attachments,
    };
    const shown = this.shownBody();
    if (shown !== undefined) facts.shownBody = shown;
    if (this.sender !== undefined) facts.sender = this.sender;
    if (this.limitExceeded) facts.mimeLimitExceeded = this.limitExceeded;
    if (this.ambiguous) facts.mimeAmbiguous = this.ambiguous;
    return facts;
  }

  /** An attached message's facts, after the message's own: its headers stay its own. */
  private merge(inner: MessageFacts): void {
    this.attachments.push(...inner.attachments);
    for (const url of inner.urls) this.urls.add(url);
    if (inner.mimeLimitExceeded) this.limitExceeded ??= inner.mimeLimitExceeded as Limit;
    if (inner.mimeAmbiguous) this.ambiguous ??= inner.mimeAmbiguous as SingleHeader;
    this.keepBody(inner.body);
  }

  /** Adds a part's text to the body, as much as the text budget has room for. */
  private keepBody(text: string, part?: MimeNode, visible?: string): void {
    const room = this.maxText - this.bodyBytes;
    const kept = room > 0 ? truncateUtf8(text, room) : '';
    if (!kept) return;
    this.body.push(kept);
    this.bodyParts.push(part);
    this.bodyVisible.push(visible !== undefined && visible !== text ? truncateUtf8(visible, room) : undefined);
    this.bodyBytes += Buffer.byteLength(kept) + 1;
  }

  /**
   * The body as a mail program shows it, when that is less than the body: of a multipart/alternative, the
   * last alternative with text (a program shows one; the body has them all, for the rules), and HTML
   * without what its elements' own attributes hide. A sender could otherwise put words that differ in every
   * copy where no one reads them. (For the bulk fingerprint only: the rules read everything.)
   */
  private shownBody(): string | undefined {
    // For each alternative, the child its last text came from.
    const chains = this.bodyParts.map((part) => alternatives(part));
    const last = new Map<MimeNode, MimeNode>();
    for (const chain of chains) for (const [alternative, child] of chain) last.set(alternative, child);
    if (last.size === 0 && this.bodyVisible.every((v) => v === undefined)) return undefined;
    const shown = this.body.flatMap((text, i) => (chains[i]!.every(([alternative, child]) => last.get(alternative) === child) ? [this.bodyVisible[i] ?? text] : []));
    // Every piece kept as it is: the body itself.
    if (shown.length === this.body.length && this.bodyVisible.every((v) => v === undefined)) return undefined;
    return shown.join('\n');
  }

  /** Resolves on the splitter's `event`, or when it fails or closes (nothing more will come then). */
  private settled(event: 'drain' | 'end'): Promise<void> {
    return new Promise((resolve) => {
      const s = this.splitter;
      const done = () => {
        s.off(event, done);
        s.off('error', done);
        s.off('close', done);
        resolve();
      };
      s.on(event, done);
      s.on('error', done);
      s.on('close', done);
    });
  }

  private limit(kind: Limit): void {
    this.limitExceeded ??= kind;
    this.stop();
  }

  /** No more work on this message: input is still counted, and the facts so far are returned. */
  private stop(): void {
    this.stopped = true;
  }

  private finishLeafSafely(): void {
    try {
      this.finishLeaf();
    } catch (err) {
      this.failure ??= err instanceof Error ? err : new Error(String(err));
      this.leaf = undefined;
    }
  }

  private onChunk(chunk: SplitterChunk): void {
    if (chunk.type === 'node') {
      this.onNode(chunk);
      return;
    }
    // Body bytes of the current leaf; a multipart's preamble, delimiters and epilogue come as `data` of
    // the multipart itself. A multipart without a boundary has all its content as `data`: a leaf here.
    const leaf = this.leaf;
    if (leaf && chunk.node === leaf.node && chunk.value.length) this.feed(leaf, chunk.value);
  }

  private onNode(node: MimeNode): void {
    // A new part begins: the previous leaf's body is complete.
    this.finishLeaf();
    if (++this.parts > this.limits.maxParts) return this.limit('parts');
    const parent = node.parentNode;
    const depth = parent ? (this.depths.get(parent) ?? 0) + 1 : 0;
    if (depth > this.limits.maxDepth) return this.limit('depth');
    this.depths.set(node, depth);
    if (node._headerlen > this.limits.maxHeaderSize) return this.limit('header_size');
    this.ambiguous ??= twice(node);
    if (node.root) this.readRootHeaders(node);
    if ((node.multipart && node._boundary) || node.messageNode === true) return;
    this.startLeaf(node);
  }

  private readRootHeaders(node: MimeNode): void {
    if (!node.headers) return;
    for (const { key, line } of node.headers.getList()) {
      if (!key) continue;
      const raw = headerValue(line);
      const value = decodeWords(raw);
      const values = this.headers.get(key);
      if (values) values.push(value);
      else this.headers.set(key, [value]);
      if (key === 'from') this.from.push(...addresses(raw));
      else if (key === 'sender' && this.sender === undefined) this.sender = addresses(raw)[0];
      else if (key === 'subject' && values === undefined) this.subject = value;
    }
  }

  private startLeaf(node: MimeNode): void {
    const type = effectiveType(node);
    const filename = fileName(node);
    const isText = (type === 'text/plain' || type === 'text/html') && node.disposition !== 'attachment';
    // A text part without a file name labelled uuencode is read as the text it is: its "begin" lines are the
    // uuencoded files a mail program shows (uuencodedFiles), which decoding it would hide in the body as
    // binary. One with a file name is an attachment, decoded.
    const leaf: Leaf = { node, decoder: transferDecoder(isText && filename === '' && isUuencode(node.encoding) ? false : node.encoding) };
    // A text part named .eml is the message's text to Douane and a message to the mail program that opens it:
    // read as both.
    // An S/MIME part holds, when signed, the message a mail program shows (see pkcs7.ts).
    const smime = !isText && (SMIME_TYPES.has(type) || extensionOf(filename) === 'p7m');
    if (smime) leaf.signed = new SignedContent(filename);
    if (smime || ((!isText || extensionOf(filename) === 'eml') && isAttachedMessage(type, filename))) {
      // Its root sits one level below this part; over the depth limit, the nesting is too deep.
      const depthLeft = this.limits.maxDepth - (this.depths.get(node) ?? 0) - 1;
      if (depthLeft < 0) return this.limit('depth');
      const partsLeft = this.limits.maxParts - this.parts;
      if (partsLeft < 1) return this.limit('parts');
      const textLeft = Math.min(Math.max(0, this.maxText - this.bodyBytes), Math.floor(this.maxText / EMBEDDED_TEXT_SHARE));
      leaf.embedded = new MessageInspector({ ...this.limits, maxDepth: depthLeft, maxParts: partsLeft, maxTextBytes: textLeft }, this.inflateBudget);
      if (smime) leaf.embeddedFile = new MessageInspector({ ...this.limits, maxDepth: depthLeft, maxParts: partsLeft, maxTextBytes: textLeft }, this.inflateBudget);
    }
    const charset = typeof node.charset === 'string' ? node.charset : '';
    if (isText) {
      const html = type === 'text/html';
      const room = Math.max(0, this.maxText - this.bodyBytes);
      leaf.text = { html, charset, kept: EMPTY, bytes: 0, cap: html ? room * HTML_SOURCE_FACTOR : room };
      if (!html && asciiCompatible(charset)) leaf.text.uu = new UuencodeWatch();
      // Every link as it streams, not only those in the kept bytes: a megabyte of padding must not hide one.
      Object.assign(leaf.text, this.linkScanner(html, charset));
    }
    if (!isText || filename !== '') {
      if (!this.spend('attachments', 1)) return;
      const extension = extensionOf(filename);
      leaf.attachment = {
        facts: {
          name: filename,
          extension,
          declaredType: node.headers && node.headers.hasHeader('content-type') ? node.contentType || '' : '',
          detectedType: 'unknown',
          size: 0,
          encrypted: false,
          archiveEntries: [],
        },
        hash: createHash('sha256'),
        head: [],
        headLength: 0,
        zip: new ZipLister(MAX_ARCHIVE_ENTRIES, 0, this.inflateBudget),
        iso: new IsoLister(MAX_ARCHIVE_ENTRIES),
        rar: new RarLister(MAX_ARCHIVE_ENTRIES),
        sevenZip: new SevenZipLister(MAX_ARCHIVE_ENTRIES, this.inflateBudget),
        tar: new TarLister(MAX_ARCHIVE_ENTRIES, this.inflateBudget),
        cab: new CabLister(MAX_ARCHIVE_ENTRIES),
        tnef: new TnefLister(MAX_ARCHIVE_ENTRIES),
        // SVG too: it opens in the browser, and its links and scripts are a phishing page's.
        html: !isText && (type === 'text/html' || type === 'image/svg+xml' || /^x?html?$|^shtml$|^xht$|^svg$/.test(extension)),
      };
      // An HTML file sent as an attachment opens in a browser: its links count like the body's. One in
      // UTF-16 is found by its charset, or by its byte-order mark when it declares none (see consume).
      if (leaf.attachment.html) Object.assign(leaf.attachment, this.linkScanner(true, charset));
    }
    this.leaf = leaf;
  }

  /**
   * Takes `amount` from the message's budget; past it (a first look's), the inspection stops where it is,
   * and its facts are known to be short (MessageInspection looks again).
   */
  private spend(what: 'attachments' | 'html', amount: number): boolean {
    this.inflateBudget[what] -= amount;
    if (this.inflateBudget[what] >= 0) return true;
    this.inflateBudget.exhausted = true;
    this.leaf = undefined;
    this.stop();
    return false;
  }

  /** The link scanner for a part in `charset`: on its raw bytes, or on UTF-16 or UTF-7 decoded as it streams. */
  private linkScanner(html: boolean, charset: string): { urls?: UrlScanner; wide?: StreamDecoder } {
    if (asciiCompatible(charset)) return { urls: new UrlScanner(this.urls, html, recoder(charset)) };
    const wide = streamDecoder(charset);
    return wide ? { urls: new UrlScanner(this.urls, html), wide } : {};
  }

  private feed(leaf: Leaf, raw: Buffer): void {
    const data = leaf.decoder.push(raw);
    if (data.length) this.consume(leaf, data);
  }

  private consume(leaf: Leaf, data: Buffer): void {
    const { text, attachment } = leaf;
    if (text) {
      if (text.bytes < text.cap) keepText(text, data);
      const latin1 = text.wide ? undefined : data.toString('latin1');
      text.urls?.push(text.wide ? text.wide.decode(data, { stream: true }) : latin1!);
      if (latin1 !== undefined) text.uu?.push(latin1);
    }
    if (attachment) {
      const a = attachment;
      // A browser reads a byte-order mark before any declared charset.
      if (a.html && a.facts.size === 0 && data.length >= 2 && ((data[0] === 0xff && data[1] === 0xfe) || (data[0] === 0xfe && data[1] === 0xff))) {
        a.wide = new TextDecoder(data[0] === 0xff ? 'utf-16le' : 'utf-16be');
        a.urls = new UrlScanner(this.urls, true);
      }
      a.facts.size += data.length;
      a.hash.update(data);
      if (a.headLength < MAGIC_BYTES) {
        const part = data.subarray(0, MAGIC_BYTES - a.headLength);
        a.head.push(Buffer.from(part));
        a.headLength += part.length;
      }
      a.zip.push(data);
      a.iso.push(data);
      a.rar.push(data);
      a.sevenZip.push(data);
      a.tar.push(data);
      a.cab.push(data);
      a.tnef.push(data);
      a.urls?.push(a.wide ? a.wide.decode(data, { stream: true }) : data.toString('latin1'));
    }
    if (!leaf.embedded) return;
    if (!leaf.signed) {
      this.embeddedWait = both(this.embeddedWait, leaf.embedded.write(data));
      return;
    }
    this.readSigned(leaf, leaf.signed.push(data));
  }

  /** The two readings of signed content, each to its inspector. */
  private readSigned(leaf: Leaf, readings: Readings): void {
    for (const content of readings.message) this.embeddedWait = both(this.embeddedWait, leaf.embedded?.write(content));
    for (const content of readings.file) this.embeddedWait = both(this.embeddedWait, leaf.embeddedFile?.write(content));
  }

  private finishLeaf(): void {
    const leaf = this.leaf;
    if (!leaf) return;
    this.leaf = undefined;
    const rest = leaf.decoder.end();
    if (rest.length) this.consume(leaf, rest);
    if (leaf.decoder.ambiguous) this.ambiguous ??= 'base64-padding';
    if (leaf.text) this.finishText(leaf.text, leaf.node);
    if (leaf.attachment) this.finishAttachment(leaf.attachment);
    if (leaf.signed) {
      this.readSigned(leaf, leaf.signed.end());
      // Signed content not read to its end, or a .p7m that is no signature at all: what the recipient's
      // program or signature tool shows of it is not known.
      if (leaf.signed.unreadable || (leaf.signed.reader.malformed && declaresSignedData(leaf.node))) this.limitExceeded ??= 'signed_content';
    }
    // Never rejects today; if it did, the attached message's facts are missing, the message's stand.
    for (const inspector of [leaf.embedded, leaf.embeddedFile]) {
      if (!inspector) continue;
      const facts = inspector.end().catch((err: Error) => {
        this.failure ??= err;
        return undefined;
      });
      this.embedded.push({ inspector, facts });
    }
  }

  private finishText(t: TextPart, node: MimeNode): void {
    if (t.wide) t.urls?.push(t.wide.decode());
    t.urls?.end();
    if (t.uu) this.attachments.push(...t.uu.end(t.charset));
    if (t.bytes === 0) return;
    const room = this.maxText - this.bodyBytes;
    if (room <= 0) return;
    const text = decodeText(t.kept.subarray(0, t.bytes), t.charset);
    t.kept = EMPTY;
    // A charset with no streaming decoder (UTF-32) was not scanned as it streamed: scan what was kept.
    if (!t.urls) {
      const scanner = new UrlScanner(this.urls, t.html);
      scanner.push(text);
      scanner.end();
    }
    if (!t.html && !t.uu) for (const file of uuencodedFiles(text)) this.attachments.push(file);
    if (t.html) {
      if (!this.spend('html', t.bytes)) return;
      const { text: html, visible } = htmlToTexts(text, room);
      this.keepBody(html, node, visible);
    } else this.keepBody(normalizeText(text), node);
  }

  private finishAttachment(a: AttachmentPart): void {
    if (a.wide) a.urls?.push(a.wide.decode());
    a.urls?.end();
    const f = a.facts;
    const head = Buffer.concat(a.head, a.headLength);
    a.zip.end();
    a.sevenZip.end();
    a.tar.end();
    a.cab.end();
    a.tnef.end();
    const zip = a.zip.listing;
    const iso = a.iso.listing;
    const rar = a.rar.listing;
    const sevenZip = a.sevenZip.listing;
    const tar = a.tar.listing;
    const cab = a.cab.listing;
    const tnef = a.tnef.listing;
    f.detectedType = detectType(head, zip.isZip ? zip.entries : undefined);
    // An image's mark is 32 KB in, past the bytes kept for detectType; what its start says comes first.
    if (iso.isIso && (f.detectedType === 'unknown' || f.detectedType === 'text')) f.detectedType = 'iso';
    // A tar has no mark at its start (a gzipped one is a gzip): its first header's checksum says.
    else if (tar.isTar && (f.detectedType === 'unknown' || f.detectedType === 'text')) f.detectedType = 'tar';
    f.sha256 = a.hash.digest('hex');
    // Names found after other data count too (a zip behind a stub or appended to an image still
    // extracts, and one file may be both an image and a zip); whether it is encrypted is only trusted of
    // a file that is a zip from its first byte.
    const unnamed = [...(sevenZip.unnamed ? [sevenZipDefaultName(f.name)] : []), ...(cab.unnamed ? [cabDefaultName(f.name)] : [])];
    if (unnamed.some(namesArchive)) this.limitExceeded ??= 'archive_entries';
    // One file compressed: its name, as the tool that decompresses it writes it. It counts even when the
    // content lists as a tar (invoice.exe.xz holding a tar that is also a program), unless it is named a tar.
    const listed = [...zip.entries, ...iso.entries, ...rar.entries, ...sevenZip.entries, ...tar.entries, ...cab.entries, ...tnef.entries, ...unnamed];
    const compressed = compressedFileNames(f.detectedType, head, f.name, MAGIC_BYTES);
    // A gzip's stored name past the bytes kept (behind a long extra field): 7-Zip reads it, Douane does not.
    if (compressed === undefined) this.limitExceeded ??= 'archive_entries';
    if (!tar.isTar && namesDiskImage(compressed ?? [])) this.limitExceeded ??= 'archive_entries';
    const named = (compressed ?? []).filter((name) => !listed.length || !/\.tar$/i.test(name));
    const entries = [...new Set([...listed, ...named])];
    if (entries.length) f.archiveEntries = entries;
    const isZip = f.detectedType === 'zip' || f.detectedType === 'office-openxml';
    f.encrypted = (isZip && zip.encrypted) || (rar.isRar && rar.encrypted) || (sevenZip.is7z && sevenZip.encrypted) || (tar.isTar && a.tar.encrypted);
    // An .lzma (xz --format=lzma, tar --lzma), which xz, bsdtar and 7-Zip open by its content whatever
    // its suffix says, is not decoded here. Its 13-byte header is too loose to be told from other files'
    // first bytes: only one named like a compressed file is taken for one.
    if (/\.(lzma|tlz|txz|xz)$/i.test(f.name) && lzmaAlone(head)) this.limitExceeded ??= 'archive_entries';
    // Names were left out of the listing: the archive cannot be judged by its names.
    if (!zip.complete || !iso.complete || !rar.complete || !sevenZip.complete || !tar.complete || !cab.complete || !tnef.complete) this.limitExceeded ??= 'archive_entries';
    this.attachments.push(f);
  }
}

/** A wait for both (either may be absent). */
function both(a: Promise<void> | void | undefined, b: Promise<void> | void | undefined): Promise<void> | undefined {
  if (a && b) return Promise.all([a, b]).then(() => undefined);
  return a || b || undefined;
}

/**
 * Appends to the kept text, copying (a view would keep the caller's whole chunk alive) into a buffer that
 * doubles as needed, up to the cap.
 */
function keepText(t: TextPart, data: Buffer): void {
  const n = Math.min(data.length, t.cap - t.bytes);
  if (t.bytes + n > t.kept.length) {
    const grown = Buffer.allocUnsafe(Math.min(t.cap, Math.max(t.bytes + n, t.kept.length * 2)));
    t.kept.copy(grown, 0, 0, t.bytes);
    t.kept = grown;
  }
  data.copy(t.kept, t.bytes, 0, n);
  t.bytes += n;
}

/** Inspects a whole message from a stream of raw chunks (or an array of them). */
export async function inspectStream(input: AsyncIterable<Buffer> | Iterable<Buffer>, limits: InspectLimits): Promise<MessageFacts> {
  const inspector = new MessageInspector(limits);
  for await (const chunk of input) {
    const wait = inspector.write(chunk);
    if (wait) await wait;
  }
  return inspector.end();
}

/**
 * The type a part is read as. RFC 2045 makes a Content-Type that does not parse mean text/plain, and a
 * multipart without a boundary cannot be split: its content reads as text too (as mail clients show it).
 */
function effectiveType(node: MimeNode): string {
  // RFC 2046 5.1.5: in a digest, a part without a Content-Type is a message (and mail programs show it so).
  if (node.parentNode && node.parentNode.contentType === 'multipart/digest' && !(node.headers && node.headers.hasHeader('content-type'))) return 'message/rfc822';
  const type = node.contentType || 'text/plain';
  if (!/^[!#$%&'*+.^_`|~0-9a-z-]+\/[!#$%&'*+.^_`|~0-9a-z-]+$/.test(type)) return 'text/plain';
  if (node.multipart && !node._boundary) return 'text/plain';
  return type;
}

/** The raw header line (name, colon, folded value) to its unfolded value, 8-bit UTF-8 read as such. */
function headerValue(line: string): string {
  // mailsplit keeps header bytes as a binary string; SMTPUTF8 messages carry raw UTF-8 in them.
  if (/[\x80-\xff]/.test(line)) {
    const utf8 = Buffer.from(line, 'latin1').toString('utf8');
    if (!utf8.includes('\ufffd')) line = utf8;
  }
  return libmime.decodeHeader(line).value;
}

function decodeWords(value: string): string {
  if (!value.includes('=?')) return value;
  try {
    return libmime.decodeWords(utf7WordsAsUtf8(value));
  } catch {
    return value;
  }
}

/**
 * The addresses of an address header, lower-cased. Parsed before RFC 2047 decoding: an encoded display
 * name must not be able to smuggle in an address of its own.
 */
function addresses(value: string): string[] {
  try {
    return addressparser(value, { flatten: true })
      .map((a) => a.address.trim().toLowerCase())
      .filter((a) => a !== '');
  } catch {
    return [];
  }
}

/** Lower-case extension of a file name, as Windows reads it (trailing dots and spaces do not count). */
/**
 * mailsplit drops a first line that starts "From " as an mbox envelope line; but "From : ceo@bank.example"
 * is a From: header to Postfix and mail programs (RFC 5322 obsolete syntax allows space before the
 * colon), and it would be hidden from the From: rules. The inspector reads it as "From:".
 */
const FIRST_LINE = 1000; // SMTP's longest line, its end included

function unhideFirstFrom(chunk: Buffer): Buffer {
  const m = /^From[ \t]+:/i.exec(chunk.toString('latin1', 0, Math.min(chunk.length, FIRST_LINE)));
  return m ? Buffer.concat([Buffer.from('From:'), chunk.subarray(m[0].length)]) : chunk;
}

// A file written into the text with uuencode ("begin 644 setup.exe" … "end"): Outlook and Thunderbird
// show it as an attachment, so the attachment rules see it as one. Its first lines give its type.
const UUENCODE_BEGIN = /^begin[ \t]+[0-7]{3,4}[ \t]+([^\r\n]{1,255})\r?\n((?:[!-`][!-`]{0,84}\r?\n){0,3})/gm;
const MAX_UUENCODED = 100;

function uuencodedFiles(text: string): AttachmentFacts[] {
  const files: AttachmentFacts[] = [];
  UUENCODE_BEGIN.lastIndex = 0;
  for (let m = UUENCODE_BEGIN.exec(text); m && files.length < MAX_UUENCODED; m = UUENCODE_BEGIN.exec(text)) {
    const name = m[1]!.trim();
    const head = uudecode(m[2]!.split(/\r?\n/));
    files.push(uuencodedFile(name, head));
  }
  return files;
}

/** Decodes uuencoded lines (each: a length character, then four characters for three bytes). */
function uudecode(lines: string[]): Buffer {
  return Buffer.concat(lines.filter((line) => line !== '').map(uudecodeLine));
}

/** Decodes yEnc lines (each byte 42 more, "=" escaping the next one 64 more again), read as latin1. */
function ydecode(lines: string[]): Buffer {
  const out: number[] = [];
  for (const line of lines) {
    for (let i = 0; i < line.length; i++) {
      let c = line.charCodeAt(i);
      if (c === 0x3d && i + 1 < line.length) c = line.charCodeAt(++i) - 64;
      out.push((c - 42) & 255);
    }
  }
  return Buffer.from(out);
}

function uuencodedFile(name: string, head: Buffer): AttachmentFacts {
  return { name, extension: extensionOf(name), declaredType: '', detectedType: detectType(head), size: head.length, encrypted: false, archiveEntries: [] };
}

const UU_BEGIN_LINE = /^begin[ \t]+[0-7]{3,4}[ \t]+([^\r\n]{1,255})$/;
// yEnc ("=ybegin line=128 size=… name=setup.exe", its data, "=yend"): Thunderbird shows it as an attachment
// too. The name is the rest of the line.
const YENC_BEGIN_LINE = /^=ybegin[ \t](?:.*?[ \t])?name=([^\r\n]{1,255})$/;
const UU_LINE = /^[!-`][!-`]{0,84}$/;
/** longer than any begin line or uuencoded line: the rest of such a line is not looked at */
const UU_MAX_LINE = 1024;

/**
 * The uuencoded files of a text part as it streams, past the bytes kept for the body too: a megabyte of
 * text before one must not hide it. Line by line, as uuencodedFiles() reads the kept text: a begin line,
 * then up to three lines of data for the file's type. A chunk with no "begin" in it is only cut at its last
 * line break.
 */
class UuencodeWatch {
  private carry = '';
  /** the carried text is the end of a line too long to be one of interest */
  private skipping = false;
  private file: { name: string; lines: string[]; yenc?: boolean } | undefined;
  private readonly found: { name: string; lines: string[]; yenc?: boolean }[] = [];

  push(text: string): void {
    const buf = this.carry + text;
    const cut = buf.lastIndexOf('\n');
    if (cut < 0) {
      this.carry = buf;
      if (buf.length > UU_MAX_LINE) this.skipLine();
      return;
    }
    if (this.file || buf.includes('begin')) for (const line of buf.slice(0, cut).split('\n')) this.line(line);
    else if (this.skipping) this.skipping = false;
    this.carry = buf.slice(cut + 1);
    if (this.carry.length > UU_MAX_LINE) this.skipLine();
  }

  /** The files found, named in the part's charset. */
  end(charset: string): AttachmentFacts[] {
    if (this.carry) this.line(this.carry);
    this.carry = '';
    this.close();
    return this.found.map((f) => uuencodedFile(decodeText(Buffer.from(f.name, 'latin1'), charset).trim(), f.yenc ? ydecode(f.lines) : uudecode(f.lines)));
  }

  private skipLine(): void {
    this.close();
    this.carry = '';
    this.skipping = true;
  }

  private line(raw: string): void {
    if (this.skipping) {
      this.skipping = false;
      return;
    }
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (this.file?.yenc) {
      if (line.startsWith('=ypart')) return;
      if (line.startsWith('=yend')) return this.close();
      this.file.lines.push(line);
      if (this.file.lines.length === 3) this.close();
      return;
    }
    if (this.file) {
      if (UU_LINE.test(line) && this.file.lines.length < 3) {
        this.file.lines.push(line);
        if (this.file.lines.length === 3) this.close();
        return;
      }
      this.close();
    }
    if (this.found.length >= MAX_UUENCODED) return;
    const m = UU_BEGIN_LINE.exec(line);
    if (m) this.file = { name: m[1]!, lines: [] };
    const y = m ? null : YENC_BEGIN_LINE.exec(line);
    if (y) this.file = { name: y[1]!, lines: [], yenc: true };
  }

  private close(): void {
    if (this.file) this.found.push(this.file);
    this.file = undefined;
  }
}

/**
 * The part's file name as mailsplit read it, except in UTF-7, which libmime hands back undecoded
 * ("invoice+AC4-vbs"): that one is read again from its header, as a UTF-7 aware mail program shows it.
 */
/** Content-Type: application/pkcs7-mime; smime-type=signed-data */
function declaresSignedData(node: MimeNode): boolean {
  const raw = node.headers ? node.headers.getFirst('content-type') : undefined;
  return !!raw && parameterForms(headerValue(`content-type: ${raw}`), 'smime-type').values.some((v) => v.trim().toLowerCase() === 'signed-data');
}

function fileName(node: MimeNode): string {
  const name = nameAsRead(node);
  if (extensionOf(name) !== '' || !node.headers) return name;
  // Without an extension, where the other header gives one: the program that shows that one runs the file
  // by it (name="invoice.js", filename="invoice").
  for (const [header, param] of [['content-disposition', 'filename'], ['content-type', 'name']] as const) {
    const raw = node.headers.getFirst(header);
    const other = raw ? parameterForms(headerValue(`${header}: ${raw}`), param).values.map(decodeWords).find((v) => extensionOf(v) !== '') : undefined;
    if (other) return other;
  }
  // Without either parameter, Thunderbird names the part by these older headers (Content-Name: invoice.js).
  if (!name) {
    for (const header of ['content-name', 'x-sun-data-name']) {
      const raw = node.headers.getFirst(header);
      if (raw) return decodeWords(headerValue(`${header}: ${raw}`).trim());
    }
  }
  return name;
}

function nameAsRead(node: MimeNode): string {
  const name = typeof node.filename === 'string' ? node.filename : '';
  if (!name || !node.headers) return name;
  // The header mailsplit took the name from: Content-Disposition's filename first, else Content-Type's name.
  for (const [header, param] of [['content-disposition', 'filename'], ['content-type', 'name']] as const) {
    const raw = node.headers.getFirst(header);
    const value = raw ? libmime.parseHeaderValue(raw, { stripComments: true }).params[param] : undefined;
    if (!value) continue;
    if (!/utf-?7|unicode11utf7/i.test(raw)) return name;
    if (value.includes('=?')) return decodeWords(value);
    // RFC 2231 (name*=utf-7''…): libmime joined and unescaped it, and left the charset undone.
    return new RegExp(`${param}\\*(?:0\\*)?\\s*=\\s*"?${UTF7_CHARSET}'`, 'i').test(raw) ? fromUtf7(value) : name;
  }
  return name;
}

/**
 * The first header a part has more than once, or a boundary or file name that mail programs may read in
 * another way than mailsplit did: see AMBIGUITIES.
 */
function twice(node: MimeNode): SingleHeader | undefined {
  if (!node.headers) return undefined;
  const seen = new Set<string>();
  const names: ParameterForms[] = [];
  for (const { key, line } of node.headers.getList()) {
    if (key !== 'content-type' && key !== 'content-transfer-encoding' && key !== 'content-disposition') continue;
    if (seen.has(key)) return key;
    seen.add(key);
    if (key !== 'content-transfer-encoding' && headReadTwoWays(node, key, headerValue(line))) return key;
    if (key === 'content-type') {
      const boundary = parameterForms(headerValue(line), 'boundary');
      if (boundary.repeated || new Set(boundary.values).size > 1) return 'boundary';
    }
    if (key === 'content-type' || key === 'content-disposition') names.push(parameterForms(headerValue(line), key === 'content-type' ? 'name' : 'filename'));
  }
  if (names.some((n) => n.repeated)) return 'filename';
  const shown = names.flatMap((n) => n.values).map(decodeWords);
  if (shown.some((name) => /[\x00-\x1f\x7f]/.test(name))) return 'filename';
  // Two extensions: which one the recipient's program shows is up to it. A name without one next to a
  // name with one (Thunderbird's signature: name="OpenPGP_signature.asc", filename="OpenPGP_signature")
  // is not ambiguous: the part is taken under the name with the extension (fileName).
  if (new Set(shown.map(extensionOf).filter(Boolean)).size > 1) return 'filename';
  return undefined;
}

const TOKEN = /^[!#$%&'*+.^_`|~0-9a-z-]+/i;
const TYPE = /^[!#$%&'*+.^_`|~0-9a-z-]+\/[!#$%&'*+.^_`|~0-9a-z-]+/i;

/**
 * Thunderbird ends a type or a disposition at a ";", a "," or a space, and reads parameters from the
 * first of them; mailsplit wants the ";". "application/x-msdownload, name=a.exe" is then an executable
 * there and a text here, "multipart/mixed, boundary=b" a multipart there and one block of text here.
 * Two readings differ when what follows holds a name or a boundary, or when the type read so is one the
 * part would not be read as a text for: a multipart, an attached message, a file. A text type with its
 * ";" missing ("text/html charset=x", which PHP scripts write) is a text both ways.
 */
function headReadTwoWays(node: MimeNode, key: 'content-type' | 'content-disposition', value: string): boolean {
  const head = value.replace(/\([^()]*\)/g, ' ').split(';')[0]!.trim();
  const word = (key === 'content-type' ? TYPE : TOKEN).exec(head)?.[0];
  if (!word || word.length === head.length) return false;
  if (/(?:^|[\s,])(?:file)?name\*?\d*\*?\s*=|boundary\*?\d*\*?\s*=/i.test(head.slice(word.length))) return true;
  return key === 'content-type' && !/^text\//i.test(word) && word.toLowerCase() !== effectiveType(node);
}

interface ParameterForms {
  /** its value in each form it was given in: plain (name=), RFC 2231 extended (name*=), continued (name*0=…) */
  values: string[];
  /** the same form given twice: which one counts is up to the program reading it */
  repeated: boolean;
}

/**
 * One parameter of a header value, in every form it was written: mailsplit keeps one of them (RFC 2231's,
 * the first), a mail program may keep another. Values are unquoted; RFC 2231 ones are percent-decoded as
 * bytes (their charset is not needed to tell an extension or a boundary apart).
 */
function parameterForms(value: string, name: string): ParameterForms {
  const plain: string[] = [];
  const extended: string[] = [];
  const pieces = new Map<number, string>();
  /** the pieces' numbers as written: "01" is not a number Thunderbird takes */
  const numbersAsWritten = new Map<number, string>();
  let repeated = false;
  let plainGiven = 0;
  for (const param of splitParameters(value)) {
    // Split at the first "=" and trimmed, not matched by one pattern: a lazy value before trailing white
    // space would try every split of a long run of spaces (seconds for one header line).
    const eq = param.indexOf('=');
    if (eq < 0) continue;
    const m = /^([^=\s*]+)(?:\*(\d+))?(\*)?$/.exec(param.slice(0, eq).trim());
    if (!m || m[1]!.toLowerCase() !== name) continue;
    const text = unquote(param.slice(eq + 1).trim());
    if (m[2] !== undefined) {
      const index = Number(m[2]);
      if (pieces.has(index)) repeated = true;
      pieces.set(index, m[3] ? percentDecode(index === 0 ? withoutCharset(text) : text) : text);
      numbersAsWritten.set(index, m[2]);
    } else if (m[3]) extended.push(percentDecode(withoutCharset(text)));
    else {
      plainGiven++;
      plain.push(text);
    }
  }
  // Unquoted, a value ends at a space or a ";" for Thunderbird, a quote in it kept; mailsplit reads a
  // quote as opening a quoted string, and on past the ";" to its end.
  for (const m of value.matchAll(unquotedValue(name))) {
    if (!plain.includes(m[1]!)) plain.push(m[1]!);
  }
  if (plainGiven > 1 || extended.length > 1) repeated = true;
  const continued: string[] = [];
  if (pieces.size) {
    const sorted = [...pieces.entries()].sort((a, b) => a[0] - b[0]);
    continued.push(sorted.map(([, v]) => v).join(''));
    // Thunderbird stops at the first number missing (or written with a leading zero); mailsplit closes the gap.
    let upTo = '';
    for (let i = 0; pieces.has(i) && numbersAsWritten.get(i) === String(i); i++) upTo += pieces.get(i)!;
    if (upTo !== continued[0]) continued.push(upTo);
  }
  return { values: [...plain, ...extended, ...continued], repeated };
}

/** The parameter's unquoted values as Thunderbird ends them (at a space or a ";"), one pattern per name. */
const UNQUOTED = new Map<string, RegExp>();
function unquotedValue(name: string): RegExp {
  let pattern = UNQUOTED.get(name);
  if (!pattern) UNQUOTED.set(name, (pattern = new RegExp(`(?:^|;)\\s*${name}\\s*=\\s*([^"\\s;][^\\s;]*)`, 'gi')));
  return pattern;
}

/** A header value's parameters, split on the semicolons outside quoted strings; the value itself left out. */
function splitParameters(value: string): string[] {
  const out: string[] = [];
  let current = '';
  let quoted = false;
  let started = false;
  for (let i = 0; i < value.length; i++) {
    const c = value[i]!;
    if (quoted && c === '\\') {
      current += c + (value[i + 1] ?? '');
      i++;
    } else if (c === '"') {
      quoted = !quoted;
      current += c;
    } else if (c === ';' && !quoted) {
      if (started) out.push(current);
      started = true;
      current = '';
    } else current += c;
  }
  if (started) out.push(current);
  return out;
}

function unquote(text: string): string {
  return text.startsWith('"') && text.endsWith('"') && text.length >= 2 ? text.slice(1, -1).replace(/\\(.)/g, '$1') : text;
}

/** RFC 2231's charset'language' prefix taken off. */
function withoutCharset(text: string): string {
  const m = /^[^']*'[^']*'/.exec(text);
  return m ? text.slice(m[0].length) : text;
}

function percentDecode(text: string): string {
  return Buffer.from(text.replace(/%([0-9a-f]{2})/gi, (_, hex: string) => String.fromCharCode(parseInt(hex, 16))), 'latin1').toString('latin1');
}

function extensionOf(name: string): string {
  let end = name.length;
  while (end > 0 && (name[end - 1] === '.' || name[end - 1] === ' ')) end--;
  const base = name.slice(0, end);
  const dot = base.lastIndexOf('.');
  if (dot < 0 || dot < base.lastIndexOf('/') || dot < base.lastIndexOf('\\')) return '';
  return base.slice(dot + 1).toLowerCase();
}

/** At most `bytes` bytes of UTF-8, cut on a character boundary. */
function truncateUtf8(text: string, bytes: number): string {
  // A JS character is at most 3 bytes of UTF-8 (a surrogate pair is 4 for 2): short strings need no count.
  if (text.length * 3 <= bytes || Buffer.byteLength(text) <= bytes) return text;
  const buf = Buffer.from(text);
  let end = bytes;
  while (end > 0 && (buf[end]! & 0xc0) === 0x80) end--;
  return buf.toString('utf8', 0, end);
}

/** The multipart/alternative parts above a part, each with its child the part is in. */
function alternatives(part: MimeNode | undefined): [MimeNode, MimeNode][] {
  const out: [MimeNode, MimeNode][] = [];
  for (let child = part, parent = part?.parentNode; child && parent; child = parent, parent = parent.parentNode) {
    if (parent.contentType === 'multipart/alternative') out.push([parent, child]);
  }
  return out;
}
