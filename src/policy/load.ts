// Loads a policy directory: every *.yaml file at its top level (tests/ holds the policy's own tests and is
// not policy). Each top-level key of a file is a section (plans, rules, strikes, …); a section may live in
// any file but only in one. The whole directory validates or nothing is loaded: every problem is reported
// with file:line:col and key, including references between files (a plan or strike event that does not exist).

import { createHash } from 'node:crypto';
import { readdirSync, statSync } from 'node:fs';
import { isAbsolute, join, relative } from 'node:path';
import { analysePatterns, analysePatternsInBackground, formatPath, patternsNotAnalysed, type Issue } from '../validate/schema.js';
import { PATTERN_FLAGS } from './condition.js';
import { readYamlFile, ValidationError, YamlSource, type Problem } from '../validate/source.js';
import { Policy, type PolicyFile, type Rule } from './policy.js';
import { policySchema, SECTIONS, type PolicyDocument } from './schema.js';
import { asciiDomain, comparableAddress } from './facts.js';

/** Paths as people type them: relative to the working directory when inside it. */
export function shortPath(path: string): string {
  const rel = relative(process.cwd(), path);
  return rel && !rel.startsWith('..') && !isAbsolute(rel) ? rel : path;
}

export function policyFiles(dir: string): string[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch (err) {
    throw new ValidationError([{ file: dir, key: '(top level)', message: `cannot be read: ${(err as Error).message}` }]);
  }
  // Dot files are editors' locks and backups (".#rules.yaml", often a dangling link), never policy.
  const yaml = names.filter((n) => /\.ya?ml$/.test(n) && !n.startsWith('.')).sort();
  const problems: Problem[] = [];
  const files = yaml.filter((n) => {
    try {
      return statSync(join(dir, n)).isFile();
    } catch (err) {
      problems.push({ file: join(dir, n), key: '(top level)', message: `cannot be read: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'a link to a file that does not exist' : (err as Error).message}` });
      return false;
    }
  });
  if (problems.length) throw new ValidationError(problems);
  return files.map((n) => join(dir, n));
}

/** A short, stable version of the policy: the hash of its files' names and contents. */
export function policyVersion(dir: string, files: { path: string; text: string }[]): string {
  const h = createHash('sha256');
  for (const f of files) h.update(relative(dir, f.path)).update('\0').update(f.text).update('\0');
  return h.digest('hex').slice(0, 12);
}

