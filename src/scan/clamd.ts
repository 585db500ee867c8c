// Virus scanning with clamd through the clamscan package (INSTREAM): the message is streamed to clamd as
// it arrives from the client. The answer is three-way — clean, infected (with the signature), or could
// not scan — and every wait has Douane's own deadline: clamscan does not bound them all (a frozen clamd
// hangs it forever) and its local-binary fallback is disabled so that a scan never silently runs
// somewhere else. Several clamd hosts: when one fails, the message is scanned again, from the spool, on
// the next one, within the same deadline.
//
// A host that refused a connection, or timed out and then did not answer PING either, is set aside: scans
// go to the hosts that answer, and a PING every second brings it back as soon as it answers. Without
// this, a frozen first host (which still accepts connections) would cost every message the whole deadline,
// leaving none for the failover. When every host is set aside, a scan fails at once rather than waiting on
// a host known not to answer. A timeout alone is not enough: a healthy clamd answers PING at once.
//
// clamscan writes to clamd as fast as it reads its input, and keeps its connection when the input goes:
// each scan's connection is taken from it, so that the client's next chunk waits while clamd is behind
// (memory stays bounded whatever clamd's pace), and so that the connection closes with the scan.
//
// The deadline (clamd.timeout) bounds clamd, not the client: while the message comes in it runs from
// the last time clamd took more of it, it stands still while clamd has all it was given and the client
// pauses, and from the final dot it is the time clamd has to answer. A client slower than the deadline
// is bounded by the session's own timeouts, and its clean message goes. A pause longer than clamd's own
// ReadTimeout ends the live scan there; the message is then scanned again from the spool, on that host.
// An empty message is not sent to clamd at all (it answers such a stream with no verdict).

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
  /** stops background work (health probes) */
  close?(): void;
}

export function hostName(h: ClamdHost): string {
  return h.socket ?? `${h.host ?? '127.0.0.1'}:${h.port ?? 3310}`;
}

type Clam = {
  scanStream(stream: Readable): Promise<{ isInfected: boolean | null; viruses: string[] }>;
  _initSocket(label?: string): Promise<net.Socket>;
};

/**
 * Bytes waiting in the socket to clamd before the client's next chunk waits for it: clamscan writes
 * what it reads from its input at once, with no regard for how fast clamd reads.
 */
const SOCKET_HIGH_WATER = 1024 * 1024;

/** How often a host set aside is asked for PONG (and how long each PING may take). */
const PROBE_MS = 1000;
/** How long a host that timed out has to answer PING before it is set aside. */
const CONFIRM_MS = 250;
/** A failover needs at least this much of the deadline left: a scan cannot finish in less. */
const MIN_FAILOVER_MS = 100;
/** a live scan that failed after the client was silent this long is tried again from the spool */
const CLIENT_PAUSE_MS = 1000;

/** When clamd's time is up: `at` moves on while clamd takes the message, and while it waits for the client. */
interface Deadline {
  at: number;
  clientsTurn(): boolean;
  timeoutMs: number;
}

export class ClamdScanner implements ScannerPort {
  private readonly clients = new Map<string, Promise<Clam>>();
  /** hosts set aside, by name: why, and the probe that will bring them back */
  private readonly setAside = new Map<string, { detail: string; probe?: NodeJS.Timeout }>();
  /** hosts that timed out, being asked for PONG */
  private readonly confirming = new Set<string>();
  private closed = false;

  constructor(
    private readonly opts: { hosts: ClamdHost[]; timeoutMs: number; metrics: Metrics; log: Logger; probeMs?: number },
  ) {
    if (opts.hosts.length === 0) throw new Error('clamd: at least one host');
  }

  /** The first host in the configured order that is not set aside and this scan has not tried yet. */
  private nextHost(tried: Set<string>): ClamdHost | undefined {
    return this.opts.hosts.find((h) => !this.setAside.has(hostName(h)) && !tried.has(hostName(h)));
  }

  private setHostAside(h: ClamdHost, detail: string): void {
    const name = hostName(h);
    if (this.closed || this.setAside.has(name)) return;
    this.opts.metrics.clamdUp.labels(name).set(0);
    this.opts.log.warn({ event: 'clamd_set_aside', scanner: name, detail }, `clamd ${name} failed (${detail}); scans go to the other hosts until it answers PING`);
    const every = this.opts.probeMs ?? PROBE_MS;
    const entry = { detail, probe: undefined as NodeJS.Timeout | undefined };
    // The first PING goes at once: a host that was only slow on one big message is back straight away.
    const probe = async () => {
      const r = await pingHost(h, every);
      if (this.closed) return;
      if (!r.ok) {
        entry.probe = setTimeout(probe, every).unref();
        return;
      }
      this.setAside.delete(name);
      this.opts.metrics.clamdUp.labels(name).set(1);
      this.opts.log.info({ event: 'clamd_back', scanner: name }, `clamd ${name} answers again`);
    };
    entry.probe = setTimeout(probe, 0).unref();
    this.setAside.set(name, entry);
  }

