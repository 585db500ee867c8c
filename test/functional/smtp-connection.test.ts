// Guards the adaptations of smtp-server's connection (src/smtp/connection.ts) and the graceful shutdown.
// smtp-server is pinned; if an upgrade changes the internals these rely on, these tests fail.

import net from 'node:net';
import tls from 'node:tls';
import { describe, expect, it, vi } from 'vitest';
import { Spool } from '../../src/data/spool.js';
import { gatewayWithUpstream } from '../harness/gateway.js';
import { RawSmtp } from '../harness/net.js';

const setup = gatewayWithUpstream();

describe('connection adaptations', () => {
  it('greets without the library\'s 100 ms early-talker pause', async () => {
    const { gw } = await setup();
    const times: number[] = [];
    for (let i = 0; i < 5; i++) {
      const started = performance.now();
      const c = await RawSmtp.connect(gw.port('trusted'));
      expect(await c.reply()).toMatch(/^220 douane\.test ESMTP/);
      times.push(performance.now() - started);
      c.close();
    }
    // The library's pause alone is 100 ms; any greeting faster than that proves it is gone.
    expect(Math.min(...times)).toBeLessThan(90);
  });

  it('a client that talks before the greeting is refused, or answered after the greeting and in order', async () => {
    const { gw } = await setup();
    const socket = net.connect({ port: gw.port('trusted'), host: '127.0.0.1' });
    socket.write('EHLO eager\r\nMAIL FROM:<a@b>\r\n'); // written before connect completes
    const data = await new Promise<string>((resolve) => {
      let all = '';
      socket.on('data', (d) => (all += d.toString()));
      socket.on('close', () => resolve(all));
      setTimeout(() => resolve(all), 1000);
    });
    socket.destroy();
    // Either refused as an early talker (the commands arrived while the connect checks ran), or the greeting
    // came first and each command was answered in order; never a command answered before the greeting.
    const refused = /^421 4\.\d+\.\d+ [^\r\n]*You talk too soon[^\r\n]*\r\n$/;
    const inOrder = /^220 douane\.test ESMTP\r\n250-douane\.test [^\r\n]*\r\n(?:250-[^\r\n]*\r\n)*250 [^\r\n]*\r\n250 2\.1\.0 Ok\r\n$/;
    expect(refused.test(data) || inOrder.test(data), JSON.stringify(data)).toBe(true);
  });

  it('puts one enhanced status code on every reply, including multi-line EHLO', async () => {
    const { gw } = await setup();
    const c = await RawSmtp.connect(gw.port('trusted'));
    await c.reply();
    const ehlo = await c.command('EHLO client.test');
    expect(ehlo.split('\r\n')[0]).toMatch(/^250-douane\.test/);
    expect(ehlo).toMatch(/ENHANCEDSTATUSCODES/);
    expect(ehlo).toMatch(/PIPELINING/);
    expect(await c.command('RCPT TO:<x@example.test>')).toMatch(/^503 5\.5\.1 /);
    expect(await c.command('FOO')).toMatch(/^500 5\.5\.2 Error: command not recognized\. Ref D-[0-9A-Z]{6}\.$/);
    expect(await c.command('MAIL FROM:<user1@example.test>')).toBe('250 2.1.0 Ok');
    expect(await c.command('RSET')).toMatch(/^250 2\.0\.0 /);
    expect(await c.command('QUIT')).toMatch(/^221 2\.0\.0 /);
  });

  it('closes on too many unknown commands with 421 4.7.0, a reason and a reference', async () => {
    const { gw } = await setup();
    const c = await RawSmtp.connect(gw.port('trusted'));
    await c.reply();
    let last = '';
    for (let i = 0; i < 20 && !last.startsWith('421'); i++) last = await c.command(`XYZZY${i}`);
    expect(last).toMatch(/^421 4\.7\.0 Too many unrecognized or unauthenticated commands; closing the connection\. Ref D-[0-9A-Z]{6}\.$/);
    c.close();
    await expect.poll(async () => (await gw.metrics.registry.metrics()).match(/^douane_sessions_total\{listener="trusted",outcome="(\w+)"\} 1$/m)?.[1]).toBe('ended_by_douane');
  });

  it('gives the client the upstream\'s text for MAIL and RCPT, and its enhanced code', async () => {
    const { gw } = await setup({ mail: () => '250 2.1.0 Sender ok, go ahead', rcpt: () => '250 2.1.5 Recipient looks fine' });
    const c = await RawSmtp.connect(gw.port('trusted'));
    await c.reply();
    await c.command('EHLO client.test');
    expect(await c.command('MAIL FROM:<user1@example.test>')).toBe('250 2.1.0 Sender ok, go ahead');
    expect(await c.command('RCPT TO:<x@example.test>')).toBe('250 2.1.5 Recipient looks fine');
    c.close();
  });

  it('adds a class-default enhanced code to upstream replies that carry none', async () => {
    const { gw } = await setup({ capabilities: ['PIPELINING', 'SIZE 1000000'], rcpt: (to) => (to.startsWith('x') ? '550 no such user here' : to.startsWith('y') ? '552 mailbox full' : '503 bad sequence') });
    const c = await RawSmtp.connect(gw.port('trusted'));
    await c.reply();
    await c.command('EHLO client.test');
    await c.command('MAIL FROM:<user1@example.test>');
    // Not 5.7.1 (delivery not authorised) for an unknown user, nor 5.3.4 (message too big) for a full mailbox.
    expect(await c.command('RCPT TO:<x@example.test>')).toMatch(/^550 5\.0\.0 no such user here \(Ref D-[0-9A-Z]{6}\)$/);
    expect(await c.command('RCPT TO:<y@example.test>')).toMatch(/^552 5\.0\.0 mailbox full \(Ref D-[0-9A-Z]{6}\)$/);
    expect(await c.command('RCPT TO:<z@example.test>')).toMatch(/^503 5\.5\.1 bad sequence \(Ref D-[0-9A-Z]{6}\)$/);
    c.close();
  });
});

