// Fingerprints a message's content for bulk detection (contract art. 4.6): copies of one campaign, each
// personalised (name, links, codes, amounts, dates), get fingerprints that share LSH band keys, while
// unrelated messages share none. The bulk counter counts distinct recipients per band key; this module is
// pure and stateless. See docs/BULK.md for the method, the parameters and the measured accuracy.
//
// Outline: the text the sender wrote (quoted replies and the signature set apart) is normalised so that
// personalisation disappears (placeholders for links, addresses, numbers, codes, the greeting's name), cut
// into overlapping 3-word shingles, and summarised by a 200-value MinHash signature computed with one
// hash per shingle (one-permutation hashing, densified). The signature is split into 20 bands of 10 rows;
// two messages share a band when all 10 rows agree, which happens with probability 1 - (1 - J^10)^20 for
// shingle sets of Jaccard similarity J: ~0 below J = 0.5, 0.5 at J = 0.74, above 0.99 from J = 0.85.
// Attachments add one key each (their SHA-256), so the same file sent to many people counts whatever text
// goes with it.

import type { AttachmentFacts, MessageFacts } from '../policy/facts.js';

export interface BulkFingerprint {
  /** short stable id for logs: the hash of the first band (or the first attachment's SHA-256 prefix) */
  id: string;
  /** LSH band keys; messages sharing one are "the same content" */
  bands: string[];
  /** how it was made: 'text' | 'attachments' | 'text+attachments' */
  basis: string;
}

export interface FingerprintOptions {
  /** below this much normalised text (characters), fingerprint on attachments only */
  minTextLength: number;
}

/** A good value for minTextLength: a two-line note; below it, texts are too short to tell apart. */
export const DEFAULT_MIN_TEXT_LENGTH = 80;

type Content = Pick<MessageFacts, 'subject' | 'body' | 'attachments'>;

// --- parameters (changing any of them changes every key: bump VERSION so old counts are not mixed in) ---

const VERSION = 1;
/** Words per shingle. 2 makes unrelated texts of one language share common pairs ("de la", "of the"); 4
 * makes each personalised word that escaped normalisation cost 4 shingles instead of 3. */
const SHINGLE = 3;
/** Bands x rows = the signature's length. 10 rows make the match curve steep enough that mail built from
 * one template with different real content (order confirmations, newsletters: J around 0.3-0.6) stays
 * apart from campaign copies (J above 0.85 once normalised); 20 bands bring copies at J = 0.85 to a 99 %
 * match rate. */
const BANDS = 20;
const ROWS = 10;
const K = BANDS * ROWS;
/** Work bound: text looked at (characters) and words shingled. A campaign's copies share their start. */
const MAX_CHARS = 32_768;
const MAX_WORDS = 2_000;
/** Attachment keys per message (each is a counter in Redis). */
const MAX_ATTACHMENT_BANDS = 8;
/** Images below this are decoration (a signature logo, social icons) that one sender puts in every
 * message; keying them would count all of the sender's mail as one content. Image spam is larger. */
const SMALL_IMAGE_BYTES = 10_240;
/** Attachments below this are empty or nearly (a stray newline); a small file can still be a payload
 * (a shortcut, an HTML redirect), so the bar is low. */
const MIN_ATTACHMENT_BYTES = 64;
/** A signature after "-- " is at most this many lines (more is not a signature, and is kept as text). */
const SIGNATURE_MAX_LINES = 8;

// --- public API ---------------------------------------------------------------------------------------

/**
 * The fingerprint of a message, or undefined when there is nothing to fingerprint: less than
 * minTextLength of normalised text (the sender's own, or else the quoted text) and no attachment that
 * counts.
 */
