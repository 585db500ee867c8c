// Fingerprints a message's content for bulk detection (contract art. 4.6): copies of one campaign, each
// personalised (names, links, codes, amounts, dates), get fingerprints that share LSH band keys, while
// unrelated messages share none. The bulk counter counts distinct recipients per band key; this module is
// pure and stateless. docs/BULK.md explains the method and the choice of parameters, with measurements.
//
// Outline: the text the sender wrote (quoted replies and the signature set apart) is normalised so that
// personalisation disappears (links dropped; placeholders for addresses, numbers, dates, codes and the
// greeting's name), cut into overlapping 3-word shingles, and summarised by a 384-value MinHash signature
// computed with one hash per shingle (one-permutation hashing, densified). The signature is split into 48
// bands of 8 rows; two messages share a band key when all 8 rows of that band agree, which happens with
// probability 1 - (1 - J^8)^48 for shingle sets of Jaccard similarity J: 0.003 at J = 0.3, 0.17 at 0.5,
// 0.56 at 0.6, 0.94 at 0.7, 0.994 at 0.75, 0.9999 at 0.8. Attachments add one key each (their SHA-256),
// so the same file sent to many people counts whatever text goes with it.

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

/** A good minTextLength: about two short lines. Below it, texts are too short to tell apart reliably. */
export const DEFAULT_MIN_TEXT_LENGTH = 80;

type Content = Pick<MessageFacts, 'subject' | 'body' | 'attachments' | 'shownBody'>;

// --- parameters (changing any of them changes every key: bump VERSION so old counts are not mixed in) ---

const VERSION = 1;
/** Words per shingle. 2 makes unrelated texts of one language share common pairs ("de la", "of the");
 * 4 makes each personalised word that escaped normalisation cost 4 shingles instead of 3. */
const SHINGLE = 3;
/** Bands x rows = the signature's length. 8 rows put the steep part of the match curve between J = 0.5 and
 * 0.75: copies of a campaign whose sender varies the subject, a P.S. line or hidden preheader text on top
 * of the personalisation (J 0.7-0.9 once normalised) match; mail from one template with different real
 * content (order confirmations, J 0.4-0.65) matches less often, and unrelated mail (J < 0.3) practically
 * never. 48 bands rather than 32 because copies fall into clusters (which P.S., which subject) and whether
 * a band survives between two clusters is decided once for all their pairs: with 32 bands, some hash seeds
 * lost a whole cluster pair (down to 97.7 % of pairs on the corpus), with 48 none went below 99.4 %. Each
 * band is a key the counter updates, so more bands cost Redis work. */
const BANDS = 48;
const ROWS = 8;
const K = BANDS * ROWS;
/** Work bound: characters of body looked at, and words shingled. A campaign's copies share their start. */
const MAX_CHARS = 32_768;
const MAX_WORDS = 2_000;
const MAX_SUBJECT_WORDS = 32;
/** Attachment keys per message (each is a key the counter updates). */
const MAX_ATTACHMENT_BANDS = 8;
/** Images below this are decoration (a signature logo, social icons) that one sender puts in every
 * message; keying them would count all of the sender's mail as one content. Image spam is larger. */
const SMALL_IMAGE_BYTES = 10_240;
/** Attachments below this are empty or nearly; a small file can still be a payload (a shortcut, an HTML
 * redirect), so the bar is low. */
const MIN_ATTACHMENT_BYTES = 64;
/** A signature after "-- " is at most this many lines (more is not a signature, and is kept as text). */
const SIGNATURE_MAX_LINES = 8;
/** A quote is fingerprinted beside the sender's own text when it is this many times longer. */
const QUOTE_SHARE = 4;

// --- public API ---------------------------------------------------------------------------------------

/**
 * The fingerprint of a message, or undefined when there is nothing to fingerprint: less than
 * minTextLength of normalised text (the sender's own, or else the quoted text) and no attachment that
 * counts.
 */
