// Condition language and rule evaluation: operators, list semantics, absent facts, order, monitor mode.

import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { conditionSchema } from '../../src/policy/condition.js';
import { comparableAddress, type Facts } from '../../src/policy/facts.js';
import { loadPolicy } from '../../src/policy/load.js';
import type { Issue } from '../../src/validate/schema.js';

function facts(over: Partial<Facts> = {}): Facts {
  return {
    listener: 'submission',
    listenerMode: 'starttls',
    clientIp: '192.0.2.7',
    authenticated: true,
    account: { name: 'user1@example.test', domain: 'example.test', plan: 'basic', status: 'active', allowlisted: { neverSuspend: false, bulkExempt: false, trustedSubmitter: false } },
    sender: 'user1@example.test',
    recipients: ['a@one.example', 'b@two.example', 'c@two.example'],
    ...over,
  };
}

function message(over: Partial<NonNullable<Facts['message']>> = {}): NonNullable<Facts['message']> {
  return { size: 1000, headers: new Map([['x-mailer', ['Bulk Mailer 3000']]]), from: ['user1@example.test'], subject: 'Quarterly report', body: 'Hello, see attached.', urls: ['https://files.example.com/x'], attachments: [], ...over };
}

function compile(raw: unknown) {
  const issues: Issue[] = [];
  const c = conditionSchema([])!.parse(raw, ['when'], issues);
  expect(issues).toEqual([]);
  return c!;
}

