// Observability, proven against the real thing: a real Prometheus scrapes a real Douane (real clamd, Redis,
// fake Zimbra admin API, fake upstream MTA) carrying a representative mix of traffic; every PromQL
// expression of the Grafana dashboard and of the alert rules must return series, the clamd-down and
// policy-reload alerts must fire, promtool must find nothing wrong with /metrics or the rules, and the
// compose deployment must agree with the Dockerfile and with a configuration Douane accepts.

import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdminServer } from '../../src/admin.js';
import { createLogger } from '../../src/log.js';
import { Metrics } from '../../src/metrics.js';
import { loadPolicy } from '../../src/policy/load.js';
import { EICAR, startClamd, type ClamdInstance } from '../harness/clamd.js';
import { FakeUpstream } from '../harness/fake-upstream.js';
import { FakeZimbra } from '../harness/fake-zimbra.js';
import { startGateway, type TestGateway } from '../harness/gateway.js';
import { mimeMessage } from '../harness/mime.js';
import { RawSmtp } from '../harness/net.js';
import { startPrometheus, type PrometheusInstance } from '../harness/prometheus.js';
import { startRedis, type RedisInstance } from '../harness/redis.js';

const DASHBOARD = 'grafana/dashboards/douane.json';
const ALERTS = 'grafana/alerts.yaml';
const JOB = 'douane';

// ------------------------------------------------------------------ reading the dashboard and the rules

interface Panel {
  id?: number;
  type: string;
  title?: string;
  datasource?: { type?: string; uid?: string };
  gridPos?: { x: number; y: number; w: number; h: number };
  targets?: { expr?: string; refId?: string }[];
  panels?: Panel[];
}

interface Dashboard {
  title: string;
  uid: string;
  schemaVersion: number;
  panels: Panel[];
  templating: { list: { name: string; type: string; query?: string | { query: string }; current?: { value: unknown } }[] };
}

interface AlertRule {
  alert: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

const readDashboard = (): Dashboard => JSON.parse(readFileSync(DASHBOARD, 'utf8')) as Dashboard;
const readAlertRules = (): AlertRule[] =>
  (parseYaml(readFileSync(ALERTS, 'utf8')) as { groups: { rules: AlertRule[] }[] }).groups.flatMap((g) => g.rules);

/** Every panel, the ones inside collapsed rows included. */
function allPanels(d: Dashboard): Panel[] {
  return d.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
}

/** Every PromQL expression of the dashboard: panel targets and query variables, with where it comes from. */
function dashboardExpressions(d: Dashboard): { where: string; expr: string }[] {
  const out: { where: string; expr: string }[] = [];
  for (const p of allPanels(d)) for (const t of p.targets ?? []) if (t.expr) out.push({ where: `panel "${p.title}" ${t.refId}`, expr: t.expr });
  for (const v of d.templating.list) {
    if (v.type !== 'query' || !v.query) continue;
    out.push({ where: `variable $${v.name}`, expr: typeof v.query === 'string' ? v.query : v.query.query });
  }
  return out;
}

/**
 * Grafana's variables replaced by what Grafana would send with the compose datasource (timeInterval 15s,
 * so $__rate_interval = 1m) and a 5-minute range; $instance is the "All" value (allValue: .*). Whatever
 * `$` remains is an unknown variable: the test fails on it rather than sending it.
 */
function toPromQL(expr: string): string {
  return expr
    .replace(/\$\{__rate_interval\}|\$__rate_interval\b/g, '1m')
    .replace(/\$\{__range\}|\$__range\b/g, '5m')
    .replace(/\$\{__interval\}|\$__interval\b/g, '15s')
    .replace(/\$\{job\}|\$job\b/g, JOB)
    .replace(/\$\{instance(?::regex)?\}|\$instance\b/g, '.*');
}

/**
 * Splits an expression at its top-level `and` / `or` / `unless`, then removes from each term a final
 * top-level comparison with a number (`> 0.05`, `== 0`, `> bool 1`): what is left is the signal the alert
 * compares, which must exist even while the alert is not firing. Brackets, braces, parentheses and
 * quoted strings are skipped, so `{result!="ok"}` or `=~"a|b"` are never taken for operators.
 */
function alertSignals(expr: string): string[] {
  // Top-level positions of `and`/`or`/`unless` (cuts) and of comparison operators.
  const cuts: [number, number][] = [];
  const comparisons: number[] = [];
  let depth = 0;
  let quote = '';
  for (let i = 0; i < expr.length; i++) {
    const c = expr[i]!;
    if (quote) {
      if (c === '\\') i++;
      else if (c === quote) quote = '';
      continue;
    }
    if (c === '"' || c === "'" || c === '`') quote = c;
    else if ('([{'.includes(c)) depth++;
    else if (')]}'.includes(c)) depth--;
    else if (depth === 0) {
      const m = /^\s(and|or|unless)\s/.exec(expr.slice(i));
      if (m) {
        cuts.push([i, i + m[0].length]);
        i += m[0].length - 1;
      } else if (/[<>=!]/.test(c) && !/[<>=!]/.test(expr[i - 1] ?? '')) comparisons.push(i);
    }
  }
  const terms: string[] = [];
  for (let k = 0; k <= cuts.length; k++) {
    const from = k === 0 ? 0 : cuts[k - 1]![1];
    const to = k === cuts.length ? expr.length : cuts[k]![0];
    let term = expr.slice(from, to);
    const last = comparisons.filter((p) => p >= from && p < to).pop();
    if (last !== undefined && /^(==|!=|>=|<=|>|<)\s*(bool\s+)?[-+]?(\d+(\.\d*)?|\.\d+)(e[-+]?\d+)?\s*$/i.test(expr.slice(last, to))) term = expr.slice(from, last);
    terms.push(term.trim());
  }
  return terms;
}

/** Label names of every Douane metric family (src/metrics.ts), plus what Prometheus adds. */
/** Every family Douane may export: douane_redis_up only with a Redis, the certificate's expiry only with TLS, so here with both. */
function everyMetric(): Metrics {
  const metrics = new Metrics({ version: 't', defaultMetrics: false });
  metrics.usesRedis();
  metrics.tlsCertificateExpiry(new Date());
  return metrics;
}

function knownLabels(): Map<string, Set<string>> {
  const out = new Map<string, Set<string>>([['up', new Set(['job', 'instance'])], ['ALERTS', new Set(['alertname', 'alertstate', 'severity', 'job', 'instance', 'scanner'])]]);
  for (const m of everyMetric().registry.getMetricsAsArray()) {
    const names = (m as unknown as { labelNames: string[] }).labelNames;
    const set = new Set([...names, 'job', 'instance']);
    out.set(m.name, set);
    if (String(m.type) === 'histogram') {
      out.set(`${m.name}_bucket`, new Set([...set, 'le']));
      out.set(`${m.name}_sum`, set);
      out.set(`${m.name}_count`, set);
    }
  }
  return out;
}

/**
 * Labels an expression names that its metrics do not have. A non-empty-result check cannot see these:
 * a negative matcher on a label that does not exist (`{reslt!="ok"}`) matches everything, and a
 * `by (typo)` just collapses the series into one.
 */
function unknownLabels(expr: string, known: Map<string, Set<string>>): string[] {
  const problems: string[] = [];
  const metrics = [...expr.matchAll(/\b(douane_\w+|up|ALERTS)\b/g)].map((m) => m[1]!);
  for (const name of metrics) if (!known.has(name)) problems.push(`unknown metric ${name}`);
  for (const m of expr.matchAll(/\b(douane_\w+|up|ALERTS)\s*\{([^}]*)\}/g)) {
    const labels = known.get(m[1]!);
    for (const l of m[2]!.matchAll(/(\w+)\s*(?:=~|!~|!=|=)/g)) if (labels && !labels.has(l[1]!)) problems.push(`${m[1]} has no label ${l[1]}`);
  }
  const all = new Set(metrics.flatMap((n) => [...(known.get(n) ?? [])]));
  for (const m of expr.matchAll(/\b(?:by|without)\s*\(([^)]*)\)/g)) {
    for (const l of m[1]!.split(',').map((x) => x.trim()).filter(Boolean)) if (!all.has(l)) problems.push(`by/without (${l}): no metric of the expression has it`);
  }
  return problems;
}

