// Hostile and broken clients: SMTP smuggling, oversize messages, too many recipients, broken command
// lines, slow clients and connection floods. Each gets a clear reply and leaves nothing half-done.

import net from 'node:net';
import { mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { FIRST_LOOK_BUDGET } from '../../src/inspect/deflate.js';
import { InspectionPool } from '../../src/inspect/pool.js';
import { programBehindZeros } from '../harness/archives.js';
import { FakeUpstream } from '../harness/fake-upstream.js';
import { gatewayWithUpstream, startGateway } from '../harness/gateway.js';
import { mimeMessage } from '../harness/mime.js';
import { RawSmtp } from '../harness/net.js';

const start = gatewayWithUpstream();
const setup = (overrides: Record<string, unknown> = {}) => start({}, overrides);

async function trustedSession(port: number, from = 'user1@example.test'): Promise<RawSmtp> {
  const c = await RawSmtp.connect(port);
  expect(await c.reply()).toMatch(/^220 /);
  expect(await c.command('EHLO webmail.test')).toMatch(/^250/);
  expect(await c.command(`MAIL FROM:<${from}>`)).toMatch(/^250/);
  expect(await c.command('RCPT TO:<user2@example.test>')).toMatch(/^250/);
  expect(await c.command('DATA')).toMatch(/^354/);
  return c;
}

// The end-of-data look-alikes used by public SMTP smuggling scanners (SEC Consult, smtp-smuggling-tools).
const SMUGGLING_SEQUENCES: Record<string, string> = {
  '\\n.\\n': '\n.\n',
  '\\n.\\r\\n': '\n.\r\n',
  '\\r.\\r\\n': '\r.\r\n',
  '\\r\\n.\\n': '\r\n.\n',
  '\\r\\n.\\r': '\r\n.\r',
  '\\r.\\r': '\r.\r',
  '\\n.\\r': '\n.\r',
  '\\r.\\n': '\r.\n',
  '\\r\\n\\x00.\\r\\n': '\r\n\x00.\r\n',
  '\\r\\n.\\x00\\r\\n': '\r\n.\x00\r\n',
};

describe('SMTP smuggling', () => {
  for (const [name, seq] of Object.entries(SMUGGLING_SEQUENCES)) {
    it(`refuses a message containing ${name} followed by a smuggled transaction, and relays nothing`, async () => {
      const { gw, upstream } = await setup();
      const c = await trustedSession(gw.port('trusted'));
      c.write(
        'From: user1@example.test\r\nSubject: innocent\r\n\r\nHello' +
          seq +
          'MAIL FROM:<ceo@bank.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nFrom: ceo@bank.test\r\nSubject: smuggled\r\n\r\nPay now.\r\n' +
          '\r\n.\r\n',
      );
      const reply = await c.reply();
      expect(reply).toMatch(/^550 5\.6\.0 Message refused: .*(bare CR or LF|NUL bytes).* Ref D-[0-9A-Z]{6}\.$/);
      // Nothing was parsed as a command and nothing reached the upstream.
      expect(await c.command('NOOP')).toMatch(/^250/);
      expect(upstream.messages).toHaveLength(0);
      expect(upstream.commands.filter((l) => l.startsWith('MAIL'))).toEqual(['MAIL FROM:<user1@example.test>']);
      expect(upstream.commands).not.toContain('DATA');
      const line = await gw.waitForLog((l) => l.event === 'transaction');
      expect(line).toMatchObject({ verdict: 'reject' });
      expect(['message.bare_line_ending', 'message.nul_byte']).toContain(line.reason);
      c.close();
    });
  }

  it('still relays the next, clean transaction of the same session after a refusal', async () => {
    const { gw, upstream } = await setup();
    const c = await trustedSession(gw.port('trusted'));
    c.write('Subject: x\r\n\r\nbad\nline\r\n.\r\n');
    expect(await c.reply()).toMatch(/^550 5\.6\.0/);
    expect(await c.command('MAIL FROM:<user1@example.test>')).toMatch(/^250/);
    expect(await c.command('RCPT TO:<user2@example.test>')).toMatch(/^250/);
    await c.command('DATA');
    c.write('Subject: ok\r\n\r\ngood\r\n.\r\n');
    expect(await c.reply()).toMatch(/^250 /);
    expect(upstream.messages.map((m) => m.raw.toString())).toEqual(['Subject: ok\r\n\r\ngood\r\n']);
    expect(upstream.commands).toContain('RSET');
    c.close();
  });

  it('refuses command lines ended by a bare LF (500 5.5.2) without acting on them', async () => {
    const { gw, upstream } = await setup();
    const c = await RawSmtp.connect(gw.port('trusted'));
    await c.reply();
    await c.command('EHLO webmail.test');
    c.write('MAIL FROM:<user1@example.test>\n');
    expect(await c.reply()).toMatch(/^500 5\.5\.2 Command lines must end with CR LF.*Ref D-/);
    expect(upstream.connections).toBe(0);
    // A CRLF line in the same write after a bare-LF one is judged on its own.
    c.write('NOOP\nNOOP\r\n');
    expect(await c.reply()).toMatch(/^500 5\.5\.2/);
    expect(await c.reply()).toMatch(/^250/);
    expect(await gw.metrics.registry.metrics()).toMatch(/^douane_replies_total\{phase="protocol",class="5xx"\} 2$/m);
    c.close();
  });

  it('closes the connection after ten broken lines, like ten unknown commands: a flood of them is not answered for ever', async () => {
    const { gw } = await setup();
    for (const line of ['\n', 'X\x00\r\n']) {
      const c = await RawSmtp.connect(gw.port('trusted'));
      await c.reply();
      c.write(line.repeat(50));
      for (let i = 0; i < 9; i++) expect(await c.reply(), JSON.stringify(line)).toMatch(/^500 5\.5\.2 /);
      expect(await c.reply()).toMatch(/^421 4\.\d\.\d .*Ref D-[0-9A-Z]{6}/);
      expect(await c.reply()).toBe('(closed)');
      c.close();
    }
  });

  it('answers an unknown command as one, whatever its name (one called like a reply code or a library context)', async () => {
    const { gw } = await setup();
    const c = await RawSmtp.connect(gw.port('trusted'));
    await c.reply();
    // sendmail's old WIZ, SHELL and KILL too, which smtp-server would answer with jokes.
    for (const name of ['530', '538', 'MESSAGE_TOO_BIG', 'WIZ secret', 'SHELL', 'KILL']) expect(await c.command(name), name).toMatch(/^500 5\.5\.2 Error: command not recognized\. Ref D-/);
    for (let i = 6; i < 9; i++) await c.command('XYZZY');
    // The tenth unknown command, whatever its name, closes with 421.
    expect(await c.command('MESSAGE_TOO_BIG')).toMatch(/^421 4\.\d\.\d .*Ref D-[0-9A-Z]{6}/);
    expect(await c.reply()).toBe('(closed)');
    c.close();
  });

  it('refuses command lines with a NUL byte (500 5.5.2)', async () => {
    const { gw } = await setup();
    const c = await RawSmtp.connect(gw.port('trusted'));
    await c.reply();
    expect(await c.command('EHLO web\x00mail.test')).toMatch(/^500 5\.5\.2 Command lines must not contain NUL/);
    c.close();
  });

  it('answers a malformed EHLO or HELO with 501 5.5.4 and a reference, and still takes a good one', async () => {
    const { gw } = await setup();
    const c = await RawSmtp.connect(gw.port('trusted'));
    await c.reply();
    expect(await c.command('EHLO')).toMatch(/^501 5\.5\.4 .*EHLO hostname.* Ref D-[0-9A-Z]{6}\.$/);
    expect(await c.command('HELO a b')).toMatch(/^501 5\.5\.4 .*HELO hostname.* Ref D-[0-9A-Z]{6}\.$/);
    expect(await c.command(`EHLO ${'a'.repeat(300)}.test`)).toMatch(/^501 5\.5\.4 .*hostname syntax.* Ref D-[0-9A-Z]{6}\.$/);
    expect(await c.command('EHLO webmail.test')).toMatch(/^250/);
    // The client's mistakes, with references that lead to the log at its default level, and counted.
    const bad = await c.command('MAIL FROM:no-brackets');
    expect(bad).toMatch(/^501 5\.5\.4 .* Ref (D-[0-9A-Z]{6})\.$/);
    const ref = /Ref (D-[0-9A-Z]{6})\.$/.exec(bad)![1];
    expect(gw.logs.filter((l) => l.event === 'protocol_error').map((l) => [l.level, l.ref, String(l.reply).slice(0, 9)])).toEqual([
      ['info', ref, '501 5.5.4'],
      ['info', ref, '501 5.5.4'],
      ['info', ref, '501 5.5.4'],
      ['info', ref, '501 5.5.4'],
    ]);
    expect(await gw.metrics.registry.metrics()).toMatch(/^douane_replies_total\{phase="protocol",class="5xx"\} 4$/m);
    c.close();
  });

  it('closes the connection on an over-long command line, holding at most the limit in memory', async () => {
    const { gw } = await setup({ smtp: { max_line_length: '1K' } });
    const c = await RawSmtp.connect(gw.port('trusted'));
    await c.reply();
    c.write('EHLO ' + 'a'.repeat(64 * 1024));
    expect(await c.reply()).toMatch(/^421 4\.5\.0 Command line too long/);
    expect(await c.reply()).toBe('(closed)');
  });
});

describe('size and recipient limits', () => {
  it('advertises SIZE and refuses a declared SIZE= over the limit at MAIL with 552 5.3.4', async () => {
    const { gw, upstream } = await setup({ smtp: { max_message_size: '100K' } });
    const c = await RawSmtp.connect(gw.port('trusted'));
    await c.reply();
    expect(await c.command('EHLO webmail.test')).toMatch(/SIZE 102400/);
    expect(await c.command('MAIL FROM:<user1@example.test> SIZE=200000')).toMatch(/^552 5\.3\.4 Message too big: the limit is 102400 bytes\. Ref D-/);
    expect(upstream.connections).toBe(0);
    c.close();
  });

  it('refuses an undeclared oversize message after the final dot with 552 5.3.4, forwarding nothing', async () => {
    const { gw, upstream } = await setup({ smtp: { max_message_size: '100K' } });
    const c = await trustedSession(gw.port('trusted'));
    const line = 'x'.repeat(998) + '\r\n';
    c.write('Subject: big\r\n\r\n' + line.repeat(200) + '.\r\n');
    expect(await c.reply()).toMatch(/^552 5\.3\.4 Message too big/);
    expect(upstream.messages).toHaveLength(0);
    expect(upstream.commands).not.toContain('DATA');
    c.close();
  });

  it('answers 452 4.5.3 past the recipient limit and relays to the recipients before it', async () => {
    const { gw, upstream } = await setup({ smtp: { max_recipients: 2 } });
    const c = await RawSmtp.connect(gw.port('trusted'));
    await c.reply();
    await c.command('EHLO webmail.test');
    await c.command('MAIL FROM:<user1@example.test>');
    expect(await c.command('RCPT TO:<a@example.test>')).toMatch(/^250/);
    expect(await c.command('RCPT TO:<b@example.test>')).toMatch(/^250/);
    expect(await c.command('RCPT TO:<c@example.test>')).toMatch(/^452 4\.5\.3 Too many recipients for one message \(limit 2\).*Ref D-/);
    await c.command('DATA');
    c.write('Subject: x\r\n\r\nhi\r\n.\r\n');
    expect(await c.reply()).toMatch(/^250/);
    expect(upstream.messages[0]!.to).toEqual(['a@example.test', 'b@example.test']);
    c.close();
  });

  it('closes with 421 4.7.0 a client that goes on giving recipients past smtp.max_refused_recipients refused ones, keeping no more of them', async () => {
    const { gw, upstream } = await setup({ smtp: { max_recipients: 1, max_refused_recipients: 5 } });
    const c = await RawSmtp.connect(gw.port('trusted'));
    await c.reply();
    await c.command('EHLO webmail.test');
    await c.command('MAIL FROM:<user1@example.test>');
    expect(await c.command('RCPT TO:<a@example.test>')).toMatch(/^250/);
    for (let i = 0; i < 5; i++) expect(await c.command(`RCPT TO:<flood${i}@example.test>`)).toMatch(/^452 4\.5\.3 /);
    expect(await c.command('RCPT TO:<flood5@example.test>')).toMatch(/^421 4\.7\.0 Too many recipients of this message were refused; closing the connection\. .*Ref D-[0-9A-Z]{6}\.$/);
    expect(await c.reply()).toBe('(closed)');
    const line = await gw.waitForLog((l) => l.event === 'transaction');
    expect(line).toMatchObject({ verdict: 'tempfail', reason: 'recipients.too_many_refused' });
    expect((line.rcpt as unknown[]).length).toBe(6);
    expect(upstream.messages).toHaveLength(0);
    // Counted as a session Douane ended, not as one that sent mail; each recipient refused as such, the last too.
    await expect.poll(async () => /^douane_sessions_total\{listener="trusted",outcome="(\w+)"\} 1$/m.exec(await gw.metrics.registry.metrics())?.[1]).toBe('ended_by_douane');
    expect(await gw.metrics.registry.getSingleMetricAsString('douane_recipients_total')).toMatch(/^douane_recipients_total\{result="refused_by_douane"\} 6$/m);
  });
});

describe('slow clients and floods', () => {
  it('closes an idle session with 421 after the idle timeout', async () => {
    const { gw } = await setup({ smtp: { idle_timeout: '300ms' } });
    const c = await RawSmtp.connect(gw.port('trusted'));
    await c.reply();
    expect(await c.reply(3000)).toMatch(/^421 4\.4\.2 No command received for too long; closing the connection\. .*Ref D-[0-9A-Z]{6}\.$/);
    expect(await c.reply()).toBe('(closed)');
    // A session Douane ended, said with its reason.
    expect(await gw.waitForLog((l) => l.event === 'refusal')).toMatchObject({ reason: 'session.idle', listener: 'trusted' });
    await expect.poll(async () => /^douane_sessions_total\{listener="trusted",outcome="(\w+)"\} 1$/m.exec(await gw.metrics.registry.metrics())?.[1]).toBe('ended_by_douane');
  });

  it('ends a session that outlives the session deadline even while the client keeps talking', async () => {
    const { gw } = await setup({ smtp: { session_deadline: '1s' } });
    const c = await RawSmtp.connect(gw.port('trusted'));
    await c.reply();
    const started = Date.now();
    let last = '';
    while (Date.now() - started < 4000) {
      last = await c.command('NOOP', 1000);
      if (!last.startsWith('250')) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(last).toMatch(/^421 4\.4\.2 Session time limit reached/);
  });

  it('ends a session whose deadline passed while the upstream was answering, even if the client then only sends NOOP or RCPT', async () => {
    const { gw } = await start({ mail: () => ({ delayMs: 1200 }) }, { smtp: { session_deadline: '1s' } });
    const c = await RawSmtp.connect(gw.port('trusted'));
    await c.reply();
    await c.command('EHLO client.test');
    const started = Date.now();
    // The deadline passes while the upstream is still answering MAIL: that reply goes out first.
    expect(await c.command('MAIL FROM:<user1@example.test>', 3000)).toMatch(/^250 /);
    let last = await c.command('RCPT TO:<user2@example.test>', 1000).catch(() => '(none)');
    while (last.startsWith('250') && Date.now() - started < 4000) last = await c.command('NOOP', 1000).catch(() => '(none)');
    expect(last).toMatch(/^421 4\.4\.2 Session time limit reached/);
    expect(Date.now() - started).toBeLessThan(2500);
  });

  it('a client that drops without QUIT leaves no session deadline behind (no refusal logged for it later)', async () => {
    const { gw } = await setup({ smtp: { session_deadline: '1s' } });
    for (let i = 0; i < 3; i++) {
      const c = await RawSmtp.connect(gw.port('trusted'));
      await c.reply();
      c.close(); // destroys the socket: no QUIT
    }
    await gw.waitForLog((l) => l.event === 'session_end' && gw.logs.filter((x) => x.event === 'session_end').length === 3);
    await new Promise((r) => setTimeout(r, 1300));
    expect(gw.logs.filter((l) => l.reason === 'session.deadline')).toEqual([]);
  });

  it('ends a client that trickles its message past the session deadline, relaying nothing', async () => {
    const { gw, upstream } = await setup({ smtp: { session_deadline: '1s' } });
    const c = await trustedSession(gw.port('trusted'));
    const started = Date.now();
    let reply = '(none)';
    const trickle = setInterval(() => c.write('x'), 100);
    reply = await c.reply(4000);
    clearInterval(trickle);
    expect(reply).toMatch(/^421 4\.4\.2/);
    expect(Date.now() - started).toBeLessThan(3000);
    expect(upstream.messages).toHaveLength(0);
  });

  it('caps simultaneous connections per client address with 421 4.7.0', async () => {
    const { gw } = await setup({ smtp: { max_connections_per_ip: 2 } });
    const a = await RawSmtp.connect(gw.port('trusted'));
    const b = await RawSmtp.connect(gw.port('trusted'));
    expect(await a.reply()).toMatch(/^220/);
    expect(await b.reply()).toMatch(/^220/);
    const c = await RawSmtp.connect(gw.port('trusted'));
    expect(await c.reply()).toMatch(/^421 4\.7\.0 Too many simultaneous connections from your address \(127\.0\.0\.1\).*Ref D-/);
    // Another address is not affected.
    const socket = net.connect({ port: gw.port('submission'), host: '127.0.0.1', localAddress: '127.0.0.3' });
    const greeting = await new Promise<string>((resolve) => socket.once('data', (d) => resolve(d.toString())));
    expect(greeting).toMatch(/^220 /);
    socket.destroy();
    a.close();
    b.close();
  });

  it('on the implicit TLS port, one address holding connections before their handshake cannot lock the others out', async () => {
    const { gw } = await setup({ smtp: { max_connections: 5, max_connections_per_ip: 2 } });
    const port = gw.port('submissions');
    // Plain TCP connections that never start TLS, as many as the whole server takes.
    const idle = await Promise.all(
      Array.from({ length: 5 }, async () => {
        const s = net.connect({ port, host: '127.0.0.1', localAddress: '127.0.0.66' });
        s.on('error', () => undefined);
        await new Promise((r) => s.once('connect', r));
        return s;
      }),
    );
    // Beyond the two an address may hold, they are closed at once.
    await expect.poll(() => idle.filter((s) => s.destroyed || s.readableEnded).length).toBe(3);
    const c = await RawSmtp.connect(port, { tls: true, localAddress: '127.0.0.77' });
    expect(await c.reply()).toMatch(/^220 /);
    c.close();
    await expect.poll(async () => (await gw.metrics.registry.metrics()).match(/douane_refusals_total\{phase="connect",reason="connection\.too_many_from_ip"\} (\d+)/)?.[1]).toBe('3');
    for (const s of idle) s.destroy();
  });

  it('caps the total number of connections with 421 4.3.2', async () => {
    const { gw } = await setup({ smtp: { max_connections: 2 } });
    const a = await RawSmtp.connect(gw.port('trusted'));
    const b = await RawSmtp.connect(gw.port('trusted'));
    await a.reply();
    await b.reply();
    const c = await RawSmtp.connect(gw.port('trusted'));
    expect(await c.reply()).toMatch(/^421 4\.3\.2 Too many connections/);
    // Logged with who was refused, and where; counted as refused at connect, as the other connect refusals.
    expect(await gw.waitForLog((l) => l.event === 'refusal' && l.reason === 'connection.too_many')).toMatchObject({ client: '127.0.0.1', listener: 'trusted' });
    expect(await gw.metrics.registry.getSingleMetricAsString('douane_refusals_total')).toMatch(/^douane_refusals_total\{phase="connect",reason="connection\.too_many"\} 1$/m);
    a.close();
    b.close();
  });
});


describe('archives that decompress far', () => {
  it('a program behind more zeros than the first look decompresses is found by a second look in a thread, and refused', async () => {
    const { gw, upstream } = await setup();
    const c = await trustedSession(gw.port('trusted'));
    c.write(mimeMessage({ from: 'user1@example.test', attachments: [{ name: 'image.tar.gz', content: programBehindZeros(FIRST_LOOK_BUDGET.bytes * 2) }] }).replace(/\r\n\./g, '\r\n..') + '.\r\n');
    expect(await c.reply()).toMatch(/^550 5\.7\.1 Message refused: it carries a type of attachment that may not be sent by email.* Ref D-[0-9A-Z]{6}, rule attachments\.executable, art\. 4\.6\.$/);
    const line = await gw.waitForLog((l) => l.event === 'transaction');
    expect(line).toMatchObject({ verdict: 'quarantine', reason: 'attachment.forbidden', timings: { second_look: expect.any(Number) } });
    expect(upstream.messages).toHaveLength(0);
    expect(await gw.metrics.registry.metrics()).toMatch(/^douane_inspection_second_looks_total\{result="inspected"\} 1$/m);
    c.close();
  });

  it('an inspection thread that dies tempfails its message with 451 4.3.0 and a reference; the next message is inspected by a new one', async () => {
    const upstream = await FakeUpstream.start();
    const inspectionPool = new InspectionPool(1, { script: new URL('../harness/faulty-inspection-worker.mjs', import.meta.url) });
    const gw = await startGateway(upstream.port, {}, { inspectionPool });
    upstream.forgetStartup();
    try {
      const image = programBehindZeros(FIRST_LOOK_BUDGET.bytes * 2);
      const c = await trustedSession(gw.port('trusted'));
      c.write(mimeMessage({ from: 'user1@example.test', subject: 'CRASH-THE-THREAD', attachments: [{ name: 'image.tar.gz', content: image }] }) + '.\r\n');
      const reply = await c.reply();
      expect(reply).toMatch(/^451 4\.3\.0 Temporary local problem.* Ref (D-[0-9A-Z]{6})\.$/);
      const ref = /Ref (D-[0-9A-Z]{6})\.$/.exec(reply)![1];
      expect(await gw.waitForLog((l) => l.event === 'transaction' && l.ref === ref)).toMatchObject({ verdict: 'tempfail', reason: 'internal.error' });
      expect(gw.logs.find((l) => l.event === 'inspection_thread_failed')).toMatchObject({ messages: 1, err: 'the inspection thread stopped (exit code 70)' });
      expect(upstream.messages).toHaveLength(0);
      // The same client's next message, in the same session: a new thread looks at it.
      expect(await c.command('MAIL FROM:<user1@example.test>')).toMatch(/^250/);
      expect(await c.command('RCPT TO:<user2@example.test>')).toMatch(/^250/);
      expect(await c.command('DATA')).toMatch(/^354/);
      c.write(mimeMessage({ from: 'user1@example.test', subject: 'again', attachments: [{ name: 'image.tar.gz', content: image }] }) + '.\r\n');
      expect(await c.reply()).toMatch(/^550 5\.7\.1 /);
      const metrics = await gw.metrics.registry.metrics();
      expect(metrics).toMatch(/^douane_inspection_thread_failures_total 1$/m);
      expect(metrics).toMatch(/^douane_inspection_second_looks_total\{result="failed"\} 1$/m);
      expect(metrics).toMatch(/^douane_inspection_second_looks_total\{result="inspected"\} 1$/m);
      c.close();
    } finally {
      await gw.stop();
      await upstream.stop();
    }
  });
});

describe('spool', () => {
  it('a spool that cannot be written (its directory gone, a full disk) tempfails the message with a reference, relaying nothing', async () => {
    const { gw, upstream } = await setup({ spool: { memory_threshold: '1K' } });
    rmSync(gw.spoolDir, { recursive: true });
    try {
      const c = await trustedSession(gw.port('trusted'));
      c.write(`From: user1@example.test\r\nSubject: big\r\n\r\n${'x'.repeat(70)}\r\n`.repeat(100));
      // The failure is known now, but the client is answered only after its final dot: a reply in the
      // middle of the message would have the rest of it read as commands.
      expect(await c.reply(500)).toBe('(timeout)');
      c.write(`${'y'.repeat(70)}\r\n`.repeat(10) + '.\r\n');
      expect(await c.reply()).toMatch(/^451 4\.3\.0 Temporary local problem.*Ref D-/);
      const line = await gw.waitForLog((l) => l.event === 'transaction');
      expect(line).toMatchObject({ verdict: 'tempfail', reason: 'internal.error' });
      expect(String(line.note)).toMatch(/receiving the message failed: .*ENOENT/);
      expect(upstream.messages).toHaveLength(0);
      // The session goes on: the next message fits in memory.
      expect(await c.command('MAIL FROM:<user1@example.test>')).toMatch(/^250 /);
      c.close();
    } finally {
      mkdirSync(gw.spoolDir);
    }
  });

  it('a spooled copy that cannot be removed after the upstream accepted the message leaves the 250 as it is, and is logged', async () => {
    // The upstream has the message when the spool file is swapped for a directory: removing it fails
    // (as it would on a disk gone read-only). A 451 now would have the client send it again.
    let swapped = '';
    const { gw, upstream } = await start({
      dataEnd: () => {
        const [file] = readdirSync(gw.spoolDir);
        swapped = join(gw.spoolDir, file!);
        rmSync(swapped);
        mkdirSync(swapped);
        writeFileSync(join(swapped, 'keep'), 'x');
        return { delayMs: 50 };
      },
    }, { spool: { memory_threshold: '1K' } });
    try {
      const c = await trustedSession(gw.port('trusted'));
      c.write(`From: user1@example.test\r\nSubject: big\r\n\r\n${'x'.repeat(70)}\r\n`.repeat(100) + '.\r\n');
      expect(await c.reply()).toBe('250 2.0.0 Ok: queued as FAKE1');
      expect(upstream.messages).toHaveLength(1);
      const cleanup = await gw.waitForLog((l) => l.event === 'spool_cleanup_failed');
      expect(String(cleanup.err)).toMatch(/EISDIR|directory/);
      expect(await gw.waitForLog((l) => l.event === 'transaction')).toMatchObject({ verdict: 'accept' });
      c.close();
    } finally {
      if (swapped) rmSync(swapped, { recursive: true, force: true });
    }
  });

  it('a handler that fails unexpectedly tempfails with 451 4.3.0 and a reference, counted and logged as that refusal, not as abandoned', async () => {
    const { FakeUpstream } = await import('../harness/fake-upstream.js');
    const { startGateway } = await import('../harness/gateway.js');
    const upstream = await FakeUpstream.start();
    // An upstream provider with a bug: what a handler never expects to throw.
    const broken = { forAuth: () => Promise.reject(new TypeError('boom')), forTrusted: () => Promise.reject(new TypeError('boom')), release: () => undefined, offers: () => false, learn: async () => undefined, close: async () => undefined };
    const gw = await startGateway(upstream.port, {}, { upstream: broken });
    try {
      const c = await RawSmtp.connect(gw.port('trusted'));
      await c.reply();
      await c.command('EHLO webmail.test');
      const reply = await c.command('MAIL FROM:<user1@example.test>');
      expect(reply).toMatch(/^451 4\.3\.0 Temporary local problem.* Ref (D-[0-9A-Z]{6})\.$/);
      const ref = /Ref (D-[0-9A-Z]{6})\.$/.exec(reply)![1];
      c.write('QUIT\r\n');
      const line = await gw.waitForLog((l) => l.event === 'transaction');
      expect(line).toMatchObject({ ref, verdict: 'tempfail', reason: 'internal.error', reply: expect.stringMatching(/^451 4\.3\.0 /) });
      expect(gw.logs.find((l) => l.event === 'internal_error')).toMatchObject({ ref, phase: 'mail' });
      const metrics = await gw.metrics.registry.metrics();
      expect(metrics).toMatch(/^douane_refusals_total\{phase="mail",reason="internal\.error"\} 1$/m);
      expect(metrics).toMatch(/^douane_transactions_total\{listener="trusted",verdict="tempfail",reason="internal\.error"\} 1$/m);
      expect(metrics).not.toMatch(/verdict="abandoned"/);
      c.close();
    } finally {
      await gw.stop();
      await upstream.stop();
    }
  });

  it('relays a 25 MB message intact and removes its spool file', async () => {
    const { gw, upstream } = await setup({ smtp: { max_message_size: '30M' }, spool: { memory_threshold: '64K' } });
    const c = await trustedSession(gw.port('trusted'));
    const line = Buffer.from('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/ABCDEFGHIJKL\r\n');
    const body = Buffer.concat([Buffer.from('Subject: big\r\n\r\n'), Buffer.alloc(line.length * 340_000).fill(line)]);
    let seenSpoolFile = false;
    const watcher = setInterval(() => {
      if (readdirSync(gw.spoolDir).length > 0) seenSpoolFile = true;
    }, 5);
    c.write(body);
    c.write('.\r\n');
    expect(await c.reply(30_000)).toMatch(/^250 /);
    clearInterval(watcher);
    expect(upstream.messages[0]!.raw.equals(body)).toBe(true);
    expect(seenSpoolFile).toBe(true);
    expect(readdirSync(gw.spoolDir)).toEqual([]);
    c.close();
  });

  it('removes the spool file when the client disconnects in the middle of DATA', async () => {
    const { gw, upstream } = await setup({ spool: { memory_threshold: '1K' } });
    const c = await trustedSession(gw.port('trusted'));
    c.write('Subject: x\r\n\r\n' + 'y'.repeat(200_000));
    await new Promise((r) => setTimeout(r, 200));
    c.close();
    await gw.waitForLog((l) => l.event === 'transaction' && l.verdict === 'abandoned');
    await expect.poll(() => readdirSync(gw.spoolDir)).toEqual([]);
    expect(upstream.messages).toHaveLength(0);
    // A client going away is the client's business, not an internal error: no error line for anyone to chase.
    expect(gw.logs.filter((l) => l.level === 'error' || l.level === 'fatal')).toEqual([]);
  });

  it('a client that goes away after a few lines of DATA leaves an abandoned transaction, not an error', async () => {
    const { gw, upstream } = await setup();
    const c = await trustedSession(gw.port('trusted'));
    c.write('partial body\r\n');
    await new Promise((r) => setTimeout(r, 100));
    c.close();
    const line = await gw.waitForLog((l) => l.event === 'transaction' && l.verdict === 'abandoned');
    expect(line.reply).toMatch(/client went away during DATA/);
    await new Promise((r) => setTimeout(r, 100));
    expect(gw.logs.filter((l) => l.level === 'error' || l.level === 'fatal')).toEqual([]);
    expect(upstream.messages).toHaveLength(0);
  });
});
