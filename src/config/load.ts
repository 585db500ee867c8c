// Loads the configuration once at start: YAML file (or the embedded default) plus DOUANE_* environment
// overrides, validated against the schema, then frozen. Every problem names file:line:col and key, or the
// environment variable it came from.

import { accessSync, constants, readFileSync, statSync } from 'node:fs';
import { networkInterfaces, userInfo } from 'node:os';
import { isIPv4 } from 'node:net';
import { dirname, isAbsolute, resolve } from 'node:path';
import { createSecureContext } from 'node:tls';
import { parse as parseYamlScalar } from 'yaml';
import { processGroups, writersBesides } from '../data/private-dir.js';
import { canonicalIp } from '../validate/net.js';
import { formatPath, type Issue, type Path, type Schema } from '../validate/schema.js';
import { readYamlFile, ValidationError, YamlSource, type Problem } from '../validate/source.js';
import { EMBEDDED_DEFAULT } from './default.js';
import { configSchema, type Config } from './schema.js';

export const EMBEDDED_NAME = '(embedded default)';

/** Variables that are not settings. */
const ENV_NOT_SETTINGS = new Set(['DOUANE_CONFIG', 'DOUANE_HEALTHCHECK_URL', 'DOUANE_TLS_DIR']);

/**
 * Variables an orchestrator sets for each service whose name starts with douane (Kubernetes'
 * DOUANE_SERVICE_HOST, DOUANE_ADMIN_PORT_9725_TCP_ADDR…, Docker links' DOUANE_PORT…), when they name no
 * setting; and the value it gives a service's port variable, which no setting takes
 * (DOUANE_ADMIN_PORT=tcp://10.96.0.12:9725 for a service douane-admin, where admin.port is a setting).
 */
const ORCHESTRATOR_VARIABLE = /^DOUANE_(?:[A-Z0-9_]+_)?(?:SERVICE_(?:HOST|PORT)(?:_[A-Z0-9_]+)?|PORT_\d+_(?:TCP|UDP|SCTP)(?:_(?:ADDR|PORT|PROTO))?)$/;
/** A service's own port variable (DOUANE_PORT, DOUANE_ADMIN_PORT…) when it holds the link's value. */
const SERVICE_LINK = { name: /^DOUANE_(?:[A-Z0-9_]+_)?PORT$/, value: /^(?:tcp|udp|sctp):\/\/[^/\s]+:\d+$/ };

export interface LoadedConfig {
  config: Readonly<Config>;
  /** the file it came from, or "(embedded default)" */
  source: string;
  /** environment variables that overrode a setting */
  overrides: string[];
}

/**
 * `files`: also check the files the configuration names (certificate, key, CA) as `serve` will use them.
 * Only serve and `config check` ask: the other commands run as people who may not read the TLS key.
 */
/**
 * files: check the files and directories named (serve, config check); writable: also that this user may
 * write to its directories — only where this user is the one that will, serve itself.
 */
export function loadConfig(opts: { file?: string; env?: Record<string, string | undefined>; files?: boolean; writable?: boolean } = {}): LoadedConfig {
  const env = opts.env ?? process.env;
  const file = opts.file ?? env.DOUANE_CONFIG;
  if (!file) return parseConfig(EMBEDDED_NAME, EMBEDDED_DEFAULT, env, opts);
  return parseConfig(file, readYamlFile(file), env, opts);
}

/** Validates configuration text (named for error messages) with the environment's overrides applied. */
export function parseConfig(name: string, text: string, env: Record<string, string | undefined> = {}, opts: { files?: boolean; writable?: boolean } = {}): LoadedConfig {
  const { source, value, problems } = YamlSource.parse(name, text);
  if (problems.length) throw new ValidationError(problems);

  const raw = (value ?? {}) as Record<string, unknown>;
  if (typeof raw !== 'object' || Array.isArray(raw)) {
    throw new ValidationError([{ file: name, line: 1, col: 1, key: '(top level)', message: 'must be a mapping of settings' }]);
  }
  // In the file only: a value from the environment is what it is, "$" and all.
  const fromFile = shellVariables(raw, []);
  const { applied, problems: envProblems } = applyEnvOverrides(raw, env);
  if (envProblems.length) throw new ValidationError(envProblems);

  const issues: Issue[] = fromFile.filter((i) => !applied.has(formatPath(i.path)));
  const config = configSchema.parse(raw, [], issues);
  if (issues.length || !config) {
    throw new ValidationError(issues.map((issue) => locate(issue, source, applied)));
  }
  const pathIssues = resolvePaths(config, name === EMBEDDED_NAME ? process.cwd() : dirname(resolve(name)), applied);
  const fileProblems = [...pathIssues, ...crossChecks(config), ...(opts.files && !pathIssues.length ? namedFileProblems(config, Boolean(opts.writable)) : [])].map((issue) => locate(issue, source, applied));
  if (fileProblems.length) throw new ValidationError(fileProblems);
  return { config: deepFreeze(config), source: name, overrides: [...applied.values()] };
}

