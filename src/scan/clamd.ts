// Virus scanning with clamd through the clamscan package (INSTREAM): the message is streamed to clamd as
// it arrives from the client. The answer is three-way — clean, infected (with the signature), or could
// not scan — and every wait has Douane's own deadline: clamscan does not bound them all (a frozen clamd
// hangs it forever) and its local-binary fallback is disabled so that a scan never silently runs
// somewhere else. Several clamd hosts: when one fails, the message is scanned again, from the spool, on
// the next one, within the same deadline.

import net from 'node:net';
import { PassThrough, type Readable } from 'node:stream';
import NodeClam from 'clamscan';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';

export interface ClamdHost {
  host?: string;
  port?: number;
  socket?: string;
}

export interface ScanResult {
  result: 'clean' | 'infected' | 'error';
  signature?: string;
  /** why it could not scan */
  detail?: string;
  /** which clamd answered (host:port or socket path) */
  scanner?: string;
  ms: number;
}

export interface LiveScan {
  /** feeds the next chunk; resolves when clamd can take more (never after the deadline) */
  write(chunk: Buffer): Promise<void>;
  /** the message is complete; resolves with the verdict, failing over to other hosts from `replay` */
  end(replay: () => Readable): Promise<ScanResult>;
  /** stops scanning (the message will not be scanned: too big, client gone) */
  abort(): void;
}

export interface ScannerPort {
  start(): LiveScan;
}

export function hostName(h: ClamdHost): string {
  return h.socket ?? `${h.host ?? '127.0.0.1'}:${h.port ?? 3310}`;
}

type Clam = { scanStream(stream: Readable): Promise<{ isInfected: boolean | null; viruses: string[] }> };

export class ClamdScanner implements ScannerPort {
  private readonly clients = new Map<string, Promise<Clam>>();

  constructor(
    private readonly opts: { hosts: ClamdHost[]; timeoutMs: number; metrics: Metrics; log: Logger },
  ) {
    if (opts.hosts.length === 0) throw new Error('clamd: at least one host');
  }

  private client(h: ClamdHost): Promise<Clam> {
    const name = hostName(h);
    let c = this.clients.get(name);
    if (!c) {
      c = new NodeClam().init({
        removeInfected: false,
        quarantineInfected: false,
        scanLog: null,
        debugMode: false,
        preference: 'clamdscan',
        clamscan: { active: false },
        clamdscan: {
          socket: h.socket ?? false,
          host: h.socket ? false : (h.host ?? '127.0.0.1'),
          port: h.socket ? false : (h.port ?? 3310),
          timeout: this.opts.timeoutMs,
          localFallback: false,
          bypassTest: true,
          active: true,
        },
      }) as Promise<Clam>;
      c.catch(() => this.clients.delete(name));
      this.clients.set(name, c);
    }
    return c;
  }

  start(): LiveScan {
    const started = performance.now();
    const deadlineAt = Date.now() + this.opts.timeoutMs;
    const hosts = this.opts.hosts;
    const input = new PassThrough({ highWaterMark: 256 * 1024 });
    let failed: string | undefined;
    let aborted = false;
    const first = this.scanOne(hosts[0]!, input, deadlineAt).then(
      (r) => r,
      (err: Error) => ({ result: 'error' as const, detail: err.message, scanner: hostName(hosts[0]!), ms: 0 }),
    );
    void first.then((r) => {
      if (r.result === 'error') failed = r.detail;
    });
    const finish = (r: ScanResult): ScanResult => {
      const out = { ...r, ms: Math.round(performance.now() - started) };
      this.opts.metrics.scanDuration.observe(out.ms / 1000);
      this.opts.metrics.scans.labels(out.result).inc();
      if (out.signature) this.opts.metrics.scanSignatures.labels(signatureFamily(out.signature)).inc();
      return out;
    };
    return {
      write: async (chunk) => {
        if (failed || aborted || input.destroyed) return;
        if (input.write(chunk)) return;
        // clamd reads slower than the client sends: wait for it, but never past the deadline.
        await new Promise<void>((resolve) => {
          const wait = Math.max(0, deadlineAt - Date.now());
          const timer = setTimeout(done, wait);
          function done() {
            clearTimeout(timer);
            input.off('drain', done);
            input.off('close', done);
            resolve();
          }
          input.on('drain', done);
          input.on('close', done);
          void first.then(done);
        });
      },
      end: async (replay) => {
        if (!input.destroyed) input.end();
        let r = await first;
        // Not after abort(): the message is no longer wanted, and its spool may be gone.
        for (let i = 1; r.result === 'error' && !aborted && i < hosts.length && Date.now() < deadlineAt; i++) {
          this.opts.metrics.scanFailovers.inc();
          this.opts.log.warn({ event: 'clamd_failover', from: r.scanner, to: hostName(hosts[i]!), detail: r.detail }, 'clamd failed; scanning again on the next host');
          r = await this.scanOne(hosts[i]!, replay(), deadlineAt).catch((err: Error) => ({ result: 'error' as const, detail: err.message, scanner: hostName(hosts[i]!), ms: 0 }));
        }
        return finish(r);
      },
      abort: () => {
        aborted = true;
        input.destroy();
      },
    };
  }

