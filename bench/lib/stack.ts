// What the benchmarks run: smtp-sink (the ceiling's receiver), Douane as its own process (so that its CPU
// time and memory can be measured apart from the load generator), and Haraka — installed for the
// benchmark only, in a temporary directory, never a dependency of Douane. Everything listens on
// 127.0.0.1 and is stopped by PID.

import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { freePort, waitForPort } from '../../test/harness/net.js';
import { stopPid } from '../../test/harness/procs.js';
import { stopOnInterrupt } from './proc.js';

export interface Server {
  name: string;
  port: number;
  /** the process whose CPU and memory are measured */
  pid: number;
  stop(): Promise<void>;
}

function track(child: ChildProcess, name: string): number {
  if (!child.pid) throw new Error(`${name} did not start`);
  child.on('exit', (code, signal) => {
    if (code && code !== 0) console.error(`${name} exited with ${code ?? signal}`);
  });
  return child.pid;
}

export async function startSink(): Promise<Server> {
  const port = await freePort();
  const child = spawn('smtp-sink', ['-u', 'postfix', `127.0.0.1:${port}`, '1000'], { stdio: 'ignore' });
  const pid = track(child, 'smtp-sink');
  await waitForPort(port);
  return stopOnInterrupt({ name: 'smtp-sink', port, pid, stop: () => stopPid(pid) });
}

export interface DouaneOptions {
  sinkPort: number;
  /** trusted listener (smtp-source, no AUTH) or the STARTTLS submission listener */
  redisUrl?: string;
  clamdPort?: number;
  /** clamd's unix socket (preferred when clamd is local: no TCP stack per scan) */
  clamdSocket?: string;
  policyDir: string;
  /** replaces the upstream line (default: the sink, no TLS, a pool of 64) */
  upstream?: string;
  /** extra configuration, YAML text appended */
  extra?: string;
  /** extra node options, e.g. ['--cpu-prof'] to profile */
  nodeArgs?: string[];
  logLevel?: string;
}

export async function startDouane(opts: DouaneOptions): Promise<Server & { submissionPort: number; dir: string; metrics(): Promise<string> }> {
  const dir = mkdtempSync(join(tmpdir(), 'douane-bench-'));
  const [trusted, submission, admin] = [await freePort(), await freePort(), await freePort()];
  const config = [
    'hostname: douane.bench',
    'listeners:',
    `  trusted: { mode: trusted, address: 127.0.0.1, port: ${trusted}, allow: [127.0.0.0/8] }`,
    `  submission: { mode: starttls, address: 127.0.0.1, port: ${submission} }`,
    'tls: { insecure_dev: true }',
    opts.upstream ?? `upstream: { host: 127.0.0.1, port: ${opts.sinkPort}, trusted_port: ${opts.sinkPort}, tls: none, pool: { size: 64 } }`,
    `policy: { dir: ${resolve(opts.policyDir)}, watch: false }`,
    'smtp: { max_connections_per_ip: 10000, max_connections: 10000, max_message_size: 30M }',
    `spool: { dir: ${join(dir, 'spool')} }`,
    `state_dir: ${join(dir, 'state')}`,
    // Read after each run: the counters say whether every check really ran on every message.
    `admin: { address: 127.0.0.1, port: ${admin} }`,
    `log: { level: ${opts.logLevel ?? 'info'} }`,
    // Without Redis, limits and bulk counts would go on in memory and the run would look the same: a
    // Redis that fails tempfails the messages instead, and the run stops.
    opts.redisUrl ? `limits: { redis: { url: "${opts.redisUrl}" }, on_redis_failure: tempfail }` : '',
    opts.clamdSocket ? `clamd: { hosts: [{ socket: ${opts.clamdSocket} }], timeout: 30s }` : opts.clamdPort ? `clamd: { hosts: [{ host: 127.0.0.1, port: ${opts.clamdPort} }], timeout: 30s }` : 'clamd: none',
    opts.extra ?? '',
  ].join('\n');
  writeFileSync(join(dir, 'douane.yaml'), config);
  // Its JSON log is kept while it runs: should it stop on a fault (exit 70), the run says which.
  const log = join(dir, 'douane.log');
  const child = spawn(process.execPath, [...(opts.nodeArgs ?? []), join(process.cwd(), 'dist/cli.js'), 'serve', '--config', join(dir, 'douane.yaml')], { stdio: ['ignore', openSync(log, 'w'), 'inherit'] });
  const pid = track(child, 'douane');
  child.on('exit', (code) => {
    if (code === 70 && existsSync(log)) for (const line of readFileSync(log, 'utf8').split('\n').filter((l) => l.includes('"event":"crash"'))) console.error(line);
  });
  await waitForPort(trusted, 20_000).catch(async (err: Error) => {
    await stopPid(pid);
    throw err;
  });
  return stopOnInterrupt({
    name: 'douane',
    port: trusted,
    submissionPort: submission,
    pid,
    dir,
    metrics: async () => {
      const res = await fetch(`http://127.0.0.1:${admin}/metrics`);
      if (!res.ok) throw new Error(`Douane's /metrics answered ${res.status}`);
      return res.text();
    },
    stop: async () => {
      await stopPid(pid);
      rmSync(dir, { recursive: true, force: true });
    },
  });
}

/** The sum of a metric's samples whose labels include all of `labels`. */
export function metricSum(text: string, name: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^([a-z_]+)(?:\{([^}]*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((l) => [l[1], l[2]]));
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) sum += Number(m[3]);
  }
  return sum;
}