export function loadPolicy(dir: string, opts: { display?: (path: string) => string } = {}): Policy {
  const display = opts.display ?? shortPath;
  const paths = policyFiles(dir);
  if (paths.length === 0) throw new ValidationError([{ file: display(dir), key: '(top level)', message: 'holds no policy files (*.yaml)' }]);
  const texts = paths.map((path) => ({ path, text: readYamlFile(path, display(path)) }));

  const problems: Problem[] = [];
  const merged: Record<string, unknown> = {};
  const owner = new Map<string, YamlSource>();
  const files: PolicyFile[] = [];
  for (const { path, text } of texts) {
    const { source, value, problems: syntax } = YamlSource.parse(display(path), text);
    problems.push(...syntax);
    if (syntax.length) continue;
    if (value === null || value === undefined) {
      // Most likely a file caught while being written (emptied first, as cp and editors do): in force, it
      // would take its sections' rules away. A file meant to hold nothing has no place in the directory.
      problems.push({ file: display(path), line: 1, col: 1, key: '(top level)', message: `defines no section (${SECTIONS.join(', ')}): an empty file is refused, in case it is one being written; remove it if it is meant to be empty` });
      continue;
    }
    if (typeof value !== 'object' || Array.isArray(value)) {
      problems.push({ file: display(path), line: 1, col: 1, key: '(top level)', message: `must be a mapping of sections (${SECTIONS.join(', ')})` });
      continue;
    }
    const sections: string[] = [];
    for (const [key, v] of Object.entries(value as Record<string, unknown>)) {
      if (!SECTIONS.includes(key)) {
        problems.push(source.problem({ path: [key], atKey: true, message: `is not a policy section; sections are: ${SECTIONS.join(', ')}` }));
        continue;
      }
      const previous = owner.get(key);
      if (previous) {
        const pos = previous.position([key], true);
        problems.push(source.problem({ path: [key], atKey: true, message: `is already defined in ${previous.file}:${pos.line}; a section lives in one file` }));
        continue;
      }
      owner.set(key, source);
      merged[key] = v;
      sections.push(key);
    }
    files.push({ path: display(path), sections });
  }
  if (problems.length) throw new ValidationError(problems);

  const locate = (issue: Issue): Problem => {
    const src = owner.get(String(issue.path[0]));
    if (src) return src.problem(issue);
    // A required section that no file defines.
    return { file: display(dir), key: formatPath(issue.path), message: `${issue.message}: add it to one of the policy files` };
  };
  // Every rule pattern analysed at once, in one child process, before the rules are compiled one by one.
  analysePatterns(patternsIn(merged), PATTERN_FLAGS);
  const issues: Issue[] = [];
  const doc = policySchema().parse(merged, [], issues);
  if (issues.length || !doc) throw new ValidationError(issues.map(locate));

  const refIssues = crossReferences(doc);
  if (refIssues.length) throw new ValidationError(refIssues.map(locate));

  const rulesSource = owner.get('rules');
  const rules: Rule[] = doc.rules.map((r, i) => {
    const pos = rulesSource ? rulesSource.position(['rules', i]) : { line: 0 };
    const weight = r.strike ? (r.strike.weight ?? doc.strikes.events[r.strike.event]!.weight) : undefined;
    return {
      id: r.id,
      description: r.description,
      article: r.article,
      phase: r.phase ?? r.when.phase,
      condition: r.when,
      action: r.action,
      reason: r.reason,
      message: r.message,
      strike: r.strike && weight !== undefined ? { event: r.strike.event, weight } : undefined,
      mode: r.mode,
      source: `${rulesSource?.file ?? display(dir)}:${pos.line}`,
    };
  });
  return new Policy(policyVersion(dir, texts), dir, files, deepFreeze(doc), rules);
}

/**
 * Analyses the new patterns of a policy directory without blocking (a running gateway reloading its policy
 * keeps serving meanwhile), so that the loadPolicy that follows finds them done. Whatever is wrong with
 * the files is left to loadPolicy to report.
 */
export async function analysePolicyPatterns(dir: string): Promise<{ failed: number }> {
  const read = (): string[] | undefined => {
    const patterns: string[] = [];
    try {
      for (const path of policyFiles(dir)) patternsIn(YamlSource.parse(path, readYamlFile(path, path)).value, patterns);
    } catch {
      return undefined;
    }
    return patterns;
  };
  // A file written again meanwhile (an editor saving twice, a checkout) brings patterns the first round
  // did not see: a few rounds, so that the load that follows, which never blocks, finds them analysed.
  for (let round = 1; ; round++) {
    const patterns = read();
    if (!patterns) return { failed: 0 };
    const { failed } = await analysePatternsInBackground(patterns, PATTERN_FLAGS);
    const after = read();
    if (failed || round === 3 || !after || patternsNotAnalysed(after, PATTERN_FLAGS) === 0) return { failed };
  }
}

/** The `matches` values anywhere in the policy (rule conditions nest: all, any, not). */
function patternsIn(value: unknown, out: string[] = []): string[] {
  if (Array.isArray(value)) for (const v of value) patternsIn(v, out);
  else if (value !== null && typeof value === 'object') {
    for (const [k, v] of Object.entries(value)) {
      // Composed, as the condition compiles it (src/policy/condition.ts).
      if (k === 'matches' && typeof v === 'string') out.push(v.normalize('NFC'));
      else patternsIn(v, out);
    }
  }
  return out;
}

