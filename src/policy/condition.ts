// The condition language of policy rules: small, declarative, no evaluation of code.
//
//   when:
//     all:                                  # also: any: [...], not: {...}
//       - subject: { matches: 'urgent|verify your account' }
//       - recipients.count: { gt: 20 }
//       - attachments.detected_types: { in: [executable, script] }
//
// A mapping with several fields means all of them; a bare value means `equals`. On a list field
// (recipients, urls, …) an operator holds when it holds for at least one element, and `empty: false`
// means the list has at least one element. Text comparisons ignore case. A field whose fact is absent (not computed) satisfies only `exists: false`.
// Conditions are checked and compiled once, at load: unknown fields, operators that do not fit the
// field's type and unsafe regular expressions are errors with their position.

import { regex, type Issue, type Path, type Schema } from '../validate/schema.js';
import { asciiDomain, comparableAddress, type Facts } from './facts.js';
import { lookupField, PHASE_ORDER, type FieldSpec, type FieldType, type RulePhase } from './fields.js';

export interface Condition {
  test(f: Facts): boolean;
  /** the same evaluation, recording each leaf's outcome for `douane policy explain` */
  explain(f: Facts, out: string[]): boolean;
  /** the earliest phase at which every field it names is known */
  phase: RulePhase;
  fields: string[];
  /** values compared with equals or in, by field: checked against the policy's own names (plans) once loaded */
  compared: { field: string; path: Path; values: string[] }[];
}

type Leaf = (value: unknown) => boolean;

/** Rule patterns match regardless of case, and read as Unicode (\p{L} is a letter). */
export const PATTERN_FLAGS = 'iu';

const STRING_OPS = ['equals', 'in', 'matches', 'contains', 'starts_with', 'ends_with', 'exists'] as const;
const LIST_OPS = [...STRING_OPS, 'empty'] as const;
const NUMBER_OPS = ['equals', 'in', 'gt', 'gte', 'lt', 'lte', 'exists'] as const;
const BOOL_OPS = ['equals', 'exists'] as const;

/** For domain fields: the domain or any of its subdomains (a phishing list names the site, not each host of it). */
const DOMAIN_OPS = ['in_domains'] as const;

function opsFor(spec: FieldSpec): readonly string[] {
  const { type } = spec;
  const ops = type === 'number' ? NUMBER_OPS : type === 'bool' ? BOOL_OPS : type === 'strings' ? LIST_OPS : STRING_OPS;
  return spec.domain ? [...ops, ...DOMAIN_OPS] : ops;
}

const lower = (v: unknown) => String(v).toLowerCase();
// Text is compared composed (NFC, as RFC 6532 asks of addresses): "é" written as "e" and a combining accent
// is the same letter in a policy file and in a message, so a subject in decomposed form does not slip past a
// rule that names it. A value written in a policy file is composed once, at load.
const lowerArg = (v: unknown) => String(v).normalize('NFC').toLowerCase();
// A text made of Latin-1 characters only (U+0000–U+00FF: most mail, and all ASCII) is already composed: none
// of them decomposes or combines with what precedes it. Such a text is not copied: normalize() turns it into
// two-byte characters first, about 1 ms per 100 KB, where this test costs a few microseconds.
const BEYOND_LATIN1 = /[^\u0000-\u00ff]/;
const composed = (text: string): string => (BEYOND_LATIN1.test(text) ? text.normalize('NFC') : text);

function composedValue(value: unknown): unknown {
  if (typeof value === 'string') return composed(value);
  return Array.isArray(value) ? value.map((v) => (typeof v === 'string' ? composed(v) : v)) : value;
}

/**
 * Field values are computed once per evaluation, not once per rule: with a few hundred rules, recomputing
 * (URL parsing, lower-casing a body) per rule would cost more than the rules. They are kept for the facts
 * being evaluated, until another facts object is, or forgetFieldValues() (an evaluation's start and end).
 * One slot, not a map of facts to values: a lookup in that costs more than most leaves themselves.
 */
let evaluated: Facts | undefined;
let values = new Map<string, unknown>();

export function forgetFieldValues(): void {
  evaluated = undefined;
  values = new Map();
}

function fieldValue(f: Facts, key: string, compute: (f: Facts) => unknown): unknown {
  if (f !== evaluated) {
    evaluated = f;
    values = new Map();
  }
  const known = values.get(key);
  if (known !== undefined || values.has(key)) return known;
  const v = compute(f);
  values.set(key, v);
  return v;
}

function lowered(value: unknown): unknown {
  if (value === undefined || value === null) return value;
  return Array.isArray(value) ? value.map(lower) : lower(value);
}

