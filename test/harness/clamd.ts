// A private clamd with a signature database made at test time (no freshclam, no internet): the EICAR
// test file by hash and by content, a text marker, and Debian's clamav-testfiles. The EICAR string is
// built here rather than committed anywhere.

import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pingHost } from '../../src/scan/clamd.js';
import { freePort } from './net.js';
import { startProcess, stopPid } from './procs.js';

/** The EICAR antivirus test string, assembled so that no file of the project contains it. */
export const EICAR = ['X5O!P%@AP[4\\PZX54(P^)7CC)7}$', 'EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*'].join('');
export const TEST_MARKER = 'DOUANE-TEST-MALWARE-MARKER-7f3a';
/** md5 of Debian's clamav-testfiles clam.exe, which the other samples (zip, 7z, …) contain. */
const CLAMAV_TESTFILE = 'aa15bcf478d165efd2065190eb473bcb:544:Test.ClamAVTestFile.HDB';

export interface ClamdOptions {
  streamMaxLength?: string;
  maxRecursion?: number;
  alertExceedsMax?: boolean;
  /** seconds clamd waits for more of a stream before closing it (ReadTimeout) */
  readTimeout?: number;
}

export interface ClamdInstance {
  port: number;
  socket: string;
  pid: number;
  pause(): void;
  resume(): void;
  stop(): Promise<void>;
}

const hex = (s: string) => Buffer.from(s).toString('hex');

export async function startClamd(opts: ClamdOptions = {}): Promise<ClamdInstance> {
  // Its free port can be taken by another test file's server before clamd binds it: clamd then exits,
  // and it is started again on another port.
  for (let attempt = 1; ; attempt++) {
    try {
      return await tryStartClamd(opts);
    } catch (err) {
      if (!(err instanceof EarlyExit) || attempt === 3) throw err;
    }
  }
}

class EarlyExit extends Error {}

async function tryStartClamd(opts: ClamdOptions): Promise<ClamdInstance> {
  const dir = mkdtempSync(join(tmpdir(), 'douane-clamd-'));
  const db = join(dir, 'db');
  const port = await freePort();
  const socket = join(dir, 'clamd.sock');
  mkdirSync(db);
  // clamd writes every stream it scans to a file here: on tmpfs (as a production clamd should have it)
  // a scan costs no file-system journal, and nothing is left behind in /tmp if clamd is killed.
  const scratch = mkdtempSync(join(existsSync('/dev/shm') ? '/dev/shm' : dir, 'douane-clamd-tmp-'));
  writeFileSync(join(db, 'test.hdb'), `${createHash('md5').update(EICAR).digest('hex')}:${EICAR.length}:Test.EICAR.HDB\n${CLAMAV_TESTFILE}\n`);
  writeFileSync(join(db, 'test.ndb'), `Test.EICAR.NDB:0:*:${hex(EICAR)}\nTest.Marker.NDB:0:*:${hex(TEST_MARKER)}\n`);
  writeFileSync(
    join(dir, 'clamd.conf'),
    [
      'Foreground yes',
      `LogFile ${join(dir, 'clamd.log')}`,
      'LogSyslog no',
      `DatabaseDirectory ${db}`,
      `TemporaryDirectory ${scratch}`,
      `LocalSocket ${socket}`,
      'LocalSocketMode 666',
      `TCPSocket ${port}`,
      'TCPAddr 127.0.0.1',
      'MaxThreads 4',
      `StreamMaxLength ${opts.streamMaxLength ?? '30M'}`,
      'MaxScanSize 100M',
      'MaxFileSize 30M',
      `MaxRecursion ${opts.maxRecursion ?? 16}`,
      `AlertExceedsMax ${opts.alertExceedsMax === false ? 'no' : 'yes'}`,
      `ReadTimeout ${opts.readTimeout ?? 30}`,
      'CommandReadTimeout 30',
      'SelfCheck 0',
      '',
    ].join('\n'),
  );
  const child = startProcess('clamd', [`--config-file=${join(dir, 'clamd.conf')}`], { stdio: 'ignore' });
  const deadline = Date.now() + 30_000;
  while (!(await pingHost({ host: '127.0.0.1', port }, 500)).ok) {
    if (child.exitCode !== null) {
      rmSync(scratch, { recursive: true, force: true });
      throw new EarlyExit(`clamd exited with ${child.exitCode}; see ${dir}/clamd.log`);
    }
    if (Date.now() > deadline) throw new Error('clamd did not answer PING within 30 s');
    await new Promise((r) => setTimeout(r, 50));
  }
  const pid = child.pid!;
  return {
    port,
    socket,
    pid,
    pause: () => process.kill(pid, 'SIGSTOP'),
    resume: () => process.kill(pid, 'SIGCONT'),
    stop: async () => {
      await stopPid(pid);
      rmSync(dir, { recursive: true, force: true });
      rmSync(scratch, { recursive: true, force: true });
    },
  };
}

/**
 * A stand-in for a clamd that misbehaves in one way, on loopback: `onConnection` does to each connection
 * what the case needs (reset it, close it, say nothing). Counts the connections and their closes.
 */
export async function misbehavingClamd(onConnection: (s: net.Socket) => void): Promise<{ port: number; connections(): number; closed(): number; close(): Promise<void> }> {
  const sockets: net.Socket[] = [];
  let closed = 0;
  const server = net.createServer((s) => {
    sockets.push(s);
    s.on('error', () => {});
    s.on('close', () => closed++);
    onConnection(s);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as net.AddressInfo).port,
    connections: () => sockets.length,
    closed: () => closed,
    close: () =>
      new Promise((r) => {
        sockets.forEach((s) => s.destroy());
        server.close(() => r());
      }),
  };
}

/**
 * clamd over its StreamMaxLength answers and closes with the rest of the stream unread, so the kernel
 * resets the connection, and the reset can beat the reply: this one resets without replying, every time.
 */
export function resetAfter(bytes: number): (s: net.Socket) => void {
  return (s) => {
    let seen = 0;
    s.on('data', (d: Buffer) => {
      seen += d.length;
      if (seen > bytes) s.resetAndDestroy();
    });
  };
}