/**
 * A relative path in the file is relative to the file, as in Prometheus' configuration: the same file then
 * means the same thing whatever directory serve was started in (a service manager starts it in /). One
 * from the environment is relative to the working directory, like any command-line path.
 */
function resolvePaths(config: Config, fileDir: string, applied: Map<string, string>): Issue[] {
  const issues: Issue[] = [];
  // Set by the environment: the key itself or a mapping around it (DOUANE_CLAMD='{hosts: [{socket: s}]}').
  const fromEnv = (path: Path) => path.some((_, i) => applied.has(formatPath(path.slice(0, i + 1))));
  const at = (path: Path, value: string | undefined, set: (v: string) => void) => {
    if (value === undefined || value === '' || isAbsolute(value)) return;
    // A shell expands "~"; nothing here does, and a directory literally named "~" would be made instead.
    if (value.startsWith('~')) issues.push({ path, message: `starts with "~", which is not expanded here: write the whole path (${value})` });
    else set(resolve(fromEnv(path) ? process.cwd() : fileDir, value));
  };
  at(['tls', 'cert'], config.tls.cert, (v) => (config.tls.cert = v));
  at(['tls', 'key'], config.tls.key, (v) => (config.tls.key = v));
  at(['upstream', 'ca'], config.upstream.ca, (v) => (config.upstream.ca = v));
  const { zimbra, http } = config.lifecycle;
  if (zimbra) at(['lifecycle', 'zimbra', 'ca'], zimbra.ca, (v) => (zimbra.ca = v));
  if (http) at(['lifecycle', 'http', 'ca'], http.ca, (v) => (http.ca = v));
  const noticeSmtp = config.enforcement.notify.smtp;
  if (noticeSmtp) at(['enforcement', 'notify', 'smtp', 'ca'], noticeSmtp.ca, (v) => (noticeSmtp.ca = v));
  at(['state_dir'], config.state_dir, (v) => (config.state_dir = v));
  at(['spool', 'dir'], config.spool.dir, (v) => (config.spool.dir = v));
  at(['policy', 'dir'], config.policy.dir, (v) => (config.policy.dir = v));
  if (config.clamd !== 'none') config.clamd.hosts.forEach((h, i) => at(['clamd', 'hosts', i, 'socket'], h.socket, (v) => (h.socket = v)));
  return issues;
}

/**
 * "${ZIMBRA_PASSWORD}" in the file would be taken literally (a password, a token that never matches):
 * Douane does not expand variables in the file; the environment sets any key as DOUANE_<PATH>.
 */
function shellVariables(value: unknown, path: (string | number)[]): Issue[] {
  if (typeof value === 'string') {
    if (!/\$\{[A-Za-z_][A-Za-z0-9_]*\}/.test(value)) return [];
    const name = `DOUANE_${path.map((p) => String(p).toUpperCase()).join('_')}`;
    return [{ path, message: `holds a shell variable, which is not expanded here: set ${name} in the environment instead, and remove the key or leave any value in the file` }];
  }
  if (Array.isArray(value)) return value.flatMap((v, i) => shellVariables(v, [...path, i]));
  if (value !== null && typeof value === 'object') return Object.entries(value).flatMap(([k, v]) => shellVariables(v, [...path, k]));
  return [];
}

