// Starts a real Douane gateway in-process on port 0 with a test configuration, and captures its log lines.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { stringify } from 'yaml';
import { afterEach } from 'vitest';
import { FakeUpstream, type FakeUpstreamOptions } from './fake-upstream.js';
import { parseConfig } from '../../src/config/load.js';
import type { Config } from '../../src/config/schema.js';
import { Gateway, type GatewayDeps } from '../../src/gateway.js';
import { createLogger } from '../../src/log.js';
import { Metrics } from '../../src/metrics.js';

export interface LogLine {
  level: string;
  msg: string;
  event?: string;
  [key: string]: unknown;
}

export interface TestGateway {
  gateway: Gateway;
  config: Readonly<Config>;
  metrics: Metrics;
  logs: LogLine[];
  port(listener: 'submission' | 'submissions' | 'trusted' | string): number;
  transactions(): LogLine[];
  /** waits for a log line matching the predicate */
  waitForLog(pred: (l: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
  stop(): Promise<void>;
  spoolDir: string;
  stateDir: string;
  /** the configuration as YAML, to run the CLI against the same state */
  configText: string;
}

/**
 * For a test file: `const setup = gatewayWithUpstream()` gives a function that starts a fake upstream and a
 * gateway in front of it, and stops both after each test.
 */
export function gatewayWithUpstream(): (opts?: FakeUpstreamOptions, overrides?: Record<string, unknown>) => Promise<{ upstream: FakeUpstream; gw: TestGateway }> {
  let started: { upstream: FakeUpstream; gw: TestGateway } | undefined;
  afterEach(async () => {
    await started?.gw.stop();
    await started?.upstream.stop();
    started = undefined;
  });
  return async (opts = {}, overrides = {}) => {
    const upstream = await FakeUpstream.start(opts);
    const gw = await startGateway(upstream.port, overrides);
    // The sessions Douane opened at start (EHLO, QUIT) are checked by a test of their own.
    upstream.forgetStartup();
    started = { upstream, gw };
    return started;
  };
}

export function mergeDeep(base: Record<string, unknown>, over: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) {
    const b = out[k];
    if (v && typeof v === 'object' && !Array.isArray(v) && b && typeof b === 'object' && !Array.isArray(b)) {
      out[k] = mergeDeep(b as Record<string, unknown>, v as Record<string, unknown>);
    } else out[k] = v;
  }
  return out;
}

export function testConfigObject(upstreamPort: number, overrides: Record<string, unknown> = {}): Record<string, unknown> {
  const base = {
    hostname: 'douane.test',
    listeners: {
      submission: { mode: 'starttls', port: 0 },
      submissions: { mode: 'tls', port: 0 },
      trusted: { mode: 'trusted', port: 0, allow: ['127.0.0.1/32'] },
    },
    tls: { insecure_dev: true },
    upstream: {
      host: '127.0.0.1',
      port: upstreamPort,
      trusted_port: upstreamPort,
      tls: 'none',
      timeouts: { connect: '2s', command: '2s', data: '5s' },
    },
    log: { level: 'debug' },
    clamd: 'none',
  };
  return mergeDeep(base, overrides);
}

export async function startGateway(
  upstreamPort: number,
  overrides: Record<string, unknown> = {},
  deps: Partial<GatewayDeps> = {},
): Promise<TestGateway> {
  const spoolDir = mkdtempSync(join(tmpdir(), 'douane-test-spool-'));
  // A caller that names its own state_dir keeps it (a restart test starts a second gateway on it).
  const ownState = typeof overrides.state_dir !== 'string';
  const stateDir = ownState ? mkdtempSync(join(tmpdir(), 'douane-test-state-')) : String(overrides.state_dir);
  const obj = testConfigObject(upstreamPort, mergeDeep({ spool: { dir: spoolDir }, state_dir: stateDir }, overrides));
  const { config } = parseConfig('test-config.yaml', stringify(obj));
  const logs: LogLine[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString().split('\n')) if (line.trim()) logs.push(JSON.parse(line) as LogLine);
      cb();
    },
  });
  const logger = createLogger({ level: config.log.level, destination });
  const metrics = new Metrics({ version: 'test', defaultMetrics: false });
  const gateway = new Gateway(config, { logger, metrics, ...deps });
  await gateway.start();
  return {
    gateway,
    config,
    metrics,
    logs,
    spoolDir,
    stateDir: String((obj as { state_dir: string }).state_dir),
    configText: stringify(obj),
    port: (l) => gateway.port(l),
    transactions: () => logs.filter((l) => l.event === 'transaction'),
    async waitForLog(pred, timeoutMs = 5000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const found = logs.find(pred);
        if (found) return found;
        if (Date.now() > deadline) throw new Error('log line not found; have:\n' + logs.map((l) => JSON.stringify(l)).join('\n'));
        await new Promise((r) => setTimeout(r, 10));
      }
    },
    async stop() {
      await gateway.stop(200);
      rmSync(spoolDir, { recursive: true, force: true });
      if (ownState) rmSync(stateDir, { recursive: true, force: true });
    },
  };
}
