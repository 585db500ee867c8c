// `douane policy check | test | explain | diff | fields`: the security team's tools for writing, testing
// and previewing policy changes before they are rolled out.

import { readFileSync } from 'node:fs';
import { configPolicyWarnings } from '../config/against-policy.js';
import { loadConfig } from '../config/load.js';
import { SHIPPED_POLICIES } from '../config/schema.js';
import { FIELDS, lookupField } from '../policy/fields.js';
import { loadPolicy } from '../policy/load.js';
import { diffPolicies } from '../policy/diff.js';
import { evaluateOffline, type Given, type OfflineOutcome } from '../policy/offline.js';
import type { Policy } from '../policy/policy.js';
import { givenSchema, runPolicyTests, testFiles } from '../policy/tests.js';
import { readYamlFile, validateYaml } from '../validate/source.js';
import { LIMIT_NAMES } from '../policy/schema.js';
import { atMost, flag, option, options, parseArgs, UsageError } from './args.js';

export const POLICY_HELP = `Usage: douane policy <command> [options]

Commands:
  check [DIR]                 validate the policy (default: the configured policy.dir); exit 0 or 1
  test [DIR]                  run the policy's own tests (DIR/tests/*.yaml); exit 0 if all pass
  explain MESSAGE.eml --account A --rcpt R [--rcpt R2 …] [--sender S] [--listener trusted]
          [--given FILE.yaml] [--dir DIR] [--json]
                              the full decision trace for one message, without sending anything
  diff OLD_DIR NEW_DIR --corpus DIR [--json]
                              replay a corpus under both policies and show which outcomes change
  fields                      the fields a rule condition may use

Common options:
  --config FILE               take policy.dir (and size limits) from this configuration
  --help                      this text

Exit codes: 0 ok, 1 invalid policy / failing tests / bad input, 64 usage error.`;

function policyDir(explicit: string | undefined, configFile: string | undefined): string {
  if (explicit) return explicit;
  if (configFile) return loadConfig({ file: configFile }).config.policy.dir;
  return process.env.DOUANE_CONFIG ? loadConfig().config.policy.dir : SHIPPED_POLICIES;
}

function config(configFile: string | undefined) {
  return loadConfig({ file: configFile }).config;
}

export async function policyCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (!sub || sub === '--help' || sub === 'help') {
    console.log(POLICY_HELP);
    return sub ? 0 : 64;
  }
  switch (sub) {
    case 'check':
      return check(rest);
    case 'test':
      return test(rest);
    case 'explain':
      return explain(rest);
    case 'diff':
      return diff(rest);
    case 'fields':
      return fields();
    default:
      throw new UsageError(`unknown policy command "${sub}" (check, test, explain, diff, fields)`);
  }
}

function check(argv: string[]): number {
  const args = parseArgs(argv, { flags: ['help'], options: ['config'] });
  if (flag(args, 'help')) return help('check [DIR]: validate every file of the policy; prints its version and a summary.');
  atMost(args, 1, 'policy check');
  const dir = policyDir(args.positional[0], option(args, 'config'));
  const policy = loadPolicy(dir);
  console.log(`${dir}: ok — version ${policy.version}`);
  console.log(`  files: ${policy.files.map((f) => `${f.path} (${f.sections.join(', ') || 'empty'})`).join(', ')}`);
  console.log(`  plans: ${Object.keys(policy.doc.plans).join(', ')} (default ${policy.doc.default_plan})`);
  for (const phase of ['mail', 'rcpt', 'data'] as const) {
    const rules = policy.rulesByPhase[phase];
    console.log(`  ${phase} rules: ${rules.map((r) => r.id + (r.mode === 'monitor' ? ' (monitor)' : '')).join(', ') || 'none'}`);
  }
  const covered = new Set(policy.rules.filter((r) => r.mode === 'enforce').map((r) => r.article.split('.').slice(0, 2).join('.')));
  const missing = ['4.1', '4.3', '4.4', '4.6', '6', '8'].filter((a) => !covered.has(a));
  if (missing.length) console.log(`  warning: no enforced rule rests on art. ${missing.join(', ')} of the contract`);
  const configFile = option(args, 'config');
  if (configFile !== undefined) for (const warning of configPolicyWarnings(config(configFile), policy)) console.log(`  warning: ${warning}`);
  return 0;
}

