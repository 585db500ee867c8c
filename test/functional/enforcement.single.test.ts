// Enforcement on one instance without Redis: a suspension outlives a restart; its directories are
// private; the plan Zimbra's class of service names; and the start-up warning for a Zimbra admin URL
// that would carry the admin password in clear.

import { chmodSync, cpSync, mkdirSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FakeUpstream } from '../harness/fake-upstream.js';
import { FakeZimbra } from '../harness/fake-zimbra.js';
import { startGateway, type TestGateway } from '../harness/gateway.js';
import { RawSmtp } from '../harness/net.js';

let upstream: FakeUpstream | undefined;
const gateways: TestGateway[] = [];
afterEach(async () => {
  for (const g of gateways.splice(0)) await g.stop();
  await upstream?.stop();
});

async function mailFrom(gw: TestGateway, from: string): Promise<string> {
  const c = await RawSmtp.connect(gw.port('trusted'));
  await c.reply();
  await c.command('EHLO webmail.test');
  const reply = await c.command(`MAIL FROM:<${from}>`);
  c.close();
  return reply;
}

/** A whole message on the trusted listener; the MAIL FROM reply, and the final one when MAIL FROM was taken. */
async function message(gw: TestGateway, from: string): Promise<string> {
  const c = await RawSmtp.connect(gw.port('trusted'));
  await c.reply();
  await c.command('EHLO webmail.test');
  let reply = await c.command(`MAIL FROM:<${from}>`);
  if (reply.startsWith('250')) {
    await c.command('RCPT TO:<friend@example.net>');
    await c.command('DATA');
    c.write(`From: ${from}\r\nSubject: hi\r\n\r\nHello.\r\n.\r\n`);
    reply = await c.reply();
  }
  c.close();
  return reply;
}