  /** One INSTREAM scan on one host, bounded by the deadline whatever clamd does. */
  private async scanOne(h: ClamdHost, stream: Readable, deadlineAt: number): Promise<ScanResult> {
    const name = hostName(h);
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`clamd ${name} did not answer within the deadline`)), Math.max(0, deadlineAt - Date.now()));
    });
    try {
      const clam = await Promise.race([this.client(h), deadline]);
      const res = await Promise.race([clam.scanStream(stream), deadline]);
      if (res.isInfected === true) return { result: 'infected', signature: res.viruses[0] ?? 'unknown', scanner: name, ms: 0 };
      if (res.isInfected === false) return { result: 'clean', scanner: name, ms: 0 };
      return { result: 'error', detail: 'clamd gave no clear answer', scanner: name, ms: 0 };
    } catch (err) {
      this.opts.metrics.scanErrors.labels(errorKind(err as Error)).inc();
      // A hung scan keeps its socket: destroying the input ends clamscan's side of it.
      stream.destroy();
      return { result: 'error', detail: (err as Error).message, scanner: name, ms: 0 };
    } finally {
      clearTimeout(timer);
    }
  }

  /** PING/PONG with a deadline, for readiness and the clamd-up metric. */
  async ping(timeoutMs = 2000): Promise<{ ok: boolean; detail?: string }> {
    const results = await Promise.all(this.opts.hosts.map((h) => pingHost(h, timeoutMs)));
    this.opts.hosts.forEach((h, i) => this.opts.metrics.clamdUp.labels(hostName(h)).set(results[i]!.ok ? 1 : 0));
    const up = results.filter((r) => r.ok).length;
    return up > 0 ? { ok: true, detail: `${up}/${results.length} clamd up` } : { ok: false, detail: results.map((r, i) => `${hostName(this.opts.hosts[i]!)}: ${r.detail}`).join('; ') };
  }
}

export function pingHost(h: ClamdHost, timeoutMs: number): Promise<{ ok: boolean; detail?: string }> {
  return new Promise((resolve) => {
    const socket = h.socket ? net.connect({ path: h.socket }) : net.connect({ host: h.host ?? '127.0.0.1', port: h.port ?? 3310 });
    let reply = '';
    const done = (r: { ok: boolean; detail?: string }) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(r);
    };
    const timer = setTimeout(() => done({ ok: false, detail: `no PONG within ${timeoutMs} ms` }), timeoutMs);
    socket.on('connect', () => socket.write('zPING\0'));
    socket.on('data', (d) => {
      reply += d.toString();
      if (reply.includes('PONG')) done({ ok: true });
    });
    socket.on('error', (err) => done({ ok: false, detail: err.message }));
    socket.on('close', () => done({ ok: false, detail: reply ? `unexpected reply ${JSON.stringify(reply)}` : 'connection closed' }));
  });
}

function errorKind(err: Error): string {
  const m = err.message;
  if (/deadline|timed out|timeout/i.test(m)) return 'timeout';
  if (/ECONNREFUSED|ENOENT|connect/i.test(m)) return 'unreachable';
  if (/size limit/i.test(m)) return 'size_limit';
  return 'other';
}

/** A bounded label for metrics: "Heuristics.Limits.Exceeded.MaxRecursion" → "Heuristics", "Win.Trojan.X" → "Win". */
export function signatureFamily(signature: string): string {
  const first = signature.split('.')[0] ?? 'other';
  return /^[A-Za-z]{2,20}$/.test(first) ? first : 'other';
}