export function fingerprint(message: Content, opts: FingerprintOptions): BulkFingerprint | undefined {
  const bands: string[] = [];
  const text = textToSign(message, opts.minTextLength);
  if (text) {
    const sig = signature(text.shingles);
    for (let b = 0; b < BANDS; b++) bands.push(`${text.prefix}${b}:${bandHash(sig, b)}`);
  }
  const textBands = bands.length;
  const seen = new Set<string>();
  for (const a of message.attachments) {
    if (seen.size >= MAX_ATTACHMENT_BANDS) break;
    if (!a.sha256 || !countsAsContent(a)) continue;
    const key = `a:${a.sha256.slice(0, 16)}`;
    if (!seen.has(key)) {
      seen.add(key);
      bands.push(key);
    }
  }
  if (bands.length === 0) return undefined;
  const basis = textBands === 0 ? 'attachments' : seen.size === 0 ? 'text' : 'text+attachments';
  const first = bands[0]!;
  return { id: first.slice(first.indexOf(':') + 1), bands, basis };
}

/**
 * The estimated Jaccard similarity of two messages' shingle sets (the fraction of signature rows that
 * agree), from the text fingerprint() would use; 0 when either has no text or they were taken from
 * different kinds of text (the sender's own versus quoted).
 */
export function similarity(a: Content, b: Content, minTextLength = 1): number {
  const ta = textToSign(a, minTextLength);
  const tb = textToSign(b, minTextLength);
  if (!ta || !tb || ta.prefix !== tb.prefix) return 0;
  const sa = signature(ta.shingles);
  const sb = signature(tb.shingles);
  let same = 0;
  for (let i = 0; i < K; i++) if (sa[i] === sb[i]) same++;
  return same / K;
}

/** The words the fingerprint is made of, with placeholders for what personalisation changes. */
export function normalise(text: string): string {
  return words(text, MAX_WORDS).join(' ');
}

// --- which text --------------------------------------------------------------------------------------

interface SignedText {
  /** 't' for the sender's own text, 'q' for quoted text: the two never share keys */
  prefix: string;
  shingles: Uint32Array;
}

/**
 * The shingles to sign: of the sender's own text with the subject, or, when that is too short but the
 * message quotes a long one, of the quoted text under another prefix. A short reply ("ok, thanks")
 * carrying a long quote is then not fingerprinted as the quote's author's content (it would match the
 * original), but a campaign cannot hide from the count by quoting its text either.
 */
function textToSign(message: Content, minTextLength: number): SignedText | undefined {
  const body = message.body.length > MAX_CHARS ? message.body.slice(0, MAX_CHARS) : message.body;
  const { own, quoted } = splitBody(body);
  const subject = words(stripReplyPrefix(message.subject), 64);
  const ownWords = words(own, MAX_WORDS);
  if (ownWords.length > 0 && textLength(ownWords) >= minTextLength) return { prefix: 't', shingles: shingles(subject, ownWords) };
  if (quoted === '') return undefined;
  const quotedWords = words(quoted, MAX_WORDS);
  if (quotedWords.length > 0 && textLength(quotedWords) >= minTextLength) return { prefix: 'q', shingles: shingles(subject, quotedWords) };
  return undefined;
}

function textLength(list: string[]): number {
  let n = list.length - 1;
  for (const w of list) n += w.length;
  return n;
}

const REPLY_PREFIX = /^(?:\s*(?:re|fwd?|tr|aw|wg|sv|antw|réf)\s*(?:\[\d+\])?\s*:)+/i;
const stripReplyPrefix = (subject: string) => subject.replace(REPLY_PREFIX, '');

