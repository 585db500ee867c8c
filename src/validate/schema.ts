// A small schema language for operator-written YAML: every problem becomes an Issue with the path of the
// offending key, so the loader can turn it into "file:line:col: path message" (see source.ts).
// Why not a general validator library: we want our own sentences ("must be a positive integer") and
// strict unknown-key errors everywhere, and the whole thing is small enough to read in one sitting.

import { spawn, spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import safeRegex from 'safe-regex2';

export type Path = (string | number)[];

export interface Issue {
  path: Path;
  message: string;
  /** point at the key itself rather than its value (unknown keys) */
  atKey?: boolean;
}

export interface Schema<T> {
  /** Returns the parsed value, or undefined after pushing at least one issue. */
  parse(value: unknown, path: Path, issues: Issue[]): T | undefined;
  /** One line for documentation and error messages, e.g. "a positive integer". */
  readonly expected: string;
  /** Present on object schemas so tooling (env overrides, docs) can walk the tree. */
  readonly fields?: Record<string, Field<unknown>>;
  /** Present on record schemas. */
  readonly values?: Schema<unknown>;
  /** A mapping that may also be given whole as one value (`clamd: none`): its keys and itself can be set. */
  readonly whole?: boolean;
}

export interface Field<T> {
  schema: Schema<T>;
  optional: boolean;
  /** already-parsed value used when the key is absent */
  default?: T;
  /** raw value fed through the schema when the key is absent (sections: {} gets every nested default) */
  defaultRaw?: unknown;
}

export function formatPath(path: Path): string {
  let out = '';
  for (const part of path) {
    if (typeof part === 'number') out += `[${part}]`;
    else out += out === '' ? part : `.${part}`;
  }
  return out === '' ? '(top level)' : out;
}

function typeName(value: unknown): string {
  if (value === null || value === undefined) return 'nothing';
  if (Array.isArray(value)) return 'a list';
  // What YAML's tags make (!!omap, !!pairs, !!set, !!binary, an unquoted timestamp): not what a key takes.
  if (value instanceof Map) return 'a YAML !!omap or !!pairs (write a plain mapping)';
  if (value instanceof Set) return 'a YAML !!set (write a list)';
  if (value instanceof Date) return 'a date (YAML reads an unquoted timestamp as one: write it in quotes)';
  if (value instanceof Uint8Array) return 'YAML !!binary data';
  if (typeof value === 'object') return 'a mapping';
  // Quoted as JSON: a CR, a tab or a NUL shows as such, not as nothing in a terminal.
  if (typeof value === 'string') return JSON.stringify(value.length > 40 ? value.slice(0, 40) + '…' : value);
  return String(value);
}

function leaf<T>(expected: string, check: (value: unknown) => T | undefined, secret = false): Schema<T> {
  return {
    expected,
    parse(value, path, issues) {
      const parsed = check(value);
      if (parsed === undefined) {
        // A secret is not written back into a terminal or a log, even a wrong one (it may be nearly right).
        const got = secret && typeof value === 'string' ? `a text of ${value.length} characters` : typeName(value);
        issues.push({ path, message: `must be ${expected} (got ${got})` });
      }
      return parsed;
    },
  };
}

export function str(opts: { nonEmpty?: boolean; pattern?: RegExp; expected?: string; secret?: boolean } = {}): Schema<string> {
  const expected = opts.expected ?? (opts.nonEmpty === false ? 'a string' : 'a non-empty string');
  const inner = leaf(expected, (v) => {
    if (typeof v !== 'string') return undefined;
    if (opts.nonEmpty !== false && v.trim() === '') return undefined;
    if (opts.pattern && !opts.pattern.test(v)) return undefined;
    return v;
  }, opts.secret);
  return {
    expected,
    parse(value, path, issues) {
      // YAML reads an unquoted 4.3 as a number (and 4.10 as 4.1): say so rather than "got a number".
      if ((typeof value === 'number' || typeof value === 'boolean') && (!opts.pattern || opts.pattern.test(String(value)))) {
        // A secret is not written back; nor is what YAML made of a number it could not keep as written
        // (4.10 is 4.1, 1234567890123456789 is 1234567890123456800): only the writer knows what was meant.
        const kept = typeof value === 'boolean' || (Number.isSafeInteger(value) && !opts.secret);
        const read = opts.secret ? `this value unquoted as a ${typeof value}` : `${String(value)} unquoted as a ${typeof value}`;
        issues.push({ path, message: `must be ${expected}, in quotes: YAML reads ${read} (${kept ? `write "${String(value)}"` : 'write it in quotes, as you meant it'})` });
        return undefined;
      }
      return inner.parse(value, path, issues);
    },
  };
}

export function bool(): Schema<boolean> {
  return leaf('true or false', (v) => (typeof v === 'boolean' ? v : undefined));
}

export function int(opts: { min?: number; max?: number } = {}): Schema<number> {
  const { min, max } = opts;
  let expected = 'an integer';
  if (min === 1 && max === undefined) expected = 'a positive integer';
  else if (min === 0 && max === undefined) expected = 'a non-negative integer';
  else if (min !== undefined && max !== undefined) expected = `an integer between ${min} and ${max}`;
  else if (min !== undefined) expected = `an integer of at least ${min}`;
  else if (max !== undefined) expected = `an integer of at most ${max}`;
  return leaf(expected, (v) => {
    if (typeof v !== 'number' || !Number.isSafeInteger(v)) return undefined;
    if (min !== undefined && v < min) return undefined;
    if (max !== undefined && v > max) return undefined;
    return v;
  });
}

export function num(opts: { min?: number; max?: number; exclusiveMin?: boolean } = {}): Schema<number> {
  const expected =
    opts.min !== undefined && opts.max !== undefined
      ? `a number between ${opts.min} and ${opts.max}`
      : opts.min !== undefined
        ? `a number ${opts.exclusiveMin ? 'greater than' : 'of at least'} ${opts.min}`
        : 'a number';
  return leaf(expected, (v) => {
    if (typeof v !== 'number' || !Number.isFinite(v)) return undefined;
    if (opts.min !== undefined && (opts.exclusiveMin ? v <= opts.min : v < opts.min)) return undefined;
    if (opts.max !== undefined && v > opts.max) return undefined;
    return v;
  });
}

export function oneOf<const T extends string>(...choices: T[]): Schema<T> {
  return leaf(`one of ${choices.join(', ')}`, (v) =>
    typeof v === 'string' && (choices as string[]).includes(v) ? (v as T) : undefined,
  );
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** Parses "500ms", "30s", "5m", "2h", "1d" into milliseconds. */
export function parseDuration(text: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)$/.exec(text.trim());
  if (!m) return undefined;
  return Math.round(Number(m[1]) * DURATION_UNITS[m[2]!]!);
}

/** Under the longest delay a Node.js timer keeps (2^31 - 1 ms, 24.8 days); a longer one fires at once. */
const TIMER_MAX_MS = 24 * 86_400_000;

/**
 * Ten years: longer than any window, retention or suspension anyone means, and far inside what Redis
 * (PEXPIRE) and dates can hold; "200000000000d" would be accepted here and refused by Redis at run time.
 */
export const DURATION_MAX_MS = 3650 * 86_400_000;

/**
 * A duration written with its unit, returned in milliseconds; bare numbers are refused ("30" is ambiguous).
 * `timer`: it is waited for with a timer, so it may not be longer than one keeps.
 */
export function duration(opts: { min?: number; timer?: boolean } = {}): Schema<number> {
  return bounded(
    leaf('a duration such as 500ms, 30s, 5m, 2h or 1d', (v) => (typeof v === 'string' ? parseDuration(v) : undefined)),
    { min: opts.min, max: opts.timer ? TIMER_MAX_MS : DURATION_MAX_MS },
    formatDuration,
  );
}

/** A well-formed value out of bounds says what the bound is, not which forms are accepted. */
function bounded(inner: Schema<number>, bounds: { min?: number; max?: number }, format: (n: number) => string): Schema<number> {
  const { min, max } = bounds;
  if (!min && max === undefined) return inner;
  return {
    expected: inner.expected,
    parse(value, path, issues) {
      const parsed = inner.parse(value, path, issues);
      if (parsed === undefined) return undefined;
      if (min && parsed < min) {
        issues.push({ path, message: `must be at least ${format(min)} (got ${typeName(value)})` });
        return undefined;
      }
      if (max !== undefined && parsed > max) {
        issues.push({ path, message: `must be at most ${format(max)} (got ${typeName(value)})` });
        return undefined;
      }
      return parsed;
    },
  };
}

function formatDuration(ms: number): string {
  for (const [unit, size] of [['d', 86_400_000], ['h', 3_600_000], ['m', 60_000], ['s', 1000]] as const) if (ms % size === 0) return `${ms / size}${unit}`;
  return `${ms}ms`;
}

function formatBytes(n: number): string {
  for (const [unit, size] of [['G', 1024 ** 3], ['M', 1024 ** 2], ['K', 1024]] as const) if (n % size === 0) return `${n / size}${unit}`;
  return `${n} bytes`;
}

const SIZE_UNITS: Record<string, number> = { '': 1, b: 1, k: 1024, kb: 1024, m: 1024 ** 2, mb: 1024 ** 2, g: 1024 ** 3, gb: 1024 ** 3 };

/** A byte size: an integer, or "512K", "25M", "1G" (binary units). */
export function bytes(opts: { min?: number } = {}): Schema<number> {
  const form = leaf('a size in bytes such as 52428800, 512K, 25M or 1G', (v) => {
    if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) return v;
    if (typeof v !== 'string') return undefined;
    const m = /^(\d+)\s*([kmg]?b?)$/i.exec(v.trim());
    const n = m ? Number(m[1]) * SIZE_UNITS[m[2]!.toLowerCase()]! : undefined;
    // "99999999999999999999G" is not a size anyone means, and would reach EHLO as 1e+29.
    return n !== undefined && Number.isSafeInteger(n) ? n : undefined;
  });
  return bounded(form, { min: opts.min }, formatBytes);
}

