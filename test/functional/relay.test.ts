// The transparent relay against an in-process upstream that can be told to fail: per-command forwarding,
// the upstream's own replies, pipelining, RSET, and never a 250 before the upstream's 250.

import net from 'node:net';
import tls from 'node:tls';
import { describe, expect, it, vi } from 'vitest';
import { gatewayWithUpstream, startGateway } from '../harness/gateway.js';
import { FakeUpstream } from '../harness/fake-upstream.js';
import { freePort, RawSmtp } from '../harness/net.js';
import { makeSelfSigned } from '../../src/smtp/tls.js';
import { Limiter } from '../../src/limits/limiter.js';

const MESSAGE = 'From: user1@example.test\r\nTo: user2@example.test\r\nSubject: hello\r\nMessage-ID: <hello-1@example.test>\r\n\r\nHello there.\r\n.leading dot line\r\n';

const setup = gatewayWithUpstream();

/** The upstream's reply as it was, then the transaction's incident reference (captured: group 1). */
function upstreamReply(reply: string): RegExp {
  return new RegExp(`^${reply.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} \\(Ref (D-[0-9A-Z]{6})\\)$`);
}

/** EHLO, STARTTLS, EHLO, AUTH PLAIN on the submission listener. */
async function authenticated(port: number, user = 'user1@example.test', pass = 'secret1'): Promise<{ c: RawSmtp; auth: string }> {
  const c = await RawSmtp.connect(port);
  expect(await c.reply()).toMatch(/^220 /);
  const clear = await c.command('EHLO client.test');
  expect(clear).toMatch(/STARTTLS/);
  expect(clear).not.toMatch(/AUTH/); // not offered in clear: no password before STARTTLS
  expect(await c.command('STARTTLS')).toMatch(/^220 /);
  await c.starttls();
  const ehlo = await c.command('EHLO client.test');
  expect(ehlo).toMatch(/AUTH PLAIN LOGIN/);
  expect(ehlo).toMatch(/ENHANCEDSTATUSCODES/);
  const auth = await c.command(`AUTH PLAIN ${Buffer.from(`\0${user}\0${pass}`).toString('base64')}`);
  return { c, auth };
}

async function trusted(port: number): Promise<RawSmtp> {
  const c = await RawSmtp.connect(port);
  expect(await c.reply()).toMatch(/^220 /);
  expect(await c.command('EHLO webmail.test')).toMatch(/^250/);
  return c;
}

/** Sends MESSAGE and leaves once it is on its way upstream (an upstream that is slow to answer it). */
async function sendThenLeave(c: RawSmtp, upstream: FakeUpstream): Promise<void> {
  await c.command('MAIL FROM:<user1@example.test>');
  await c.command('RCPT TO:<user2@example.test>');
  await c.command('DATA');
  c.write(MESSAGE + '.\r\n');
  await expect.poll(() => upstream.commands.includes('DATA')).toBe(true);
  c.close();
}

