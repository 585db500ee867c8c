#!/usr/bin/env node
// The douane command: one binary, a sub-command per job, --help everywhere, exit codes scripts can use
// (0 ok, 1 failure or invalid input, 64 usage error).

import { readFileSync } from 'node:fs';
import { ValidationError } from './validate/source.js';
import { CliError, flag, parseArgs, UsageError } from './cli/args.js';
import { DamagedEntry } from './quarantine/store.js';
import { serve, StartError } from './cli/serve.js';
import { policyCommand } from './cli/policy.js';
import { quarantineCommand } from './cli/quarantine.js';
import { accountsCommand } from './cli/accounts.js';
import { loadConfig } from './config/load.js';
import { certificateDates, certificateWarning } from './smtp/tls.js';
import { describePipeline } from './pipeline/index.js';
import { reasonsMarkdown } from './cli/reasons.js';
import { VERSION } from './version.js';

const HELP = `Usage: douane <command> [options]

Commands:
  serve                 run the gateway (douane serve --help)
  config check [FILE]   validate a configuration file (or the embedded default) and exit 0/1
  policy                check, test, explain and diff policies (douane policy --help)
  accounts              strikes, suspensions, reinstatement, approvals, history (douane accounts --help)
  quarantine            list, show, release and delete refused messages (douane quarantine --help)
  pipeline              print the checks run at each SMTP phase, in order
  reasons               print every refusal reason, its reply and what to do (Markdown)
  version               print the version

Run "douane <command> --help" for a command's options.`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'serve':
      return serve(rest);
    case 'config': {
      if (rest[0] !== 'check' || rest.includes('--help')) {
        console.log(
          'Usage: douane config check [FILE] [--without-files]\n\nValidates the file (or DOUANE_CONFIG, or the embedded default) with DOUANE_* overrides applied,\n' +
            'the certificate, key and CA files it names as serve will read them, and that the state, spool and\n' +
            'policy directories can be used. The policy itself is checked by `douane policy check`: run both\n' +
            'before a restart.\n\n' +
            '  --without-files   skip those files and directories: for checking a configuration away from the machine it is for',
        );
        return rest.includes('--help') ? 0 : 64;
      }
      const args = parseArgs(rest.slice(1), { flags: ['without-files'] });
      if (args.positional.length > 1) throw new UsageError(`config check takes one file, not ${args.positional.length}`);
      const loaded = loadConfig({ file: args.positional[0], files: !flag(args, 'without-files') });
      console.log(`${loaded.source}: ok${loaded.overrides.length ? ` (overridden by ${loaded.overrides.join(', ')})` : ''}`);
      const { cert } = loaded.config.tls;
      // Valid, but worth saying: serve starts with it and warns the same way.
      const warning = cert && !flag(args, 'without-files') ? certificateWarning(certificateDates(readFileSync(cert)), Date.now()) : undefined;
      if (warning) console.log(`  warning: tls.cert ${cert}: ${warning.message}`);
      return 0;
    }
    case 'policy':
      return policyCommand(rest);
    case 'accounts':
      return accountsCommand(rest);
    case 'quarantine':
      return quarantineCommand(rest);
    case 'pipeline':
      console.log(describePipeline());
      return 0;
    case 'reasons':
      console.log(reasonsMarkdown());
      return 0;
    case 'version':
    case '--version':
      console.log(VERSION);
      return 0;
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      console.log(HELP);
      return command === undefined ? 64 : 0;
    default:
      console.error(`douane: unknown command "${command}"\n\n${HELP}`);
      return 64;
  }
}

// Output piped into a command that stopped reading ("| head") is not an error of ours: stop quietly.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
  throw err;
});

/** Errors of the file system whose message says all: permission, missing, read-only, full. */
const FILE_ERRORS = new Set(['EACCES', 'EPERM', 'ENOENT', 'EROFS', 'ENOSPC', 'ENOTDIR', 'EISDIR']);

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    if (err instanceof ValidationError) {
      console.error(err.message);
      process.exitCode = 1;
    } else if (err instanceof UsageError) {
      console.error(`douane: ${err.message}`);
      process.exitCode = err.exitCode;
    } else if (err instanceof CliError || err instanceof DamagedEntry || FILE_ERRORS.has((err as NodeJS.ErrnoException)?.code ?? '')) {
      // Explained by its message (node's names the file and the operation): no stack for the operator.
      console.error(`douane: ${(err as Error).message}`);
      process.exitCode = 1;
    } else if (err instanceof StartError) {
      // Whatever the failed start left behind (a Redis connection, a timer) must not keep it running.
      console.error(`douane: ${err.message}`);
      process.exit(1);
    } else {
      console.error(`douane: ${(err as Error)?.stack ?? String(err)}`);
      process.exitCode = 1;
    }
  },
);