export interface CompiledPattern {
  source: string;
  regex: RegExp;
}

/**
 * What the backtracking analysis says of a pattern: it can take more than linear time (with an input that
 * shows it), it cannot, or nothing could be shown either way (a look-around the crafted inputs found no
 * answer for in time).
 */
type Backtracking = { verdict: 'slow'; summary: string; attack?: string; countedGroup?: boolean } | { verdict: 'linear' } | { verdict: 'unknown'; why: 'unsupported' | 'timeout' | 'failed' | 'not analysed' };

/** What the backtracking analysis found for each pattern and flags, so that a reload checks only new ones. */
const backtracking = new Map<string, Backtracking>();

// The analysis runs in a child process that exits when done: recheck is large (about 85 MB resident,
// with a worker thread), and a gateway that kept it would carry it for its whole life. Its automaton
// analysis is a proof. Large counts ("[a-f0-9]{400}") make it run out of time: the pattern is then
// analysed again with its counts made small ("[a-f0-9]{1}"), which keeps what makes matching
// super-linear (repetitions that overlap) while the counts' own cost is bounded by MAX_COUNTED_LENGTH.
// What it still cannot take (look-arounds) goes to its fuzzer, which tries crafted inputs and finds the
// exponential cases; what neither shows to be linear is refused.
const RECHECK = createRequire(import.meta.url).resolve('recheck');
const ANALYSE = `
const { check } = require(${JSON.stringify(RECHECK)});
const slow = (r) => ({ verdict: 'slow', summary: r.complexity.summary.replace(' (fuzz)', ''), attack: r.attack.pattern });
let input = '';
process.stdin.on('data', (d) => (input += d));
process.stdin.on('end', async () => {
  const out = [];
  for (const { source, flags, small, groups } of JSON.parse(input)) {
    try {
      let r = await check(source, flags, { checker: 'automaton', timeout: 1000 });
      if (r.status === 'unknown' && r.error && r.error.kind === 'timeout' && small !== source) {
        const s = await check(small, flags, { checker: 'automaton', timeout: 1000 });
        if (s.status !== 'unknown') r = s;
      }
      // Counted groups made unbounded: how many ways a count tries its group's alternatives shows only
      // there ("(?:[a-z]|[a-f0-9]){1,24}!" tries up to 2^24 at each place of the text, which bounded
      // counts hide from an analysis of how the cost grows with the text's length).
      if (r.status === 'safe' && groups !== source) {
        let g = await check(groups, flags, { checker: 'automaton', timeout: 1000 });
        if (g.status === 'unknown') g = await check(groups, flags, { checker: 'fuzz', timeout: 1000, randomSeed: 1 });
        if (g.status === 'vulnerable' && g.complexity.type === 'exponential') {
          out.push({ ...slow(g), countedGroup: true });
          continue;
        }
      }
      if (r.status === 'vulnerable') out.push(slow(r));
      else if (r.status === 'safe') out.push({ verdict: 'linear' });
      else {
        const f = await check(source, flags, { checker: 'fuzz', timeout: 1000, randomSeed: 1 });
        const why = r.error && r.error.kind === 'timeout' ? 'timeout' : 'unsupported';
        out.push(f.status === 'vulnerable' ? slow(f) : f.status === 'safe' ? { verdict: 'linear' } : { verdict: 'unknown', why });
      }
    } catch {
      out.push(null);
    }
  }
  process.stdout.write(JSON.stringify(out), () => process.exit(0));
});`;

