// An S/MIME message signed "opaquely" (application/pkcs7-mime; smime-type=signed-data, smime.p7m) carries
// its whole content, attachments included, inside the signature's DER: mail programs that know S/MIME
// (Outlook, Thunderbird, Apple Mail) verify it and show that content as the message. Unread, an executable
// sent that way would pass the attachment rules unseen. This reads the signed content out of the CMS
// structure (RFC 5652) as its bytes stream by, without keeping them:
//
//   ContentInfo ::= SEQUENCE { contentType OID (signedData), content [0] EXPLICIT SignedData }
//   SignedData  ::= SEQUENCE { version INTEGER, digestAlgorithms SET, encapContentInfo, ... }
//   EncapsulatedContentInfo ::= SEQUENCE { eContentType OID, eContent [0] EXPLICIT OCTET STRING OPTIONAL }
//
// BER as well as DER: `openssl cms -stream` and Outlook write indefinite lengths and the content as a
// constructed OCTET STRING in pieces. Enveloped (encrypted) data is not signed data: its content cannot
// be read without the recipient's key, and stays as it is.

/** 1.2.840.113549.1.7.2, id-signedData, as its DER value bytes. */
const SIGNED_DATA = Buffer.from([0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02]);

/** Tag, first length byte and up to 8 more. */
const MAX_HEADER = 10;
const MAX_DEPTH = 30;
/** No element in a mail is 4 GB. */
const MAX_LENGTH = 2 ** 32;

const SEQUENCE = 0x30;
const SET = 0x31;
const INTEGER = 0x02;
const OID = 0x06;
const OCTET_STRING = 0x04;
const CONSTRUCTED_OCTET_STRING = 0x24;
const CONTEXT_0 = 0xa0;

/** Where an element sits, and so what its children are. */
type Role = 'top' | 'contentInfo' | 'explicit' | 'signedData' | 'encap' | 'eContent' | 'octets' | 'ignored';

interface Frame {
  role: Role;
  /** offset where its content ends; undefined for an indefinite length (ended by 00 00) */
  end: number | undefined;
  children: number;
}

export class SignedDataReader {
  /** Its content type says signed data. */
  signed = false;
  /** It began as DER does (a first element): a failure past that is a structure not understood, not another kind of file. */
  started = false;
  /** The signed content was read to its end (none, for a signature alone). */
  complete = false;
  /**
   * Not the structure above (past what tells signed data from others), or cut short: what a mail
   * program shows of it is not known.
   */
  malformed = false;
  private readonly stack: Frame[] = [{ role: 'top', end: undefined, children: 0 }];
  /** bytes read so far */
  private offset = 0;
  /** a header split across chunks */
  private pending: Buffer = Buffer.alloc(0);
  /** content bytes left to give out (emit) or to pass (skip) */
  private left = 0;
  private mode: 'header' | 'skip' | 'emit' | 'oid' | 'done' = 'header';
  private oid: Buffer[] = [];

  /** The signed content in `data`, in order (views of it, not copies). */
  push(data: Buffer): Buffer[] {
    const out: Buffer[] = [];
    let at = 0;
    while (at < data.length && this.mode !== 'done') {
      if (this.mode === 'skip' || this.mode === 'emit' || this.mode === 'oid') {
        const n = Math.min(this.left, data.length - at);
        const piece = data.subarray(at, at + n);
        if (this.mode === 'emit') out.push(piece);
        else if (this.mode === 'oid') this.oid.push(Buffer.from(piece));
        at += n;
        this.offset += n;
        this.left -= n;
        if (this.left === 0) this.contentEnded();
        continue;
      }
      // A header: at most 1 tag byte + 9 length bytes here; gather them across chunks.
      const room = Math.min(MAX_HEADER - this.pending.length, data.length - at);
      const head = this.pending.length ? Buffer.concat([this.pending, data.subarray(at, at + room)]) : data.subarray(at, at + room);
      const parsed = readHeader(head);
      if (parsed === 'short') {
        if (head.length >= MAX_HEADER) return this.fail(out);
        this.pending = Buffer.from(head);
        this.offset += room;
        at += room;
        continue;
      }
      if (parsed === 'bad') return this.fail(out);
      const used = parsed.size - this.pending.length;
      this.offset += used;
      at += used;
      this.pending = Buffer.alloc(0);
      this.element(parsed.tag, parsed.length);
      if (this.malformed) return out;
    }
    return out;
  }