async function test(argv: string[]): Promise<number> {
  const args = parseArgs(argv, { flags: ['help', 'verbose'], options: ['config'] });
  if (flag(args, 'help')) return help('test [DIR] [--verbose]: run DIR/tests/*.yaml (see policies/README.md, "Policy tests").');
  atMost(args, 1, 'policy test');
  const dir = policyDir(args.positional[0], option(args, 'config'));
  const policy = loadPolicy(dir);
  const files = testFiles(dir);
  if (files.length === 0) {
    console.error(`${dir}/tests: no test files (*.yaml)`);
    return 1;
  }
  const run = await runPolicyTests(policy, config(option(args, 'config')), files);
  let lastFile = '';
  for (const r of run.results) {
    if (r.file !== lastFile) console.log(r.file);
    lastFile = r.file;
    if (r.passed) {
      if (flag(args, 'verbose')) console.log(`  PASS  ${r.name}`);
      continue;
    }
    console.log(`  FAIL  ${r.name}  (${r.file}:${r.line})`);
    for (const f of r.failures) console.log(`        ${f}`);
  }
  console.log(`${'-'.repeat(40)}\nPASS: ${run.passed}/${run.results.length}${run.failed ? `   FAIL: ${run.failed}` : ''}   (policy ${policy.version})`);
  return run.failed ? 1 : 0;
}

async function explain(argv: string[]): Promise<number> {
  const args = parseArgs(argv, { flags: ['help', 'json'], options: ['config', 'account', 'rcpt', 'sender', 'listener', 'given', 'dir'], allowEmpty: ['sender'] });
  if (flag(args, 'help')) return help('explain MESSAGE.eml --account A --rcpt R …: every check and rule, in order, and the reply the client would get.');
  atMost(args, 1, 'policy explain');
  const file = args.positional[0];
  const account = option(args, 'account');
  const recipients = options(args, 'rcpt');
  if (!file || !account || recipients.length === 0) throw new UsageError('explain needs MESSAGE.eml, --account and at least one --rcpt');
  const listener = option(args, 'listener') ?? 'starttls';
  if (!['starttls', 'tls', 'trusted'].includes(listener)) throw new UsageError('--listener is starttls, tls or trusted');
  let message: Buffer;
  try {
    message = readFileSync(file);
  } catch (err) {
    console.error(`douane: cannot read the message ${file}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message}`);
    return 1;
  }
  const policy = loadPolicy(policyDir(option(args, 'dir'), option(args, 'config')));
  const givenFile = option(args, 'given');
  // Checked like a policy file: a misspelled fact would otherwise be ignored and the explanation wrong.
  const given = givenFile ? (validateYaml(givenFile, readYamlFile(givenFile), givenSchema).value as Given) : undefined;
  const outcome = await evaluateOffline(policy, config(option(args, 'config')), {
    message,
    account,
    recipients,
    sender: option(args, 'sender'),
    listener: listener as 'starttls',
    given,
  });
  if (flag(args, 'json')) console.log(JSON.stringify(outcome, (k, v) => (v instanceof Map ? Object.fromEntries(v) : k === 'evidence' && v && typeof v === 'object' && 'policy' in v ? undefined : v), 2));
  else printExplanation(file, policy, outcome);
  return 0;
}

function printExplanation(file: string, policy: Policy, o: OfflineOutcome): void {
  console.log(`${file} under policy ${policy.version} (${policy.dir})`);
  for (const report of o.reports) {
    console.log(`\n${report.phase.toUpperCase()}${report.recipient ? ` <${report.recipient}>` : ''}`);
    for (const r of report.results) {
      const facts = r.evidence && !r.check.endsWith('.policy') ? ` ${JSON.stringify(r.evidence)}` : '';
      const extra = r.reason ? ` ${r.action} ${r.reason}` : r.note ? ` ${r.note}` : facts;
      console.log(`  ${r.check.padEnd(26)} ${r.result.padEnd(5)}${extra}${r.rule ? ` (rule ${r.rule.id}, ${r.rule.source})` : ''}`);
      if (r.check.endsWith('.policy')) {
        for (const t of report.rules) {
          console.log(`    ${t.matched ? '●' : '○'} ${t.rule}${t.mode === 'monitor' ? ' [monitor]' : ''}  ${t.source}`);
          for (const step of t.steps) console.log(`        ${step}`);
        }
      }
    }
  }
  console.log('');
  if (o.action === 'accept') console.log(`OUTCOME: accepted and relayed${o.tags.length ? `, tagged ${o.tags.join(', ')}` : ''}`);
  else console.log(`OUTCOME: ${o.action} at ${o.phase}${o.rule ? ` by rule ${o.rule.id} (art. ${o.rule.article}, ${o.rule.source})` : ''}\n  reply: ${o.reply}`);
  for (const r of o.refusedRecipients) console.log(`  recipient ${r.address} refused: ${r.reply}`);
  if (o.would.length) console.log(`  monitor mode, would have: ${o.would.map((w) => `${w.rule} → ${w.action}`).join(', ')}`);
  if (o.strikes.length) console.log(`  strikes: ${o.strikes.map((s) => `${s.event} +${s.weight} (${s.rule})`).join(', ')}`);
}