/** A trusted-listener session that has sent EHLO, MAIL, RCPT and DATA: the message comes next. */
async function atData(port: number): Promise<RawSmtp> {
  const c = await RawSmtp.connect(port);
  await c.reply();
  await c.command('EHLO client.test');
  await c.command('MAIL FROM:<user1@example.test>');
  await c.command('RCPT TO:<user2@example.test>');
  await c.command('DATA');
  return c;
}

/** Removing a spooled message takes `ms` (a slow disk); mockRestore() puts it back. */
function slowSpoolRemoval(ms: number) {
  const dispose = Spool.prototype.dispose;
  return vi.spyOn(Spool.prototype, 'dispose').mockImplementation(async function (this: Spool) {
    await new Promise((r) => setTimeout(r, ms));
    return dispose.call(this);
  });
}

describe('behind a load balancer (PROXY protocol v1)', () => {
  /** A connection from the balancer's address (127.0.0.1), opened with its PROXY line for `client`. */
  async function proxied(port: number, client: string, opts: { tls?: boolean } = {}): Promise<RawSmtp> {
    const socket = net.connect({ port, host: '127.0.0.1' });
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    socket.write(client.includes(':') ? `PROXY TCP6 ${client} 2001:db8::1 40000 ${port}\r\n` : `PROXY TCP4 ${client} 127.0.0.1 40000 ${port}\r\n`);
    if (!opts.tls) return RawSmtp.over(socket);
    const secure = tls.connect({ socket, rejectUnauthorized: false });
    await new Promise<void>((resolve, reject) => secure.once('secureConnect', resolve).once('error', reject));
    return RawSmtp.over(secure);
  }

  const behindBalancer = (extra: Record<string, unknown> = {}) =>
    setup({}, {
      listeners: {
        submissions: { mode: 'tls', port: 0, proxy_protocol_from: ['127.0.0.1'] },
        trusted: { mode: 'trusted', port: 0, allow: ['203.0.113.0/24'], proxy_protocol_from: ['127.0.0.1'] },
      },
      ...extra,
    });

  it('takes each connection as from the client its PROXY line names: for the trusted network and the log', async () => {
    const { gw } = await behindBalancer();
    const c = await proxied(gw.port('trusted'), '203.0.113.7');
    expect(await c.reply()).toMatch(/^220 /);
    await c.command('EHLO webmail.test');
    expect(await c.command('MAIL FROM:<user1@example.test>')).toMatch(/^250/);
    expect(await c.command('RCPT TO:<user2@example.test>')).toMatch(/^250/);
    expect(await c.command('DATA')).toMatch(/^354/);
    c.write('Subject: x\r\n\r\nhi\r\n.\r\n');
    expect(await c.reply()).toMatch(/^250 /);
    c.close();
    expect((await gw.waitForLog((l) => l.event === 'transaction')).client).toBe('203.0.113.7');

    // A client outside the trusted network, through the same balancer: refused, and named.
    const outside = await proxied(gw.port('trusted'), '198.51.100.9');
    expect(await outside.reply()).toMatch(/^554 5\.7\.1 Your address \(198\.51\.100\.9\) may not submit mail on this port/);
    outside.close();
  });

  it('passes an IPv6 client on by XCLIENT in the form Postfix takes (IPV6:), and says why when the upstream refuses it', async () => {
    const xclient = async (ipv6: boolean) => {
      const { gw, upstream } = await setup(
        { capabilities: ['PIPELINING', 'SIZE 52428800', '8BITMIME', 'ENHANCEDSTATUSCODES', 'XCLIENT ADDR PORT HELO PROTO'], xclientIpv6: ipv6 },
        { listeners: { trusted: { mode: 'trusted', port: 0, allow: ['2001:db8::/32', '203.0.113.0/24'], proxy_protocol_from: ['127.0.0.1'] } }, upstream: { xclient: true } },
      );
      const c = await proxied(gw.port('trusted'), '2001:db8::25');
      expect(await c.reply()).toMatch(/^220 /);
      await c.command('EHLO webmail.test');
      const mail = await c.command('MAIL FROM:<user1@example.test>');
      c.close();
      return { gw, upstream, mail };
    };
    const taken = await xclient(true);
    expect(taken.mail).toMatch(/^250/);
    expect(taken.upstream.commands).toContainEqual(expect.stringMatching(/^XCLIENT ADDR=IPV6:2001:db8::25 PORT=40000 HELO=webmail\.test PROTO=ESMTP$/));
    await taken.gw.stop();
    await taken.upstream.stop();
    // An upstream without IPv6 (Postfix with inet_protocols = ipv4): tempfailed, and the log says what to change.
    const refused = await xclient(false);
    expect(refused.mail).toMatch(/^451 4\.4\.1 /);
    const why = await refused.gw.waitForLog((l) => /refused XCLIENT/.test(String(l.err ?? l.detail ?? '')));
    expect(String(why.err ?? why.detail)).toMatch(/501 5\.5\.4 Bad ADDR syntax: IPV6:2001:db8::25 \(the client has an IPv6 address: the upstream must take them, with inet_protocols = all for Postfix\)/);
  });

  it('writes the client\'s HELO into XCLIENT as xtext of its UTF-8 bytes', async () => {
    const { gw, upstream } = await setup(
      { capabilities: ['PIPELINING', 'SIZE 52428800', '8BITMIME', 'ENHANCEDSTATUSCODES', 'XCLIENT ADDR PORT HELO PROTO'] },
      { listeners: { trusted: { mode: 'trusted', port: 0, allow: ['127.0.0.0/8'] } }, upstream: { xclient: true } },
    );
    const c = await RawSmtp.connect(gw.port('trusted'));
    await c.reply();
    await c.command('EHLO x+€é=.example');
    expect(await c.command('MAIL FROM:<user1@example.test>')).toMatch(/^250/);
    c.close();
    expect(upstream.commands).toContainEqual(expect.stringMatching(/^XCLIENT ADDR=127\.0\.0\.1 PORT=\d+ HELO=x\+2B\+E2\+82\+AC\+C3\+A9\+3D\.example PROTO=ESMTP$/));
  });

  it('warns at start when upstream.xclient is set and the upstream does not offer XCLIENT to Douane', async () => {
    const trusted = { listeners: { trusted: { mode: 'trusted', port: 0, allow: ['127.0.0.0/8'] } }, upstream: { xclient: true } };
    const without = await setup({ capabilities: ['PIPELINING', 'SIZE 52428800', '8BITMIME', 'ENHANCEDSTATUSCODES'] }, trusted);
    expect(await without.gw.waitForLog((l) => l.event === 'xclient_not_offered')).toMatchObject({ level: 'warn', port: 'trusted', msg: expect.stringMatching(/smtpd_authorized_xclient_hosts/) });
    const offered = await setup({ capabilities: ['PIPELINING', 'SIZE 52428800', '8BITMIME', 'ENHANCEDSTATUSCODES', 'XCLIENT ADDR PORT HELO PROTO'] }, trusted);
    await offered.gw.waitForLog((l) => l.event === 'listening');
    expect(offered.gw.logs.some((l) => l.event === 'xclient_not_offered')).toBe(false);
  });

  it('caps connections per client, not per balancer; a connection from elsewhere is taken as it is', async () => {
    const { gw } = await behindBalancer({ smtp: { max_connections_per_ip: 2 } });
    const port = gw.port('trusted');
    const held = [await proxied(port, '203.0.113.1'), await proxied(port, '203.0.113.1'), await proxied(port, '203.0.113.2'), await proxied(port, '203.0.113.3')];
    for (const c of held) expect(await c.reply()).toMatch(/^220 /);
    const third = await proxied(port, '203.0.113.1');
    expect(await third.reply()).toMatch(/^421 4\.7\.0 Too many simultaneous connections from your address \(203\.0\.113\.1\)/);
    // Not the balancer (another loopback address): no PROXY line expected, and its own address counts.
    const socket = net.connect({ port, host: '127.0.0.1', localAddress: '127.0.0.3' });
    const greeting = await new Promise<string>((resolve) => socket.once('data', (d) => resolve(d.toString())));
    expect(greeting).toMatch(/^554 5\.7\.1 Your address \(127\.0\.0\.3\) may not submit mail/);
    socket.destroy();
    for (const c of held) c.close();
  });

  it('a connection from the balancer without a version 1 PROXY line is closed, and the log says why', async () => {
    const { gw } = await behindBalancer();
    const socket = net.connect({ port: gw.port('trusted'), host: '127.0.0.1' });
    await new Promise<void>((resolve) => socket.once('connect', resolve));
    // The version 2 signature (HAProxy's send-proxy-v2), then a binary header.
    socket.write(Buffer.concat([Buffer.from('0d0a0d0a000d0a515549540a', 'hex'), Buffer.from([0x21, 0x11, 0x00, 0x0c]), Buffer.alloc(12)]));
    const answer = await new Promise<string>((resolve) => {
      let all = '';
      socket.on('data', (d) => (all += d.toString('latin1')));
      socket.on('close', () => resolve(all));
    });
    expect(answer).not.toMatch(/^220/);
    expect(await gw.waitForLog((l) => l.event === 'proxy_header_refused')).toMatchObject({ level: 'warn', listener: 'trusted', proxy: '127.0.0.1', msg: expect.stringMatching(/PROXY protocol version 1/) });
  });

  it('on the implicit TLS port, connections waiting for their handshake through the balancer are not capped as one address', async () => {
    const { gw } = await behindBalancer({ smtp: { max_connections_per_ip: 2 } });
    const port = gw.port('submissions');
    // Three clients that sent nothing past the PROXY line yet: they hold sockets before any handshake.
    const waiting = await Promise.all(['203.0.113.4', '203.0.113.5', '203.0.113.6'].map(async (client) => {
      const socket = net.connect({ port, host: '127.0.0.1' });
      await new Promise<void>((resolve) => socket.once('connect', resolve));
      socket.write(client.includes(':') ? `PROXY TCP6 ${client} 2001:db8::1 40000 ${port}\r\n` : `PROXY TCP4 ${client} 127.0.0.1 40000 ${port}\r\n`);
      return socket;
    }));
    const c = await proxied(port, '203.0.113.7', { tls: true });
    expect(await c.reply()).toMatch(/^220 /);
    c.close();
    for (const s of waiting) s.destroy();
  });
});

