// Virus scanning with a real clamd: EICAR in its usual disguises, Debian's clamav-testfiles, clean mail,
// clamd killed, frozen, slow, over its stream limit, failover to a second clamd, limits-exceeded
// heuristics, and quarantine → release delivering the original bytes exactly once.

import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { EICAR, TEST_MARKER, startClamd, type ClamdInstance } from '../harness/clamd.js';
import { FakeUpstream } from '../harness/fake-upstream.js';
import { startGateway, type TestGateway } from '../harness/gateway.js';
import { mimeMessage, zip } from '../harness/mime.js';
import { DEAD_PORT, RawSmtp } from '../harness/net.js';

const exec = promisify(execFile);
let clamd: ClamdInstance;
let upstream: FakeUpstream | undefined;
const gateways: TestGateway[] = [];
const extra: ClamdInstance[] = [];

beforeAll(async () => {
  clamd = await startClamd();
}, 60_000);
afterAll(async () => {
  await clamd?.stop();
});
afterEach(async () => {
  await Promise.all(gateways.splice(0).map((g) => g.stop()));
  await Promise.all(extra.splice(0).map((c) => c.stop()));
  await upstream?.stop();
  upstream = undefined;
});

async function gateway(clamdConfig: Record<string, unknown> = { hosts: [{ host: '127.0.0.1', port: clamd.port }], timeout: '5s' }, policyDir = 'fixtures/policies/scan') {
  upstream ??= await FakeUpstream.start();
  const gw = await startGateway(upstream.port, { clamd: clamdConfig, policy: { dir: policyDir, watch: false } });
  gateways.push(gw);
  return gw;
}

/** A trusted session at DATA, its 354 read: the message is the caller's to write. */
async function atData(gw: TestGateway): Promise<RawSmtp> {
  const c = await RawSmtp.connect(gw.port('trusted'));
  await c.reply();
  await c.command('EHLO t');
  await c.command('MAIL FROM:<user1@example.test>');
  await c.command('RCPT TO:<user2@example.test>');
  await c.command('DATA');
  return c;
}

async function send(gw: TestGateway, message: string): Promise<string> {
  const c = await atData(gw);
  c.write(message + '\r\n.\r\n');
  const reply = await c.reply(20_000);
  c.close();
  return reply;
}

const INFECTED = /^554 5\.7\.1 Message refused: it contains malware \((Test\.EICAR\.(HDB|NDB)|Test\.ClamAVTestFile\.HDB|Test\.Marker\.NDB)(\.UNOFFICIAL)?\)\. Ref D-[0-9A-Z]{6}, rule malware\.found, art\. 4\.6\.$/;

describe('scan latency', () => {
  it('counts the wait scanning adds after the final dot, not the client\'s upload', async () => {
    const gw = await gateway();
    const c = await atData(gw);
    c.write('From: user1@example.test\r\nSubject: slow\r\n\r\nThe first half, ');
    // A slow upload: a second between two pieces of the message.
    await new Promise((r) => setTimeout(r, 1000));
    c.write('and the second.\r\n.\r\n');
    expect(await c.reply(20_000)).toMatch(/^250 /);
    c.close();
    const line = await gw.waitForLog((l) => l.event === 'transaction');
    const fromStart = (line.timings as { scan: number }).scan / 1000;
    const fromEnd = Number(/^douane_scan_duration_seconds_sum (\S+)$/m.exec(await gw.metrics.registry.getSingleMetricAsString('douane_scan_duration_seconds'))![1]);
    // The upload's second is in the scan's own timing (the log), not in the latency the histogram shows.
    expect(fromStart - fromEnd).toBeGreaterThanOrEqual(0.99);
  });
});