async function diff(argv: string[]): Promise<number> {
  const args = parseArgs(argv, { flags: ['help', 'json'], options: ['config', 'corpus'] });
  if (flag(args, 'help')) return help('diff OLD_DIR NEW_DIR --corpus DIR: which messages of the corpus change outcome under the new policy.');
  atMost(args, 2, 'policy diff');
  const [oldDir, newDir] = args.positional;
  const corpus = option(args, 'corpus');
  if (!oldDir || !newDir || !corpus) throw new UsageError('diff needs OLD_DIR NEW_DIR --corpus DIR');
  const before = loadPolicy(oldDir);
  const after = loadPolicy(newDir);
  let lastShown = 0;
  const report = await diffPolicies(before, after, config(option(args, 'config')), corpus, (done, total) => {
    const now = Date.now();
    if (process.stderr.isTTY ? now - lastShown > 200 || done === total : done === total || done % 500 === 0) {
      lastShown = now;
      process.stderr.write(`${process.stderr.isTTY ? '\r' : ''}diff: ${done}/${total} messages${process.stderr.isTTY ? '' : '\n'}`);
    }
  });
  if (process.stderr.isTTY) process.stderr.write('\n');
  // A corpus path mistyped, or one holding no message: nothing compared is not "nothing changes".
  if (report.total === 0) {
    console.error(`douane: ${corpus} holds no message (*.eml): nothing to compare`);
    return 1;
  }
  if (flag(args, 'json')) {
    console.log(JSON.stringify({ before: before.version, after: after.version, total: report.total, changed: report.changed, transitions: Object.fromEntries(report.transitions), rules: Object.fromEntries(report.rules), errors: report.errors }, null, 2));
    return report.errors.length ? 1 : 0;
  }
  console.log(`policy ${before.version} (${oldDir}) → ${after.version} (${newDir}): ${report.changed.length} of ${report.total} messages change outcome`);
  if (report.rules.size) {
    console.log('\nby rule:');
    for (const [rule, c] of [...report.rules].sort((a, b) => b[1].gained + b[1].lost - (a[1].gained + a[1].lost))) {
      console.log(`  ${rule.padEnd(32)} ${c.gained ? `+${c.gained} now decided by it` : ''}${c.gained && c.lost ? ', ' : ''}${c.lost ? `-${c.lost} no longer` : ''}`);
    }
    console.log('\nby change:');
    for (const [t, n] of [...report.transitions].sort((a, b) => b[1] - a[1])) console.log(`  ${String(n).padStart(6)}  ${t}`);
    console.log('\nmessages:');
    for (const c of report.changed) console.log(`  ${c.file}: ${c.before} → ${c.after}`);
  }
  for (const e of report.errors) console.error(`  could not evaluate ${e.file}: ${e.error}`);
  return report.errors.length ? 1 : 0;
}

function fields(): number {
  console.log('Fields a rule condition may name (douane policy fields):\n');
  for (const [name, f] of Object.entries(FIELDS)) console.log(`  ${name.padEnd(28)} ${(f.type === 'strings' ? 'list' : f.type).padEnd(7)} ${f.phase.padEnd(5)} ${f.description}`);
  console.log(`  ${'header.<Name>'.padEnd(28)} ${'list'.padEnd(7)} ${'data'.padEnd(5)} every value of that header`);
  const recipientLimits = LIMIT_NAMES.filter((n) => lookupField(`limits.usage.${n}`, LIMIT_NAMES)?.phase === 'rcpt');
  console.log(`  ${'limits.usage.<limit>'.padEnd(28)} ${'number'.padEnd(7)} ${'mail'.padEnd(5)} current use of a message limit (${LIMIT_NAMES.filter((n) => !recipientLimits.includes(n)).join(', ')})`);
  console.log(`  ${'limits.usage.<limit>'.padEnd(28)} ${'number'.padEnd(7)} ${'rcpt'.padEnd(5)} current use of a recipient limit (${recipientLimits.join(', ')})`);
  console.log('\nOperators: text and lists — equals, in, matches, contains, starts_with, ends_with, exists (lists also: empty);');
  console.log('numbers — equals, in, gt, gte, lt, lte, exists; true/false — equals, exists. On a list, an operator holds if it holds for one element.');
  console.log(`Domains (${Object.entries(FIELDS).filter(([, f]) => f.domain).map(([n]) => n).join(', ')}) — also in_domains: a listed domain or any subdomain of it.`);
  return 0;
}

function help(text: string): number {
  console.log(`Usage: douane policy ${text}\n\n${POLICY_HELP}`);
  return 0;
}
