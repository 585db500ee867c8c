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
 * What a mail program or a signature tool shows of a .p7m attachment, as bytes for an inspector of its
 * own: the signed content read out of the DER (or of the DER in base64 text, as some signing tools save
 * it). A MIME entity (an S/MIME message) is given as it is, to be read as a message; anything else (a
 * signed PDF or XML: an Italian e-invoice, a CAdES file) is a file, given behind a header that names it
 * as the signature tool does, the part's name without ".p7m".
 */
export class SignedContent {
  readonly reader = new SignedDataReader();
  /** the part's first bytes, until how it is written (DER, base64) is known */
  private lead: Buffer[] = [];
  private leadLength = 0;
  private encoding: 'der' | 'base64' | undefined;
  private base64 = '';
  private base64Ended = false;
  /** the content's first bytes, until whether it is a MIME entity is known */
  private head: Buffer[] = [];
  private headLength = 0;
  private kind: 'mime' | 'file' | undefined;

  constructor(private readonly fileName: string) {}

  /** The part's decoded bytes in; what to give the inspector out. */
  push(data: Buffer): Buffer[] {
    if (this.encoding === undefined) {
      this.lead.push(Buffer.from(data));
      this.leadLength += data.length;
      if (this.leadLength < SNIFF_BYTES) return [];
      return this.afterLead();
    }
    return this.route(this.decode(data));
  }

  end(): Buffer[] {
    const out = this.encoding === undefined ? this.afterLead() : [];
    if (this.encoding === 'base64') out.push(...this.route(this.flushBase64()));
    this.reader.end();
    if (this.kind === undefined) out.push(...this.decide(true));
    return out;
  }

  /** The first bytes are in: DER, or base64 text (optionally PEM armoured). */
  private afterLead(): Buffer[] {
    const lead = Buffer.concat(this.lead);
    this.lead = [];
    const text = lead.toString('latin1', 0, SNIFF_BYTES);
    this.encoding = /^\s*(-----BEGIN [A-Z0-9 ]+-----\s*)?M[A-Za-z0-9+/=\s]*$/.test(text) && lead[0] !== 0x30 ? 'base64' : 'der';
    if (this.encoding === 'base64') this.base64 = '';
    return this.route(this.decode(lead));
  }

  private decode(data: Buffer): Buffer[] {
    if (this.encoding === 'der') return this.reader.push(data);
    if (this.base64Ended) return [];
    let text = this.base64 + data.toString('latin1');
    // PEM: the armour's first line goes, its END line ends the data.
    text = text.replace(/^\s*-----BEGIN [A-Z0-9 ]+-----/, '');
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

  /** Signed content out of the reader: held until its kind is known, then given on. */
  private route(content: Buffer[]): Buffer[] {
    if (this.kind === 'mime') return content;
    if (this.kind === 'file') return content;
    for (const c of content) {
      this.head.push(Buffer.from(c));
      this.headLength += c.length;
    }
    return this.headLength >= MIME_SNIFF_BYTES ? this.decide(false) : this.decideIfHeaderEnded();
  }

  private decideIfHeaderEnded(): Buffer[] {
    const head = Buffer.concat(this.head);
    return /\r?\n\r?\n/.test(head.toString('latin1')) ? this.decide(false) : [];
  }

  private decide(atEnd: boolean): Buffer[] {
    const head = Buffer.concat(this.head);
    this.head = [];
    if (!atEnd && head.length === 0) return [];
    this.kind = isMimeEntity(head) ? 'mime' : 'file';
    if (this.kind === 'mime') return head.length ? [head] : [];
    // A signature with no content in it (detached): no file.
    if (head.length === 0) return [];
    const name = innerName(this.fileName).replace(/["\\\r\n]/g, '_');
    const header = Buffer.from(`Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="${name}"\r\nContent-Transfer-Encoding: binary\r\n\r\n`);
    return [header, ...(head.length ? [head] : [])];
  }
}

/** Bytes looked at to tell DER from base64 text. */
const SNIFF_BYTES = 64;
/** Content looked at for a header block before it is taken for a file. */
const MIME_SNIFF_BYTES = 16_384;

/**
 * Whether signed content is a MIME entity: header lines up to an empty line, one of them Content-Type or
 * MIME-Version. A PDF or XML file starts otherwise.
 */
function isMimeEntity(head: Buffer): boolean {
  const text = head.toString('latin1');
  const blank = text.search(/\r?\n\r?\n/);
  if (blank <= 0) return false;
  const lines = text.slice(0, blank).split(/\r?\n/);
  if (!lines.every((line, i) => /^[!-9;-~]+:/.test(line) || (i > 0 && /^[ \t]/.test(line)))) return false;
  return lines.some((line) => /^(content-type|mime-version):/i.test(line));
}

/** The name a signature tool gives the signed file: the part's without ".p7m" ("fattura.xml.p7m"). */
export function innerName(fileName: string): string {
  const name = fileName.replace(/\.p7m$/i, '');
  return name && name !== fileName ? name : 'smime';
}