/** Each pattern may take five analyses of a second each (automaton, with small counts, its counted groups twice, crafted inputs). */
function analysisTimeoutMs(patterns: number): number {
  return 30_000 + 5500 * patterns;
}

function notAnalysed(sources: readonly string[], flags: string): string[] {
  return [...new Set(sources)].filter((s) => !backtracking.has(`${flags}/${s}`));
}

/**
 * Keeps the verdicts the analysis gave; returns how many patterns it gave none for (it failed, was killed
 * or could not start). Those are not remembered: they are analysed again at the next load, and refused
 * meanwhile (see analysed).
 */
function remember(todo: string[], flags: string, stdout: string): number {
  let verdicts: (Backtracking | null)[] = [];
  try {
    verdicts = JSON.parse(stdout) as (Backtracking | null)[];
  } catch {
    // no verdicts
  }
  let missing = 0;
  todo.forEach((s, i) => {
    const verdict = Array.isArray(verdicts) ? verdicts[i] : undefined;
    if (verdict) backtracking.set(`${flags}/${s}`, verdict);
    else missing++;
  });
  return missing;
}

const analysisInput = (todo: string[], flags: string) => JSON.stringify(todo.map((source) => ({ source, flags, small: withSmallCounts(source), groups: withUnboundedGroups(source) })));

