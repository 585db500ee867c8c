// Benchmark reports: a Markdown table printed and written into its own section of BENCHMARKS.md, with the
// command that produced it, the machine and the versions of everything measured.

import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { stopEverything } from './proc.js';
import { harakaVersion } from './stack.js';

export function table(head: string[], rows: (string | number)[][]): string {
  const cells = [head, ...rows.map((r) => r.map(String))];
  const widths = head.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]) => `| ${r.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |`;
  return [line(head), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...rows.map((r) => line(r.map(String)))].join('\n');
}

function version(cmd: string, args: string[], pattern: RegExp): string {
  try {
    const out = execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    return pattern.exec(out)?.[1] ?? out.trim().split('\n')[0]!;
  } catch (err) {
    const out = String((err as { stdout?: string; stderr?: string }).stdout ?? '') + String((err as { stderr?: string }).stderr ?? '');
    return pattern.exec(out)?.[1] ?? 'unknown';
  }
}

export function environment(): string {
  const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
  const douane = (JSON.parse(readFileSync('package.json', 'utf8')) as { version: string }).version;
  return [
    `Machine: ${cpu}, ${os.cpus().length} cores, ${Math.round(os.totalmem() / 2 ** 30)} GiB, ${os.type()} ${os.release()}`,
    `Versions: Douane ${douane}, Node.js ${process.version}, Haraka ${harakaVersion()}, Postfix ${version('postconf', ['-d', 'mail_version'], /mail_version = (\S+)/)}, ClamAV ${version('clamd', ['--version'], /ClamAV ([\d.]+)/)}, Redis ${version('redis-server', ['--version'], /v=([\d.]+)/)}`,
    `Date: ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC`,
  ].join('  \n');
}

/** Replaces (or appends) the section `name` of BENCHMARKS.md. */
export function writeSection(name: string, title: string, command: string, body: string): void {
  const file = 'BENCHMARKS.md';
  const text = existsSync(file) ? readFileSync(file, 'utf8') : '# Benchmarks\n\nEach section below was written by the command shown in it (`bench/`). Ratios within one run are the figures that count: this machine is shared and noisy.\n';
  const section = [`<!-- bench:${name} -->`, `## ${title}`, '', `Command: \`${command}\`  `, environment(), '', body.trim(), `<!-- /bench:${name} -->`].join('\n');
  const re = new RegExp(`<!-- bench:${name} -->[\\s\\S]*?<!-- /bench:${name} -->`);
  writeFileSync(file, re.test(text) ? text.replace(re, section) : `${text.trimEnd()}\n\n${section}\n`);
  console.log(`\n${section}\n`);
}

/**
 * Runs a benchmark's main function and exits: non-zero, with the error, when it fails. Interrupted, it
 * stops what it started first.
 */
export function runBenchmark(main: () => Promise<void>): void {
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      console.error(`${signal}: stopping what the benchmark started`);
      void stopEverything().finally(() => process.exit(130));
    });
  }
  main().then(
    () => process.exit(0),
    async (err: unknown) => {
      console.error(err);
      await stopEverything();
      process.exit(1);
    },
  );
}
