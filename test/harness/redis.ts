// Private redis-server instances on free loopback ports (single or a 3-node cluster), stopped by PID.
// They can be paused (SIGSTOP: a frozen Redis that accepts connections but never answers) and resumed.

import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './net.js';
import { run, stopPid } from './procs.js';

export interface RedisInstance {
  port: number;
  pid: number;
  dir: string;
  url: string;
  /** runs redis-cli against this instance */
  cli(...args: string[]): string;
  pause(): void;
  resume(): void;
  /** kills it at once (SIGKILL): Redis gone, its data with it */
  crash(): Promise<void>;
  /** starts it again, empty, on the same port */
  revive(): Promise<void>;
  stop(): Promise<void>;
}

export async function startRedis(extra: string[] = []): Promise<RedisInstance> {
  // A free port can be taken by another test file's server before redis-server binds it: then this
  // redis-server exits, and something else answers on the port. Only a Redis that reports our own
  // process id is ours; otherwise try again on another port.
  for (let attempt = 1; ; attempt++) {
    const started = await tryStartRedis(extra);
    if (started) return started;
    if (attempt === 5) throw new Error('redis-server did not start on a free port in 5 attempts');
  }
}

async function tryStartRedis(extra: string[]): Promise<RedisInstance | undefined> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'douane-redis-'));
  let pid = await launch(port, dir, extra);
  if (!pid) {
    rmSync(dir, { recursive: true, force: true });
    return undefined;
  }
  return {
    port,
    get pid() {
      return pid!;
    },
    dir,
    url: `redis://127.0.0.1:${port}`,
    cli: (...args) => run('redis-cli', ['-p', String(port), ...args]).trim(),
    pause: () => process.kill(pid!, 'SIGSTOP'),
    resume: () => process.kill(pid!, 'SIGCONT'),
    crash: () => stopPid(pid!, 'SIGKILL'),
    revive: async () => {
      pid = await launch(port, dir, extra);
      if (!pid) throw new Error(`redis-server could not start again on port ${port}: ${readLog(dir).slice(-500)}`);
    },
    stop: async () => {
      await stopPid(pid!);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Starts redis-server on `port`; its pid once it answers as itself, undefined if it could not. */
async function launch(port: number, dir: string, extra: string[]): Promise<number | undefined> {
  rmSync(join(dir, 'redis.pid'), { force: true });
  rmSync(join(dir, 'redis.log'), { force: true });
  run('redis-server', [
    '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--daemonize', 'yes',
    '--pidfile', join(dir, 'redis.pid'), '--logfile', join(dir, 'redis.log'), '--dir', dir, ...extra,
  ]);
  let pid = 0;
  for (let i = 0; i < 150; i++) {
    try {
      pid = Number(readFileSync(join(dir, 'redis.pid'), 'utf8').trim());
    } catch {
      // not written yet, or redis-server gave up (its log says why)
    }
    if (pid) {
      try {
        if (run('redis-cli', ['-p', String(port), 'info', 'server']).includes(`process_id:${pid}\r`)) return pid;
      } catch {
        // not listening yet
      }
    }
    if (/Address already in use/.test(readLog(dir))) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  if (pid) await stopPid(pid);
  return undefined;
}

function readLog(dir: string): string {
  try {
    return readFileSync(join(dir, 'redis.log'), 'utf8');
  } catch {
    return '';
  }
}

export interface RedisCluster {
  nodes: RedisInstance[];
  stop(): Promise<void>;
}

export async function startRedisCluster(size = 3): Promise<RedisCluster> {
  const nodes: RedisInstance[] = [];
  const stop = async () => void (await Promise.all(nodes.map((n) => n.stop())));
  try {
    for (let i = 0; i < size; i++) {
      nodes.push(await startRedis(['--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf', '--cluster-node-timeout', '2000']));
    }
    run('redis-cli', ['--cluster', 'create', ...nodes.map((n) => `127.0.0.1:${n.port}`), '--cluster-replicas', '0', '--cluster-yes']);
    const deadline = Date.now() + 15_000;
    for (;;) {
      const states = nodes.map((n) => n.cli('cluster', 'info').includes('cluster_state:ok'));
      if (states.every(Boolean)) break;
      if (Date.now() > deadline) throw new Error('redis cluster did not become ready');
      await new Promise((r) => setTimeout(r, 100));
    }
  } catch (err) {
    await stop(); // the nodes already started must not outlive a failed start
    throw err;
  }
  return { nodes, stop };
}
