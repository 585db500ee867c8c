// Turns schema issues into "file:line:col: key message" by finding each path in the parsed YAML document.

import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { isAlias, isMap, isPair, isScalar, isSeq, LineCounter, parseDocument, visit, type Document, type Node } from 'yaml';
import { formatPath, type Issue, type Path, type Schema } from './schema.js';

export interface Problem {
  /** file name as given, "env DOUANE_X" for environment overrides, or "(embedded default)" */
  file: string;
  line?: number;
  col?: number;
  /** dotted key path, e.g. plans.basic.messages_per_hour */
  key: string;
  message: string;
}

export function formatProblem(p: Problem): string {
  const where = p.line !== undefined ? `${p.file}:${p.line}:${p.col ?? 1}` : p.file;
  return `${where}: ${p.key === '(top level)' ? '' : p.key + ' '}${p.message}`;
}

/** Thrown when a file (config or policy) does not validate; carries every problem, not just the first. */
export class ValidationError extends Error {
  readonly code = 'DOUANE_INVALID_FILE';
  constructor(readonly problems: Problem[]) {
    super(problems.map(formatProblem).join('\n'));
    this.name = 'ValidationError';
  }
}

export class YamlSource {
  private constructor(
    readonly file: string,
    readonly text: string,
    readonly doc: Document.Parsed,
    private readonly lines: LineCounter,
  ) {}

  /** Parses YAML text; syntax errors (including duplicate keys) become problems with their position. */
  static parse(file: string, text: string): { source: YamlSource; value: unknown; problems: Problem[] } {
    const lines = new LineCounter();
    // merge: "<<: *standard" copies a mapping, as YAML 1.1 tools (and people) expect.
    const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true, strict: true, merge: true });
    const source = new YamlSource(file, text, doc, lines);
    const problems: Problem[] = [];
    // An error found at the end of the input (an unclosed bracket or quote) is shown on the last line
    // that has content, not on the empty line after it.
    const contentEnd = text.trimEnd().length;
    for (const err of [...doc.errors, ...doc.warnings]) {
      const pos = lines.linePos(contentEnd > 0 && err.pos[0] >= contentEnd ? contentEnd - 1 : err.pos[0]);
      problems.push({ file, line: pos.line, col: pos.col, key: '(top level)', message: `YAML: ${yamlMessage(err, text)}` });
    }
    // "- *@example.com" is an alias to an anchor that does not exist, not an address: say so where it is.
    if (!problems.length) {
      visit(doc, {
        Alias(_, node) {
          if (node.resolve(doc)) return;
          const pos = lines.linePos(node.range?.[0] ?? 0);
          problems.push({ file, line: pos.line, col: pos.col, key: '(top level)', message: `YAML: "*${node.source}" is read as an alias (a reference to "&${node.source}", which is not defined); put the value in quotes` });
        },
      });
    }
    if (problems.length) return { source, value: undefined, problems };
    try {
      // Aliases multiply what they point at: a file of a few lines could otherwise expand to gigabytes.
      return { source, value: doc.toJS({ maxAliasCount: 1000 }), problems };
    } catch (err) {
      const firstAlias = findFirstAlias(doc);
      const pos = lines.linePos(firstAlias ?? 0);
      problems.push({ file, line: pos.line, col: pos.col, key: '(top level)', message: `YAML: ${firstLine((err as Error).message)}; use fewer aliases` });
      return { source, value: undefined, problems };
    }
  }

  static async load(file: string): Promise<{ source: YamlSource; value: unknown; problems: Problem[] }> {
    return YamlSource.parse(file, decodeUtf8(file, await readFile(file).catch((err: NodeJS.ErrnoException) => unreadable(file, err))));
  }

  /** Line and column of the node at `path` (or of its key), falling back to the nearest existing ancestor. */
  position(path: Path, atKey = false): { line: number; col: number } {
    let node: unknown = this.doc.contents;
    let offset = rangeStart(node) ?? 0;
    for (let i = 0; i < path.length; i++) {
      const part = path[i]!;
      const last = i === path.length - 1;
      if (isMap(node)) {
        const pair = node.items.find((p) => isPair(p) && isScalar(p.key) && String(p.key.value) === String(part));
        if (!pair) break;
        if (last && atKey) {
          offset = rangeStart(pair.key) ?? offset;
          break;
        }
        node = pair.value;
        offset = rangeStart(node) ?? rangeStart(pair.key) ?? offset;
      } else if (isSeq(node) && typeof part === 'number') {
        const item = node.items[part];
        if (item === undefined) break;
        node = item;
        offset = rangeStart(node) ?? offset;
      } else break;
    }
    return this.lines.linePos(offset);
  }

  /** Is there a node at `path` in the file? */
  has(path: Path): boolean {
    return this.nodeAt(path) !== undefined;
  }

  /** Is the node at `path` in the file a mapping (not a scalar an override may have turned into one)? */
  holdsMapping(path: Path): boolean {
    return isMap(this.nodeAt(path));
  }

  private nodeAt(path: Path): unknown {
    let node: unknown = this.doc.contents;
    for (const part of path) {
      if (isMap(node)) {
        const pair = node.items.find((p) => isPair(p) && isScalar(p.key) && String(p.key.value) === String(part));
        if (!pair) return undefined;
        node = pair.value ?? null;
      } else if (isSeq(node) && typeof part === 'number') {
        node = node.items[part];
        if (node === undefined) return undefined;
      } else return undefined;
    }
    return node;
  }

  problem(issue: Issue): Problem {
    const pos = this.position(issue.path, issue.atKey);
    return { file: this.file, line: pos.line, col: pos.col, key: formatPath(issue.path), message: issue.message };
  }
}

