// The outbox: one account's lifecycle calls one at a time, the newest replacing those still waiting,
// and retries never further apart than retry_max.

import { mkdirSync, mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { Outbox, type Handler, type Job } from '../../src/enforce/outbox.js';
import { createLogger } from '../../src/log.js';
import { Metrics } from '../../src/metrics.js';

function outbox(lifecycle: Handler, opts: { minDelayMs?: number; maxDelayMs?: number; lines?: Record<string, unknown>[]; notify?: Handler; giveUpAfterMs?: number; now?: () => number } = {}) {
  const noop: Handler = async () => undefined;
  const destination = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString().split('\n')) if (line.trim()) opts.lines?.push(JSON.parse(line) as Record<string, unknown>);
      cb();
    },
  });
  return new Outbox({
    dir: mkdtempSync(join(tmpdir(), 'douane-outbox-')),
    handlers: { lifecycle, notify: opts.notify ?? noop, webhook: noop, strike: noop },
    minDelayMs: opts.minDelayMs ?? 10,
    maxDelayMs: opts.maxDelayMs ?? 50,
    ...(opts.giveUpAfterMs !== undefined ? { giveUpAfterMs: opts.giveUpAfterMs } : {}),
    ...(opts.now ? { now: opts.now } : {}),
    metrics: new Metrics({ version: 't', defaultMetrics: false }),
    log: createLogger({ level: 'info', destination }),
  });
}

describe('outbox', () => {
  it('runs jobs with one key one at a time, and a new job replaces the ones still waiting', async () => {
    const running = new Map<string, number>();
    let most = 0;
    const done: string[] = [];
    let failFirst = true;
    let otherStarted!: () => void;
    const otherRunning = new Promise<void>((r) => (otherStarted = r));
    const box = outbox(async (job: Job) => {
      const key = job.key!;
      if ((job.payload as { op: string }).op === 'other-1') otherStarted();
      running.set(key, (running.get(key) ?? 0) + 1);
      most = Math.max(most, running.get(key)!);
      await new Promise((r) => setTimeout(r, 20));
      running.set(key, running.get(key)! - 1);
      const op = (job.payload as { op: string }).op;
      if (op === 'lock' && failFirst) {
        failFirst = false;
        throw Object.assign(new Error('API down'), { retryable: true });
      }
      done.push(op);
    }, { minDelayMs: 400, maxDelayMs: 400 });
    await box.start();
    await box.enqueue('lifecycle', { op: 'lock' }, 'lifecycle:a@x.test');
    await expect.poll(() => failFirst).toBe(false); // the lock failed once and waits for its retry (400 ms)
    await box.enqueue('lifecycle', { op: 'unlock' }, 'lifecycle:a@x.test');
    await box.enqueue('lifecycle', { op: 'other-1' }, 'lifecycle:b@x.test');
    await otherRunning;
    await box.enqueue('lifecycle', { op: 'other-2' }, 'lifecycle:b@x.test');
    expect(await box.idle(5000)).toBe(true);
    await box.stop();
    expect(done.filter((d) => d === 'lock' || d === 'unlock')).toEqual(['unlock']);
    // other-1 was already running when other-2 came: it finishes, then other-2 runs, never both at once.
    expect(done.filter((d) => d.startsWith('other'))).toEqual(['other-1', 'other-2']);
    expect(most).toBe(1);
  });

  it('a job that stalls (a notice to a relay that does not answer) holds up no other job\'s retry, and a stop waits for it only so long', async () => {
    let release!: () => void;
    const stalled = new Promise<void>((r) => (release = r));
    let tries = 0;
    const lines: Record<string, unknown>[] = [];
    const box = outbox(
      async () => {
        if (++tries === 1) throw new Error('lifecycle API unavailable');
      },
      { notify: () => stalled, lines },
    );
    await box.start();
    await box.enqueue('notify', { to: ['abuse@x.test'] });
    await box.enqueue('lifecycle', { op: 'suspend' }, 'lifecycle:a@x.test');
    await expect.poll(() => tries, { timeout: 3000 }).toBe(2);
    expect(box.size).toBe(1); // the notice, still running
    const stopped = Date.now();
    await box.stop(300);
    expect(Date.now() - stopped).toBeLessThan(3000);
    expect(lines.filter((l) => l.event === 'outbox_stopped_running')).toHaveLength(1);
    release();
  });

  it('gives up a notice tried for longer than give_up_after, never a lifecycle call', async () => {
    let skipped = 0;
    const lines: Record<string, unknown>[] = [];
    let lifecycleTries = 0;
    let noticeTries = 0;
    const box = outbox(
      async () => {
        lifecycleTries++;
        throw Object.assign(new Error('lifecycle API unavailable'), { retryable: true });
      },
      {
        notify: async () => {
          noticeTries++;
          throw new Error('relay unavailable');
        },
        lines,
        giveUpAfterMs: 7 * 86_400_000,
        now: () => Date.now() + skipped,
      },
    );
    await box.start();
    await box.enqueue('notify', { to: ['user1@x.test'] });
    await box.enqueue('lifecycle', { op: 'suspend' }, 'lifecycle:a@x.test');
    await expect.poll(() => noticeTries > 1 && lifecycleTries > 1, { timeout: 3000 }).toBe(true);
    expect(lines.filter((l) => l.event === 'outbox_failed')).toHaveLength(0);
    skipped += 7 * 86_400_000; // a week of retries
    await expect.poll(() => lines.find((l) => l.event === 'outbox_failed'), { timeout: 3000 }).toMatchObject({ kind: 'notify', err: expect.stringMatching(/relay unavailable \(given up: tried for 168 h\)/) });
    const tries = lifecycleTries;
    await expect.poll(() => lifecycleTries, { timeout: 3000 }).toBeGreaterThan(tries);
    expect(box.waiting('lifecycle')).toBe(1);
    expect(box.waiting('notify')).toBe(0);
    await box.stop();
  });

  it('plans retries with growing delays, never further apart than retry_max, jitter included', async () => {
    const lines: Record<string, unknown>[] = [];
    const box = outbox(async (job: Job) => {
      if (job.attempts < 7) throw Object.assign(new Error('down'), { retryable: true });
    }, { minDelayMs: 10, maxDelayMs: 60, lines });
    await box.start();
    const job = await box.enqueue('lifecycle', {});
    expect(await box.idle(5000)).toBe(true);
    await box.stop();
    expect(job.attempts).toBe(7);
    const planned = lines.filter((l) => l.event === 'outbox_retry').map((l) => l.retry_in_ms as number);
    expect(planned).toHaveLength(6);
    expect(planned[0]).toBeLessThanOrEqual(12); // retry_min with its jitter
    expect(Math.max(...planned)).toBeLessThanOrEqual(60);
    expect(planned.slice(-2).every((ms) => ms >= 47)).toBe(true); // capped: within the jitter below retry_max
    // Carried out: said once, when it is.
    expect(lines.filter((l) => l.event === 'outbox_done')).toEqual([expect.objectContaining({ job: job.id, kind: 'lifecycle', attempts: 7 })]);
  });
});