/** Text operators compare lower-cased values, which the leaf receives already lower-cased. */
const LOWERED_OPS = new Set(['equals', 'in', 'in_domains', 'contains', 'starts_with', 'ends_with']);

/** Builds one operator's test over a single (non-list) value. */
function compileOp(op: string, arg: unknown, spec: FieldSpec, path: Path, issues: Issue[]): Leaf | undefined {
  const bad = (expected: string) => {
    issues.push({ path, message: `must be ${expected} for ${op} on a ${spec.type === 'strings' ? 'list of text' : spec.type} field (got ${JSON.stringify(arg)})` });
    return undefined;
  };
  // NaN (YAML's .nan) equals nothing, and infinities no count: a condition on them would never hold.
  const scalarOk = (v: unknown) => (spec.type === 'number' ? typeof v === 'number' && Number.isFinite(v) : spec.type === 'bool' ? typeof v === 'boolean' : typeof v === 'string');
  // YAML reads an unquoted 0123 as 123, 1.10 as 1.1 and 0x10 as 16: a text field compared with what YAML
  // made of the number would never see the text as written. As str() says of settings: quote it.
  const unquoted = spec.type === 'string' || spec.type === 'strings' ? (Array.isArray(arg) ? arg : [arg]).find((v) => typeof v === 'number' || typeof v === 'boolean') : undefined;
  if (unquoted !== undefined) {
    const kept = typeof unquoted === 'boolean' || Number.isSafeInteger(unquoted);
    issues.push({ path, message: `must be text, in quotes: YAML reads ${String(unquoted)} unquoted as a ${typeof unquoted} (${kept ? `write "${String(unquoted)}" if that is what you meant` : 'write it in quotes, as you meant it'})` });
    return undefined;
  }
  // A field with a fixed set of values: anything else can never match, so it is a typo ("infectd").
  const unknown = spec.values && (op === 'equals' || op === 'in') ? (Array.isArray(arg) ? arg : [arg]).find((v) => !spec.values!.includes(String(v).toLowerCase())) : undefined;
  if (unknown !== undefined) {
    issues.push({ path, message: `${JSON.stringify(unknown)} is not a value this field takes; it takes: ${spec.values!.join(', ')}` });
    return undefined;
  }
  switch (op) {
    case 'equals': {
      if (!scalarOk(arg)) return bad(spec.type === 'number' ? 'a number' : spec.type === 'bool' ? 'true or false' : 'a text value');
      if (spec.type === 'number' || spec.type === 'bool') return (v) => v === arg;
      const want = spec.domain ? asciiDomain(String(arg)) : spec.address ? comparableAddress(String(arg)) : lowerArg(arg);
      return (v) => v === want;
    }
    case 'in': {
      if (!Array.isArray(arg) || arg.length === 0 || !arg.every(scalarOk)) return bad('a non-empty list of values');
      if (spec.type === 'number') {
        const set = new Set(arg as number[]);
        return (v) => set.has(v as number);
      }
      const set = new Set(spec.domain ? arg.map((a) => asciiDomain(String(a))) : spec.address ? arg.map((a) => comparableAddress(String(a))) : arg.map(lowerArg));
      return (v) => set.has(v as string);
    }
    case 'in_domains': {
      // A plain domain already covers its subdomains: "*.x" or ".x" would read as "subdomains only", which this is not.
      if (!Array.isArray(arg) || arg.length === 0 || !arg.every((a) => typeof a === 'string' && /^[^\s*.@/:]+(\.[^\s*.@/:]+)*$/u.test(a))) return bad('a non-empty list of domains, each written plainly (bank.example covers login.bank.example)');
      const set = new Set(arg.map((a) => asciiDomain(String(a))));
      // The value and each parent of it, label by label: login.bank.test is under bank.test, evilbank.test is not.
      return (v) => {
        for (let d = (v as string).replace(/\.$/, ''); ; ) {
          if (set.has(d)) return true;
          const dot = d.indexOf('.');
          if (dot < 0) return false;
          d = d.slice(dot + 1);
        }
      };
    }
    case 'contains':
    case 'starts_with':
    case 'ends_with': {
      if (typeof arg !== 'string' || arg === '') return bad('a non-empty text');
      const want = lowerArg(arg);
      if (op === 'contains') return (v) => (v as string).includes(want);
      if (op === 'starts_with') return (v) => (v as string).startsWith(want);
      return (v) => (v as string).endsWith(want);
    }
    case 'matches': {
      // Composed like the text it is matched against: "e" and a combining accent written in a pattern is "é".
      const compiled = regex(PATTERN_FLAGS).parse(typeof arg === 'string' ? arg.normalize('NFC') : arg, path, issues);
      if (!compiled) return undefined;
      const re = compiled.regex;
      return (v) => re.test(String(v));
    }
    case 'gt':
    case 'gte':
    case 'lt':
    case 'lte': {
      if (typeof arg !== 'number' || !Number.isFinite(arg)) return bad('a number');
      const n = arg;
      if (op === 'gt') return (v) => typeof v === 'number' && v > n;
      if (op === 'gte') return (v) => typeof v === 'number' && v >= n;
      if (op === 'lt') return (v) => typeof v === 'number' && v < n;
      return (v) => typeof v === 'number' && v <= n;
    }
    default:
      return undefined;
  }
}