// Where quoted text starts: an attribution line ("On <date>, <name> wrote:", "Le <date>, <nom> a écrit :"),
// Outlook's separator or header block. Bounded quantifiers: the line is matched whole, without backtracking
// blow-up on a long line.
const ATTRIBUTION = /^(?:on|le|am|el|il)\b.{0,300}(?:wrote|a écrit|schrieb|escribió|ha scritto)\s?:?$/i;
const ORIGINAL = /^-{2,}\s?(?:original message|message d'origine|forwarded message|message transféré|ursprüngliche nachricht|weitergeleitete nachricht)\s?-{2,}$/i;
const OUTLOOK_RULE = /^_{20,}$/;
const HEADER_FROM = /^(?:from|de|von)\s?:\s/i;
const HEADER_SENT = /^(?:sent|envoyé|date|gesendet)\s?:\s/i;

/**
 * Separates the sender's own text from quoted text (replies, forwards) and drops the signature. Quoted
 * text is what a reader's client shows as such: "> " lines, and everything after an attribution line that
 * is not followed by "> " lines (an HTML quote converted to text) or after Outlook's separator.
 */
function splitBody(body: string): { own: string; quoted: string } {
  const lines = body.split('\n');
  const own: string[] = [];
  const quoted: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    const c = line.charCodeAt(0);
    if (c === 0x3e /* > */) {
      quoted.push(line.replace(/^(?:>\s?)+/, ''));
      continue;
    }
    if (line.endsWith(':') && line.length <= 400 && ATTRIBUTION.test(line)) {
      // "> " lines follow in a text part; in a part converted from HTML the quote follows unmarked.
      let next = i + 1;
      while (next < lines.length && lines[next]!.trim() === '') next++;
      if (next < lines.length && lines[next]!.trimStart().startsWith('>')) continue;
      quoted.push(...lines.slice(next));
      break;
    }
    if (c === 0x2d /* - */ || c === 0x5f /* _ */) {
      if (line === '--') {
        // The signature: up to the next blank line, a few short lines at most.
        let end = i + 1;
        while (end < lines.length && end - i <= SIGNATURE_MAX_LINES && lines[end]!.trim() !== '' && lines[end]!.length <= 120) end++;
        if (end - i <= SIGNATURE_MAX_LINES) {
          i = end - 1;
          continue;
        }
      } else if (ORIGINAL.test(line) || OUTLOOK_RULE.test(line)) {
        quoted.push(...lines.slice(i + 1));
        break;
      }
    }
    if (HEADER_FROM.test(line) && lines.slice(i + 1, i + 4).some((l) => HEADER_SENT.test(l.trim()))) {
      quoted.push(...lines.slice(i));
      break;
    }
    own.push(line);
  }
  return { own: own.join('\n'), quoted: quoted.join('\n') };
}

// --- normalisation --------------------------------------------------------------------------------

// A greeting at the start of a line, and its addressee: "Bonjour Marie,", "Dear John Smith,", "Hi Anna!",
// "Madame, Monsieur,". The whole line when it is short; else up to the first , ! or : within four words.
const GREETING = /^(?:bonjour|bonsoir|salut|coucou|hello|hi|hey|dear|hallo|hola|ciao|greetings|good (?:morning|afternoon|evening)|chère|chères|cher|chers|madame|monsieur|mesdames|messieurs|mme|mlle|mr|mrs|ms)(?![\p{L}\p{N}])/iu;
const GREETING_PREFIX = /^\S+(?:\s\S+){0,4}?\s?[,!:](?=\s|$)/u;
const GREETING_LINE_MAX = 48;