/**
 * Analyses patterns not seen yet, all in one child process (a policy's patterns are known before its
 * rules are compiled). Those it gives no verdict for are refused by the load that follows.
 */
export function analysePatterns(sources: readonly string[], flags: string): void {
  if (!blockingAllowed) return;
  const todo = notAnalysed(sources, flags);
  if (todo.length === 0) return;
  const run = spawnSync(process.execPath, ['-e', ANALYSE], { input: analysisInput(todo, flags), encoding: 'utf8', timeout: analysisTimeoutMs(todo.length) });
  remember(todo, flags, run.stdout ?? '');
}

let blockingAllowed = true;

/**
 * Runs `load` without any analysis that blocks (a running gateway's reload): a pattern not analysed in
 * the background beforehand (a file changed meanwhile) is refused as not analysed, and the reload fails.
 */
export function withoutBlockingAnalysis<T>(load: () => T): T {
  blockingAllowed = false;
  try {
    return load();
  } finally {
    blockingAllowed = true;
  }
}

/** The patterns among `sources` that have no verdict yet. */
export function patternsNotAnalysed(sources: readonly string[], flags: string): number {
  return notAnalysed(sources, flags).length;
}

/**
 * The pattern with every count made small: {m} as {1}, {m,} as {1,} (or {0,}), {m,M} as {1,2} (or
 * {0,2}), so that whether a repetition is fixed, optional or variable stays as it was. Classes and escapes
 * are left as they are.
 */
export function withSmallCounts(source: string): string {
  let out = '';
  for (let i = 0; i < source.length; ) {
    const end = atomEnd(source, i);
    if (end !== undefined) {
      out += source.slice(i, end);
      i = end;
      continue;
    }
    const counted = /^\{(\d+)(?:(,)(\d*))?\}/.exec(source.slice(i));
    if (counted) {
      const low = Math.min(Number(counted[1]), 1);
      out += !counted[2] ? `{${Math.max(low, 1)}}` : counted[3] === '' ? `{${low},}` : `{${low},${Math.max(low + 1, Math.min(Number(counted[3]), 2))}}`;
      i += counted[0].length;
      continue;
    }
    out += source[i];
    i++;
  }
  return out;
}