describe('clamd finds malware however it is wrapped', () => {
  const cases: [string, () => string][] = [
    ['EICAR as the message body', () => `From: user1@example.test\r\nSubject: plain\r\n\r\n${EICAR}\r\n`],
    ['EICAR as a base64 attachment', () => mimeMessage({ from: 'user1@example.test', attachments: [{ name: 'eicar.com', content: Buffer.from(EICAR) }] })],
    ['EICAR zipped', () => mimeMessage({ from: 'user1@example.test', attachments: [{ name: 'doc.zip', content: zip([{ name: 'eicar.com', content: Buffer.from(EICAR) }]), type: 'application/zip' }] })],
    [
      'EICAR zipped in a zip',
      () => mimeMessage({ from: 'user1@example.test', attachments: [{ name: 'outer.zip', content: zip([{ name: 'inner.zip', content: zip([{ name: 'eicar.com', content: Buffer.from(EICAR) }]) }]), type: 'application/zip' }] }),
    ],
    ['a test marker in the text', () => `From: user1@example.test\r\nSubject: marker\r\n\r\nhello ${TEST_MARKER} there\r\n`],
  ];
  for (const [name, build] of cases) {
    it(`${name}: 554 5.7.1 naming the signature, nothing relayed, kept in quarantine`, async () => {
      const gw = await gateway();
      expect(await send(gw, build())).toMatch(INFECTED);
      expect(upstream!.messages).toHaveLength(0);
      const line = await gw.waitForLog((l) => l.event === 'transaction');
      expect(line).toMatchObject({ verdict: 'quarantine', reason: 'message.malware', rule: 'malware.found' });
      expect((line.scan as { result: string }).result).toBe('infected');
      expect(line.quarantine).toBe(line.ref);
      expect(await gw.metrics.registry.metrics()).toMatch(/douane_scans_total\{result="infected"\} 1/);
    });
  }

  for (const sample of ['clam.exe', 'clam.zip', 'clam.7z', 'clam.tar.gz']) {
    it(`Debian clamav-testfiles ${sample} as an attachment is refused`, async () => {
      const gw = await gateway();
      const content = readFileSync(join('/usr/share/clamav-testfiles', sample));
      expect(await send(gw, mimeMessage({ from: 'user1@example.test', attachments: [{ name: sample, content }] }))).toMatch(INFECTED);
    });
  }

  it('a clean message with attachments goes through, scanned', async () => {
    const gw = await gateway();
    const message = readFileSync('fixtures/messages/clean-attachments.eml', 'latin1');
    expect(await send(gw, message.replace(/\r\n$/, ''))).toMatch(/^250 /);
    const line = await gw.waitForLog((l) => l.event === 'transaction');
    expect(line.scan).toMatchObject({ result: 'clean', scanner: `127.0.0.1:${clamd.port}` });
  });
});