describe('notification results', () => {
  const counted = async (metrics: Metrics) =>
    (await metrics.registry.getSingleMetricAsString('douane_notifications_total')).split('\n').filter((l) => / [1-9]\d*$/.test(l)).map((l) => l.replace(/^douane_notifications_total/, ''));

  it('are counted as what happens next: a relay\'s 5xx fails for good, a webhook\'s 429 or 408 is tried again', async () => {
    const { SMTPServer } = await import('smtp-server');
    const http = await import('node:http');
    const { mailHandler, webhookHandler } = await import('../../src/enforce/notify.js');
    const { PermanentFailure } = await import('../../src/enforce/outbox.js');
    const relay = new SMTPServer({ authOptional: true, disabledCommands: ['STARTTLS'], logger: false, onMailFrom: (_a, _s, cb) => cb(Object.assign(new Error('no such sender'), { responseCode: 550 })) });
    await new Promise<void>((r) => relay.listen(0, '127.0.0.1', r));
    const statuses = [429, 408, 400];
    const web = http.createServer((_q, res) => res.writeHead(statuses.shift()!).end());
    await new Promise<void>((r) => web.listen(0, '127.0.0.1', r));
    try {
      const metrics = new Metrics({ version: 't', defaultMetrics: false });
      const mail = mailHandler({ from: 'douane@example.test', smtp: { host: '127.0.0.1', port: (relay.server.address() as { port: number }).port, secure: false, verify_certificate: false } }, metrics);
      const refused = await mail({ id: 'j1', kind: 'notify', payload: { channel: 'abuse', to: ['abuse@example.test'], subject: 's', text: 't' } } as unknown as Job).catch((e: unknown) => e);
      expect(refused).toBeInstanceOf(PermanentFailure);
      const webhook = webhookHandler({ url: `http://127.0.0.1:${(web.address() as { port: number }).port}/`, timeout: 2000 }, metrics);
      // Tried again: the job fails (the outbox keeps it), but not for good.
      const triedAgain = (e: unknown) => e instanceof Error && !(e instanceof PermanentFailure);
      await expect(webhook({ id: 'j2', kind: 'webhook', payload: { event: {} } } as unknown as Job)).rejects.toSatisfy(triedAgain);
      // A request timeout is the endpoint's slowness, not a refusal: tried again too; a 400 is not.
      await expect(webhook({ id: 'j3', kind: 'webhook', payload: { event: {} } } as unknown as Job)).rejects.toSatisfy(triedAgain);
      expect(await webhook({ id: 'j4', kind: 'webhook', payload: { event: {} } } as unknown as Job).catch((e: unknown) => e)).toBeInstanceOf(PermanentFailure);
      expect(await counted(metrics)).toEqual(['{channel="abuse",result="failed"} 1', '{channel="webhook",result="retry"} 2', '{channel="webhook",result="failed"} 1']);
    } finally {
      relay.close();
      web.close();
    }
  });

  it('a webhook that redirects fails for good, and nothing follows the redirect', async () => {
    const http = await import('node:http');
    const { webhookHandler } = await import('../../src/enforce/notify.js');
    const { PermanentFailure } = await import('../../src/enforce/outbox.js');
    const seen: string[] = [];
    const web = http.createServer((req, res) => {
      seen.push(`${req.method} ${req.url}`);
      if (req.url === '/moved') res.writeHead(302, { location: '/login' }).end();
      else if (req.url === '/kept') res.writeHead(308, { location: '/elsewhere' }).end();
      else res.writeHead(200).end('login page');
    });
    await new Promise<void>((r) => web.listen(0, '127.0.0.1', r));
    try {
      const metrics = new Metrics({ version: 't', defaultMetrics: false });
      const base = `http://127.0.0.1:${(web.address() as { port: number }).port}`;
      for (const path of ['/moved', '/kept']) {
        const webhook = webhookHandler({ url: base + path, timeout: 2000, secret: 's3cret' }, metrics);
        const failed = await webhook({ id: 'j', kind: 'webhook', payload: { event: { type: 'suspend_account' } } } as unknown as Job).catch((e: unknown) => e);
        expect(failed).toBeInstanceOf(PermanentFailure);
        expect((failed as Error).message).toMatch(/redirect .*set webhook\.url/);
      }
      expect(seen).toEqual(['POST /moved', 'POST /kept']);
      expect(await counted(metrics)).toEqual(['{channel="webhook",result="failed"} 2']);
    } finally {
      web.close();
    }
  });

  it('a job file a crash left empty or cut short is set aside in failed/ and counted, not left in pending/ for ever', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-outbox-'));
    const pending = join(dir, 'pending');
    mkdirSync(pending, { recursive: true });
    const now = Date.now();
    writeFileSync(join(pending, 'empty.json'), '');
    writeFileSync(join(pending, 'cut.json'), '{"id":"cut","kind":"lifecycle","payl');
    writeFileSync(join(pending, 'other.json'), '{"hello":"world"}\n');
    writeFileSync(join(pending, '.half.json.tmp'), '{"id":"half"');
    writeFileSync(join(pending, 'good.json'), JSON.stringify({ id: 'good', kind: 'lifecycle', payload: {}, attempts: 0, createdAt: now, nextAt: now }) + '\n');
    const ran: string[] = [];
    const lines: Record<string, unknown>[] = [];
    const metrics = new Metrics({ version: 't', defaultMetrics: false });
    const destination = new Writable({
      write(chunk: Buffer, _enc, cb) {
        for (const line of chunk.toString().split('\n')) if (line.trim()) lines.push(JSON.parse(line) as Record<string, unknown>);
        cb();
      },
    });
    const noop: Handler = async () => undefined;
    const box = new Outbox({ dir, handlers: { lifecycle: async (j) => void ran.push(j.id), notify: noop, webhook: noop, strike: noop }, minDelayMs: 10, maxDelayMs: 50, metrics, log: createLogger({ level: 'info', destination }) });
    await box.start();
    expect(await box.idle(2000)).toBe(true);
    await box.stop();
    expect(ran).toEqual(['good']);
    expect(readdirSync(pending)).toEqual([]);
    expect(readdirSync(join(dir, 'failed')).sort()).toEqual(['cut.json', 'empty.json', 'other.json']);
    expect(await metrics.registry.getSingleMetricAsString('douane_outbox_attempts_total')).toMatch(/^douane_outbox_attempts_total\{kind="unreadable",result="failed"\} 3$/m);
    expect(lines.filter((l) => l.event === 'outbox_unreadable').map((l) => l.file).sort()).toEqual(['cut.json', 'empty.json', 'other.json']);
  });
});
