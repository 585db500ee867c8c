// Per-account limits against a real redis-server: each limit at its boundary, window roll-over, what
// gives quota back, two instances sharing one Redis, Redis killed and frozen, a 3-node Redis Cluster,
// brute-force blocking and the usual-volume baseline.

import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { FakeUpstream } from '../harness/fake-upstream.js';
import { FakeZimbra } from '../harness/fake-zimbra.js';
import { startGateway, type TestGateway } from '../harness/gateway.js';
import { DEAD_PORT, RawSmtp } from '../harness/net.js';
import { startRedis, startRedisCluster, type RedisCluster, type RedisInstance } from '../harness/redis.js';

const POLICY = 'fixtures/policies/small-limits';
let redis: RedisInstance;
let upstream: FakeUpstream;
const gateways: TestGateway[] = [];

beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await redis?.stop();
});
beforeEach(async () => {
  redis.cli('flushall');
  upstream = await FakeUpstream.start({
    users: { 'user1@example.test': 'secret1', 'roomy@example.test': 'secret', 'victim@example.test': 'right' },
    rcpt: (to) => (to.startsWith('unknown') ? '550 5.1.1 <unknown>: Recipient address rejected' : undefined),
    // SMTPUTF8 for the accented accounts: Douane offers it, and takes it, only while the upstream does.
    capabilities: ['PIPELINING', 'SIZE 52428800', '8BITMIME', 'ENHANCEDSTATUSCODES', 'AUTH PLAIN LOGIN', 'SMTPUTF8'],
  });
});
afterEach(async () => {
  await Promise.all(gateways.splice(0).map((g) => g.stop()));
  await upstream.stop();
});

async function gateway(limits: Record<string, unknown> = { redis: { url: redis.url } }): Promise<TestGateway> {
  const gw = await startGateway(upstream.port, { policy: { dir: POLICY, watch: false }, limits, smtp: { max_connections_per_ip: 500 } });
  gateways.push(gw);
  return gw;
}

/** One trusted-listener transaction; returns each reply. */
async function send(port: number, from: string, rcpts: string[] = ['user2@example.test'], body = 'hello', size?: number) {
  const c = await RawSmtp.connect(port);
  await c.reply();
  await c.command('EHLO t');
  const mail = await c.command(`MAIL FROM:<${from}>${size ? ` SIZE=${size}` : ''}`);
  const rcpt: string[] = [];
  let data = '';
  if (mail.startsWith('250')) {
    for (const r of rcpts) rcpt.push(await c.command(`RCPT TO:<${r}>`));
    if (rcpt.some((r) => r.startsWith('250'))) {
      await c.command('DATA');
      c.write(`From: ${from}\r\nSubject: t\r\n\r\n${body}\r\n.\r\n`);
      data = await c.reply();
    }
  }
  c.close();
  return { mail, rcpt, data };
}

/**
 * Messages of the account whose acceptance Redis has recorded (its hourly history). That write goes out
 * after the client has its 250: a test that freezes Redis waits for it first, or the freeze may catch it
 * and the hang be found by it rather than by the next message.
 */
function acceptedInRedis(cli: (...args: string[]) => string, account: string): number {
  return cli('hvals', `douane:hourly:{${account}}`).split('\n').reduce((sum, v) => sum + Number(v || 0), 0);
}

/**
 * Runs `during` with Redis frozen, until the message counts it makes were sent to the frozen Redis (and so
 * run once it thaws): the gateway's health probe, every 10 s, can find the hang first, and then they are
 * refused, or dropped with the connection, before they are written. Returns once Redis is back.
 */
async function frozenForTheCounts(gw: TestGateway, during: () => Promise<void>): Promise<void> {
  const readies = () => gw.logs.filter((l) => l.event === 'redis_ready').length;
  for (let attempt = 1; ; attempt++) {
    const [ready, seen] = [readies(), gw.logs.length];
    redis.pause();
    try {
      await during();
    } finally {
      redis.resume();
    }
    await expect.poll(readies, { timeout: 10_000 }).toBeGreaterThan(ready);
    const failed = gw.logs.slice(seen).filter((l) => (l.event === 'limiter_insurance' && l.op === 'messages_per_minute') || (l.event === 'limits_failed' && l.what === 'message'));
    // Timed out, they were written to the frozen Redis; refused or closed, they may not have been.
    if (failed.length && failed.every((l) => /Command timed out/.test(String(l.err)))) return;
    if (attempt === 3) throw new Error('the hang was found before the counts were sent, three times');
  }
}

/** A session of user1 (two sessions at once), authenticated on the submissions port. */
async function authenticated(gw: TestGateway): Promise<RawSmtp> {
  const c = await RawSmtp.connect(gw.port('submissions'), { tls: true });
  await c.reply();
  await c.command('EHLO t');
  expect(await c.command(`AUTH PLAIN ${Buffer.from('\0user1@example.test\0secret1').toString('base64')}`)).toMatch(/^235/);
  return c;
}

/** `count` connections opened first, then one AUTH PLAIN on each at once (all in flight together): the replies. */
async function loginsAtOnce(gw: TestGateway, count: number, login: string, pass: string): Promise<string[]> {
  const clients = await Promise.all(Array.from({ length: count }, () => RawSmtp.connect(gw.port('submissions'), { tls: true })));
  await Promise.all(clients.map((c) => c.reply()));
  await Promise.all(clients.map((c) => c.command('EHLO t')));
  const replies = await Promise.all(clients.map((c) => c.command(`AUTH PLAIN ${Buffer.from(`\0${login}\0${pass}`).toString('base64')}`)));
  for (const c of clients) c.close();
  return replies;
}

/** One AUTH PLAIN on a connection of its own: the reply. */
async function loginOnce(gw: TestGateway, login: string, pass: string): Promise<string> {
  const c = await RawSmtp.connect(gw.port('submissions'), { tls: true });
  await c.reply();
  await c.command('EHLO t');
  const r = await c.command(`AUTH PLAIN ${Buffer.from(`\0${login}\0${pass}`).toString('base64')}`);
  c.close();
  return r;
}