  /** A scan on this host timed out: set it aside unless it answers PING straight away. */
  private confirmDown(h: ClamdHost, detail: string): void {
    const name = hostName(h);
    if (this.closed || this.setAside.has(name) || this.confirming.has(name)) return;
    this.confirming.add(name);
    void pingHost(h, CONFIRM_MS).then((r) => {
      this.confirming.delete(name);
      if (!r.ok) this.setHostAside(h, `${detail}, nor PING within ${CONFIRM_MS} ms`);
    });
  }

  close(): void {
    this.closed = true;
    for (const { probe } of this.setAside.values()) clearTimeout(probe);
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
    const input = new PassThrough({ highWaterMark: 256 * 1024 });
    /** the first host's connection, once clamscan opened it */
    let socket: net.Socket | undefined;
    let failed: string | undefined;
    let aborted = false;
    let ended = false;
    let bytes = 0;
    let lastWrite = Date.now();
    /** how long the client had been silent when the live scan failed */
    let silentWhenFailed = 0;
    const deadline: Deadline = {
      at: Date.now() + this.opts.timeoutMs,
      // clamd has all it was given and waits for the client (a phone's stalled upload): not clamd's time.
      clientsTurn: () => !ended && input.writableLength === 0 && input.readableLength === 0 && (socket?.writableLength ?? 0) === 0,
      timeoutMs: this.opts.timeoutMs,
    };
    const progress = () => (deadline.at = Date.now() + this.opts.timeoutMs);
    const abandon = new AbortController();
    const tried = new Set<string>();
    const firstHost = this.nextHost(tried);
    if (firstHost) tried.add(hostName(firstHost));
    const first: Promise<ScanResult> = firstHost
      ? this.scanOne(firstHost, input, deadline, abandon.signal, (opened) => (socket = opened)).then(
          (r) => r,
          (err: Error) => ({ result: 'error' as const, detail: err.message, scanner: hostName(firstHost), ms: 0 }),
        )
      : Promise.resolve(this.noHostAnswers());
    void first.then((r) => {
      if (r.result !== 'error') return;
      failed = r.detail;
      silentWhenFailed = Date.now() - lastWrite;
    });
    /** when the message ended (the final dot): what the client waits for scanning is counted from it */
    let endedAt = started;
    const finish = (r: ScanResult): ScanResult => {
      const now = performance.now();
      const out = { ...r, ms: Math.round(now - started) };
      this.opts.metrics.scanDuration.observe((now - endedAt) / 1000);
      this.opts.metrics.scans.labels(out.result).inc();
      if (out.signature) this.opts.metrics.scanSignatures.labels(signatureFamily(out.signature)).inc();
      return out;
    };
    return {
      write: async (chunk) => {
        // Counted first: a message whose scan already failed is not an empty one.
        bytes += chunk.length;
        lastWrite = Date.now();
        if (failed || aborted || input.destroyed) return;
        // Before clamd's connection is open the input holds the message; after, clamscan moves it on to the
        // socket at once, where it waits for clamd: either one full means clamd reads slower than the client.
        const full = () => input.writableNeedDrain || (socket !== undefined && socket.writableLength > SOCKET_HIGH_WATER);
        input.write(chunk);
        if (!full()) {
          progress();
          return;
        }
        // Wait for clamd, but never past the deadline.
        await new Promise<void>((resolve) => {
          const wait = Math.max(0, deadline.at - Date.now());
          const timer = setTimeout(done, wait);
          const watched = new Set<NodeJS.EventEmitter>();
          function done(drained?: unknown) {
            clearTimeout(timer);
            for (const e of watched) e.off('drain', onDrain);
            input.off('close', done);
            if (drained === true) progress();
            resolve();
          }
          const watch = (e: NodeJS.EventEmitter | undefined) => {
            if (!e || watched.has(e)) return;
            watched.add(e);
            e.on('drain', onDrain);
          };
          // The socket may open while the input waits: it is watched from then on.
          const onDrain = () => {
            watch(socket);
            if (!full()) done(true);
          };
          watch(input);
          watch(socket);
          input.on('close', done);
          void first.then(() => done());
        });
      },
      end: async (replay) => {
        // From the final dot, clamd has the whole deadline to answer, however long the client took.
        ended = true;
        endedAt = performance.now();
        progress();
        // An empty message (DATA, then the dot at once) holds nothing to scan; clamd answers such a stream
        // with no verdict, which would tempfail it at every retry.
        if (bytes === 0 && !aborted) {
          abandon.abort();
          input.destroy();
          socket?.destroy();
          return finish({ result: 'clean', detail: 'empty message: nothing to scan', ms: 0 });
        }
        const failedInPause = failed !== undefined && silentWhenFailed >= CLIENT_PAUSE_MS;
        if (!input.destroyed) input.end();
        let r = await first;
        // The live scan ended during a long pause of the client (clamd's own ReadTimeout, 120 s by default):
        // the host was not at fault, so the message is scanned again there from the spool.
        if (r.result === 'error' && failedInPause && !aborted && firstHost && !this.setAside.has(hostName(firstHost)) && deadline.at - Date.now() >= MIN_FAILOVER_MS) {
          this.opts.log.info({ event: 'clamd_rescan', scanner: r.scanner, detail: r.detail }, 'the scan ended before the message did; scanning it again from the spool');
          r = await this.scanOne(firstHost, replay(), deadline, abandon.signal).catch((err: Error) => ({ result: 'error' as const, detail: err.message, scanner: hostName(firstHost), ms: 0 }));
        }
        // Not after abort(): the message is no longer wanted, and its spool may be gone. The next host is
        // chosen now: one set aside when the message started may answer again.
        for (;;) {
          const next = this.nextHost(tried);
          if (r.result !== 'error' || aborted || !next || deadline.at - Date.now() < MIN_FAILOVER_MS) break;
          tried.add(hostName(next));
          this.opts.metrics.scanFailovers.inc();
          this.opts.log.warn({ event: 'clamd_failover', from: r.scanner, to: hostName(next), detail: r.detail }, 'clamd failed; scanning again on the next host');
          r = await this.scanOne(next, replay(), deadline, abandon.signal).catch((err: Error) => ({ result: 'error' as const, detail: err.message, scanner: hostName(next), ms: 0 }));
        }
        return finish(r);
      },
      abort: () => {
        aborted = true;
        abandon.abort();
        input.destroy();
        // clamscan keeps its connection, and whatever waits in it, when its input goes: it goes here.
        socket?.destroy();
      },
    };
  }