// ------------------------------------------------------------------ static checks (no services)

describe('alert rules, Prometheus config and dashboard files', () => {
  it('promtool check rules grafana/alerts.yaml passes', () => {
    const r = spawnSync('promtool', ['check', 'rules', ALERTS], { encoding: 'utf8' });
    expect(r.status, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(/SUCCESS: \d+ rules found/);
  });

  it('the alerts fire and stay quiet as their unit tests say (promtool test rules)', () => {
    const r = spawnSync('promtool', ['test', 'rules', 'grafana/alerts.test.yaml'], { encoding: 'utf8' });
    expect(r.status, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(/SUCCESS/);
  });

  it('every alert has a severity, a summary and a description, and a condition the dynamic test can take apart', () => {
    const rules = readAlertRules();
    expect(rules.length).toBeGreaterThanOrEqual(10);
    for (const r of rules) {
      expect(r.labels?.severity, r.alert).toMatch(/^(critical|warning)$/);
      expect(r.annotations?.summary, r.alert).toBeTruthy();
      expect((r.annotations?.description ?? '').length, `${r.alert}: say what to do`).toBeGreaterThan(80);
      expect(r.for, `${r.alert}: for`).toMatch(/^\d+[smh]$/);
      // Each term ends with `<comparison> <number>`, so that alertSignals() finds the signal underneath.
      for (const term of alertSignals(r.expr)) expect(term, `${r.alert}: ${r.expr}`).not.toMatch(/(==|!=|>=|<=|>|<)\s*[-+]?\d/);
    }
    // Labels: those the conditions name exist; those the annotations use survive the aggregation.
    const known = knownLabels();
    for (const r of rules) {
      expect(unknownLabels(r.expr, known), r.alert).toEqual([]);
      const by = [...r.expr.matchAll(/\bby\s*\(([^)]*)\)/g)].map((m) => new Set(m[1]!.split(',').map((x) => x.trim())));
      const metric = /\b(douane_\w+|up)\b/.exec(r.expr)![1]!;
      const available = by.length ? [...by[0]!].filter((l) => by.every((b) => b.has(l))) : [...known.get(metric)!];
      for (const used of JSON.stringify(r.annotations).matchAll(/\$labels\.(\w+)/g)) expect(available, `${r.alert}: $labels.${used[1]}`).toContain(used[1]);
    }
    expect(unknownLabels('sum by (kind) (rate(douane_lifecycle_calls_total{reslt!="ok"}[5m]))', known)).toEqual([
      'douane_lifecycle_calls_total has no label reslt',
      'by/without (kind): no metric of the expression has it',
    ]);

    const names = rules.map((r) => r.alert);
    for (const wanted of ['DouaneDown', 'DouaneClamdDown', 'DouaneNoClamd', 'DouaneUpstreamErrors', 'DouaneSuspensionSpike', 'DouaneCircuitBreakerOpen', 'DouanePolicyReloadFailed', 'DouaneLimiterInsurance', 'DouaneRedisDown', 'DouaneOutboxGrowing', 'DouaneOutboxJobTooOld']) {
      expect(names).toContain(wanted);
    }
    expect(new Set(names).size).toBe(names.length);
    expect(alertSignals('a{x!="1"} > 0 and sum(b) by (c) == 1')).toEqual(['a{x!="1"}', 'sum(b) by (c)']);
    expect(alertSignals('up{job="douane"} == 0')).toEqual(['up{job="douane"}']);
    expect(alertSignals('x / y > bool 0.2')).toEqual(['x / y']);
  });

  it('grafana/prometheus.yml is a valid Prometheus configuration scraping douane:9725 with the alert rules', () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-promcfg-'));
    try {
      const text = readFileSync('grafana/prometheus.yml', 'utf8');
      const cfg = parseYaml(text) as { rule_files: string[]; scrape_configs: { job_name: string; static_configs: { targets: string[] }[] }[] };
      expect(cfg.rule_files).toEqual(['/etc/prometheus/alerts.yaml']);
      const douane = cfg.scrape_configs.find((s) => s.job_name === JOB);
      expect(douane?.static_configs.flatMap((s) => s.targets)).toEqual(['douane:9725']);
      // promtool resolves rule_files on this machine: point it at the repository's file.
      writeFileSync(join(dir, 'prometheus.yml'), text.replaceAll('/etc/prometheus/alerts.yaml', resolve(ALERTS)));
      const r = spawnSync('promtool', ['check', 'config', join(dir, 'prometheus.yml')], { encoding: 'utf8' });
      expect(r.status, r.stdout + r.stderr).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the dashboard: schema, datasource, layout, Grafana provisioning, rules and metrics it refers to', async () => {
    const d = readDashboard();
    expect(d.title).toBe('Douane — abuse overview');
    expect(d.schemaVersion).toBeGreaterThanOrEqual(36);
    const dsVar = d.templating.list.find((v) => v.type === 'datasource');
    expect(dsVar).toMatchObject({ name: 'datasource', query: 'prometheus', current: { value: 'prometheus' } });
    const panels = allPanels(d);
    const ids = panels.map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    for (const p of panels) {
      if (p.type === 'row') continue;
      expect(p.datasource, p.title).toEqual({ type: 'prometheus', uid: '${datasource}' });
      expect(p.targets?.length, p.title).toBeGreaterThan(0);
      expect(p.gridPos!.x + p.gridPos!.w, p.title).toBeLessThanOrEqual(24);
    }
    // Provisioning: the datasource uid the variable defaults to, and the folder compose mounts.
    const ds = parseYaml(readFileSync('grafana/provisioning/datasources/prometheus.yaml', 'utf8')) as { datasources: { uid: string; type: string; url: string }[] };
    expect(ds.datasources).toContainEqual(expect.objectContaining({ uid: 'prometheus', type: 'prometheus', url: 'http://prometheus:9090' }));
    const prov = parseYaml(readFileSync('grafana/provisioning/dashboards/douane.yaml', 'utf8')) as { providers: { type: string; options: { path: string } }[] };
    expect(prov.providers[0]).toMatchObject({ type: 'file', options: { path: '/var/lib/grafana/dashboards' } });

    // Rules named by the dashboard or the alerts exist in the shipped policy (not only in the test's).
    const shipped = new Set(loadPolicy('policies').rules.map((r) => r.id));
    const text = JSON.stringify(d) + readFileSync(ALERTS, 'utf8');
    for (const m of text.matchAll(/rule=~?\\?"([^"\\]+)\\?"/g)) for (const id of m[1]!.split('|')) expect(shipped, `rule ${id}`).toContain(id);

    // Every label a selector or an aggregation names exists on its metric.
    const known = knownLabels();
    const labelProblems = dashboardExpressions(d).flatMap((e) => unknownLabels(toPromQL(e.expr), known).map((p) => `${e.where}: ${p}`));
    expect(labelProblems).toEqual([]);

    // Every metric family Douane defines appears on the dashboard.
    const families = await everyMetric().registry.getMetricsAsJSON();
    const exprs = dashboardExpressions(d).map((e) => e.expr).join('\n');
    const missing: string[] = [];
    for (const f of families) {
      const name = String(f.type) === 'histogram' ? `${f.name}_bucket` : f.name;
      if (!new RegExp(`\\b${name}\\b`).test(exprs)) missing.push(name);
    }
    expect(missing, 'metrics without a panel').toEqual([]);
  });
});

// ------------------------------------------------------------------ the deployment files

interface ComposeService {
  build?: string | { context: string; dockerfile?: string };
  image?: string;
  volumes?: string[];
  ports?: string[];
  environment?: Record<string, string>;
}

/** A bind mount's host path with `${VAR:-default}` resolved to its default (as compose does without VAR). */
function hostPath(source: string): string {
  return source.replace(/\$\{[A-Z0-9_]+:-([^}]*)\}/g, '$1');
}

