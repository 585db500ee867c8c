// The admin endpoint: /metrics, /healthz, /readyz telling the truth about the upstream, bearer token.

import http from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { AdminServer, type AccountsAdmin } from '../../src/admin.js';
import { parseCidr, type Cidr } from '../../src/validate/net.js';
import { FakeUpstream } from '../harness/fake-upstream.js';
import { startGateway, type TestGateway } from '../harness/gateway.js';
import { RawSmtp } from '../harness/net.js';

let upstream: FakeUpstream | undefined;
let gw: TestGateway | undefined;
let admin: AdminServer | undefined;

afterEach(async () => {
  await admin?.stop();
  await gw?.stop();
  await upstream?.stop();
  admin = undefined;
  gw = undefined;
  upstream = undefined;
});

async function setup(token?: string) {
  upstream = await FakeUpstream.start();
  gw = await startGateway(upstream.port);
  const { createLogger } = await import('../../src/log.js');
  admin = new AdminServer({ address: '127.0.0.1', port: 0, token }, gw.metrics, createLogger({ level: 'silent' }));
  for (const [name, probe] of Object.entries(gw.gateway.readinessProbes())) admin.addProbe(name, probe);
  await admin.start();
  return `http://127.0.0.1:${admin.port}`;
}

/** An admin endpoint without a token whose accounts API only records the suspensions it is asked for. */
async function recordingAdmin(opts: { without_token_from?: Cidr[] }): Promise<string[]> {
  const { Metrics } = await import('../../src/metrics.js');
  const { createLogger } = await import('../../src/log.js');
  const acted: string[] = [];
  const accounts = {
    canonical: async (a: string) => a,
    overview: async () => ({ suspended: [] }),
    suspend: async (a: string) => void acted.push(`suspend ${a}`),
  } as unknown as AccountsAdmin;
  admin = new AdminServer({ address: '127.0.0.1', port: 0, ...opts }, new Metrics({ version: 't', defaultMetrics: false }), createLogger({ level: 'silent' }));
  admin.setAccounts(accounts);
  await admin.start();
  return acted;
}