describe('when clamd cannot scan, nothing passes unchecked', () => {
  it('clamd down: 451 4.3.0, nothing relayed', async () => {
    const dead = DEAD_PORT;
    const gw = await gateway({ hosts: [{ host: '127.0.0.1', port: dead }], timeout: '2s' });
    expect(await send(gw, `From: user1@example.test\r\nSubject: x\r\n\r\nclean text\r\n`)).toMatch(/^451 4\.3\.0 Your message could not be checked for viruses right now.*Ref D-/);
    expect(upstream!.messages).toHaveLength(0);
  });

  it('clamd down with scanning.fail_open: relayed, tagged and counted', async () => {
    const dead = DEAD_PORT;
    const { cpSync, mkdtempSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const dir = mkdtempSync(join(tmpdir(), 'douane-policy-'));
    cpSync('fixtures/policies/scan', dir, { recursive: true });
    writeFileSync(join(dir, 'policy.yaml'), readFileSync(join(dir, 'policy.yaml'), 'utf8').replace('fail_open: false', 'fail_open: true'));
    // Counted once relayed: not for a message the upstream then refuses.
    upstream = await FakeUpstream.start({ dataEnd: (m) => (m.raw.includes('refuse me') ? '554 5.7.1 Refused' : undefined) });
    const gw = await gateway({ hosts: [{ host: '127.0.0.1', port: dead }], timeout: '2s' }, dir);
    expect(await send(gw, `From: user1@example.test\r\nSubject: x\r\n\r\nrefuse me\r\n`)).toMatch(/^554 5\.7\.1 Refused/);
    expect(await gw.metrics.registry.metrics()).toMatch(/^douane_scan_fail_open_total 0$/m);
    expect(await send(gw, `From: user1@example.test\r\nSubject: x\r\n\r\nclean text\r\n`)).toMatch(/^250 /);
    expect(upstream.messages.at(-1)!.raw.toString()).toMatch(/^X-Douane-Tags: scan\.failed\r\n/);
    expect(await gw.metrics.registry.metrics()).toMatch(/^douane_scan_fail_open_total 1$/m);
  });

  it('clamd frozen (SIGSTOP): 451 4.3.0 within the scan deadline, then at once until clamd answers again', async () => {
    const frozen = await startClamd();
    extra.push(frozen);
    const gw = await gateway({ hosts: [{ host: '127.0.0.1', port: frozen.port }], timeout: '1s' });
    frozen.pause();
    try {
      const started = Date.now();
      const reply = await send(gw, mimeMessage({ from: 'user1@example.test', attachments: [{ name: 'big.bin', content: Buffer.alloc(3_000_000, 7) }] }));
      expect(reply).toMatch(/^451 4\.3\.0 /);
      expect(Date.now() - started).toBeLessThan(6000);
      expect(upstream!.messages).toHaveLength(0);
      // It does not answer PING either: set aside. The next message is tempfailed without waiting on it.
      expect(await gw.waitForLog((l) => l.event === 'clamd_set_aside')).toMatchObject({ scanner: `127.0.0.1:${frozen.port}` });
      expect(await send(gw, `From: user1@example.test\r\nSubject: x\r\n\r\nclean\r\n`)).toMatch(/^451 4\.3\.0 Your message could not be checked for viruses right now/);
      await expect.poll(() => gw.transactions().length).toBe(2);
      const tx = gw.transactions()[1]!;
      expect((tx.scan as { detail: string }).detail).toMatch(new RegExp(`^no clamd answers \\(127\\.0\\.0\\.1:${frozen.port}: clamd .* did not answer within the deadline, nor PING within 250 ms\\)$`));
      expect((tx.timings as { scan: number }).scan).toBeLessThan(500);
    } finally {
      frozen.resume();
    }
    await gw.waitForLog((l) => l.event === 'clamd_back', 5000);
    expect(await send(gw, `From: user1@example.test\r\nSubject: x\r\n\r\nclean\r\n`)).toMatch(/^250 /);
    expect(upstream!.messages).toHaveLength(1);
  });

  it('clamd slow (replies after the deadline): 451 4.3.0; the same clamd with a longer deadline passes', async () => {
    // A proxy that holds clamd's reply for 1.5 s.
    const proxy = net.createServer((client) => {
      const upstreamSocket = net.connect({ port: clamd.port, host: '127.0.0.1' });
      client.pipe(upstreamSocket);
      upstreamSocket.on('data', (d) => setTimeout(() => client.write(d), 1500));
      upstreamSocket.on('end', () => setTimeout(() => client.end(), 1600));
      client.on('error', () => upstreamSocket.destroy());
      upstreamSocket.on('error', () => client.destroy());
    });
    await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', () => r()));
    const port = (proxy.address() as net.AddressInfo).port;
    try {
      const slow = await gateway({ hosts: [{ host: '127.0.0.1', port }], timeout: '700ms' });
      expect(await send(slow, `From: user1@example.test\r\nSubject: x\r\n\r\nclean\r\n`)).toMatch(/^451 4\.3\.0 /);
      const patient = await gateway({ hosts: [{ host: '127.0.0.1', port }], timeout: '10s' });
      expect(await send(patient, `From: user1@example.test\r\nSubject: x\r\n\r\nclean\r\n`)).toMatch(/^250 /);
    } finally {
      proxy.close();
    }
  });

  /** A trusted session that has sent DATA and read its 354. */
  async function atData(gw: TestGateway): Promise<RawSmtp> {
    const c = await RawSmtp.connect(gw.port('trusted'));
    await c.reply();
    await c.command('EHLO t');
    await c.command('MAIL FROM:<user1@example.test>');
    await c.command('RCPT TO:<user2@example.test>');
    expect(await c.command('DATA')).toMatch(/^354/);
    return c;
  }

  it('a client slower than the scan deadline: its clean message is scanned and goes; the deadline is clamd\'s, not the client\'s', async () => {
    const gw = await gateway({ hosts: [{ host: '127.0.0.1', port: clamd.port }], timeout: '1s' });
    const c = await atData(gw);
    c.write('From: user1@example.test\r\nSubject: slow\r\n\r\n');
    // 2.4 s of message against a 1 s deadline.
    for (let i = 0; i < 6; i++) {
      c.write(`line ${i} of a clean message\r\n`);
      await new Promise((r) => setTimeout(r, 400));
    }
    c.write('.\r\n');
    expect(await c.reply(10_000)).toMatch(/^250 /);
    c.close();
    const tx = await gw.waitForLog((l) => l.event === 'transaction');
    expect(tx.scan).toMatchObject({ result: 'clean' });
    expect(upstream!.messages).toHaveLength(1);
  });

  /** DATA, the first part of a message, a pause of `pauseMs`, the rest: the final reply. */
  async function pausing(gw: TestGateway, pauseMs: number): Promise<string> {
    const c = await atData(gw);
    c.write('From: user1@example.test\r\nSubject: on a train\r\n\r\nThe first half,\r\n');
    await new Promise((r) => setTimeout(r, pauseMs));
    c.write('and the second, after a tunnel.\r\n.\r\n');
    const reply = await c.reply(20_000);
    c.close();
    return reply;
  }

  it('a client that pauses longer than the scan deadline in the middle of its message: scanned, and it goes', async () => {
    const gw = await gateway({ hosts: [{ host: '127.0.0.1', port: clamd.port }], timeout: '1s' });
    expect(await pausing(gw, 2500)).toMatch(/^250 /);
    expect((await gw.waitForLog((l) => l.event === 'transaction')).scan).toMatchObject({ result: 'clean' });
    expect(upstream!.messages).toHaveLength(1);
    expect(await gw.metrics.registry.getSingleMetricAsString('douane_scan_errors_total')).not.toMatch(/\} [1-9]/);
  });

  it('a client silent longer than clamd\'s own ReadTimeout: scanned again from the spool, and it goes', async () => {
    const impatient = await startClamd({ readTimeout: 1 });
    extra.push(impatient);
    const gw = await gateway({ hosts: [{ host: '127.0.0.1', port: impatient.port }], timeout: '10s' });
    expect(await pausing(gw, 3000)).toMatch(/^250 /);
    expect((await gw.waitForLog((l) => l.event === 'transaction')).scan).toMatchObject({ result: 'clean' });
    expect(gw.logs.some((l) => l.event === 'clamd_rescan')).toBe(true);
    expect(upstream!.messages).toHaveLength(1);
  });

  it('an empty message (DATA, then the dot) has nothing to scan: relayed, not tempfailed at every retry', async () => {
    const gw = await gateway({ hosts: [{ host: '127.0.0.1', port: clamd.port }], timeout: '5s' });
    const c = await atData(gw);
    c.write('.\r\n');
    expect(await c.reply(10_000)).toMatch(/^250 /);
    c.close();
    expect((await gw.waitForLog((l) => l.event === 'transaction')).scan).toMatchObject({ result: 'clean', detail: 'empty message: nothing to scan' });
  });

  it('over clamd\'s stream limit: 451 4.3.0 (clamd refuses the stream)', async () => {
    const small = await startClamd({ streamMaxLength: '1M' });
    extra.push(small);
    const gw = await gateway({ hosts: [{ host: '127.0.0.1', port: small.port }], timeout: '5s' });
    const reply = await send(gw, mimeMessage({ from: 'user1@example.test', attachments: [{ name: 'big.bin', content: Buffer.alloc(2_000_000, 1) }] }));
    expect(reply).toMatch(/^451 4\.3\.0 /);
    const line = await gw.waitForLog((l) => l.event === 'transaction');
    expect((line.scan as { detail: string }).detail).toMatch(/size limit/i);
  });

  it('over scanning.max_size: refused as the policy says (552 5.3.4), without scanning', async () => {
    const gw = await gateway();
    const reply = await send(gw, mimeMessage({ from: 'user1@example.test', attachments: [{ name: 'big.bin', content: Buffer.alloc(4_000_000, 2) }] }));
    expect(reply).toMatch(/^552 5\.3\.4 Message refused: it is too big to be checked for viruses \(limit 5242880 bytes\)/);
    // The sizes that let it be sent whole were said at start.
    expect(await gw.waitForLog((l) => l.event === 'config_policy_mismatch')).toMatchObject({ level: 'warn', warning: expect.stringMatching(/^smtp\.max_message_size \(\d+ bytes\) is above the policy's scanning\.max_size \(5242880 bytes\)/) });
  });

  it('over scanning.max_size with over_max_size: skip: relayed unscanned, tagged and counted', async () => {
    const { cpSync, mkdtempSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const dir = mkdtempSync(join(tmpdir(), 'douane-policy-'));
    cpSync('fixtures/policies/scan', dir, { recursive: true });
    writeFileSync(join(dir, 'policy.yaml'), readFileSync(join(dir, 'policy.yaml'), 'utf8').replace('over_max_size: reject', 'over_max_size: skip'));
    upstream = await FakeUpstream.start({ dataEnd: (m) => (m.raw.includes('refuse me') ? '554 5.7.1 Refused' : undefined) });
    const gw = await gateway(undefined, dir);
    const big = (text: string) => mimeMessage({ from: 'user1@example.test', text, attachments: [{ name: 'big.bin', content: Buffer.alloc(4_000_000, 2) }] });
    expect(await send(gw, big('refuse me'))).toMatch(/^554 5\.7\.1 Refused/);
    expect(await gw.metrics.registry.metrics()).toMatch(/^douane_scan_skipped_total 0$/m);
    expect(await send(gw, big('hello'))).toMatch(/^250 /);
    expect(upstream.messages.at(-1)!.raw.toString()).toMatch(/^X-Douane-Tags: scan\.skipped\r\n/);
    const metrics = await gw.metrics.registry.metrics();
    expect(metrics).toMatch(/^douane_scan_skipped_total 1$/m);
    expect(metrics).not.toMatch(/^douane_scans_total\{result="clean"\} [1-9]/m);
  });

  it('over scanning.max_size with over_max_size: tempfail: 451 4.3.0 with a reference, nothing relayed, a smaller one relayed', async () => {
    const { cpSync, mkdtempSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const dir = mkdtempSync(join(tmpdir(), 'douane-policy-'));
    cpSync('fixtures/policies/scan', dir, { recursive: true });
    writeFileSync(join(dir, 'policy.yaml'), readFileSync(join(dir, 'policy.yaml'), 'utf8').replace('over_max_size: reject', 'over_max_size: tempfail'));
    const gw = await gateway(undefined, dir);
    const reply = await send(gw, mimeMessage({ from: 'user1@example.test', attachments: [{ name: 'big.bin', content: Buffer.alloc(4_000_000, 2) }] }));
    expect(reply).toMatch(/^451 4\.3\.0 .*Ref D-[0-9A-Z]{6}/);
    expect(upstream!.messages).toHaveLength(0);
    expect(await gw.waitForLog((l) => l.event === 'transaction')).toMatchObject({ verdict: 'tempfail', reason: 'message.unscannable' });
    expect(await send(gw, mimeMessage({ from: 'user1@example.test', attachments: [{ name: 'small.bin', content: Buffer.alloc(1000, 2) }] }))).toMatch(/^250 /);
    expect(upstream!.messages).toHaveLength(1);
  });

  it('fails over to the next clamd when the first is down, and still finds the malware; the down host is then set aside', async () => {
    const dead = DEAD_PORT;
    const gw = await gateway({ hosts: [{ host: '127.0.0.1', port: dead }, { socket: clamd.socket }], timeout: '5s' });
    expect(await send(gw, mimeMessage({ from: 'user1@example.test', attachments: [{ name: 'e.com', content: Buffer.from(EICAR) }] }))).toMatch(INFECTED);
    expect(await send(gw, `From: user1@example.test\r\nSubject: x\r\n\r\nclean\r\n`)).toMatch(/^250 /);
    // The first message failed over; the second went straight to the host that answers.
    expect(await gw.metrics.registry.metrics()).toMatch(/douane_scan_failovers_total 1\n/);
    expect(gw.transactions().map((t) => (t.scan as { scanner: string }).scanner)).toEqual([clamd.socket, clamd.socket]);
    expect(await gw.waitForLog((l) => l.event === 'clamd_set_aside')).toMatchObject({ scanner: `127.0.0.1:${dead}` });
    expect(await gw.metrics.registry.metrics()).toMatch(new RegExp(`douane_clamd_up\\{scanner="127.0.0.1:${dead}"\\} 0`));
  });

  it('a frozen first clamd costs the message in flight its deadline; the next ones go to the second host at once', async () => {
    const frozen = await startClamd();
    extra.push(frozen);
    const gw = await gateway({ hosts: [{ host: '127.0.0.1', port: frozen.port }, { socket: clamd.socket }], timeout: '1s' });
    expect(await send(gw, `From: user1@example.test\r\nSubject: x\r\n\r\nclean\r\n`)).toMatch(/^250 /);
    frozen.pause();
    try {
      // No time is left for a failover once the deadline is spent waiting on the frozen host.
      expect(await send(gw, `From: user1@example.test\r\nSubject: x\r\n\r\nclean\r\n`)).toMatch(/^451 4\.3\.0 /);
      await gw.waitForLog((l) => l.event === 'clamd_set_aside');
      expect(await send(gw, mimeMessage({ from: 'user1@example.test', attachments: [{ name: 'e.com', content: Buffer.from(EICAR) }] }))).toMatch(INFECTED);
      expect(await send(gw, `From: user1@example.test\r\nSubject: x\r\n\r\nclean\r\n`)).toMatch(/^250 /);
      await expect.poll(() => gw.transactions().length).toBe(4);
      const scans = gw.transactions().map((t) => ({ ...(t.scan as { scanner: string }), ms: (t.timings as { scan: number }).scan }));
      expect(scans.map((s) => s.scanner)).toEqual([`127.0.0.1:${frozen.port}`, `127.0.0.1:${frozen.port}`, clamd.socket, clamd.socket]);
      expect(scans[1]!.ms).toBeGreaterThanOrEqual(900);
      for (const later of scans.slice(2)) expect(later.ms).toBeLessThan(500);
    } finally {
      frozen.resume();
    }
    // It answers PING again: back in the rotation, first again.
    await gw.waitForLog((l) => l.event === 'clamd_back', 5000);
    expect(await send(gw, `From: user1@example.test\r\nSubject: x\r\n\r\nclean\r\n`)).toMatch(/^250 /);
    await expect.poll(() => gw.transactions().length).toBe(5);
    expect((gw.transactions()[4]!.scan as { scanner: string }).scanner).toBe(`127.0.0.1:${frozen.port}`);
  });

  it('limits-exceeded heuristics (archive nesting) count as malware, not as a scan failure', async () => {
    const shallow = await startClamd({ maxRecursion: 3, alertExceedsMax: true });
    extra.push(shallow);
    const gw = await gateway({ hosts: [{ host: '127.0.0.1', port: shallow.port }], timeout: '5s' });
    let nested = zip([{ name: 'readme.txt', content: Buffer.from('nothing to see\n') }]);
    for (let i = 0; i < 6; i++) nested = zip([{ name: `level${i}.zip`, content: nested }]);
    const reply = await send(gw, mimeMessage({ from: 'user1@example.test', attachments: [{ name: 'nested.zip', content: nested, type: 'application/zip' }] }));
    expect(reply).toMatch(/^554 5\.7\.1 Message refused: it contains malware \(Heuristics\.Limits\.Exceeded/);
  });
});

describe('quarantine', () => {
  it('a released message keeps its envelope parameters: SMTPUTF8, BODY, and the delivery receipt asked for', async () => {
    upstream = await FakeUpstream.start({ capabilities: ['PIPELINING', 'SIZE 52428800', '8BITMIME', 'ENHANCEDSTATUSCODES', 'DSN', 'SMTPUTF8'] });
    const gw = await gateway();
    const c = await RawSmtp.connect(gw.port('trusted'));
    await c.reply();
    await c.command('EHLO webmail.test');
    const message = mimeMessage({ from: 'user1@example.test', attachments: [{ name: 'e.com', content: Buffer.from(EICAR) }] });
    expect(await c.command(`MAIL FROM:<user1@example.test> SIZE=${message.length} BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ+2B7`)).toMatch(/^250 /);
    expect(await c.command('RCPT TO:<user2@example.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;user2+2Bold@example.test')).toMatch(/^250 /);
    expect(await c.command('RCPT TO:<user3@example.test>')).toMatch(/^250 /);
    await c.command('DATA');
    c.write(message + '\r\n.\r\n');
    expect(await c.reply(20_000)).toMatch(INFECTED);
    c.close();
    const id = String((await gw.waitForLog((l) => l.event === 'transaction')).quarantine);
    const relayed = upstream.commands.length;

    const configFile = join(gw.stateDir, 'douane.yaml');
    writeFileSync(configFile, gw.configText);
    await exec('node', ['dist/cli.js', 'quarantine', 'release', id, '--allow-malware', '--config', configFile]);
    expect(upstream.messages).toHaveLength(1);
    expect(upstream.commands.slice(relayed).filter((l) => /^(MAIL|RCPT)/.test(l))).toEqual([
      `MAIL FROM:<user1@example.test> SIZE=${message.length} BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ+2B7`,
      'RCPT TO:<user2@example.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;user2+2Bold@example.test',
      'RCPT TO:<user3@example.test>',
    ]);
  });

  it('keeps the refused message (0600) and releases the original bytes to the upstream exactly once, audited', async () => {
    const gw = await gateway();
    // The subject decodes to terminal control sequences (CSI as ESC [ and as the C1 character U+009B).
    const subject = `=?UTF-8?B?${Buffer.from('false positive? \u001b[2J\u009b31m').toString('base64')}?=`;
    const message = mimeMessage({ from: 'user1@example.test', subject, attachments: [{ name: 'e.com', content: Buffer.from(EICAR) }] });
    await send(gw, message);
    const line = await gw.waitForLog((l) => l.event === 'transaction');
    const id = String(line.quarantine);
    const { statSync } = await import('node:fs');
    expect(statSync(join(gw.stateDir, 'quarantine', `${id}.eml`)).mode & 0o777).toBe(0o600);
    expect(statSync(join(gw.stateDir, 'quarantine')).mode & 0o777).toBe(0o700);

    const configFile = join(gw.stateDir, 'douane.yaml');
    writeFileSync(configFile, gw.configText);
    const cli = (...args: string[]) =>
      exec('node', ['dist/cli.js', 'quarantine', ...args, '--config', configFile]).then(
        (r) => ({ code: 0, out: r.stdout, err: r.stderr }),
        (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, out: e.stdout, err: e.stderr }),
      );
    const list = await cli('list');
    expect(list.out).toMatch(new RegExp(`^${id} .* user1@example\\.test .*malware\\.found \\(Test\\.EICAR.*  false positive\\? \ufffd\\[2J\ufffd31m$`, 'm'));
    const show = await cli('show', id);
    expect(show.out).toMatch(/"policyVersion": "[0-9a-f]{12}"/);
    expect(show.out).toContain('"subject": "false positive? \ufffd[2J\ufffd31m"');
    // Decoded for the reviewer (mailparser), then the header block as it arrived.
    expect(show.out).toContain('\nSubject: false positive? \ufffd[2J\ufffd31m\n');
    expect(show.out).toMatch(new RegExp(`Attachments \\(1\\):\n  e\\.com  [a-z]+/[a-z.+-]+  ${EICAR.length} bytes\n`));
    expect(show.out).toContain(`\nHeaders as kept:\n`);
    expect(show.out).toContain(`\nSubject: ${subject}\n`);
    // Nothing a terminal would act on, in either command's output.
    expect(list.out + show.out).not.toMatch(/[\u001b\u009b]/);

    const bogus = await cli('show', 'bogus');
    expect(bogus.code).toBe(64);
    expect(bogus.err).toBe('douane: "bogus" is not a quarantine ID: they look like D-7K2M9Q (see douane quarantine list)\n');

    // The upstream is down: a plain error, nothing marked released, and a later release still works.
    const downConfig = join(gw.stateDir, 'down.yaml');
    const closed = DEAD_PORT;
    writeFileSync(downConfig, gw.configText.replace(/trusted_port: \d+/, `trusted_port: ${closed}`));
    const down = await exec('node', ['dist/cli.js', 'quarantine', 'release', id, '--allow-malware', '--config', downConfig]).then(
      () => ({ code: 0, stderr: '' }),
      (e: { code: number; stderr: string }) => e,
    );
    expect(down.code).toBe(1);
    expect(down.stderr).toMatch(new RegExp(`^douane: could not reach the upstream at 127\\.0\\.0\\.1:${closed} \\(.*\\); nothing was released, try again later\n$`));
    expect(upstream!.messages).toHaveLength(0);

    // Malware is not released by mistake: the scanner's verdict must be overruled in so many words.
    const refused = await cli('release', id, '--force');
    expect(refused.code).toBe(1);
    expect(refused.err).toMatch(new RegExp(`^douane: ${id} holds malware \\(Test\\.EICAR[^)]*\\): releasing it would deliver it to its recipients\\. If the scanner was wrong, release it with --allow-malware\n$`));
    expect(upstream!.messages).toHaveLength(0);
    const released = await cli('release', id, '--allow-malware');
    expect(released.code).toBe(0);
    expect(released.out).toMatch(new RegExp(`${id} released to user2@example\\.test: 250 2\\.0\\.0 Ok: queued as FAKE1`));
    expect(upstream!.messages).toHaveLength(1);
    expect(upstream!.messages[0]!.raw.toString('latin1')).toBe(message + '\r\n');
    expect(upstream!.messages[0]!.from).toBe('user1@example.test');

    const again = await cli('release', id, '--allow-malware');
    expect(again.code).toBe(1);
    expect(again.err).toMatch(/already released/);
    expect(upstream!.messages).toHaveLength(1);

    const audit = readFileSync(join(gw.stateDir, 'audit.log'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(audit.filter((a) => a.action === 'release')).toHaveLength(1);
    expect(audit[audit.length - 1]).toMatchObject({ action: 'release', quarantine_id: id, account: 'user1@example.test' });

    const gauge = async () => /^douane_quarantine_messages (\d+)$/m.exec(await gw.metrics.registry.metrics())?.[1];
    for (let i = 0; i < 6; i++) gw.gateway.refreshHealth();
    await expect.poll(gauge).toBe('1');
    expect((await cli('delete', id)).code).toBe(0);
    expect((await cli('show', id)).code).toBe(1);
    // Deleted by another process: the gauge follows within a minute (six health ticks), not at the hourly purge.
    for (let i = 0; i < 6; i++) gw.gateway.refreshHealth();
    await expect.poll(gauge).toBe('0');
  });
});

describe('inspection on live traffic, under the shipped policy', () => {
  const cases: [string, RegExp][] = [
    ['exe-renamed-pdf.eml', /^550 5\.7\.1 Message refused: it carries a type of attachment that may not be sent by email.*rule attachments\.executable, art\. 4\.6\.$/],
    // The same executable forwarded inside an attached message.
    ['forwarded-exe.eml', /^550 5\.7\.1 Message refused: it carries a type of attachment that may not be sent by email.*rule attachments\.executable, art\. 4\.6\.$/],
    ['spoofed-from.eml', /^550 5\.7\.1 Message refused: the From address \(someone-else@bank\.example\) does not belong to your account\..*rule from\.not-owned, art\. 4\.1\.$/],
    // clamd sees the nesting first (its own recursion limit, reported as a heuristic): the malware rule decides.
    ['deeply-nested.eml', /^554 5\.7\.1 Message refused: it contains malware \(Heuristics\.Limits\.Exceeded\.MaxRecursion\)\..*rule malware\.found/],
    ['many-parts.eml', /^554 5\.6\.0 .*\(parts\).*rule mime\.too-complex/],
    ['malformed-mime.eml', /^250 /],
    ['clean-attachments.eml', /^250 /],
  ];
  for (const [file, expected] of cases) {
    it(`${file}: ${expected.source.startsWith('^250') ? 'relayed' : 'refused'}`, async () => {
      const gw = await gateway(undefined, 'policies');
      const message = readFileSync(join('fixtures/messages', file), 'latin1').replace(/\r\n$/, '');
      expect(await send(gw, message)).toMatch(expected);
    });
  }
});
