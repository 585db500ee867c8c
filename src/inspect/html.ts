// Turns an HTML part into the text a reader sees, for body rules: tags dropped, script/style content
// dropped, block elements as line breaks, entities decoded. One linear pass with indexOf — no regular
// expression that could backtrack on hostile markup (an unclosed <script> or attribute quote).

// Elements whose content is never shown as text.
const HIDDEN = new Set(['script', 'style', 'title', 'template']);
const HIDDEN_CLOSE: Record<string, RegExp> = {
  script: /<\/script/gi,
  style: /<\/style/gi,
  title: /<\/title/gi,
  template: /<\/template/gi,
};
// Elements that start a new line in a rendering.
const BLOCK = new Set([
  'address', 'article', 'aside', 'blockquote', 'br', 'caption', 'center', 'dd', 'div', 'dl', 'dt', 'fieldset',
  'figcaption', 'figure', 'footer', 'form', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'header', 'hr', 'li', 'main',
  'nav', 'ol', 'p', 'pre', 'section', 'table', 'tbody', 'thead', 'tfoot', 'tr', 'ul',
]);
const CELL = new Set(['td', 'th']);
const TAG_NAME = /<(\/?)([A-Za-z][A-Za-z0-9-]{0,31})/y;

/**
 * The visible text of `html`, at most about `maxChars` characters (the markup past what that needs is not
 * looked at).
 */
export function htmlToText(html: string, maxChars: number): string {
  const out: string[] = [];
  let outLength = 0;
  // Whitespace collapses and entities shrink, so convert somewhat more than asked before stopping.
  const budget = maxChars * 2 + 1024;
  const n = html.length;
  let pos = 0;
  const emit = (s: string) => {
    out.push(s);
    outLength += s.length;
  };
  while (pos < n && outLength < budget) {
    const lt = html.indexOf('<', pos);
    if (lt === -1) {
      emit(html.slice(pos));
      break;
    }
    if (lt > pos) emit(html.slice(pos, lt));
    if (html.startsWith('<!--', lt)) {
      const close = html.indexOf('-->', lt + 4);
      pos = close === -1 ? n : close + 3;
      continue;
    }
    TAG_NAME.lastIndex = lt;
    const m = TAG_NAME.exec(html);
    if (!m) {
      const next = html.charCodeAt(lt + 1);
      if (next === 0x21 /* ! */ || next === 0x3f /* ? */) {
        // <!DOCTYPE …>, <![CDATA[…]]>, <?xml …?>
        const gt = html.indexOf('>', lt);
        pos = gt === -1 ? n : gt + 1;
      } else {
        // "a < b": a lone "<" is text.
        emit('<');
        pos = lt + 1;
      }
      continue;
    }
    // A browser lets a quoted attribute hold ">"; stopping at the first one can only show more text, never
    // less, which is the safe side for matching.
    const gt = html.indexOf('>', lt);
    if (gt === -1) break;
    pos = gt + 1;
    const closing = m[1] === '/';
    const name = m[2]!.toLowerCase();
    if (!closing && HIDDEN.has(name)) {
      const re = HIDDEN_CLOSE[name]!;
      re.lastIndex = pos;
      const close = re.exec(html);
      if (!close) break;
      const end = html.indexOf('>', close.index);
      pos = end === -1 ? n : end + 1;
      continue;
    }
    if (BLOCK.has(name)) emit('\n');
    else if (CELL.has(name)) emit(' ');
  }
  return normalizeText(decodeEntities(out.join(''))).slice(0, maxChars);
}

/** Collapses runs of spaces, trims lines, keeps at most one blank line: text as it reads. */
export function normalizeText(text: string): string {
  // One pass that copies the text once, in slices between the runs it rewrites. A chain of replace()
  // calls costs a copy and a flattening of the previous result each: about 1 ms per 100 KB per step.
  const parts: string[] = [];
  let from = 0;
  WHITESPACE_RUN.lastIndex = 0;
  for (let m = WHITESPACE_RUN.exec(text); m; m = WHITESPACE_RUN.exec(text)) {
    parts.push(text.slice(from, m.index), collapse(m[0]));
    from = m.index + m[0].length;
  }
  if (from === 0) return text.trim();
  parts.push(text.slice(from));
  return parts.join('').trim();
}

/**
 * What a run of white space reads as: nothing (only invisible characters: zero-width space/joiners, soft
 * hyphen, word joiner, BOM, which split words for a reader's eye but not for a pattern), one space, one
 * line break, or one blank line however many there were. CR LF and a lone CR are line breaks.
 */