describe('each limit at its boundary', () => {
  it('messages per minute: n accepted, n+1 refused at MAIL with 450 4.7.1 and when to retry; a new window starts fresh', async () => {
    const gw = await gateway();
    const port = gw.port('trusted');
    for (let i = 0; i < 3; i++) expect((await send(port, 'perminute@example.test')).data).toMatch(/^250 /);
    const over = await send(port, 'perminute@example.test');
    expect(over.mail).toMatch(/^450 4\.7\.1 Sending limit reached \(messages per minute\); try again in \d+ seconds\. Ref D-[0-9A-Z]{6}, rule limits\.message-rate, art\. 4\.6\.$/);
    expect(upstream.messages).toHaveLength(3);
    expect(Number(redis.cli('get', 'douane:messages_per_minute:{perminute@example.test}'))).toBe(3);
    const strike = await gw.waitForLog((l) => l.event === 'strike');
    expect(strike).toMatchObject({ strike: 'limit_reached', account: 'perminute@example.test', rule: 'limits.message-rate' });
    // The window ends (Redis expires the key): the account may send again.
    redis.cli('pexpire', 'douane:messages_per_minute:{perminute@example.test}', '1');
    await new Promise((r) => setTimeout(r, 20));
    expect((await send(port, 'perminute@example.test')).data).toMatch(/^250 /);
  });

  it('messages per hour, across transactions of one session', async () => {
    const gw = await gateway();
    const results = [];
    for (let i = 0; i < 52; i++) results.push((await send(gw.port('trusted'), 'hourly@example.test')).mail.slice(0, 3));
    expect(results.filter((r) => r === '250')).toHaveLength(50);
    expect(results.slice(50)).toEqual(['450', '450']);
  });

  it('recipients per message: 452 4.5.3 for the fourth, and the message goes to the first three', async () => {
    const gw = await gateway();
    const r = await send(gw.port('trusted'), 'user1@example.test', ['a@x.test', 'b@x.test', 'c@x.test', 'd@x.test']);
    expect(r.rcpt.slice(0, 3).every((x) => x.startsWith('250'))).toBe(true);
    expect(r.rcpt[3]).toMatch(/^452 4\.5\.3 Too many recipients for one message/);
    expect(r.data).toMatch(/^250 /);
    expect(upstream.messages[0]!.to).toEqual(['a@x.test', 'b@x.test', 'c@x.test']);
  });

  it('recipients per hour: refused at RCPT, 450 4.7.1; a recipient the upstream refuses gives its count back', async () => {
    const gw = await gateway();
    const port = gw.port('trusted');
    const first = await send(port, 'rcpt@example.test', ['a@x.test', 'unknown@x.test', 'b@x.test']);
    expect(first.rcpt.map((x) => x.slice(0, 3))).toEqual(['250', '550', '250']);
    // 2 counted (the refused one was given back): 3 more fit, the 6th does not.
    const second = await send(port, 'rcpt@example.test', ['c@x.test', 'd@x.test', 'e@x.test', 'f@x.test']);
    expect(second.rcpt.map((x) => x.slice(0, 3))).toEqual(['250', '250', '250', '450']);
    expect(second.rcpt[3]).toMatch(/Sending limit reached \(recipients per hour\); try again in/);
  });

  it('distinct recipient domains per hour', async () => {
    const gw = await gateway();
    const r = await send(gw.port('trusted'), 'domains@example.test', ['a@one.test', 'b@two.test', 'c@one.test', 'd@three.test']);
    expect(r.rcpt.map((x) => x.slice(0, 3))).toEqual(['250', '250', '250', '450']);
    expect(r.rcpt[3]).toMatch(/recipient domains per hour/);
  });

  it.each([
    ['Redis', () => ({ redis: { url: redis.url } })],
    ['memory', () => ({})],
  ])('a domain given back by one transaction still counts for another that used it (limit 2, %s)', async (_name, limits) => {
    const gw = await gateway(limits());
    const port = gw.port('trusted');
    // A takes one.test and then goes away with RSET; B sent to one.test meanwhile and was accepted.
    const a = await RawSmtp.connect(port);
    await a.reply();
    await a.command('EHLO a');
    expect(await a.command('MAIL FROM:<domains@example.test>')).toMatch(/^250/);
    expect(await a.command('RCPT TO:<x@one.test>')).toMatch(/^250/);
    expect((await send(port, 'domains@example.test', ['y@one.test'])).data).toMatch(/^250/);
    expect(await a.command('RSET')).toMatch(/^250/);
    a.close();
    // one.test still counts: one more domain fits, the next does not.
    const r = await send(port, 'domains@example.test', ['z@two.test', 'w@three.test']);
    expect(r.rcpt.map((x) => x.slice(0, 3))).toEqual(['250', '450']);
  });

  it('bytes per day: counted after acceptance; MAIL refuses once used up, or when SIZE= will not fit', async () => {
    const gw = await gateway();
    const port = gw.port('trusted');
    expect((await send(port, 'bytes@example.test', undefined, 'x'.repeat(1500))).data).toMatch(/^250 /);
    expect(Number(redis.cli('get', 'douane:bytes_per_day:{bytes@example.test}'))).toBeGreaterThan(1500);
    // 1000 bytes fit in a day of 2K, not in what is left of this one: later.
    expect((await send(port, 'bytes@example.test', undefined, 'x'.repeat(500), 1000)).mail).toMatch(/^450 4\.7\.1 Sending limit reached \(bytes per day\)/);
    expect((await send(port, 'bytes@example.test', undefined, 'x'.repeat(600))).data).toMatch(/^250 /); // overshoots by its own size
    expect((await send(port, 'bytes@example.test')).mail).toMatch(/^450 4\.7\.1 .*bytes per day/);
    // Two refusals, as the clients saw: the message that overshot was settled, not refused.
    expect(await gw.metrics.registry.metrics()).toMatch(/^douane_limiter_decisions_total\{limit="bytes_per_day",result="exceeded"\} 2$/m);
  });

  it('bytes per day: a message larger than the whole day is refused for good (552 5.2.3), by its SIZE= at MAIL or after its data, and counts nothing', async () => {
    const gw = await gateway();
    const port = gw.port('trusted');
    // 450 here would have the client retry for days a message that can never pass.
    expect((await send(port, 'bytes@example.test', undefined, 'x'.repeat(500), 3000)).mail).toMatch(
      /^552 5\.2\.3 Message refused: it is larger \(3000 bytes\) than this account may send in a whole day \(2048 bytes\)\. Ref D-/,
    );
    const undeclared = await send(port, 'bytes@example.test', undefined, 'x'.repeat(2100));
    expect(undeclared.mail).toMatch(/^250 /);
    expect(undeclared.data).toMatch(/^552 5\.2\.3 Message refused: it is larger \(\d+ bytes\) than this account may send in a whole day \(2048 bytes\)/);
    expect(upstream.messages).toHaveLength(0);
    await expect.poll(() => redis.cli('get', 'douane:bytes_per_day:{bytes@example.test}')).toBe('0');
    expect((await send(port, 'bytes@example.test', undefined, 'x'.repeat(1500))).data).toMatch(/^250 /);
  });

  it('bytes per day: SIZE= is reserved at MAIL, so concurrent messages cannot all fit in one remainder; settled to the real size', async () => {
    const gw = await gateway();
    const open = async () => {
      const c = await RawSmtp.connect(gw.port('trusted'));
      await c.reply();
      await c.command('EHLO t');
      return c;
    };
    const clients = await Promise.all(Array.from({ length: 5 }, open));
    const replies = await Promise.all(clients.map((c) => c.command('MAIL FROM:<bytes@example.test> SIZE=1500')));
    // 2K a day: one message of 1500 fits, a second does not, whichever sessions come first.
    expect(replies.filter((r) => r.startsWith('250'))).toHaveLength(1);
    expect(replies.filter((r) => /^450 4\.7\.1 .*bytes per day/.test(r))).toHaveLength(4);
    const sender = clients[replies.findIndex((r) => r.startsWith('250'))]!;
    expect(await sender.command('RCPT TO:<user2@example.test>')).toMatch(/^250/);
    expect(await sender.command('DATA')).toMatch(/^354/);
    sender.write('From: bytes@example.test\r\nSubject: t\r\n\r\nshorter than it said\r\n.\r\n');
    expect(await sender.reply()).toMatch(/^250 /);
    for (const c of clients) c.close();
    // The day holds what was sent, not what was declared.
    await expect.poll(() => Number(redis.cli('get', 'douane:bytes_per_day:{bytes@example.test}'))).toBeLessThan(200);
    expect(Number(redis.cli('get', 'douane:bytes_per_day:{bytes@example.test}'))).toBeGreaterThan(40);
  });

  it('concurrent sessions per account (authenticated)', async () => {
    const gw = await gateway();
    const open = () => authenticated(gw);
    const [a, b, c] = [await open(), await open(), await open()];
    // The two oldest sessions may send; the third, opened past the limit, may not.
    expect(await a.command('MAIL FROM:<user1@example.test>')).toMatch(/^250/);
    expect(await b.command('MAIL FROM:<user1@example.test>')).toMatch(/^250/);
    expect(await c.command('MAIL FROM:<user1@example.test>')).toMatch(/^450 4\.7\.1 Sending limit reached \(concurrent sessions\)/);
    b.close();
    // Once the server has seen b leave, c takes its place (a refused MAIL FROM counts nothing).
    await expect.poll(() => c.command('MAIL FROM:<user1@example.test>')).toMatch(/^250/);
    a.close();
    c.close();
  });

  it('a message that is not accepted does not count (RSET, upstream refusal)', async () => {
    // This upstream refuses, after the final dot, the messages whose body says so.
    await upstream.stop();
    upstream = await FakeUpstream.start({ dataEnd: (m) => (m.raw.includes('refuse-me 5xx') ? '554 5.7.1 Rejected by policy' : m.raw.includes('refuse-me 4xx') ? '451 4.3.0 Try later' : undefined) });
    const gw = await gateway();
    const key = 'douane:messages_per_minute:{perminute@example.test}';
    const c = await RawSmtp.connect(gw.port('trusted'));
    await c.reply();
    await c.command('EHLO t');
    for (let i = 0; i < 2; i++) {
      expect(await c.command('MAIL FROM:<perminute@example.test>')).toMatch(/^250/);
      expect(await c.command('RSET')).toMatch(/^250/);
    }
    c.close();
    expect((await send(gw.port('trusted'), 'perminute@example.test', ['user2@example.test'], 'refuse-me 5xx')).data).toMatch(/^554 5\.7\.1 Rejected by policy/);
    expect((await send(gw.port('trusted'), 'perminute@example.test', ['user2@example.test'], 'refuse-me 4xx')).data).toMatch(/^451 4\.3\.0 Try later/);
    // Four counted and given back: the counter exists and is back at zero, and so are the bytes reserved.
    await expect.poll(() => redis.cli('get', key)).toBe('0');
    await expect.poll(() => redis.cli('get', 'douane:bytes_per_day:{perminute@example.test}')).toBe('0');
    // The limit (3 a minute) is whole: three messages still go through.
    for (let i = 0; i < 3; i++) expect((await send(gw.port('trusted'), 'perminute@example.test')).data).toMatch(/^250 /);
    await expect.poll(() => redis.cli('get', key)).toBe('3');
  });

  it('a transaction the client resets (RSET, EHLO) gives its counts back at once, while its session stays open', async () => {
    const gw = await gateway();
    const held: RawSmtp[] = [];
    for (const reset of ['RSET', 'EHLO again.test']) {
      const c = await RawSmtp.connect(gw.port('trusted'));
      await c.reply();
      await c.command('EHLO t');
      expect(await c.command('MAIL FROM:<perminute@example.test>')).toMatch(/^250/);
      expect(await c.command('RCPT TO:<user2@example.test>')).toMatch(/^250/);
      expect(await c.command(reset)).toMatch(/^250/);
      held.push(c);
    }
    // Ended when reset, not when the session ends: logged, and the upstream's transaction reset.
    await expect.poll(() => gw.logs.filter((l) => l.event === 'transaction' && l.verdict === 'abandoned' && l.note === 'reset by the client before DATA').length).toBe(2);
    await expect.poll(() => upstream.commands.filter((x) => x === 'RSET').length).toBe(2);
    // The limit (3 a minute) is whole for another session of the account.
    for (let i = 0; i < 3; i++) expect((await send(gw.port('trusted'), 'perminute@example.test')).data).toMatch(/^250 /);
    for (const c of held) c.close();
  });

  it('an account is one account however its local part is quoted ("perminute"@ is perminute@)', async () => {
    const gw = await gateway();
    const results = [];
    for (const from of ['perminute@example.test', '"perminute"@example.test', '"per\\minute"@example.test', 'PerMinute@example.test']) results.push((await send(gw.port('trusted'), from)).mail.slice(0, 3));
    expect(results).toEqual(['250', '250', '250', '450']);
    expect(redis.cli('get', 'douane:messages_per_minute:{perminute@example.test}')).toBe('3');
  });

  it('two accounts whose names differ by braces (a{b}@ and a_b_@) have counters and suspensions of their own', async () => {
    const gw = await gateway();
    const port = gw.port('trusted');
    const results = [];
    for (let i = 0; i < 4; i++) results.push((await send(port, 'a{b}@example.test')).mail.slice(0, 3));
    expect(results).toEqual(['250', '250', '250', '450']);
    expect((await send(port, 'a_b_@example.test')).mail).toMatch(/^250 /);
    // The enforcement state too: a suspension of one is not the other's, nor is reinstating one.
    await gw.gateway.enforcer.suspend('a{b}@example.test', 'suspend_sending', { by: 'test', reference: 'D-BRACE1', reason: 'test' });
    expect((await send(port, 'a_b_@example.test')).mail).toMatch(/^250 /);
    await gw.gateway.enforcer.reinstate('a_b_@example.test', 'test');
    expect((await send(port, 'a{b}@example.test')).mail).toMatch(/^550 5\.7\.1 Sending is suspended for this account/);
  });

  it('an account is one account however its accented local part is composed (NFC or NFD)', async () => {
    const gw = await gateway();
    const results = [];
    for (const from of ['jos\u00e9@example.test', 'jose\u0301@example.test', 'JOSE\u0301@example.test', 'jos\u00e9@example.test']) {
      const c = await RawSmtp.connect(gw.port('trusted'));
      await c.reply();
      await c.command('EHLO t');
      c.write(Buffer.from(`MAIL FROM:<${from}> SMTPUTF8\r\n`, 'utf8'));
      const mail = await c.reply();
      results.push(mail.slice(0, 3));
      if (mail.startsWith('250')) {
        await c.command('RCPT TO:<user2@example.test>');
        await c.command('DATA');
        c.write('Subject: t\r\n\r\nhello\r\n.\r\n');
        expect(await c.reply()).toMatch(/^250 /);
      }
      c.close();
    }
    expect(results).toEqual(['250', '250', '250', '450']);
  });

  it('an account is one account however its domain is written (xn-- or Unicode)', async () => {
    const gw = await gateway();
    expect((await send(gw.port('trusted'), 'idn@xn--bcher-kva.example')).data).toMatch(/^250 /);
    expect((await send(gw.port('trusted'), 'idn@bücher.example')).data).toMatch(/^250 /);
    expect((await send(gw.port('trusted'), 'IDN@XN--BCHER-KVA.example')).data).toMatch(/^250 /);
    // Three a minute, whichever spelling.
    expect((await send(gw.port('trusted'), 'idn@bücher.example')).mail).toMatch(/^450 4\.7\.1 Sending limit reached/);
    expect(redis.cli('get', 'douane:messages_per_minute:{idn@xn--bcher-kva.example}')).toBe('3');
  });

  it('a client that leaves while the upstream answers holds nothing: no session left open, no recipient counted', async () => {
    await upstream.stop();
    upstream = await FakeUpstream.start({
      auth: () => ({ delayMs: 300, reply: '235 2.7.0 Authentication successful' }),
      rcpt: (to) => (to.startsWith('slow') ? { delayMs: 300 } : undefined),
    });
    const gw = await gateway();
    const plain = `AUTH PLAIN ${Buffer.from('\0user1@example.test\0secret1').toString('base64')}`;
    // Two clients leave while the upstream checks their password; the account allows two sessions at once.
    for (let i = 0; i < 2; i++) {
      const c = await RawSmtp.connect(gw.port('submissions'), { tls: true });
      await c.reply();
      await c.command('EHLO t');
      c.write(plain + '\r\n');
      await new Promise((r) => setTimeout(r, 50));
      c.close();
    }
    await expect.poll(() => upstream.commands.filter((c) => c === 'AUTH ***').length).toBe(2);
    await new Promise((r) => setTimeout(r, 400)); // the upstream's answers have come
    const open = async () => {
      const c = await RawSmtp.connect(gw.port('submissions'), { tls: true });
      await c.reply();
      await c.command('EHLO t');
      expect(await c.command(plain)).toMatch(/^235/);
      return c;
    };
    const [a, b] = [await open(), await open()];
    expect(await a.command('MAIL FROM:<user1@example.test>')).toMatch(/^250/);
    expect(await b.command('MAIL FROM:<user1@example.test>')).toMatch(/^250/);
    // A client that leaves while the upstream answers its RCPT TO: the recipient it counted is given back.
    a.write('RCPT TO:<slow@example.test>\r\n');
    await expect.poll(() => upstream.commands.includes('RCPT TO:<slow@example.test>')).toBe(true);
    a.close();
    await gw.waitForLog((l) => l.event === 'transaction' && l.verdict === 'abandoned');
    await new Promise((r) => setTimeout(r, 400));
    await expect.poll(() => redis.cli('get', 'douane:recipients_per_hour:{user1@example.test}')).toBe('0');
    b.close();
  });
});

