// End to end: real clients (swaks, curl, nodemailer) → Douane → a private Postfix with Dovecot SASL, the
// way Zimbra's MTA checks credentials. Delivered messages are read from Postfix's mailboxes.

import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import nodemailer from 'nodemailer';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { startGateway, type TestGateway } from '../harness/gateway.js';
import { startHaproxy } from '../harness/haproxy.js';
import { allDelivered, waitForMailbox } from '../harness/mail-stack.js';
import { RawSmtp } from '../harness/net.js';
import { run } from '../harness/procs.js';

const exec = promisify(execFile);
const stack = inject('mailStack');
let gw: TestGateway;
let certDir: string;

beforeAll(async () => {
  certDir = mkdtempSync(join(tmpdir(), 'douane-e2e-cert-'));
  run('openssl', [
    'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=douane.test',
    '-addext', 'subjectAltName=DNS:douane.test,DNS:localhost,IP:127.0.0.1',
    '-keyout', join(certDir, 'key.pem'), '-out', join(certDir, 'cert.pem'),
  ]);
  gw = await startGateway(stack.authPort, {
    tls: { insecure_dev: false, cert: join(certDir, 'cert.pem'), key: join(certDir, 'key.pem') },
    upstream: {
      port: stack.authPort,
      trusted_port: stack.openPort,
      tls: 'starttls',
      verify_certificate: true,
      ca: stack.caFile,
      servername: 'upstream.example.test',
      xclient: true,
      timeouts: { connect: '5s', command: '10s', data: '20s' },
    },
  });
});

afterAll(async () => {
  await gw?.stop();
});

/** A gateway whose trusted listener (as given) relays to Postfix's open port, passing the client on by XCLIENT. */
function trustedGateway(trusted: Record<string, unknown>): Promise<TestGateway> {
  return startGateway(stack.openPort, {
    listeners: { trusted: { mode: 'trusted', port: 0, ...trusted } },
    upstream: { port: stack.authPort, trusted_port: stack.openPort, tls: 'opportunistic', verify_certificate: false, xclient: true, timeouts: { connect: '5s', command: '10s', data: '20s' } },
  });
}

/** The newest message in a mailbox, once it holds more than `before`. */
async function newestIn(user: string, before: number): Promise<string> {
  const box = await waitForMailbox(stack, user, before + 1);
  return box[box.length - 1]!.toString();
}

function swaks(args: string[]): Promise<{ code: number; out: string }> {
  return exec('swaks', [...args, '--timeout', '20'], { timeout: 30_000 }).then(
    (r) => ({ code: 0, out: r.stdout + r.stderr }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, out: e.stdout + e.stderr }),
  );
}