/** Rules that involve more than one key. */
function crossChecks(config: Config): Issue[] {
  const issues: Issue[] = [];
  const tlsListener = Object.entries(config.listeners).find(([, l]) => l.mode !== 'trusted');
  if (tlsListener && !config.tls.insecure_dev && (!config.tls.cert || !config.tls.key)) {
    const why =
      'a STARTTLS or TLS listener needs a certificate and key (without one the SMTP library would fall back to a ' +
      'publicly known key). For a test machine only, set tls.insecure_dev: true to use a throwaway self-signed certificate';
    // Point at what is missing: the other half of a pair, or the listener that asks for TLS at all.
    if (config.tls.cert || config.tls.key) issues.push({ path: ['tls', config.tls.cert ? 'key' : 'cert'], message: `is required: ${why}` });
    else issues.push({ path: ['listeners', tlsListener[0], 'mode'], message: `is ${tlsListener[1].mode}, which needs tls.cert and tls.key: ${why}` });
  }

  // Two sockets on one port collide when their addresses overlap: the same address, or a wildcard
  // (0.0.0.0, ::) and any address of its family (:: takes IPv4 too, on Linux by default).
  const sockets: { what: string; path: (string | number)[]; address: string; port: number }[] = Object.entries(config.listeners).map(([name, l]) => ({ what: `listener "${name}"`, path: ['listeners', name, 'port'], address: l.address, port: l.port }));
  if (config.admin.enabled) sockets.push({ what: 'the admin endpoint', path: ['admin', 'port'], address: config.admin.address, port: config.admin.port });
  const v6 = (a: string) => a.includes(':');
  const overlap = (a: string, b: string) => a === b || a === '::' || b === '::' || (a === '0.0.0.0' && !v6(b)) || (b === '0.0.0.0' && !v6(a));
  sockets.forEach((s, i) => {
    if (s.port === 0) return;
    const other = sockets.slice(0, i).find((o) => o.port === s.port && overlap(o.address, s.address));
    if (other) issues.push({ path: s.path, message: `is already used by ${other.what} on ${other.address}:${other.port} (${s.address}:${s.port} overlaps it)` });
  });

  // The upstream being one of Douane's own listeners: every message would go round until a hop limit.
  // The address itself, or a wildcard listener that takes it: 0.0.0.0 any IPv4 address of this machine,
  // :: any address of it (IPv4 too, on Linux by default). localhost is either loopback address; another
  // host name is not looked up here.
  const local = (address: string) => /^127\./.test(address) || address === '::1' || interfaceAddresses().has(address);
  const takes = (listenerAddress: string, address: string) =>
    listenerAddress === address || (local(address) && (listenerAddress === '::' || (listenerAddress === '0.0.0.0' && isIPv4(address))));
  const reaches = (host: string, listenerAddress: string) =>
    (host === 'localhost' ? ['127.0.0.1', '::1'] : [canonicalIp(host)]).some((a) => takes(canonicalIp(listenerAddress), a));
  for (const key of ['port', 'trusted_port'] as const) {
    const port = config.upstream[key];
    const own = Object.entries(config.listeners).find(([, l]) => l.port === port && port !== 0 && reaches(config.upstream.host, l.address));
    if (own) issues.push({ path: ['upstream', key], message: `is ${port}, where listener "${own[0]}" listens: Douane would relay to itself (the upstream is the MTA behind it)` });
  }
  return issues;
}

/**
 * This machine's addresses. Reading them takes a netlink socket, which a sandbox may forbid (systemd's
 * RestrictAddressFamilies without AF_NETLINK): then none is known, and only loopback counts as this
 * machine's own, rather than the configuration failing with a system error.
 */
function interfaceAddresses(): Set<string> {
  try {
    return new Set(Object.values(networkInterfaces()).flatMap((list) => (list ?? []).map((i) => canonicalIp(i.address))));
  } catch {
    return new Set();
  }
}

/** The files serve will read: the listeners' certificate and key, the upstream's CA. */
function namedFileProblems(config: Config, writable: boolean): Issue[] {
  const issues: Issue[] = [];
  if (config.tls.cert && config.tls.key) issues.push(...certificateProblems(config.tls.cert, config.tls.key));
  const cas: [string | undefined, (string | number)[]][] = [
    [config.upstream.ca, ['upstream', 'ca']],
    [config.lifecycle.zimbra?.ca, ['lifecycle', 'zimbra', 'ca']],
    [config.lifecycle.http?.ca, ['lifecycle', 'http', 'ca']],
    [config.enforcement.notify.smtp?.ca, ['enforcement', 'notify', 'smtp', 'ca']],
  ];
  for (const [file, path] of cas) {
    if (!file) continue;
    const ca = readable(file);
    if (typeof ca === 'string') issues.push({ path, message: ca });
    // A key or a YAML file given by mistake is accepted by TLS as "no CA": every peer would then fail.
    else if (!ca.toString('latin1').includes('-----BEGIN CERTIFICATE-----')) issues.push({ path, message: `${file} holds no PEM certificate (-----BEGIN CERTIFICATE-----)` });
  }
  // Directories serve writes to, and creates if missing: a file in the way, or (checked by serve, the
  // user that writes there) a directory it cannot write to: a volume owned by root, a service user's rights.
  for (const [dir, path] of [[config.state_dir, ['state_dir']], [config.spool.dir, ['spool', 'dir']]] as const) {
    const problem = directoryProblem(dir, writable);
    if (problem) issues.push({ path: [...path], message: problem });
  }
  try {
    if (!statSync(config.policy.dir).isDirectory()) issues.push({ path: ['policy', 'dir'], message: `${config.policy.dir} is a file, not a directory of policy files` });
  } catch (err) {
    issues.push({ path: ['policy', 'dir'], message: `${config.policy.dir} cannot be read: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such directory' : (err as Error).message}` });
  }
  return issues;
}