describe('shared state', () => {
  it('two instances on one Redis accept exactly the limit between them', async () => {
    const [a, b] = [await gateway(), await gateway()];
    const sends = Array.from({ length: 100 }, (_, i) => send((i % 2 ? a : b).port('trusted'), 'hourly@example.test'));
    const results = await Promise.all(sends);
    expect(results.filter((r) => r.data.startsWith('250'))).toHaveLength(50);
    expect(results.filter((r) => r.mail.startsWith('450'))).toHaveLength(50);
    expect(upstream.messages).toHaveLength(50);
  });

  it('exports douane_redis_up only with a Redis: without one, a 0 would say a Redis is down', async () => {
    const memory = await gateway({});
    expect(await memory.metrics.registry.metrics()).not.toMatch(/douane_redis_up/);
    const shared = await gateway();
    await expect.poll(async () => (await shared.metrics.registry.metrics()).match(/^douane_redis_up (\d)$/m)?.[1], { timeout: 5000 }).toBe('1');
  });

  it('works on a 3-node Redis Cluster, and a frozen node costs one deadline per reconnect, not one per message', async () => {
    const cluster: RedisCluster = await startRedisCluster(3);
    try {
      const gw = await gateway({ redis: { cluster: cluster.nodes.map((n) => ({ host: '127.0.0.1', port: n.port })) }, deadline: '400ms' });
      // The gateway starts after 3 s even without Redis (the insurance decides meanwhile); on a loaded
      // machine a fresh Cluster can take longer to answer its first CLUSTER SLOTS.
      await expect.poll(async () => (await gw.metrics.registry.metrics()).match(/^douane_redis_up (\d)/m)?.[1], { timeout: 15_000 }).toBe('1');
      const port = gw.port('trusted');
      const results = [];
      for (let i = 0; i < 5; i++) results.push((await send(port, 'perminute@example.test')).mail.slice(0, 3));
      expect(results).toEqual(['250', '250', '250', '450', '450']);
      // And the keys live in the cluster (on whichever node owns the account's slot).
      const found = cluster.nodes.map((n) => n.cli('-c', 'get', 'douane:messages_per_minute:{perminute@example.test}'));
      expect(found).toContain('3');
      expect(gw.logs.some((l) => l.event === 'limiter_insurance')).toBe(false);

      // The node that owns an account's slot freezes, for 1.5 s (less than the cluster's node timeout, 2 s):
      // past the reconnect, when the Cluster is ready again without it.
      expect((await send(port, 'roomy@example.test')).data).toMatch(/^250 /);
      const owner = cluster.nodes.find((n) => n.cli('get', 'douane:messages_per_hour:{roomy@example.test}') === '1')!;
      await expect.poll(() => acceptedInRedis(owner.cli, 'roomy@example.test')).toBe(1);
      owner.pause();
      let frozen = 0;
      try {
        for (const until = Date.now() + 1500; Date.now() < until; frozen++) expect((await send(port, 'roomy@example.test')).data).toMatch(/^250 /);
      } finally {
        owner.resume();
      }
      await expect.poll(() => gw.transactions().length).toBe(6 + frozen);
      const phaseMs = gw.transactions().slice(6).map((t) => (t.checks as { check: string; ms: number }[]).filter((c) => ['mail.account-status', 'rcpt.limits'].includes(c.check)).map((c) => c.ms));
      // The first message waited out the hang at MAIL FROM and the connection was dropped; the others
      // were decided at once, but for the one in flight each time a reconnect (ready as soon as the other
      // nodes answer) sent a command to the frozen node again: one deadline per reconnect, not per message.
      expect(phaseMs[0]![0]).toBeGreaterThanOrEqual(250);
      const hangs = gw.logs.filter((l) => l.event === 'redis_hung').length;
      const slow = phaseMs.filter((ms) => Math.max(...ms) >= 200).length;
      expect(frozen).toBeGreaterThan(10);
      expect(hangs).toBeLessThanOrEqual(3);
      expect(slow).toBeLessThanOrEqual(hangs);
      // Once the node answers again, counts go to it again.
      await expect.poll(() => owner.cli('get', 'douane:messages_per_hour:{roomy@example.test}'), { timeout: 5000 }).toBe('2');
      await expect.poll(async () => (await send(port, 'roomy@example.test')).data.slice(0, 3) === '250' && owner.cli('get', 'douane:messages_per_hour:{roomy@example.test}') !== '2', { timeout: 5000 }).toBe(true);
    } finally {
      await cluster.stop();
    }
  });
});