  /** The input ended: a structure not read to its end is malformed. */
  end(): void {
    if (this.mode !== 'done') this.fail([]);
  }

  private fail(out: Buffer[]): Buffer[] {
    this.malformed = true;
    this.mode = 'done';
    return out;
  }

  /** An element's header was read; its content follows. */
  private element(tag: number, length: number | undefined): void {
    const parent = this.stack[this.stack.length - 1]!;
    if (tag === 0 && length === 0) {
      // End of contents: closes the innermost element of indefinite length.
      if (parent.end !== undefined || parent.role === 'top') return void this.fail([]);
      this.stack.pop();
      this.closed(parent);
      return this.closeFinished();
    }
    const index = parent.children++;
    const constructed = (tag & 0x20) !== 0;
    if (length === undefined && !constructed) return void this.fail([]);
    const end = length === undefined ? undefined : this.offset + length;
    // An element that runs past its parent's end is not BER.
    if (end !== undefined && parent.end !== undefined && end > parent.end) return void this.fail([]);
    let action = decide(parent.role, index, tag);
    if (action === 'bad') return void this.fail([]);
    this.started = true;
    // A constructed element of indefinite length is passed element by element, to its end of contents.
    if (action === 'skip' && length === undefined) action = 'ignored';
    if (action === 'skip' || action === 'emit' || action === 'oid') {
      if (length === undefined) return void this.fail([]);
      this.mode = action;
      this.left = length;
      if (action === 'oid') this.oid = [];
      if (length === 0) this.contentEnded();
      return;
    }
    // OpenSSL stops at 30 levels (ASN1_MAX_CONSTRUCTED_NEST): deeper is no signature, and each level
    // costs a frame here.
    if (this.stack.length > MAX_DEPTH) return void this.fail([]);
    this.stack.push({ role: action, end, children: 0 });
    this.mode = 'header';
    if (end !== undefined && end === this.offset) this.closeFinished();
  }

  /** A primitive element's content was read to its end. */
  private contentEnded(): void {
    const parent = this.stack[this.stack.length - 1]!;
    if (this.mode === 'oid' && parent.role === 'contentInfo') {
      const oid = Buffer.concat(this.oid);
      this.oid = [];
      if (!oid.equals(SIGNED_DATA)) {
        this.mode = 'done';
        return;
      }
      this.signed = true;
    }
    this.mode = 'header';
    this.closeFinished();
  }

  /** Pops every element of definite length whose content is now all read. */
  private closeFinished(): void {
    for (;;) {
      const top = this.stack[this.stack.length - 1]!;
      if (top.end === undefined || top.end !== this.offset) return;
      this.stack.pop();
      this.closed(top);
      if (this.mode === 'done') return;
    }
  }

  private closed(frame: Frame): void {
    // The signed content ends with its EncapsulatedContentInfo; what follows (certificates,
    // signatures) is not shown as the message.
    if (frame.role === 'encap') {
      this.complete = true;
      this.mode = 'done';
    }
  }
}

type Action = Role | 'skip' | 'emit' | 'oid' | 'bad';

