// The policy's own tests (policies/tests/*.yaml), run by `douane policy test` like `opa test`: each case
// is a message, an envelope and the facts that need live services, and the outcome the policy must give.

import { existsSync, readFileSync } from 'node:fs';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import type { Config } from '../config/schema.js';
import { bool, int, list, num, obj, oneOf, optional, record, required, str, withDefault, type Issue } from '../validate/schema.js';
import { readYamlFile, ValidationError, YamlSource, type Problem } from '../validate/source.js';
import { ACCOUNT_STATUSES } from '../lifecycle/types.js';
import { MESSAGE_LIMITS, RECIPIENT_LIMITS } from './fields.js';
import { policyFiles } from './load.js';
import { evaluateOffline, type OfflineOutcome } from './offline.js';
import type { Policy } from './policy.js';

/** The limits of one kind, named as the limiter names them: a misspelt one would make a test pass for nothing. */
const limitsGiven = (names: readonly string[]) =>
  obj({
    exceeded: required(list(oneOf(...names))),
    retry_after: optional(int({ min: 0 })),
    usage: optional(record(int({ min: 0 }), { key: new RegExp(`^(?:${names.join('|')})$`), keyExpected: `one of ${names.join(', ')}` })),
  });

/** Facts a test case or `policy explain --given` sets instead of computing them. */
export const givenSchema = obj({
  account_status: optional(oneOf(...ACCOUNT_STATUSES)),
  /** the plan the lifecycle API reports */
  account_plan: optional(str()),
  scan: optional(obj({ result: required(oneOf('clean', 'infected', 'error', 'skipped')), signature: optional(str()), detail: optional(str()) })),
  limits: optional(limitsGiven(MESSAGE_LIMITS)),
  recipient_limits: optional(limitsGiven(RECIPIENT_LIMITS)),
  bulk: optional(obj({ account_recipients: required(int({ min: 0 })), global_recipients: required(int({ min: 0 })), global_accounts: required(int({ min: 0 })), fingerprint: optional(str()), degraded: optional(bool()) })),
  baseline_ratio: optional(num({ min: 0 })),
});

const caseSchema = obj({
  name: required(str()),
  message: optional(str()),
  account: required(str()),
  sender: optional(str({ nonEmpty: false })),
  recipients: withDefault(list(str(), { min: 1 }), ['someone@example.net']),
  listener: withDefault(oneOf('starttls', 'tls', 'trusted'), 'starttls'),
  given: optional(givenSchema),
  expect: required(
    obj({
      action: required(oneOf('accept', 'tempfail', 'reject', 'quarantine')),
      rule: optional(str()),
      reason: optional(str()),
      phase: optional(oneOf('mail', 'rcpt', 'data')),
      tags: optional(list(str())),
      would: optional(list(str())),
      strikes: optional(list(str())),
      /** recipients refused at RCPT while the others went on (the outcome is then the message's) */
      refused_recipients: optional(list(str())),
    }),
  ),
});

const testFileSchema = obj({ cases: required(list(caseSchema, { min: 1 })) });

type TestCase = NonNullable<ReturnType<typeof caseSchema.parse>>;

export interface CaseResult {
  file: string;
  line: number;
  name: string;
  passed: boolean;
  failures: string[];
  outcome?: OfflineOutcome;
}

export interface TestRun {
  results: CaseResult[];
  passed: number;
  failed: number;
}

/** Test files of a policy directory: tests/*.yaml. */
/** The policy's test files; none without a tests/ directory. A file that cannot be read is named (ValidationError). */
export function testFiles(policyDir: string): string[] {
  const dir = join(policyDir, 'tests');
  return existsSync(dir) ? policyFiles(dir) : [];
}

/**
 * Messages are named relative to the directory that holds the policy directory (the project root for
 * ./policies), or else to the current directory.
 */
export function resolveMessage(policyDir: string, path: string): string {
  if (isAbsolute(path)) return path;
  const beside = join(dirname(resolve(policyDir)), path);
  return existsSync(beside) ? beside : resolve(path);
}

