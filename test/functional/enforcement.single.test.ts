// Enforcement on one instance without Redis: a suspension outlives a restart; its directories are
// private; and the start-up warning for a Zimbra admin URL that would carry the admin password in clear.

import { chmodSync, mkdirSync, mkdtempSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FakeUpstream } from '../harness/fake-upstream.js';
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