/** What to do with the `index`th child, tagged `tag`, of an element in `role`. */
function decide(role: Role, index: number, tag: number): Action {
  switch (role) {
    case 'top':
      return index === 0 && tag === SEQUENCE ? 'contentInfo' : 'bad';
    case 'contentInfo':
      if (index === 0) return tag === OID ? 'oid' : 'bad';
      return index === 1 && tag === CONTEXT_0 ? 'explicit' : 'bad';
    case 'explicit':
      return index === 0 && tag === SEQUENCE ? 'signedData' : 'bad';
    case 'signedData':
      if (index === 0) return tag === INTEGER ? 'skip' : 'bad';
      if (index === 1) return tag === SET ? 'skip' : 'bad';
      return index === 2 && tag === SEQUENCE ? 'encap' : 'bad';
    case 'encap':
      // Its type (id-data for a MIME entity) is not checked: a mail program shows what is there.
      if (index === 0) return tag === OID ? 'skip' : 'bad';
      return index === 1 && tag === CONTEXT_0 ? 'eContent' : 'bad';
    case 'eContent':
    case 'octets':
      if (tag === OCTET_STRING) return 'emit';
      if (tag === CONSTRUCTED_OCTET_STRING) return 'octets';
      return 'bad';
    case 'ignored':
      return 'skip';
  }
}

/**
 * A BER identifier and length at the start of `b`: 'short' when more bytes are needed, 'bad' for forms
 * this structure never has (multi-byte tags, lengths past 4 GB). `length` undefined: indefinite.
 */
function readHeader(b: Buffer): { tag: number; length: number | undefined; size: number } | 'short' | 'bad' {
  if (b.length < 2) return 'short';
  const tag = b[0]!;
  if ((tag & 0x1f) === 0x1f) return 'bad';
  const first = b[1]!;
  if (first < 0x80) return { tag, length: first, size: 2 };
  if (first === 0x80) return { tag, length: undefined, size: 2 };
  const n = first & 0x7f;
  // BER allows leading zeros in a length (OpenSSL reads them): up to 8 bytes, of a value mail can hold.
  if (n > 8) return 'bad';
  if (b.length < 2 + n) return 'short';
  let length = 0;
  for (let i = 0; i < n; i++) {
    length = length * 256 + b[2 + i]!;
    if (length > MAX_LENGTH) return 'bad';
  }
  return { tag, length, size: 2 + n };
}

/**
 * What a mail program and a signature tool show of a .p7m attachment, as bytes for inspectors of their
 * own, read out of the signature's DER (or of the DER in base64 text or PEM, as some signing tools save
 * it). Both readings are given, since a file can be written to pass as either:
 * - `message`: the content as a mail program shows it (Thunderbird, Outlook read opaque-signed content as
 *   MIME): a header block and what follows, or, when it starts with no header, one text body;
 * - `file`: when the part's name without ".p7m" has an extension of its own ("fattura.xml.p7m"), the file
 *   a signature tool extracts under that name, given behind a header that names it.
 */
export class SignedContent {
  readonly reader = new SignedDataReader();
  /** the part's first bytes, until how it is written (DER, base64 text) is known */
  private lead: Buffer[] = [];
  private leadLength = 0;
  private encoding: 'der' | 'base64' | 'unknown' | undefined;
  private base64 = '';
  private base64Ended = false;
  /** the content's first line, until it says whether a header block starts it */
  private first: Buffer[] = [];
  private firstLength = 0;
  private messageStarted = false;
  private fileStarted = false;
  private readonly inner: string;
  /** neither DER nor base64 of it: no signature a mail program or a signature tool would open */
  unrecognised = false;

  constructor(fileName: string) {
    this.inner = innerName(fileName);
  }

  /** The signed content could not be read whole: what is shown of it is not known. */
  get unreadable(): boolean {
    return this.unrecognised || (this.reader.malformed && (this.reader.signed || this.reader.started));
  }

  /** The part's decoded bytes in; what to give each reading out. */
  push(data: Buffer): Readings {
    if (this.encoding === undefined) {
      this.lead.push(Buffer.from(data));
      this.leadLength += data.length;
      if (this.leadLength < SNIFF_BYTES) return NONE;
      return this.route(this.afterLead());
    }
    return this.route(this.decode(data));
  }

  end(): Readings {
    const out: Readings = { message: [], file: [] };
    const add = (r: Readings) => {
      out.message.push(...r.message);
      out.file.push(...r.file);
    };
    if (this.encoding === undefined) add(this.route(this.afterLead()));
    if (this.encoding === 'base64') add(this.route(this.flushBase64()));
    if (this.encoding !== 'unknown') this.reader.end();
    if (!this.messageStarted && this.firstLength) add(this.startMessage());
    return out;
  }