function collapse(run: string): string {
  let breaks = 0;
  let blank = false;
  for (let i = 0; i < run.length; i++) {
    const c = run.charCodeAt(i);
    if (c === 0x0a) breaks++;
    else if (c === 0x0d) {
      breaks++;
      if (run.charCodeAt(i + 1) === 0x0a) i++;
    } else if (c === 0x20 || c === 0x09 || c === 0x0b || c === 0x0c || c === 0xa0) blank = true;
  }
  if (breaks === 0) return blank ? ' ' : '';
  return breaks === 1 ? '\n' : '\n\n';
}

// Runs of white space that read differently from how they are written: those with a character other
// than a plain space in them, or two spaces or more. A single space between words is left where it is.
// Both branches end in a greedy class that always matches, so the scan is linear in the text.
const WHITESPACE_RUN =
  / ?[\t\f\v\u00a0\r\n\u00ad\u200b-\u200d\u2060\ufeff][ \t\f\v\u00a0\r\n\u00ad\u200b-\u200d\u2060\ufeff]*| {2,}[ \t\f\v\u00a0\r\n\u00ad\u200b-\u200d\u2060\ufeff]*/g;

// Latin-1 names, U+00A0 to U+00FF in order.
const LATIN1 =
  'nbsp iexcl cent pound curren yen brvbar sect uml copy ordf laquo not shy reg macr deg plusmn sup2 sup3 acute micro para middot cedil sup1 ordm raquo frac14 frac12 frac34 iquest ' +
  'Agrave Aacute Acirc Atilde Auml Aring AElig Ccedil Egrave Eacute Ecirc Euml Igrave Iacute Icirc Iuml ETH Ntilde Ograve Oacute Ocirc Otilde Ouml times Oslash Ugrave Uacute Ucirc Uuml Yacute THORN szlig ' +
  'agrave aacute acirc atilde auml aring aelig ccedil egrave eacute ecirc euml igrave iacute icirc iuml eth ntilde ograve oacute ocirc otilde ouml divide oslash ugrave uacute ucirc uuml yacute thorn yuml';

const ENTITIES: Map<string, string> = new Map([
  ['amp', '&'], ['lt', '<'], ['gt', '>'], ['quot', '"'], ['apos', "'"],
  ['OElig', '\u0152'], ['oelig', '\u0153'], ['Scaron', '\u0160'], ['scaron', '\u0161'], ['Yuml', '\u0178'],
  ['fnof', '\u0192'], ['circ', '\u02c6'], ['tilde', '\u02dc'], ['ensp', '\u2002'], ['emsp', '\u2003'],
  ['thinsp', '\u2009'], ['zwnj', '\u200c'], ['zwj', '\u200d'], ['lrm', '\u200e'], ['rlm', '\u200f'],
  ['ndash', '\u2013'], ['mdash', '\u2014'], ['lsquo', '\u2018'], ['rsquo', '\u2019'], ['sbquo', '\u201a'],
  ['ldquo', '\u201c'], ['rdquo', '\u201d'], ['bdquo', '\u201e'], ['dagger', '\u2020'], ['Dagger', '\u2021'],
  ['bull', '\u2022'], ['hellip', '\u2026'], ['permil', '\u2030'], ['prime', '\u2032'], ['lsaquo', '\u2039'],
  ['rsaquo', '\u203a'], ['euro', '\u20ac'], ['trade', '\u2122'], ['larr', '\u2190'], ['rarr', '\u2192'],
  ['colon', ':'], ['sol', '/'], ['period', '.'], ['num', '#'], ['quest', '?'], ['equals', '='], ['commat', '@'],
  ...LATIN1.split(' ').map((name, i): [string, string] => [name, String.fromCharCode(0xa0 + i)]),
]);

const ENTITY = /&(?:#(\d{1,7})|#[xX]([0-9A-Fa-f]{1,6})|([A-Za-z][A-Za-z0-9]{1,31}));?/g;

/** Decodes numeric character references and the common named entities; unknown names stay as written. */
export function decodeEntities(text: string): string {
  if (!text.includes('&')) return text;
  return text.replace(ENTITY, (whole, dec: string | undefined, hexa: string | undefined, name: string | undefined) => {
    if (name !== undefined) return ENTITIES.get(name) ?? ENTITIES.get(name.toLowerCase()) ?? whole;
    const code = dec !== undefined ? parseInt(dec, 10) : parseInt(hexa!, 16);
    if (code === 0 || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) return '\ufffd';
    return String.fromCodePoint(code);
  });
}