export async function runPolicyTests(policy: Policy, config: Readonly<Config>, files: string[]): Promise<TestRun> {
  const run: TestRun = { results: [], passed: 0, failed: 0 };
  const problems: Problem[] = [];
  const loaded: { file: string; source: YamlSource; cases: TestCase[] }[] = [];
  for (const file of files) {
    const { source, value, problems: syntax } = YamlSource.parse(file, readYamlFile(file));
    if (syntax.length) {
      problems.push(...syntax);
      continue;
    }
    const issues: Issue[] = [];
    const parsed = testFileSchema.parse(value, [], issues);
    parsed?.cases.forEach((c, i) => {
      const ruleIds = new Set(policy.rules.map((r) => r.id));
      for (const id of [c.expect.rule, ...(c.expect.would ?? []), ...(c.expect.tags ?? [])]) {
        if (id !== undefined && !ruleIds.has(id)) issues.push({ path: ['cases', i, 'expect'], message: `names rule "${id}", which is not in the policy` });
      }
      if (c.message) {
        try {
          readFileSync(resolveMessage(policy.dir, c.message));
        } catch {
          const beside = isAbsolute(c.message) ? undefined : join(dirname(resolve(policy.dir)), c.message);
          issues.push({ path: ['cases', i, 'message'], message: beside ? `cannot be read: neither ${beside} (beside the policy directory) nor ${resolve(c.message)} (from the current directory) can be read` : `cannot be read (${c.message})` });
        }
      }
    });
    problems.push(...issues.map((i) => source.problem(i)));
    if (parsed && !issues.length) loaded.push({ file, source, cases: parsed.cases });
  }
  if (problems.length) throw new ValidationError(problems);

  for (const { file, source, cases } of loaded) {
    for (let i = 0; i < cases.length; i++) {
      const c = cases[i]!;
      const line = source.position(['cases', i]).line;
      const outcome = await evaluateOffline(policy, config, {
        message: c.message ? readFileSync(resolveMessage(policy.dir, c.message)) : undefined,
        account: c.account,
        sender: c.sender,
        recipients: c.recipients,
        listener: c.listener,
        given: c.given,
      });
      const failures = compare(c, outcome);
      run.results.push({ file, line, name: c.name, passed: failures.length === 0, failures, outcome });
      if (failures.length) run.failed++;
      else run.passed++;
    }
  }
  return run;
}

function compare(c: TestCase, o: OfflineOutcome): string[] {
  const f: string[] = [];
  const e = c.expect;
  if (e.action !== o.action) f.push(`action: expected ${e.action}, got ${o.action}${o.rule ? ` (rule ${o.rule.id}, ${o.phase})` : ''}`);
  if (e.rule !== undefined && e.rule !== o.rule?.id) f.push(`rule: expected ${e.rule}, got ${o.rule?.id ?? 'none'}`);
  if (e.reason !== undefined && e.reason !== o.reason) f.push(`reason: expected ${e.reason}, got ${o.reason ?? 'none'}`);
  if (e.phase !== undefined && e.phase !== o.phase) f.push(`phase: expected ${e.phase}, got ${o.phase ?? 'none'}`);
  const same = (a: string[], b: string[]) => JSON.stringify([...new Set(a)].sort()) === JSON.stringify([...new Set(b)].sort());
  if (e.tags && !same(e.tags, o.tags)) f.push(`tags: expected [${e.tags.join(', ')}], got [${o.tags.join(', ')}]`);
  const would = o.would.map((w) => w.rule);
  if (e.would && !same(e.would, would)) f.push(`would: expected [${e.would.join(', ')}], got [${would.join(', ')}]`);
  const strikes = o.strikes.map((s) => s.event);
  if (e.strikes && !same(e.strikes, strikes)) f.push(`strikes: expected [${e.strikes.join(', ')}], got [${strikes.join(', ')}]`);
  const refused = o.refusedRecipients.map((r) => r.address);
  if (e.refused_recipients && !same(e.refused_recipients, refused)) f.push(`refused_recipients: expected [${e.refused_recipients.join(', ')}], got [${refused.join(', ')}]`);
  return f;
}
