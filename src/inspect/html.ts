// Turns an HTML part into the text a reader sees, for body rules: tags dropped, script/style content
// dropped, block elements as line breaks, entities decoded. One linear pass with indexOf — no regular
// expression that could backtrack on hostile markup (an unclosed <script> or attribute quote).

import { decodeHTML, decodeHTMLAttribute } from 'entities';

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
// An element its own attributes hide: the `hidden` attribute, or an inline style a mail program applies
// (display: none, visibility: hidden, a zero font size, mso-hide: all). Text so hidden is what a bulk
// mailer pads each copy with (a different one each time), or where it keeps words for filters to read.
// Classes set in a <style> sheet are not followed. Bounded quantifiers: no backtracking on a long tag.
const STYLE_ATTRIBUTE = /\sstyle\s{0,9}=\s{0,9}(?:"([^"]*)"|'([^']*)'|([^\s>]*))/i;
const HIDING_STYLE = /(?:^|;)\s{0,99}(?:display\s{0,9}:\s{0,9}none|visibility\s{0,9}:\s{0,9}hidden|mso-hide\s{0,9}:\s{0,9}all|font-size\s{0,9}:\s{0,9}0+(?:\.0+)?(?:px|pt|em|rem|%)?\s{0,9}(?:!important)?\s{0,9}(?:;|$))/i;
const QUOTED = /"[^"]*"|'[^']*'/g;
const HIDDEN_FLAG = /\shidden(?=[\s=/]|$)/i;

/** Whether an opening tag's attributes (the text after its name) hide the element. */
function hides(attributes: string): boolean {
  if (!/hidden|none|mso-hide|font-size/i.test(attributes)) return false;
  const style = STYLE_ATTRIBUTE.exec(attributes);
  if (style && HIDING_STYLE.test(style[1] ?? style[2] ?? style[3] ?? '')) return true;
  return HIDDEN_FLAG.test(attributes.replace(QUOTED, '""'));
}
// Elements whose content it hides: those a mail program closes only with their end tag, and <p>, which the
// next block closes. (Elements with optional end tags in tables and lists are left alone.)
const HIDEABLE = new Set(['div', 'span', 'p', 'table', 'center', 'font', 'section', 'a', 'b', 'i', 'u', 'strong', 'em', 'small', 'label', 'article', 'aside', 'header', 'footer', 'blockquote', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6']);

/**
 * The visible text of `html`, at most about `maxChars` characters (the markup past what that needs is not
 * looked at).
 */
export function htmlToText(html: string, maxChars: number): string {
  let out: string[] = [];
  let outLength = 0;
  /**
   * Inside an element its attributes hide: its name, how deep in it, and the text outside it. What it
   * holds is kept apart (not counted against the budget) and dropped when it ends.
   */
  let hidden: { name: string; depth: number; before: string[]; length: number } | undefined;
  // Whitespace collapses and entities shrink, so convert somewhat more than asked before stopping.
  const budget = maxChars * 2 + 1024;
  const n = html.length;
  let pos = 0;
  const emit = (s: string) => {
    out.push(s);
    outLength += s.length;
  };
  while (pos < n && (hidden !== undefined || outLength < budget)) {
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
    if (hidden) {
      // Counted by name: the hidden element ends with its own end tag (a <p> also at the next block).
      if (name === hidden.name) hidden.depth += closing ? -1 : 1;
      if (hidden.depth === 0 || (hidden.name === 'p' && !closing && BLOCK.has(name) && (name !== 'p' || hidden.depth === 2))) {
        out = hidden.before;
        outLength = hidden.length;
        hidden = undefined;
        if (closing) continue;
      }
    }
    if (!hidden && !closing && HIDEABLE.has(name) && hides(html.slice(lt + 1 + name.length, gt))) {
      if (BLOCK.has(name)) emit('\n');
      hidden = { name, depth: 1, before: out, length: outLength };
      out = [];
      outLength = 0;
      continue;
    }
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
  // A hidden element never closed is shown, as far as this goes: text is never dropped on a guess.
  if (hidden) out = [...hidden.before, ...out];
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

/**
 * Character references as a browser reads them in text: every HTML5 name ("&Tab;", "&NewLine;" in a link
 * hide it as well as "&amp;"), numeric ones, and the legacy names written without ";". A name no browser
 * knows stays as written.
 */
export function decodeEntities(text: string): string {
  return text.includes('&') ? decodeHTML(text) : text;
}

/** The same in an attribute's value (an href), where a legacy name followed by "=" or a letter is text. */
export function decodeAttribute(text: string): string {
  return text.includes('&') ? decodeHTMLAttribute(text) : text;
}
