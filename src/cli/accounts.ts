// `douane accounts status | strikes | suspend | reinstate | approve | history | list | breaker`: the
// security team's handle on enforcement. It talks to a running Douane's admin endpoint (any instance:
// with Redis they share the state), so it works the same on the embedded default and in production.

import { loadConfig } from '../config/load.js';
import { DURATION_MAX_MS, parseDuration } from '../validate/schema.js';
import { terminalJson } from '../quarantine/summary.js';
import { atMost, CliError, cliActor, flag, option, parseArgs, UsageError } from './args.js';

export const ACCOUNTS_HELP = `Usage: douane accounts <command> [ACCOUNT] [options]

Commands:
  list                         suspended accounts, suspensions waiting for approval, outbox jobs
  status ACCOUNT               suspension, throttle, strikes, lifecycle status
  strikes ACCOUNT              the strike events counted now
  history ACCOUNT              the audit trail of the instance asked, for the account (strikes, suspensions, releases…)
  suspend ACCOUNT [--sending-only [--for 24h]] [--reason TEXT]
                               block the account now (and lock it in the lifecycle API unless --sending-only)
  reinstate ACCOUNT            lift the suspension, reset strikes; unlock the account in the lifecycle API
                               if Douane locked it
  approve ACCOUNT              carry out a suspension that waits for approval
  breaker [reset]              the circuit breaker on automatic suspensions

Options:
  --admin URL                  admin endpoint (default: from the configuration's admin section)
  --config FILE                configuration (admin address, port, and admin.token unless
                               DOUANE_ADMIN_TOKEN gives your own token)
  --json                       one line of JSON (default: the same, indented)
  --help                       this text

Exit codes: 0 ok, 1 refused or failed, 64 usage error.`;

export async function accountsCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (!sub || sub === '--help' || sub === 'help') {
    console.log(ACCOUNTS_HELP);
    return sub ? 0 : 64;
  }
  const args = parseArgs(rest, { flags: ['help', 'json', 'sending-only'], options: ['admin', 'config', 'for', 'reason'] });
  if (flag(args, 'help')) {
    console.log(ACCOUNTS_HELP);
    return 0;
  }
  const { config } = loadConfig({ file: option(args, 'config') });
  const base = (option(args, 'admin') ?? `http://${config.admin.address.includes(':') ? `[${config.admin.address}]` : config.admin.address}:${config.admin.port}`).replace(/\/+$/, '');
  if (!/^https?:\/\/[^/]/.test(base) || !URL.canParse(base)) throw new UsageError(`--admin takes the admin endpoint's URL, such as http://127.0.0.1:9725 (got ${base})`);
  // A header carries bytes, not text: a login beyond ASCII (Łukasz) goes percent-encoded in UTF-8, which the
  // endpoint decodes.
  const headers: Record<string, string> = { 'x-douane-actor': encodeURI(cliActor()), 'content-type': 'application/json' };
  if (config.admin.token) headers.authorization = `Bearer ${config.admin.token}`;
  const account = args.positional[0];
  atMost(args, sub === 'list' ? 0 : 1, `accounts ${sub}`);
  if (sub === 'breaker' && account !== undefined && account !== 'reset') throw new UsageError(`accounts breaker takes "reset" or nothing (got ${JSON.stringify(account)})`);
  const needAccount = () => {
    if (!account || !/^[^\s@]+@[^\s@]+$/.test(account)) throw new UsageError(`accounts ${sub} needs an account address`);
    return encodeURIComponent(account.toLowerCase());
  };
  const call = async (method: 'GET' | 'POST', path: string, body?: unknown): Promise<{ ok: boolean; data: unknown }> => {
    let res: Response;
    try {
      res = await fetch(base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal: AbortSignal.timeout(30_000) });
    } catch (err) {
      throw new CliError(`cannot reach Douane's admin endpoint at ${base} (${(err as Error).message}); is douane serve running? (--admin URL)`);
    }
    if (res.status === 401) {
      const why = headers.authorization ? 'the admin token was refused' : 'the admin endpoint wants a token';
      return { ok: false, data: { error: `${why} (HTTP 401): set DOUANE_ADMIN_TOKEN to a token of admin.token or admin.tokens` } };
    }
    // Whatever answers on another port (a dashboard, a proxy's page) is not taken for Douane's success.
    const text = await res.text();
    try {
      return { ok: res.ok, data: JSON.parse(text) as unknown };
    } catch {
      return { ok: false, data: { error: `HTTP ${res.status} from ${base}${path} is not Douane's answer (no JSON): is --admin the admin endpoint?` } };
    }
  };
  let result: { ok: boolean; data: unknown };
  switch (sub) {
    case 'list':
      result = await call('GET', '/accounts');
      break;
    case 'status':
      result = await call('GET', `/accounts/${needAccount()}`);
      break;
    case 'strikes':
      result = await call('GET', `/accounts/${needAccount()}/strikes`);
      break;
    case 'history':
      result = await call('GET', `/accounts/${needAccount()}/history`);
      break;
    case 'suspend': {
      const forText = option(args, 'for');
      const forMs = forText ? parseDuration(forText) : undefined;
      if (forText && (forMs === undefined || forMs <= 0 || forMs > DURATION_MAX_MS)) throw new UsageError('--for takes a duration such as 24h or 7d, at most 3650d');
      if (forText && !flag(args, 'sending-only')) throw new UsageError('--for goes with --sending-only: a lock in the lifecycle API lasts until the account is reinstated');
      result = await call('POST', `/accounts/${needAccount()}/suspend`, { action: flag(args, 'sending-only') ? 'suspend_sending' : 'suspend_account', reason: option(args, 'reason') ?? 'suspended by hand', for_ms: forMs });
      break;
    }
    case 'reinstate':
      result = await call('POST', `/accounts/${needAccount()}/reinstate`);
      break;
    case 'approve':
      result = await call('POST', `/accounts/${needAccount()}/approve`);
      break;
    case 'breaker':
      result = account === 'reset' ? await call('POST', '/breaker/reset') : await call('GET', '/breaker');
      break;
    default:
      throw new UsageError(`unknown accounts command "${sub}"`);
  }
  if (!result.ok) {
    console.error(`douane: ${(result.data as { error?: string }).error ?? 'refused'}`);
    return 1;
  }
  // A reason or an audited text may hold what a terminal would obey (C1 controls, bidi overrides): escaped.
  console.log(terminalJson(result.data, flag(args, 'json') ? undefined : 2));
  return 0;
}