describe('admin endpoint', () => {
  it('serves /healthz and Prometheus metrics that move with traffic', async () => {
    const base = await setup();
    expect((await fetch(`${base}/healthz`)).status).toBe(200);
    const c = await RawSmtp.connect(gw!.port('trusted'));
    await c.reply();
    await c.command('EHLO t');
    await c.command('MAIL FROM:<user1@example.test>');
    await c.command('RCPT TO:<user2@example.test>');
    await c.command('DATA');
    // A client slow to send its message: its time is not Douane's time to answer DATA.
    c.write('Subject: m\r\n\r\nx\r\n');
    await new Promise((r) => setTimeout(r, 1500));
    c.write('.\r\n');
    expect(await c.reply()).toMatch(/^250 /);
    c.close();
    expect(Number(/^douane_phase_duration_seconds_sum\{phase="data"\} (\S+)$/m.exec(await gw!.metrics.registry.metrics())![1])).toBeLessThan(1.5);
    // The log line still says how long the message took to come in.
    expect(((await gw!.waitForLog((l) => l.event === 'transaction')).timings as { data: number }).data).toBeGreaterThanOrEqual(1400);
    const res = await fetch(`${base}/metrics`);
    expect(res.headers.get('content-type')).toMatch(/text\/plain/);
    const text = await res.text();
    expect(text).toMatch(/douane_transactions_total\{listener="trusted",verdict="accept",reason="none"\} 1/);
    expect(text).toMatch(/douane_build_info\{version="test",node="v\d+/);
    expect(text).toMatch(/douane_upstream_replies_total\{command="data",class="2xx"\} 1/);
    expect((await fetch(`${base}/nope`)).status).toBe(404);
  });

  it('exports when the TLS certificate expires, and warns in the log of one that ends within 14 days', async () => {
    const { execFileSync } = await import('node:child_process');
    const { mkdtempSync, readFileSync, rmSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const { X509Certificate } = await import('node:crypto');
    const expiry = async (g: TestGateway) => Number(/^douane_tls_certificate_expiry_timestamp_seconds (\d+)$/m.exec(await g.metrics.registry.metrics())?.[1]);
    upstream = await FakeUpstream.start();

    // The throwaway certificate of the test configuration (tls.insecure_dev): 30 days, no warning.
    gw = await startGateway(upstream.port);
    expect((await expiry(gw)) * 1000 - Date.now()).toBeGreaterThan(29 * 86_400_000);
    expect(gw.logs.filter((l) => String(l.event).startsWith('tls_certificate_'))).toEqual([]);
    await gw.stop();

    const dir = mkdtempSync(join(tmpdir(), 'douane-cert-'));
    try {
      execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '3', '-subj', '/CN=mail.douane.test', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem')], { stdio: 'pipe' });
      const validTo = Date.parse(new X509Certificate(readFileSync(join(dir, 'cert.pem'))).validTo);
      gw = await startGateway(upstream.port, { tls: { cert: join(dir, 'cert.pem'), key: join(dir, 'key.pem') } });
      expect(await expiry(gw)).toBe(validTo / 1000);
      expect(gw.logs.find((l) => l.event === 'tls_certificate_expiring')).toMatchObject({ level: 'warn', subject: 'CN=mail.douane.test', msg: expect.stringMatching(/expires on .*, in 2 days: renew it and send SIGHUP$/) });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('/readyz is 200 with a reachable upstream and 503, naming it, when the upstream is down', async () => {
    const base = await setup();
    const ok = await fetch(`${base}/readyz`);
    expect(ok.status).toBe(200);
    expect(await ok.json()).toEqual({ ready: true, checks: { listeners: { ok: true }, upstream: { ok: true } } });
    await upstream!.stop();
    // A new gateway (fresh probe cache) against the stopped upstream.
    await admin!.stop();
    await gw!.stop();
    gw = await startGateway(upstream!.port);
    const { createLogger } = await import('../../src/log.js');
    admin = new AdminServer({ address: '127.0.0.1', port: 0 }, gw.metrics, createLogger({ level: 'silent' }));
    for (const [name, probe] of Object.entries(gw.gateway.readinessProbes())) admin.addProbe(name, probe);
    await admin.start();
    const down = await fetch(`http://127.0.0.1:${admin.port}/readyz`);
    expect(down.status).toBe(503);
    const body = (await down.json()) as { ready: boolean; checks: Record<string, { ok: boolean; detail?: string }> };
    expect(body.ready).toBe(false);
    expect(body.checks.upstream!.ok).toBe(false);
    expect(body.checks.upstream!.detail).toMatch(/ECONNREFUSED|connect/);
    const readiness = async () => /^douane_readiness\{check="upstream"\} (\d)$/m.exec(await gw!.metrics.registry.metrics())?.[1];
    expect(await readiness()).toBe('0');
    // The upstream is back: the health timer, not the next /readyz, clears its gauge (and the alert on it).
    upstream = await FakeUpstream.start({ port: upstream!.port });
    // A failed probe's answer is kept for 5 s (cachedProbe); health ticks come every 10 s.
    await expect.poll(async () => (gw!.gateway.refreshHealth(), readiness()), { timeout: 10_000, interval: 500 }).toBe('1');
  });

  it('the upstream\'s readiness gauge follows the upstream with no one asking /readyz: from the start, and after failures in traffic', async () => {
    const readiness = async () => /^douane_readiness\{check="upstream"\} (\d)$/m.exec(await gw!.metrics.registry.metrics())?.[1];
    upstream = await FakeUpstream.start();
    const port = upstream.port;
    gw = await startGateway(port);
    await expect.poll(readiness, { timeout: 5000 }).toBe('1');

    // Down while mail comes in: a client is tempfailed, and the next health tick probes the upstream.
    await upstream.stop();
    const c = await RawSmtp.connect(gw.port('trusted'));
    await c.reply();
    await c.command('EHLO t');
    expect(await c.command('MAIL FROM:<a@example.test>')).toMatch(/^451 4\.4\.1 /);
    c.close();
    gw.gateway.refreshHealth();
    await expect.poll(readiness, { timeout: 5000 }).toBe('0');
    upstream = await FakeUpstream.start({ port });
    await expect.poll(async () => (gw!.gateway.refreshHealth(), readiness()), { timeout: 10_000, interval: 500 }).toBe('1');
    await gw.stop();

    // Down at start: the gauge says so at once.
    await upstream.stop();
    gw = await startGateway(port);
    await expect.poll(readiness, { timeout: 5000 }).toBe('0');
    upstream = await FakeUpstream.start({ port });
    await expect.poll(async () => (gw!.gateway.refreshHealth(), readiness()), { timeout: 10_000, interval: 500 }).toBe('1');
  });

  it('requires the bearer token for metrics and details when one is configured; health checks need none', async () => {
    const base = await setup('s3cret-token');
    expect((await fetch(`${base}/metrics`)).status).toBe(401);
    expect((await fetch(`${base}/metrics`, { headers: { authorization: 'Bearer wrong' } })).status).toBe(401);
    expect((await fetch(`${base}/metrics`, { headers: { authorization: 'Bearer s3cret-token' } })).status).toBe(200);
    // The scheme is case-insensitive; the token is not.
    expect((await fetch(`${base}/metrics`, { headers: { authorization: 'bearer s3cret-token' } })).status).toBe(200);
    expect((await fetch(`${base}/metrics`, { headers: { authorization: 'BEARER  s3cret-token' } })).status).toBe(200);
    expect((await fetch(`${base}/metrics`, { headers: { authorization: 'Bearer S3CRET-TOKEN' } })).status).toBe(401);
    expect((await fetch(`${base}/accounts`)).status).toBe(401);
    // A container health check or a load balancer without the token: alive, ready, and nothing more.
    expect((await fetch(`${base}/healthz`)).status).toBe(200);
    const open = await fetch(`${base}/readyz`);
    expect(open.status).toBe(200);
    expect(await open.json()).toEqual({ ready: true });
    const detailed = (await (await fetch(`${base}/readyz`, { headers: { authorization: 'Bearer s3cret-token' } })).json()) as { checks: Record<string, unknown> };
    expect(Object.keys(detailed.checks)).toContain('upstream');
  });

  it('without a token, answers the accounts API from admin.without_token_from only; /metrics stays open', async () => {
    const acted = await recordingAdmin({ without_token_from: [parseCidr('127.0.0.1')!] });
    // 127.0.0.2 stands for a host of the management network that is not in the list.
    const request = (method: string, path: string, localAddress: string) =>
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        const req = http.request({ host: '127.0.0.1', port: admin!.port, method, path, localAddress }, (res) => {
          let body = '';
          res.on('data', (d: Buffer) => (body += d.toString()));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        });
        req.on('error', reject);
        req.end(method === 'POST' ? '{}' : undefined);
      });
    const far = await request('POST', '/accounts/victim@example.test/suspend', '127.0.0.2');
    expect(far.status).toBe(403);
    expect(far.body).toMatch(/without a token the accounts API answers 127\.0\.0\.1 only, not 127\.0\.0\.2: set admin\.token/);
    expect((await request('GET', '/accounts', '127.0.0.2')).status).toBe(403);
    expect((await request('POST', '/breaker/reset', '127.0.0.2')).status).toBe(403);
    expect(acted).toEqual([]);
    expect((await request('GET', '/metrics', '127.0.0.2')).status).toBe(200);
    expect((await request('GET', '/accounts', '127.0.0.1')).status).toBe(200);
    expect((await request('POST', '/accounts/victim@example.test/suspend', '127.0.0.1')).status).toBe(200);
    expect(acted).toEqual(['suspend victim@example.test']);
  });

  it('does not answer the accounts API to a web page (a form posted across sites, a name rebound to this host)', async () => {
    const acted = await recordingAdmin({});
    const base = `http://127.0.0.1:${admin!.port}`;
    // What a browser sends with a form posted from another site: text/plain, its Origin, Sec-Fetch-Site.
    for (const headers of [{ origin: 'https://evil.example', 'sec-fetch-site': 'cross-site' }, { origin: 'null' }, { 'sec-fetch-site': 'same-origin' }] as Record<string, string>[]) {
      const res = await fetch(`${base}/accounts/victim@example.test/suspend`, { method: 'POST', headers: { 'content-type': 'text/plain', ...headers }, body: '{"reason":"x"}' });
      expect(res.status, JSON.stringify(headers)).toBe(403);
      expect(((await res.json()) as { error: string }).error).toMatch(/does not answer requests a web page sends/);
    }
    expect((await fetch(`${base}/breaker/reset`, { method: 'POST', headers: { origin: 'http://127.0.0.1:1' } })).status).toBe(403);
    expect(acted).toEqual([]);
    // The operator typing the address in a browser (Sec-Fetch-Site: none), and the CLI, are answered.
    expect((await fetch(`${base}/accounts`, { headers: { 'sec-fetch-site': 'none' } })).status).toBe(200);
    expect((await fetch(`${base}/accounts/victim@example.test/suspend`, { method: 'POST', body: '{}' })).status).toBe(200);
    expect(acted).toEqual(['suspend victim@example.test']);
  });

  it('reads a body whose characters come split across TCP segments whole', async () => {
    const { Metrics } = await import('../../src/metrics.js');
    const { createLogger } = await import('../../src/log.js');
    const net = await import('node:net');
    const reasons: string[] = [];
    const accounts = {
      canonical: async (a: string) => a,
      suspend: async (_a: string, _action: string, why: { reason: string }) => (reasons.push(why.reason), { action: 'suspend_sending' }),
    } as unknown as AccountsAdmin;
    admin = new AdminServer({ address: '127.0.0.1', port: 0 }, new Metrics({ version: 't', defaultMetrics: false }), createLogger({ level: 'silent' }));
    admin.setAccounts(accounts);
    await admin.start();
    const body = Buffer.from(JSON.stringify({ action: 'suspend_sending', for_ms: 60_000, reason: 'fraude signalée' }));
    const cut = body.indexOf(Buffer.from('é')) + 1; // between the two bytes of é
    const s = net.connect(admin.port, '127.0.0.1');
    let answer = '';
    s.on('data', (d: Buffer) => (answer += d.toString()));
    s.write(`POST /accounts/v@x.test/suspend HTTP/1.1\r\nHost: x\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n`);
    s.write(body.subarray(0, cut));
    await new Promise((r) => setTimeout(r, 100));
    s.write(body.subarray(cut));
    await new Promise((r) => s.on('close', r));
    expect(answer).toMatch(/^HTTP\/1\.1 200 /);
    expect(reasons).toEqual(['fraude signalée']);
  });

  it('without a token, answers the accounts API from this host whatever the list says (the CLI on the address it listens on)', async () => {
    const { Metrics } = await import('../../src/metrics.js');
    const { createLogger } = await import('../../src/log.js');
    admin = new AdminServer({ address: '127.0.0.1', port: 0, without_token_from: [parseCidr('10.0.0.0/8')!] }, new Metrics({ version: 't', defaultMetrics: false }), createLogger({ level: 'silent' }));
    admin.setAccounts({ overview: async () => ({ suspended: [] }) } as unknown as AccountsAdmin);
    await admin.start();
    const status = (localAddress: string) =>
      new Promise<number>((resolve, reject) => {
        const req = http.request({ host: '127.0.0.1', port: admin!.port, path: '/accounts', localAddress }, (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        });
        req.on('error', reject);
        req.end();
      });
    expect(await status('127.0.0.1')).toBe(200);
    expect(await status('127.0.0.2')).toBe(403);
  });
});