// In double quotes YAML reads "\b" as a backspace, "\0" as NUL, "\e" as ESC: a pattern written
// "\bfree money\b" loads and never matches. No header or body text holds these characters (tab, CR and
// LF aside), so a value holding one is that mistake.
const CONTROL = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f\u0085\u2028\u2029]/;
const CONTROL_NAMES: Record<string, string> = { '\u0000': 'NUL, "\\0"', '\u0007': 'bell, "\\a"', '\u0008': 'backspace, "\\b"', '\u000b': 'vertical tab, "\\v"', '\u000c': 'form feed, "\\f"', '\u001b': 'escape, "\\e"', '\u0085': 'next line, "\\N"', '\u2028': 'line separator, "\\L"', '\u2029': 'paragraph separator, "\\P"' };

function controlIn(arg: unknown): string | undefined {
  for (const value of Array.isArray(arg) ? arg : [arg]) {
    if (typeof value !== 'string') continue;
    const found = CONTROL.exec(value)?.[0];
    if (found === undefined) continue;
    const code = `U+${found.charCodeAt(0).toString(16).toUpperCase().padStart(4, '0')}`;
    const name = CONTROL_NAMES[found];
    return `holds the control character ${code}${name ? ` (${name} in double quotes)` : ''}, which no mail text holds: write patterns and texts with backslashes in single quotes ('\\bword\\b'), where YAML keeps them as written`;
  }
  return undefined;
}

function compileField(name: string, spec: FieldSpec, raw: unknown, path: Path, issues: Issue[]): Condition | undefined {
  const opMap: Record<string, unknown> =
    raw !== null && typeof raw === 'object' && !Array.isArray(raw) ? (raw as Record<string, unknown>) : { equals: raw };
  const allowed = opsFor(spec);
  const tests: { op: string; leaf?: Leaf; exists?: boolean; empty?: boolean; lowered?: boolean }[] = [];
  const compared: Condition['compared'] = [];
  const before = issues.length;
  if (Object.keys(opMap).length === 0) issues.push({ path, message: `needs an operator: ${allowed.join(', ')}` });
  for (const [op, arg] of Object.entries(opMap)) {
    const opPath = raw === opMap ? [...path, op] : path;
    if (!allowed.includes(op)) {
      issues.push({ path: opPath, atKey: raw === opMap, message: `is not an operator for ${name} (a ${spec.type === 'strings' ? 'list of text' : spec.type} field); use one of: ${allowed.join(', ')}` });
      continue;
    }
    if (op === 'exists' || op === 'empty') {
      if (typeof arg !== 'boolean') issues.push({ path: opPath, message: 'must be true or false' });
      else tests.push(op === 'exists' ? { op, exists: arg } : { op, empty: arg });
      continue;
    }
    const control = controlIn(arg);
    if (control) {
      issues.push({ path: opPath, message: control });
      continue;
    }
    const leaf = compileOp(op, arg, spec, opPath, issues);
    if (leaf) tests.push({ op, leaf, lowered: LOWERED_OPS.has(op) && spec.type !== 'number' && spec.type !== 'bool' });
    if (leaf && (op === 'equals' || op === 'in')) compared.push({ field: name, path: opPath, values: (Array.isArray(arg) ? arg : [arg]).map(String) });
  }
  if (issues.length > before) return undefined;
  const isList = spec.type === 'strings';
  const isText = spec.type === 'string' || isList;
  const lowerKey = `lower:${name}`;
  const valueOf = (f: Facts) => fieldValue(f, name, isText ? (g) => composedValue(spec.get(g)) : spec.get);
  const loweredOf = (f: Facts) => fieldValue(f, lowerKey, (g) => lowered(valueOf(g)));
  const test = (f: Facts): boolean => {
    const value = valueOf(f);
    const present = value !== undefined && value !== null;
    for (const t of tests) {
      if (t.exists !== undefined) {
        if (present !== t.exists) return false;
        continue;
      }
      if (!present) return false;
      if (t.empty !== undefined) {
        if (((value as unknown[]).length === 0) !== t.empty) return false;
        continue;
      }
      const v = t.lowered ? loweredOf(f) : value;
      const holds = isList ? (v as unknown[]).some(t.leaf!) : t.leaf!(v);
      if (!holds) return false;
    }
    return true;
  };
  return {
    phase: spec.phase,
    fields: [name],
    compared,
    test,
    explain: (f, out) => {
      const ok = test(f);
      out.push(`${ok ? 'match' : 'no match'}: ${name} ${JSON.stringify(opMap)} (value: ${preview(valueOf(f))})`);
      return ok;
    },
  };
}

