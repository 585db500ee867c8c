// A minimal argument parser: positional words, --flag, --key value / --key=value, repeatable keys.

import { userInfo } from 'node:os';

export interface ParsedArgs {
  positional: string[];
  flags: Map<string, string[]>;
}

export class UsageError extends Error {
  readonly exitCode = 64; // EX_USAGE
}

/** A failure the command explains in its message (a service it cannot reach): printed without a stack, exit 1. */
export class CliError extends Error {}

/**
 * An empty word (`""`, `--config=`) is refused: it is most often a variable that is not set, and read as
 * "none given" it would act on something else (the shipped policies, the embedded default). `allowEmpty`
 * names options for which empty means something (the null sender).
 */
export function parseArgs(argv: string[], spec: { flags?: string[]; options?: string[]; allowEmpty?: string[] }): ParsedArgs {
  const flags = new Map<string, string[]>();
  const positional: string[] = [];
  const known = new Set([...(spec.flags ?? []), ...(spec.options ?? [])]);
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      positional.push(...argv.slice(i + 1));
      break;
    }
    if (!arg.startsWith('--')) {
      if (arg === '') throw new UsageError('an empty argument (""): a variable that is not set?');
      positional.push(arg);
      continue;
    }
    const eq = arg.indexOf('=');
    const name = arg.slice(2, eq > 0 ? eq : undefined);
    if (!known.has(name)) throw new UsageError(`unknown option --${name}`);
    let value = 'true';
    if (spec.options?.includes(name)) {
      if (eq > 0) value = arg.slice(eq + 1);
      else if (i + 1 < argv.length) value = argv[++i]!;
      else throw new UsageError(`--${name} needs a value`);
      if (value === '' && !spec.allowEmpty?.includes(name)) throw new UsageError(`--${name} is empty: a variable that is not set?`);
    } else if (eq > 0) throw new UsageError(`--${name} takes no value`);
    flags.set(name, [...(flags.get(name) ?? []), value]);
  }
  return { positional, flags };
}

/**
 * Refuses words past the `most` a command takes: a second account or ID would otherwise be dropped
 * without a word, and the command report success for the first alone.
 */
export function atMost(args: ParsedArgs, most: number, command: string): void {
  const extra = args.positional.slice(most);
  if (extra.length === 0) return;
  const takes = most === 0 ? 'takes no argument' : most === 1 ? 'takes one argument' : `takes ${most} arguments`;
  throw new UsageError(`${command} ${takes}; unexpected: ${extra.map((w) => JSON.stringify(w)).join(' ')}`);
}

export function option(args: ParsedArgs, name: string): string | undefined {
  const v = args.flags.get(name);
  return v ? v[v.length - 1] : undefined;
}

export function options(args: ParsedArgs, name: string): string[] {
  return args.flags.get(name) ?? [];
}

export function flag(args: ParsedArgs, name: string): boolean {
  return args.flags.has(name);
}

/**
 * Who runs the command, for the audit trail: the person behind sudo when it is run as the service user
 * (`sudo -u douane douane quarantine release …`), else the login.
 */
export function cliActor(env: NodeJS.ProcessEnv = process.env): string {
  const sudoer = env.SUDO_USER?.trim();
  return `cli:${sudoer || userInfo().username}`;
}