function mounts(s: ComposeService): { source: string; target: string; bind: boolean }[] {
  return (s.volumes ?? []).map((v) => {
    const [source, target] = hostPath(v).split(':') as [string, string];
    return { source, target, bind: source.startsWith('.') || source.startsWith('/') };
  });
}

function dockerfile(): { final: string[]; all: string[] } {
  const lines = readFileSync('Dockerfile', 'utf8').replace(/\\\n/g, ' ').split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
  const lastFrom = lines.map((l, i) => (/^FROM\b/i.test(l) ? i : -1)).filter((i) => i >= 0).pop()!;
  return { final: lines.slice(lastFrom), all: lines };
}

describe('Dockerfile, compose.yaml and deploy/douane.compose.yaml agree', () => {
  it('what the Dockerfile copies exists (dist/ after npm run build), and its entry point is built', () => {
    const { all, final } = dockerfile();
    for (const line of all.filter((l) => /^COPY\b/i.test(l))) {
      const args = line.split(/\s+/).slice(1);
      const from = args.find((a) => a.startsWith('--from='));
      const paths = args.filter((a) => !a.startsWith('--'));
      const sources = paths.slice(0, -1);
      if (from) {
        // COPY --from=build /app/dist ./dist: the build stage's `npm run build`, i.e. our dist/.
        expect(sources).toEqual(['/app/dist']);
        expect(existsSync('dist/cli.js'), 'dist/cli.js (run npm run build)').toBe(true);
      } else for (const s of sources) expect(existsSync(s), `${line}: ${s}`).toBe(true);
    }
    const entry = final.find((l) => /^ENTRYPOINT\b/i.test(l))!;
    expect(JSON.parse(entry.replace(/^ENTRYPOINT\s+/i, ''))).toEqual(['node', 'dist/cli.js']);
    expect(existsSync('dist/cli.js')).toBe(true);
    expect(final.some((l) => /^USER\s+node$/i.test(l))).toBe(true);
  });

  it('compose: the services, mounted host paths, published ports, and the mounted configuration', () => {
    const compose = parseYaml(readFileSync('compose.yaml', 'utf8')) as { services: Record<string, ComposeService> };
    const s = compose.services;
    expect(Object.keys(s).sort()).toEqual(['clamav', 'douane', 'grafana', 'mta', 'prometheus', 'redis']);
    expect(s.douane!.build === '.' || (typeof s.douane!.build === 'object' && s.douane!.build.context === '.')).toBe(true);
    expect(s.clamav!.image).toMatch(/^clamav\/clamav:/);

    // Every host path compose mounts exists — except the TLS directory, which holds the operator's own
    // certificate and key (deploy/douane.compose.yaml says how to provide them) and is never committed.
    const { final } = dockerfile();
    for (const [name, svc] of Object.entries(s)) {
      for (const m of mounts(svc).filter((x) => x.bind)) {
        if (name === 'douane' && m.target === '/etc/douane/tls') continue;
        expect(existsSync(m.source), `${name}: ${m.source}`).toBe(true);
      }
    }

    // Douane's mounts: the configuration where the image's CMD reads it, policies where it says.
    const cmd = JSON.parse(final.find((l) => /^CMD\b/i.test(l))!.replace(/^CMD\s+/i, '')) as string[];
    const configPath = cmd[cmd.indexOf('--config') + 1];
    const dm = mounts(s.douane!);
    const configMount = dm.find((m) => m.target === configPath);
    expect(configMount?.source).toBe('./deploy/douane.compose.yaml');
    const config = parseYaml(readFileSync('deploy/douane.compose.yaml', 'utf8')) as {
      listeners: Record<string, { mode: string; address: string; port: number }>;
      tls: { cert: string; key: string; insecure_dev?: boolean };
      upstream: { host: string };
      clamd: { hosts: { host: string; port: number }[] };
      limits: { redis: { url: string } };
      admin: { address: string; port: number };
      state_dir: string;
      spool: { dir: string };
      policy: { dir: string };
    };
    expect(dm.find((m) => m.target === config.policy.dir)?.source).toBe('./policies');
    expect(config.tls.insecure_dev ?? false).toBe(false);
    for (const f of [config.tls.cert, config.tls.key]) expect(f.startsWith('/etc/douane/tls/')).toBe(true);
    expect(dm.some((m) => m.target === '/etc/douane/tls')).toBe(true);
    // state_dir and spool on volumes, in directories the image creates for its `node` user.
    const mkdir = final.find((l) => /^RUN\s+mkdir\b/i.test(l))!;
    for (const dir of [config.state_dir, config.spool.dir]) {
      expect(dm.some((m) => m.target === dir && !m.bind), `${dir} on a volume`).toBe(true);
      expect(mkdir).toContain(dir);
    }
    // Dependencies are the compose services.
    expect(s[config.upstream.host]).toBeDefined();
    expect(config.clamd.hosts).toEqual([{ host: 'clamav', port: 3310 }]);
    expect(config.limits.redis.url).toBe('redis://redis:6379');

    // Ports: what compose publishes is what the configuration listens on and the Dockerfile exposes.
    const exposed = new Set(final.filter((l) => /^EXPOSE\b/i.test(l)).flatMap((l) => l.split(/\s+/).slice(1)).map(Number));
    const published = (s.douane!.ports ?? []).map((p) => {
      const parts = p.split(':');
      return { ip: parts.length === 3 ? parts[0] : undefined, host: Number(parts.at(-2)), container: Number(parts.at(-1)) };
    });
    const byContainer = new Map(published.map((p) => [p.container, p]));
    for (const p of published) expect(exposed, `container port ${p.container}`).toContain(p.container);
    const { submission, submissions } = config.listeners;
    expect(submission).toMatchObject({ mode: 'starttls', address: '0.0.0.0' });
    expect(submissions).toMatchObject({ mode: 'tls', address: '0.0.0.0' });
    expect(byContainer.get(submission!.port)?.host).toBe(587);
    expect(byContainer.get(submissions!.port)?.host).toBe(465);
    for (const l of Object.values(config.listeners)) expect(exposed).toContain(l.port);
    expect(config.admin).toMatchObject({ address: '0.0.0.0', port: 9725 });
    expect(byContainer.get(config.admin.port)).toEqual({ ip: '127.0.0.1', host: 9725, container: 9725 });
    // The image's HEALTHCHECK asks the admin endpoint inside the container.
    expect(final.find((l) => /^HEALTHCHECK\b/i.test(l))).toContain(`http://127.0.0.1:${config.admin.port}/healthz`);
    // Published ports of the other services: loopback only.
    for (const [name, svc] of Object.entries(s)) if (name !== 'douane') for (const p of svc.ports ?? []) expect(p, name).toMatch(/^127\.0\.0\.1:/);

    // Prometheus and Grafana get the files their configurations name.
    const pm = mounts(s.prometheus!);
    expect(pm.find((m) => m.target === '/etc/prometheus/prometheus.yml')?.source).toBe('./grafana/prometheus.yml');
    expect(pm.find((m) => m.target === '/etc/prometheus/alerts.yaml')?.source).toBe('./grafana/alerts.yaml');
    const gm = mounts(s.grafana!);
    expect(gm.find((m) => m.target === '/etc/grafana/provisioning')?.source).toBe('./grafana/provisioning');
    expect(gm.find((m) => m.target === '/var/lib/grafana/dashboards')?.source).toBe('./grafana/dashboards');
  });

  it('douane config check accepts deploy/douane.compose.yaml (its certificate is mounted in the container, not here)', () => {
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('DOUANE_')));
    const r = spawnSync(process.execPath, ['dist/cli.js', 'config', 'check', 'deploy/douane.compose.yaml', '--without-files'], { encoding: 'utf8', env });
    expect(r.status, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(/deploy\/douane\.compose\.yaml: ok/);
    // Without the flag it looks for the certificate, as serve would, and says where the path came from.
    const here = spawnSync(process.execPath, ['dist/cli.js', 'config', 'check', 'deploy/douane.compose.yaml'], { encoding: 'utf8', env });
    expect(here.status).toBe(1);
    expect(here.stderr).toMatch(/^deploy\/douane\.compose\.yaml:\d+:\d+: tls\.cert cannot be read: ENOENT/);
  });
});

