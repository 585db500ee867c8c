// The side-by-side run: the ceiling (smtp-source → smtp-sink), Douane in three configurations and Haraka
// (stock and with its clamd + limit plugins) relaying to the same sink, 4 KB and 100 KB messages with 20
// sessions, repetitions interleaved so that the machine's noise hits every setup alike; medians and the
// ratios that count. Douane's and Haraka's CPU time per message and peak memory come from /proc.
//
//   npm run bench:compare            (REPS=3 MESSAGES_4K=2000 MESSAGES_100K=800 WARM_UP=200 to change the run)

import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startClamd } from '../test/harness/clamd.js';
import { startRedis } from '../test/harness/redis.js';
import { latency, smtpSource } from './lib/load.js';
import { cpuSeconds, median, peakRss, stopOnInterrupt } from './lib/proc.js';
import { runBenchmark, table, writeSection } from './lib/report.js';
import { HARAKA_LIMIT_DB, installHaraka, metricSum, startDouane, startHaraka, startPipe, startSink, type Server } from './lib/stack.js';

const REPS = Number(process.env.REPS ?? 3);
const SIZES = [
  { label: '4 KB', bytes: 4096, messages: Number(process.env.MESSAGES_4K ?? 2000) },
  { label: '100 KB', bytes: 102_400, messages: Number(process.env.MESSAGES_100K ?? 800) },
];
const SESSIONS = 20;
/** Messages sent first, unmeasured: the JIT compiles the hot path, pools fill. */
const WARM_UP = Number(process.env.WARM_UP ?? 200);

/**
 * The shipped policy with limits and bulk thresholds raised: every counter runs, nothing is refused.
 * smtp-source's text is lines of one letter after a number, which the bulk fingerprint reads as a few
 * characters: under the shipped minimum length, no message would be counted. The minimum is lowered, so
 * that every message is (all with one content: the costlier path, a content seen before).
 */
function generousPolicy(): string {
  const dir = mkdtempSync(join(tmpdir(), 'douane-bench-policy-'));
  cpSync('policies', dir, { recursive: true });
  const limits = join(dir, 'limits.yaml');
  writeFileSync(limits, readFileSync(limits, 'utf8').replace(/^(\s+(messages|recipients|recipient_domains)_per_\w+|\s+concurrent_sessions): \d+/gm, '$1: 100000000').replace(/bytes_per_day: \w+/g, 'bytes_per_day: 1000G'));
  const rules = join(dir, 'rules.yaml');
  writeFileSync(rules, readFileSync(rules, 'utf8').replace(/bulk\.(account|global)_recipients: \{ gt: \d+ \}/g, 'bulk.$1_recipients: { gt: 100000000 }'));
  const inspection = join(dir, 'inspection.yaml');
  writeFileSync(inspection, readFileSync(inspection, 'utf8').replace(/^(\s+min_text_length): \d+/m, '$1: 1'));
  return dir;
}

interface Setup {
  id: 'ceiling' | 'pipe' | 'relay' | 'limits' | 'all' | 'haraka' | 'haraka-plugins' | 'haraka-plugins-nodelay';
  name: string;
  /** the process measured for CPU and memory (none for the ceiling) */
  measured: boolean;
  start(sink: Server): Promise<Server>;
  /** after a run of `sent` messages: throws unless every check it claims ran on every one of them */
  verify?(server: Server, sent: number): Promise<void>;
}

/** Douane's counters after `sent` messages: all accepted, and each check counted each one. */
function douaneRan(checks: { bulk?: boolean; scan?: boolean }) {
  return async (server: Server, sent: number): Promise<void> => {
    const text = await (server as Awaited<ReturnType<typeof startDouane>>).metrics();
    const counts: [string, number][] = [['accepted', metricSum(text, 'douane_transactions_total', { verdict: 'accept' })]];
    if (checks.bulk) counts.push(['counted for bulk', metricSum(text, 'douane_bulk_checks_total')], ['checked against the message limits', metricSum(text, 'douane_limiter_decisions_total', { limit: 'messages_per_hour' })]);
    if (checks.scan) counts.push(['scanned clean', metricSum(text, 'douane_scans_total', { result: 'clean' })]);
    const short = counts.filter(([, n]) => n !== sent);
    if (short.length) throw new Error(`${server.name}: of ${sent} messages sent, ${short.map(([what, n]) => `${n} ${what}`).join(', ')}`);
  };
}

