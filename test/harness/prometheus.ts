// A private Prometheus (Debian's /usr/bin/prometheus) on a free loopback port, scraping the given targets
// every second and evaluating a copy of an alert rule file every second, with its `for:` durations
// rewritten (the original is never touched). Queried over the HTTP API; stopped by PID.

import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isMap, isSeq, parseDocument, stringify } from 'yaml';
import { freePort } from './net.js';
import { startProcess, stopPid } from './procs.js';

export interface PrometheusOptions {
  /** host:port of each Douane admin endpoint to scrape (job `job`) */
  targets: string[];
  /** scrape job name; the dashboard and the DouaneDown alert expect "douane" */
  job?: string;
  /** an alerting rule file to load (a copy is loaded, rewritten by `forOverride`) */
  rules?: string;
  /** replaces every rule's `for:` in the copy (e.g. "2s"), so that alerts fire within a test's patience */
  forOverride?: string;
  /** how long to wait for every target to be up (the first scrape takes a few seconds) */
  upTimeoutMs?: number;
}

export interface Sample {
  metric: Record<string, string>;
  value: [number, string];
}

export interface PromAlert {
  labels: Record<string, string>;
  annotations: Record<string, string>;
  state: 'pending' | 'firing' | 'inactive';
  activeAt?: string;
  value: string;
}

export interface PromRule {
  name: string;
  query: string;
  health: string;
  lastError?: string;
  type: 'alerting' | 'recording';
  state?: string;
  duration?: number;
}

export interface QueryResult {
  /** the expression as sent */
  expr: string;
  /** "vector", "scalar", "matrix", "string" — or undefined on error */
  resultType?: string;
  series: Sample[];
  error?: string;
}

export interface PrometheusInstance {
  port: number;
  pid: number;
  url: string;
  dir: string;
  /** the rule file actually loaded (the rewritten copy), if any */
  rulesFile?: string;
  /** instant query (/api/v1/query); never throws on a PromQL error, reports it in `error` */
  query(expr: string): Promise<QueryResult>;
  /** active alerts (/api/v1/alerts): pending and firing */
  alerts(): Promise<PromAlert[]>;
  /** alerting and recording rules with their health (/api/v1/rules) */
  rules(): Promise<PromRule[]>;
  /** waits until `pred` holds for the active alerts, or throws with what was seen */
  waitForAlert(pred: (a: PromAlert) => boolean, timeoutMs: number): Promise<PromAlert>;
  /** the end of Prometheus' own log, for failure messages */
  logTail(): string;
  stop(): Promise<void>;
}

/** Rewrites every rule's `for:` in an alerting rule file's text; comments and everything else are kept. */
export function rewriteFor(text: string, forOverride: string): string {
  const doc = parseDocument(text);
  const groups = doc.get('groups');
  if (!isSeq(groups)) throw new Error('not a Prometheus rule file: no groups list');
  for (const group of groups.items) {
    const rules = isMap(group) ? group.get('rules') : undefined;
    if (!isSeq(rules)) continue;
    for (const rule of rules.items) if (isMap(rule) && rule.has('alert')) rule.set('for', forOverride);
  }
  return doc.toString();
}