export function fingerprint(message: Content, opts: FingerprintOptions): BulkFingerprint | undefined {
  const bands: string[] = [];
  for (const text of textsToSign(message, opts.minTextLength)) for (let b = 0; b < BANDS; b++) bands.push(`${text.prefix}${b}:${bandHash(text.sig, b)}`);
  const textBands = bands.length;
  for (const a of message.attachments) {
    if (bands.length - textBands >= MAX_ATTACHMENT_BANDS) break;
    if (!a.sha256 || !countsAsContent(a)) continue;
    const key = `a:${a.sha256.slice(0, 16)}`;
    if (!bands.includes(key, textBands)) bands.push(key);
  }
  if (bands.length === 0) return undefined;
  const basis = textBands === 0 ? 'attachments' : bands.length === textBands ? 'text' : 'text+attachments';
  const first = bands[0]!;
  return { id: first.slice(first.indexOf(':') + 1), bands, basis };
}

/**
 * The estimated Jaccard similarity of two messages' shingle sets (the fraction of signature rows that
 * agree), from the text fingerprint() would use with this minTextLength (default: any text at all); 0 when
 * either has no such text or the two were taken from different kinds of text (own versus quoted).
 */
export function similarity(a: Content, b: Content, minTextLength = 1): number {
  const ta = textsToSign(a, minTextLength)[0];
  const tb = textsToSign(b, minTextLength)[0];
  if (!ta || !tb || ta.prefix !== tb.prefix) return 0;
  let same = 0;
  for (let i = 0; i < K; i++) if (ta.sig[i] === tb.sig[i]) same++;
  return same / K;
}

/** The words a fingerprint is made of, space-separated, with placeholders for what personalisation changes. */
export function normalise(text: string): string {
  const prepared = prepare(text);
  const spans = new Int32Array(2 * MAX_WORDS);
  const { hashes, count } = scan(prepared, MAX_WORDS, spans);
  const out: string[] = [];
  for (let w = 0; w < count; w++) {
    const h = hashes[w];
    if (h === NUM) out.push(PLACEHOLDER.num);
    else if (h === MAIL) out.push(PLACEHOLDER.mail);
    else if (h === NAME) out.push(PLACEHOLDER.name);
    else out.push(prepared.slice(spans[2 * w], spans[2 * w + 1]).replace(INVISIBLE_ALL, '').replaceAll('\u2019', "'").toLowerCase());
  }
  return out.join(' ');
}

// --- which text --------------------------------------------------------------------------------------

/**
 * The signatures to band: of the sender's own text with the subject ('t'), and of the quoted text with the
 * subject under another prefix ('q'), each when long enough, the quote only when it is most of the
 * message. A short reply ("ok, thanks") above a long quote is then not counted as the quoted author's
 * content (its 't' keys would match the original's), and a campaign cannot escape the count by writing
 * itself as a quote, under a few lines of its own or none.
 */
function textsToSign(message: Content, minTextLength: number): { prefix: string; sig: Uint32Array }[] {
  // What the reader is shown: an alternative no one reads must not set the copies apart.
  const text = message.shownBody ?? message.body;
  const body = text.length > MAX_CHARS ? text.slice(0, MAX_CHARS) : text;
  const { own, quoted } = splitBody(body);
  const signed: { prefix: string; words: Words }[] = [];
  const ownWords = scan(prepare(own), MAX_WORDS);
  if (ownWords.count > 0 && ownWords.length >= minTextLength) signed.push({ prefix: 't', words: ownWords });
  // The quote too, when it is most of the message: a few words above a long "quote" are how a campaign
  // would hide in one. A message of its own above a disclaimer or a thread is its own text only, so that a
  // person's every message does not add up through the footer they all carry.
  const quotedWords = quoted === '' ? undefined : scan(prepare(quoted), MAX_WORDS);
  if (quotedWords && quotedWords.count > 0 && quotedWords.length >= minTextLength && (signed.length === 0 || ownWords.length * QUOTE_SHARE < quotedWords.length)) {
    signed.push({ prefix: 'q', words: quotedWords });
  }
  if (signed.length === 0) return [];
  // A subject is a line (RFC 5322: 998 characters); one unfolded over a header's whole room is cut there.
  const subject = scan(prepare(message.subject.slice(0, MAX_SUBJECT_CHARS).replace(REPLY_PREFIX, '').replace(SUBJECT_ADDRESSEE, '#name ')), MAX_SUBJECT_WORDS);
  return signed.map(({ prefix, words }) => ({ prefix, sig: signature(subject, words) }));
}