describe('conditions', () => {
  it('compares text ignoring case, numbers by value, and lists by "any element"', () => {
    expect(compile({ sender: 'USER1@example.test' }).test(facts())).toBe(true);
    expect(compile({ 'recipients.count': { gt: 2, lte: 3 } }).test(facts())).toBe(true);
    expect(compile({ 'recipients.domains': { in: ['two.example'] } }).test(facts())).toBe(true);
    expect(compile({ 'recipients.domains.count': 2 }).test(facts())).toBe(true);
    expect(compile({ recipients: { ends_with: '@three.example' } }).test(facts())).toBe(false);
    expect(compile({ 'header.X-Mailer': { matches: '^bulk mailer' } }).test(facts({ message: message() }))).toBe(true);
    expect(compile({ 'urls.domains': 'files.example.com' }).test(facts({ message: message() }))).toBe(true);
    // An address in the file with a combining accent (NFD) is the composed one of the facts (NFC).
    expect(compile({ sender: 'jose\u0301@example.test' }).test(facts({ sender: 'jos\u00e9@example.test' }))).toBe(true);
    expect(compile({ sender: { in: ['JOSE\u0301@example.test'] } }).test(facts({ sender: 'jos\u00e9@example.test' }))).toBe(true);
    expect(compile({ sender: { starts_with: 'jose\u0301' } }).test(facts({ sender: 'jos\u00e9@example.test' }))).toBe(true);
  });

  it('refuses a number no count can equal (YAML\'s .nan, .inf)', () => {
    const issues: Issue[] = [];
    conditionSchema([])!.parse({ 'recipients.count': { equals: Number.NaN } }, ['when'], issues);
    conditionSchema([])!.parse({ 'recipients.count': { in: [3, Number.POSITIVE_INFINITY] } }, ['when'], issues);
    expect(issues.map((i) => `${i.path.join('.')}: ${i.message}`)).toEqual([expect.stringMatching(/^when\.recipients\.count\.equals: must be a number/), expect.stringMatching(/^when\.recipients\.count\.in: must be a non-empty list of values/)]);
  });

  it('a header exists when the message has it: exists false holds for one without it', () => {
    const without = facts({ message: message({ headers: new Map() }) });
    const withIt = facts({ message: message() });
    expect(compile({ 'header.X-Mailer': { exists: true } }).test(withIt)).toBe(true);
    expect(compile({ 'header.X-Mailer': { exists: true } }).test(without)).toBe(false);
    expect(compile({ 'header.X-Mailer': { exists: false } }).test(without)).toBe(true);
    expect(compile({ 'header.X-Mailer': { exists: false } }).test(withIt)).toBe(false);
    expect(compile({ not: { 'header.X-Mailer': { matches: '^bulk' } } }).test(without)).toBe(true);
  });

  it('compares a message text written with combining accents as the composed text the rule names', () => {
    const decomposed = facts({
      message: message({
        subject: 'Ve\u0301rifiez votre compte \u2014 urgent',
        body: 'Votre boi\u0302te est pleine, cliquez ici.',
        from: ['jose\u0301@example.test'],
        attachments: [{ name: 'Facture\u0301.pdf', extension: 'pdf', declaredType: 'application/pdf', detectedType: 'pdf', encrypted: false, archiveEntries: [], size: 10 }],
      }),
    });
    expect(compile({ subject: { contains: 'vérifiez votre compte' } }).test(decomposed)).toBe(true);
    expect(compile({ subject: { matches: '^vérifiez\\b' } }).test(decomposed)).toBe(true);
    expect(compile({ subject: { starts_with: 'v\u00e9rifiez' } }).test(decomposed)).toBe(true);
    expect(compile({ body: { contains: 'boîte est pleine' } }).test(decomposed)).toBe(true);
    expect(compile({ body: { matches: 'bo\u00eete' } }).test(decomposed)).toBe(true);
    expect(compile({ from: { in: ['jos\u00e9@example.test'] } }).test(decomposed)).toBe(true);
    expect(compile({ 'attachments.names': { in: ['factur\u00e9.pdf'] } }).test(decomposed)).toBe(true);
    // A pattern written with a combining accent is composed as the text is.
    expect(compile({ subject: { matches: '^ve\u0301rifiez' } }).test(decomposed)).toBe(true);
    expect(compile({ subject: { matches: '^ve\u0301rifiez' } }).test(facts({ message: message({ subject: 'V\u00e9rifiez' }) }))).toBe(true);
    // Composed text and text without accents are read as they are.
    expect(compile({ subject: { contains: 'vérifiez' } }).test(facts({ message: message({ subject: 'V\u00e9rifiez' }) }))).toBe(true);
    expect(compile({ subject: { contains: 'verifiez' } }).test(decomposed)).toBe(false);
    expect(compile({ subject: { contains: 'quarterly' } }).test(facts({ message: message() }))).toBe(true);
  });

  it('reads patterns as Unicode: \\p{L} is a letter, not the text "p{L}"', () => {
    expect(compile({ subject: { matches: '^\\p{L}+$' } }).test(facts({ message: message({ subject: 'Élodie' }) }))).toBe(true);
    expect(compile({ subject: { matches: '^\\p{L}+$' } }).test(facts({ message: message({ subject: 'p{L}' }) }))).toBe(false);
  });

  it('takes an international domain written either way as one domain (IDNA form, as URL host names have)', () => {
    const idn = facts({ sender: 'anna@XN--Bcher-kva.example', recipients: ['a@bücher.example', 'b@xn--bcher-kva.example'], message: message({ from: ['anna@bücher.example'] }) });
    expect(compile({ 'sender.domain': 'bücher.example' }).test(idn)).toBe(true);
    expect(compile({ 'sender.domain': { in: ['xn--bcher-kva.example'] } }).test(idn)).toBe(true);
    expect(compile({ 'from.domain': 'xn--bcher-kva.example' }).test(idn)).toBe(true);
    expect(compile({ 'recipients.domains.count': 1 }).test(idn)).toBe(true);
    expect(compile({ 'recipients.domains': { in: ['BÜCHER.example'] } }).test(idn)).toBe(true);
    expect(compile({ 'sender.domain': 'buecher.example' }).test(idn)).toBe(false);
    // Other text fields are compared as written.
    expect(compile({ sender: 'anna@xn--bcher-kva.example' }).test(idn)).toBe(true);
    expect(compile({ subject: 'bücher' }).test(facts({ message: message({ subject: 'BÜCHER' }) }))).toBe(true);
  });

  it('takes an account written with its international domain in Unicode, or quoted, as the account it is', () => {
    const joe = facts({ account: { ...facts().account, name: comparableAddress('joe@bücher.example'), domain: 'xn--bcher-kva.example' } });
    expect(compile({ account: 'joe@bücher.example' }).test(joe)).toBe(true);
    expect(compile({ account: { in: ['Joe@BÜCHER.example', 'x@y.test'] } }).test(joe)).toBe(true);
    expect(compile({ account: '"joe"@xn--bcher-kva.example' }).test(joe)).toBe(true);
    expect(compile({ account: 'jo@bücher.example' }).test(joe)).toBe(false);
  });

  it('in_domains: a listed domain covers its subdomains, label by label, on domain fields only', () => {
    const linked = (...urls: string[]) => facts({ message: message({ urls }) });
    const phishing = compile({ 'urls.domains': { in_domains: ['Examp1e-Bank.test', 'bücher.example'] } });
    expect(phishing.test(linked('https://examp1e-bank.test/login'))).toBe(true);
    expect(phishing.test(linked('https://secure.login.EXAMP1E-BANK.test./x'))).toBe(true);
    expect(phishing.test(linked('https://shop.xn--bcher-kva.example/'))).toBe(true);
    // Not a suffix of the text: another site whose name ends the same way, or the domain inside a longer label.
    expect(phishing.test(linked('https://myexamp1e-bank.test/', 'https://examp1e-bank.test.evil.example/'))).toBe(false);
    expect(compile({ 'urls.domains': { in: ['examp1e-bank.test'] } }).test(linked('https://secure.examp1e-bank.test/'))).toBe(false);
    expect(compile({ 'sender.domain': { in_domains: ['example.test'] } }).test(facts({ sender: 'a@mail.example.test' }))).toBe(true);

    const issues: Issue[] = [];
    conditionSchema([])!.parse({ subject: { in_domains: ['x.test'] } }, ['when'], issues);
    conditionSchema([])!.parse({ 'urls.domains': { in_domains: ['*.bank.test', 'ok.test'] } }, ['when'], issues);
    conditionSchema([])!.parse({ 'urls.domains': { in_domains: [] } }, ['when'], issues);
    expect(issues.map((i) => i.message)).toEqual([
      expect.stringMatching(/^is not an operator for subject \(a string field\); use one of: equals, in, matches, contains, starts_with, ends_with, exists$/),
      expect.stringMatching(/^must be a non-empty list of domains, each written plainly \(bank\.example covers login\.bank\.example\) for in_domains/),
      expect.stringMatching(/^must be a non-empty list of domains/),
    ]);
  });

  it('combines with all, any and not', () => {
    const c = compile({ any: [{ subject: { contains: 'invoice' } }, { not: { 'account.plan': { in: ['basic', 'pro'] } } }] });
    expect(c.test(facts({ message: message() }))).toBe(false);
    expect(c.test(facts({ message: message({ subject: 'Your INVOICE' }) }))).toBe(true);
    expect(compile({ all: [{ authenticated: true }, { 'client.ip': { starts_with: '192.0.2.' } }] }).test(facts())).toBe(true);
  });

  it('never matches on a fact that was not computed, except exists: false', () => {
    expect(compile({ 'scan.result': 'clean' }).test(facts())).toBe(false);
    expect(compile({ 'scan.result': { exists: false } }).test(facts())).toBe(true);
    expect(compile({ 'bulk.account_recipients': { lt: 1000 } }).test(facts())).toBe(false);
    expect(compile({ not: { 'scan.result': 'infected' } }).test(facts())).toBe(true);
  });

  it('tells bulk counts made without Redis (bulk.degraded) from shared ones, and from none', () => {
    const bulk = { fingerprint: 'f', accountRecipients: 3, globalRecipients: 3, globalAccounts: 1 };
    expect(compile({ 'bulk.degraded': true }).test(facts({ bulk: { ...bulk, degraded: true } }))).toBe(true);
    expect(compile({ 'bulk.degraded': false }).test(facts({ bulk }))).toBe(true);
    expect(compile({ 'bulk.degraded': true }).test(facts({ bulk }))).toBe(false);
    expect(compile({ 'bulk.degraded': { exists: false } }).test(facts())).toBe(true);
  });

  it('tells an empty list from a missing one', () => {
    expect(compile({ 'limits.exceeded': { empty: false } }).test(facts({ limits: { exceeded: [], usage: {} } }))).toBe(false);
    expect(compile({ 'limits.exceeded': { empty: false } }).test(facts({ limits: { exceeded: ['messages_per_hour'], usage: {} } }))).toBe(true);
    expect(compile({ 'limits.exceeded': { empty: true } }).test(facts())).toBe(false);
  });

  it('computes the earliest phase from the fields used', () => {
    expect(compile({ sender: 'x' }).phase).toBe('mail');
    expect(compile({ sender: 'x', 'recipient.domain': 'y' }).phase).toBe('rcpt');
    expect(compile({ any: [{ sender: 'x' }, { subject: 'y' }] }).phase).toBe('data');
  });

  it('explains each step with the value it saw', () => {
    const out: string[] = [];
    compile({ 'recipients.count': { gt: 5 } }).explain(facts(), out);
    expect(out).toEqual(['no match: recipients.count {"gt":5} (value: 3)']);
  });
});