/** Why `dir` could not be a directory (or, `writable`, be written to or created by this user); undefined when it can. */
function directoryProblem(dir: string, writable: boolean): string | undefined {
  const wanted = resolve(dir);
  const user = (() => {
    try {
      return userInfo().username;
    } catch {
      return `uid ${process.getuid?.() ?? '?'}`;
    }
  })();
  for (let at = wanted; ; ) {
    let isDirectory: boolean;
    try {
      isDirectory = statSync(at).isDirectory();
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      // Absent (or under a file): the nearest thing that exists above it decides.
      if ((code === 'ENOENT' || code === 'ENOTDIR') && dirname(at) !== at) {
        at = dirname(at);
        continue;
      }
      return `${dir} cannot be reached: ${(err as Error).message}`;
    }
    const made = at === wanted ? '' : `cannot be created: `;
    if (!isDirectory) return at === wanted ? `${dir} is a file, not a directory` : `${dir} ${made}${at} is a file`;
    // Whoever runs the check (config check may run as another user than serve): every user is wrong.
    if (!writable) return at === wanted && (statSync(at).mode & 0o002) !== 0 ? strangersProblem(dir, user, statSync(at).uid, new Set<number>()) : undefined;
    try {
      accessSync(at, constants.W_OK | constants.X_OK);
    } catch {
      return at === wanted ? `${dir} is not writable by ${user}, the user douane runs as` : `${dir} ${made}${at} is not writable by ${user}, the user douane runs as`;
    }
    if (at === wanted) return strangersProblem(dir, user);
    return undefined;
  }
}

/**
 * Messages, evidence and suspensions lie in these directories: another local user who owns one, or may
 * write in it, could read them or put their own in their place (a state file, a spool file between its
 * scan and its relay). Root may own one; its group may write in it when it is Douane's own (a volume
 * given to the service's group: root:douane 0770, Kubernetes' fsGroup); nobody else may.
 */
function strangersProblem(dir: string, user: string, uid = process.getuid?.() ?? 0, groups = processGroups()): string | undefined {
  const st = statSync(dir);
  const shown = (st.mode & 0o7777).toString(8).padStart(4, '0');
  if (st.uid !== uid && st.uid !== 0) return `${dir} belongs to uid ${st.uid}, not to ${user}, the user douane runs as: that user could read or replace what douane keeps there`;
  const who = writersBesides(st, groups);
  if (!who) return undefined;
  return `${dir} can be written by ${who} (mode ${shown}): they could replace what douane keeps there; take that away (${who === 'every user' ? 'chmod o-w' : "chmod g-w, or give the directory douane's group"})`;
}

/** The file's bytes, or why it cannot be read. */
function readable(file: string): Buffer | string {
  try {
    return readFileSync(file);
  } catch (err) {
    return `cannot be read: ${(err as Error).message}`;
  }
}

/** A certificate and key that serve would fail on: unreadable, not PEM, or not a pair. */
function certificateProblems(certFile: string, keyFile: string): Issue[] {
  const cert = readable(certFile);
  const key = readable(keyFile);
  const issues: Issue[] = [];
  if (typeof cert === 'string') issues.push({ path: ['tls', 'cert'], message: cert });
  if (typeof key === 'string') issues.push({ path: ['tls', 'key'], message: key });
  if (issues.length) return issues;
  // Each alone first, so that the error names the file at fault; then the pair.
  for (const [name, options] of [['cert', { cert }], ['key', { key }]] as const) {
    try {
      createSecureContext(options);
    } catch (err) {
      issues.push({ path: ['tls', name], message: `is not a PEM ${name === 'cert' ? 'certificate' : 'private key'} (${(err as Error).message})` });
    }
  }
  if (issues.length) return issues;
  try {
    createSecureContext({ cert, key });
  } catch (err) {
    issues.push({ path: ['tls', 'key'], message: `does not go with the certificate in tls.cert (${(err as Error).message})` });
  }
  return issues;
}