describe('relay on the submission listener (STARTTLS + AUTH pass-through)', () => {
  it('authenticates at the upstream and relays each command, answering with the upstream replies', async () => {
    const { upstream, gw } = await setup();
    const { c, auth } = await authenticated(gw.port('submission'));
    expect(auth).toMatch(/^235 2\.7\.0/);
    expect(await c.command('MAIL FROM:<user1@example.test>')).toBe('250 2.1.0 Ok');
    expect(await c.command('RCPT TO:<user2@example.test>')).toBe('250 2.1.5 Ok');
    expect(await c.command('DATA')).toMatch(/^354 /);
    c.write(MESSAGE.replace('\r\n.leading', '\r\n..leading') + '.\r\n');
    expect(await c.reply()).toBe('250 2.0.0 Ok: queued as FAKE1');
    expect(upstream.messages).toHaveLength(1);
    expect(upstream.messages[0]!.user).toBe('user1@example.test');
    expect(upstream.messages[0]!.raw.toString()).toBe(MESSAGE);
    expect(upstream.commands).toEqual(['EHLO douane.test', 'AUTH ***', 'MAIL FROM:<user1@example.test>', 'RCPT TO:<user2@example.test>', 'DATA']);
    const line = await gw.waitForLog((l) => l.event === 'transaction');
    expect(line).toMatchObject({ verdict: 'accept', account: 'user1@example.test', listener: 'submission', from: 'user1@example.test', message_id: '<hello-1@example.test>', size: MESSAGE.length });
    expect(line.ref).toMatch(/^D-[0-9A-Z]{6}$/);
    c.close();
  });

  it('a login the upstream took but Douane could not finish gets 451, and the client\'s next AUTH is checked afresh', async () => {
    const { upstream, gw } = await setup();
    const failing = vi.spyOn(Limiter.prototype, 'sessionOpened').mockRejectedValueOnce(new Error('session count failed'));
    try {
      const { c, auth } = await authenticated(gw.port('submission'));
      expect(auth).toMatch(/^451 4\.3\.0 .*Ref D-[0-9A-Z]{6}/);
      // The connection the upstream logged in is not the session's any more: a retry logs in on a new one.
      expect(await c.command(`AUTH PLAIN ${Buffer.from('\0user1@example.test\0secret1').toString('base64')}`)).toMatch(/^235 2\.7\.0/);
      expect(await c.command('MAIL FROM:<user1@example.test>')).toBe('250 2.1.0 Ok');
      c.close();
      await expect.poll(() => upstream.commands.filter((x) => x === 'QUIT').length).toBe(1);
    } finally {
      failing.mockRestore();
    }
  });

  it('refuses AUTH before STARTTLS with 538 5.7.11 and a reference', async () => {
    const { gw } = await setup();
    const c = await RawSmtp.connect(gw.port('submission'));
    await c.reply();
    await c.command('EHLO client.test');
    const r = await c.command(`AUTH PLAIN ${Buffer.from('\0user1@example.test\0secret1').toString('base64')}`);
    expect(r).toMatch(/^538 5\.7\.11 .*STARTTLS.* Ref D-[0-9A-Z]{6}\.$/);
    // A login's refusal, counted with the auth phase's.
    expect(await gw.metrics.registry.getSingleMetricAsString('douane_refusals_total')).toMatch(/^douane_refusals_total\{phase="auth",reason="auth\.tls_required"\} 1$/m);
    c.close();
  });

  it('offers TLS 1.2 at least (1.0 and 1.1 never), and 1.3 only when tls.min_version says so', async () => {
    const handshake = (port: number, v: { minVersion: tls.SecureVersion; maxVersion: tls.SecureVersion }) =>
      new Promise<string>((resolve) => {
        // The client's own floor lowered, so that only the server can refuse.
        const socket = tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false, ciphers: 'DEFAULT@SECLEVEL=0', ...v });
        socket.once('secureConnect', () => {
          resolve(socket.getProtocol() ?? 'none');
          socket.destroy();
        });
        socket.once('error', () => resolve('refused'));
      });
    const { gw } = await setup();
    expect(await handshake(gw.port('submissions'), { minVersion: 'TLSv1', maxVersion: 'TLSv1.1' })).toBe('refused');
    // Said with the client and why, and counted: the customers still on TLS 1.1 can be found.
    expect(await gw.waitForLog((l) => l.event === 'tls_handshake_failed')).toMatchObject({ level: 'warn', listener: 'submissions', client: '127.0.0.1', err: expect.stringMatching(/protocol/i) });
    expect(await gw.metrics.registry.getSingleMetricAsString('douane_tls_handshake_failures_total')).toMatch(/^douane_tls_handshake_failures_total\{listener="submissions"\} 1$/m);
    expect(await handshake(gw.port('submissions'), { minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2' })).toBe('TLSv1.2');
    await gw.stop();
    const strict = await setup({}, { tls: { min_version: 'TLSv1.3' } });
    expect(await handshake(strict.gw.port('submissions'), { minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2' })).toBe('refused');
    expect(await handshake(strict.gw.port('submissions'), { minVersion: 'TLSv1.2', maxVersion: 'TLSv1.3' })).toBe('TLSv1.3');
  });

  it('a handshake that fails after STARTTLS is said and counted, and leaves no session or upstream connection behind', async () => {
    const { gw, upstream } = await setup();
    const sessions = async () => (await gw.metrics.registry.getSingleMetricAsString('douane_sessions_active')).match(/listener="submission"\} (\d+)/)?.[1];
    // A client on TLS 1.1 only, then one that goes on in plain text after the 220.
    const tls11 = await RawSmtp.connect(gw.port('submission'));
    await tls11.reply();
    await tls11.command('EHLO client.test');
    expect(await tls11.command('STARTTLS')).toMatch(/^220 /);
    const raw = (tls11 as unknown as { socket: net.Socket }).socket;
    raw.removeAllListeners('data');
    const outcome = await new Promise<string>((resolve) => {
      const secure = tls.connect({ socket: raw, rejectUnauthorized: false, minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT@SECLEVEL=0' });
      secure.once('secureConnect', () => resolve(secure.getProtocol() ?? 'none'));
      secure.once('error', () => resolve('refused'));
    });
    expect(outcome).toBe('refused');
    expect(await gw.waitForLog((l) => l.event === 'tls_handshake_failed' && l.listener === 'submission')).toMatchObject({ level: 'warn', client: '127.0.0.1', err: expect.stringMatching(/protocol/i) });
    const plain = await RawSmtp.connect(gw.port('submission'));
    await plain.reply();
    await plain.command('EHLO client.test');
    expect(await plain.command('STARTTLS')).toMatch(/^220 /);
    plain.write('EHLO client.test\r\n');
    expect(await plain.reply()).toBe('(closed)');
    await expect.poll(() => gw.metrics.registry.getSingleMetricAsString('douane_tls_handshake_failures_total')).toMatch(/^douane_tls_handshake_failures_total\{listener="submission"\} 2$/m);
    // Both sessions are over, and so are the upstream connections they had opened.
    await expect.poll(sessions).toBe('0');
    await expect.poll(() => upstream.open).toBe(0);
    tls11.close();
  });

  it('requires AUTH before MAIL on the submission listener (530 5.7.0)', async () => {
    const { gw, upstream } = await setup();
    const c = await RawSmtp.connect(gw.port('submission'));
    await c.reply();
    await c.command('EHLO client.test');
    expect(await c.command('MAIL FROM:<user1@example.test>')).toMatch(/^530 5\.7\.0 Authentication required.*Ref D-/);
    expect(upstream.connections).toBe(0);
    // A refusal of MAIL, counted with that phase's.
    expect(await gw.metrics.registry.getSingleMetricAsString('douane_refusals_total')).toMatch(/^douane_refusals_total\{phase="mail",reason="auth\.required"\} 1$/m);
    c.close();
  });

  it('answers a wrong password with 535 5.7.8 and closes with 421 after repeated failures', async () => {
    const { gw } = await setup({}, { smtp: { max_auth_failures: 3 } });
    const { c, auth } = await authenticated(gw.port('submission'), 'user1@example.test', 'wrong');
    expect(auth).toMatch(/^535 5\.7\.8 Authentication failed.*Ref D-/);
    const token = Buffer.from('\0user1@example.test\0wrong').toString('base64');
    expect(await c.command(`AUTH PLAIN ${token}`)).toMatch(/^535 5\.7\.8/);
    expect(await c.command(`AUTH PLAIN ${token}`)).toMatch(/^421 4\.7\.0 Too many failed authentication attempts/);
    expect(await c.reply()).toBe('(closed)');
    const logged = gw.logs.filter((l) => l.event === 'auth');
    expect(logged.map((l) => [l.result, l.reason, l.login])).toEqual([
      ['failure', 'auth.failed', 'user1@example.test'],
      ['failure', 'auth.failed', 'user1@example.test'],
      ['too_many_failures', 'auth.too_many_failures', 'user1@example.test'],
    ]);
    // Neither the password nor the AUTH token that carries it (nor its base64 pieces) reaches the logs.
    const logs = JSON.stringify(gw.logs);
    for (const secret of ['wrong', token, Buffer.from('wrong').toString('base64')]) expect(logs).not.toContain(secret);
  });

  it('supports AUTH LOGIN from the client', async () => {
    const { gw, upstream } = await setup();
    const c = await RawSmtp.connect(gw.port('submissions'), { tls: true });
    await c.reply();
    await c.command('EHLO client.test');
    expect(await c.command('AUTH LOGIN')).toMatch(/^334 /);
    expect(await c.command(Buffer.from('user1@example.test').toString('base64'))).toMatch(/^334 /);
    expect(await c.command(Buffer.from('secret1').toString('base64'))).toMatch(/^235 /);
    expect(upstream.commands).toContain('AUTH ***');
    c.close();
  });

  it('passes a password that is not UTF-8 upstream byte for byte, by PLAIN and by LOGIN', async () => {
    // "sécret" typed on an old client in Latin-1: the é is one byte, 0xE9, which is not UTF-8.
    const latin1 = Buffer.from('s\u00e9cret', 'latin1');
    const b64 = (b: Buffer | string) => Buffer.from(b).toString('base64');
    for (const upstreamMechanism of ['AUTH PLAIN LOGIN', 'AUTH LOGIN']) {
      const { gw, upstream } = await setup({
        users: { 'user1@example.test': latin1 },
        capabilities: ['PIPELINING', 'ENHANCEDSTATUSCODES', upstreamMechanism],
      });
      const plain = await RawSmtp.connect(gw.port('submissions'), { tls: true });
      await plain.reply();
      await plain.command('EHLO client.test');
      const blob = Buffer.concat([Buffer.from('\0user1@example.test\0'), latin1]);
      expect(await plain.command(`AUTH PLAIN ${b64(blob)}`)).toMatch(/^235 /);
      plain.close();

      const login = await RawSmtp.connect(gw.port('submissions'), { tls: true });
      await login.reply();
      await login.command('EHLO client.test');
      expect(await login.command(`AUTH LOGIN ${b64('user1@example.test')}`)).toMatch(/^334 /);
      expect(await login.command(b64(latin1))).toMatch(/^235 /);
      // Another byte where the é was (0xE8): smtp-server reads both as U+FFFD, the upstream tells them apart.
      const other = await RawSmtp.connect(gw.port('submissions'), { tls: true });
      await other.reply();
      await other.command('EHLO client.test');
      expect(await other.command('AUTH LOGIN')).toMatch(/^334 /);
      expect(await other.command(b64('user1@example.test'))).toMatch(/^334 /);
      expect(await other.command(b64(Buffer.from('s\u00e8cret', 'latin1')))).toMatch(/^535 5\.7\.8 /);
      login.close();
      other.close();
      await gw.stop();
      await upstream.stop();
    }
  });

  it('answers 454 4.7.0 when the upstream cannot be reached to check credentials', async () => {
    const { gw, upstream } = await setup();
    await upstream.stop();
    const { c, auth } = await authenticated(gw.port('submission'));
    expect(auth).toMatch(/^454 4\.7\.0 Authentication is temporarily unavailable.*Ref D-/);
    c.close();
  });

  it('answers 421 4.4.1 at MAIL when the upstream dropped the authenticated session', async () => {
    const { gw, upstream } = await setup();
    const { c } = await authenticated(gw.port('submission'));
    await upstream.stop(); // destroys the upstream side of the session
    await new Promise((r) => setTimeout(r, 50));
    expect(await c.command('MAIL FROM:<user1@example.test>')).toMatch(/^421 4\.4\.1 .*reconnect/);
    expect(await c.reply()).toBe('(closed)');
    // Said with why, and counted apart from the upstream's outages.
    expect(await gw.waitForLog((l) => l.event === 'upstream_session_lost')).toMatchObject({ level: 'warn', account: 'user1@example.test', err: expect.any(String) });
    expect(await gw.metrics.registry.getSingleMetricAsString('douane_upstream_errors_total')).toMatch(/^douane_upstream_errors_total\{kind="session_lost"\} 1$/m);
  });
});

describe('relay on the trusted listener', () => {
  it('relays without AUTH and reports the upstream queue id', async () => {
    const { gw, upstream } = await setup();
    const c = await trusted(gw.port('trusted'));
    expect(await c.command('MAIL FROM:<user1@example.test> SIZE=120 BODY=8BITMIME')).toBe('250 2.1.0 Ok');
    expect(await c.command('RCPT TO:<a@example.test>')).toBe('250 2.1.5 Ok');
    expect(await c.command('DATA')).toMatch(/^354/);
    c.write(MESSAGE + '.\r\n');
    expect(await c.reply()).toBe('250 2.0.0 Ok: queued as FAKE1');
    expect(upstream.messages[0]!.mailLine).toBe('MAIL FROM:<user1@example.test> SIZE=120 BODY=8BITMIME');
    const line = await gw.waitForLog((l) => l.event === 'transaction');
    expect(line.account).toBe('user1@example.test');
    c.close();
  });

  it('relays addresses as the client wrote them: an IDNA domain stays ASCII, a quoted local part keeps its space', async () => {
    const { gw, upstream } = await setup();
    const c = await trusted(gw.port('trusted'));
    // smtp-server alone would hand on "bücher.example" (8-bit bytes in a command the client wrote in ASCII)
    // and answer 501 to the space inside the quotes (RFC 5321 4.1.2 allows it).
    expect(await c.command('MAIL FROM:<"john doe"@xn--bcher-kva.example>')).toMatch(/^250 /);
    expect(await c.command('RCPT TO:<anna@xn--mller-kva.example>')).toMatch(/^250 /);
    expect(await c.command('RCPT TO:<"a \\" b"@example.test>')).toMatch(/^250 /);
    // Still refused: a space outside a closed quoted local part, a tab inside one.
    expect(await c.command('RCPT TO:<"a b@example.test>')).toMatch(/^501 5\.5\.4 .*Ref /);
    expect(await c.command('RCPT TO:<a b@example.test>')).toMatch(/^501 5\.5\.4 .*Ref /);
    expect(await c.command('RCPT TO:<"a\tb"@example.test>')).toMatch(/^501 5\.5\.4 .*Ref /);
    // Bytes that are not UTF-8 are refused, not relayed as U+FFFD; UTF-8 goes up byte for byte.
    c.write(Buffer.from('RCPT TO:<\xe9\xff@example.test>\r\n', 'latin1'));
    expect(await c.reply()).toMatch(/^501 5\.\d\.\d .*Ref /);
    expect(await c.command('RCPT TO:<josé@example.test>')).toMatch(/^250 /);
    expect(await c.command('DATA')).toMatch(/^354/);
    c.write(MESSAGE.replace('From: user1@example.test', 'From: "john doe"@xn--bcher-kva.example') + '.\r\n');
    expect(await c.reply()).toMatch(/^250 /);
    expect(upstream.messages[0]!.mailLine).toBe('MAIL FROM:<"john doe"@xn--bcher-kva.example>');
    expect(upstream.commands).toContain('RCPT TO:<"a \\" b"@example.test>');
    expect(upstream.commands).toContain(Buffer.from('RCPT TO:<josé@example.test>').toString('latin1'));
    expect(upstream.commands.filter((l) => l.includes('\ufffd') || l.includes('\xef\xbf\xbd'))).toEqual([]);
    expect(upstream.messages[0]!.to).toEqual(['anna@xn--mller-kva.example', '"a \\" b"@example.test', Buffer.from('josé@example.test').toString('latin1')]);
    const line = await gw.waitForLog((l) => l.event === 'transaction');
    expect(line).toMatchObject({ from: '"john doe"@xn--bcher-kva.example', account: '"john doe"@xn--bcher-kva.example', verdict: 'accept' });
    c.close();
  });

  it('relays an address and its parameters as written whatever blank precedes the path (form feed, vertical tab, no-break space)', async () => {
    const { gw, upstream } = await setup();
    const c = await trusted(gw.port('trusted'));
    expect(await c.command('MAIL FROM:\f<user1@example.test> SIZE=120 BODY=8BITMIME')).toMatch(/^250 /);
    expect(await c.command('RCPT TO:\v<anna@xn--mller-kva.example>')).toMatch(/^250 /);
    expect(await c.command('RCPT TO:\u00a0<user2@example.test>')).toMatch(/^250 /);
    expect(await c.command('DATA')).toMatch(/^354/);
    c.write(MESSAGE + '.\r\n');
    expect(await c.reply()).toMatch(/^250 /);
    // Not the Unicode domain smtp-server makes of the IDNA one, and not without the parameters.
    expect(upstream.messages[0]!.mailLine).toBe('MAIL FROM:<user1@example.test> SIZE=120 BODY=8BITMIME');
    expect(upstream.messages[0]!.to).toEqual(['anna@xn--mller-kva.example', 'user2@example.test']);
    c.close();
  });

  it('relays a recipient once however the client spells its domain again (case, IDNA or Unicode); a local part in another case is another mailbox', async () => {
    const { gw, upstream } = await setup();
    const c = await trusted(gw.port('trusted'));
    expect(await c.command('MAIL FROM:<user1@example.test>')).toMatch(/^250 /);
    expect(await c.command('RCPT TO:<anna@xn--mller-kva.example>')).toMatch(/^250 2\.1\.5 /);
    expect(await c.command('RCPT TO:<anna@MÜLLER.example>')).toMatch(/^250 2\.1\.5 .*already a recipient/);
    expect(await c.command('RCPT TO:<anna@xn--mller-kva.example>')).toMatch(/^250 2\.1\.5 .*already a recipient/);
    // RFC 5321 2.4: only the receiving host may read a local part's case; Anna and anna may be two people.
    expect(await c.command('RCPT TO:<Anna@xn--mller-kva.example>')).toMatch(/^250 2\.1\.5 Ok/);
    expect(await c.command('RCPT TO:<user2@example.test>')).toMatch(/^250 2\.1\.5 /);
    expect(await c.command('DATA')).toMatch(/^354/);
    c.write(MESSAGE + '.\r\n');
    expect(await c.reply()).toMatch(/^250 /);
    expect(upstream.commands.filter((l) => l.startsWith('RCPT'))).toEqual(['RCPT TO:<anna@xn--mller-kva.example>', 'RCPT TO:<Anna@xn--mller-kva.example>', 'RCPT TO:<user2@example.test>']);
    expect(upstream.messages[0]!.to).toEqual(['anna@xn--mller-kva.example', 'Anna@xn--mller-kva.example', 'user2@example.test']);
    const line = await gw.waitForLog((l) => l.event === 'transaction');
    expect((line.rcpt as unknown[]).length).toBe(3);
    c.close();
  });

  it('relays both spellings of a local part that differ only in Unicode normalisation: the host compares its bytes', async () => {
    const { gw, upstream } = await setup({ capabilities: ['PIPELINING', '8BITMIME', 'ENHANCEDSTATUSCODES', 'SMTPUTF8'] });
    const c = await trusted(gw.port('trusted'));
    expect(await c.command('MAIL FROM:<user1@example.test> SMTPUTF8')).toMatch(/^250 /);
    // é as one character, then as e and a combining accent: two mailboxes, or one that does not exist,
    // as the upstream says; not one answered 250 and never relayed.
    expect(await c.command('RCPT TO:<jos\u00e9@example.test>')).toMatch(/^250 2\.1\.5 Ok/);
    expect(await c.command('RCPT TO:<jose\u0301@example.test>')).toMatch(/^250 2\.1\.5 Ok/);
    expect(await c.command('RCPT TO:<"jos\u00e9"@example.test>')).toMatch(/^250 2\.1\.5 .*already a recipient/);
    expect(await c.command('DATA')).toMatch(/^354/);
    c.write(MESSAGE + '.\r\n');
    expect(await c.reply()).toMatch(/^250 /);
    // The fake upstream keeps each byte as a character.
    expect(upstream.messages[0]!.to.map((to) => Buffer.from(to, 'latin1').toString('utf8'))).toEqual(['jos\u00e9@example.test', 'jose\u0301@example.test']);
    c.close();
  });

  it('refuses hosts outside the allow list with 554 5.7.1', async () => {
    const { gw, upstream } = await setup();
    const net = await import('node:net');
    const socket = net.connect({ port: gw.port('trusted'), host: '127.0.0.1', localAddress: '127.0.0.2' });
    const greeting = await new Promise<string>((resolve) => socket.once('data', (d) => resolve(d.toString())));
    expect(greeting).toMatch(/^554 5\.7\.1 Your address \(127\.0\.0\.2\) may not submit mail on this port.*Ref D-/);
    socket.destroy();
    expect(upstream.connections).toBe(0);
    // The reference the client read is in the log, at the default level.
    const ref = /Ref (D-[0-9A-Z]{6})/.exec(greeting)![1];
    expect(await gw.waitForLog((l) => l.event === 'refusal' && l.ref === ref)).toMatchObject({ level: 'info', phase: 'connect', client: '127.0.0.2', reason: 'connection.not_allowed', reply: '554 5.7.1' });
  });

  it('handles several transactions on one connection, and RSET in the middle', async () => {
    const { gw, upstream } = await setup();
    const c = await trusted(gw.port('trusted'));
    await c.command('MAIL FROM:<first@example.test>');
    await c.command('RCPT TO:<x@example.test>');
    expect(await c.command('RSET')).toMatch(/^250/);
    for (const n of [1, 2]) {
      expect(await c.command(`MAIL FROM:<sender${n}@example.test>`)).toMatch(/^250/);
      expect(await c.command(`RCPT TO:<rcpt${n}@example.test>`)).toMatch(/^250/);
      await c.command('DATA');
      c.write(`Subject: ${n}\r\n\r\nbody ${n}\r\n.\r\n`);
      expect(await c.reply()).toMatch(/^250 2\.0\.0 Ok: queued as FAKE/);
    }
    expect(upstream.messages.map((m) => [m.from, m.to])).toEqual([
      ['sender1@example.test', ['rcpt1@example.test']],
      ['sender2@example.test', ['rcpt2@example.test']],
    ]);
    expect(upstream.commands).toContain('RSET');
    const verdicts = gw.transactions().map((l) => l.verdict);
    expect(verdicts).toEqual(['abandoned', 'accept', 'accept']);
    // Only the two that had a final reply are timed to it.
    expect(await gw.metrics.registry.getSingleMetricAsString('douane_transaction_duration_seconds')).toMatch(/^douane_transaction_duration_seconds_count 2$/m);
    c.close();
  });

  it('handles a pipelined client sending two whole transactions in one write', async () => {
    const { gw, upstream } = await setup();
    const c = await trusted(gw.port('trusted'));
    const tx = (n: number) => `MAIL FROM:<s${n}@example.test>\r\nRCPT TO:<r${n}@example.test>\r\nDATA\r\nSubject: ${n}\r\n\r\nmessage ${n}\r\n.\r\n`;
    c.write(tx(1) + tx(2) + 'QUIT\r\n');
    const replies = await c.replies_(9);
    expect(replies.map((r) => r.slice(0, 3))).toEqual(['250', '250', '354', '250', '250', '250', '354', '250', '221']);
    expect(upstream.messages.map((m) => m.raw.toString())).toEqual(['Subject: 1\r\n\r\nmessage 1\r\n', 'Subject: 2\r\n\r\nmessage 2\r\n']);
  });
});

describe('upstream faults reach the client, and never as 250', () => {
  it('relays an upstream\'s multi-line replies line by line, with the code and enhanced code on each', async () => {
    const { gw } = await setup({
      // Postfix puts the enhanced code on every line; a server may also give it on the first line only.
      rcpt: (to) => (to.startsWith('nobody') ? '550-5.1.1 <nobody@example.test>: Recipient address rejected:\r\n550-5.1.1 User unknown in virtual mailbox table\r\n550 5.1.1 See https://help.example.test/550' : undefined),
      dataEnd: () => '250-2.0.0 Ok: queued as FAKEML\r\n250 Thank you',
    });
    const c = await trusted(gw.port('trusted'));
    await c.command('MAIL FROM:<user1@example.test>');
    // Each line as the upstream wrote it; the reference goes at the end of the last.
    expect(await c.command('RCPT TO:<nobody@example.test>')).toMatch(
      upstreamReply('550-5.1.1 <nobody@example.test>: Recipient address rejected:\r\n550-5.1.1 User unknown in virtual mailbox table\r\n550 5.1.1 See https://help.example.test/550'),
    );
    expect(await c.command('RCPT TO:<user2@example.test>')).toBe('250 2.1.5 Ok');
    await c.command('DATA');
    c.write(MESSAGE + '.\r\n');
    expect(await c.reply()).toBe('250-2.0.0 Ok: queued as FAKEML\r\n250 2.0.0 Thank you');
    c.close();
  });

  it('passes an upstream reply in UTF-8 through byte for byte (an international address quoted)', async () => {
    const refusal = '550 5.1.1 <josé@exemple.fr>: Recipient address rejected: User unknown';
    const { gw, upstream } = await setup({ capabilities: ['PIPELINING', '8BITMIME', 'ENHANCEDSTATUSCODES', 'SMTPUTF8'], rcpt: (to) => (to.startsWith('jos') ? refusal : undefined), dataEnd: () => '250 2.0.0 Reçu, merci' });
    const c = await trusted(gw.port('trusted'));
    await c.command('MAIL FROM:<user1@example.test> SMTPUTF8');
    // Both ends read bytes (latin1 here): the reply's UTF-8 bytes must be the upstream's, not encoded twice.
    const asBytes = (text: string) => Buffer.from(text, 'utf8').toString('latin1');
    c.write(Buffer.from('RCPT TO:<josé@exemple.fr>\r\n', 'utf8'));
    expect(await c.reply()).toMatch(upstreamReply(asBytes(refusal)));
    expect(upstream.commands).toContain(asBytes('RCPT TO:<josé@exemple.fr>'));
    await c.command('RCPT TO:<user2@example.test>');
    await c.command('DATA');
    c.write(MESSAGE + '.\r\n');
    expect(await c.reply()).toBe(asBytes('250 2.0.0 Reçu, merci'));
    c.close();
  });

  it('offers and takes SMTPUTF8 only while the upstream does; a parameter it would lose is refused (555)', async () => {
    const { gw, upstream } = await setup(); // an upstream without SMTPUTF8, as Zimbra's Postfix (smtputf8_enable = no)
    const c = await trusted(gw.port('trusted'));
    expect(await c.command('EHLO webmail.test')).not.toMatch(/SMTPUTF8/);
    const ref = /Ref D-[0-9A-Z]{6}\.$/;
    // Out of sequence first: that is what the client has to mend.
    expect(await c.command('RCPT TO:<user2@example.test> FOO=bar')).toMatch(/^503 5\.5\.1 /);
    for (const [command, param] of [
      ['MAIL FROM:<user1@example.test> SMTPUTF8', 'SMTPUTF8'],
      ['MAIL FROM:<user1@example.test> REQUIRETLS', 'REQUIRETLS'],
      ['MAIL FROM:<user1@example.test> MT-PRIORITY=4', 'MT-PRIORITY'],
    ]) {
      const reply = await c.command(command!);
      expect(reply).toMatch(new RegExp(`^555 5\\.5\\.4 The parameter ${param} is not supported here; send the command without it\\. `));
      expect(reply).toMatch(ref);
    }
    // AUTH= names who submitted, for an MTA that trusts its client: taken, not relayed.
    expect(await c.command('MAIL FROM:<user1@example.test> AUTH=<>')).toMatch(/^250 /);
    expect(await c.command('MAIL FROM:<user1@example.test> REQUIRETLS')).toMatch(/^503 5\.5\.1 /);
    expect(await c.command('RCPT TO:<user2@example.test> FOO=bar')).toMatch(/^555 5\.5\.4 The parameter FOO is not supported here/);
    expect(await c.command('RCPT TO:<user2@example.test>')).toMatch(/^250 /);
    expect(upstream.commands.filter((l) => /^(MAIL|RCPT)/.test(l))).toEqual(['MAIL FROM:<user1@example.test>', 'RCPT TO:<user2@example.test>']);
    c.close();

    // The same upstream offering SMTPUTF8: offered, and relayed.
    await gw.stop();
    await upstream.stop();
    const utf8 = await setup({ capabilities: ['PIPELINING', '8BITMIME', 'ENHANCEDSTATUSCODES', 'SMTPUTF8'] });
    const d = await trusted(utf8.gw.port('trusted'));
    expect(await d.command('EHLO webmail.test')).toMatch(/250-SMTPUTF8/);
    expect(await d.command('MAIL FROM:<user1@example.test> SMTPUTF8')).toMatch(/^250 /);
    expect(utf8.upstream.commands).toContain('MAIL FROM:<user1@example.test> SMTPUTF8');
    d.close();
  });

  it('passes an upstream RCPT refusal through unchanged, and relays to the other recipients', async () => {
    const { gw, upstream } = await setup({ rcpt: (to) => (to.startsWith('nobody') ? '550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown' : undefined) });
    const c = await trusted(gw.port('trusted'));
    await c.command('MAIL FROM:<user1@example.test>');
    const refused = await c.command('RCPT TO:<nobody@example.test>');
    const ref = upstreamReply('550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown').exec(refused)?.[1];
    expect(ref, refused).toBeDefined();
    expect(await c.command('RCPT TO:<user2@example.test>')).toMatch(/^250/);
    await c.command('DATA');
    c.write(MESSAGE + '.\r\n');
    expect(await c.reply()).toMatch(/^250 /);
    expect(upstream.messages[0]!.to).toEqual(['user2@example.test']);
    const line = await gw.waitForLog((l) => l.event === 'transaction');
    expect(line.ref).toBe(ref);
    expect(line.rcpt).toEqual([
      { to: 'nobody@example.test', ok: false, reply: '550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown' },
      { to: 'user2@example.test', ok: true, reply: '250 2.1.5 Ok' },
    ]);
    c.close();
  });

  it('takes any 2xx to RCPT as accepted (252: cannot verify, will try)', async () => {
    const { gw, upstream } = await setup({ rcpt: (to) => (to.startsWith('far') ? '252 2.1.5 Cannot VRFY user, but will accept message' : undefined) });
    const c = await trusted(gw.port('trusted'));
    await c.command('MAIL FROM:<user1@example.test>');
    expect(await c.command('RCPT TO:<far@example.net>')).toMatch(/^2\d\d 2\.1\.5 /);
    await c.command('DATA');
    c.write(MESSAGE + '.\r\n');
    expect(await c.reply()).toMatch(/^250 /);
    expect(upstream.messages[0]!.to).toEqual(['far@example.net']);
    expect((await gw.waitForLog((l) => l.event === 'transaction')).rcpt).toEqual([{ to: 'far@example.net', ok: true, reply: '252 2.1.5 Cannot VRFY user, but will accept message' }]);
    c.close();
  });

  it('passes an upstream MAIL refusal through', async () => {
    const { gw } = await setup({ mail: () => '553 5.7.1 <evil@example.test>: Sender address rejected: not owned by user' });
    const c = await trusted(gw.port('trusted'));
    expect(await c.command('MAIL FROM:<evil@example.test>')).toMatch(upstreamReply('553 5.7.1 <evil@example.test>: Sender address rejected: not owned by user'));
    c.close();
  });

  for (const [name, reply] of [
    ['a 4xx', '451 4.3.0 Error: queue file write error'],
    ['a 5xx', '554 5.7.1 Message rejected by content filter'],
  ] as const) {
    it(`passes ${name} after the final dot back to the client`, async () => {
      const { gw } = await setup({ dataEnd: () => reply });
      const c = await trusted(gw.port('trusted'));
      await c.command('MAIL FROM:<user1@example.test>');
      await c.command('RCPT TO:<user2@example.test>');
      await c.command('DATA');
      c.write(MESSAGE + '.\r\n');
      const got = await c.reply();
      expect(got).toMatch(upstreamReply(reply));
      // The reference finds the transaction's log line.
      expect(await gw.waitForLog((l) => l.event === 'transaction')).toMatchObject({ ref: upstreamReply(reply).exec(got)![1], reply: got });
      c.close();
    });
  }

  it('answers 451 4.4.1 when the upstream drops the connection after the final dot', async () => {
    const { gw } = await setup({ dataEnd: () => 'drop' });
    const c = await trusted(gw.port('trusted'));
    await c.command('MAIL FROM:<user1@example.test>');
    await c.command('RCPT TO:<user2@example.test>');
    await c.command('DATA');
    c.write(MESSAGE + '.\r\n');
    // It had the whole message: it may have queued it. The client is told to send it again, not that
    // it was not accepted.
    expect(await c.reply()).toMatch(/^451 4\.4\.1 The mail server did not confirm your message; please send it again \(if it was delivered after all, it may arrive twice\)\..*Ref D-/);
    expect(await gw.waitForLog((l) => l.event === 'transaction')).toMatchObject({ verdict: 'tempfail', reason: 'upstream.no_answer' });
    // The session goes on: the next transaction gets a fresh upstream connection.
    expect(await c.command('MAIL FROM:<user1@example.test>')).toMatch(/^250/);
    c.close();
  });

  it('answers 451 4.4.1 when the upstream hangs after the final dot, after the data deadline', async () => {
    const { gw, upstream } = await setup({ dataEnd: () => 'hang' }, { upstream: { timeouts: { data: '400ms' } } });
    const c = await trusted(gw.port('trusted'));
    await c.command('MAIL FROM:<user1@example.test>');
    await c.command('RCPT TO:<user2@example.test>');
    await c.command('DATA');
    const sent = Date.now();
    c.write(MESSAGE + '.\r\n');
    expect(await c.reply(5000)).toMatch(/^451 4\.4\.1 The mail server did not confirm your message/);
    expect(Date.now() - sent).toBeGreaterThanOrEqual(350);
    expect(upstream.messages).toHaveLength(0);
    c.close();
  });

  it('answers 451 4.4.1 when the upstream hangs on RCPT', async () => {
    const { gw } = await setup({ rcpt: () => 'hang' }, { upstream: { timeouts: { command: '300ms' } } });
    const c = await trusted(gw.port('trusted'));
    await c.command('MAIL FROM:<user1@example.test>');
    expect(await c.command('RCPT TO:<slow@example.test>')).toMatch(/^451 4\.4\.1 /);
    // Counted among the recipients, as tempfailed for the upstream's failure.
    expect(await gw.metrics.registry.metrics()).toMatch(/^douane_recipients_total\{result="upstream_unavailable"\} 1$/m);
    c.close();
  });

  it('answers 451 4.4.1 after the final dot when the upstream drops at its DATA command', async () => {
    // The upstream's DATA is sent only once the whole message is in and checked, so the client has
    // already had our 354; the failure reaches it as the reply to its message.
    const { gw, upstream } = await setup({ data: () => 'drop' });
    const c = await trusted(gw.port('trusted'));
    await c.command('MAIL FROM:<user1@example.test>');
    await c.command('RCPT TO:<user2@example.test>');
    expect(await c.command('DATA')).toMatch(/^354 /);
    c.write(MESSAGE + '.\r\n');
    // None of it went out: it was not accepted, and the client is told so.
    expect(await c.reply()).toMatch(/^451 4\.4\.1 The mail server is temporarily unavailable; your message was not accepted/);
    expect(upstream.commands.at(-1)).toBe('DATA');
    c.close();
  });

  it('answers 451 4.4.1, never 2xx, when the upstream answers DATA or the message with a 2xx that is not its answer', async () => {
    for (const [fault, where] of [[{ data: () => '250 2.0.0 ok whatever' }, 'DATA'], [{ dataEnd: () => '251 2.1.5 odd' }, 'end of data']] as const) {
      const { gw, upstream } = await setup(fault);
      const c = await trusted(gw.port('trusted'));
      await c.command('MAIL FROM:<user1@example.test>');
      await c.command('RCPT TO:<user2@example.test>');
      await c.command('DATA');
      c.write(MESSAGE + '.\r\n');
      expect(await c.reply(), where).toMatch(/^451 4\.4\.1 /);
      const line = await gw.waitForLog((l) => l.event === 'transaction');
      expect(line.verdict, where).toBe('tempfail');
      c.close();
      await gw.stop();
      await upstream.stop();
    }
  });

  it('answers 451 4.4.1 when the upstream answers with a code no SMTP reply has, or a 3xx to MAIL or RCPT', async () => {
    const faults = [
      ['600 what', { rcpt: () => '600 what' }, 'rcpt'],
      ['000 what', { rcpt: () => '000 what' }, 'rcpt'],
      ['2500 ok', { rcpt: () => '2500 ok' }, 'rcpt'],
      ['354 go on', { rcpt: () => '354 go on' }, 'rcpt'],
      ['354 go on', { mail: () => '354 go on' }, 'mail'],
      ['999 what', { dataEnd: () => '999 what' }, 'data'],
    ] as const;
    for (const [garbage, fault, where] of faults) {
      const { gw, upstream } = await setup(fault);
      const c = await trusted(gw.port('trusted'));
      const mail = await c.command('MAIL FROM:<user1@example.test>');
      const rcpt = where === 'mail' ? '' : await c.command('RCPT TO:<user2@example.test>');
      let data = '';
      if (where === 'data') {
        await c.command('DATA');
        c.write(MESSAGE + '.\r\n');
        data = await c.reply();
      }
      const answer = where === 'mail' ? mail : where === 'rcpt' ? rcpt : data;
      expect(answer, `${garbage} to ${where}`).toMatch(/^451 4\.4\.1 .*Ref D-[0-9A-Z]{6}/);
      c.close();
      await gw.stop();
      await upstream.stop();
    }
  });

  it.each([
    ['its DATA', { data: () => ({ delayMs: 400 }) }],
    ['the message', { dataEnd: () => ({ delayMs: 400 }) }],
  ])('a client that leaves while the upstream is slow to answer %s: the message arrives whole, counts as accepted, and the pooled connection stays in step', async (_what, fault) => {
    const { gw, upstream } = await setup(fault);
    await sendThenLeave(await trusted(gw.port('trusted')), upstream);
    const line = await gw.waitForLog((l) => l.event === 'transaction');
    expect(line).toMatchObject({ verdict: 'accept', note: 'the client went away before the reply' });
    expect(upstream.messages).toHaveLength(1);
    expect(upstream.messages[0]!.raw.toString()).toBe(MESSAGE);
    expect(upstream.commands.filter((x) => x === 'RSET' || x === 'QUIT')).toEqual([]);
    // The next session, on the same pooled connection, gets its own replies.
    const next = await trusted(gw.port('trusted'));
    expect(await next.command('MAIL FROM:<user3@example.test>')).toBe('250 2.1.0 Ok');
    expect(await next.command('RCPT TO:<user2@example.test>')).toBe('250 2.1.5 Ok');
    next.close();
  });

  it('an authenticated client that leaves while the upstream is slow to answer its message: the message arrives whole, QUIT comes after it', async () => {
    const { gw, upstream } = await setup({ dataEnd: () => ({ delayMs: 400 }) });
    const { c, auth } = await authenticated(gw.port('submission'));
    expect(auth).toMatch(/^235/);
    await sendThenLeave(c, upstream);
    expect(await gw.waitForLog((l) => l.event === 'transaction')).toMatchObject({ verdict: 'accept', note: 'the client went away before the reply' });
    expect(upstream.messages).toHaveLength(1);
    expect(upstream.messages[0]!.raw.toString()).toBe(MESSAGE);
  });

  for (const [tlsMode, stall] of [
    ['implicit', 'accepts the connection and never starts TLS'],
    ['starttls', 'answers STARTTLS with 220 and never finishes the handshake'],
  ] as const) {
    it(`answers 451 4.4.1 at MAIL, within the connect timeout, when the upstream ${stall}`, async () => {
      // Not a fake of the relay's upstream but of a broken one: the socket opens, the TLS session never does.
      const stalled = net.createServer((s) => {
        s.on('error', () => {});
        if (tlsMode === 'implicit') return;
        s.write('220 stalled.test ESMTP\r\n');
        let tlsStarted = false;
        s.on('data', (d) => {
          if (tlsStarted) return; // the client's TLS hello, never answered
          if (/^STARTTLS/i.test(d.toString())) tlsStarted = true;
          s.write(tlsStarted ? '220 2.0.0 Ready to start TLS\r\n' : '250-stalled.test\r\n250 STARTTLS\r\n');
        });
      });
      await new Promise<void>((resolve) => stalled.listen(0, '127.0.0.1', resolve));
      const port = (stalled.address() as net.AddressInfo).port;
      const gw = await startGateway(port, { upstream: { port, trusted_port: port, tls: tlsMode, verify_certificate: false, timeouts: { connect: '500ms' } } });
      try {
        const c = await trusted(gw.port('trusted'));
        const started = Date.now();
        const reply = await c.command('MAIL FROM:<user1@example.test>');
        expect(reply).toMatch(/^451 4\.4\.1 .*Ref D-/);
        expect(Date.now() - started).toBeLessThan(2000);
        // The cause, under the reference the client read.
        expect(await gw.waitForLog((l) => l.event === 'upstream_error')).toMatchObject({ kind: 'timeout', ref: /Ref (D-[0-9A-Z]{6})/.exec(reply)![1] });
        c.close();
      } finally {
        await gw.stop();
        stalled.close();
      }
    });
  }

  it('refuses an upstream connection whose 220 to STARTTLS came with more text in clear (an injection on the path), and relays nothing on it', async () => {
    // An upstream with a real TLS session after STARTTLS and no CHUNKING. Whoever is on the path adds two
    // lines to its 220, in the same segment: read as the start of the encrypted EHLO reply, they would make
    // the gateway believe in a CHUNKING the upstream does not have, and send the body as BDAT to it.
    const { key, cert } = makeSelfSigned('upstream.test');
    const received: string[] = [];
    const injecting = net.createServer((raw) => {
      raw.on('error', () => {});
      let session: net.Socket = raw;
      let buffer = '';
      const onLine = (line: string) => {
        received.push(session === raw ? line : `(in TLS) ${line}`);
        const verb = line.split(' ')[0]!.toUpperCase();
        if (verb === 'EHLO') session.write(session === raw ? '250-upstream.test\r\n250 STARTTLS\r\n' : '250-upstream.test\r\n250 ENHANCEDSTATUSCODES\r\n');
        else if (verb === 'STARTTLS') {
          raw.removeAllListeners('data');
          raw.write('220 2.0.0 Ready to start TLS\r\n250-injected\r\n250-CHUNKING\r\n');
          session = new tls.TLSSocket(raw, { isServer: true, key, cert });
          session.on('error', () => {});
          session.on('data', onData);
          buffer = '';
        } else if (verb === 'QUIT') session.end('221 2.0.0 Bye\r\n');
        else session.write(verb === 'MAIL' || verb === 'RCPT' || verb === 'RSET' || verb === 'NOOP' ? '250 2.0.0 Ok\r\n' : '502 5.5.2 Error: command not recognized\r\n');
      };
      const onData = (d: Buffer) => {
        buffer += d.toString('latin1');
        for (let nl = buffer.indexOf('\r\n'); nl >= 0 && session.listenerCount('data'); nl = buffer.indexOf('\r\n')) {
          const line = buffer.slice(0, nl);
          buffer = buffer.slice(nl + 2);
          onLine(line);
        }
      };
      raw.on('data', onData);
      raw.write('220 upstream.test ESMTP\r\n');
    });
    await new Promise<void>((resolve) => injecting.listen(0, '127.0.0.1', resolve));
    const port = (injecting.address() as net.AddressInfo).port;
    const gw = await startGateway(port, { upstream: { port, trusted_port: port, tls: 'starttls', verify_certificate: false } });
    try {
      const c = await trusted(gw.port('trusted'));
      expect(await c.command('MAIL FROM:<user1@example.test>')).toMatch(/^451 4\.4\.1 .*Ref D-/);
      expect(await gw.waitForLog((l) => l.event === 'upstream_error')).toMatchObject({ kind: 'tls', err: expect.stringMatching(/more after its 220 to STARTTLS/) });
      // Each attempt ends at the 220: nothing is sent in a TLS session built on it.
      expect(received.length).toBeGreaterThan(0);
      expect(received.filter((l) => l !== 'EHLO douane.test' && l !== 'STARTTLS')).toEqual([]);
      c.close();
    } finally {
      await gw.stop();
      injecting.close();
    }
  });

  it('a client that leaves while its MAIL FROM waits for the upstream: the pooled connection is not handed on with that reply still due', async () => {
    const { gw, upstream } = await setup({ mail: (from) => (from === 'leaver@example.test' ? { delayMs: 300 } : undefined) });
    const a = await trusted(gw.port('trusted'));
    a.write('MAIL FROM:<leaver@example.test>\r\n');
    await expect.poll(() => upstream.commands.includes('MAIL FROM:<leaver@example.test>')).toBe(true);
    a.close();
    await gw.waitForLog((l) => l.event === 'transaction' && l.verdict === 'abandoned');
    // The next session would otherwise get the pooled connection with an open transaction: 503 nested MAIL.
    const b = await trusted(gw.port('trusted'));
    expect(await b.command('MAIL FROM:<user1@example.test>')).toBe('250 2.1.0 Ok');
    expect(await b.command('RCPT TO:<user2@example.test>')).toBe('250 2.1.5 Ok');
    expect(await b.command('DATA')).toMatch(/^354/);
    b.write(MESSAGE + '.\r\n');
    expect(await b.reply()).toMatch(/^250 2\.0\.0 Ok: queued/);
    expect(upstream.messages.map((m) => m.from)).toEqual(['user1@example.test']);
    b.close();
  });

  it('does not hand on a pooled connection that collected refusals since its last message (Postfix slows such a connection down)', async () => {
    const { gw, upstream } = await setup({ rcpt: (to) => (to.startsWith('unknown') ? '550 5.1.1 <unknown>: Recipient address rejected' : undefined) });
    const session = async (unknown: number, deliver: boolean) => {
      const c = await trusted(gw.port('trusted'));
      expect(await c.command('MAIL FROM:<user1@example.test>')).toMatch(/^250 /);
      for (let i = 0; i < unknown; i++) expect(await c.command(`RCPT TO:<unknown${i}@example.test>`)).toMatch(/^550 5\.1\.1 /);
      if (deliver) {
        expect(await c.command('RCPT TO:<user2@example.test>')).toMatch(/^250 /);
        expect(await c.command('DATA')).toMatch(/^354/);
        c.write(MESSAGE + '.\r\n');
        expect(await c.reply()).toMatch(/^250 /);
        // Refusals after the message count from it.
        expect(await c.command('MAIL FROM:<user1@example.test>')).toMatch(/^250 /);
        for (let i = 0; i < 3; i++) expect(await c.command(`RCPT TO:<unknown-after${i}@example.test>`)).toMatch(/^550 /);
      }
      const ended = gw.logs.filter((l) => l.event === 'session_end').length;
      expect(await c.command('QUIT')).toMatch(/^221 /);
      // Its upstream connection is released (pooled or closed) as the session ends.
      await expect.poll(() => gw.logs.filter((l) => l.event === 'session_end').length).toBe(ended + 1);
    };
    await session(6, true); // six refusals, then a message: what came before it is forgotten
    await session(0, false);
    expect(upstream.connections).toBe(1);
    await session(5, false); // five refusals and no message: closed, not pooled
    await expect.poll(() => upstream.commands.filter((c) => c === 'QUIT').length).toBe(1);
    await session(0, false);
    expect(upstream.connections).toBe(2);
  });

  it('a client that leaves while the upstream connection is being opened: its MAIL FROM is never sent, the connection goes back to the pool', async () => {
    const { gw, upstream } = await setup({ greetingDelayMs: 300 });
    const a = await trusted(gw.port('trusted'));
    a.write('MAIL FROM:<leaver@example.test>\r\n');
    await expect.poll(() => upstream.connections).toBe(1);
    a.close();
    await gw.waitForLog((l) => l.event === 'client_gone');
    await new Promise((r) => setTimeout(r, 100));
    expect(upstream.commands.filter((c) => c.startsWith('MAIL'))).toEqual([]);
    const b = await trusted(gw.port('trusted'));
    expect(await b.command('MAIL FROM:<user1@example.test>')).toBe('250 2.1.0 Ok');
    expect(upstream.connections).toBe(1); // the pooled one
    b.close();
  });

  it('a client that leaves while the upstream connection for its AUTH is being opened: its credentials never go up, the connection is closed', async () => {
    const { gw, upstream } = await setup({ greetingDelayMs: 300 });
    const c = await RawSmtp.connect(gw.port('submissions'), { tls: true });
    expect(await c.reply()).toMatch(/^220 /);
    await c.command('EHLO client.test');
    c.write(`AUTH PLAIN ${Buffer.from('\0user1@example.test\0secret1').toString('base64')}\r\n`);
    await expect.poll(() => upstream.connections).toBe(1);
    c.close();
    await gw.waitForLog((l) => l.event === 'client_gone' && l.phase === 'auth');
    await expect.poll(() => upstream.commands).toContain('QUIT');
    expect(upstream.commands.filter((x) => x.startsWith('AUTH'))).toEqual([]);
  });

  it('keeps the upstream session open with NOOP while a slow client sends its message (the upstream\'s idle timeout is shorter)', async () => {
    const { gw, upstream } = await setup({ idleTimeoutMs: 600 }, { upstream: { timeouts: { keepalive: '200ms' } } });
    const c = await trusted(gw.port('trusted'));
    expect(await c.command('MAIL FROM:<user1@example.test>')).toMatch(/^250 /);
    expect(await c.command('RCPT TO:<user2@example.test>')).toMatch(/^250 /);
    expect(await c.command('DATA')).toMatch(/^354/);
    // 1.5 s of message, a line every 100 ms: two and a half of the upstream's idle timeouts.
    const lines = MESSAGE.split(/(?<=\r\n)/);
    for (let i = 0; i < 15; i++) {
      c.write(lines[i] ?? `line ${i}\r\n`);
      await new Promise((r) => setTimeout(r, 100));
    }
    c.write('.\r\n');
    expect(await c.reply()).toMatch(/^250 2\.0\.0 Ok: queued/);
    expect(upstream.commands.filter((x) => x === 'NOOP').length).toBeGreaterThanOrEqual(2);
    expect(upstream.commands.slice(-1)).toEqual(['DATA']);
    c.close();
  });

  it('gives up at once on an upstream that answered a keepalive NOOP with 421: the message is tempfailed, not sent into a closing session', async () => {
    // Postfix under stress counts NOOP as a junk command and ends the session with 421; this one leaves it
    // open, so that only Douane's own handling of the 421 stands between the message and a 250.
    const { gw, upstream } = await setup({ noop: () => '421 4.7.0 mx.test Error: too many errors' }, { upstream: { timeouts: { keepalive: '100ms' } } });
    const c = await trusted(gw.port('trusted'));
    expect(await c.command('MAIL FROM:<user1@example.test>')).toMatch(/^250 /);
    expect(await c.command('RCPT TO:<user2@example.test>')).toMatch(/^250 /);
    expect(await c.command('DATA')).toMatch(/^354/);
    c.write(MESSAGE.split(/(?<=\r\n)/)[0]!);
    await expect.poll(() => upstream.commands).toContain('NOOP');
    c.write(MESSAGE.split(/(?<=\r\n)/).slice(1).join('') + '.\r\n');
    expect(await c.reply()).toMatch(/^451 4\.4\.\d .*Ref D-[A-Z0-9]{6}/);
    expect(upstream.commands).not.toContain('DATA');
    expect(upstream.messages).toEqual([]);
    c.close();
  });

  it('answers 451 4.4.1 at MAIL when the upstream is down (trusted listener)', async () => {
    const { gw, upstream } = await setup();
    await upstream.stop();
    const c = await trusted(gw.port('trusted'));
    expect(await c.command('MAIL FROM:<user1@example.test>')).toMatch(/^451 4\.4\.1 The mail server is temporarily unavailable.*Ref D-/);
    c.close();
  });
});

describe('a check that fails', () => {
  it('tempfails the message, and the log line its reference leads to says what failed and why', async () => {
    const upstream = await FakeUpstream.start();
    const gw = await startGateway(upstream.port, {}, { bulk: { count: async () => { throw new Error('the counter is on fire'); } } });
    try {
      const c = await trusted(gw.port('trusted'));
      await c.command('MAIL FROM:<user1@example.test>');
      await c.command('RCPT TO:<user2@example.test>');
      await c.command('DATA');
      c.write('From: user1@example.test\r\nSubject: a long enough note\r\n\r\n' + 'A few words of text that the bulk check fingerprints. '.repeat(5) + '\r\n.\r\n');
      const reply = await c.reply();
      const ref = /^451 4\.3\.0 .*Ref (D-[0-9A-Z]{6})/.exec(reply)?.[1];
      expect(ref, reply).toBeDefined();
      const line = await gw.waitForLog((l) => l.event === 'transaction' && l.ref === ref);
      expect(line).toMatchObject({ verdict: 'tempfail', reason: 'internal.check_failed' });
      expect((line.checks as { check: string }[]).find((x) => x.check === 'data.bulk')).toMatchObject({ result: 'error', evidence: { check: 'data.bulk', error: 'the counter is on fire' } });
      expect(upstream.messages).toHaveLength(0);
      c.close();
    } finally {
      await gw.stop();
      await upstream.stop();
    }
  });
});

describe('relay with CHUNKING', () => {
  it('sends the message with one BDAT LAST when the upstream offers CHUNKING, byte for byte', async () => {
    const { gw, upstream } = await setup({ capabilities: ['PIPELINING', 'SIZE 52428800', '8BITMIME', 'ENHANCEDSTATUSCODES', 'CHUNKING'] });
    const c = await trusted(gw.port('trusted'));
    await c.command('MAIL FROM:<user1@example.test>');
    await c.command('RCPT TO:<user2@example.test>');
    await c.command('DATA');
    c.write(MESSAGE.replace('\r\n.leading', '\r\n..leading') + '.\r\n');
    expect(await c.reply()).toMatch(/^250 2\.0\.0 Ok/);
    expect(upstream.commands).toContain(`BDAT ${MESSAGE.length} LAST`);
    expect(upstream.commands).not.toContain('DATA');
    expect(upstream.messages[0]!.raw.toString()).toBe(MESSAGE);
    c.close();
  });
});

describe('delivery status notifications (DSN, RFC 3461)', () => {
  const WITH_DSN = ['PIPELINING', 'SIZE 52428800', '8BITMIME', 'ENHANCEDSTATUSCODES', 'DSN', 'AUTH PLAIN LOGIN'];

  /** One message on the trusted listener with DSN parameters; returns the EHLO reply and the replies. */
  async function withDsn(port: number) {
    const c = await RawSmtp.connect(port);
    await c.reply();
    const ehlo = await c.command('EHLO webmail.test');
    const mail = await c.command('MAIL FROM:<user1@example.test> RET=HDRS ENVID=QQ314159+2Bx');
    const rcpt = await c.command('RCPT TO:<user2@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;user2+2Bold@example.test');
    await c.command('DATA');
    c.write(MESSAGE + '.\r\n');
    const data = await c.reply();
    c.close();
    return { ehlo, mail, rcpt, data };
  }

  it('offered from the first session, Douane having asked the upstream at start; its parameters relayed as the client wrote them (xtext intact)', async () => {
    const { gw, upstream } = await setup({ capabilities: WITH_DSN });
    // At start, one session on each upstream port a listener uses (the submission and trusted ports,
    // here one fake): EHLO, then QUIT.
    expect(upstream.startup.connections).toBe(2);
    expect(upstream.startup.commands.sort()).toEqual(['EHLO douane.test', 'EHLO douane.test', 'QUIT', 'QUIT']);
    const first = await withDsn(gw.port('trusted'));
    expect(first.ehlo).toMatch(/^250[- ]DSN$/m);
    const second = await withDsn(gw.port('trusted'));
    expect(second.ehlo).toMatch(/^250[- ]DSN$/m);
    expect(second.data).toMatch(/^250 2\.0\.0 Ok/);
    expect(upstream.commands.filter((l) => l.startsWith('MAIL') || l.startsWith('RCPT')).slice(-2)).toEqual([
      'MAIL FROM:<user1@example.test> RET=HDRS ENVID=QQ314159+2Bx',
      'RCPT TO:<user2@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;user2+2Bold@example.test',
    ]);
    expect(upstream.commands.filter((l) => l.includes('ENVID=QQ314159+2Bx'))).toHaveLength(2);
  });

  it('on the submission listener too, from the first session', async () => {
    const { gw, upstream } = await setup({ capabilities: WITH_DSN, users: { 'user1@example.test': 'secret1' } });
    const { c } = await authenticated(gw.port('submission'));
    expect(await c.command('EHLO client.test')).toMatch(/^250[- ]DSN$/m);
    expect(await c.command('MAIL FROM:<user1@example.test> RET=FULL')).toMatch(/^250 /);
    expect(await c.command('RCPT TO:<user2@example.test> NOTIFY=NEVER')).toMatch(/^250 /);
    expect(upstream.commands).toContain('MAIL FROM:<user1@example.test> RET=FULL');
    expect(upstream.commands).toContain('RCPT TO:<user2@example.test> NOTIFY=NEVER');
    c.close();
  });

  it('an upstream down at start: the gateway starts all the same, says so, and learns what it offers from the first session that reaches it', async () => {
    const port = await freePort();
    const gw = await startGateway(port, { upstream: { port, trusted_port: port } });
    try {
      expect(gw.logs.filter((l) => l.event === 'upstream_not_ready').map((l) => l.port).sort()).toEqual(['submission', 'trusted']);
      const upstream = await FakeUpstream.start({ capabilities: WITH_DSN, port });
      try {
        const c = await trusted(gw.port('trusted'));
        expect(await c.command('EHLO webmail.test')).not.toMatch(/DSN/);
        expect(await c.command('MAIL FROM:<user1@example.test>')).toMatch(/^250 /);
        c.close();
        expect((await withDsn(gw.port('trusted'))).ehlo).toMatch(/^250[- ]DSN$/m);
      } finally {
        await upstream.stop();
      }
    } finally {
      await gw.stop();
    }
  });

  it('not offered when the upstream does not offer it; parameters sent anyway are left out, logged, and the message still goes', async () => {
    const { gw, upstream } = await setup();
    await withDsn(gw.port('trusted'));
    const r = await withDsn(gw.port('trusted'));
    expect(r.ehlo).not.toMatch(/DSN/);
    expect(r.mail).toMatch(/^250 /);
    expect(r.rcpt).toMatch(/^250 /);
    expect(r.data).toMatch(/^250 2\.0\.0 Ok/);
    expect(upstream.commands.filter((l) => l.startsWith('MAIL') || l.startsWith('RCPT'))).toEqual([
      'MAIL FROM:<user1@example.test>',
      'RCPT TO:<user2@example.test>',
      'MAIL FROM:<user1@example.test>',
      'RCPT TO:<user2@example.test>',
    ]);
    const logged = gw.logs.filter((l) => l.event === 'dsn_not_relayed');
    expect(logged.map((l) => l.params)).toEqual([['RET', 'ENVID'], ['NOTIFY', 'ORCPT'], ['RET', 'ENVID'], ['NOTIFY', 'ORCPT']]);
    expect(logged[0]!.ref).toMatch(/^D-[0-9A-Z]{6}$/);
  });

  it('refuses malformed DSN parameters with 501 5.5.4 and a reference, before anything goes upstream', async () => {
    const { gw, upstream } = await setup({ capabilities: WITH_DSN });
    const c = await trusted(gw.port('trusted'));
    expect(await c.command('MAIL FROM:<user1@example.test> RET=EVERYTHING')).toMatch(/^501 5\.5\.4 .*Ref D-/);
    expect(await c.command('MAIL FROM:<user1@example.test> RET=HDRS RET=FULL')).toMatch(/^501 5\.5\.4 .*Ref D-/);
    expect(await c.command('MAIL FROM:<user1@example.test>')).toMatch(/^250 /);
    expect(await c.command('RCPT TO:<user2@example.test> NOTIFY=SOMETIMES')).toMatch(/^501 5\.5\.4 .*Ref D-/);
    expect(await c.command('RCPT TO:<user2@example.test> NOTIFY=NEVER,SUCCESS')).toMatch(/^501 5\.5\.4 .*Ref D-/);
    expect(await c.command('RCPT TO:<user2@example.test> ORCPT=user2@example.test')).toMatch(/^501 5\.5\.4 .*Ref D-/);
    expect(upstream.commands.filter((l) => l.startsWith('RCPT'))).toEqual([]);
    c.close();
  });
});
