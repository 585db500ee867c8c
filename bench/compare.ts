// The side-by-side run: the ceiling (smtp-source → smtp-sink), Douane in three configurations and Haraka
// (stock and with its clamd + limit plugins) relaying to the same sink, 4 KB and 100 KB messages with 20
// sessions, repetitions interleaved so that the machine's noise hits every setup alike; medians and the
// ratios that count. Douane's and Haraka's CPU time per message and peak memory come from /proc.
//
//   npm run bench:compare            (REPS=3 MESSAGES_4K=2000 MESSAGES_100K=800 to change the run)

import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startClamd } from '../test/harness/clamd.js';
import { startRedis } from '../test/harness/redis.js';
import { latency, smtpSource } from './lib/load.js';
import { cpuSeconds, median, peakRss } from './lib/proc.js';
import { runBenchmark, table, writeSection } from './lib/report.js';
import { installHaraka, startDouane, startHaraka, startPipe, startSink, type Server } from './lib/stack.js';

const REPS = Number(process.env.REPS ?? 3);
const SIZES = [
  { label: '4 KB', bytes: 4096, messages: Number(process.env.MESSAGES_4K ?? 2000) },
  { label: '100 KB', bytes: 102_400, messages: Number(process.env.MESSAGES_100K ?? 800) },
];
const SESSIONS = 20;

/** The shipped policy with limits and bulk thresholds raised: every counter runs, nothing is refused. */
function generousPolicy(): string {
  const dir = mkdtempSync(join(tmpdir(), 'douane-bench-policy-'));
  cpSync('policies', dir, { recursive: true });
  const limits = join(dir, 'limits.yaml');
  writeFileSync(limits, readFileSync(limits, 'utf8').replace(/^(\s+(messages|recipients|recipient_domains)_per_\w+|\s+concurrent_sessions): \d+/gm, '$1: 100000000').replace(/bytes_per_day: \w+/g, 'bytes_per_day: 1000G'));
  const rules = join(dir, 'rules.yaml');
  writeFileSync(rules, readFileSync(rules, 'utf8').replace(/bulk\.(account|global)_recipients: \{ gt: \d+ \}/g, 'bulk.$1_recipients: { gt: 100000000 }'));
  return dir;
}

interface Setup {
  id: 'ceiling' | 'pipe' | 'relay' | 'limits' | 'all' | 'haraka' | 'haraka-plugins' | 'haraka-plugins-nodelay';
  name: string;
  /** the process measured for CPU and memory (none for the ceiling) */
  measured: boolean;
  start(sink: Server): Promise<Server>;
}