describe('real clients through Douane to Postfix + Dovecot', () => {
  it('swaks: STARTTLS + AUTH PLAIN, delivered once with its content intact', async () => {
    const before = (await waitForMailbox(stack, 'user2', 0)).length;
    const r = await swaks([
      '--server', `127.0.0.1:${gw.port('submission')}`, '--tls', '--auth', 'PLAIN',
      '--auth-user', 'user1@example.test', '--auth-password', 'secret1',
      '--from', 'user1@example.test', '--to', 'user2@example.test',
      '--header', 'Subject: swaks through douane', '--body', 'Bonjour depuis swaks.',
    ]);
    expect(r.out).toMatch(/<~ {2}235 2\.7\.0/);
    expect(r.out).toMatch(/<~ {2}250 2\.0\.0 Ok: (\d+ bytes )?queued as [0-9A-F]+/);
    expect(r.code).toBe(0);
    const box = await waitForMailbox(stack, 'user2', before + 1);
    expect(box).toHaveLength(before + 1);
    const msg = box[box.length - 1]!.toString();
    expect(msg).toContain('Subject: swaks through douane');
    expect(msg).toContain('Bonjour depuis swaks.');
    // Postfix authenticated the user itself (SASL through Dovecot) on a TLS session (ESMTPSA), and XCLIENT
    // gave it the client's own HELO name rather than Douane's.
    expect(msg).toMatch(/Received: from [^\n]+\(localhost \[127\.0\.0\.1\]\)\n\s+by upstream\.example\.test \(Postfix\) with ESMTPSA/);
    expect(msg).not.toMatch(/Received: from douane\.test/);
  });

  it('swaks: an X-Douane-Tags of the client\'s own does not reach Postfix; the rest of the message arrives intact', async () => {
    const before = (await waitForMailbox(stack, 'user2', 0)).length;
    const data = join(certDir, 'forged-tags.eml');
    writeFileSync(data, 'From: user1@example.test\r\nX-Douane-Tags: forged.one,\r\n\tforged.two\r\nSubject: forged tags\r\nX-Other: kept\r\n\r\nX-Douane-Tags: in the body stays.\r\n');
    const r = await swaks([
      '--server', `127.0.0.1:${gw.port('submission')}`, '--tls', '--auth', 'PLAIN',
      '--auth-user', 'user1@example.test', '--auth-password', 'secret1',
      '--from', 'user1@example.test', '--to', 'user2@example.test', '--data', data,
    ]);
    expect(r.out).toMatch(/<~ {2}250 2\.0\.0 Ok/);
    const msg = await newestIn('user2', before);
    expect(msg).not.toMatch(/forged\.(one|two)/);
    expect(msg).toMatch(/^Subject: forged tags$/m);
    expect(msg).toMatch(/^X-Other: kept$/m);
    expect(msg).toMatch(/\n\nX-Douane-Tags: in the body stays\.\n/);
  });

  it('swaks: a password longer than an SMTP command line (an application token) logs in, with LOGIN and with PLAIN', async () => {
    const before = (await waitForMailbox(stack, 'user2', 0)).length;
    for (const mechanism of ['LOGIN', 'PLAIN']) {
      const r = await swaks([
        '--server', `127.0.0.1:${gw.port('submission')}`, '--tls', '--auth', mechanism,
        '--auth-user', 'token@example.test', '--auth-password', stack.users['token@example.test']!,
        '--from', 'token@example.test', '--to', 'user2@example.test', '--header', `Subject: token via ${mechanism}`,
      ]);
      expect(r.out, r.out.slice(-2000)).toMatch(/<~ {2}235 2\.7\.0/);
      expect(r.code).toBe(0);
    }
    expect(await waitForMailbox(stack, 'user2', before + 2)).toHaveLength(before + 2);
  });

  it('swaks: a wrong password is refused with 535 5.7.8 and nothing is sent', async () => {
    const total = allDelivered(stack);
    const r = await swaks([
      '--server', `127.0.0.1:${gw.port('submission')}`, '--tls', '--auth', 'LOGIN',
      '--auth-user', 'user1@example.test', '--auth-password', 'not-the-password',
      '--from', 'user1@example.test', '--to', 'user2@example.test',
    ]);
    expect(r.out).toMatch(/535 5\.7\.8 Authentication failed: wrong user name or password\. Ref D-[0-9A-Z]{6}\./);
    expect(r.code).not.toBe(0);
    await new Promise((res) => setTimeout(res, 300));
    expect(allDelivered(stack)).toBe(total);
  });

  it('curl: --ssl-reqd with certificate verification, AUTH, delivered', async () => {
    const before = (await waitForMailbox(stack, 'user3', 0)).length;
    const file = join(certDir, 'curl.eml');
    writeFileSync(file, 'From: user1@example.test\r\nTo: user3@example.test\r\nSubject: curl through douane\r\n\r\nHello from curl.\r\n');
    const r = await exec('curl', [
      '-sS', `smtp://127.0.0.1:${gw.port('submission')}`, '--ssl-reqd', '--cacert', join(certDir, 'cert.pem'),
      '--user', 'user1@example.test:secret1', '--mail-from', 'user1@example.test', '--mail-rcpt', 'user3@example.test', '-T', file,
    ]);
    expect(r.stderr).toBe('');
    const box = await waitForMailbox(stack, 'user3', before + 1);
    expect(box[box.length - 1]!.toString()).toContain('Hello from curl.');
  });

  it('curl: a wrong password exits 67 (login denied)', async () => {
    const file = join(certDir, 'curl2.eml');
    writeFileSync(file, 'Subject: x\r\n\r\nx\r\n');
    const r = await exec('curl', [
      '-sS', `smtp://127.0.0.1:${gw.port('submission')}`, '--ssl-reqd', '--cacert', join(certDir, 'cert.pem'),
      '--user', 'user1@example.test:bad', '--mail-from', 'user1@example.test', '--mail-rcpt', 'user3@example.test', '-T', file,
    ]).then(
      () => ({ code: 0 }),
      (e: { code: number }) => ({ code: e.code }),
    );
    expect(r.code).toBe(67);
  });

  it('nodemailer: implicit TLS (465-style) with AUTH LOGIN, one message to two recipients', async () => {
    const before2 = (await waitForMailbox(stack, 'user2', 0)).length;
    const before3 = (await waitForMailbox(stack, 'user3', 0)).length;
    const transport = nodemailer.createTransport({
      host: '127.0.0.1',
      port: gw.port('submissions'),
      secure: true,
      auth: { user: 'user2@example.test', pass: 'secret2', method: 'LOGIN' },
      tls: { ca: readFileSync(join(certDir, 'cert.pem')), servername: 'douane.test' },
    });
    const info = await transport.sendMail({
      from: 'user2@example.test',
      to: ['user2@example.test', 'user3@example.test'],
      subject: 'nodemailer through douane',
      text: 'Envoyé avec nodemailer — accents intacts.',
      attachments: [{ filename: 'notes.txt', content: 'a small attachment\n' }],
    });
    expect(info.accepted).toEqual(['user2@example.test', 'user3@example.test']);
    expect(info.response).toMatch(/^250 2\.0\.0 Ok: (\d+ bytes )?queued as/);
    transport.close();
    const box2 = await waitForMailbox(stack, 'user2', before2 + 1);
    const box3 = await waitForMailbox(stack, 'user3', before3 + 1);
    expect(box2[box2.length - 1]!.toString()).toContain('filename=notes.txt');
    expect(box3[box3.length - 1]!.toString()).toContain('Subject: nodemailer through douane');
  });

  it('nodemailer: a delivery receipt asked for (DSN NOTIFY=SUCCESS) comes back from Postfix with the envelope id', async () => {
    const before2 = (await waitForMailbox(stack, 'user2', 0)).length;
    const before1 = (await waitForMailbox(stack, 'user1', 0)).length;
    const transport = nodemailer.createTransport({
      host: '127.0.0.1',
      port: gw.port('submission'),
      requireTLS: true,
      auth: { user: 'user1@example.test', pass: 'secret1' },
      tls: { ca: readFileSync(join(certDir, 'cert.pem')), servername: 'douane.test' },
    });
    // Douane offers DSN once it has seen the upstream offer it: the first session teaches it.
    await transport.sendMail({ from: 'user1@example.test', to: 'user2@example.test', subject: 'first', text: 'first' });
    const info = await transport.sendMail({
      from: 'user1@example.test',
      to: 'user2@example.test',
      subject: 'with a receipt',
      text: 'Accusé de réception demandé.',
      dsn: { id: 'receipt+42', return: 'headers', notify: ['success', 'failure'], recipient: 'user2+orig@example.test' },
    });
    transport.close();
    expect(info.accepted).toEqual(['user2@example.test']);
    await waitForMailbox(stack, 'user2', before2 + 2);
    // The sender's receipt: Postfix's own delivery report, for the id and recipient the client gave.
    const receipts = (await waitForMailbox(stack, 'user1', before1 + 1)).slice(before1).map((m) => m.toString());
    expect(receipts).toHaveLength(1);
    expect(receipts[0]).toMatch(/^Original-Envelope-Id: receipt\+42$/m);
    expect(receipts[0]).toMatch(/^Action: delivered/m);
    // The original recipient the client gave (ORCPT), not the envelope's: relayed, its xtext intact.
    expect(receipts[0]).toMatch(/^Original-Recipient: rfc822; ?user2\+orig@example\.test$/m);
    expect(receipts[0]).toContain('Subject: with a receipt');
  });

  it('trusted listener: webmail-style submission without AUTH; XCLIENT passes the real client address', async () => {
    const before = (await waitForMailbox(stack, 'user3', 0)).length;
    const gw2 = await trustedGateway({ allow: ['127.0.0.0/8'] });
    try {
      // Connect from 127.0.0.5 so the address Postfix records differs from Douane's own.
      const c = await RawSmtp.connect(gw2.port('trusted'), { localAddress: '127.0.0.5' });
      expect(await c.reply()).toMatch(/^220/);
      await c.command('EHLO webmail.example.test');
      expect(await c.command('MAIL FROM:<user1@example.test>')).toMatch(/^250 2\.1\.0/);
      expect(await c.command('RCPT TO:<user3@example.test>')).toMatch(/^250 2\.1\.5/);
      await c.command('DATA');
      c.write('From: user1@example.test\r\nSubject: from webmail\r\n\r\nvia the trusted port\r\n.\r\n');
      expect(await c.reply()).toMatch(/^250 2\.0\.0 Ok: (\d+ bytes )?queued as/);
      c.close();
      const msg = await newestIn('user3', before);
      expect(msg).toContain('via the trusted port');
      expect(msg).toMatch(/from webmail\.example\.test \(.*\[127\.0\.0\.5\]\)/);
    } finally {
      await gw2.stop();
    }
  });

  it('behind HAProxy (send-proxy): the client\'s own address is the one the trusted network, the log and Postfix see', async () => {
    const before = (await waitForMailbox(stack, 'user3', 0)).length;
    // Only the client's address is trusted: without the PROXY line, Douane would see HAProxy's (127.0.0.1) and refuse.
    const gw2 = await trustedGateway({ allow: ['127.0.0.6/32'], proxy_protocol_from: ['127.0.0.1'] });
    const haproxy = await startHaproxy(gw2.port('trusted'));
    try {
      const r = await swaks([
        '--server', `127.0.0.1:${haproxy.port}`, '--local-interface', '127.0.0.6',
        '--ehlo', 'webmail.example.test', '--from', 'user1@example.test', '--to', 'user3@example.test',
        '--header', 'Subject: through the balancer', '--body', 'via HAProxy and Douane',
      ]);
      expect(r.code, `${r.out}\n${haproxy.logTail()}`).toBe(0);
      expect(r.out).toMatch(/<- {2}250 2\.0\.0 Ok: (\d+ bytes )?queued as/);
      expect((await gw2.waitForLog((l) => l.event === 'transaction')).client).toBe('127.0.0.6');
      const msg = await newestIn('user3', before);
      expect(msg).toContain('via HAProxy and Douane');
      expect(msg).toMatch(/from webmail\.example\.test \(.*\[127\.0\.0\.6\]\)/);
    } finally {
      await haproxy.stop();
      await gw2.stop();
    }
  });

  it('a Postfix without SMTPUTF8 (as Zimbra\'s): not offered to the client, and refused with 555 5.5.4 before anything goes up', async () => {
    const total = allDelivered(stack);
    const c = await RawSmtp.connect(gw.port('trusted'));
    await c.reply();
    expect(await c.command('EHLO webmail.test')).not.toMatch(/SMTPUTF8/);
    expect(await c.command('MAIL FROM:<user1@example.test> SMTPUTF8')).toMatch(/^555 5\.5\.4 The parameter SMTPUTF8 is not supported here.* Ref D-[0-9A-Z]{6}\.$/);
    // The same message without it goes through.
    expect(await c.command('MAIL FROM:<user1@example.test>')).toMatch(/^250 /);
    expect(await c.command('RCPT TO:<user2@example.test>')).toMatch(/^250 /);
    await c.command('DATA');
    c.write('Subject: ascii\r\n\r\nhello\r\n.\r\n');
    expect(await c.reply()).toMatch(/^250 /);
    c.close();
    await expect.poll(() => allDelivered(stack), { timeout: 10_000 }).toBe(total + 1);
  });

  it('SMTP smuggling through to Postfix: refused, and Postfix receives nothing', async () => {
    const total = allDelivered(stack);
    const c = await RawSmtp.connect(gw.port('trusted'));
    await c.reply();
    await c.command('EHLO webmail.test');
    await c.command('MAIL FROM:<user1@example.test>');
    await c.command('RCPT TO:<user2@example.test>');
    await c.command('DATA');
    c.write('Subject: hi\r\n\r\nhello\n.\nMAIL FROM:<admin@example.test>\nRCPT TO:<user3@example.test>\nDATA\nSubject: smuggled\n\nowned\n.\n\r\n.\r\n');
    expect(await c.reply()).toMatch(/^550 5\.6\.0 /);
    c.close();
    await new Promise((res) => setTimeout(res, 500));
    expect(allDelivered(stack)).toBe(total);
  });
});
