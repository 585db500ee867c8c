// `douane serve`: load and validate the configuration, start the listeners, drain on SIGTERM/SIGINT.

import { loadConfig, EMBEDDED_NAME, type LoadedConfig } from '../config/load.js';
import { AdminServer } from '../admin.js';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { lockStateDir, type StateLock } from '../data/state-lock.js';
import { Gateway } from '../gateway.js';
import { createLogger, routeConsoleToLog, type Logger } from '../log.js';
import { Metrics } from '../metrics.js';
import { VERSION } from '../version.js';
import { flag, option, parseArgs, UsageError } from './args.js';

export const SERVE_HELP = `Usage: douane serve [--config FILE]

Runs the gateway. Without --config (or DOUANE_CONFIG), runs on the embedded default: listeners on
127.0.0.1:2587 (STARTTLS), :2465 (TLS) and :2525 (trusted), in front of an MTA on 127.0.0.1:587/25.
Any setting can be overridden with DOUANE_<PATH>, e.g. DOUANE_UPSTREAM_HOST=mta.internal.

Options:
  --config FILE   configuration file (YAML); see douane.example.yaml
  --help          this text

Signals: SIGTERM/SIGINT drain open transactions (shutdown.drain_timeout) and exit 0 (another SIGTERM
meanwhile does not cut the drain short; a second SIGINT exits at once, with 130); SIGHUP reloads
the policy and the TLS certificate (tls.cert, tls.key: new sessions get it); a bad policy or
certificate is refused and the one in force stays. The configuration file is read at start only: a
SIGHUP after it changed logs config_changed, and a restart applies it.`;

/** The gateway could not start (a port in use, a file it needs): the message says which key. */
export class StartError extends Error {}

export async function serve(argv: string[]): Promise<number> {
  const args = parseArgs(argv, { flags: ['help'], options: ['config'] });
  if (flag(args, 'help')) {
    console.log(SERVE_HELP);
    return 0;
  }
  // `douane serve my.yaml` would otherwise run on the embedded default and look as if it had worked.
  if (args.positional.length) throw new UsageError(`serve takes no argument "${args.positional[0]}"${args.positional[0]!.endsWith('.yaml') || args.positional[0]!.endsWith('.yml') ? ` (did you mean --config ${args.positional[0]}?)` : ''}`);
  const loaded = loadConfig({ file: option(args, 'config'), files: true, writable: true });
  const { config } = loaded;
  const logger = createLogger({ level: config.log.level, pretty: config.log.pretty });
  // Until serve returns, what libraries print goes to the log; the CLI's own messages after that (why
  // the gateway could not start) go to stderr as usual.
  const restoreConsole = routeConsoleToLog(logger);
  try {
    return await run(loaded, logger);
  } finally {
    restoreConsole();
  }
}

/** Starts the gateway and its admin endpoint; resolves with the exit code once stopped by a signal. */
async function run(loaded: ReturnType<typeof loadConfig>, logger: Logger): Promise<number> {
  const { config } = loaded;
  const configText = readConfigText(loaded);
  // A fault no handler caught leaves the process in a state nobody knows: say what it was, in the log
  // where everything else is, and exit for the supervisor to restart it (open sessions get no 250 they
  // should not: a 250 is only ever sent after the upstream's).
  const crash = (kind: string) => (err: unknown) => {
    logger.fatal({ event: 'crash', kind, err: (err as Error)?.stack ?? String(err) }, `${kind}: exiting`);
    process.exit(70);
  };
  process.on('uncaughtException', crash('uncaught exception'));
  process.on('unhandledRejection', crash('unhandled rejection'));
  logger.info({ event: 'start', version: VERSION, config: loaded.source, overrides: loaded.overrides }, `douane ${VERSION} starting (${loaded.source === EMBEDDED_NAME ? 'embedded default configuration' : loaded.source})`);
  const metrics = new Metrics({ version: VERSION });
  // Signals are taken from the start: SIGHUP's default action would kill a process still starting (a
  // reload sent during a restart), and a SIGTERM then is carried out once it has started.
  let gateway: Gateway | undefined;
  let admin: AdminServer | undefined;
  let lock: StateLock | undefined;
  let started = false;
  let stopAsked: string | undefined;
  let exited: (code: number) => void = () => undefined;
  const stopped = new Promise<number>((resolve) => (exited = resolve));
  const stop = (signal: string) => {
    if (stopAsked) {
      // A second SIGTERM (a supervisor, an operator) does not cut the drain short: a message the upstream
      // has taken, whose client is not told yet, would be sent again. Ctrl-C twice at a terminal does.
      if (signal === 'SIGINT' && stopAsked === 'SIGINT') {
        logger.warn({ event: 'signal', signal }, 'SIGINT again: exiting without waiting for open transactions');
        process.exit(130);
      }
      logger.warn({ event: 'signal', signal }, `${signal}: already stopping; open transactions are drained first (SIGKILL stops at once)`);
      return;
    }
    stopAsked = signal;
    logger.info({ event: 'signal', signal }, started ? `${signal}: stopping` : `${signal}: stopping once started`);
    if (started) shutDown(gateway!, admin, logger).then(released(lock, exited));
  };
  const reload = () => {
    if (!started || stopAsked) {
      logger.warn({ event: 'signal', signal: 'SIGHUP' }, 'SIGHUP before the gateway has started, or while it stops: nothing reloaded');
      return;
    }
    gateway!.reloadTls();
    void gateway!.policies.reload('SIGHUP');
    warnIfConfigChanged(loaded, configText, logger);
  };
  process.on('SIGHUP', reload);
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  try {
    lock = lockStateDir(config.state_dir);
    if (lock.tookOver) logger.warn({ event: 'state_lock_taken_over', path: lock.path, previous: lock.tookOver }, `the lock of state_dir was left by PID ${lock.tookOver.pid} on ${lock.tookOver.host}, which no longer holds it: taken over`);
    gateway = new Gateway(config, { logger, metrics });
    admin = config.admin.enabled ? new AdminServer(config.admin, metrics, logger) : undefined;
    for (const [name, probe] of Object.entries(gateway.readinessProbes())) admin?.addProbe(name, probe);
    admin?.setAccounts(gateway.enforcer);
    await gateway.start();
    await admin?.start();
  } catch (err) {
    // Half started (some listeners up, the admin endpoint or the watcher not) is worse than not at all:
    // say why, stop what started and exit, for the supervisor or the operator to see.
    process.removeListener('SIGHUP', reload);
    logger.fatal({ event: 'start_failed', err: (err as Error).message }, `could not start: ${(err as Error).message}`);
    await Promise.race([Promise.allSettled([gateway?.stop(), admin?.stop()]), new Promise((r) => setTimeout(r, 2000))]);
    lock?.release();
    throw new StartError((err as Error).message);
  }
  logger.info(configSummary(config), 'configuration in force');
  // The embedded default keeps its state under /tmp on purpose (a trial); a real configuration should not.
  const temporary = [config.state_dir, config.spool.dir].filter((d) => d === tmpdir() || d.startsWith(`${tmpdir()}/`));
  if (loaded.source !== EMBEDDED_NAME && temporary.length) {
    logger.warn({ event: 'state_in_tmp', dirs: temporary }, `${temporary.join(' and ')} under ${tmpdir()}: the quarantine, the audit trail, the outbox and spooled messages may be lost at a reboot (set state_dir and spool.dir)`);
  }
  logger.info({ event: 'policy', version: gateway.policies.current.version, dir: gateway.policies.dir, rules: gateway.policies.current.rules.length }, `policy ${gateway.policies.current.version} in force`);
  if (config.policy.watch) gateway.policies.watch();
  started = true;
  if (stopAsked) void shutDown(gateway, admin, logger).then(released(lock, exited));
  return stopped;
}