// One token: a link, an address, or a word (letters and digits, with inner ' - _ . , / : between them, so
// "l'offre", "e-mail", "12,50", "14:30", "03/03/2025" and "INV-2025-00481" are one token each).
const TOKEN =
  /(?:https?:\/\/|www\.)[^\s<>"]+|[\p{L}\p{N}._%+-]+@[\p{L}\p{N}-]+(?:\.[\p{L}\p{N}-]+)+|[\p{L}\p{N}\p{M}]+(?:['_\-.,/:][\p{L}\p{N}\p{M}]+)*/gu;
const DIGIT = /\p{Nd}/u;
const HEX_ONLY = /^[a-f]{12,}$/;
// Dates are personalisation too ("jusqu'au 30 mars" versus "jusqu'au 6 avril"): month and day names
// become the number placeholder, and "le #num #num #num" collapses to "le #num".
const CALENDAR = new Set(
  (
    'january february march april may june july august september october november december ' +
    'janvier février mars avril mai juin juillet août septembre octobre novembre décembre ' +
    'monday tuesday wednesday thursday friday saturday sunday lundi mardi mercredi jeudi vendredi samedi dimanche'
  ).split(' '),
);
// Invisible characters that split a word for a pattern but not for a reader.
const INVISIBLE = /[\u00ad\u200b-\u200f\u2060\ufeff]/g;
const NON_ASCII = /[^\x00-\x7f]/;

export const PLACEHOLDER = { url: '#url', mail: '#mail', num: '#num', name: '#name' } as const;

/** The normalised words of `text`, at most `max`. */
function words(text: string, max: number): string[] {
  if (text === '') return [];
  if (NON_ASCII.test(text)) text = text.normalize('NFKC').replace(INVISIBLE, '').replaceAll('\u2019', "'");
  const out: string[] = [];
  let start = 0;
  while (start <= text.length && out.length < max) {
    let end = text.indexOf('\n', start);
    if (end === -1) end = text.length;
    let line = text.slice(start, end).trim();
    start = end + 1;
    if (line === '') continue;
    const g = GREETING.exec(line);
    if (g) {
      if (line.length <= GREETING_LINE_MAX && !/[.?]\s/.test(line)) {
        push(out, PLACEHOLDER.name);
        continue;
      }
      const prefix = GREETING_PREFIX.exec(line);
      if (prefix) {
        push(out, PLACEHOLDER.name);
        line = line.slice(prefix[0].length);
      }
    }
    for (const m of line.matchAll(TOKEN)) {
      push(out, classify(m[0]));
      if (out.length >= max) break;
    }
  }
  return out;
}

/** Appends a word; a run of number placeholders is one ("1 299,00 €", "06 12 34 56 78", "3 mars 2025"). */
function push(out: string[], word: string): void {
  if (word === PLACEHOLDER.num && out[out.length - 1] === PLACEHOLDER.num) return;
  out.push(word);
}

function classify(token: string): string {
  const c = token.charCodeAt(0);
  if ((c === 0x68 || c === 0x48 || c === 0x77 || c === 0x57) && /^(?:https?:\/\/|www\.)/i.test(token)) return PLACEHOLDER.url;
  if (token.includes('@')) return PLACEHOLDER.mail;
  // Anything with a digit is a number, an amount, a date, a time, a reference, a promo code or a token.
  if (DIGIT.test(token)) return PLACEHOLDER.num;
  if (token.length >= 10 && randomCase(token)) return PLACEHOLDER.num;
  const lower = token.toLowerCase();
  if (CALENDAR.has(lower) || HEX_ONLY.test(lower) || lower.length > 40) return PLACEHOLDER.num;
  return lower;
}

/** Mixed case inside a word ("aGVsbG9Xb3Js"): a base64 or random token, not a word ("iPhone", "McDonald"). */
function randomCase(token: string): boolean {
  let upper = 0;
  let lower = 0;
  for (let i = 1; i < token.length; i++) {
    const ch = token[i]!;
    if (ch !== ch.toLowerCase()) upper++;
    else if (ch !== ch.toUpperCase()) lower++;
  }
  return upper >= 2 && lower >= 2;
}

// --- shingles and MinHash --------------------------------------------------------------------------

/** 32-bit FNV-1a of a word, then a finaliser so that the bits are well mixed. */
function wordHash(word: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < word.length; i++) h = Math.imul(h ^ word.charCodeAt(i), 0x01000193);
  return fmix(h);
}