// "Re:", "Fwd:", "TR:", "AW:", "WG:", "SV:", "Antw:", possibly repeated or counted ("Re[2]:"): a reply's
// subject is its thread's, and a campaign's copies do not carry them.
// One blank run between the word and the colon: two in a row around the optional count ("\s*(\[\d+\])?\s*")
// share the blanks of a long run of them in every way, quadratic when no colon follows.
const REPLY_PREFIX = /^(?:\s*(?:re|fwd?|tr|aw|wg|sv|antw)(?:\s*\[\d+\])?\s*:)+/i;
const MAX_SUBJECT_CHARS = 998;
// A subject that starts by addressing the reader ("Marie, -30 % for you", "John, action required"): the
// name is personalisation, like a greeting's. (The scan reads "#name" as the word "name", which is fine: it
// is the same in every copy.)
const SUBJECT_ADDRESSEE = /^\s*[\p{Lu}][\p{L}'’-]{0,20},\s/u;

// Where quoted text starts: an attribution line ("On <date>, <name> wrote:", "Le <date>, <nom> a écrit :"),
// Outlook's separator or header block. Bounded quantifiers: the line is matched whole, without backtracking
// blow-up on a long line.
const ATTRIBUTION = /^(?:on|le|am|el|il)\b.{0,300}(?:wrote|a écrit|schrieb|escribió|ha scritto)\s?:?$/i;
const ORIGINAL = /^-{2,}\s?(?:original message|message d'origine|forwarded message|message transféré|ursprüngliche nachricht|weitergeleitete nachricht)\s?-{2,}$/i;
const OUTLOOK_RULE = /^_{20,}$/;
const HEADER_FROM = /^(?:from|de|von)\s?:\s/i;
const HEADER_SENT = /^(?:sent|envoyé|date|gesendet)\s?:\s/i;
// Any line that could start a quote or a signature; most messages have none, and skip the line by line work.
const MAY_QUOTE = /^[ \t]*(?:>|--[ \t]*$|-{2,}[ \t]?[a-z]|__|(?:from|de|von)[ \t]?:)|(?:wrote|écrit|schrieb|escribió|scritto)[ \t]?:?[ \t]*$/im;

/**
 * Separates the sender's own text from quoted text (replies, forwards) and drops the signature. Quoted
 * text is what a reader's client shows as such: "> " lines, and everything after an attribution line that
 * is not followed by "> " lines (an HTML quote converted to text) or after Outlook's separator.
 */
function splitBody(body: string): { own: string; quoted: string } {
  if (!MAY_QUOTE.test(body)) return { own: body, quoted: '' };
  const lines = body.split('\n');
  const own: string[] = [];
  const quoted: string[] = [];
  // A mail program writes one signature: a second "--" line starts no other (text under such lines would
  // escape the count, block after block).
  let signed = false;
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
      if (line === '--' && !signed) {
        // The signature: up to the next blank line, a few short lines at most.
        let end = i + 1;
        while (end < lines.length && end - i <= SIGNATURE_MAX_LINES && lines[end]!.trim() !== '' && lines[end]!.length <= 120) end++;
        if (end - i <= SIGNATURE_MAX_LINES) {
          signed = true;
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
// One pass over the text's UTF-16 code units, which hashes each normalised word as it reads it: no regular
// expression or string per word (that was 90 % of the cost). What a word is and what becomes a
// placeholder:
// - a word is a run of letters and digits, with ' ’ - _ . , / : @ inside it when a letter or digit
//   follows, so "l'offre", "e-mail", "12,50", "14:30", "03/03/2025", "INV-2025-00481" and
//   "marie@example.test" are one word each; other characters separate words and are dropped;
// - links (http://, https://, www.) are dropped: a text part shows "Shop now: <link>" where the HTML part
//   of the same copy shows "Shop now", so any token for the link would set the two renderings apart;
// - a word with "@" is #mail; a word with a digit (amount, date, time, reference, promo code, token),
//   a month or day name and a word that looks random (mixed case inside "aGVsbG9Xb3Js", capitals joined
//   by - or _ "PRINTEMPS-XKWRT", five consonants in a row, 12+ hex letters, 40+ characters) is #num, and
//   a run of #num is one ("1 299,00 €", "06 12 34 56 78", "lundi 3 mars 2025");
// - a greeting at the start of a line with its addressee ("Bonjour Marie,", "Dear John Smith,", "Hi
//   Anna!", "Madame, Monsieur,") is #name: the whole line when it is short, else up to the first , ! or :
//   within six words;
// - letters are lower-cased; the text is NFKC-normalised first (full-width letters, ligatures, compatibility
//   digits), and invisible characters (soft hyphen, zero-width space/joiners, BOM) are skipped.

export const PLACEHOLDER = { mail: '#mail', num: '#num', name: '#name' } as const;

interface Words {
  /** hash of each word */
  hashes: Uint32Array;
  count: number;
  /** length of the normalised text (words joined by single spaces) */
  length: number;
}

// NFKC costs about as much as checking whether it would change anything (V8 returns early on normalised
// text), so only pure ASCII skips it.
const prepare = (text: string) => (NON_ASCII.test(text) ? latinLookAlikes(withoutTagCharacters(text.normalize('NFKC'))) : text);
// Cyrillic and Greek letters that look like Latin ones, in the same case: a copy with "о" for "o" here and
// there reads the same to its reader and must count as the same content (a text in Russian or Greek is
// changed alike in every copy, which is all a fingerprint needs).
const LOOK_ALIKE: Record<string, string> = {
  А: 'A', В: 'B', Е: 'E', К: 'K', М: 'M', Н: 'H', О: 'O', Р: 'P', С: 'C', Т: 'T', Х: 'X', У: 'Y', І: 'I', Ј: 'J', Ѕ: 'S', Һ: 'H', Ӏ: 'l',
  а: 'a', е: 'e', о: 'o', р: 'p', с: 'c', у: 'y', х: 'x', і: 'i', ј: 'j', ѕ: 's', ԁ: 'd', һ: 'h', ԛ: 'q', ԝ: 'w', ӏ: 'l',
  Α: 'A', Β: 'B', Ε: 'E', Ζ: 'Z', Η: 'H', Ι: 'I', Κ: 'K', Μ: 'M', Ν: 'N', Ο: 'O', Ρ: 'P', Τ: 'T', Υ: 'Y', Χ: 'X',
  α: 'a', ι: 'i', κ: 'k', ν: 'v', ο: 'o', ρ: 'p', υ: 'u', χ: 'x',
};
const LOOK_ALIKES = new RegExp(`[${Object.keys(LOOK_ALIKE).join('')}]`, 'g');
const GREEK_OR_CYRILLIC = /[\u0370-\u052f]/;
const latinLookAlikes = (text: string) => (GREEK_OR_CYRILLIC.test(text) ? text.replace(LOOK_ALIKES, (c) => LOOK_ALIKE[c]!) : text);
// The invisible tag characters (U+E0000–U+E0FFF) are outside the 64 K table the scan reads: taken out first.
const withoutTagCharacters = (text: string) => (text.includes('\udb40') ? text.replace(/[\u{e0000}-\u{e0fff}]/gu, '') : text);
const NON_ASCII = /[^\x00-\x7f]/;

// Character kinds, for the 64 K UTF-16 code units, filled lazily beyond ASCII.
const OTHER = 1;
const LETTER = 2;
const DIGIT = 3;
const INVISIBLE = 4;
const KIND = new Uint8Array(65_536);
const LOWER = new Uint16Array(65_536);
for (let c = 0; c < 128; c++) {
  KIND[c] = (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) ? LETTER : c >= 0x30 && c <= 0x39 ? DIGIT : OTHER;
  LOWER[c] = c >= 0x41 && c <= 0x5a ? c + 32 : c;
}

function kindOf(c: number): number {
  let k = KIND[c]!;
  if (k === 0) {
    const s = String.fromCharCode(c);
    if (c >= 0xd800 && c <= 0xdfff) k = OTHER; // astral: emoji and symbols (NFKC made styled letters ASCII)
    // Every character Unicode says a renderer may show as nothing (soft hyphen, zero-width and bidi marks,
    // variation selectors, the combining grapheme joiner, Hangul fillers, invisible operators): inside a
    // word, it would make each copy's word another one.
    else if (DEFAULT_IGNORABLE.test(s)) k = INVISIBLE;
    else if (/\p{Nd}|\p{No}/u.test(s)) k = DIGIT;
    else if (/[\p{L}\p{M}\p{Nl}]/u.test(s)) k = LETTER;
    else k = OTHER;
    KIND[c] = k;
    const lower = s.toLowerCase();
    LOWER[c] = lower.length === 1 ? lower.charCodeAt(0) : c;
  }
  return k;
}

const isJoiner = (c: number) =>
  c === 0x27 || c === 0x2d || c === 0x5f || c === 0x2e || c === 0x2c || c === 0x2f || c === 0x3a || c === 0x40 || c === 0x2019;
// ASCII consonants, lower case (y counts as one: "rhythm" loses its identity, random codes are caught).
const CONSONANT = new Uint8Array(128);
for (const ch of 'bcdfghjklmnpqrstvwxyz') CONSONANT[ch.charCodeAt(0)] = 1;

const FNV_OFFSET = 0x811c9dc5;
const FNV_PRIME = 0x01000193;

function wordHash(word: string): number {
  let h = FNV_OFFSET;
  for (let i = 0; i < word.length; i++) h = Math.imul(h ^ word.charCodeAt(i), FNV_PRIME);
  return fmix(h);
}

const NUM = wordHash(PLACEHOLDER.num);
const MAIL = wordHash(PLACEHOLDER.mail);
const NAME = wordHash(PLACEHOLDER.name);
// Dates are personalisation too ("jusqu'au 30 mars" versus "jusqu'au 6 avril"): month and day names, their
// abbreviations that are not also common words ("sat", "sun", "mer", "am" stay words) and time zones are #num.
// Keyed by 30 bits of the word's hash: small integers, which a Set looks up without boxing them.
const CALENDAR = new Set(
  (
    'january february march april may june july august september october november december ' +
    'janvier février mars avril mai juin juillet août septembre octobre novembre décembre ' +
    'monday tuesday wednesday thursday friday saturday sunday lundi mardi mercredi jeudi vendredi samedi dimanche ' +
    'jan feb mar apr jun jul aug sep sept oct nov dec janv févr avr juil déc mon tue tues wed thu thur thurs fri ' +
    'pm utc gmt cet cest'
  )
    .split(' ')
    .map((w) => wordHash(w) >>> 2),
);

const GREETING =
  /(?:bonjour|bonsoir|salut|coucou|hello|hi|hey|dear|hallo|hola|ciao|greetings|good (?:morning|afternoon|evening)|chère|chères|cher|chers|madame|monsieur|mesdames|messieurs|mme|mlle|mr|mrs|ms)(?![\p{L}\p{N}])/iuy;
const GREETING_PREFIX = /\S+(?:[ \t]\S+){0,5}?[ \t]?[,!:](?=\s|$)/uy;
const GREETING_LINE_MAX = 48;
// First letters of the greetings, to skip the regular expression on most lines.
const GREETING_INITIAL = new Set([...'bschdgmBSCHDGM'].map((ch) => ch.charCodeAt(0)));

/** Where the greeting starting at i ends (its line, or its addressee), or -1 when there is none. */
function greetingEnd(text: string, i: number): number {
  if (!GREETING_INITIAL.has(text.charCodeAt(i))) return -1;
  GREETING.lastIndex = i;
  if (!GREETING.test(text)) return -1;
  let end = text.indexOf('\n', i);
  if (end === -1) end = text.length;
  if (end - i <= GREETING_LINE_MAX) {
    let sentence = false;
    for (let j = i; j < end - 1 && !sentence; j++) {
      const c = text.charCodeAt(j);
      sentence = (c === 0x2e || c === 0x3f) && text.charCodeAt(j + 1) === 0x20;
    }
    if (!sentence) return end;
  }
  GREETING_PREFIX.lastIndex = i;
  const m = GREETING_PREFIX.exec(text);
  return m ? i + m[0].length : -1;
}

/** Whether a link starts at i: http://, https:// or www. in any case. */
function linkAt(t: string, i: number): boolean {
  const c = t.charCodeAt(i) | 0x20;
  if (c === 0x68) {
    if ((t.charCodeAt(i + 1) | 0x20) !== 0x74 || (t.charCodeAt(i + 2) | 0x20) !== 0x74 || (t.charCodeAt(i + 3) | 0x20) !== 0x70) return false;
    let j = i + 4;
    if ((t.charCodeAt(j) | 0x20) === 0x73) j++;
    return t.charCodeAt(j) === 0x3a && t.charCodeAt(j + 1) === 0x2f && t.charCodeAt(j + 2) === 0x2f;
  }
  return c === 0x77 && (t.charCodeAt(i + 1) | 0x20) === 0x77 && (t.charCodeAt(i + 2) | 0x20) === 0x77 && t.charCodeAt(i + 3) === 0x2e;
}

const DEFAULT_IGNORABLE = /^\p{Default_Ignorable_Code_Point}$/u;
const INVISIBLE_ALL = /\p{Default_Ignorable_Code_Point}/gu;

/**
 * The normalised words of `text` (at most `max`), hashed; with `spans`, also where each word is in the
 * text (for normalise(): building strings here would slow the loop down even when not asked for).
 */
function scan(text: string, max: number, spans?: Int32Array): Words {
  const n = text.length;
  const hashes = new Uint32Array(Math.min(max, (n >> 1) + 2));
  const cap = hashes.length;
  let count = 0;
  let length = 0;
  let lineStart = true;
  let i = 0;
  while (i < n && count < cap) {
    let c = text.charCodeAt(i);
    if (c === 0x0a) {
      lineStart = true;
      i++;
      continue;
    }
    let k = c < 128 ? KIND[c]! : kindOf(c);
    if (k !== LETTER && k !== DIGIT) {
      i++;
      continue;
    }
    const start = i;
    let word: number;
    let size: number;
    const greeting = lineStart ? greetingEnd(text, i) : -1;
    lineStart = false;
    if (greeting !== -1) {
      word = NAME;
      size = PLACEHOLDER.name.length;
      i = greeting;
    } else if (((c | 0x20) === 0x68 || (c | 0x20) === 0x77) && linkAt(text, i)) {
      while (i < n && (c = text.charCodeAt(i)) > 0x20 && c !== 0x3c && c !== 0x3e && c !== 0x22) i++;
      continue;
    } else {
      // A word: hash its lower-cased code units, and note what would make it a placeholder.
      let h = FNV_OFFSET;
      let len = 0;
      let digit = false;
      let at = false;
      let dashed = false;
      let otherJoiner = false;
      let upper = 0;
      let lower = 0;
      let hex = true;
      let run = 0;
      let maxRun = 0;
      for (;;) {
        if (k === LETTER) {
          const lc = LOWER[c]!;
          if (lc !== c) {
            if (len > 0) upper++;
          } else if (len > 0) lower++;
          if (lc > 0x66 || lc < 0x61) hex = false;
          if (lc < 128 && CONSONANT[lc]) {
            if (++run > maxRun) maxRun = run;
          } else run = 0;
          h = Math.imul(h ^ lc, FNV_PRIME);
          len++;
        } else if (k === DIGIT) {
          digit = true;
          h = Math.imul(h ^ c, FNV_PRIME);
          len++;
        }
        if (++i >= n) break;
        c = text.charCodeAt(i);
        k = c < 128 ? KIND[c]! : kindOf(c);
        if (k === LETTER || k === DIGIT || k === INVISIBLE) continue;
        if (!isJoiner(c) || i + 1 >= n) break;
        const next = text.charCodeAt(i + 1);
        const nk = next < 128 ? KIND[next]! : kindOf(next);
        if (nk !== LETTER && nk !== DIGIT) break;
        if (c === 0x40) at = true;
        else if (c === 0x2d || c === 0x5f) dashed = true;
        else otherJoiner = true;
        h = Math.imul(h ^ (c === 0x2019 ? 0x27 : c), FNV_PRIME);
        len++;
        hex = false;
        run = 0;
        c = next;
        k = nk;
        i++;
      }
      if (at) {
        word = MAIL;
        size = PLACEHOLDER.mail.length;
      } else if (
        digit ||
        (len >= 10 && upper >= 2 && lower >= 2) ||
        (dashed && !otherJoiner && lower === 0 && upper > 0 && LOWER[text.charCodeAt(start)] !== text.charCodeAt(start)) ||
        maxRun >= 5 ||
        (hex && len >= 12) ||
        len > 40
      ) {
        word = NUM;
      } else {
        word = fmix(h);
        if (CALENDAR.has(word >>> 2)) word = NUM;
      }
      size = word === NUM ? PLACEHOLDER.num.length : len;
    }
    if (word === NUM && count > 0 && hashes[count - 1] === NUM) continue;
    if (spans) {
      spans[2 * count] = start;
      spans[2 * count + 1] = i;
    }
    hashes[count++] = word;
    length += (count > 1 ? 1 : 0) + size;
  }
  return { hashes, count, length };
}

// --- shingles and MinHash --------------------------------------------------------------------------

/** MurmurHash3's 32-bit finaliser: spreads every input bit over the output. */
function fmix(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/**
 * The MinHash signature of the shingles of the subject and of the body (each on its own: no shingle spans
 * both; a text shorter than a shingle is one shingle), by one-permutation hashing: the 32-bit hash range
 * is split into K bins and each bin keeps the smallest shingle hash that falls in it. For two sets, a bin
 * agrees with probability J, as with K independent hash functions, but it costs one hash per shingle
 * instead of K (a 4 KB message has ~700 shingles: 700 hashes instead of 180,000). Empty bins (short texts)
 * are filled by "optimal densification" (Shrivastava, ICML 2017): bin j takes the value of the first
 * non-empty bin of a pseudo-random probe sequence seeded by j, the same sequence for every message, so
 * filled bins still agree with probability J.
 */
function signature(subject: Words, body: Words): Uint32Array {
  const sig = new Uint32Array(K).fill(0xffffffff);
  const filled = new Uint8Array(K);
  for (const { hashes, count } of [subject, body]) {
    if (count === 0) continue;
    const last = Math.max(1, count - SHINGLE + 1);
    for (let i = 0; i < last; i++) {
      let h = 0x9747b28c ^ VERSION;
      const end = Math.min(count, i + SHINGLE);
      for (let j = i; j < end; j++) h = (Math.imul((h << 13) | (h >>> 19), 5) + 0xe6546b64 + hashes[j]!) | 0;
      h = fmix(h);
      // The bin from the high bits (multiply-shift), the value is the whole hash.
      const bin = ((h >>> 16) * K) >>> 16;
      filled[bin] = 1;
      if (h < sig[bin]!) sig[bin] = h;
    }
  }
  densify(sig, filled);
  return sig;
}

/** Probes tried for an empty bin before the next filled bin in order is taken. */
const MAX_PROBES = 8 * K;

/** The bin an empty bin's probe sequence visits at `attempt` (1, 2, …): the same for every message. */
function probe(j: number, attempt: number): number {
  return ((fmix(Math.imul(j + 1, 0x9e3779b1) ^ Math.imul(attempt, 0x85ebca77)) >>> 16) * K) >>> 16;
}

/**
 * For each empty bin j and each bin t, the first attempt of j's probe sequence that visits t (0: none
 * within MAX_PROBES). With few bins filled (a short text), an empty bin's probe sequence runs about K / F
 * attempts before it meets one of the F, a hash each: for one shingle, 150 000 hashes a message. The first
 * filled bin it meets is the filled bin it visits first, read here in F steps. Made at the first short
 * text (1.2 million hashes, a few milliseconds; 300 KB).
 */
let firstVisits: Uint16Array | undefined;

function firstVisitTable(): Uint16Array {
  if (firstVisits) return firstVisits;
  const table = new Uint16Array(K * K);
  for (let j = 0; j < K; j++) {
    for (let attempt = 1; attempt <= MAX_PROBES; attempt++) {
      const t = j * K + probe(j, attempt);
      if (table[t] === 0) table[t] = attempt;
    }
  }
  firstVisits = table;
  return table;
}

/** Below this many filled bins, the table is read rather than the probe sequences walked. */
const FEW_FILLED = 48;

/**
 * Fills the empty bins ("optimal densification"): bin j takes the value of the first filled bin its probe
 * sequence visits, or failing that within MAX_PROBES (nearly every bin empty), of the next filled bin in
 * order.
 */
export function densify(sig: Uint32Array, filled: Uint8Array): void {
  const full: number[] = [];
  for (let t = 0; t < K; t++) if (filled[t]) full.push(t);
  if (full.length === K || full.length === 0) return;
  const table = full.length < FEW_FILLED ? firstVisitTable() : undefined;
  for (let j = 0; j < K; j++) {
    if (filled[j]) continue;
    let value = -1;
    if (table) {
      let first = MAX_PROBES + 1;
      for (const t of full) {
        const attempt = table[j * K + t]!;
        if (attempt !== 0 && attempt < first) {
          first = attempt;
          value = sig[t]!;
        }
      }
    } else {
      for (let attempt = 1; attempt <= MAX_PROBES && value === -1; attempt++) {
        const t = probe(j, attempt);
        if (filled[t]) value = sig[t]!;
      }
    }
    for (let d = 1; d < K && value === -1; d++) if (filled[(j + d) % K]) value = sig[(j + d) % K]!;
    sig[j] = value;
  }
}

/** 64 bits of hash of band b's rows, in hex: two 32-bit hashes with different seeds. */
function bandHash(sig: Uint32Array, b: number): string {
  let h1 = Math.imul(b + 1, 0x27d4eb2d) ^ VERSION;
  let h2 = Math.imul(b + 1, 0x165667b1) ^ 0x5bd1e995;
  for (let r = b * ROWS; r < (b + 1) * ROWS; r++) {
    const v = sig[r]!;
    h1 = (fmix(h1 ^ v) + 0x6b43a9b5) | 0;
    h2 = fmix(Math.imul(h2, FNV_PRIME) ^ v) ^ 0x7f4a7c15;
  }
  return hex8(fmix(h1)) + hex8(fmix(h2));
}

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));
const hex8 = (n: number) => HEX[n >>> 24]! + HEX[(n >>> 16) & 0xff]! + HEX[(n >>> 8) & 0xff]! + HEX[n & 0xff]!;

// --- attachments -------------------------------------------------------------------------------------

const IMAGE_TYPES = new Set(['png', 'jpeg', 'gif']);

/** Whether an attachment is content (a document, an archive, a real picture) rather than decoration. */
function countsAsContent(a: AttachmentFacts): boolean {
  if (a.size < MIN_ATTACHMENT_BYTES) return false;
  // The sender's vCard, which some clients attach to every message: the sender, not the content.
  if (a.extension === 'vcf' || a.extension === 'vcard' || /^text\/(?:x-)?vcard$/i.test(a.declaredType)) return false;
  const image = IMAGE_TYPES.has(a.detectedType) || a.declaredType.toLowerCase().startsWith('image/');
  return !image || a.size >= SMALL_IMAGE_BYTES;
}

/** The patterns run on every message's text, for the test that shows each matches in linear time. */
export const TEXT_PATTERNS: readonly RegExp[] = [REPLY_PREFIX, SUBJECT_ADDRESSEE, ATTRIBUTION, ORIGINAL, OUTLOOK_RULE, HEADER_FROM, HEADER_SENT, MAY_QUOTE, GREETING_PREFIX];