  /** One INSTREAM scan on one host, bounded by the deadline whatever clamd does; settles at once when abandoned. */
  private async scanOne(h: ClamdHost, stream: Readable, at: Deadline, abandoned: AbortSignal, onSocket?: (socket: net.Socket) => void): Promise<ScanResult> {
    const name = hostName(h);
    let socket: net.Socket | undefined;
    let settled = false;
    let timer: NodeJS.Timeout | undefined;
    let onAbandon: (() => void) | undefined;
    const deadline = new Promise<never>((_, reject) => {
      // The deadline moves on while clamd takes the message: checked again when the timer fires.
      const arm = () => {
        if (at.at - Date.now() <= 0 && at.clientsTurn()) at.at = Date.now() + at.timeoutMs;
        const left = at.at - Date.now();
        if (left <= 0) reject(new Error(`clamd ${name} did not answer within the deadline`));
        else timer = setTimeout(arm, left);
      };
      arm();
      // clamscan never settles once its input is destroyed: without this the scan would end as a timeout.
      onAbandon = () => reject(new Error('scan abandoned'));
      if (abandoned.aborted) onAbandon();
      else abandoned.addEventListener('abort', onAbandon, { once: true });
    });
    try {
      const clam = await Promise.race([this.client(h), deadline]);
      // This scan's own view of the shared client, which hands over the connection clamscan opens for it:
      // its writes are watched for clamd's pace, and it is closed with the scan, as clamscan does not.
      const own = Object.create(clam) as Clam;
      own._initSocket = async (label) => {
        socket = await clam._initSocket.call(own, label);
        // clamscan closes a connection idle for its timeout, a client's pause included: the deadline above
        // bounds clamd instead.
        socket.setTimeout(0);
        // Opened after the scan ended (abandoned, or past the deadline, while it connected): nothing uses it.
        if (settled) socket.destroy();
        else onSocket?.(socket);
        return socket;
      };
      const res = await Promise.race([own.scanStream(stream), deadline]);
      if (res.isInfected === true) return { result: 'infected', signature: res.viruses[0] ?? 'unknown', scanner: name, ms: 0 };
      if (res.isInfected === false) return { result: 'clean', scanner: name, ms: 0 };
      this.opts.metrics.scanErrors.labels('other').inc();
      return { result: 'error', detail: 'clamd gave no clear answer', scanner: name, ms: 0 };
    } catch (err) {
      // A hung scan keeps its socket, and what was written to it: both go.
      stream.destroy();
      socket?.destroy();
      if (abandoned.aborted) return { result: 'error', detail: 'scan abandoned', scanner: name, ms: 0 };
      const { kind, detail } = describeFailure(err as Error);
      this.opts.metrics.scanErrors.labels(kind).inc();
      // A message clamd refuses (over its stream limit) says nothing about the host.
      if (kind === 'unreachable') this.setHostAside(h, detail);
      if (kind === 'timeout') this.confirmDown(h, detail);
      return { result: 'error', detail, scanner: name, ms: 0 };
    } finally {
      settled = true;
      clearTimeout(timer);
      if (onAbandon) abandoned.removeEventListener('abort', onAbandon);
    }
  }