// ------------------------------------------------------------------ a real Prometheus scraping a real Douane

const POLICY = `# The test policy: one rule of each kind the dashboard shows, with the shipped rules' ids.
plans:
  basic:
    messages_per_minute: 1000
    messages_per_hour: 10000
    messages_per_day: 100000
    recipients_per_message: 100
    recipients_per_hour: 10000
    recipients_per_day: 100000
    recipient_domains_per_hour: 1000
    bytes_per_day: 50M
    concurrent_sessions: 100
default_plan: basic
accounts:
  limited@example.test: { messages_per_minute: 2 }
rules:
  - id: account.locked
    description: locked in the lifecycle API
    article: "4.6"
    when: { account.status: { in: [locked, lockout] } }
    action: reject
    reason: account.suspended
  - id: limits.message-rate
    description: message limits
    article: "4.6"
    when: { limits.exceeded: { empty: false } }
    action: tempfail
    reason: limit.rate
    strike: limit_reached
  - id: malware.found
    description: The antivirus found malware.
    article: "4.6"
    when: { scan.result: infected }
    action: quarantine
    reason: message.malware
    strike: malware
  - id: from.not-owned
    description: "From: names an address the account does not own"
    article: "4.1"
    when: { from.aligned: false, account.trusted_submitter: false }
    action: reject
    reason: from.not_owned
    strike: spoofing
  - id: bulk.campaign
    description: one content to more than 20 recipients from one account
    article: "4.6"
    when: { bulk.account_recipients: { gt: 20 }, account.bulk_exempt: false }
    action: reject
    reason: bulk.campaign
    strike: bulk
  - id: content.phishing-lure
    description: phishing wording with a link, watched
    article: "4.3"
    when:
      all:
        - subject: { matches: 'verify your account' }
        - urls.count: { gt: 0 }
    action: reject
    reason: content.forbidden
    mode: monitor
strikes:
  window: 1h
  events:
    malware: { weight: 10 }
    spoofing: { weight: 3 }
    bulk: { weight: 8 }
    limit_reached: { weight: 1 }
  ladder:
    - { at: 10, action: notify }
    - { at: 30, action: suspend_account }
`;