describe('enforcement state without Redis', () => {
  it('a suspended account is still refused at MAIL FROM after a restart', async () => {
    upstream = await FakeUpstream.start();
    const state = mkdtempSync(join(tmpdir(), 'douane-restart-state-'));
    const first = await startGateway(upstream.port, { state_dir: state });
    await first.gateway.enforcer.suspend('user1@example.test', 'suspend_sending', { by: 'cli:test', reference: 'D-RSTRT1', reason: 'phishing complaint' });
    expect(await mailFrom(first, 'user1@example.test')).toMatch(/^550 5\.7\.1 Sending is suspended/);
    await first.stop();

    const second = await startGateway(upstream.port, { state_dir: state });
    gateways.push(second);
    expect(await mailFrom(second, 'user1@example.test')).toMatch(/^550 5\.7\.1 Sending is suspended for this account \(user1@example\.test\) .*incident D-RSTRT1/);
    expect(await mailFrom(second, 'user2@example.test')).toMatch(/^250 /);
  });

  it('closes a quarantine or outbox directory an earlier install left open to other users, and says so', async () => {
    upstream = await FakeUpstream.start();
    const state = mkdtempSync(join(tmpdir(), 'douane-open-state-'));
    mkdirSync(join(state, 'quarantine'), { mode: 0o777 });
    chmodSync(join(state, 'quarantine'), 0o777);
    const gw = await startGateway(upstream.port, { state_dir: state });
    gateways.push(gw);
    expect(statSync(join(state, 'quarantine')).mode & 0o777).toBe(0o700);
    expect(statSync(join(state, 'outbox')).mode & 0o777).toBe(0o700);
    expect(gw.logs.filter((l) => l.event === 'private_dir_tightened')).toEqual([expect.objectContaining({ level: 'warn', dir: join(state, 'quarantine'), mode: '0777' })]);
  });

  it('an account\'s plan is the one its Zimbra class of service names, after the policy\'s own entries', async () => {
    upstream = await FakeUpstream.start();
    const zimbra = await FakeZimbra.start();
    try {
      zimbra.addAccount({ name: 'small@example.test', cosId: 'cos-small' });
      zimbra.addAccount({ name: 'listed@example.test', cosId: 'cos-small' });
      zimbra.addAccount({ name: 'other@example.test', cosId: 'cos-unmapped' });
      const dir = mkdtempSync(join(tmpdir(), 'douane-cos-policy-'));
      cpSync('fixtures/policies/minimal', dir, { recursive: true });
      const text = readFileSync(join(dir, 'policy.yaml'), 'utf8')
        .replace('default_plan: basic\n', 'default_plan: basic\naccounts:\n  listed@example.test: { plan: basic }\n')
        .replace('plans:\n', 'plans:\n  small: { messages_per_minute: 1, messages_per_hour: 10, messages_per_day: 10, recipients_per_message: 5, recipients_per_hour: 10, recipients_per_day: 10, recipient_domains_per_hour: 5, bytes_per_day: 1M, concurrent_sessions: 2 }\n')
        .replace('rules:\n', 'rules:\n  - { id: limits.rate, description: d, article: "4.6", when: { limits.exceeded: { empty: false } }, action: tempfail, reason: limit.rate }\n');
      writeFileSync(join(dir, 'policy.yaml'), text);
      const gw = await startGateway(upstream.port, {
        policy: { dir, watch: false },
        lifecycle: { adapter: 'zimbra', timeout: '2s', status_cache: '0s', zimbra: { url: zimbra.url, admin_user: zimbra.adminUser, admin_password: zimbra.adminPassword, cos_plans: { 'cos-small': 'small', 'cos-unmapped': 'gold' } } },
      });
      gateways.push(gw);
      // One message a minute on the small plan: the second waits.
      expect(await message(gw, 'small@example.test')).toMatch(/^250 /);
      expect(await message(gw, 'small@example.test')).toMatch(/^450 4\.7\.1 Sending limit reached/);
      // The policy's own entry for the account comes first; a plan the policy does not define is left aside.
      for (const account of ['listed@example.test', 'other@example.test']) {
        expect(await message(gw, account)).toMatch(/^250 /);
        expect(await message(gw, account)).toMatch(/^250 /);
      }
      const line = await gw.waitForLog((l) => l.event === 'transaction' && l.account === 'other@example.test');
      expect(JSON.stringify(line)).toContain('"plan_not_in_policy":"gold"');
    } finally {
      await zimbra.stop();
    }
  });

  it('a lifecycle API that does not answer gives the account the status unavailable, not unknown: a rule may tempfail on it', async () => {
    upstream = await FakeUpstream.start();
    const zimbra = await FakeZimbra.start();
    zimbra.addAccount({ name: 'user1@example.test' });
    const dir = mkdtempSync(join(tmpdir(), 'douane-unavailable-policy-'));
    cpSync('fixtures/policies/minimal', dir, { recursive: true });
    writeFileSync(join(dir, 'policy.yaml'), readFileSync(join(dir, 'policy.yaml'), 'utf8').replace('rules:\n', 'rules:\n  - { id: account.unchecked, description: d, article: "6", when: { account.status: unavailable }, action: tempfail, reason: sender.unverifiable }\n'));
    const gw = await startGateway(upstream.port, {
      policy: { dir, watch: false },
      lifecycle: { adapter: 'zimbra', timeout: '1s', status_cache: '0s', zimbra: { url: zimbra.url, admin_user: zimbra.adminUser, admin_password: zimbra.adminPassword } },
    });
    gateways.push(gw);
    expect(await mailFrom(gw, 'user1@example.test')).toMatch(/^250 /);
    // An account the API does not know is "unknown", and sends.
    expect(await mailFrom(gw, 'stranger@example.test')).toMatch(/^250 /);
    await zimbra.stop();
    expect(await mailFrom(gw, 'nobody-cached@example.test')).toMatch(/^451 4\.4\.3 .*rule account\.unchecked/);
  });

  it('warns at start when the Zimbra admin URL would send the admin password in clear', async () => {
    upstream = await FakeUpstream.start();
    const zimbra = { adapter: 'zimbra', zimbra: { url: 'http://zimbra.internal:7071/service/admin/soap', admin_user: 'admin@x.test', admin_password: 'secret' } };
    const gw = await startGateway(upstream.port, { lifecycle: zimbra });
    gateways.push(gw);
    expect(gw.logs.find((l) => l.event === 'lifecycle_plain_http')).toMatchObject({ level: 'warn', url: 'http://zimbra.internal:7071/service/admin/soap' });
    const local = await startGateway(upstream.port, { lifecycle: { ...zimbra, zimbra: { ...zimbra.zimbra, url: 'http://127.0.0.1:7071/service/admin/soap' } } });
    gateways.push(local);
    expect(local.logs.some((l) => l.event === 'lifecycle_plain_http')).toBe(false);
  });
});