/**
 * The pattern with the counts of groups made unbounded ({m}, {m,M} as {1,}, or {0,} for {0,M}), and every
 * other count left as it is: whether a group's alternatives can match the same text, and so multiply
 * the ways a count tries, is then what the analysis of how the cost grows finds.
 */
export function withUnboundedGroups(source: string): string {
  let out = '';
  let afterGroup = false;
  for (let i = 0; i < source.length; ) {
    const end = atomEnd(source, i);
    if (end !== undefined) {
      out += source.slice(i, end);
      i = end;
      afterGroup = false;
      continue;
    }
    const counted = /^\{(\d+)(?:(,)(\d*))?\}/.exec(source.slice(i));
    if (counted && afterGroup) {
      out += `{${Math.min(Number(counted[1]), 1)},}`;
      i += counted[0].length;
      afterGroup = false;
      continue;
    }
    afterGroup = source[i] === ')';
    out += source[i];
    i++;
  }
  return out;
}

/**
 * The same analysis without blocking: a running gateway reloading its policy keeps serving meanwhile
 * (a policy's new patterns take seconds). The verdicts are kept, so the load that follows finds them.
 * Says how many patterns went unanalysed because the analysis failed (the caller logs it).
 */
export async function analysePatternsInBackground(sources: readonly string[], flags: string): Promise<{ failed: number }> {
  const todo = notAnalysed(sources, flags);
  if (todo.length === 0) return { failed: 0 };
  const stdout = await new Promise<string>((resolve) => {
    let child: ReturnType<typeof spawn>;
    try {
      child = spawn(process.execPath, ['-e', ANALYSE], { stdio: ['pipe', 'pipe', 'ignore'] });
    } catch {
      return resolve('');
    }
    // First: a spawn that fails (EMFILE, ENOMEM) says so by this event, and its pipes may be missing.
    child.on('error', () => resolve(''));
    if (!child.stdout || !child.stdin) return resolve('');
    // A gateway stopping does not wait for it: its reload has no policy to put in force any more.
    child.unref();
    (child.stdout as unknown as { unref(): void }).unref();
    let out = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (d: string) => (out += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), analysisTimeoutMs(todo.length));
    timer.unref();
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve(code === 0 ? out : '');
    });
    child.stdin.on('error', () => undefined);
    child.stdin.end(analysisInput(todo, flags));
  });
  // Patterns left without a verdict are refused by the load that follows (the reload fails, the policy
  // in force stays), and analysed again at the next one.
  return { failed: remember(todo, flags, stdout) };
}

/**
 * Whether a pattern can take super-linear time on some input: recheck's automaton analysis finds the
 * exponential cases a star-height check misses ("(\w|\d)+$", overlapping alternatives) and the
 * polynomial ones ("a.*b.*c", "\s*x\s*$": seconds on 50 KB of crafted text).
 */
function analysed(source: string, flags: string): Backtracking {
  analysePatterns([source], flags);
  return backtracking.get(`${flags}/${source}`) ?? { verdict: 'unknown', why: blockingAllowed ? 'failed' : 'not analysed' };
}

/** A back-reference (\1 … \9, \k<name>) outside a character class, where it would be an error anyway. */
function backReference(source: string): string | undefined {
  for (let i = 0; i < source.length; i++) {
    if (source[i] !== '\\') continue;
    const m = /^\\(?:[1-9]\d*|k<[^>]*>)/.exec(source.slice(i));
    if (m) return m[0];
    i++;
  }
  return undefined;
}

/**
 * Bounded repetitions in a row multiply the ways a pattern is tried at each place of the text:
 * "a[^\n]{0,80}b[^\n]{0,80}c" tries 81 × 81 at each "a", a second and more on a crafted 256 KB body, which
 * an analysis of how the cost grows with the text's length calls linear. The product of their ranges
 * ({m,M}: M − m + 1 ways; alternatives add up, a sequence multiplies) is bounded instead; nested ones are
 * refused as nested repetition.
 */
export const MAX_COUNTED_CHOICES = 256;

/**
 * Where an escape or a character class that starts at `i` ends, for the walks over a pattern's text:
 * the braces of \p{L}, \u{1F600} and \k<name>, and whatever a class holds, are no quantifier. A class
 * goes up to its closing bracket, escapes included. Undefined when neither starts there.
 */
