// A private HAProxy (Debian's /usr/sbin/haproxy) on a free loopback port, in TCP mode, in front of one
// backend, sending it the PROXY protocol (version 1, `send-proxy`): the load balancer a provider puts in
// front of several Douane instances. Run in the foreground (-db) and stopped by PID.

import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, waitForPort } from './net.js';
import { startProcess, stopPid } from './procs.js';

export interface HaproxyInstance {
  port: number;
  pid: number;
  logTail(): string;
  stop(): Promise<void>;
}

export async function startHaproxy(backendPort: number): Promise<HaproxyInstance> {
  const dir = mkdtempSync(join(tmpdir(), 'douane-haproxy-'));
  const port = await freePort();
  writeFileSync(
    join(dir, 'haproxy.cfg'),
    [
      'global',
      '  maxconn 100',
      'defaults',
      '  mode tcp',
      '  timeout connect 5s',
      '  timeout client 30s',
      '  timeout server 30s',
      'frontend submission',
      `  bind 127.0.0.1:${port}`,
      '  default_backend douane',
      'backend douane',
      `  server douane1 127.0.0.1:${backendPort} send-proxy`,
      '',
    ].join('\n'),
  );
  const logFile = join(dir, 'haproxy.log');
  const fd = openSync(logFile, 'a');
  const child = startProcess('haproxy', ['-db', '-f', join(dir, 'haproxy.cfg')], { stdio: ['ignore', fd, fd] });
  closeSync(fd);
  const logTail = () => {
    try {
      return readFileSync(logFile, 'utf8').slice(-3000);
    } catch {
      return '';
    }
  };
  try {
    await waitForPort(port);
  } catch (err) {
    await stopPid(child.pid!);
    throw new Error(`haproxy did not start: ${(err as Error).message}\n${logTail()}`);
  }
  return {
    port,
    pid: child.pid!,
    logTail,
    async stop() {
      await stopPid(child.pid!);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