export async function startPrometheus(opts: PrometheusOptions): Promise<PrometheusInstance> {
  const dir = mkdtempSync(join(tmpdir(), 'douane-prometheus-'));
  const port = await freePort();
  const job = opts.job ?? 'douane';
  let rulesFile: string | undefined;
  if (opts.rules) {
    rulesFile = join(dir, 'alerts.yaml');
    const text = readFileSync(opts.rules, 'utf8');
    writeFileSync(rulesFile, opts.forOverride ? rewriteFor(text, opts.forOverride) : text);
  }
  const config = {
    global: { scrape_interval: '1s', scrape_timeout: '1s', evaluation_interval: '1s' },
    ...(rulesFile ? { rule_files: [rulesFile] } : {}),
    scrape_configs: [{ job_name: job, static_configs: [{ targets: opts.targets }] }],
  };
  writeFileSync(join(dir, 'prometheus.yml'), stringify(config));
  const logFile = join(dir, 'prometheus.log');
  const fd = openSync(logFile, 'a');
  const child = startProcess(
    'prometheus',
    [
      `--config.file=${join(dir, 'prometheus.yml')}`,
      `--storage.tsdb.path=${join(dir, 'data')}`,
      `--web.listen-address=127.0.0.1:${port}`,
      '--log.level=warn',
      '--storage.tsdb.retention.time=1h',
    ],
    { stdio: ['ignore', fd, fd] },
  );
  closeSync(fd);
  const pid = child.pid!;
  const url = `http://127.0.0.1:${port}`;
  const logTail = () => {
    try {
      return readFileSync(logFile, 'utf8').slice(-3000);
    } catch {
      return '';
    }
  };

  const api = async <T>(path: string): Promise<T> => {
    const res = await fetch(`${url}${path}`, { signal: AbortSignal.timeout(5000) });
    const body = (await res.json()) as { status: string; data: T; error?: string };
    if (body.status !== 'success') throw new Error(`${path}: ${body.error ?? res.status}`);
    return body.data;
  };

  const instance: PrometheusInstance = {
    port,
    pid,
    url,
    dir,
    rulesFile,
    async query(expr) {
      try {
        const res = await fetch(`${url}/api/v1/query`, {
          method: 'POST',
          headers: { 'content-type': 'application/x-www-form-urlencoded' },
          body: new URLSearchParams({ query: expr }).toString(),
          signal: AbortSignal.timeout(5000),
        });
        const body = (await res.json()) as { status: string; error?: string; data?: { resultType: string; result: unknown } };
        if (body.status !== 'success' || !body.data) return { expr, series: [], error: body.error ?? `HTTP ${res.status}` };
        const { resultType, result } = body.data;
        // A scalar or string result is one value, not a list of series.
        const series = resultType === 'vector' || resultType === 'matrix' ? (result as Sample[]) : [{ metric: {}, value: result as [number, string] }];
        return { expr, resultType, series };
      } catch (err) {
        return { expr, series: [], error: (err as Error).message };
      }
    },
    async alerts() {
      return (await api<{ alerts: PromAlert[] }>('/api/v1/alerts')).alerts;
    },
    async rules() {
      const data = await api<{ groups: { rules: PromRule[] }[] }>('/api/v1/rules');
      return data.groups.flatMap((g) => g.rules);
    },
    async waitForAlert(pred, timeoutMs) {
      const deadline = Date.now() + timeoutMs;
      let seen: PromAlert[] = [];
      for (;;) {
        seen = await instance.alerts().catch(() => seen);
        const found = seen.find(pred);
        if (found) return found;
        if (Date.now() > deadline) {
          throw new Error(`alert not seen within ${timeoutMs} ms; active alerts:\n${seen.map((a) => `${a.state} ${JSON.stringify(a.labels)}`).join('\n') || '(none)'}`);
        }
        await new Promise((r) => setTimeout(r, 250));
      }
    },
    logTail,
    async stop() {
      await stopPid(pid);
      rmSync(dir, { recursive: true, force: true });
    },
  };

  // Ready, then every target up (the first scrape happens a few seconds after start).
  const deadline = Date.now() + (opts.upTimeoutMs ?? 30_000);
  try {
    for (;;) {
      if (child.exitCode !== null) throw new Error(`prometheus exited with ${child.exitCode}:\n${logTail()}`);
      const ready = await fetch(`${url}/-/ready`, { signal: AbortSignal.timeout(1000) }).then((r) => r.ok, () => false);
      if (ready) {
        const up = await instance.query(`up{job="${job}"} == 1`);
        if (up.series.length === opts.targets.length) break;
      }
      if (Date.now() > deadline) {
        const targets = await api<{ activeTargets: { scrapeUrl: string; health: string; lastError: string }[] }>('/api/v1/targets').catch(() => undefined);
        throw new Error(`prometheus: targets not up within ${opts.upTimeoutMs ?? 30_000} ms: ${JSON.stringify(targets?.activeTargets ?? [])}\n${logTail()}`);
      }
      await new Promise((r) => setTimeout(r, 200));
    }
  } catch (err) {
    await instance.stop();
    throw err;
  }
  return instance;
}