function atomEnd(source: string, i: number): number | undefined {
  if (source[i] === '\\') {
    const braced = /^\\(?:[pPu]\{[^}]*\}|k<[^>]*>)/.exec(source.slice(i));
    return i + (braced ? braced[0].length : 2);
  }
  if (source[i] !== '[') return undefined;
  let j = i + 1;
  for (; j < source.length && source[j] !== ']'; j++) if (source[j] === '\\') j++;
  return j + 1;
}

/**
 * A counted repetition is also tried in full at each place of the text: "\w{20000}!" takes 20 000 steps at
 * each of them, linear in the text's length but seconds on a crafted 256 KB body (170 ms at 256 here). The
 * characters counted in a row (their largest count, nested ones multiplied; of alternatives, the longest)
 * are bounded too.
 */
export const MAX_COUNTED_LENGTH = 256;

export function countedChoices(source: string): number {
  return countedRepetitions(source).choices;
}

export function countedRepetitions(source: string): { choices: number; length: number } {
  let i = 0;
  // Alternatives are tried one or the other: their ways add up, and the longest counts. In a row, ways
  // multiply and lengths add up.
  const alternation = (): { ways: number; length: number } => {
    const first = sequence();
    let total = first.ways;
    let length = first.length;
    while (source[i] === '|') {
      i++;
      const next = sequence();
      total += next.ways;
      length = Math.max(length, next.length);
    }
    return { ways: total, length };
  };
  const sequence = (): { ways: number; length: number } => {
    let product = 1;
    let length = 0;
    while (i < source.length && source[i] !== '|' && source[i] !== ')') {
      let ways = 1;
      let inner = 0;
      const ch = source[i]!;
      const end = atomEnd(source, i);
      if (end !== undefined) i = end;
      else if (ch === '(') {
        i++;
        const prefix = /^\?(?::|=|!|<=|<!|<[A-Za-z_$][\w$]*>)/.exec(source.slice(i));
        if (prefix) i += prefix[0].length;
        const group = alternation();
        ways = group.ways;
        inner = group.length;
        i++; // ")"
      } else i++;
      // {m} is one way; {m,} is unbounded, which the backtracking analysis weighs.
      const counted = /^\{(\d+)(?:(,)(\d*))?\}\??/.exec(source.slice(i));
      if (counted) {
        if (counted[2] && counted[3]) ways *= Number(counted[3]) - Number(counted[1]) + 1;
        length += Number(counted[3] || counted[1]) * Math.max(1, inner);
        i += counted[0].length;
      } else length += inner;
      product *= ways;
    }
    return { ways: product, length };
  };
  const total = alternation();
  // A stray ")" (refused by the compiler first) ends the walk: what follows is read as another sequence.
  while (i < source.length) {
    i++;
    const next = alternation();
    total.ways *= next.ways;
    total.length += next.length;
  }
  return { choices: total.ways, length: total.length };
}

/**
 * A regular expression, compiled at load time. Patterns that can take more than linear time on crafted
 * input, which an abusive sender controls, are refused here: one message could stall every session.
 */
