// The policy loader: the shipped policy loads, and every kind of mistake is reported with file:line:col and key.

import { cpSync, mkdtempSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadPolicy } from '../../src/policy/load.js';
import { countedChoices, countedRepetitions, withoutBlockingAnalysis, withSmallCounts, withUnboundedGroups } from '../../src/validate/schema.js';
import { ValidationError } from '../../src/validate/source.js';

function problems(dir: string): string[] {
  try {
    loadPolicy(dir);
  } catch (err) {
    if (err instanceof ValidationError) return err.message.split('\n');
    throw err;
  }
  throw new Error(`${dir} loaded without error`);
}

describe('policy loading', () => {
  it('loads the shipped policy, with a rule for each abuse article of the contract', () => {
    const p = loadPolicy('policies');
    expect(p.version).toMatch(/^[0-9a-f]{12}$/);
    expect(Object.keys(p.doc.plans)).toEqual(['standard', 'pro', 'entreprise']);
    const articles = new Set(p.rules.filter((r) => r.mode === 'enforce').map((r) => r.article));
    for (const a of ['4.1', '4.4', '4.6', '6', '8']) expect(articles, `art. ${a}`).toContain(a);
    expect(p.rules.some((r) => r.article === '4.3')).toBe(true);
    const malware = p.rules.find((r) => r.id === 'malware.found')!;
    expect(malware).toMatchObject({ phase: 'data', action: 'quarantine', strike: { event: 'malware', weight: 10 } });
    expect(malware.source).toMatch(/^policies\/rules\.yaml:\d+$/);
    expect(p.rules.find((r) => r.id === 'sender.not-owned')!.phase).toBe('mail');
    expect(p.rules.find((r) => r.id === 'limits.recipient-rate')!.phase).toBe('rcpt');
  });

  it('records the shipped version in the policy CHANGELOG (art. 7: customers are told of changes)', () => {
    const latest = [...readFileSync('policies/CHANGELOG.md', 'utf8').matchAll(/\(policy ([0-9a-f]{12})\)/g)].map((m) => m[1]).at(-1);
    expect(latest).toBe(loadPolicy('policies').version);
  });

  it('changes version when a file changes, and only then', () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-policy-'));
    cpSync('fixtures/policies/minimal', dir, { recursive: true });
    const a = loadPolicy(dir).version;
    expect(loadPolicy(dir).version).toBe(a);
    writeFileSync(join(dir, 'policy.yaml'), `# a comment\n${readFileSync(join(dir, 'policy.yaml'), 'utf8')}`);
    expect(loadPolicy(dir).version).not.toBe(a);
  });

  it('names file, line, column and key for a bad limit', () => {
    expect(problems('fixtures/policies/bad-limit')).toEqual([
      'fixtures/policies/bad-limit/limits.yaml:5:24: plans.basic.messages_per_hour must be a positive integer (got 0)',
    ]);
  });

  it('says to quote an article YAML read as a number', () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-policy-'));
    cpSync('fixtures/policies/minimal', dir, { recursive: true });
    const file = join(dir, 'policy.yaml');
    const text = readFileSync(file, 'utf8');
    writeFileSync(file, text.replace(/article: "?4\.3"?/, 'article: 4.3'));
    const [p] = problems(dir);
    expect(p).toMatch(/policy\.yaml:\d+:\d+: rules\[\d+\]\.article must be a contract article such as 4\.6, in quotes: YAML reads 4\.3 unquoted as a number \(write it in quotes, as you meant it\)$/);
  });

  it('refuses an end date on suspend_account: nothing would unlock the account when it came', () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-policy-'));
    cpSync('policies', dir, { recursive: true });
    const file = join(dir, 'strikes.yaml');
    writeFileSync(file, readFileSync(file, 'utf8').replace('action: suspend_account,', 'action: suspend_account, for: 7d,'));
    const [p] = problems(dir);
    expect(p).toMatch(/strikes\.yaml:\d+:\d+: strikes\.ladder\[3\]\.for is not for suspend_account: the lock in the lifecycle API lasts until a person reinstates the account/);
  });

  it('refuses unknown keys, suggesting the right one', () => {
    const [p] = problems('fixtures/policies/unknown-key');
    expect(p).toMatch(/^fixtures\/policies\/unknown-key\/limits\.yaml:13:5: plans\.basic\.mesages_per_week is not a known key/);
  });

  it('takes no name of a built-in object property for a key, field, plan or strike event', () => {
    const minimal = readFileSync('fixtures/policies/minimal/policy.yaml', 'utf8');
    const policy = (text: string) => {
      const dir = mkdtempSync(join(tmpdir(), 'douane-policy-'));
      writeFileSync(join(dir, 'policy.yaml'), text);
      return problems(dir).join('\n');
    };
    const keys = policy(minimal.replace('    when: { sender: { ends_with: "@watched.example" } }', '    when: { toString: { exists: true } }').replace('strikes:\n  window: 1h', 'strikes:\n  window: 1h\n  constructor: oops\n  __proto__: { bogus: 1 }'));
    expect(keys).toMatch(/policy\.yaml:\d+:\d+: rules\[1\]\.when\.toString is not a known field/);
    expect(keys).toMatch(/policy\.yaml:\d+:\d+: strikes\.constructor is not a known key/);
    expect(keys).toMatch(/policy\.yaml:\d+:\d+: strikes\.__proto__ is not a known key/);
    expect(policy(minimal.replace('    reason: content.forbidden', '    reason: constructor'))).toMatch(/policy\.yaml:\d+:\d+: rules\[0\]\.reason /);
    const references = policy(minimal.replace('default_plan: basic', 'default_plan: constructor').replace('    strike: content_rule', '    strike: hasOwnProperty'));
    expect(references).toMatch(/policy\.yaml:\d+:\d+: default_plan names plan "constructor", which is not defined in plans \(defined: basic\)/);
    expect(references).toMatch(/policy\.yaml:\d+:\d+: rules\[0\]\.strike names strike event "hasOwnProperty", which is not defined in strikes\.events/);
  });

  it('checks references between files: plans and strike events that do not exist, duplicate rule ids', () => {
    expect(problems('fixtures/policies/bad-references')).toEqual([
      'fixtures/policies/bad-references/limits.yaml:13:15: default_plan names plan "premium", which is not defined in plans (defined: basic)',
      'fixtures/policies/bad-references/limits.yaml:15:31: accounts.alice@example.test.plan names plan "gold", which is not defined in plans (defined: basic)',
      'fixtures/policies/bad-references/rules.yaml:7:13: rules[0].strike names strike event "virus", which is not defined in strikes.events (defined: spam)',
      'fixtures/policies/bad-references/rules.yaml:8:9: rules[1].id "r1" is already the id of rules[0]; rule ids must be unique',
      'fixtures/policies/bad-references/rules.yaml:16:33: rules[2].when.account.plan.in names plan "premiun", which is not defined in plans (defined: basic)',
    ]);
  });

  it('compiles conditions at load: unsafe and invalid regexes, unknown fields, wrong operators, misplaced keys', () => {
    const all = problems('fixtures/policies/bad-conditions').join('\n');
    expect(all).toMatch(/rules\.yaml:5:30: rules\[0\]\.when\.body\.matches may take exponential time on crafted input/);
    expect(all).toMatch(/rules\.yaml:10:33: rules\[1\]\.when\.subject\.matches is not a valid regular expression/);
    expect(all).toMatch(/rules\.yaml:15:13: rules\[2\]\.when\.subjet is not a known field/);
    expect(all).toMatch(/rules\.yaml:20:24: rules\[3\]\.when\.subject\.gt is not an operator for subject \(a string field\); use one of: equals, in, matches/);
    expect(all).toMatch(/rules\.yaml:27:5: rules\[4\]\.reason only applies to tempfail, reject and quarantine/);
    expect(all).toMatch(/rules\.yaml:31:12: rules\[5\]\.phase is too early: the condition uses subject, known only at data/);
    // A value a field never takes is a typo that would never match (infected mail relayed).
    expect(all).toMatch(/rules\.yaml:37:26: rules\[6\]\.when\.scan\.result "infectd" is not a value this field takes; it takes: clean, infected, error, skipped/);
    expect(all).toMatch(/rules\.yaml:42:46: rules\[7\]\.when\.recipient\.limits\.exceeded\.in "recipients_per_mesage" is not a value this field takes/);
    // Super-linear patterns a star-height check misses: overlapping alternatives, unbounded runs in a row.
    expect(all).toMatch(/rules\.yaml:47:33: rules\[8\]\.when\.subject\.matches may take exponential time on crafted input \(for example .*\), and one message would stall every session/);
    expect(all).toMatch(/rules\.yaml:52:30: rules\[9\]\.when\.body\.matches may take 3rd degree polynomial time on crafted input/);
    // Look-arounds go to crafted inputs; a back-reference is refused as such.
    expect(all).toMatch(/rules\.yaml:57:33: rules\[10\]\.when\.subject\.matches may take exponential time on crafted input/);
    expect(all).toMatch(/rules\.yaml:62:33: rules\[11\]\.when\.subject\.matches uses a back-reference \(\\1\), whose matching time cannot be shown to stay linear/);
    expect(all).not.toMatch(/rules\[12\]/);
    // A recipient count is known at RCPT TO: at MAIL FROM the rule would never match.
    expect(all).toMatch(/rules\.yaml:72:12: rules\[13\]\.phase is too early: the condition uses limits\.usage\.recipients_per_hour, known only at rcpt/);
    // The recipient being checked exists only at RCPT TO: with a message field, or at data, it never would be.
    expect(all).toMatch(/rules\.yaml:78:5: rules\[14\]\.when uses recipient\.domain, known only while each recipient is checked \(rcpt\), with subject, known only at data: the rule would never see it; make it two rules/);
    // Bounded runs are linear in the text's length, but in a row their ranges multiply.
    expect(all).toMatch(/rules\.yaml:89:30: rules\[16\]\.when\.body\.matches has bounded repetitions that together try 6561 ways at each place of the text \(more than 256\)/);
    // A rule's message: a misspelt placeholder is refused; a folded YAML block is one line, not refused.
    expect(all).toMatch(/rules\.yaml:96:14: rules\[17\]\.message names \{retyr\}, \{acount\}, which is not a value a refusal has; it may use \{rule\}, /);
    expect(all).not.toMatch(/rules\[18\]/);
    expect(all).toMatch(/rules\.yaml:83:5: rules\[15\]\.phase is data, but the condition uses recipient\.limits\.exceeded, known only while each recipient is checked \(rcpt\)/);
    // YAML reads 0123 as 123 and 1.10 as 1.1: a header compared with them would never see the text as written.
    expect(all).toMatch(/rules\.yaml:108:\d+: rules\[19\]\.when\.header\.X-Campaign\.in must be text, in quotes: YAML reads 123 unquoted as a number \(write "123" if that is what you meant\)/);
  });

  it('refuses what would load and never act: a backspace a double-quoted "\\b" made, "*@domain" as an account, quarantine before DATA', () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-policy-'));
    cpSync('policies', dir, { recursive: true });
    const rules = join(dir, 'rules.yaml');
    const added = [
      '  - id: test.double-quoted',
      '    description: d',
      '    article: "4.3"',
      '    when: { subject: { matches: "\\bfree money\\b" } }',
      '    action: reject',
      '  - id: test.nul',
      '    description: d',
      '    article: "4.3"',
      '    when: { header.X-Mailer: { in: [ok, "bad\\0"] } }',
      '    action: reject',
      '  - id: test.early-quarantine',
      '    description: d',
      '    article: "4.3"',
      '    when: { recipient.domain: { in_domains: [competitor.test] } }',
      '    action: quarantine',
      '',
    ].join('\n');
    writeFileSync(rules, readFileSync(rules, 'utf8').replace(/^rules:\n/m, `rules:\n${added}`));
    const limits = join(dir, 'limits.yaml');
    writeFileSync(limits, readFileSync(limits, 'utf8').replace(/^accounts:\n/m, 'accounts:\n  "*@bigcorp.example": { plan: entreprise }\n'));
    expect(problems(dir).map((p) => p.replace(dir, '<dir>'))).toEqual([
      '<dir>/limits.yaml:64:3: accounts.*@bigcorp.example is not a valid name: a full address (for a whole domain, use domains:)',
      expect.stringMatching(/^<dir>\/rules\.yaml:\d+:\d+: rules\[0\]\.when\.subject\.matches holds the control character U\+0008 \(backspace, "\\b" in double quotes\), which no mail text holds: write patterns and texts with backslashes in single quotes \('\\bword\\b'\)/),
      expect.stringMatching(/^<dir>\/rules\.yaml:\d+:\d+: rules\[1\]\.when\.header\.X-Mailer\.in holds the control character U\+0000 \(NUL, "\\0" in double quotes\)/),
      expect.stringMatching(/^<dir>\/rules\.yaml:\d+:\d+: rules\[2\]\.action is quarantine, but the rule runs at rcpt, before there is a message to keep: use reject, or add phase: data$/),
    ]);
    // In single quotes the same pattern is the regular expression meant.
    writeFileSync(rules, readFileSync(rules, 'utf8').replace('"\\bfree money\\b"', "'\\bfree money\\b'").replace('"bad\\0"', 'bad').replace('in_domains: [competitor.test] } }\n    action: quarantine', 'in_domains: [competitor.test] } }\n    action: reject'));
    writeFileSync(limits, readFileSync(limits, 'utf8').replace('"*@bigcorp.example"', 'boss@bigcorp.example'));
    expect(loadPolicy(dir).rules[0]!.condition.test({ message: { subject: 'get free money now' } } as never)).toBe(true);
  });

  it('refuses an empty policy file: one caught while being written would take its rules away', () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-policy-'));
    cpSync('policies', dir, { recursive: true });
    for (const empty of ['', '# rules are being rewritten\n']) {
      writeFileSync(join(dir, 'rules.yaml'), empty);
      expect(problems(dir).map((p) => p.replace(dir, '<dir>'))).toEqual([
        expect.stringMatching(/^<dir>\/rules\.yaml:1:1: defines no section \(plans, .*\): an empty file is refused, in case it is one being written/),
      ]);
    }
    writeFileSync(join(dir, 'rules.yaml'), 'rules: []\n');
    expect(loadPolicy(dir).rules).toEqual([]);
  });

  it('a rule gives a reason of what a message or an account did: not one of Douane\'s own, nor one that ends the session', () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-policy-'));
    cpSync('policies', dir, { recursive: true });
    const rules = join(dir, 'rules.yaml');
    const rule = (id: string, reason: string) => `  - id: test.${id}\n    description: d\n    article: "4.3"\n    when: { recipient.domain: evil.example }\n    action: tempfail\n    reason: ${reason}\n`;
    writeFileSync(rules, readFileSync(rules, 'utf8').replace(/^rules:\n/m, 'rules:\n' + rule('restart', 'session.shutting_down') + rule('port', 'connection.not_allowed') + rule('refused', 'recipients.too_many_refused') + rule('fine', 'content.forbidden')));
    expect(problems(dir).map((p) => p.replace(dir, '<dir>'))).toEqual([
      expect.stringMatching(/^<dir>\/rules\.yaml:\d+:\d+: rules\[0\]\.reason must be a reason code a rule may give \(docs\/REASONS\.md\): .*content\.forbidden.* \("session\.shutting_down" is Douane's own, not a rule's\)$/),
      expect.stringMatching(/rules\[1\]\.reason .*\("connection\.not_allowed" is Douane's own, not a rule's\)$/),
      expect.stringMatching(/rules\[2\]\.reason .*\("recipients\.too_many_refused" is Douane's own, not a rule's\)$/),
    ]);
  });

  it('reads a folded rule message as one line, and refuses a wildcard in an allowlist domain', () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-policy-'));
    cpSync('policies', dir, { recursive: true });
    const rules = join(dir, 'rules.yaml');
    writeFileSync(rules, readFileSync(rules, 'utf8').replace(/^rules:\n/m, 'rules:\n  - id: test.folded\n    description: d\n    article: "4.3"\n    when: { subject: { contains: hello } }\n    action: reject\n    message: >\n      Greetings are not\n      allowed here.\n'));
    expect(loadPolicy(dir).rules.find((r) => r.id === 'test.folded')!.message).toBe('Greetings are not allowed here.');
    const allow = join(dir, 'allowlists.yaml');
    writeFileSync(allow, readFileSync(allow, 'utf8').replace('    - postmaster@dstorage.example\n', '    - "*@*.example.com"\n    - "ceo@*"\n'));
    expect(problems(dir).map((p) => p.replace(dir, '<dir>'))).toEqual([
      expect.stringMatching(/^<dir>\/allowlists\.yaml:\d+:\d+: allowlists\.never_suspend\[0\] must be an address, or \*@domain for a whole domain \(no wildcard in the domain: name each one\)/),
      expect.stringMatching(/^<dir>\/allowlists\.yaml:\d+:\d+: allowlists\.never_suspend\[1\] must be an address/),
    ]);
  });

  it('counts the ways bounded repetitions try a place of the text: a sequence multiplies, alternatives add up', () => {
    expect(countedChoices('verify[^\\n]{0,80}account')).toBe(81);
    expect(countedChoices('a[^\\n]{0,80}b[^\\n]{0,80}c')).toBe(81 * 81);
    expect(countedChoices('(?:wire[^\\n]{0,20}transfer|bank[^\\n]{0,20}details)')).toBe(42);
    expect(countedChoices('(?<lead>a{0,9})b{0,9}|c')).toBe(101);
    // Braces that are no quantifier: a class, an escape, a Unicode property or code point.
    expect(countedChoices('[{0,999}]x\\{0,999}\\p{L}{2,3}\\u{1F600}')).toBe(2);
  });

  it('bounds what counted repetitions try at each place of the text; a pattern too big for the analysis is analysed with small counts', () => {
    expect(countedRepetitions('\\w{20000}!').length).toBe(20000);
    expect(countedRepetitions('(?:ab{10}){5}c{3}|x{70}').length).toBe(70);
    expect(countedRepetitions('[{999}]\\{999}[a-f0-9]{32}').length).toBe(32);
    expect(withSmallCounts('[a-f0-9]{400}\\w{3,}\\s{0,80}[{5}]\\p{L}{2,9}x{1,1}')).toBe('[a-f0-9]{1}\\w{1,}\\s{0,2}[{5}]\\p{L}{1,2}x{1,2}');
    const withRule = (pattern: string) => {
      const dir = mkdtempSync(join(tmpdir(), 'douane-policy-'));
      cpSync('fixtures/policies/minimal', dir, { recursive: true });
      const file = join(dir, 'policy.yaml');
      writeFileSync(file, readFileSync(file, 'utf8').replace('when: { subject: { contains: "FORBIDDEN-SUBJECT" } }', `when: { body: { matches: '${pattern}' } }`));
      return dir;
    };
    // Linear in the text, but 20 000 steps at each place of it: seconds on a crafted body.
    expect(problems(withRule('\\w{20000}!')).join('\n')).toMatch(/body\.matches counts 20000 characters in a row \(more than 256\)/);
    // Cubic once its counts are made small, which the analysis of the whole pattern ran out of time to show.
    expect(problems(withRule('[a-f0-9]{100}\\w*\\w*;')).join('\n')).toMatch(/body\.matches may take .*polynomial time on crafted input/);
    // Linear, though the analysis of the whole pattern runs out of time: it loads.
    expect(loadPolicy(withRule('[a-f0-9]{64}\\s*x')).rules[0]!.id).toBe('subject.forbidden');
    // A counted group whose alternatives overlap tries every way of splitting a run between them: up to
    // 2^24 at each place of the text, which no growth with the text's length shows. Exclusive ones load.
    expect(withUnboundedGroups('(?:[a-z]|[a-f0-9]){1,24}!x{3}(?:ab){0,2}[(]{4}\\){5}')).toBe('(?:[a-z]|[a-f0-9]){1,}!x{3}(?:ab){0,}[(]{4}\\){5}');
    for (const slow of ['(?:[a-z]|[a-f0-9]){1,24}!', '(?:\\w|\\d){20}!', '(?:\\p{L}|\\w){1,20}:']) {
      expect(problems(withRule(slow)).join('\n')).toMatch(/body\.matches may take exponential time on crafted input .*a counted group whose alternatives can match the same characters/);
    }
    expect(loadPolicy(withRule('(?:[a-z0-9]|-){1,63}\\.example\\.com')).rules[0]!.id).toBe('subject.forbidden');
  }, 60_000);

  it('a reload never analyses a pattern in the gateway: one no analysis has seen yet is refused, and the policy in force stays', () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-policy-'));
    cpSync('fixtures/policies/minimal', dir, { recursive: true });
    const file = join(dir, 'policy.yaml');
    writeFileSync(file, readFileSync(file, 'utf8').replace('when: { subject: { contains: "FORBIDDEN-SUBJECT" } }', `when: { body: { matches: 'never-seen-${process.pid}-[a-z]{3}' } }`));
    expect(() => withoutBlockingAnalysis(() => loadPolicy(dir))).toThrow(/body\.matches could not be shown to match in linear time \(the file changed while the policy was being reloaded; the next reload analyses it\)/);
    // Outside a reload, it is analysed, and loads.
    expect(loadPolicy(dir).rules.length).toBeGreaterThan(0);
  });

  it('refuses a section defined in two files, naming both', () => {
    expect(problems('fixtures/policies/duplicate-section')).toEqual([
      'fixtures/policies/duplicate-section/b.yaml:2:1: plans is already defined in fixtures/policies/duplicate-section/a.yaml:2; a section lives in one file',
    ]);
  });

  it('checks the strike ladder goes up, that throttle says by how much and for how long, and that no step carries a key its action does not read', () => {
    expect(problems('fixtures/policies/bad-ladder')).toEqual([
      'fixtures/policies/bad-ladder/strikes.yaml:6:13: strikes.ladder[1].at must be greater than the previous step\'s (10): the ladder goes up',
      'fixtures/policies/bad-ladder/strikes.yaml:7:7: strikes.ladder[2] throttle needs factor (0 to 1, the share of the plan\'s limits left) and for (how long)',
      // Keys the step's action does not read, and a throttle that changes nothing.
      'fixtures/policies/bad-ladder/strikes.yaml:8:50: strikes.ladder[3].factor is not for notify: only a throttle lowers the limits by a factor',
      'fixtures/policies/bad-ladder/strikes.yaml:8:38: strikes.ladder[3].for is not for notify: a warning lasts no time (throttle and suspend_sending take a for)',
      'fixtures/policies/bad-ladder/strikes.yaml:9:43: strikes.ladder[4].factor must be under 1: a throttle to the whole of the limits changes nothing',
      'fixtures/policies/bad-ladder/strikes.yaml:10:50: strikes.ladder[5].factor is not for suspend_sending: only a throttle lowers the limits by a factor',
    ]);
  });

  it('reports YAML syntax errors and a missing required section', () => {
    expect(problems('fixtures/policies/yaml-syntax')[0]).toMatch(/^fixtures\/policies\/yaml-syntax\/policy\.yaml:\d+:\d+: YAML: /);
    const dir = mkdtempSync(join(tmpdir(), 'douane-policy-'));
    writeFileSync(join(dir, 'p.yaml'), 'default_plan: basic\n');
    const p = problems(dir);
    expect(p).toContain(`${dir}: plans is required (a mapping of names to a mapping): add it to one of the policy files`);
    expect(problems(mkdtempSync(join(tmpdir(), 'douane-empty-')))[0]).toMatch(/holds no policy files/);
  });

  it('names file and line for an unquoted "*@domain" (a YAML alias), an alias bomb and a byte that is not UTF-8', () => {
    const copy = () => {
      const dir = mkdtempSync(join(tmpdir(), 'douane-policy-'));
      cpSync('policies', dir, { recursive: true });
      return dir;
    };
    const alias = copy();
    writeFileSync(join(alias, 'allowlists.yaml'), 'allowlists:\n  never_suspend:\n    - postmaster@dstorage.example\n    - *@dstorage.example\n');
    expect(problems(alias)).toEqual([`${alias}/allowlists.yaml:4:7: YAML: "*@dstorage.example" is read as an alias (a reference to "&@dstorage.example", which is not defined); put the value in quotes`]);
    const bomb = copy();
    const levels = ['a: &a [x, x, x, x, x, x, x, x, x, x]', ...'bcdefghij'.split('').map((k, i) => `${k}: &${k} [${Array(10).fill(`*${'abcdefghij'[i]}`).join(', ')}]`)];
    writeFileSync(join(bomb, 'bomb.yaml'), levels.join('\n') + '\n');
    expect(problems(bomb)).toEqual([`${bomb}/bomb.yaml:2:8: YAML: Excessive alias count indicates a resource exhaustion attack; use fewer aliases`]);
    const latin1 = copy();
    writeFileSync(join(latin1, 'allowlists.yaml'), Buffer.concat([Buffer.from('allowlists:\n  never_suspend:\n    - postmaster@d'), Buffer.from([0xe9]), Buffer.from('storage.example\n')]));
    expect(problems(latin1)).toEqual([`${latin1}/allowlists.yaml:3:19: is not valid UTF-8 here (a byte from another encoding, such as Latin-1): save the file as UTF-8`]);
    // A replacement character written in the file is valid UTF-8: the position is the bad byte's.
    writeFileSync(join(latin1, 'allowlists.yaml'), Buffer.concat([Buffer.from('# \ufffd is fine\nallowlists:\n  never_suspend:\n    - postmaster@d'), Buffer.from([0xe9]), Buffer.from('storage.example\n')]));
    expect(problems(latin1)).toEqual([`${latin1}/allowlists.yaml:4:19: is not valid UTF-8 here (a byte from another encoding, such as Latin-1): save the file as UTF-8`]);
  });

  it('refuses two spellings of one account or domain, and applies a domain however its key is written', () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-policy-'));
    cpSync('policies', dir, { recursive: true });
    const limits = join(dir, 'limits.yaml');
    const original = readFileSync(limits, 'utf8');
    writeFileSync(limits, original.replace('accounts:\n', 'accounts:\n  Newsletter@Client-Shop.example: { plan: pro }\n').replace('domains:\n', 'domains:\n  CLIENT-SHOP.example: { plan: standard }\n'));
    expect(problems(dir)).toEqual([
      `${dir}/limits.yaml:65:3: accounts.newsletter@client-shop.example is the same account as accounts.Newsletter@Client-Shop.example (compared as newsletter@client-shop.example): merge the two entries`,
      `${dir}/limits.yaml:72:3: domains.client-shop.example is the same domain as domains.CLIENT-SHOP.example (compared as client-shop.example): merge the two entries`,
    ]);
    writeFileSync(limits, original.replace('  client-shop.example:\n', '  Client-Shop.EXAMPLE:\n'));
    expect(loadPolicy(dir).account('someone@client-shop.example').plan).toBe('pro');
  });

  it('gives an account entry that names a plan that plan\'s limits, not its domain\'s (the account entry wins)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-policy-'));
    cpSync('policies', dir, { recursive: true });
    const limits = join(dir, 'limits.yaml');
    writeFileSync(limits, readFileSync(limits, 'utf8').replace('  client-shop.example:\n    plan: pro\n', '  client-shop.example:\n    plan: pro\n    recipients_per_hour: 7\n'));
    const policy = loadPolicy(dir);
    // Named its plan (entreprise) and one limit of its own: the rest is entreprise's.
    const own = policy.account('newsletter@client-shop.example');
    expect(own.plan).toBe('entreprise');
    expect(own.limits.recipients_per_hour).toBe(5000);
    expect(own.limits.messages_per_day).toBe(policy.doc.plans.entreprise!.messages_per_day);
    // Another account of the domain: the domain's plan and its limit.
    expect(policy.account('someone@client-shop.example').limits.recipients_per_hour).toBe(7);
    writeFileSync(limits, readFileSync(limits, 'utf8').replace('    recipients_per_hour: 5000\n', '').replace('  client-shop.example:\n    plan: pro\n    recipients_per_hour: 7\n', '  client-shop.example:\n    plan: pro\n    recipients_per_hour: 7\n    recipients_per_day: 9\n'));
    const named = loadPolicy(dir).account('newsletter@client-shop.example');
    expect(named.limits.recipients_per_hour).toBe(loadPolicy(dir).doc.plans.entreprise!.recipients_per_hour);
    expect(named.limits.recipients_per_day).toBe(loadPolicy(dir).doc.plans.entreprise!.recipients_per_day);
  });

  it('lets a plan copy another with a YAML merge key (<<: *standard)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-policy-'));
    cpSync('policies', dir, { recursive: true });
    const limits = join(dir, 'limits.yaml');
    const text = readFileSync(limits, 'utf8').replace('  standard:\n', '  standard: &standard\n');
    writeFileSync(limits, text.replace(/  pro:\n[\s\S]*?(?=\n  entreprise:)/, '  pro:\n    <<: *standard\n    description: Pro\n    messages_per_hour: 300'));
    const p = loadPolicy(dir);
    expect(p.doc.plans.pro).toMatchObject({ messages_per_hour: 300, messages_per_day: p.doc.plans.standard!.messages_per_day });
  });

  it('leaves editors\' dot files aside, and names a policy file that is a dangling link', () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-policy-'));
    cpSync('policies', dir, { recursive: true });
    symlinkSync('/nonexistent/lock', join(dir, '.#rules.yaml'));
    expect(loadPolicy(dir).version).toMatch(/^[0-9a-f]{12}$/);
    symlinkSync('/nonexistent/file', join(dir, 'extra.yaml'));
    expect(problems(dir)).toEqual([`${dir}/extra.yaml: cannot be read: a link to a file that does not exist`]);
  });
});

describe('the shipped policy\'s own tests', () => {
  it('exercise every rule (as the deciding rule, a tag or a monitor-mode match)', async () => {
    const { parse } = await import('yaml');
    const { readdirSync } = await import('node:fs');
    const named = new Set<string>();
    for (const f of readdirSync('policies/tests').filter((n) => n.endsWith('.yaml'))) {
      const doc = parse(readFileSync(join('policies/tests', f), 'utf8')) as { cases: { expect: { rule?: string; tags?: string[]; would?: string[] } }[] };
      for (const c of doc.cases) for (const id of [c.expect.rule, ...(c.expect.tags ?? []), ...(c.expect.would ?? [])]) if (id) named.add(id);
    }
    const untested = loadPolicy('policies').rules.map((r) => r.id).filter((id) => !named.has(id));
    expect(untested).toEqual([]);
  });
});
