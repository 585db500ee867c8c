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
// An element its own attributes hide from every mail program: the `hidden` attribute, or an inline style
// whose last `display` is `none` (nothing inside can show again). Text so hidden is what a bulk mailer pads
// each copy with, a different one each time: the bulk fingerprint reads the text without it. The body the
// rules read keeps it, since a guess wrong here would hide shown text from them. Only <div> and <span>,
// which a mail program closes with their own end tag or an enclosing element's; classes set in a <style>
// sheet, visibility and font sizes (which an element inside can undo) are not followed.
// One attribute: its name, and its value quoted either way or bare. Linear: each branch consumes.
const ATTRIBUTE = /([^\s"'>/=]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+)))?/g;
const CSS_COMMENT = /\/\*[\s\S]*?\*\//g;
const DISPLAY = /(?:^|;)\s*display\s*:\s*([a-z-]+)/gi;
const HIDEABLE = new Set(['div', 'span']);
// Elements with no end tag: nothing opens inside them.
const VOID = new Set(['area', 'base', 'br', 'col', 'embed', 'hr', 'img', 'input', 'link', 'meta', 'param', 'source', 'track', 'wbr']);

/** Whether an opening tag's attributes (the text after its name) hide the element. */
function hides(attributes: string): boolean {
  if (!/hidden|display/i.test(attributes)) return false;
  // A browser takes the first of two attributes of one name.
  const seen = new Set<string>();
  for (const m of attributes.matchAll(ATTRIBUTE)) {
    const name = m[1]!.toLowerCase();
    if (seen.has(name)) continue;
    seen.add(name);
    if (name === 'hidden') return true;
    if (name !== 'style') continue;
    const css = (m[2] ?? m[3] ?? m[4] ?? '').replace(CSS_COMMENT, ' ');
    // The last declaration wins.
    let display: string | undefined;
    for (const d of css.matchAll(DISPLAY)) display = d[1]!.toLowerCase();
    if (display === 'none') return true;
  }
  return false;
}

/**
 * The text of `html` a reader sees, at most about `maxChars` characters (the markup past what that needs is
 * not looked at): tags, comments, script and style content dropped.
 */
export function htmlToText(html: string, maxChars: number): string {
  return htmlToTexts(html, maxChars).text;
}

/**
 * The same, and `visible`: without what elements their own attributes hide (see HIDEABLE), for the bulk
 * fingerprint. The same string when nothing is hidden.
 */
export function htmlToTexts(html: string, maxChars: number): { text: string; visible: string } {
  const out: string[] = [];
  let outLength = 0;
  let seen: string[] = [];
  /** inside a hidden element: its name, the elements opened in it, and what it holds until it ends */
  let hidden: { name: string; open: string[]; held: string[] } | undefined;
  let hid = false;
  // Whitespace collapses and entities shrink, so convert somewhat more than asked before stopping.
  const budget = maxChars * 2 + 1024;
  const n = html.length;
  let pos = 0;
  const emit = (s: string) => {
    out.push(s);
    outLength += s.length;
    (hidden ? hidden.held : seen).push(s);
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
    if (hidden) {
      if (!closing && !VOID.has(name)) hidden.open.push(name);
      else if (closing) {
        const inner = hidden.open.lastIndexOf(name);
        // The end of an element opened inside; else this one's end, or an enclosing element's, which ends
        // it too.
        if (inner >= 0) hidden.open.length = inner;
        else {
          const own = name === hidden.name;
          hidden = undefined;
          hid = true;
          if (own) continue;
        }
      }
    } else if (!closing && HIDEABLE.has(name) && hides(html.slice(lt + 1 + name.length, gt))) {
      if (BLOCK.has(name)) emit('\n');
      hidden = { name, open: [], held: [] };
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
  const text = normalizeText(decodeEntities(out.join(''))).slice(0, maxChars);
  // A hidden element never closed is shown, as far as this goes: text is never dropped on a guess.
  if (hidden) seen = seen.concat(hidden.held);
  return { text, visible: hid ? normalizeText(decodeEntities(seen.join(''))).slice(0, maxChars) : text };
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
