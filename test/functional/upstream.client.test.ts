// The upstream client on its own: the client's credentials cross to the upstream only encrypted, or to an
// upstream on this machine, or where the configuration says in so many words that the network is trusted
// (tls: none); a keepalive belongs to one transaction.

import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import readline from 'node:readline';
import { Readable } from 'node:stream';
import tls from 'node:tls';
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

  it('a 421 to any command is passed on, and the connection is not used again (its close may come later)', async () => {
    // The fake says 421 and keeps the socket open: as Postfix's close, it comes in its own time.
    upstream = await FakeUpstream.start({ rcpt: () => '421 4.3.0 Server shutting down' });
    const client = await SmtpClient.connect(endpoint(upstream.port, 'none'));
    expect((await client.mail('user1@example.test')).code).toBe(250);
    expect(await client.rcpt('user2@example.test')).toMatchObject({ code: 421, enhanced: '4.3.0' });
    expect(client.usable).toBe(false);
    await expect(client.rset()).rejects.toMatchObject({ kind: 'closed' });
  });
});

/**
 * An upstream that reads the message slowly but steadily, `rate` bytes every 100 ms, and then answers
 * the final dot, or never does (`answer: false`).
 */
async function slowReader(rate: number, answer: boolean, early?: string): Promise<{ port: number; read: () => number; close: () => void }> {
  let read = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('error', () => undefined);
    let lines = '';
    let inData = false;
    let tail = '';
    s.write('220 slow ESMTP\r\n');
    s.on('data', (d: Buffer) => {
      if (inData) return;
      lines += d.toString('latin1');
      for (let nl = lines.indexOf('\r\n'); nl >= 0 && !inData; nl = lines.indexOf('\r\n')) {
        const verb = lines.slice(0, nl).split(' ')[0]!.toUpperCase();
        lines = lines.slice(nl + 2);
        if (verb === 'EHLO') s.write('250-slow\r\n250 ENHANCEDSTATUSCODES\r\n');
        else if (verb === 'DATA') {
          s.write('354 go\r\n');
          inData = true;
          s.removeAllListeners('data');
          s.pause();
          const timer = setInterval(() => {
            let n = 0;
            let chunk: Buffer | null;
            while (n < rate && s.readableLength > 0 && (chunk = s.read(Math.min(rate - n, s.readableLength)) as Buffer | null)) {
              n += chunk.length;
              if (early && read === 0) s.write(early);
              read += chunk.length;
              tail = (tail + chunk.toString('latin1')).slice(-5);
              if (tail === '\r\n.\r\n') {
                clearInterval(timer);
                if (answer) s.write('250 2.0.0 Ok: queued\r\n');
                return;
              }
            }
          }, 100);
          s.on('close', () => clearInterval(timer));
        } else s.write('250 2.0.0 Ok\r\n');
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as net.AddressInfo).port,
    read: () => read,
    close: () => {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}

describe('sending the message', () => {
  it('a message the upstream takes longer than timeouts.data to read, reading all along, is sent; its answer is then waited for timeouts.data', async () => {
    // 20 MB read at 5 MB/s at most: four seconds of sending at least, against a timeouts.data of 3 s.
    // (TCP's window makes the reads come in bursts, with pauses of about half a second between them.) The
    // answer's deadline starts at the last byte written: what the socket buffers then hold (loopback's
    // grow to several MB) is read within it, at this rate, with room to spare on a loaded machine.
    const message = () => Readable.from((function* () {
      yield Buffer.from('Subject: big\r\n\r\n');
      const line = Buffer.from('x'.repeat(998) + '\r\n');
      for (let i = 0; i < 200; i++) yield Buffer.concat(Array.from({ length: 100 }, () => line));
    })());
    const slow = { ...endpoint(0, 'none'), timeouts: { connect: 2000, command: 2000, data: 3000, keepalive: 60_000 } };
    const reader = await slowReader(512 * 1024, true);
    try {
      const client = await SmtpClient.connect({ ...slow, port: reader.port });
      await client.mail('user1@example.test');
      await client.rcpt('user2@example.test');
      expect(await client.data(message())).toMatchObject({ code: 250 });
      expect(reader.read()).toBeGreaterThan(20_000_000);
      client.destroy();
    } finally {
      reader.close();
    }

    // Read whole, never answered: the answer's own deadline still holds.
    const mute = await slowReader(4 * 1024 * 1024, false);
    try {
      const client = await SmtpClient.connect({ ...slow, port: mute.port });
      await client.mail('user1@example.test');
      await client.rcpt('user2@example.test');
      await expect(client.data(message())).rejects.toMatchObject({ kind: 'timeout', message: 'upstream did not answer within 3000 ms' });
    } finally {
      mute.close();
    }
  }, 30_000);

  it('an answer that comes while the message is still going out: a 250 is none (a protocol error), a refusal is passed on; the connection is not used again', async () => {
    const message = () => Readable.from((function* () {
      yield Buffer.from('Subject: big\r\n\r\n');
      const line = Buffer.from('x'.repeat(998) + '\r\n');
      for (let i = 0; i < 100; i++) yield Buffer.concat(Array.from({ length: 100 }, () => line));
    })());
    for (const early of ['250 2.0.0 Ok: queued\r\n', '552 5.3.4 Message too big\r\n']) {
      const reader = await slowReader(2 * 1024 * 1024, false, early);
      try {
        const client = await SmtpClient.connect({ ...endpoint(reader.port, 'none'), timeouts: { connect: 2000, command: 2000, data: 5000, keepalive: 60_000 } });
        await client.mail('user1@example.test');
        await client.rcpt('user2@example.test');
        const outcome = await client.data(message()).catch((err: unknown) => err);
        if (early.startsWith('250')) expect(outcome).toMatchObject({ kind: 'protocol', message: 'the upstream answered 250 2.0.0 Ok: queued before the end of the message' });
        else expect(outcome).toMatchObject({ code: 552, enhanced: '5.3.4' });
        expect(client.usable).toBe(false);
        expect(reader.read()).toBeLessThan(10_000_000);
      } finally {
        reader.close();
      }
    }
  }, 30_000);
});

describe('the end of the message', () => {
  it('is told once the last bytes are handed over, also for an empty message sent by BDAT', async () => {
    upstream = await FakeUpstream.start({ capabilities: ['PIPELINING', 'SIZE 52428800', '8BITMIME', 'ENHANCEDSTATUSCODES', 'CHUNKING'] });
    const client = await SmtpClient.connect(endpoint(upstream.port, 'none'));
    for (const [body, prefix] of [[[], undefined], [[], Buffer.from('X-Douane-Tags: t\r\n')], [[Buffer.from('Subject: x\r\n\r\n'), Buffer.from('body\r\n')], undefined]] as const) {
      await client.mail('user1@example.test');
      await client.rcpt('user2@example.test');
      let told = 0;
      const size = body.reduce((n, b) => n + b.length, 0);
      expect((await client.data(Readable.from(body), prefix, size, () => told++)).code).toBe(250);
      expect(told).toBe(1);
    }
    expect(upstream.commands.filter((c) => c.startsWith('BDAT'))).toEqual(['BDAT 0 LAST', 'BDAT 18 LAST', 'BDAT 20 LAST']);
    await client.quit();
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

  it('checks an upstream named by its address against that address, after STARTTLS as with implicit TLS', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-upstream-cert-'));
    const certificate = (name: string, san: string) => {
      execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2', '-subj', `/CN=${name}`, '-addext', `subjectAltName=${san}`, '-keyout', join(dir, `${name}.key`), '-out', join(dir, `${name}.pem`)], { stdio: 'pipe' });
      return { key: readFileSync(join(dir, `${name}.key`)), cert: readFileSync(join(dir, `${name}.pem`)) };
    };
    const attempt = async (material: { key: Buffer; cert: Buffer }, mode: 'starttls' | 'implicit') => {
      const server = mode === 'implicit' ? tls.createServer(material, greet) : net.createServer(greet);
      function greet(socket: net.Socket): void {
        socket.on('error', () => undefined);
        socket.write('220 tls.test ESMTP\r\n');
        const lines = readline.createInterface({ input: socket });
        lines.on('line', (line) => {
          if (/^EHLO/i.test(line)) socket.write(mode === 'starttls' && !(socket instanceof tls.TLSSocket) ? '250-tls.test\r\n250 STARTTLS\r\n' : '250 tls.test\r\n');
          else if (/^STARTTLS/i.test(line)) {
            lines.close();
            socket.write('220 go ahead\r\n', () => greetSecure(new tls.TLSSocket(socket, { isServer: true, ...material })));
          } else if (/^QUIT/i.test(line)) socket.end('221 bye\r\n');
        });
      }
      function greetSecure(socket: tls.TLSSocket): void {
        socket.on('error', () => undefined);
        readline.createInterface({ input: socket }).on('line', (line) => socket.write(/^QUIT/i.test(line) ? '221 bye\r\n' : '250 tls.test\r\n'));
      }
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      const port = (server.address() as net.AddressInfo).port;
      try {
        const client = await SmtpClient.connect({ ...endpoint(port, mode), verifyCertificate: true, ca: material.cert });
        client.destroy();
        return 'verified';
      } catch (err) {
        return (err as Error).message;
      } finally {
        server.close();
      }
    };
    const forTheAddress = certificate('mta', 'IP:127.0.0.1');
    const forLocalhostOnly = certificate('localhost', 'DNS:localhost');
    for (const mode of ['starttls', 'implicit'] as const) {
      expect(await attempt(forTheAddress, mode), mode).toBe('verified');
      // "localhost" is not 127.0.0.1's name as far as the certificate goes (nor 10.1.2.3's).
      expect(await attempt(forLocalhostOnly, mode), mode).toMatch(/IP: 127\.0\.0\.1 is not in the cert's list/);
    }
    rmSync(dir, { recursive: true, force: true });
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