const CAMPAIGN = [
  'From: shop@example.test',
  'Subject: -40% sur toute la boutique ce week-end',
  '',
  'Bonjour,',
  '',
  "Profitez de -40% sur toute la boutique jusqu'au 31 mars avec le code PROMO2025.",
  "Plus de 2 000 articles en stock, livraison offerte dès 49 euros d'achat.",
  'Voir les offres : https://shop.example.test/promo',
  '',
].join('\r\n');

describe('against a real Prometheus scraping a real Douane', () => {
  let clamd: ClamdInstance;
  let clamdStopped = false;
  let redis: RedisInstance;
  let upstream: FakeUpstream;
  let zimbra: FakeZimbra;
  let gw: TestGateway;
  let admin: AdminServer;
  let prom: PrometheusInstance;
  let baseDir: string;
  let policyDir: string;
  let deadClamd: string;

  beforeAll(async () => {
    baseDir = mkdtempSync(join(tmpdir(), 'douane-prom-'));
    policyDir = join(baseDir, 'policies');
    mkdirSync(policyDir);
    writeFileSync(join(policyDir, 'policy.yaml'), POLICY);
    // A clamd socket nobody listens on (a socket path, not a port: a free port could be taken meanwhile).
    deadClamd = join(baseDir, 'no-clamd.sock');
    [clamd, redis] = await Promise.all([startClamd(), startRedis()]);
    upstream = await FakeUpstream.start({
      users: { 'user1@example.test': 'secret1' },
      mail: (from) => (from === 'drop@example.test' ? 'drop' : from === 'full@example.test' ? '452 4.3.1 Insufficient system storage' : undefined),
      auth: (user) => (user === 'sasl-down@example.test' ? '454 4.7.0 Temporary authentication failure' : undefined),
    });
    zimbra = await FakeZimbra.start();
    for (const name of ['user1@example.test', 'user2@example.test', 'malware@example.test']) zimbra.addAccount({ name });
    gw = await startGateway(upstream.port, {
      // A first clamd that is down: every scan fails over to the real one (scan errors, failovers, and a
      // scanner at douane_clamd_up 0 from the start).
      clamd: { hosts: [{ socket: deadClamd }, { host: '127.0.0.1', port: clamd.port }], timeout: '10s' },
      limits: { redis: { url: redis.url }, deadline: '300ms' },
      policy: { dir: policyDir, watch: false },
      lifecycle: { adapter: 'zimbra', timeout: '2s', status_cache: '0s', zimbra: { url: zimbra.url, admin_user: zimbra.adminUser, admin_password: zimbra.adminPassword } },
      enforcement: {
        contact: 'abuse@provider.test',
        provider: 'TestHost',
        notify: { abuse_team: ['abuse-team@provider.test'], from: 'abuse@provider.test' },
        outbox: { retry_min: '100ms', retry_max: '500ms' },
      },
      smtp: { max_connections_per_ip: 500 },
      log: { level: 'info' },
    });
    admin = new AdminServer({ address: '127.0.0.1', port: 0 }, gw.metrics, createLogger({ level: 'silent' }));
    for (const [name, probe] of Object.entries(gw.gateway.readinessProbes())) admin.addProbe(name, probe);
    admin.setAccounts(gw.gateway.enforcer);
    await admin.start();
    // Every `for:` shortened to 2s in Prometheus' copy of the rules: alerts fire within seconds here,
    // while the file keeps its production values (1m and more).
    prom = await startPrometheus({ targets: [`127.0.0.1:${admin.port}`], job: JOB, rules: ALERTS, forOverride: '2s' });
  }, 90_000);

  afterAll(async () => {
    await prom?.stop();
    await admin?.stop();
    await gw?.stop();
    await Promise.all([upstream?.stop(), zimbra?.stop(), clamdStopped ? undefined : clamd?.stop(), redis?.stop()]);
    if (baseDir) rmSync(baseDir, { recursive: true, force: true });
  });

  /** One transaction on the trusted listener (the account is the envelope sender). */
  async function send(from: string, message: string, rcpts = ['friend@example.net']): Promise<{ mail: string; data: string }> {
    const c = await RawSmtp.connect(gw.port('trusted'));
    try {
      await c.reply();
      await c.command('EHLO t');
      const mail = await c.command(`MAIL FROM:<${from}>`);
      let data = '';
      if (mail.startsWith('250')) {
        for (const r of rcpts) await c.command(`RCPT TO:<${r}>`);
        await c.command('DATA');
        c.write(message + '\r\n.\r\n');
        data = await c.reply(20_000);
      }
      return { mail, data };
    } finally {
      c.close();
    }
  }

  /** AUTH PLAIN on the TLS or STARTTLS listener, then a message if AUTH succeeded. */
  async function sendAuthenticated(listener: 'submissions' | 'submission', user: string, password: string): Promise<{ auth: string; data: string }> {
    const c = await RawSmtp.connect(gw.port(listener), { tls: listener === 'submissions' });
    try {
      await c.reply();
      await c.command('EHLO t');
      if (listener === 'submission') {
        expect(await c.command('STARTTLS')).toMatch(/^220/);
        await c.starttls();
        await c.command('EHLO t');
      }
      const auth = await c.command(`AUTH PLAIN ${Buffer.from(`\0${user}\0${password}`).toString('base64')}`);
      let data = '';
      if (auth.startsWith('235')) {
        await c.command(`MAIL FROM:<${user}>`);
        await c.command('RCPT TO:<friend@example.net>');
        await c.command('DATA');
        c.write(`From: ${user}\r\nSubject: authenticated\r\n\r\nHello from ${listener}.\r\n.\r\n`);
        data = await c.reply(20_000);
      }
      return { auth, data };
    } finally {
      c.close();
    }
  }

  async function until(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 15_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!(await cond())) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  const clean = (from: string, subject = 'hello') => `From: ${from}\r\nSubject: ${subject}\r\n\r\nJust a note.\r\n`;
  const eicar = (from: string) => mimeMessage({ from, subject: 'invoice', attachments: [{ name: 'invoice.com', content: Buffer.from(EICAR) }] });

  it('carries a representative mix of traffic', async () => {
    // Clean mail on each listener; a failed AUTH.
    for (let i = 0; i < 3; i++) expect((await send('user1@example.test', clean('user1@example.test'))).data).toMatch(/^250 /);
    expect(await sendAuthenticated('submissions', 'user1@example.test', 'secret1')).toMatchObject({ auth: expect.stringMatching(/^235/), data: expect.stringMatching(/^250 /) });
    expect(await sendAuthenticated('submission', 'user1@example.test', 'secret1')).toMatchObject({ auth: expect.stringMatching(/^235/), data: expect.stringMatching(/^250 /) });
    expect((await sendAuthenticated('submissions', 'user1@example.test', 'wrong')).auth).toMatch(/^535 /);

    // A spoofed From:, a phishing lure (monitor mode: relayed, counted as "would").
    expect((await send('user2@example.test', readFileSync('fixtures/messages/spoofed-from.eml', 'latin1').replace(/\r?\n/g, '\r\n').trimEnd())).data).toMatch(/^550 5\.7\.1 .*rule from\.not-owned/);
    expect((await send('user2@example.test', `From: user2@example.test\r\nSubject: Please verify your account\r\n\r\nLog in at https://login.example.test/verify today.\r\n`)).data).toMatch(/^250 /);

    // An account over its messages-per-minute limit.
    for (let i = 0; i < 2; i++) expect((await send('limited@example.test', clean('limited@example.test'))).data).toMatch(/^250 /);
    expect((await send('limited@example.test', clean('limited@example.test'))).mail).toMatch(/^450 4\.7\.1 .*rule limits\.message-rate/);

    // A bulk campaign: 10 + 10 recipients pass, the third copy takes it to 30 > 20.
    const rcpts = (n: number) => Array.from({ length: 10 }, (_, i) => `client${n * 10 + i}@example.net`);
    expect((await send('shop@example.test', CAMPAIGN, rcpts(0))).data).toMatch(/^250 /);
    expect((await send('shop@example.test', CAMPAIGN, rcpts(1))).data).toMatch(/^250 /);
    expect((await send('shop@example.test', CAMPAIGN, rcpts(2))).data).toMatch(/^550 5\.7\.1 .*rule bulk\.campaign/);

    // EICAR three times: quarantined, strikes, notified, then locked in Zimbra; refused afterwards.
    for (let i = 0; i < 3; i++) expect((await send('malware@example.test', eicar('malware@example.test'))).data).toMatch(/^554 5\.7\.1 .*malware/);
    await until('the account is locked in Zimbra', () => zimbra.account('malware@example.test')!.status === 'locked');
    expect((await send('malware@example.test', clean('malware@example.test'))).mail).toMatch(/^550 5\.7\.1 Sending is suspended/);
    await until('notices sent and the outbox empty', () => gw.gateway.outbox.jobs().length === 0 && upstream.messages.some((m) => m.from === 'abuse@provider.test'));

    // The MTA tempfails a message (a full queue) and a login (its SASL backend down).
    expect((await send('full@example.test', clean('full@example.test'))).mail).toMatch(/^452 4\.3\.1 Insufficient system storage/);
    expect((await sendAuthenticated('submissions', 'sasl-down@example.test', 'x')).auth).toMatch(/^454 4\.7\.0 /);

    // The upstream drops a session; the lifecycle API fails once.
    expect((await send('drop@example.test', clean('drop@example.test'))).mail).toMatch(/^4\d\d /);
    zimbra.failNext(1, '500');
    expect((await send('user1@example.test', clean('user1@example.test'))).data).toMatch(/^250 /);

    // Redis frozen for two messages, a few scrapes apart: the in-process insurance decides. (Two, because
    // a labelled counter appears at its first increment, and rate() cannot see the increase that made a
    // series appear: DouaneLimiterInsurance needs the counter to move while Prometheus watches it, as it
    // does while Redis stays down.)
    redis.pause();
    try {
      expect((await send('user1@example.test', clean('user1@example.test'))).data).toMatch(/^250 /);
      await new Promise((r) => setTimeout(r, 2500));
      expect((await send('user1@example.test', clean('user1@example.test'))).data).toMatch(/^250 /);
    } finally {
      redis.resume();
    }
    await gw.waitForLog((l) => l.event === 'limiter_insurance' || l.event === 'limits_degraded' || l.event === 'limits_failed');

    // A policy change, reloaded.
    writeFileSync(join(policyDir, 'policy.yaml'), POLICY + '# changed\n');
    expect(await gw.gateway.policies.reload('test')).toMatchObject({ ok: true, changed: true });

    const metrics = await gw.metrics.registry.metrics();
    expect(metrics).toMatch(/douane_scan_failovers_total [1-9]/);
    expect(metrics).toMatch(/douane_upstream_errors_total\{kind="\w+"\} [1-9]/);
    expect(metrics).toMatch(/douane_lifecycle_calls_total\{adapter="zimbra",op="\w+",result="(?!ok")\w+"\} [1-9]/);
    expect(metrics).toMatch(/douane_limiter_insurance_total\{op="\w+"\} [1-9]/);
    expect(metrics).toMatch(/douane_policy_would_total\{rule="content\.phishing-lure",action="reject"\} 1/);
  }, 90_000);

  it('promtool check metrics finds no problem in /metrics', async () => {
    const text = await (await fetch(`http://127.0.0.1:${admin.port}/metrics`)).text();
    const r = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
    expect(r.stdout + r.stderr).toBe('');
    expect(r.status).toBe(0);
    // Every family exists (HELP and TYPE), so a panel never waits for a metric that is not registered.
    for (const m of new Metrics({ version: 't', defaultMetrics: false }).registry.getMetricsAsArray()) expect(text).toContain(`# TYPE ${m.name} `);
    // Latencies reach the longest default timeouts (upstream data 600 s): a frozen clamd is not a 30 s p99.
    expect(text).toMatch(/^douane_scan_duration_seconds_bucket\{le="600"\} /m);
  });

  it('the process metrics `douane serve` adds (prom-client defaults) have only the known prom-client lint problems', async () => {
    // `douane serve` also registers prom-client's default metrics (process_*, nodejs_*); the test gateway
    // does not. Three of prom-client's gauges end in _total, which promtool flags: reported, not ours.
    const text = await new Metrics({ version: 't' }).registry.metrics();
    const r = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
    const problems = (r.stdout + r.stderr).split('\n').filter(Boolean);
    const known = /^nodejs_active_(handles|requests|resources)_total non-counter metrics should not have "_total" suffix$/;
    expect(text).toMatch(/^process_cpu_seconds_total /m);
    expect(text).toMatch(/^process_resident_memory_bytes /m);
    expect(problems.filter((p) => !known.test(p))).toEqual([]);
  });

  it('every dashboard and alert expression returns series from the real Prometheus', async () => {
    const d = readDashboard();
    const panelExprs = dashboardExpressions(d).map((e) => ({ ...e, promql: toPromQL(e.expr) }));
    for (const e of panelExprs) expect(e.promql, `${e.where}: unknown Grafana variable`).not.toContain('$');

    // Alerts: the full condition is evaluated; if it is not true now (empty result), every signal under it
    // (the condition without its final comparison, each side of an `and`) must return series instead, so
    // that a typo in a metric or label name cannot hide behind "not firing".
    const rules = readAlertRules();
    type Probe = { where: string; promql: string; labelOf?: string };
    const probes: Probe[] = [];
    for (const e of panelExprs) {
      // label_values(selector, label): Grafana's variable query, not PromQL. Its selector must return
      // series carrying the label.
      const lv = /^label_values\((.+),\s*(\w+)\)$/.exec(e.promql.trim());
      probes.push(lv ? { where: e.where, promql: lv[1]!, labelOf: lv[2]! } : { where: e.where, promql: e.promql });
    }

    const dead = async (): Promise<string[]> => {
      const out: string[] = [];
      for (const p of probes) {
        const r = await prom.query(p.promql);
        if (r.error) out.push(`${p.where}: ${p.promql}\n    error: ${r.error}`);
        else if (r.series.length === 0) out.push(`${p.where}: ${p.promql}\n    no series`);
        else if (p.labelOf && !r.series.some((s) => s.metric[p.labelOf!])) out.push(`${p.where}: ${p.promql}\n    no series with label ${p.labelOf}`);
      }
      for (const rule of rules) {
        const full = await prom.query(rule.expr);
        if (full.error) {
          out.push(`alert ${rule.alert}: ${rule.expr}\n    error: ${full.error}`);
          continue;
        }
        if (full.series.length) continue; // the condition holds now: its series exist
        for (const signal of alertSignals(rule.expr)) {
          const r = await prom.query(signal);
          if (r.error || r.series.length === 0) out.push(`alert ${rule.alert} (condition not true now), signal: ${signal}\n    ${r.error ?? 'no series'}`);
        }
      }
      return out;
    };

    // rate() needs two samples of a series inside its window: poll (bounded) until every expression
    // answers, then report the ones that never did.
    const deadline = Date.now() + 30_000;
    let missing = await dead();
    while (missing.length && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 1000));
      missing = await dead();
    }
    expect(missing, `dead expressions:\n${missing.join('\n')}`).toEqual([]);
    expect(probes.length).toBeGreaterThan(50);

    // Prometheus' own rule evaluation: no rule in error (bad vector matching and the like).
    const health = (await prom.rules()).filter((r) => r.type === 'alerting');
    expect(health.length).toBe(rules.length);
    expect(health.filter((r) => r.health !== 'ok').map((r) => `${r.name}: ${r.health} ${r.lastError ?? ''}`)).toEqual([]);
  }, 60_000);

  it('clamd stopped: DouaneClamdDown and DouaneNoClamd fire; a failed policy reload fires DouanePolicyReloadFailed', async () => {
    const scanner = `127.0.0.1:${clamd.port}`;
    // The clamd that was down from the start is reported, and so is the insurance used while Redis was
    // frozen (for: 2s in this Prometheus).
    await prom.waitForAlert((a) => a.labels.alertname === 'DouaneClamdDown' && a.labels.scanner === deadClamd && a.state === 'firing', 15_000);
    await prom.waitForAlert((a) => a.labels.alertname === 'DouaneLimiterInsurance' && a.state === 'firing', 15_000);
    const before = await prom.alerts();
    expect(before.filter((a) => a.labels.alertname === 'DouaneNoClamd')).toEqual([]);
    expect(before.filter((a) => a.labels.alertname === 'DouaneClamdDown' && a.labels.scanner === scanner)).toEqual([]);
    expect(before.filter((a) => a.labels.alertname === 'DouanePolicyReloadFailed')).toEqual([]);

    await clamd.stop();
    clamdStopped = true;
    writeFileSync(join(policyDir, 'broken.yaml'), 'rules: [ {id: "unterminated\n');
    expect((await gw.gateway.policies.reload('test')).ok).toBe(false);

    // Douane pings clamd every 10 s; Prometheus scrapes and evaluates every second; for: 2s.
    const down = await prom.waitForAlert((a) => a.labels.alertname === 'DouaneClamdDown' && a.labels.scanner === scanner && a.state === 'firing', 30_000);
    expect(down.labels).toMatchObject({ severity: 'warning', job: JOB, instance: `127.0.0.1:${admin.port}` });
    expect(down.annotations.summary).toContain(scanner);
    const none = await prom.waitForAlert((a) => a.labels.alertname === 'DouaneNoClamd' && a.state === 'firing', 15_000);
    expect(none.labels).toMatchObject({ severity: 'critical', job: JOB });
    const reload = await prom.waitForAlert((a) => a.labels.alertname === 'DouanePolicyReloadFailed' && a.state === 'firing', 15_000);
    expect(reload.labels.severity).toBe('warning');
  }, 60_000);
});