  private noHostAnswers(): ScanResult {
    this.opts.metrics.scanErrors.labels('unreachable').inc();
    const why = [...this.setAside].map(([name, { detail }]) => `${name}: ${detail}`).join('; ');
    return { result: 'error', detail: `no clamd answers (${why})`, ms: 0 };
  }

  /** PING/PONG with a deadline, for readiness and the clamd-up metric. */
  async ping(timeoutMs = 2000): Promise<{ ok: boolean; detail?: string }> {
    const results = await Promise.all(this.opts.hosts.map((h) => pingHost(h, timeoutMs)));
    this.opts.hosts.forEach((h, i) => this.opts.metrics.clamdUp.labels(hostName(h)).set(results[i]!.ok ? 1 : 0));
    const up = results.filter((r) => r.ok).length;
    return up > 0 ? { ok: true, detail: `${up}/${results.length} clamd up` } : { ok: false, detail: results.map((r, i) => `${hostName(this.opts.hosts[i]!)}: ${r.detail}`).join('; ') };
  }
}

/** Never rejects: a host that cannot even be dialled is one that does not answer. */
export function pingHost(h: ClamdHost, timeoutMs: number): Promise<{ ok: boolean; detail?: string }> {
  return new Promise((resolve) => {
    let socket: net.Socket;
    try {
      socket = h.socket ? net.connect({ path: h.socket }) : net.connect({ host: h.host ?? '127.0.0.1', port: h.port ?? 3310 });
    } catch (err) {
      resolve({ ok: false, detail: (err as Error).message });
      return;
    }
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

/** What a failed scan is counted as, and what the log says about it. */
function describeFailure(err: Error): { kind: string; detail: string } {
  const m = err.message;
  const { code, syscall } = err as NodeJS.ErrnoException;
  if (/deadline|timed out|timeout/i.test(m)) return { kind: 'timeout', detail: m };
  // Refused, missing, or reset as it was being opened (a port forwarded to a clamd that is gone): the
  // host is set aside.
  if (syscall === 'connect' || /ECONNREFUSED|ENOENT|connect/i.test(m)) return { kind: 'unreachable', detail: m };
  if (/size limit/i.test(m)) return { kind: 'size_limit', detail: m };
  if (code === 'EPIPE' || code === 'ECONNRESET') {
    // clamd answers "INSTREAM size limit exceeded" and closes at once, with the rest of the stream unread:
    // the kernel then resets the connection, and the reset can reach Douane before its reply is read
    // (clamscan drops a reply that came with an error). Otherwise clamd ends a connection without a
    // verdict when it stops (a crash on the file, the OOM killer), which the next scan finds, or after
    // its ReadTimeout (120 s by default, past the default scan deadline of 60 s).
    return { kind: 'closed', detail: `clamd closed the connection without a verdict (${m}): the message is most likely over clamd's stream size limit (StreamMaxLength), which the reset can hide clamd's reply about, or clamd stopped while reading or scanning it` };
  }
  if (/^Scan aborted\. Reply from server:\s*$/.test(m)) return { kind: 'closed', detail: 'clamd closed the connection before the end of the message, without a reply' };
  return { kind: 'other', detail: m };
}

/** A bounded label for metrics: "Heuristics.Limits.Exceeded.MaxRecursion" → "Heuristics", "Win.Trojan.X" → "Win". */
export function signatureFamily(signature: string): string {
  const first = signature.split('.')[0] ?? 'other';
  return /^[A-Za-z]{2,20}$/.test(first) ? first : 'other';
}
