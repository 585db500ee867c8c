// Finds the links in text and HTML for `urls` rules: http(s):// URLs written out, and the targets of
// href attributes (where a phishing link hides behind innocent link text). Deduplicated and capped. The
// scanner takes a part in pieces as it streams; every pattern is bounded in length, so hostile input
// (a quote that never closes, a megabyte without a space) costs linear time.

import { decodeAttribute, decodeEntities } from './html.js';

// Longest URL kept; anything longer is cut (and still counts, by its start).
const MAX_URL = 2048;
const TEXT_URL = /\bhttps?:\/\/[^\s<>"'`\x00-\x1f\x7f]{1,2048}/gi;
// In HTML, a URL written out with character references in its scheme ("https&#58;//", "&#104;ttps://") is
// shown decoded, and mail programs that make links of URLs in text make one of it. Bounded as TEXT_URL.
const e = (c: string) => `(?:${c === '/' ? '\\/' : c}|&#0{0,8}${c.charCodeAt(0)};?|&#x0{0,8}${c.charCodeAt(0).toString(16)};?${c === ':' ? '|&colon;' : c === '/' ? '|&sol;' : ''})`;
// Not an attribute's value (an href's is read as a browser reads it, below).
const HTML_TEXT_URL = new RegExp(`(?<![="'])${e('h')}${e('t')}${e('t')}${e('p')}${e('s')}?${e(':')}${e('/')}${e('/')}[^\\s<>"'\`\\x00-\\x1f\\x7f]{1,2048}`, 'gi');
// Mail programs make a link of "www.example.com/login" written without a scheme.
// Bounded below OVERLAP (at most about 2 080 characters), so that a match cut by a scan batch is seen whole.
const TEXT_WWW = /(?<![\w.@/-])www\.[a-z0-9-]{1,63}(?:\.[a-z0-9-]{1,63}){1,8}(?:[/?#][^\s<>"'`\x00-\x1f\x7f]{0,1500})?/gi;
// A quoted value is taken up to 8 KB: a browser follows a link whatever padding (spaces, a long query) it
// carries, and the URL kept is cut at MAX_URL afterwards.
const HREF = /\bhref[\t\n\f\r ]{0,16}=[\t\n\f\r ]{0,16}(?:"([^"]{0,8192})"|'([^']{0,8192})'|([^\s"'<>`]{1,2048}))/gi;
// A match ending at the end of what was scanned may go on in the next piece: this much is scanned again.
const OVERLAP = 8400;
// Pieces are gathered up to this size before scanning, so that tiny chunks do not each pay the overlap.
const SCAN_BATCH = 32 * 1024;

export class UrlSet {
  private readonly seen = new Set<string>();
  // The same link written the same way (a signature on every line) is looked at once; bounded.
  private readonly raw = new Set<string>();

  constructor(readonly max = 1000) {}

  /** a link not seen before came after the set was full: the list is not every link of the message */
  dropped = false;

  get full(): boolean {
    return this.seen.size >= this.max;
  }

  /** nothing more to look for: full, and a link past the bound already found */
  get done(): boolean {
    return this.dropped;
  }

  add(url: string): void {
    if (this.raw.has(url)) return;
    if (this.full) {
      if (!this.dropped) {
        const u = normalize(url);
        if (u && !this.seen.has(u)) this.dropped = true;
      }
      return;
    }
    if (this.raw.size < this.max * 4) this.raw.add(url);
    const u = normalize(url);
    if (u) this.seen.add(u);
  }

  list(): string[] {
    return [...this.seen];
  }
}

/**
 * Scans one part's text as it arrives. `recode` turns a found URL back from the scanned form (Latin-1
 * strings of the raw bytes, so any ASCII-compatible charset scans the same) into proper characters.
 */
export class UrlScanner {
  private carry = '';
  private batch: string[] = [];
  private batchLength = 0;

  constructor(
    private readonly urls: UrlSet,
    private readonly html: boolean,
    private readonly recode: (s: string) => string = (s) => s,
  ) {}

  push(text: string): void {
    if (this.urls.done || text.length === 0) return;
    text = collapsePadding(text);
    this.batch.push(text);
    this.batchLength += text.length;
    if (this.batchLength >= SCAN_BATCH) this.flush(false);
  }

  end(): void {
    if (!this.urls.done) this.flush(true);
    this.carry = '';
  }

  private flush(final: boolean): void {
    const text = this.carry + this.batch.join('');
    this.batch = [];
    this.batchLength = 0;
    // Matches that reach the end may be cut short; the overlap scans them again, whole, next time.
    const limit = final ? Infinity : text.length;
    scanText(text, this.html, this.urls, this.recode, limit);
    this.carry = final ? '' : text.slice(-OVERLAP);
  }
}

/**
 * Runs of white space as one space: no link has a run of them in it, and a browser drops them around one, so
 * an href padded with any number of spaces (which would go past the patterns' bounds) is still read.
 */
function collapsePadding(text: string): string {
  return text.length > 16 && /[\t\n\f\r ]{17}/.test(text) ? text.replace(/[\t\n\f\r ]{17,}/g, ' ') : text;
}

/** Every URL in a complete text (or HTML) string. */
export function extractUrls(text: string, html: boolean, max = 1000): string[] {
  const urls = new UrlSet(max);
  scanText(collapsePadding(text), html, urls, (s) => s, Infinity);
  return urls.list();
}

function scanText(text: string, html: boolean, urls: UrlSet, recode: (s: string) => string, limit: number): void {
  TEXT_URL.lastIndex = 0;
  for (let m = TEXT_URL.exec(text); m && !urls.done; m = TEXT_URL.exec(text)) {
    if (m.index + m[0].length >= limit) continue;
    let url = recode(trimTrailing(m[0]));
    if (html) url = decodeEntities(url);
    urls.add(url);
  }
  TEXT_WWW.lastIndex = 0;
  for (let m = TEXT_WWW.exec(text); m && !urls.done; m = TEXT_WWW.exec(text)) {
    if (m.index + m[0].length >= limit) continue;
    let url = recode(trimTrailing(m[0]));
    if (html) url = decodeEntities(url);
    urls.add('http://' + url);
  }
  if (!html) return;
  HREF.lastIndex = 0;
  for (let m = HREF.exec(text); m && !urls.done; m = HREF.exec(text)) {
    if (m.index + m[0].length >= limit) continue;
    // Browsers (WHATWG URL) drop tabs and line breaks anywhere in a URL, and control characters and spaces
    // around it ("&#1;https://…" is a link).
    // eslint-disable-next-line no-control-regex
    const target = decodeAttribute(recode(m[1] ?? m[2] ?? m[3] ?? '')).replace(/[\t\n\r]/g, '').replace(/^[\x00-\x20]+|[\x00-\x20]+$/g, '').slice(0, MAX_URL);
    if (/^https?:\/\//i.test(target)) urls.add(target);
    // A scheme-relative link takes the scheme of the page; say http, so the host can be read.
    else if (target.startsWith('//')) urls.add('http:' + target);
    // "https:/x", "https:x", "http:\\x": a browser reads each as https://x/ (WHATWG URL); so do we.
    else if (/^https?:/i.test(target)) {
      const href = whatwg(target);
      if (href) urls.add(href);
    }
  }
  HTML_TEXT_URL.lastIndex = 0;
  for (let m = HTML_TEXT_URL.exec(text); m && !urls.done; m = HTML_TEXT_URL.exec(text)) {
    if (m.index + m[0].length >= limit) continue;
    // Those written plainly were taken above, and hrefs as browsers read them (a URL is kept once).
    if (!m[0].includes('&')) continue;
    // A reference may stand for a space or a line break, which ends the URL as shown.
    const shown = decodeEntities(recode(trimTrailing(m[0]))).split(/[\s\x00-\x1f\x7f]/, 1)[0]!;
    urls.add(shown);
  }
}

/** Punctuation that ends a sentence rather than the URL ("see https://x.test/a."). */
function trimTrailing(url: string): string {
  // A closing parenthesis belongs to the URL only if it opened one (Wikipedia-style links).
  const parens = url.includes('(');
  let end = url.length;
  while (end > 0) {
    const c = url[end - 1]!;
    if ('.,;:!?\'"]}*'.includes(c) || (c === ')' && !parens)) end--;
    else break;
  }
  return url.slice(0, end);
}

function whatwg(target: string): string | undefined {
  try {
    return new URL(target).href;
  } catch {
    return undefined;
  }
}

/**
 * Scheme and host in lower case (both are case-insensitive), and the host without the trailing dot of a
 * fully qualified name (examp1e-bank.test. is examp1e-bank.test), so the same link counts once.
 */
function normalize(url: string): string | undefined {
  const m = /^(https?):\/\/([^/?#\\]*)/i.exec(url);
  if (!m || m[2] === '') return undefined;
  const host = m[2]!.toLowerCase().replace(/\.+(?=:\d*$|$)/, '');
  if (host === '') return undefined;
  return (m[1]!.toLowerCase() + '://' + host + url.slice(m[0].length)).slice(0, MAX_URL);
}