  /** The first bytes are in: DER, base64 text, or PEM (text before its armour is skipped, as OpenSSL does). */
  private afterLead(): Buffer[] {
    const lead = Buffer.concat(this.lead);
    this.lead = [];
    if (lead.length === 0) {
      this.encoding = 'der';
      return [];
    }
    if (lead[0] === 0x30) {
      this.encoding = 'der';
      return this.reader.push(lead);
    }
    const text = lead.toString('latin1');
    const armour = /-----BEGIN [A-Z0-9 ]+-----[^\n]*\n/.exec(text);
    if (armour) {
      this.encoding = 'base64';
      return this.decode(lead.subarray(armour.index + armour[0].length));
    }
    if (/^\s*M[A-Za-z0-9+/=\s]*$/.test(text.slice(0, SNIFF_BYTES))) {
      this.encoding = 'base64';
      return this.decode(lead);
    }
    this.encoding = 'unknown';
    this.unrecognised = true;
    return [];
  }

  private decode(data: Buffer): Buffer[] {
    if (this.encoding === 'der') return this.reader.push(data);
    if (this.encoding !== 'base64' || this.base64Ended) return [];
    let text = this.base64 + data.toString('latin1');
    // The armour's END line ends the data.
    const end = text.indexOf('-');
    if (end >= 0) {
      text = text.slice(0, end);
      this.base64Ended = true;
    }
    const clean = text.replace(/[^A-Za-z0-9+/=]/g, '');
    const whole = this.base64Ended ? clean.length : clean.length - (clean.length % 4);
    this.base64 = clean.slice(whole);
    return whole ? this.reader.push(Buffer.from(clean.slice(0, whole), 'base64')) : [];
  }

  private flushBase64(): Buffer[] {
    const rest = this.base64;
    this.base64 = '';
    return rest ? this.reader.push(Buffer.from(rest, 'base64')) : [];
  }

  /** Signed content out of the reader, to both readings. */
  private route(content: Buffer[]): Readings {
    if (content.length === 0) return NONE;
    const file: Buffer[] = [];
    if (/\.[^./\\]+$/.test(this.inner)) {
      if (!this.fileStarted) {
        this.fileStarted = true;
        const name = this.inner.replace(/["\\\r\n]/g, '_');
        file.push(Buffer.from(`Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="${name}"\r\nContent-Transfer-Encoding: binary\r\n\r\n`));
      }
      file.push(...content);
    }
    if (this.messageStarted) return { message: content, file };
    for (const c of content) {
      this.first.push(Buffer.from(c));
      this.firstLength += c.length;
    }
    const head = Buffer.concat(this.first);
    if (head.indexOf(0x0a) < 0 && head.length < FIRST_LINE_BYTES) return { message: [], file };
    return { message: this.startMessage().message, file };
  }

  /** The message reading starts: as it is when a header line opens it, else as one text body. */
  private startMessage(): Readings {
    this.messageStarted = true;
    const head = Buffer.concat(this.first);
    this.first = [];
    const line = head.toString('latin1', 0, Math.min(head.length, FIRST_LINE_BYTES)).split(/\r?\n/)[0]!;
    if (/^[!-9;-~]+:/.test(line)) return { message: [head], file: [] };
    return { message: [Buffer.from('Content-Type: text/plain\r\n\r\n'), head], file: [] };
  }
}

export interface Readings {
  message: Buffer[];
  file: Buffer[];
}

const NONE: Readings = { message: [], file: [] };
/** Bytes looked at to tell DER from base64 text (and to find a PEM armour behind text). */
const SNIFF_BYTES = 4096;
/** A header line longer than this is no header line (RFC 5322: 998). */
const FIRST_LINE_BYTES = 1000;

/** The name a signature tool gives the signed file: the part's without ".p7m" ("fattura.xml.p7m"). */
export function innerName(fileName: string): string {
  const name = fileName.replace(/\.p7m$/i, '');
  return name && name !== fileName ? name : 'smime';
}
