// `douane policy test | explain | diff` decide as the live gateway does: the same facts, the same outcome,
// recipients refused while the others went on, scanning.max_size, and strikes.

import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import { summarize } from '../../src/policy/diff.js';
import { loadPolicy } from '../../src/policy/load.js';
import { evaluateOffline } from '../../src/policy/offline.js';
import { runPolicyTests } from '../../src/policy/tests.js';

const config = loadConfig().config;

/** The shipped policy with extra rules put first in rules.yaml. */
function policyWith(rules: string, edit: (dir: string) => void = () => undefined): string {
  const dir = mkdtempSync(join(tmpdir(), 'douane-offline-'));
  cpSync('policies', dir, { recursive: true });
  const file = join(dir, 'rules.yaml');
  writeFileSync(file, readFileSync(file, 'utf8').replace(/^rules:\n/m, `rules:\n${rules}`));
  edit(dir);
  return dir;
}

const PARTNER_ONLY = `  - id: test.partner-only
    description: this account may write to the partner only
    article: "4.3"
    when: { all: [{ account: { equals: "ops@example.test" } }, { not: { recipient.domain: { in: [partner.example] } } }] }
    action: reject
`;

describe('offline evaluation', () => {
  it('a recipient refused while the others went on: the message is accepted, the refusal reported, tested and diffed', async () => {
    const dir = policyWith(PARTNER_ONLY);
    const policy = loadPolicy(dir);
    const o = await evaluateOffline(policy, config, { account: 'ops@example.test', recipients: ['a@partner.example', 'b@elsewhere.example'] });
    expect(o.action).toBe('accept');
    expect(o.refusedRecipients).toEqual([{ address: 'b@elsewhere.example', rule: 'test.partner-only', reply: expect.stringMatching(/^550 5\.7\.1 /) }]);
    expect(summarize(o)).toBe('accept, 1 recipient refused by test.partner-only');
    expect(summarize(await evaluateOffline(loadPolicy('policies'), config, { account: 'ops@example.test', recipients: ['a@partner.example', 'b@elsewhere.example'] }))).toBe('accept');

    const cases = join(dir, 'cases.yaml');
    writeFileSync(
      cases,
      `cases:
  - name: partner only
    account: ops@example.test
    recipients: [a@partner.example, b@elsewhere.example]
    expect: { action: accept, refused_recipients: [b@elsewhere.example] }
  - name: expects no refusal
    account: ops@example.test
    recipients: [a@partner.example, b@elsewhere.example]
    expect: { action: accept, refused_recipients: [] }
`,
    );
    const run = await runPolicyTests(policy, config, [cases]);
    expect(run.results.map((r) => [r.name, r.failures])).toEqual([
      ['partner only', []],
      ['expects no refusal', ['refused_recipients: expected [], got [b@elsewhere.example]']],
    ]);
  });

  it('names each kind of listener as the embedded default does, so that a rule on a listener\'s name can be tested', async () => {
    const dir = policyWith(`  - id: test.implicit-tls-only
    description: this account submits on the implicit TLS port only
    article: "4.3"
    when: { all: [{ account: { equals: "ops@example.test" } }, { not: { listener: { equals: submissions } } }] }
    action: reject
`);
    const policy = loadPolicy(dir);
    const on = async (listener: 'starttls' | 'tls' | 'trusted') => (await evaluateOffline(policy, config, { account: 'ops@example.test', recipients: ['a@x.example'], listener })).action;
    expect([await on('tls'), await on('starttls'), await on('trusted')]).toEqual(['accept', 'reject', 'reject']);
  });

  it('applies the plan\'s recipients_per_message, counted within the message as live, with nothing given', async () => {
    const dir = policyWith('', (d) => {
      const limits = join(d, 'limits.yaml');
      writeFileSync(limits, readFileSync(limits, 'utf8').replace(/(standard:[\s\S]*?recipients_per_message: )\d+/, '$12'));
    });
    const o = await evaluateOffline(loadPolicy(dir), config, { account: 'user1@example.test', recipients: ['a@x.example', 'b@x.example', 'c@x.example'] });
    expect(o.action).toBe('accept');
    expect(o.refusedRecipients).toEqual([{ address: 'c@x.example', rule: 'limits.recipients-per-message', reply: expect.stringMatching(/^452 4\.5\.3 /) }]);
  });

  it('names the rule that accepted a message, and gives refusals the contact the gateway gives them', async () => {
    const dir = policyWith(`  - id: test.newsletter-allowed
    description: the newsletter account is let through
    article: "4.3"
    when: { account: { equals: "newsletter@example.test" } }
    phase: data
    action: accept
  - id: test.no-greetings
    description: a subject refused with a message naming the contact
    article: "4.3"
    when: { subject: { contains: "GREETINGS" } }
    action: reject
    message: Greetings are not allowed; write to {contact} if this is a mistake.
`);
    const policy = loadPolicy(dir);
    const accepted = await evaluateOffline(policy, config, { account: 'newsletter@example.test', recipients: ['a@x.example'] });
    expect(accepted).toMatchObject({ action: 'accept', phase: 'data', rule: { id: 'test.newsletter-allowed' } });
    const cases = join(dir, 'cases.yaml');
    writeFileSync(cases, 'cases:\n  - name: newsletter\n    account: newsletter@example.test\n    recipients: [a@x.example]\n    expect: { action: accept, rule: test.newsletter-allowed, phase: data }\n');
    expect((await runPolicyTests(policy, config, [cases])).results.map((r) => r.failures)).toEqual([[]]);

    const refused = await evaluateOffline(policy, config, { account: 'user1@example.test', recipients: ['a@x.example'], message: Buffer.from('From: user1@example.test\r\nSubject: GREETINGS\r\n\r\nhi\r\n') });
    expect(refused.reply).toContain(`write to ${config.enforcement.contact} if this is a mistake`);
  });

  it('a test case\'s given facts name limits and statuses as the gateway does: a misspelt one is refused with file, line and key', async () => {
    const cases = join(mkdtempSync(join(tmpdir(), 'douane-cases-')), 'typos.yaml');
    writeFileSync(
      cases,
      `cases:
  - name: typos
    account: user1@example.test
    given: { limits: { exceeded: [mesages_per_hour], usage: { mesages_per_hour: 99 } }, recipient_limits: { exceeded: [messages_per_day] }, account_status: suspnded }
    expect: { action: accept }
`,
    );
    const err = await runPolicyTests(loadPolicy('policies'), config, [cases]).then(() => undefined, (e: Error) => e);
    expect(err?.message.split('\n')).toEqual([
      expect.stringMatching(/typos\.yaml:4:\d+: cases\[0\]\.given\.account_status must be one of active, locked, .* \(got "suspnded"\)/),
      expect.stringMatching(/typos\.yaml:4:\d+: cases\[0\]\.given\.limits\.exceeded\[0\] must be one of messages_per_minute, messages_per_hour, .* \(got "mesages_per_hour"\)/),
      expect.stringMatching(/typos\.yaml:4:\d+: cases\[0\]\.given\.limits\.usage.*mesages_per_hour/),
      expect.stringMatching(/typos\.yaml:4:\d+: cases\[0\]\.given\.recipient_limits\.exceeded\[0\] must be one of recipients_per_message, .* \(got "messages_per_day"\)/),
    ]);
  });

  it('a message over scanning.max_size is decided by scanning.over_max_size, as live', async () => {
    const dir = policyWith('', (d) => {
      const file = join(d, 'inspection.yaml');
      writeFileSync(file, readFileSync(file, 'utf8').replace('max_size: 25M', 'max_size: 1K'));
    });
    const message = Buffer.from(`From: user1@example.test\r\nTo: a@example.net\r\nSubject: big\r\n\r\n${'x'.repeat(2000)}\r\n`);
    const o = await evaluateOffline(loadPolicy(dir), config, { account: 'user1@example.test', recipients: ['a@example.net'], message, given: { scan: { result: 'clean' } } });
    expect(o).toMatchObject({ action: 'reject', reason: 'scan.too_big', phase: 'data' });
  });

  it('names the account as the gateway does: a rule on it decides the same way', async () => {
    const dir = policyWith(`  - id: test.blocked
    description: one account may not send
    article: "4.3"
    when: { account: { equals: "ops@xn--mller-kva.example" } }
    action: reject
`);
    const o = await evaluateOffline(loadPolicy(dir), config, { account: 'Ops@MÜLLER.example', recipients: ['a@example.net'] });
    expect(o).toMatchObject({ action: 'reject', rule: { id: 'test.blocked' } });
  });

  it('counts the strikes of the data phase once the message is decided', async () => {
    const o = await evaluateOffline(loadPolicy('policies'), config, { account: 'user1@example.test', recipients: ['a@example.net'], given: { scan: { result: 'infected', signature: 'Eicar-Test-Signature' } } });
    expect(o).toMatchObject({ action: 'quarantine', rule: { id: 'malware.found' } });
    expect(o.strikes.map((s) => s.event)).toEqual(['malware']);
  });
});