function preview(value: unknown): string {
  if (value === undefined) return 'not known';
  const text = JSON.stringify(value);
  return text.length > 120 ? text.slice(0, 117) + '…' : text;
}

function combine(kind: 'all' | 'any', parts: Condition[]): Condition {
  const phase = parts.reduce<RulePhase>((p, c) => (PHASE_ORDER[c.phase] > PHASE_ORDER[p] ? c.phase : p), 'mail');
  const fields = [...new Set(parts.flatMap((p) => p.fields))];
  const compared = parts.flatMap((p) => p.compared);
  if (kind === 'all') {
    return {
      phase,
      fields,
      compared,
      test: (f) => parts.every((p) => p.test(f)),
      explain: (f, out) => {
        for (const p of parts) if (!p.explain(f, out)) return false;
        return true;
      },
    };
  }
  return {
    phase,
    fields,
    compared,
    test: (f) => parts.some((p) => p.test(f)),
    explain: (f, out) => {
      for (const p of parts) if (p.explain(f, out)) return true;
      return false;
    },
  };
}

function compileNode(raw: unknown, path: Path, issues: Issue[], limitNames: readonly string[], depth: number): Condition | undefined {
  if (depth > 16) {
    issues.push({ path, message: 'is nested more than 16 levels deep' });
    return undefined;
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    issues.push({ path, message: 'must be a condition: a mapping of field names to operators, or all/any/not' });
    return undefined;
  }
  const entries = Object.entries(raw as Record<string, unknown>);
  if (entries.length === 0) {
    issues.push({ path, message: 'is an empty condition' });
    return undefined;
  }
  const combinators = entries.filter(([k]) => k === 'all' || k === 'any' || k === 'not');
  if (combinators.length && entries.length > 1) {
    issues.push({ path, message: 'must hold either one of all/any/not, or field conditions, not both (wrap them in all: [...])' });
    return undefined;
  }
  if (combinators.length) {
    const [kind, value] = combinators[0]!;
    if (kind === 'not') {
      const inner = compileNode(value, [...path, 'not'], issues, limitNames, depth + 1);
      if (!inner) return undefined;
      return {
        phase: inner.phase,
        fields: inner.fields,
        compared: inner.compared,
        test: (f) => !inner.test(f),
        explain: (f, out) => {
          const sub: string[] = [];
          const r = !inner.explain(f, sub);
          out.push(`not (${sub.join('; ')}) → ${r ? 'match' : 'no match'}`);
          return r;
        },
      };
    }
    if (!Array.isArray(value) || value.length === 0) {
      issues.push({ path: [...path, kind], message: `must be a non-empty list of conditions` });
      return undefined;
    }
    const before = issues.length;
    const parts = value.map((v, i) => compileNode(v, [...path, kind, i], issues, limitNames, depth + 1));
    if (issues.length > before) return undefined;
    return combine(kind as 'all' | 'any', parts as Condition[]);
  }
  const before = issues.length;
  const parts: Condition[] = [];
  for (const [name, value] of entries) {
    const spec = lookupField(name, limitNames);
    if (!spec) {
      issues.push({ path: [...path, name], atKey: true, message: `is not a known field; see \`douane policy fields\` (e.g. sender, recipients.count, subject, body, urls, attachments.detected_types, scan.result, limits.exceeded, bulk.global_recipients, header.<Name>)` });
      continue;
    }
    const c = compileField(name, spec, value, [...path, name], issues);
    if (c) parts.push(c);
  }
  if (issues.length > before) return undefined;
  return parts.length === 1 ? parts[0] : combine('all', parts);
}

export function conditionSchema(limitNames: readonly string[]): Schema<Condition> {
  return {
    expected: 'a condition',
    parse(value: unknown, path: Path, issues: Issue[]) {
      return compileNode(value, path, issues, limitNames, 0);
    },
  };
}
