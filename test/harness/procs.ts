// Child processes started by the test harness: remembered by PID and stopped by PID.

import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';

const started = new Set<number>();

export function run(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; input?: string } = {}): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', ...opts });
  if (r.error) throw new Error(`${cmd} ${args.join(' ')}: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}: ${r.stderr || r.stdout}`);
  return r.stdout;
}

/**
 * Runs a command that daemonizes (dovecot, postfix start). Its output goes to a file: a daemon keeps the
 * descriptors it inherited, and spawnSync would otherwise wait on the pipes until the daemon exits.
 */
export function runDaemonizing(cmd: string, args: string[], logFile: string): void {
  const fd = openSync(logFile, 'a');
  try {
    const r = spawnSync(cmd, args, { stdio: ['ignore', fd, fd] });
    if (r.error) throw new Error(`${cmd} ${args.join(' ')}: ${r.error.message}`);
    if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}: ${readFileSync(logFile, 'utf8').slice(-2000)}`);
  } finally {
    closeSync(fd);
  }
}

export function startProcess(cmd: string, args: string[], opts: SpawnOptions = {}): ChildProcess {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
  if (child.pid) started.add(child.pid);
  child.once('exit', () => child.pid && started.delete(child.pid));
  return child;
}

export async function stopPid(pid: number, signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 5000): Promise<void> {
  try {
    process.kill(pid, 'SIGCONT'); // a stopped (SIGSTOP) process cannot handle SIGTERM
    process.kill(pid, signal);
  } catch {
    return;
  }
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      process.kill(pid, 0);
    } catch {
      started.delete(pid);
      return;
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // gone
  }
  started.delete(pid);
}

export function which(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;
}
