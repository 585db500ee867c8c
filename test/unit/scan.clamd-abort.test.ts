import net from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { ClamdScanner } from '../../src/scan/clamd.js';
import { misbehavingClamd, resetAfter } from '../harness/clamd.js';
import { createLogger } from '../../src/log.js';
import { Metrics } from '../../src/metrics.js';

// The first clamd is missing; the second accepts and hangs up (it only counts who comes).
const dirs: string[] = [];
afterEach(() => dirs.splice(0).forEach((d) => rmSync(d, { recursive: true, force: true })));

async function setup() {
  const dir = mkdtempSync(join(tmpdir(), 'douane-clamd-abort-'));
  dirs.push(dir);
  let connections = 0;
  const second = net.createServer((s) => {
    connections++;
    s.destroy();
  });
  await new Promise<void>((r) => second.listen(join(dir, 'second.sock'), r));
  const scanner = new ClamdScanner({ hosts: [{ socket: join(dir, 'missing.sock') }, { socket: join(dir, 'second.sock') }], timeoutMs: 3000, metrics: new Metrics({ version: 't', defaultMetrics: false }), log: createLogger({ level: 'silent' }) });
  return { scanner, connections: () => connections, close: () => new Promise((r) => second.close(r)) };
}

describe('clamd failover and abort', () => {
  it('fails over to the next host from the spool when the first cannot be reached', async () => {
    const { scanner, connections, close } = await setup();
    const live = scanner.start();
    await live.write(Buffer.from('hello'));
    const r = await live.end(() => Readable.from([Buffer.from('hello')]));
    expect(r.result).toBe('error');
    expect(connections()).toBe(1);
    await close();
  });

  it('a scan aborted after it ended does not fail over to replay a message no longer wanted', async () => {
    const { scanner, connections, close } = await setup();
    const live = scanner.start();
    await live.write(Buffer.from('hello'));
    const ending = live.end(() => Readable.from([Buffer.from('hello')]));
    live.abort();
    expect((await ending).result).toBe('error');
    expect(connections()).toBe(0);
    await close();
  });

  it('a scan abandoned while clamd has not answered settles at once, and does not set the host aside', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-clamd-abort-'));
    dirs.push(dir);
    // A clamd that takes the stream and never answers, as a busy one does for a while.
    let connections = 0;
    const held: net.Socket[] = [];
    const silent = net.createServer((s) => {
      connections++;
      held.push(s);
      s.resume();
    });
    await new Promise<void>((r) => silent.listen(join(dir, 'silent.sock'), r));
    const hosts = [{ socket: join(dir, 'silent.sock') }];
    // With a long deadline: the abandoned scan ends with the abort, not with the deadline.
    const patient = new ClamdScanner({ hosts, timeoutMs: 10_000, metrics: new Metrics({ version: 't', defaultMetrics: false }), log: createLogger({ level: 'silent' }) });
    const waiting = patient.start();
    await waiting.write(Buffer.from('hello'));
    const started = Date.now();
    waiting.abort();
    expect(await waiting.end(() => Readable.from([Buffer.from('hello')]))).toMatchObject({ result: 'error', detail: 'scan abandoned' });
    expect(Date.now() - started).toBeLessThan(5000);
    patient.close();

    // With a short one, waited out: no timeout was counted, and the host still takes the next scan.
    const metrics = new Metrics({ version: 't', defaultMetrics: false });
    const scanner = new ClamdScanner({ hosts, timeoutMs: 300, metrics, log: createLogger({ level: 'silent' }) });
    const live = scanner.start();
    await live.write(Buffer.from('hello'));
    live.abort();
    expect(await live.end(() => Readable.from([Buffer.from('hello')]))).toMatchObject({ result: 'error', detail: 'scan abandoned' });
    await new Promise((resolve) => setTimeout(resolve, 700));
    expect(await metrics.registry.getSingleMetricAsString('douane_scan_errors_total')).not.toMatch(/\} [1-9]/);
    const before = connections;
    const next = scanner.start();
    await next.write(Buffer.from('hello'));
    await expect.poll(() => connections).toBe(before + 1);
    next.abort();
    scanner.close();
    held.forEach((s) => s.destroy());
    await new Promise((resolve) => silent.close(resolve));
  });
});

describe('a clamd slower than the client', () => {
  it('the client\'s writes wait while clamd reads nothing and go on once it reads; an aborted scan\'s connection is closed', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-clamd-slow-'));
    dirs.push(dir);
    // A clamd that reads nothing until told to, then takes the stream and finds it clean.
    const held: net.Socket[] = [];
    const closed: net.Socket[] = [];
    const slow = net.createServer((s) => {
      held.push(s);
      s.pause();
      let total = 0;
      s.on('data', (d) => {
        total += d.length;
        // The INSTREAM terminator: a zero-length chunk at the very end.
        if (d.length >= 4 && d.readUInt32BE(d.length - 4) === 0 && total > 1024) s.end('stream: OK\0');
      });
      s.on('close', () => closed.push(s));
    });
    await new Promise<void>((r) => slow.listen(join(dir, 'slow.sock'), r));
    const scanner = new ClamdScanner({ hosts: [{ socket: join(dir, 'slow.sock') }], timeoutMs: 60_000, metrics: new Metrics({ version: 't', defaultMetrics: false }), log: createLogger({ level: 'silent' }) });

    const live = scanner.start();
    const chunk = Buffer.alloc(256 * 1024, 'a');
    let written = 0;
    const writing = (async () => {
      for (let i = 0; i < 80; i++) {
        await live.write(chunk);
        written++;
      }
    })();
    // 20 MB offered: clamd holds what its socket and ours take, and the writes stop there, in memory too.
    await expect.poll(() => held.length).toBe(1);
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(written).toBeLessThan(40);
    held[0]!.resume();
    await writing;
    expect(written).toBe(80);
    expect(await live.end(() => Readable.from([]))).toMatchObject({ result: 'clean' });

    // Aborted while clamd reads nothing: the connection goes with the scan, not at clamd's own timeout.
    const dropped = scanner.start();
    void dropped.write(chunk);
    await expect.poll(() => held.length).toBe(2);
    for (let i = 0; i < 10; i++) void dropped.write(chunk);
    dropped.abort();
    // clamd reads again: it finds the end of a connection Douane closed, not one held open.
    held[1]!.resume();
    await expect.poll(() => closed.includes(held[1]!)).toBe(true);
    scanner.close();
    held.forEach((s) => s.destroy());
    await new Promise((resolve) => slow.close(resolve));
  });
});