function crossReferences(doc: PolicyDocument): Issue[] {
  const issues: Issue[] = [];
  const plans = Object.keys(doc.plans);
  const planRef = (name: string | undefined, path: (string | number)[]) => {
    if (name !== undefined && !Object.hasOwn(doc.plans, name)) issues.push({ path, message: `names plan "${name}", which is not defined in plans (defined: ${plans.join(', ')})` });
  };
  planRef(doc.default_plan, ['default_plan']);
  for (const [a, o] of Object.entries(doc.accounts)) planRef(o.plan, ['accounts', a, 'plan']);
  for (const [d, o] of Object.entries(doc.domains)) planRef(o.plan, ['domains', d, 'plan']);
  // Two spellings of one account or domain (case, quotes, xn-- or Unicode): one would silently win.
  const sameAs = (kind: 'accounts' | 'domains', canonical: (k: string) => string) => {
    const first = new Map<string, string>();
    for (const k of Object.keys(doc[kind])) {
      const c = canonical(k);
      const earlier = first.get(c);
      if (earlier !== undefined) issues.push({ path: [kind, k], atKey: true, message: `is the same ${kind === 'accounts' ? 'account' : 'domain'} as ${kind}.${earlier} (compared as ${c}): merge the two entries` });
      else first.set(c, k);
    }
  };
  sameAs('accounts', comparableAddress);
  sameAs('domains', asciiDomain);

  const events = Object.keys(doc.strikes.events);
  const eventRef = (name: string | undefined, path: (string | number)[]) => {
    if (name !== undefined && !Object.hasOwn(doc.strikes.events, name)) issues.push({ path, message: `names strike event "${name}", which is not defined in strikes.events (defined: ${events.join(', ')})` });
  };
  eventRef(doc.auth.strike, ['auth', 'strike']);
  const seen = new Map<string, number>();
  doc.rules.forEach((r, i) => {
    if (r.strike) eventRef(r.strike.event, ['rules', i, 'strike']);
    // A plan compared in a rule must exist: "entreprize" would never match, silently.
    for (const c of r.when.compared) {
      if (c.field !== 'account.plan') continue;
      const missing = c.values.find((v) => !Object.hasOwn(doc.plans, v.toLowerCase()));
      if (missing !== undefined) issues.push({ path: c.path, message: `names plan "${missing}", which is not defined in plans (defined: ${plans.join(', ')})` });
    }
    const first = seen.get(r.id);
    if (first !== undefined) issues.push({ path: ['rules', i, 'id'], message: `"${r.id}" is already the id of rules[${first}]; rule ids must be unique` });
    else seen.set(r.id, i);
  });
  let previous = 0;
  doc.strikes.ladder.forEach((step, i) => {
    if (step.at <= previous) issues.push({ path: ['strikes', 'ladder', i, 'at'], message: `must be greater than the previous step's (${previous}): the ladder goes up` });
    previous = step.at;
    if (step.action === 'throttle' && (step.factor === undefined || step.for === undefined)) {
      issues.push({ path: ['strikes', 'ladder', i], message: 'throttle needs factor (0 to 1, the share of the plan\'s limits left) and for (how long)' });
    }
    if (step.action === 'suspend_account' && step.for !== undefined) {
      issues.push({ path: ['strikes', 'ladder', i, 'for'], message: 'is not for suspend_account: the lock in the lifecycle API lasts until a person reinstates the account (for a timed block, use suspend_sending)' });
    }
    // A key the step's action does not read would be taken for one that does something.
    if (step.action !== 'throttle' && step.factor !== undefined) {
      issues.push({ path: ['strikes', 'ladder', i, 'factor'], message: `is not for ${step.action}: only a throttle lowers the limits by a factor` });
    }
    if (step.action === 'notify' && step.for !== undefined) {
      issues.push({ path: ['strikes', 'ladder', i, 'for'], message: 'is not for notify: a warning lasts no time (throttle and suspend_sending take a for)' });
    }
    if (step.action === 'throttle' && step.factor === 1) {
      issues.push({ path: ['strikes', 'ladder', i, 'factor'], message: 'must be under 1: a throttle to the whole of the limits changes nothing' });
    }
  });
  return issues;
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object' && !Object.isFrozen(value) && !(value instanceof RegExp)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}