describe('Redis failures are bounded', () => {
  it('Redis down: decisions come from the insurance within the deadline, logged and counted', async () => {
    const gw = await gateway({ redis: { url: redis.url }, deadline: '300ms' });
    expect((await send(gw.port('trusted'), 'perminute@example.test')).data).toMatch(/^250 /);
    const down = await gateway({ redis: { url: `redis://127.0.0.1:${DEAD_PORT}` }, deadline: '300ms' });
    const started = Date.now();
    const results = [];
    for (let i = 0; i < 4; i++) results.push((await send(down.port('trusted'), 'perminute@example.test')).mail.slice(0, 3));
    expect(Date.now() - started).toBeLessThan(4 * 1000);
    // The insurance enforces the same limit, in this process.
    expect(results).toEqual(['250', '250', '250', '450']);
    await down.waitForLog((l) => l.event === 'limiter_insurance' || l.event === 'limits_degraded');
    expect(await down.metrics.registry.metrics()).toMatch(/douane_limiter_insurance_total\{op="messages_per_minute"\} [1-9]/);
  });

  it('a suspension still holds while Redis does not answer, on the instance that set it and on one that saw it', async () => {
    const [a, b] = [await gateway({ redis: { url: redis.url }, deadline: '300ms' }), await gateway({ redis: { url: redis.url }, deadline: '300ms' })];
    await a.gateway.enforcer.suspend('roomy@example.test', 'suspend_sending', { by: 'cli:test', reference: 'D-FRZN01', reason: 'complaint' });
    expect((await send(b.port('trusted'), 'roomy@example.test')).mail).toMatch(/^550 5\.7\.1 Sending is suspended/);
    redis.pause();
    try {
      for (const gw of [a, b]) expect((await send(gw.port('trusted'), 'roomy@example.test')).mail).toMatch(/^550 5\.7\.1 Sending is suspended for this account \(roomy@example\.test\).*incident D-FRZN01/);
      // Other accounts still send, on the insurance.
      expect((await send(b.port('trusted'), 'hourly@example.test')).data).toMatch(/^250 /);
    } finally {
      redis.resume();
    }
  });

  it('a strike Redis does not take is kept, and counted once it does, under its own cooldown', async () => {
    // The limit's strike with a cooldown, as shipped: the first try takes it before Redis refuses the count.
    const dir = mkdtempSync(join(tmpdir(), 'douane-cooldown-'));
    writeFileSync(join(dir, 'policy.yaml'), readFileSync(join(POLICY, 'policy.yaml'), 'utf8').replace('limit_reached: { weight: 1 }', 'limit_reached: { weight: 1, cooldown: 10m }'));
    const gw = await startGateway(upstream.port, { policy: { dir, watch: false }, limits: { redis: { url: redis.url } }, enforcement: { outbox: { retry_min: '50ms', retry_max: '200ms' } } });
    gateways.push(gw);
    const strikes = 'douane:strikes:{perminute@example.test}';
    // Redis refuses the strike's write (a key of another type: WRONGTYPE), and nothing else.
    redis.cli('set', strikes, 'not a sorted set');
    const port = gw.port('trusted');
    for (let i = 0; i < 3; i++) expect((await send(port, 'perminute@example.test')).data).toMatch(/^250 /);
    expect((await send(port, 'perminute@example.test')).mail).toMatch(/^450 4\.7\.1 Sending limit reached/);
    expect(await gw.waitForLog((l) => l.event === 'strike_deferred')).toMatchObject({ account: 'perminute@example.test', strike: 'limit_reached', err: expect.stringMatching(/WRONGTYPE/) });
    // Not said to be counted while it is not.
    expect(gw.logs.filter((l) => l.event === 'strike')).toHaveLength(0);
    redis.cli('del', strikes);
    expect(await gw.waitForLog((l) => l.event === 'strike', 5000)).toMatchObject({ account: 'perminute@example.test', strike: 'limit_reached', rule: 'limits.message-rate' });
    expect(redis.cli('zcard', strikes)).toBe('1');
    // Its cooldown holds against the next refusal, as for a strike counted at once.
    expect((await send(port, 'perminute@example.test')).mail).toMatch(/^450 4\.7\.1/);
    await new Promise((r) => setTimeout(r, 300));
    expect(redis.cli('zcard', strikes)).toBe('1');
  });

  it('Redis restarted without its data lifts no suspension: those known here are written back, and it is said', async () => {
    const [a, b] = [await gateway(), await gateway()];
    await a.gateway.enforcer.suspend('roomy@example.test', 'suspend_sending', { by: 'cli:test', reference: 'D-LOST01', reason: 'complaint' });
    await a.gateway.enforcer.suspend('hourly@example.test', 'suspend_sending', { by: 'cli:test', reference: 'D-LOST02', reason: 'complaint' });
    expect((await send(b.port('trusted'), 'roomy@example.test')).mail).toMatch(/^550 5\.7\.1 Sending is suspended/);
    // Every 10 s each instance reads the suspensions in force (the gauge); here at once.
    await b.gateway.enforcer.refreshGauge();
    await redis.crash();
    await redis.revive();
    for (const gw of [a, b]) await gw.waitForLog((l) => l.event === 'redis_ready', 10_000);
    expect(redis.cli('get', 'douane:suspended:{roomy@example.test}')).toBe('');
    // An instance started now knows nothing to write back, and its mark is a new one to the others.
    const c = await gateway();
    expect(c.logs.filter((l) => l.event === 'enforcement_state_lost')).toHaveLength(0);
    // The next MAIL finds no suspension in Redis where one was known: the state was lost, not reinstated.
    expect((await send(b.port('trusted'), 'roomy@example.test')).mail).toMatch(/^550 5\.7\.1 Sending is suspended for this account \(roomy@example\.test\).*incident D-LOST01/);
    expect(await b.waitForLog((l) => l.event === 'enforcement_state_lost')).toMatchObject({ level: 'error', known: 2 });
    // Every suspension b knew of is back in Redis, for every instance: c never knew of hourly@.
    expect(JSON.parse(redis.cli('get', 'douane:suspended:{hourly@example.test}'))).toMatchObject({ reference: 'D-LOST02', action: 'suspend_sending' });
    expect((await send(c.port('trusted'), 'hourly@example.test')).mail).toMatch(/^550 5\.7\.1 Sending is suspended.*incident D-LOST02/);
    expect(await b.metrics.registry.getSingleMetricAsString('douane_enforcement_state_lost_total')).toMatch(/^douane_enforcement_state_lost_total 1$/m);
    // Reinstated on a, which has not looked since: its own write-back does not bring the suspension back.
    await a.gateway.enforcer.reinstate('roomy@example.test', 'cli:test');
    expect(await a.waitForLog((l) => l.event === 'enforcement_state_lost')).toMatchObject({ known: 2 });
    expect(redis.cli('get', 'douane:suspended:{roomy@example.test}')).toBe('');
    expect((await send(b.port('trusted'), 'roomy@example.test')).data).toMatch(/^250 /);
  });

  it('Redis frozen mid-run: each decision within the deadline, and no double count after it thaws', async () => {
    const gw = await gateway({ redis: { url: redis.url }, deadline: '400ms' });
    const port = gw.port('trusted');
    expect((await send(port, 'roomy@example.test')).data).toMatch(/^250 /);
    await expect.poll(() => acceptedInRedis(redis.cli, 'roomy@example.test')).toBe(1);
    redis.pause();
    try {
      const started = Date.now();
      const r = await send(port, 'roomy@example.test');
      const took = Date.now() - started;
      expect(r.data).toMatch(/^250 /);
      expect(took).toBeLessThan(3000); // MAIL, RCPT and the commit each bounded by the 400 ms deadline
      const line = await gw.waitForLog((l) => l.event === 'transaction' && l.verdict === 'accept' && gw.transactions().length === 2);
      expect(line).toBeTruthy();
      // The counters went out with the account's state: MAIL FROM waited out one deadline, not two.
      const checks = gw.transactions()[1]!.checks as { check: string; ms: number }[];
      expect(checks.find((c) => c.check === 'mail.account-status')!.ms).toBeGreaterThanOrEqual(250);
      expect(checks.find((c) => c.check === 'mail.limits')!.ms).toBeLessThan(200);
    } finally {
      redis.resume();
    }
    // Commands sent while frozen ran once Redis thawed (they were in its socket); nothing was sent twice.
    await expect.poll(() => redis.cli('get', 'douane:messages_per_hour:{roomy@example.test}'), { timeout: 5000 }).toBe('2');
    await expect.poll(async () => (await gw.metrics.registry.metrics()).match(/^douane_redis_up (\d)/m)?.[1], { timeout: 5000 }).toBe('1');
    expect((await send(port, 'roomy@example.test')).data).toMatch(/^250 /);
    expect(redis.cli('get', 'douane:messages_per_hour:{roomy@example.test}')).toBe('3');
  });

  it('Redis frozen for long: only the first message waits out the deadline; Redis counts again once it answers', async () => {
    const gw = await gateway({ redis: { url: redis.url }, deadline: '400ms' });
    const port = gw.port('trusted');
    expect((await send(port, 'roomy@example.test')).data).toMatch(/^250 /);
    const checkMs = (n: number, check: string) => (gw.transactions()[n]!.checks as { check: string; ms: number }[]).find((c) => c.check === check)!.ms;
    await expect.poll(() => acceptedInRedis(redis.cli, 'roomy@example.test')).toBe(1);
    redis.pause();
    let frozen = 0;
    let resumedAt = 0;
    try {
      // 2 s: several reconnects, each of which finds Redis still frozen.
      for (const until = Date.now() + 2000; Date.now() < until; frozen++) expect((await send(port, 'roomy@example.test')).data).toMatch(/^250 /);
      await expect.poll(() => gw.transactions().length).toBe(1 + frozen);
      // The first message found the connection open and waited; the hang dropped it, so every later one
      // was decided by the insurance at once, every phase of it.
      expect(checkMs(1, 'mail.account-status')).toBeGreaterThanOrEqual(250);
      expect(frozen).toBeGreaterThan(3);
      for (let n = 2; n <= frozen; n++) {
        expect(checkMs(n, 'mail.account-status')).toBeLessThan(200);
        expect(checkMs(n, 'mail.limits')).toBeLessThan(200);
        expect(checkMs(n, 'rcpt.limits')).toBeLessThan(200);
        expect(gw.transactions()[n]!.limits).toMatchObject({ degraded: true });
      }
      expect(gw.logs.filter((l) => l.event === 'redis_hung')).toHaveLength(1);
      expect(gw.logs.some((l) => l.event === 'redis_ready')).toBe(false);
      expect(await gw.metrics.registry.metrics()).toMatch(/douane_redis_errors_total\{kind="hang"\} 1\n/);
    } finally {
      resumedAt = Date.now();
      redis.resume();
    }
    // The reconnect's ready check passes once Redis answers, not before: the counters are in Redis again, counted once.
    const ready = await gw.waitForLog((l) => l.event === 'redis_ready', 5000);
    expect(Date.parse(String(ready.time))).toBeGreaterThanOrEqual(resumedAt - 5);
    expect(await gw.metrics.registry.metrics()).toMatch(/^douane_redis_up 1$/m);
    const before = Number(redis.cli('get', 'douane:messages_per_hour:{roomy@example.test}'));
    expect((await send(port, 'roomy@example.test')).data).toMatch(/^250 /);
    expect(Number(redis.cli('get', 'douane:messages_per_hour:{roomy@example.test}'))).toBe(before + 1);
    await expect.poll(() => gw.transactions().length).toBe(2 + frozen);
    expect(gw.transactions()[1 + frozen]!.limits).toBeUndefined();
  });

  it('a count the insurance made while Redis was down is given back to the insurance, not taken off Redis once it is back', async () => {
    const gw = await gateway({ redis: { url: redis.url }, deadline: '300ms' });
    const c = await RawSmtp.connect(gw.port('trusted'));
    await c.reply();
    await c.command('EHLO t');
    await redis.crash();
    try {
      expect(await c.command('MAIL FROM:<perminute@example.test>')).toMatch(/^250/); // counted by the insurance
      expect(await c.command('RCPT TO:<user2@example.test>')).toMatch(/^250/);
    } finally {
      await redis.revive();
    }
    await gw.waitForLog((l) => l.event === 'redis_ready', 10_000);
    expect(await c.command('RSET')).toMatch(/^250/);
    c.close();
    await new Promise((r) => setTimeout(r, 200)); // the refund has run
    expect(redis.cli('get', 'douane:messages_per_minute:{perminute@example.test}')).toBe('');
    expect(redis.cli('get', 'douane:recipients_per_hour:{perminute@example.test}')).toBe('');
    // The limit in Redis is whole, and no more than whole: three a minute.
    const results = [];
    for (let i = 0; i < 4; i++) results.push((await send(gw.port('trusted'), 'perminute@example.test')).mail.slice(0, 3));
    expect(results).toEqual(['250', '250', '250', '450']);
  });

  it('a count a frozen Redis makes once it thaws, after the insurance answered, is taken back there when the message is not sent', async () => {
    const gw = await gateway({ redis: { url: redis.url }, deadline: '300ms' });
    // A first message: the scripts are known on the connection (a first use asks Redis whether it has them).
    expect((await send(gw.port('trusted'), 'roomy@example.test')).data).toMatch(/^250 /);
    await expect.poll(() => acceptedInRedis(redis.cli, 'roomy@example.test')).toBe(1);
    await frozenForTheCounts(gw, async () => {
      const c = await RawSmtp.connect(gw.port('trusted'));
      await c.reply();
      await c.command('EHLO t');
      // The counts went out, Redis kept them in its socket, and the insurance answered past the command timeout.
      expect(await c.command('MAIL FROM:<perminute@example.test>')).toMatch(/^250/);
      expect(await c.command('RCPT TO:<user2@example.test>')).toMatch(/^250/);
      // Not sent: the client leaves (as after an RSET), and what was counted is given back.
      expect(await c.command('RSET')).toMatch(/^250/);
      c.close();
    });
    await expect.poll(() => Number(redis.cli('get', 'douane:messages_per_minute:{perminute@example.test}')), { timeout: 5000 }).toBe(0);
    expect(Number(redis.cli('get', 'douane:bytes_per_day:{perminute@example.test}'))).toBe(0);
    // Logged once the gateway has Redis's answer, which comes after Redis has made the change.
    await gw.waitForLog((l) => l.event === 'late_counts_undone');
    const results = [];
    for (let i = 0; i < 4; i++) results.push((await send(gw.port('trusted'), 'perminute@example.test')).mail.slice(0, 3));
    expect(results).toEqual(['250', '250', '250', '450']);
  });

  it('on_redis_failure: tempfail: what a frozen Redis counts once it thaws is taken back, so that retries do not use up the allowance', async () => {
    const gw = await gateway({ redis: { url: redis.url }, deadline: '400ms', on_redis_failure: 'tempfail' });
    const port = gw.port('trusted');
    expect((await send(port, 'perminute@example.test')).data).toMatch(/^250 /);
    await expect.poll(() => acceptedInRedis(redis.cli, 'perminute@example.test')).toBe(1);
    await frozenForTheCounts(gw, async () => {
      expect((await send(port, 'perminute@example.test')).mail).toMatch(/^451 4\.3\.0 /);
    });
    // The ready check passes once Redis answers, after it ran what it was sent before the freeze.
    await expect.poll(() => redis.cli('get', 'douane:messages_per_minute:{perminute@example.test}'), { timeout: 5000 }).toBe('1');
    expect(redis.cli('get', 'douane:messages_per_day:{perminute@example.test}')).toBe('1');
    // Logged once the gateway has Redis's answer, which comes after Redis has made the change.
    await gw.waitForLog((l) => l.event === 'late_counts_undone');
    // Three a minute: the retry and one more are sent, as if the tempfailed attempt had never been.
    const results = [];
    for (let i = 0; i < 3; i++) results.push((await send(port, 'perminute@example.test')).mail.slice(0, 3));
    expect(results).toEqual(['250', '250', '450']);
  });

  it('sessions opened while Redis was down count against concurrent_sessions once it is back', async () => {
    const gw = await gateway({ redis: { url: redis.url }, deadline: '300ms' });
    const open = () => authenticated(gw);
    await redis.crash();
    let sessions: RawSmtp[];
    try {
      sessions = [await open(), await open(), await open()];
    } finally {
      await redis.revive();
    }
    await gw.waitForLog((l) => l.event === 'redis_ready', 10_000);
    const [a, b, c] = sessions;
    // user1: two sessions at once. The two oldest may send; the third may not.
    expect(await a!.command('MAIL FROM:<user1@example.test>')).toMatch(/^250/);
    expect(await b!.command('MAIL FROM:<user1@example.test>')).toMatch(/^250/);
    expect(await c!.command('MAIL FROM:<user1@example.test>')).toMatch(/^450 4\.7\.1 Sending limit reached \(concurrent sessions\)/);
    for (const x of sessions) x.close();
  });

  it('sessions that close while Redis does not answer are removed from it once it answers: they take no place', async () => {
    const gw = await gateway({ redis: { url: redis.url }, deadline: '300ms' });
    const [a, b, c] = [await authenticated(gw), await authenticated(gw), await authenticated(gw)];
    redis.pause();
    try {
      a.close();
      // The hang drops the connection: the removals after it fail at once, while it reconnects.
      await gw.waitForLog((l) => l.event === 'redis_hung', 5000);
      b.close();
      c.close();
      await expect.poll(() => gw.gateway.activeSessions, { timeout: 5000 }).toBe(0);
    } finally {
      redis.resume();
    }
    await gw.waitForLog((l) => l.event === 'redis_ready', 10_000);
    // user1 may have two sessions at once, and has none open: both new ones send.
    const [d, e] = [await authenticated(gw), await authenticated(gw)];
    expect(await d.command('MAIL FROM:<user1@example.test>')).toMatch(/^250/);
    expect(await e.command('MAIL FROM:<user1@example.test>')).toMatch(/^250/);
    expect(redis.cli('zcard', 'douane:sessions:{user1@example.test}')).toBe('2');
    d.close();
    e.close();
  });

  it('on_redis_failure: tempfail refuses logins for a while (454 4.7.0) rather than try them unchecked', async () => {
    const gw = await gateway({ redis: { url: `redis://127.0.0.1:${DEAD_PORT}` }, deadline: '300ms', on_redis_failure: 'tempfail' });
    const c = await RawSmtp.connect(gw.port('submissions'), { tls: true });
    await c.reply();
    await c.command('EHLO t');
    expect(await c.command(`AUTH PLAIN ${Buffer.from('\0victim@example.test\0wrong').toString('base64')}`)).toMatch(/^454 4\.7\.0 Logins cannot be checked right now.*Ref D-/);
    expect(upstream.commands.filter((x) => x.startsWith('AUTH'))).toEqual([]);
    // Counted as an outage of Douane's (which the logins alert watches), not as brute force blocked.
    const auth = await gw.metrics.registry.getSingleMetricAsString('douane_auth_total');
    expect(auth).toMatch(/^douane_auth_total\{result="limits_unavailable"\} 1$/m);
    expect(auth).toMatch(/^douane_auth_total\{result="blocked"\} 0$/m);
    c.close();
  });

  it('on_redis_failure: tempfail answers 451 4.3.0 while Redis is down', async () => {
    const gw = await gateway({ redis: { url: `redis://127.0.0.1:${DEAD_PORT}` }, deadline: '300ms', on_redis_failure: 'tempfail' });
    const r = await send(gw.port('trusted'), 'roomy@example.test');
    expect(r.mail).toMatch(/^451 4\.3\.0 Your message could not be checked against your sending limits/);
    expect(upstream.messages).toHaveLength(0);
    // Refused by a Redis that is not there, not timed out by a slow one: the alert says which.
    const metrics = await gw.metrics.registry.metrics();
    expect(metrics).toMatch(/^douane_redis_errors_total\{kind="command"\} [1-9]/m);
    expect(metrics).not.toMatch(/^douane_redis_errors_total\{kind="deadline"\} [1-9]/m);
    // A SIZE= over the plan's whole day needs no counter to be refused for good: a 451 would come back on every retry.
    expect((await send(gw.port('trusted'), 'bytes@example.test', undefined, 'x', 3000)).mail).toMatch(/^552 5\.2\.3 /);
  });

  it('without Redis configured, limits are in memory', async () => {
    const gw = await gateway({});
    const results = [];
    for (let i = 0; i < 4; i++) results.push((await send(gw.port('trusted'), 'perminute@example.test')).mail.slice(0, 3));
    expect(results).toEqual(['250', '250', '250', '450']);
    expect(redis.cli('dbsize')).toBe('0');
  });
});