async function main(): Promise<void> {
  installHaraka();
  const [sink, redis, clamd] = [await startSink(), await startRedis(), await startClamd()];
  const policy = generousPolicy();
  const setups: Setup[] = [
    { id: 'ceiling', name: 'ceiling: smtp-source → smtp-sink', measured: false, start: async (s) => ({ ...s, stop: async () => undefined }) },
    { id: 'pipe', name: 'Node.js TCP pipe (no SMTP): the floor', measured: true, start: (s) => startPipe(s.port) },
    { id: 'relay', name: 'Douane, relay only', measured: true, start: (s) => startDouane({ sinkPort: s.port, policyDir: 'fixtures/policies/minimal' }) },
    { id: 'limits', name: 'Douane + Redis limits + policy', measured: true, start: (s) => startDouane({ sinkPort: s.port, policyDir: policy, redisUrl: redis.url }) },
    { id: 'all', name: 'Douane, every check (+ clamd, unix socket)', measured: true, start: (s) => startDouane({ sinkPort: s.port, policyDir: policy, redisUrl: redis.url, clamdSocket: clamd.socket }) },
    { id: 'haraka', name: 'Haraka, relay (smtp_forward)', measured: true, start: (s) => startHaraka({ sinkPort: s.port }) },
    { id: 'haraka-plugins', name: 'Haraka + clamd (unix socket) + limit', measured: true, start: (s) => startHaraka({ sinkPort: s.port, plugins: { redisPort: redis.port, clamdSocket: clamd.socket } }) },
    { id: 'haraka-plugins-nodelay', name: 'Haraka + clamd (unix socket) + limit, TCP_NODELAY', measured: true, start: (s) => startHaraka({ sinkPort: s.port, plugins: { redisPort: redis.port, clamdSocket: clamd.socket }, noDelay: true }) },
  ];
  type Sample = { rate: number; cpuMs: number; rss: number; failed: boolean };
  const results = new Map<string, Sample[]>();
  try {
    for (let rep = 1; rep <= REPS; rep++) {
      for (const size of SIZES) {
        for (const setup of setups) {
          const server = await setup.start(sink);
          try {
            await smtpSource(server.port, { sessions: SESSIONS, messages: 50, size: size.bytes }); // warm-up
            const cpu0 = setup.measured ? cpuSeconds(server.pid) : 0;
            const t = await smtpSource(server.port, { sessions: SESSIONS, messages: size.messages, size: size.bytes });
            const cpuMs = setup.measured ? ((cpuSeconds(server.pid) - cpu0) * 1000) / size.messages : 0;
            const key = `${setup.name}|${size.label}`;
            results.set(key, [...(results.get(key) ?? []), { rate: t.perSecond, cpuMs, rss: setup.measured ? peakRss(server.pid) : 0, failed: t.failed }]);
            console.error(`rep ${rep} ${size.label.padEnd(6)} ${setup.name.padEnd(40)} ${t.perSecond.toFixed(0).padStart(6)} msg/s  cpu ${cpuMs.toFixed(2)} ms/msg${t.failed ? '  (errors)' : ''}`);
          } finally {
            await server.stop();
          }
        }
      }
    }
    // Single-session latency, 4 KB, interleaved the same way.
    const lat = new Map<string, { p50: number[]; p99: number[]; mean: number[] }>();
    for (let rep = 1; rep <= REPS; rep++) {
      for (const setup of setups) {
        const server = await setup.start(sink);
        try {
          await latency(server.port, { messages: 20, size: 4096 });
          const l = await latency(server.port, { messages: 200, size: 4096 });
          const acc = lat.get(setup.name) ?? { p50: [], p99: [], mean: [] };
          acc.p50.push(l.p50);
          acc.p99.push(l.p99);
          acc.mean.push(l.mean);
          lat.set(setup.name, acc);
        } finally {
          await server.stop();
        }
      }
    }
    const m = (name: string, size: string, f: (s: Sample) => number) => median((results.get(`${name}|${size}`) ?? []).map(f));
    const rows = setups.map((s) => {
      const l = lat.get(s.name);
      const failed = [...results.entries()].some(([k, v]) => k.startsWith(s.name + '|') && v.some((x) => x.failed));
      return [
        s.name + (failed ? ' (errors)' : ''),
        m(s.name, '4 KB', (x) => x.rate).toFixed(0),
        m(s.name, '100 KB', (x) => x.rate).toFixed(0),
        s.measured ? m(s.name, '4 KB', (x) => x.cpuMs).toFixed(2) : '—',
        s.measured ? m(s.name, '100 KB', (x) => x.cpuMs).toFixed(2) : '—',
        s.measured ? `${Math.round(Math.max(...(results.get(`${s.name}|100 KB`) ?? []).map((x) => x.rss)) / 2 ** 20)} MB` : '—',
        l ? `${median(l.p50).toFixed(1)} / ${median(l.p99).toFixed(1)} / ${median(l.mean).toFixed(1)}` : '—',
      ];
    });
    const byId = (id: Setup['id']) => setups.find((s) => s.id === id)!.name;
    const rate = (id: Setup['id'], size: string) => m(byId(id), size, (x) => x.rate);
    const cpu = (id: Setup['id'], size: string) => m(byId(id), size, (x) => x.cpuMs);
    const ratio = (a: number, b: number) => (b > 0 ? (a / b).toFixed(2) : '—');
    const all = 'all';
    const haraka = 'haraka-plugins';
    const harakaNoDelay = 'haraka-plugins-nodelay';
    const ratios = table(
      ['ratio (medians of this run)', '4 KB', '100 KB'],
      [
        ['Douane every check / ceiling', ratio(rate(all, '4 KB'), rate('ceiling', '4 KB')), ratio(rate(all, '100 KB'), rate('ceiling', '100 KB'))],
        ['Douane every check / Haraka + clamd + limit', ratio(rate(all, '4 KB'), rate(haraka, '4 KB')), ratio(rate(all, '100 KB'), rate(haraka, '100 KB'))],
        ['Douane every check / Haraka + clamd + limit, TCP_NODELAY', ratio(rate(all, '4 KB'), rate(harakaNoDelay, '4 KB')), ratio(rate(all, '100 KB'), rate(harakaNoDelay, '100 KB'))],
        ['Douane relay only / ceiling', ratio(rate('relay', '4 KB'), rate('ceiling', '4 KB')), ratio(rate('relay', '100 KB'), rate('ceiling', '100 KB'))],
        ['Douane relay only / Node.js TCP pipe', ratio(rate('relay', '4 KB'), rate('pipe', '4 KB')), ratio(rate('relay', '100 KB'), rate('pipe', '100 KB'))],
        ['CPU per message: Douane every check / Haraka + clamd + limit', ratio(cpu(all, '4 KB'), cpu(haraka, '4 KB')), ratio(cpu(all, '100 KB'), cpu(haraka, '100 KB'))],
        ['CPU per message: Douane every check / Node.js TCP pipe', ratio(cpu(all, '4 KB'), cpu('pipe', '4 KB')), ratio(cpu(all, '100 KB'), cpu('pipe', '100 KB'))],
      ],
    );
    const douaneLat = lat.get(byId(all));
    const targets = [
      `- Douane with every check ≥ 2× Haraka with clamd + limit on 4 KB: ${ratio(rate(all, '4 KB'), rate(haraka, '4 KB'))}× — ${rate(all, '4 KB') >= 2 * rate(haraka, '4 KB') ? 'met' : 'not met'}`,
      `- ≥ 2.5× on 100 KB: ${ratio(rate(all, '100 KB'), rate(haraka, '100 KB'))}× — ${rate(all, '100 KB') >= 2.5 * rate(haraka, '100 KB') ? 'met' : 'not met'}`,
      `- Douane's own CPU ≤ 1 ms per 4 KB message with every check on (clamd excluded, it is another process): ${cpu(all, '4 KB').toFixed(2)} ms — ${cpu(all, '4 KB') <= 1 ? 'met' : 'not met'}`,
      `- single-session mean latency ≤ 3 ms with every check on: ${douaneLat ? median(douaneLat.mean).toFixed(1) : '?'} ms — ${douaneLat && median(douaneLat.mean) <= 3 ? 'met' : 'not met'}`,
    ];
    writeSection(
      'compare',
      'Throughput, CPU and latency side by side',
      'npm run bench:compare',
      [
        `${SESSIONS} sessions, one message per connection (smtp-source), ${SIZES.map((s) => `${s.messages} × ${s.label}`).join(' and ')} per run, medians of ${REPS} interleaved repetitions. CPU is the relay process's own (user + system), per message; clamd's and Redis's are not included. Latency is one session sending 200 messages of 4 KB one after another (p50 / p99 / mean, ms).`,
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