describe('rule evaluation', () => {
  const policy = loadPolicy('fixtures/policies/minimal');

  it('returns the deciding rule with its article, source, reason and strike', () => {
    const ev = policy.evaluate('data', facts({ message: message({ subject: 'FORBIDDEN-SUBJECT here' }) }));
    expect(ev.verdict).toMatchObject({ action: 'reject', reason: 'content.forbidden', rule: { id: 'subject.forbidden', article: '4.3', source: 'fixtures/policies/minimal/policy.yaml:15' } });
    expect(ev.strikes).toEqual([{ event: 'content_rule', weight: 2, rule: 'subject.forbidden' }]);
  });

  it('computes each field once per evaluation, and afresh for the next one, even of the same facts changed since', () => {
    const f = facts({ message: message({ subject: 'Quarterly report' }) });
    let reads = 0;
    let subject = 'Quarterly report';
    Object.defineProperty(f.message!, 'subject', {
      get: () => {
        reads++;
        return subject;
      },
    });
    // Three rules on the subject before the one that refuses.
    const dir = mkdtempSync(join(tmpdir(), 'douane-fields-'));
    cpSync('fixtures/policies/minimal', dir, { recursive: true });
    const file = join(dir, 'policy.yaml');
    const watching = [1, 2, 3].map((i) => `  - id: subject.watch-${i}\n    description: watched subjects\n    article: "4.3"\n    when: { subject: { matches: "watched-${i}" } }\n    action: tag\n`).join('');
    writeFileSync(file, readFileSync(file, 'utf8').replace(/^rules:\n/m, `rules:\n${watching}`));
    const forbidding = loadPolicy(dir);
    rmSync(dir, { recursive: true, force: true });
    expect(forbidding.evaluate('data', f).verdict.action).toBe('continue');
    expect(reads).toBe(1);
    subject = 'FORBIDDEN-SUBJECT after all';
    expect(forbidding.evaluate('data', f).verdict).toMatchObject({ action: 'reject', rule: { id: 'subject.forbidden' } });
    expect(reads).toBe(2);
    // A trace evaluates the same rules, and reads the same values.
    expect(forbidding.evaluate('data', f, { trace: true }).verdict.action).toBe('reject');
    expect(reads).toBe(3);
  });

  it('monitor mode never changes the outcome but reports what it would have done', () => {
    const ev = policy.evaluate('mail', facts({ sender: 'x@watched.example' }));
    expect(ev.verdict.action).toBe('continue');
    expect(ev.would.map((w) => [w.rule.id, w.action])).toEqual([['sender.watch', 'reject']]);
    expect(ev.strikes).toEqual([]);
  });

  it('resolves an account\'s plan and limits through account, domain and default plan', () => {
    const shipped = loadPolicy('policies');
    expect(shipped.account('someone@example.net')).toMatchObject({ plan: 'standard', limits: { messages_per_hour: 100 } });
    expect(shipped.account('anyone@client-shop.example')).toMatchObject({ plan: 'pro', limits: { messages_per_hour: 300 } });
    expect(shipped.account('Newsletter@Client-Shop.example')).toMatchObject({ plan: 'entreprise', limits: { recipients_per_hour: 5000, messages_per_hour: 1000 } });
    expect(shipped.account('newsletter@client-shop.example').allowlisted.bulkExempt).toBe(true);
    expect(shipped.owns('newsletter@client-shop.example', 'INFOS@client-shop.example')).toBe(true);
    expect(shipped.owns('newsletter@client-shop.example', 'other@client-shop.example')).toBe(false);
  });

  it('matches allowlists, aliases and the account itself whichever way an international domain is written', () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-idn-'));
    cpSync('policies', dir, { recursive: true });
    const allow = join(dir, 'allowlists.yaml');
    writeFileSync(allow, readFileSync(allow, 'utf8').replace('  bulk_exempt:\n', '  bulk_exempt:\n    - "*@bücher.example"\n'));
    const limits = join(dir, 'limits.yaml');
    writeFileSync(limits, readFileSync(limits, 'utf8').replace('accounts:\n', 'accounts:\n  Chef@Bücher.example: { plan: entreprise }\n'));
    const policy = loadPolicy(dir);
    rmSync(dir, { recursive: true });
    expect(policy.account('anna@xn--bcher-kva.example').allowlisted.bulkExempt).toBe(true);
    expect(policy.account('anna@BÜCHER.example').allowlisted.bulkExempt).toBe(true);
    expect(policy.account('anna@buecher.example').allowlisted.bulkExempt).toBe(false);
    expect(policy.owns('anna@bücher.example', 'Anna@xn--bcher-kva.example')).toBe(true);
    expect(policy.account('chef@xn--bcher-kva.example').plan).toBe('entreprise');
    expect(policy.account('anna@xn--bcher-kva.example').plan).not.toBe('entreprise');
  });
});