describe('graceful shutdown', () => {
  it('stops accepting, ends idle sessions with 421, and lets an open transaction finish', async () => {
    const { gw, upstream } = await setup();
    const idle = await RawSmtp.connect(gw.port('trusted'));
    await idle.reply();
    const busy = await RawSmtp.connect(gw.port('trusted'));
    await busy.reply();
    await busy.command('EHLO client.test');
    await busy.command('MAIL FROM:<user1@example.test>');
    await busy.command('RCPT TO:<user2@example.test>');

    const stopping = gw.gateway.stop(3000);
    expect(await idle.reply()).toMatch(/^421 4\.3\.2 This server is restarting/);
    await new Promise((r) => setTimeout(r, 50));
    await expect(RawSmtp.connect(gw.port('trusted'))).rejects.toThrow(/ECONNREFUSED/);

    expect(await busy.command('DATA')).toMatch(/^354/);
    busy.write('Subject: during shutdown\r\n\r\nstill delivered\r\n.\r\n');
    expect(await busy.reply()).toMatch(/^250 2\.0\.0 Ok: queued/);
    // No new transaction once the open one is done.
    const next = await busy.command('MAIL FROM:<user1@example.test>');
    expect(next === '(closed)' || /^421 4\.3\.2/.test(next)).toBe(true);
    await stopping;
    expect(upstream.messages).toHaveLength(1);
  });

  it('at the drain deadline, a message whose final dot the upstream has gets the upstream answer, not 421', async () => {
    // The upstream queues the message at its final dot and answers late: cutting the connection then
    // would have the client send it again, a duplicate.
    const { gw, upstream } = await setup({ dataEnd: () => ({ delayMs: 1500 }) });
    const c = await atData(gw.port('trusted'));
    c.write('Subject: queued at the dot\r\n\r\nanswered late\r\n.\r\n');
    await upstream.waitForMessages(1);
    expect(upstream.messages).toHaveLength(1);
    const stopping = gw.gateway.stop(200);
    expect(await c.reply()).toMatch(/^250 2\.0\.0 Ok: queued as FAKE1/);
    expect(await c.reply()).toMatch(/^421 4\.3\.2 This server is restarting.* Ref D-[0-9A-Z]{6}\.$/);
    await stopping;
    expect(gw.transactions().map((t) => t.verdict)).toEqual(['accept']);
  });

  it('at the drain deadline, the upstream answer reaches the client even when removing the spooled copy takes a while', async () => {
    // The relay is done once its answer is written, not once the upstream answered: between the two, the
    // spool is removed (a file on a slow disk here).
    const slow = slowSpoolRemoval(100);
    try {
      const { gw, upstream } = await setup({ dataEnd: () => ({ delayMs: 500 }) });
      const c = await atData(gw.port('trusted'));
      c.write('Subject: queued at the dot\r\n\r\nanswered late\r\n.\r\n');
      await upstream.waitForMessages(1);
      const stopping = gw.gateway.stop(100);
      expect(await c.reply()).toMatch(/^250 2\.0\.0 Ok: queued as FAKE1/);
      await stopping;
      expect(gw.transactions().map((t) => t.verdict)).toEqual(['accept']);
    } finally {
      slow.mockRestore();
    }
  });

  it('at the drain deadline, a message the upstream accepted before it, whose answer is not written yet, still gets it', async () => {
    // The upstream answered early; removing the spooled copy (a slow disk) is still under way at the deadline.
    const slow = slowSpoolRemoval(400);
    try {
      const { gw } = await setup({ dataEnd: () => ({ delayMs: 20 }) });
      const c = await atData(gw.port('trusted'));
      c.write('Subject: accepted early\r\n\r\nanswered early\r\n.\r\n');
      await expect.poll(() => gw.transactions().length).toBe(1);
      const stopping = gw.gateway.stop(100);
      expect(await c.reply()).toMatch(/^250 2\.0\.0 Ok: queued as FAKE1/);
      await stopping;
    } finally {
      slow.mockRestore();
    }
  });

  it('does not wait on a connection to the TLS port that never starts its handshake', async () => {
    const { gw } = await setup();
    const net = await import('node:net');
    const silent = net.connect(gw.port('submissions'), '127.0.0.1');
    await new Promise((r) => silent.once('connect', r));
    const closed = new Promise((r) => silent.once('close', r));
    // Without it, stopping waits for the handshake timeout (smtp.idle_timeout, 5 minutes).
    await gw.gateway.stop(100);
    await closed;
  });

  it('421s a transaction still open at the drain deadline, relaying nothing of it', async () => {
    const { gw, upstream } = await setup();
    const c = await atData(gw.port('trusted'));
    c.write('Subject: never finished\r\n\r\npart');
    const started = Date.now();
    await gw.gateway.stop(300);
    expect(Date.now() - started).toBeLessThan(2500);
    expect(await c.reply()).toMatch(/^421 4\.3\.2 This server is restarting.* Ref D-[0-9A-Z]{6}\.$/);
    expect(await c.reply()).toBe('(closed)');
    expect(upstream.messages).toHaveLength(0);
  });
});