/**
 * What the gateway runs with, in one line at start: where mail goes, what checks it, where suspensions are
 * carried out and where state is kept. A default taken by mistake (no lifecycle adapter, state under /tmp)
 * shows here. No secret: a Redis URL's password is left out.
 */
export function configSummary(config: LoadedConfig['config']): Record<string, unknown> {
  const redis = config.limits.redis;
  const where = (hosts: { host: string; port: number }[]) => hosts.map((h) => `${h.host}:${h.port}`);
  let redisTarget: unknown = 'none (counters in memory, this instance only)';
  if (redis?.url) {
    const url = new URL(redis.url);
    url.password = '';
    url.username = '';
    // ioredis takes a password from the query too (?password=): none of it is shown.
    url.search = '';
    redisTarget = url.toString();
  } else if (redis?.sentinels) redisTarget = { sentinels: where(redis.sentinels), name: redis.sentinel_name };
  else if (redis?.cluster) redisTarget = { cluster: where(redis.cluster) };
  return {
    event: 'config',
    upstream: { host: config.upstream.host, port: config.upstream.port, trusted_port: config.upstream.trusted_port, tls: config.upstream.tls },
    clamd: config.clamd === 'none' ? 'none (no virus scanning)' : config.clamd.hosts.map((h) => h.socket ?? `${h.host}:${h.port}`),
    redis: redisTarget,
    lifecycle: config.lifecycle.adapter,
    state_dir: config.state_dir,
    spool_dir: config.spool.dir,
    policy_dir: config.policy.dir,
  };
}

/** The configuration file as it was read at start (undefined for the embedded default). */
function readConfigText(loaded: LoadedConfig): string | undefined {
  if (loaded.source === EMBEDDED_NAME) return undefined;
  try {
    return readFileSync(loaded.source, 'utf8');
  } catch {
    return undefined;
  }
}

/**
 * SIGHUP reloads the policy and the certificate, not the configuration: a changed file (a network taken
 * off a trusted listener, an admin token revoked) would otherwise look applied when it is not.
 */
function warnIfConfigChanged(loaded: LoadedConfig, atStart: string | undefined, logger: Logger): void {
  if (atStart === undefined) return;
  const now = readConfigText(loaded);
  if (now === undefined || now === atStart) return;
  logger.warn({ event: 'config_changed', config: loaded.source }, `${loaded.source} changed since the start: SIGHUP reloads only the policy and the TLS certificate; restart douane to apply the configuration`);
}

/** Releases the state directory once stopped, then exits with the code. */
function released(lock: StateLock | undefined, exited: (code: number) => void): (code: number) => void {
  return (code) => {
    lock?.release();
    exited(code);
  };
}

/** Drains and stops; resolves with the exit code. */
function shutDown(gateway: Gateway, admin: AdminServer | undefined, logger: Logger): Promise<number> {
  gateway.policies.close();
  // The admin endpoint stops after the gateway (readiness answers during the drain), whatever happened to it.
  return gateway
    .stop()
    .then(
      () => 0,
      (err: Error) => {
        logger.error({ event: 'stop_failed', err: err.message }, 'stop failed');
        return 1;
      },
    )
    .then(async (code) => {
      await admin?.stop().catch((err: Error) => logger.error({ event: 'stop_failed', err: err.message }, 'admin endpoint stop failed'));
      return code;
    });
}