describe('brute force and sudden volume', () => {
  it('counts a failed login whose client left before the upstream answered', async () => {
    await upstream.stop();
    upstream = await FakeUpstream.start({ auth: () => ({ delayMs: 200, reply: '535 5.7.8 Error: authentication failed: bad credentials' }) });
    const gw = await gateway();
    const plain = (pass: string) => `AUTH PLAIN ${Buffer.from(`\0victim@example.test\0${pass}`).toString('base64')}`;
    for (let i = 0; i < 4; i++) {
      const c = await RawSmtp.connect(gw.port('submissions'), { tls: true });
      await c.reply();
      await c.command('EHLO t');
      c.write(plain('wrong') + '\r\n');
      await expect.poll(() => upstream.commands.filter((x) => x.startsWith('AUTH')).length).toBe(i + 1);
      c.close();
    }
    await new Promise((r) => setTimeout(r, 400)); // the upstream's answers have come
    const c = await RawSmtp.connect(gw.port('submissions'), { tls: true });
    await c.reply();
    await c.command('EHLO t');
    expect(await c.command(plain('right'))).toMatch(/^454 4\.7\.0 Too many failed logins/);
    expect(upstream.commands.filter((x) => x.startsWith('AUTH'))).toHaveLength(4);
    c.close();
  });

  it('blocks an account after repeated failed logins (454 4.7.0) without asking the upstream, with a strike', async () => {
    const gw = await gateway();
    const attempt = (pass: string) => loginOnce(gw, 'victim@example.test', pass);
    for (let i = 0; i < 4; i++) expect(await attempt('wrong')).toMatch(/^535 5\.7\.8/);
    const authsBefore = upstream.commands.filter((c) => c.startsWith('AUTH')).length;
    expect(await attempt('right')).toMatch(/^454 4\.7\.0 Too many failed logins from your address or for this account; try again in \d+ minutes\./);
    expect(upstream.commands.filter((c) => c.startsWith('AUTH')).length).toBe(authsBefore);
    const strike = await gw.waitForLog((l) => l.event === 'strike');
    expect(strike).toMatchObject({ strike: 'brute_force', account: 'victim@example.test', weight: 3 });
  });

  it('many failed logins at once get no more tries than one after another: attempts in flight count', async () => {
    await upstream.stop();
    // Dovecot answers a failure after a delay (auth_failure_delay): every attempt is in flight at once.
    upstream = await FakeUpstream.start({ auth: () => ({ delayMs: 300, reply: '535 5.7.8 Error: authentication failed' }) });
    const gw = await gateway();
    const replies = await loginsAtOnce(gw, 20, 'victim@example.test', 'guess');
    // The limit is 3: four failures, as one after another, and the others refused without asking the
    // upstream: they came while those four were still in flight.
    expect(replies.filter((r) => r.startsWith('535 5.7.8'))).toHaveLength(4);
    expect(replies.filter((r) => /^454 4\.7\.0 Too many logins at once from your address or for this account; please try again in a moment\. Ref D-[0-9A-Z]{6}\.$/.test(r))).toHaveLength(16);
    expect(upstream.commands.filter((x) => x.startsWith('AUTH'))).toHaveLength(4);
    // One strike, from the failure that blocked the account.
    await gw.waitForLog((l) => l.event === 'strike');
    expect(gw.logs.filter((l) => l.event === 'strike')).toHaveLength(1);
    // And it stays blocked: the refused ones did not give it tries back.
    for (let i = 0; i < 5; i++) expect(await loginOnce(gw, 'victim@example.test', 'guess')).toMatch(/^454 4\.7\.0 Too many failed logins/);
    expect(upstream.commands.filter((x) => x.startsWith('AUTH'))).toHaveLength(4);
  });

  it('twenty sessions of one account logging in at once: those past the limit wait a moment and get in on their next try; nothing is blocked', async () => {
    await upstream.stop();
    // The upstream takes its time, as Dovecot checking a password hash does: every login is in flight at once.
    upstream = await FakeUpstream.start({ users: { 'busy@example.test': 'right' }, auth: () => ({ delayMs: 500 }) });
    const gw = await gateway();
    const replies = await loginsAtOnce(gw, 20, 'busy@example.test', 'right');
    // The limit is 3: four in flight at once, the others told to come back.
    expect(replies.filter((r) => r.startsWith('235'))).toHaveLength(4);
    const waited = replies.filter((r) => r.startsWith('454'));
    expect(waited).toHaveLength(16);
    for (const r of waited) expect(r).toMatch(/^454 4\.7\.0 Too many logins at once from your address or for this account; please try again in a moment\. Ref D-[0-9A-Z]{6}\.$/);
    // They come back, four at a time, and all get in: no failure was counted, no block made.
    for (let round = 0; round < 4; round++) {
      const again = await Promise.all(Array.from({ length: 4 }, () => loginOnce(gw, 'busy@example.test', 'right')));
      for (const r of again) expect(r).toMatch(/^235/);
    }
    expect(redis.cli('exists', 'douane:auth_account_block:{busy@example.test}')).toBe('0');
    const metrics = await gw.metrics.registry.metrics();
    expect(metrics).toMatch(/^douane_auth_total\{result="too_many_at_once"\} 16$/m);
    expect(metrics).toMatch(/^douane_auth_total\{result="success"\} 20$/m);
    expect(metrics).not.toMatch(/^douane_auth_total\{result="blocked"\} [1-9]/m);
    expect(gw.logs.filter((l) => l.event === 'auth' && l.result === 'too_many_at_once')[0]).toMatchObject({ reason: 'auth.too_many_at_once', evidence: { busy: 'account' } });
  });

  it('a login that works, or that the upstream could not check, counts as no failure; refused ones neither', async () => {
    let down = false;
    await upstream.stop();
    upstream = await FakeUpstream.start({ users: { 'victim@example.test': 'right' }, auth: () => (down ? '454 4.7.0 Temporary authentication failure' : undefined) });
    const gw = await gateway();
    const attempt = (pass: string) => loginOnce(gw, 'victim@example.test', pass);
    down = true;
    for (let i = 0; i < 6; i++) expect(await attempt('right')).toMatch(/^454 4\.7\.0 /);
    down = false;
    for (let i = 0; i < 6; i++) expect(await attempt('right')).toMatch(/^235/);
    for (let i = 0; i < 4; i++) expect(await attempt('wrong')).toMatch(/^535 5\.7\.8/);
    await expect.poll(() => redis.cli('get', 'douane:auth_account:{victim@example.test}')).toBe('4');
    expect(await attempt('right')).toMatch(/^454 4\.7\.0 Too many failed logins/);
    expect(await attempt('right')).toMatch(/^454 4\.7\.0 Too many failed logins/);
    // The refused tries stay on the blocked account, and do not count against the address.
    expect(Number(redis.cli('get', 'douane:auth_account:{victim@example.test}'))).toBeGreaterThanOrEqual(4);
    expect(redis.cli('get', 'douane:auth_ip:127.0.0.1')).toBe('4');
  });

  it('failed logins count against the account each login is known to be, not against each spelling of it', async () => {
    const zimbra = await FakeZimbra.start({ defaultDomain: 'example.test' });
    try {
      zimbra.addAccount({ name: 'roomy@example.test', aliases: ['roomy.alias@example.test'] });
      await upstream.stop();
      upstream = await FakeUpstream.start({ users: { 'roomy@example.test': 'secret', 'roomy.alias@example.test': 'secret', roomy: 'secret' } });
      const gw = await startGateway(upstream.port, {
        policy: { dir: POLICY, watch: false },
        limits: { redis: { url: redis.url } },
        smtp: { max_connections_per_ip: 500 },
        lifecycle: { adapter: 'zimbra', timeout: '2s', status_cache: '0s', zimbra: { url: zimbra.url, admin_user: zimbra.adminUser, admin_password: zimbra.adminPassword } },
      });
      gateways.push(gw);
      const attempt = (login: string, pass: string) => loginOnce(gw, login, pass);
      // Once each spelling has logged in, it is known to be roomy@example.test.
      for (const login of ['roomy.alias@example.test', 'roomy']) expect(await attempt(login, 'secret')).toMatch(/^235/);
      // Four failures, one account (the limit is 3): blocked under any spelling.
      for (const login of ['roomy@example.test', 'roomy.alias@example.test', 'roomy', 'ROOMY.alias@example.test']) expect(await attempt(login, 'wrong')).toMatch(/^535 5\.7\.8/);
      expect(await attempt('roomy', 'secret')).toMatch(/^454 4\.7\.0 Too many failed logins/);

      // Spellings nobody has logged in with: the first failure of each teaches whose it is, and the
      // account's budget is spent once, not once per spelling.
      zimbra.addAccount({ name: 'quiet@example.test', aliases: ['quiet.alias@example.test', 'q2@example.test'] });
      const replies: string[] = [];
      for (let round = 0; round < 3; round++) {
        for (const login of ['quiet.alias@example.test', 'q2@example.test', 'quiet']) {
          replies.push(await attempt(login, 'wrong'));
          // The lookup in the background, before the next round relies on it.
          if (round === 0) await gw.waitForLog((l) => l.event === 'account_resolved' && l.login === login);
        }
      }
      // One failure per spelling before it is known, then the account's four: the rest are refused.
      expect(replies.filter((r) => r.startsWith('535'))).toHaveLength(3 + 4);
      expect(replies.slice(7).every((r) => /^454 4\.7\.0 Too many failed logins/.test(r))).toBe(true);
    } finally {
      await zimbra.stop();
    }
  });

  it('tags a message sent at ten times the account\'s usual hourly volume, with a strike and the evidence', async () => {
    // The 21 messages must fall in one clock hour: close to its end, wait for the next one.
    const intoHour = Date.now() % 3_600_000;
    if (intoHour > 3_600_000 - 30_000) await new Promise((r) => setTimeout(r, 3_600_000 - intoHour + 100));
    const gw = await gateway();
    const hour = Math.floor(Date.now() / 3_600_000);
    // History: 2 messages in each of the previous 10 hours (usual: 2 per active hour).
    for (let i = 1; i <= 10; i++) redis.cli('hset', 'douane:hourly:{roomy@example.test}', String(hour - i), '2');
    const tags: string[] = [];
    for (let i = 0; i < 21; i++) {
      await send(gw.port('trusted'), 'roomy@example.test');
      tags.push(upstream.messages[upstream.messages.length - 1]!.raw.toString().startsWith('X-Douane-Tags: account.sudden-volume') ? 'tag' : '-');
    }
    // The 20th message this hour is 10x the usual 2.
    expect(tags.indexOf('tag')).toBe(19);
    const strike = await gw.waitForLog((l) => l.event === 'strike' && l.strike === 'suspected_compromise');
    expect(strike.evidence).toMatchObject({ baseline_ratio: 10 });
  }, 75_000);
});