function locate(issue: Issue, source: YamlSource, applied: Map<string, string>): Problem {
  for (let n = issue.path.length; n > 0; n--) {
    const envName = applied.get(formatPath(issue.path.slice(0, n)));
    if (envName) return { file: `env ${envName}`, key: formatPath(issue.path), message: issue.message };
  }
  // A mapping the file does not have was made by an override below it (DOUANE_LISTENERS_NEW_PORT), or
  // made of the file's scalar (DOUANE_CLAMD_TIMEOUT over `clamd: none`): name it.
  const parent = formatPath(issue.path.slice(0, -1));
  if (issue.path.length > 1 && !source.holdsMapping(issue.path.slice(0, -1))) {
    for (const [path, envName] of applied) if (path.startsWith(parent + '.')) return { file: `env ${envName}`, key: formatPath(issue.path), message: issue.message };
  }
  return source.problem(issue);
}

/**
 * DOUANE_UPSTREAM_HOST=x sets upstream.host; DOUANE_LISTENERS_SUBMISSION_PORT=2587 sets
 * listeners.submission.port. Values are read as YAML scalars or flow lists ("[10.0.0.0/8, ::1]").
 */
export function applyEnvOverrides(
  raw: Record<string, unknown>,
  env: Record<string, string | undefined>,
): { applied: Map<string, string>; problems: Problem[] } {
  const applied = new Map<string, string>();
  const problems: Problem[] = [];
  for (const [name, value] of Object.entries(env)) {
    if (!name.startsWith('DOUANE_') || ENV_NOT_SETTINGS.has(name) || value === undefined || (SERVICE_LINK.name.test(name) && SERVICE_LINK.value.test(value))) continue;
    const tokens = name.slice('DOUANE_'.length).toLowerCase().split('_');
    const resolved = resolveEnvPath(configSchema as Schema<unknown>, tokens, []);
    if (!resolved && ORCHESTRATOR_VARIABLE.test(name)) continue;
    if (!resolved) {
      problems.push({ file: `env ${name}`, key: '(top level)', message: 'does not name a setting (e.g. DOUANE_UPSTREAM_HOST sets upstream.host)' });
      continue;
    }
    // An empty variable is nearly always one meant to be unset: taking it as "no value" would silently
    // drop the file's setting (an admin token, a limit).
    if (value.trim() === '') {
      problems.push({ file: `env ${name}`, key: formatPath(resolved.path), message: 'is empty: unset it to keep the file\'s value, or give one' });
      continue;
    }
    setIn(raw, resolved.path, envValue(value, resolved.schema));
    applied.set(formatPath(resolved.path), name);
  }
  return { applied, problems };
}

function resolveEnvPath(schema: Schema<unknown>, tokens: string[], path: Path): { path: Path; schema: Schema<unknown> } | undefined {
  if (tokens.length === 0) return (schema.fields || schema.values) && !schema.whole ? undefined : { path, schema };
  if (schema.fields) {
    for (const [key, field] of Object.entries(schema.fields)) {
      const keyTokens = key.split('_');
      if (keyTokens.every((t, i) => tokens[i] === t)) {
        const found = resolveEnvPath(field.schema, tokens.slice(keyTokens.length), [...path, key]);
        if (found) return found;
      }
    }
    return undefined;
  }
  if (schema.values) return resolveEnvPath(schema.values, tokens.slice(1), [...path, tokens[0]!]);
  return undefined;
}

function envValue(value: string, schema: Schema<unknown>): unknown {
  // A value the setting accepts as text stays text ("127.0.0.1", "30s"); otherwise read it as YAML (numbers, lists).
  if (schema.parse(value, [], []) !== undefined) return value;
  try {
    return parseYamlScalar(value);
  } catch {
    return value;
  }
}

function setIn(target: Record<string, unknown>, path: Path, value: unknown): void {
  let node = target;
  for (const part of path.slice(0, -1)) {
    const key = String(part);
    const next = node[key];
    if (typeof next !== 'object' || next === null || Array.isArray(next)) node[key] = {};
    node = node[key] as Record<string, unknown>;
  }
  node[String(path[path.length - 1])] = value;
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}