async function main(): Promise<void> {
  installHaraka();
  const sink = await startSink();
  const redis = stopOnInterrupt(await startRedis());
  const clamd = stopOnInterrupt(await startClamd());
  const policy = generousPolicy();
  // Haraka's limit plugin keeps its counters in Redis: none after a run means it counted nothing.
  const harakaCounted = async (server: Server): Promise<void> => {
    if (Number(redis.cli('-n', String(HARAKA_LIMIT_DB), 'DBSIZE')) === 0) throw new Error(`${server.name}: its limit plugin kept no counter in Redis`);
  };
  const setups: Setup[] = [
    { id: 'ceiling', name: 'ceiling: smtp-source → smtp-sink', measured: false, start: async (s) => ({ ...s, stop: async () => undefined }) },
    { id: 'pipe', name: 'Node.js TCP pipe (no SMTP): the floor', measured: true, start: (s) => startPipe(s.port) },
    { id: 'relay', name: 'Douane, relay only', measured: true, start: (s) => startDouane({ sinkPort: s.port, policyDir: 'fixtures/policies/minimal' }), verify: douaneRan({}) },
    { id: 'limits', name: 'Douane + Redis limits + policy', measured: true, start: (s) => startDouane({ sinkPort: s.port, policyDir: policy, redisUrl: redis.url }), verify: douaneRan({ bulk: true }) },
    { id: 'all', name: 'Douane, every check (+ clamd, unix socket)', measured: true, start: (s) => startDouane({ sinkPort: s.port, policyDir: policy, redisUrl: redis.url, clamdSocket: clamd.socket }), verify: douaneRan({ bulk: true, scan: true }) },
    { id: 'haraka', name: 'Haraka, relay (smtp_forward)', measured: true, start: (s) => startHaraka({ sinkPort: s.port }) },
    { id: 'haraka-plugins', name: 'Haraka + clamd (unix socket) + limit', measured: true, start: (s) => startHaraka({ sinkPort: s.port, plugins: { redisPort: redis.port, clamdSocket: clamd.socket } }), verify: harakaCounted },
    { id: 'haraka-plugins-nodelay', name: 'Haraka + clamd (unix socket) + limit, TCP_NODELAY', measured: true, start: (s) => startHaraka({ sinkPort: s.port, plugins: { redisPort: redis.port, clamdSocket: clamd.socket }, noDelay: true }), verify: harakaCounted },
  ];
  type Sample = { rate: number; cpuMs: number; rss: number };
  /** by setup, size and repetition */
  const results = new Map<string, Sample[]>();
  const key = (id: Setup['id'], size: string) => `${id}|${size}`;
  /** Each repetition starts one setup further on: none always runs right after the same other. */
  const inOrder = (rep: number) => setups.slice(rep % setups.length).concat(setups.slice(0, rep % setups.length));
  try {
    for (let rep = 0; rep < REPS; rep++) {
      for (const size of SIZES) {
        for (const setup of inOrder(rep)) {
          // Each setup starts from an empty Redis: counters left by the one before cost it nothing.
          redis.cli('FLUSHALL');
          const server = await setup.start(sink);
          try {
            const warm = await smtpSource(server.port, { sessions: SESSIONS, messages: WARM_UP, size: size.bytes });
            const cpu0 = setup.measured ? cpuSeconds(server.pid) : 0;
            const t = await smtpSource(server.port, { sessions: SESSIONS, messages: size.messages, size: size.bytes });
            const cpuMs = setup.measured ? ((cpuSeconds(server.pid) - cpu0) * 1000) / size.messages : 0;
            // A run that was refused is not a throughput: smtp-source stops at the first error.
            if (warm.failed || t.failed) throw new Error(`${setup.name}, ${size.label}: smtp-source did not get every message accepted`);
            await setup.verify?.(server, WARM_UP + size.messages);
            const k = key(setup.id, size.label);
            const samples = results.get(k) ?? [];
            samples[rep] = { rate: t.perSecond, cpuMs, rss: setup.measured ? peakRss(server.pid) : 0 };
            results.set(k, samples);
            console.error(`rep ${rep + 1} ${size.label.padEnd(6)} ${setup.name.padEnd(52)} ${t.perSecond.toFixed(0).padStart(6)} msg/s  cpu ${cpuMs.toFixed(2)} ms/msg`);
          } finally {
            await server.stop();
          }
        }
      }
    }
    // Single-session latency, 4 KB, interleaved the same way.
    const lat = new Map<string, { p50: number[]; p99: number[]; mean: number[] }>();
    for (let rep = 0; rep < REPS; rep++) {
      for (const setup of inOrder(rep)) {
        redis.cli('FLUSHALL');
        const server = await setup.start(sink);
        try {
          await latency(server.port, { messages: 20, size: 4096 });
          const l = await latency(server.port, { messages: 200, size: 4096 });
          const acc = lat.get(setup.id) ?? { p50: [], p99: [], mean: [] };
          acc.p50.push(l.p50);
          acc.p99.push(l.p99);
          acc.mean.push(l.mean);
          lat.set(setup.id, acc);
        } finally {
          await server.stop();
        }
      }
    }
    const samples = (id: Setup['id'], size: string) => results.get(key(id, size)) ?? [];
    const m = (id: Setup['id'], size: string, f: (s: Sample) => number) => median(samples(id, size).map(f));
    const rows = setups.map((s) => {
      const l = lat.get(s.id);
      return [
        s.name,
        m(s.id, '4 KB', (x) => x.rate).toFixed(0),
        m(s.id, '100 KB', (x) => x.rate).toFixed(0),
        s.measured ? m(s.id, '4 KB', (x) => x.cpuMs).toFixed(2) : '—',
        s.measured ? m(s.id, '100 KB', (x) => x.cpuMs).toFixed(2) : '—',
        s.measured ? `${Math.round(Math.max(...samples(s.id, '100 KB').map((x) => x.rss)) / 2 ** 20)} MB` : '—',
        l ? `${median(l.p50).toFixed(1)} / ${median(l.p99).toFixed(1)} / ${median(l.mean).toFixed(1)}` : '—',
      ];
    });
    /** The ratio within each repetition (setups run minutes apart, not hours), then their median. */
    const paired = (f: (rep: number) => number) => median(Array.from({ length: REPS }, (_, rep) => f(rep)));
    const at = (id: Setup['id'], size: string, rep: number, f: (s: Sample) => number) => f(samples(id, size)[rep]!);
    const rateRatio = (a: Setup['id'], b: Setup['id'] | 'best-haraka', size: string) =>
      paired((rep) => at(a, size, rep, (x) => x.rate) / (b === 'best-haraka' ? Math.max(at('haraka-plugins', size, rep, (x) => x.rate), at('haraka-plugins-nodelay', size, rep, (x) => x.rate)) : at(b, size, rep, (x) => x.rate)));
    const cpuRatio = (a: Setup['id'], b: Setup['id'], size: string) => paired((rep) => at(a, size, rep, (x) => x.cpuMs) / at(b, size, rep, (x) => x.cpuMs));
    const both = (f: (size: string) => number) => SIZES.map((s) => f(s.label).toFixed(2));
    const ratios = table(
      ['ratio (within each repetition, median)', '4 KB', '100 KB'],
      [
        ['Douane every check / ceiling', ...both((s) => rateRatio('all', 'ceiling', s))],
        ['Douane every check / Haraka + clamd + limit, the faster of its two setups', ...both((s) => rateRatio('all', 'best-haraka', s))],
        ['Douane every check / Haraka + clamd + limit', ...both((s) => rateRatio('all', 'haraka-plugins', s))],
        ['Douane every check / Haraka + clamd + limit, TCP_NODELAY', ...both((s) => rateRatio('all', 'haraka-plugins-nodelay', s))],
        ['Douane relay only / ceiling', ...both((s) => rateRatio('relay', 'ceiling', s))],
        ['Douane relay only / Node.js TCP pipe', ...both((s) => rateRatio('relay', 'pipe', s))],
        ['CPU per message: Douane every check / Haraka + clamd + limit', ...both((s) => cpuRatio('all', 'haraka-plugins', s))],
        ['CPU per message: Douane every check / Node.js TCP pipe', ...both((s) => cpuRatio('all', 'pipe', s))],
      ],
    );
    const douaneLat = lat.get('all');
    const vsHaraka = (size: string) => rateRatio('all', 'best-haraka', size);
    const cpuAll = m('all', '4 KB', (x) => x.cpuMs);
    const targets = [
      `- Douane with every check ≥ 2× Haraka with clamd + limit (the faster of its two setups) on 4 KB: ${vsHaraka('4 KB').toFixed(2)}× — ${vsHaraka('4 KB') >= 2 ? 'met' : 'not met'}`,
      `- ≥ 2.5× on 100 KB: ${vsHaraka('100 KB').toFixed(2)}× — ${vsHaraka('100 KB') >= 2.5 ? 'met' : 'not met'}`,
      `- Douane's own CPU ≤ 1 ms per 4 KB message with every check on (clamd excluded, it is another process): ${cpuAll.toFixed(2)} ms — ${cpuAll <= 1 ? 'met' : 'not met'}`,
      `- single-session mean latency ≤ 3 ms with every check on: ${douaneLat ? median(douaneLat.mean).toFixed(1) : '?'} ms — ${douaneLat && median(douaneLat.mean) <= 3 ? 'met' : 'not met'}`,
    ];
    writeSection(
      'compare',
      'Throughput, CPU and latency side by side',
      'npm run bench:compare',
      [
        `${SESSIONS} sessions, one message per connection (smtp-source), ${SIZES.map((s) => `${s.messages} × ${s.label}`).join(' and ')} per run after ${WARM_UP} to warm up, ${REPS} repetitions, each running every setup in turn, starting one setup further on than the one before; Redis emptied before each setup. The table gives medians; the ratios are taken within each repetition, then their median. CPU is the relay process's own (user + system, all its threads), per message; clamd's and Redis's are not included. Latency is one session sending 200 messages of 4 KB one after another (p50 / p99 / mean, ms).`,
        '',
        `Every run is checked after it ends: every message accepted (smtp-source stops at the first refusal, and the run with it); for Douane, its own counters show each message counted by the limits and the bulk detector (every message carries smtp-source's one content) and, with clamd, scanned; for Haraka with its plugins, its limit plugin's counters are in Redis. Douane's limits fail closed here (\`on_redis_failure: tempfail\`), so a Redis that does not answer stops the run instead of being replaced by in-memory counters. clamd runs with the test suite's signatures (EICAR and a few test files): a full signature database costs clamd more per scan, which shows in the every-check throughput and latency, not in Douane's CPU.`,
        '',
        table(['setup', '4 KB msg/s', '100 KB msg/s', 'CPU ms/msg 4 KB', 'CPU ms/msg 100 KB', 'peak RSS', 'latency ms p50 / p99 / mean'], rows),
        '',
        ratios,
        '',
        'Targets:',
        ...targets,
      ].join('\n'),
    );
  } finally {
    await Promise.all([sink.stop(), redis.stop(), clamd.stop()]);
    rmSync(policy, { recursive: true, force: true });
  }
}

runBenchmark(main);
