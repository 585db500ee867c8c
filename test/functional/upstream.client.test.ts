// The upstream client on its own: the client's credentials cross to the upstream only encrypted, or to an
// upstream on this machine, or where the configuration says in so many words that the network is trusted
// (tls: none); a keepalive belongs to one transaction.

import { afterEach, describe, expect, it } from 'vitest';
import { isLoopbackAddress, SmtpClient, UpstreamError, type UpstreamEndpoint } from '../../src/upstream/smtp-client.js';
import { FakeUpstream } from '../harness/fake-upstream.js';
import { DEAD_PORT } from '../harness/net.js';

let upstream: FakeUpstream | undefined;
afterEach(async () => {
  await upstream?.stop();
  upstream = undefined;
});

const endpoint = (port: number, tls: UpstreamEndpoint['tls']): UpstreamEndpoint => ({
  host: '127.0.0.1',
  port,
  tls,
  verifyCertificate: false,
  heloName: 'douane.test',
  timeouts: { connect: 2000, command: 2000, data: 2000, keepalive: 60_000 },
});

describe('failures', () => {
  it('a connection refused is a connect failure (the MTA down), one dropped after it is closed', async () => {
    const refused = await SmtpClient.connect(endpoint(DEAD_PORT, 'none')).catch((err: unknown) => err);
    expect(refused).toMatchObject({ kind: 'connect', message: expect.stringMatching(new RegExp(`^cannot connect to upstream 127\\.0\\.0\\.1:${DEAD_PORT}: .*ECONNREFUSED`)) });
    upstream = await FakeUpstream.start({ mail: () => 'drop' });
    const client = await SmtpClient.connect(endpoint(upstream.port, 'none'));
    const dropped = await client.mail('user1@example.test').catch((err: unknown) => err);
    expect(dropped).toMatchObject({ kind: 'closed' });
  });
});

describe('credentials towards the upstream', () => {
  it('opportunistic TLS to a remote upstream that offers no STARTTLS: the credentials are not sent', async () => {
    // The fake upstream speaks no TLS, as an upstream whose STARTTLS was stripped on the path.
    upstream = await FakeUpstream.start({ users: { 'user1@example.test': 'secret1' } });
    const remote = await SmtpClient.connect(endpoint(upstream.port, 'opportunistic'), { peerIsLocal: () => false });
    const refused = await remote.auth('user1@example.test', 'secret1').catch((err: unknown) => err);
    expect(refused).toBeInstanceOf(UpstreamError);
    expect(refused).toMatchObject({ kind: 'tls', message: expect.stringMatching(/offered no STARTTLS: the client's credentials are not sent in clear/) });
    expect(upstream.commands.filter((c) => c.startsWith('AUTH'))).toEqual([]);
    remote.destroy();

    // On this machine, or with tls: none, they are.
    const local = await SmtpClient.connect(endpoint(upstream.port, 'opportunistic'));
    expect((await local.auth('user1@example.test', 'secret1')).code).toBe(235);
    await local.quit();
    const trusted = await SmtpClient.connect(endpoint(upstream.port, 'none'), { peerIsLocal: () => false });
    expect((await trusted.auth('user1@example.test', 'secret1')).code).toBe(235);
    await trusted.quit();
  });

  it('knows a loopback peer address', () => {
    for (const a of ['127.0.0.1', '127.1.2.3', '::1', '::ffff:127.0.0.1']) expect(isLoopbackAddress(a), a).toBe(true);
    for (const a of ['10.0.0.1', '::ffff:10.0.0.1', '128.0.0.1', 'fe80::1', '', '::']) expect(isLoopbackAddress(a), a).toBe(false);
  });
});

describe('keepalive', () => {
  it('sends NOOP while its transaction is open, and none once it was reset, even when the connection serves another', async () => {
    upstream = await FakeUpstream.start();
    const client = await SmtpClient.connect({ ...endpoint(upstream.port, 'none'), timeouts: { connect: 2000, command: 2000, data: 2000, keepalive: 50 } });
    const noops = () => upstream!.commands.filter((c) => c === 'NOOP').length;
    await client.mail('a@example.test');
    const stop = client.keepAlive();
    await expect.poll(noops).toBeGreaterThanOrEqual(2);
    // Its client left: reset, and the connection goes to the next session, which opens its own transaction.
    await client.rset();
    await client.mail('b@example.test');
    const after = noops();
    await new Promise((r) => setTimeout(r, 250));
    expect(noops()).toBe(after);
    await stop();
    await client.quit();
  });

  it('takes any 2xx to MAIL FROM as an open transaction: the next one resets it first', async () => {
    upstream = await FakeUpstream.start({ mail: () => '251 2.1.0 Ok, odd but fine' });
    const client = await SmtpClient.connect(endpoint(upstream.port, 'none'));
    await client.mail('a@example.test');
    expect(client.inTransaction).toBe(true);
    await client.mail('b@example.test');
    expect(upstream.commands.filter((c) => /^(MAIL|RSET)/.test(c)).map((c) => c.split(':')[0])).toEqual(['MAIL FROM', 'RSET', 'MAIL FROM']);
    await client.quit();
  });
});