export function regex(flags = 'iu'): Schema<CompiledPattern> {
  return {
    expected: 'a regular expression',
    parse(value, path, issues) {
      if (typeof value !== 'string' || value === '') {
        issues.push({ path, message: `must be a regular expression (got ${typeName(value)})` });
        return undefined;
      }
      let compiled: RegExp;
      try {
        compiled = new RegExp(value, flags);
      } catch (err) {
        issues.push({ path, message: `is not a valid regular expression: ${(err as Error).message}` });
        return undefined;
      }
      if (!safeRegex(value)) {
        issues.push({
          path,
          message:
            'may take exponential time on crafted input (nested or overlapping repetition such as "(a+)+"); ' +
            'rewrite it without a repeated group that itself repeats',
        });
        return undefined;
      }
      // What a back-reference costs depends on what its group matched: no analysis bounds it.
      const ref = backReference(value);
      if (ref) {
        issues.push({ path, message: `uses a back-reference (${ref}), whose matching time cannot be shown to stay linear; one message could stall every session: write the pattern without it` });
        return undefined;
      }
      const { choices, length } = countedRepetitions(value);
      if (length > MAX_COUNTED_LENGTH) {
        issues.push({
          path,
          message:
            `counts ${length} characters in a row (more than ${MAX_COUNTED_LENGTH}), which are tried at each place of the text: one crafted message would stall every session; ` +
            'count fewer (a hash or a token is recognised by its first 32 or 64 characters), or match it otherwise',
        });
        return undefined;
      }
      if (choices > MAX_COUNTED_CHOICES) {
        issues.push({
          path,
          message:
            `has bounded repetitions that together try ${choices} ways at each place of the text (more than ${MAX_COUNTED_CHOICES}), and one crafted message would stall every session; ` +
            'narrow their ranges, or split the pattern into several conditions (all: [...])',
        });
        return undefined;
      }
      const found = analysed(value, flags);
      if (found.verdict === 'slow') {
        issues.push({
          path,
          message:
            `may take ${found.summary} time on crafted input (for example ${found.attack ?? 'a long run of matching characters'}), and one message would stall every session; ` +
            (found.countedGroup
              ? 'a counted group whose alternatives can match the same characters tries every way of splitting them ("(?:\\w|\\d){1,20}": 2^20 at each place of the text): make the alternatives exclusive, or write them as one class ("[\\w\\d]{1,20}")'
              : 'bound the repetitions ("[^\\n]{0,80}" rather than ".*") or anchor the pattern'),
        });
        return undefined;
      }
      if (found.verdict === 'unknown') {
        const why = {
          unsupported: 'a look-around, which the analysis cannot prove safe, and crafted inputs found no answer within a second',
          timeout: 'the analysis did not finish within a second, and crafted inputs found no answer either',
          failed: 'the analysis could not run; see the log, and try again',
          'not analysed': 'the file changed while the policy was being reloaded; the next reload analyses it',
        }[found.why];
        issues.push({ path, message: `could not be shown to match in linear time (${why}); one message could stall every session: write the pattern without the look-around or the long repetition, or split it into several conditions (all, any, not)` });
        return undefined;
      }
      return { source: value, regex: compiled };
    },
  };
}

export function list<T>(item: Schema<T>, opts: { min?: number; max?: number } = {}): Schema<T[]> {
  return {
    expected: `a list of ${item.expected}`,
    parse(value, path, issues) {
      if (!Array.isArray(value)) {
        issues.push({ path, message: `must be a list (got ${typeName(value)})` });
        return undefined;
      }
      if (opts.min !== undefined && value.length < opts.min) {
        issues.push({ path, message: `must have at least ${opts.min} entr${opts.min === 1 ? 'y' : 'ies'}` });
        return undefined;
      }
      if (opts.max !== undefined && value.length > opts.max) {
        issues.push({ path, message: `must have at most ${opts.max} entries` });
        return undefined;
      }
      const before = issues.length;
      const out = value.map((v, i) => item.parse(v, [...path, i], issues));
      return issues.length === before ? (out as T[]) : undefined;
    },
  };
}

type Shape = Record<string, Field<unknown>>;
type Out<S extends Shape> = { [K in keyof S]: S[K] extends Field<infer T> ? T : never };

export function required<T>(schema: Schema<T>): Field<T> {
  return { schema, optional: false };
}
export function optional<T>(schema: Schema<T>): Field<T | undefined> {
  return { schema, optional: true } as Field<T | undefined>;
}
export function withDefault<T>(schema: Schema<T>, value: T): Field<T> {
  return { schema, optional: true, default: value };
}
/** A nested mapping that may be left out entirely; then every key inside takes its own default. */
export function section<T>(schema: Schema<T>): Field<T> {
  return { schema, optional: true, defaultRaw: {} };
}

/** A mapping with known keys; unknown keys are errors (a typo must not be silently ignored). */
/** A plain mapping as YAML gives it: not a list, nor what a tag makes (a Map, a Set, a Date, bytes). */
function isMapping(value: unknown): value is Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value) as unknown;
  return proto === Object.prototype || proto === null;
}