function findFirstAlias(doc: Document): number | undefined {
  let at: number | undefined;
  visit(doc, {
    Alias(_, node) {
      at = node.range?.[0];
      return visit.BREAK;
    },
  });
  return at;
}

function unreadable(file: string, err: NodeJS.ErrnoException): never {
  const why = err.code === 'EACCES' ? 'permission denied' : err.code === 'ENOENT' ? 'no such file' : err.code === 'EISDIR' ? 'it is a directory' : err.message;
  throw new ValidationError([{ file, key: '(top level)', message: `cannot be read: ${why}` }]);
}

/** Reads a YAML file as UTF-8; a byte that is not UTF-8 is reported where it is, not silently replaced. */
export function readYamlFile(file: string, display = file): string {
  let bytes: Buffer;
  try {
    bytes = readFileSync(file);
  } catch (err) {
    unreadable(display, err as NodeJS.ErrnoException);
  }
  return decodeUtf8(display, bytes);
}

function decodeUtf8(file: string, bytes: Buffer): string {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    // The longest prefix that is UTF-8 (an unfinished character at its end allowed): the bad byte follows.
    const valid = (n: number) => {
      try {
        new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(0, n), { stream: true });
        return true;
      } catch {
        return false;
      }
    };
    let [lo, hi] = [0, bytes.length];
    while (lo < hi) {
      const mid = Math.ceil((lo + hi) / 2);
      if (valid(mid)) lo = mid;
      else hi = mid - 1;
    }
    const before = bytes.subarray(0, lo).toString('utf8').replace(/\ufffd$/, '');
    const line = before.split('\n').length;
    const col = before.length - before.lastIndexOf('\n');
    throw new ValidationError([{ file, line, col, key: '(top level)', message: 'is not valid UTF-8 here (a byte from another encoding, such as Latin-1): save the file as UTF-8' }]);
  }
}

function rangeStart(node: unknown): number | undefined {
  const range = (node as Node | undefined)?.range;
  return range ? range[0] : undefined;
}

/** The parser's message, with what a person needs to act on it: the key that is there twice, … */
function yamlMessage(err: { code: string; message: string; pos: [number, number] }, text: string): string {
  if (err.code === 'DUPLICATE_KEY') {
    const key = /^\s*(?:-\s+)?("[^"]*"|'[^']*'|[^:#\n]+?)\s*:/.exec(text.slice(err.pos[0], err.pos[0] + 300))?.[1];
    if (key) return `the key ${key.startsWith('"') || key.startsWith("'") ? key : `"${key}"`} appears twice in this mapping: keep one`;
  }
  if (err.code === 'MULTIPLE_DOCS') return 'the file holds more than one YAML document (a "---" line after content): one document per file';
  return firstLine(err.message);
}

function firstLine(message: string): string {
  return message.split('\n')[0]!.trim();
}

/** Parse + validate one YAML file against a schema; throws ValidationError listing every problem. */
export function validateYaml<T>(file: string, text: string, schema: Schema<T>): { value: T; source: YamlSource } {
  const { source, value, problems } = YamlSource.parse(file, text);
  if (problems.length) throw new ValidationError(problems);
  const issues: Issue[] = [];
  const parsed = schema.parse(value, [], issues);
  if (issues.length || parsed === undefined) throw new ValidationError(issues.map((i) => source.problem(i)));
  return { value: parsed, source };
}