/** MurmurHash3's 32-bit finaliser. */
function fmix(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/**
 * The hashes of the shingles of the subject and of the body, each on its own (no shingle spans both). A
 * text shorter than a shingle is one shingle.
 */
function shingles(subject: string[], body: string[]): Uint32Array {
  const n = Math.max(0, subject.length - SHINGLE + 1) + Math.max(0, body.length - SHINGLE + 1) + 2;
  const out = new Uint32Array(n);
  let count = 0;
  for (const list of [subject, body]) {
    if (list.length === 0) continue;
    const hashes = list.map(wordHash);
    const last = Math.max(1, hashes.length - SHINGLE + 1);
    for (let i = 0; i < last; i++) {
      let h = 0x9747b28c ^ VERSION;
      for (let j = i; j < i + SHINGLE && j < hashes.length; j++) h = (Math.imul((h << 13) | (h >>> 19), 5) + 0xe6546b64 + hashes[j]!) | 0;
      out[count++] = fmix(h);
    }
  }
  return out.subarray(0, count);
}

/**
 * The MinHash signature by one-permutation hashing: the hash range is split into K bins and each bin keeps
 * the smallest hash of the shingles that fall in it. For two sets, a bin agrees with probability J, as with
 * K independent permutations, but it costs one hash per shingle instead of K (a 4 KB message has ~700
 * shingles: 700 hashes instead of 140,000). Empty bins (short texts) are filled by "optimal densification"
 * (Shrivastava, ICML 2017): bin j takes the value of the first non-empty bin in a pseudo-random probe
 * sequence seeded by j, the same sequence in every message, so the filled rows still agree with
 * probability J.
 */
function signature(shingleHashes: Uint32Array): Uint32Array {
  const sig = new Uint32Array(K).fill(0xffffffff);
  const filled = new Uint8Array(K);
  for (let i = 0; i < shingleHashes.length; i++) {
    const h = shingleHashes[i]!;
    // The bin from the high 16 bits (multiply-shift: no modulo bias worth speaking of), the value is h.
    const bin = ((h >>> 16) * K) >>> 16;
    filled[bin] = 1;
    if (h < sig[bin]!) sig[bin] = h;
  }
  for (let j = 0; j < K; j++) {
    if (filled[j]) continue;
    let value = -1;
    for (let attempt = 1; attempt <= 8 * K; attempt++) {
      const probe = ((fmix(Math.imul(j + 1, 0x9e3779b1) ^ Math.imul(attempt, 0x85ebca77)) >>> 16) * K) >>> 16;
      if (filled[probe]) {
        value = sig[probe]!;
        break;
      }
    }
    // Unreachable in practice (there is at least one filled bin): take the next filled bin in order.
    if (value === -1) for (let k = 1; k < K && value === -1; k++) if (filled[(j + k) % K]) value = sig[(j + k) % K]!;
    sig[j] = value >>> 0;
  }
  return sig;
}

/** 64 bits of hash of band b's rows, in hex: two 32-bit hashes with different seeds. */
function bandHash(sig: Uint32Array, b: number): string {
  let h1 = Math.imul(b + 1, 0x27d4eb2d) ^ VERSION;
  let h2 = Math.imul(b + 1, 0x165667b1) ^ 0x5bd1e995;
  for (let r = b * ROWS; r < (b + 1) * ROWS; r++) {
    const v = sig[r]!;
    h1 = (fmix(h1 ^ v) + 0x6b43a9b5) | 0;
    h2 = fmix(Math.imul(h2, 0x01000193) ^ v) ^ 0x7f4a7c15;
  }
  return hex8(fmix(h1)) + hex8(fmix(h2));
}

const hex8 = (n: number) => (n >>> 0).toString(16).padStart(8, '0');

// --- attachments -------------------------------------------------------------------------------------

const IMAGE_TYPES = new Set(['png', 'jpeg', 'gif']);

/** Whether an attachment is content (a document, an archive, a real picture) rather than decoration. */
function countsAsContent(a: AttachmentFacts): boolean {
  if (a.size < MIN_ATTACHMENT_BYTES) return false;
  // The sender's vCard, which some clients attach to every message: the sender, not the content.
  if (a.extension === 'vcf' || a.extension === 'vcard' || /^text\/(?:x-)?vcard$/i.test(a.declaredType)) return false;
  const image = IMAGE_TYPES.has(a.detectedType) || a.declaredType.toLowerCase().startsWith('image/');
  if (image && a.size < SMALL_IMAGE_BYTES) return false;
  return true;
}