describe('clamd closing a stream mid-message', () => {
  it('is named as clamd closing the stream (most likely its size limit), counted as closed, and the host is not set aside', async () => {
    const clamd = await misbehavingClamd(resetAfter(64 * 1024));
    const metrics = new Metrics({ version: 't', defaultMetrics: false });
    const scanner = new ClamdScanner({ hosts: [{ host: '127.0.0.1', port: clamd.port }], timeoutMs: 5000, metrics, log: createLogger({ level: 'silent' }) });
    const live = scanner.start();
    const chunk = Buffer.alloc(16 * 1024, 1);
    for (let i = 0; i < 64; i++) await live.write(chunk);
    const r = await live.end(() => Readable.from([chunk]));
    expect(r.result).toBe('error');
    expect(r.detail).toMatch(/^clamd closed the connection without a verdict \((write EPIPE|read ECONNRESET|write ECONNRESET)\): the message is most likely over clamd's stream size limit \(StreamMaxLength\)/);
    const counted = await metrics.registry.getSingleMetricAsString('douane_scan_errors_total');
    expect(counted).toMatch(/kind="closed"\} 1/);
    expect(counted).toMatch(/kind="unreachable"\} 0/);
    // Still the host scans go to.
    const next = scanner.start();
    await next.write(chunk);
    await expect.poll(() => clamd.connections()).toBe(2);
    next.abort();
    scanner.close();
    await clamd.close();
  });

  // One clamd per case, each doing one thing to the first connection it gets.
  async function clamdThat(onConnection: (s: net.Socket) => void) {
    const clamd = await misbehavingClamd(onConnection);
    const metrics = new Metrics({ version: 't', defaultMetrics: false });
    const name = `127.0.0.1:${clamd.port}`;
    const scanner = new ClamdScanner({ hosts: [{ host: '127.0.0.1', port: clamd.port }], timeoutMs: 3000, metrics, log: createLogger({ level: 'silent' }) });
    const errors = async () => (await metrics.registry.getSingleMetricAsString('douane_scan_errors_total')).split('\n').filter((l) => / [1-9]\d*$/.test(l));
    const up = async () => (await metrics.registry.getSingleMetricAsString('douane_clamd_up')).includes(`scanner="${name}"} 0`) ? 0 : 1;
    return { scanner, errors, up, closed: clamd.closed, close: clamd.close };
  }

  it('reset as it is opened, the host counts as unreachable and is set aside, not as a stream clamd closed', async () => {
    const c = await clamdThat((s) => s.resetAndDestroy());
    const live = c.scanner.start();
    await live.write(Buffer.from('hello'));
    const r = await live.end(() => Readable.from([Buffer.from('hello')]));
    expect(r.detail).toMatch(/^connect ECONNRESET /);
    expect(await c.errors()).toEqual(['douane_scan_errors_total{kind="unreachable"} 1']);
    expect(await c.up()).toBe(0);
    c.scanner.close();
    await c.close();
  });

  it('closed before the message ended, without a word: said so, and counted as closed', async () => {
    const c = await clamdThat((s) => s.once('data', () => s.end()));
    const live = c.scanner.start();
    await live.write(Buffer.from('hello'));
    // clamd hangs up while the client is still sending.
    await expect.poll(c.closed).toBe(1);
    const r = await live.end(() => Readable.from([Buffer.from('hello')]));
    expect(r).toMatchObject({ result: 'error', detail: 'clamd closed the connection before the end of the message, without a reply' });
    expect(await c.errors()).toEqual(['douane_scan_errors_total{kind="closed"} 1']);
    expect(await c.up()).toBe(1);
    c.scanner.close();
    await c.close();
  });

  it('a stream read whole and no verdict: an error counted as other', async () => {
    const c = await clamdThat((s) => {
      let seen = Buffer.alloc(0);
      s.on('data', (d) => {
        seen = Buffer.concat([seen, d]);
        if (seen.subarray(-4).equals(Buffer.alloc(4))) s.end();
      });
    });
    const live = c.scanner.start();
    await live.write(Buffer.from('hello'));
    const r = await live.end(() => Readable.from([Buffer.from('hello')]));
    expect(r).toMatchObject({ result: 'error', detail: 'clamd gave no clear answer' });
    expect(await c.errors()).toEqual(['douane_scan_errors_total{kind="other"} 1']);
    c.scanner.close();
    await c.close();
  });
});