export function obj<S extends Shape>(shape: S, opts: { expected?: string } = {}): Schema<Out<S>> {
  return {
    expected: opts.expected ?? 'a mapping',
    fields: shape,
    parse(value, path, issues) {
      if (value === null || value === undefined) value = {};
      if (!isMapping(value)) {
        issues.push({ path, message: `must be a mapping of keys to values (got ${typeName(value)})` });
        return undefined;
      }
      const input = value as Record<string, unknown>;
      const before = issues.length;
      const out: Record<string, unknown> = {};
      for (const key of Object.keys(input)) {
        // Own keys only: "constructor" or "__proto__" must not pass for a known key.
        if (!Object.hasOwn(shape, key)) {
          const known = Object.keys(shape);
          const hint = closest(key, known);
          issues.push({
            path: [...path, key],
            atKey: true,
            message: `is not a known key${hint ? ` (did you mean "${hint}"?)` : ''}; known keys: ${known.join(', ')}`,
          });
        }
      }
      for (const [key, field] of Object.entries(shape)) {
        const v = input[key];
        // `key:` with nothing after it is a value left out by mistake, not a request for the default:
        // taking it as absent would silently drop what was meant (a token, a limit). Sections may be empty.
        if (v === null && Object.hasOwn(input, key) && field.defaultRaw === undefined) {
          issues.push({ path: [...path, key], message: `has no value: give ${field.schema.expected}, or remove the line${field.default !== undefined ? ' to use the default' : field.optional ? ' to leave it unset' : ''}` });
          continue;
        }
        if (v === undefined || v === null) {
          if (field.defaultRaw !== undefined) {
            const parsed = field.schema.parse(field.defaultRaw, [...path, key], issues);
            if (parsed !== undefined) out[key] = parsed;
          } else if (field.default !== undefined) out[key] = structuredClone(field.default);
          else if (!field.optional) issues.push({ path: [...path, key], message: `is required (${field.schema.expected})` });
          continue;
        }
        const parsed = field.schema.parse(v, [...path, key], issues);
        if (parsed !== undefined) out[key] = parsed;
      }
      return issues.length === before ? (out as Out<S>) : undefined;
    },
  };
}

/** A mapping of operator-chosen names to values of one schema. */
export function record<T>(values: Schema<T>, opts: { key?: RegExp; keyExpected?: string } = {}): Schema<Record<string, T>> {
  return {
    expected: `a mapping of names to ${values.expected}`,
    values: values as Schema<unknown>,
    parse(value, path, issues) {
      if (value === null || value === undefined) return {};
      if (!isMapping(value)) {
        issues.push({ path, message: `must be a mapping of names to values (got ${typeName(value)})` });
        return undefined;
      }
      const before = issues.length;
      const out: Record<string, T> = {};
      for (const [key, v] of Object.entries(value as Record<string, unknown>)) {
        if (opts.key && !opts.key.test(key)) {
          issues.push({ path: [...path, key], atKey: true, message: `is not a valid name: ${opts.keyExpected ?? opts.key.source}` });
          continue;
        }
        const parsed = values.parse(v, [...path, key], issues);
        // Defined, not assigned: a name "__proto__" is an entry like any other, not the object's prototype.
        if (parsed !== undefined) Object.defineProperty(out, key, { value: parsed, enumerable: true, writable: true, configurable: true });
      }
      return issues.length === before ? out : undefined;
    },
  };
}

/** Post-validation refinement: runs only when the inner schema parsed cleanly. */
export function refine<T>(schema: Schema<T>, check: (value: T, path: Path) => Issue[]): Schema<T> {
  return {
    ...schema,
    parse(value, path, issues) {
      const parsed = schema.parse(value, path, issues);
      if (parsed === undefined) return undefined;
      const extra = check(parsed, path);
      issues.push(...extra);
      return extra.length ? undefined : parsed;
    },
  };
}

/** Accepts either of two shapes, chosen by a predicate on the raw value (keeps error messages precise). */
export function either<A, B>(pick: (value: unknown) => 'a' | 'b', a: Schema<A>, b: Schema<B>, expected: string): Schema<A | B> {
  const fields = a.fields ?? b.fields;
  return {
    expected,
    ...(fields ? { fields, whole: true } : {}),
    parse(value, path, issues) {
      return pick(value) === 'a' ? a.parse(value, path, issues) : b.parse(value, path, issues);
    },
  };
}

function closest(word: string, candidates: string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const c of candidates) {
    const d = editDistance(word.toLowerCase(), c.toLowerCase());
    if (d < bestDistance) {
      bestDistance = d;
      best = c;
    }
  }
  return bestDistance <= Math.max(2, Math.floor(word.length / 3)) ? best : undefined;
}

function editDistance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = tmp;
    }
  }
  return row[b.length]!;
}