/** A byte-copying TCP proxy in Node.js in front of the sink (bench/lib/pipe.cjs): the floor for a Node relay. */
export async function startPipe(sinkPort: number): Promise<Server> {
  const port = await freePort();
  const child = spawn(process.execPath, [join(process.cwd(), 'bench/lib/pipe.cjs'), String(port), String(sinkPort)], { stdio: ['ignore', 'ignore', 'inherit'] });
  const pid = track(child, 'pipe');
  await waitForPort(port).catch(async (err: Error) => {
    await stopPid(pid);
    throw err;
  });
  return stopOnInterrupt({ name: 'pipe', port, pid, stop: () => stopPid(pid) });
}

const HARAKA_DIR = join(tmpdir(), 'douane-bench-haraka');

/** Installs Haraka 3.x and its clamd, limit and redis plugins from npm, once, outside the project. */
export function installHaraka(): string {
  const bin = join(HARAKA_DIR, 'node_modules/.bin/haraka');
  if (!existsSync(bin)) {
    mkdirSync(HARAKA_DIR, { recursive: true });
    writeFileSync(join(HARAKA_DIR, 'package.json'), '{"name":"haraka-bench","private":true}');
    execFileSync('npm', ['install', '--no-audit', '--no-fund', 'Haraka@3', 'haraka-plugin-clamd', 'haraka-plugin-limit', 'haraka-plugin-redis'], { cwd: HARAKA_DIR, stdio: 'ignore' });
  }
  return bin;
}

export function harakaVersion(): string {
  try {
    return (JSON.parse(execFileSync('cat', [join(HARAKA_DIR, 'node_modules/Haraka/package.json')], { encoding: 'utf8' })) as { version: string }).version;
  } catch {
    return 'not installed';
  }
}

/** The Redis database Haraka's limit plugin keeps its counters in. */
export const HARAKA_LIMIT_DB = 4;

export interface HarakaOptions {
  sinkPort: number;
  /** load redis + limit + clamd (on the same Redis and clamd as Douane) */
  plugins?: { redisPort: number; clamdSocket: string };
  /** preload that sets TCP_NODELAY on every socket (Haraka never does; see BENCHMARKS.md) */
  noDelay?: boolean;
}

export async function startHaraka(opts: HarakaOptions): Promise<Server> {
  const bin = installHaraka();
  const dir = mkdtempSync(join(tmpdir(), 'haraka-bench-'));
  execFileSync(bin, ['-i', dir], { stdio: 'ignore' });
  const port = await freePort();
  const cfg = (name: string, text: string) => writeFileSync(join(dir, 'config', name), text);
  // One process (no cluster): its CPU is the whole of Haraka's work. The DNS-based plugins of the
  // skeleton are removed: there is no DNS here, and they are not part of a relay's work.
  cfg('smtp.ini', `listen=127.0.0.1:${port}\n[headers]\n`);
  cfg('me', 'haraka.bench\n');
  cfg('relay.ini', '[relay]\nacl=true\n');
  cfg('relay_acl_allow', '127.0.0.0/8\n');
  cfg('smtp_forward.ini', `host=127.0.0.1\nport=${opts.sinkPort}\nenable_outbound=true\n`);
  cfg('log.ini', '[main]\nlevel=warn\n');
  const plugins = ['relay'];
  if (opts.plugins) {
    plugins.push('redis', 'limit', 'clamd');
    cfg('redis.ini', `[server]\nhost=127.0.0.1\nport=${opts.plugins.redisPort}\n[pubsub]\nhost=127.0.0.1\nport=${opts.plugins.redisPort}\n`);
    // Generous limits, so that nothing is refused but every counter is kept; loopback is not exempt. Each
    // kind of limit is off until its section says enabled=true (the run checks Redis for its counters).
    const big = '1000000/1m';
    cfg(
      'limit.ini',
      `tarpit_delay=0\n[redis]\ndb=${HARAKA_LIMIT_DB}\n[concurrency]\nenabled=true\nmax=10000\n[recipients]\nenabled=true\nmax=10000\n[unrecognized_commands]\nenabled=true\nmax=10\n[errors]\nenabled=true\nmax=10\n` +
        ['rate_conn', 'rate_rcpt_host', 'rate_rcpt_sender', 'rate_rcpt'].map((s) => `[${s}]\nenabled=true\n127=${big}\ndefault=${big}\n`).join(''),
    );
    cfg('clamd.ini', `clamd_socket=${opts.plugins.clamdSocket}\ntimeout=30\n[check]\nauthenticated=true\nrelay=true\nprivate_ip=true\nlocal_ip=true\n`);
  }
  plugins.push('queue/smtp_forward');
  cfg('plugins', plugins.join('\n') + '\n');
  const args = opts.noDelay ? ['-r', join(process.cwd(), 'bench/lib/nodelay.cjs'), bin, '-c', dir] : [bin, '-c', dir];
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'inherit'] });
  const pid = track(child, 'haraka');
  await waitForPort(port, 30_000).catch(async (err: Error) => {
    await stopPid(pid);
    throw err;
  });
  return stopOnInterrupt({
    name: 'haraka',
    port,
    pid,
    stop: async () => {
      await stopPid(pid);
      rmSync(dir, { recursive: true, force: true });
    },
  });
}
