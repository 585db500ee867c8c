// A small SMTP client that forwards one command at a time and returns the upstream's own reply, the way
// Postfix's smtpd_proxy_filter talks to its after-queue server. nodemailer's client sends MAIL, RCPT and
// DATA as one unit, which cannot give a client the upstream's answer to each command as it is sent.
// Every wait has a deadline; after a timeout, a drop or a protocol error the connection is unusable.

import net from 'node:net';
import tls from 'node:tls';
import { once } from 'node:events';
import type { Readable } from 'node:stream';
import { ReplyParser, formatReply, type SmtpReply } from './reply.js';
import { AddressList, LOOPBACK } from '../validate/net.js';

export type UpstreamTlsMode = 'opportunistic' | 'starttls' | 'implicit' | 'none';

export interface UpstreamEndpoint {
  host: string;
  port: number;
  tls: UpstreamTlsMode;
  verifyCertificate: boolean;
  ca?: string | Buffer;
  servername?: string;
  heloName: string;
  timeouts: { connect: number; command: number; data: number; keepalive: number };
}

export type UpstreamErrorKind = 'connect' | 'timeout' | 'closed' | 'protocol' | 'tls' | 'refused';

export class UpstreamError extends Error {
  constructor(
    readonly kind: UpstreamErrorKind,
    message: string,
    /** the reply that caused it, when the upstream answered (e.g. a 421 greeting) */
    readonly reply?: SmtpReply,
  ) {
    super(message);
    this.name = 'UpstreamError';
  }
}

interface Waiter {
  resolve(reply: SmtpReply): void;
  reject(err: Error): void;
  /** the reply's deadline; none yet while the command it answers is still being sent (DATA's body) */
  timer?: NodeJS.Timeout;
  /** the reply has come, or the connection failed */
  settled?: boolean;
}

export interface XclientAttributes {
  ADDR?: string;
  PORT?: string;
  NAME?: string;
  HELO?: string;
  PROTO?: string;
  LOGIN?: string;
}

/** Thrown inside data() when the upstream answered before the message's last bytes were sent. */
class EarlyAnswer extends Error {}

export class SmtpClient {
  private socket!: net.Socket;
  private readonly parser = new ReplyParser();
  private readonly waiters: Waiter[] = [];
  private failure: UpstreamError | undefined;
  /** aborted by the first failure: ends the waits for a connect or a TLS handshake, which the socket alone may never end */
  private readonly failed = new AbortController();
  /** EHLO keywords (upper case) to their parameters */
  capabilities = new Map<string, string>();
  secure = false;
  /** the TCP (or TLS) connection was made: a socket error after it is the connection's closing, not its opening */
  private connected = false;
  /** true between an accepted MAIL and the end of DATA or RSET */
  inTransaction = false;
  /** counts transactions begun and ended here: a keepalive belongs to one of them */
  private transactionSerial = 0;
  /** set once the client authenticated on this connection */
  authenticated = false;
  /**
   * Refusals (4xx, 5xx) and RSET or NOOP commands since the last message the upstream accepted here: what
   * Postfix counts, per connection, against smtpd_soft_error_limit and smtpd_junk_command_limit before it
   * slows its replies down or hangs up.
   */
  errorsSinceDelivery = 0;
  junkSinceDelivery = 0;
  readonly openedAt = Date.now();
  lastUsedAt = Date.now();

  private constructor(
    readonly endpoint: UpstreamEndpoint,
    /** whether traffic to this peer address stays on this machine (credentials may then go in clear) */
    private readonly peerIsLocal: (address: string) => boolean = isLoopbackAddress,
  ) {}

  /** Opens a connection: greeting, EHLO, STARTTLS as the endpoint's TLS mode says, optional XCLIENT. */
  static async connect(endpoint: UpstreamEndpoint, opts: { xclient?: XclientAttributes; peerIsLocal?: (address: string) => boolean } = {}): Promise<SmtpClient> {
    const client = new SmtpClient(endpoint, opts.peerIsLocal);
    const deadline = setTimeout(() => client.fail(new UpstreamError('timeout', `no usable SMTP session with ${endpoint.host}:${endpoint.port} within ${endpoint.timeouts.connect} ms`)), endpoint.timeouts.connect);
    try {
      await client.open();
      const greeting = await client.read(endpoint.timeouts.connect);
      if (greeting.code !== 220) throw new UpstreamError('refused', `upstream greeted with ${formatReply(greeting)}`, greeting);
      await client.ehlo();
      if (endpoint.tls === 'starttls' || (endpoint.tls === 'opportunistic' && client.capabilities.has('STARTTLS'))) {
        await client.starttls();
        await client.ehlo();
      }
      if (opts.xclient && client.capabilities.has('XCLIENT')) {
        const reply = await client.command(`XCLIENT ${xclientArgs(opts.xclient, client.capabilities.get('XCLIENT') ?? '')}`);
        if (reply.code !== 220) {
          // Postfix without IPv6 (inet_protocols = ipv4) refuses every IPv6 address, whatever its form.
          const why = opts.xclient.ADDR?.startsWith('IPV6:') ? ' (the client has an IPv6 address: the upstream must take them, with inet_protocols = all for Postfix)' : '';
          throw new UpstreamError('refused', `upstream refused XCLIENT: ${formatReply(reply)}${why}`, reply);
        }
        // The EHLO after XCLIENT sets the HELO name the upstream records: the client's, not ours.
        await client.ehlo(opts.xclient.HELO);
      }
      return client;
    } catch (err) {
      // The reason, before destroy() records its own ("closed by Douane") for a refusal thrown here.
      const reason = client.failure ?? asUpstreamError(err);
      client.destroy();
      throw reason;
    } finally {
      clearTimeout(deadline);
    }
  }

  /** why the connection is no longer usable, when it is not */
  get lostBecause(): string | undefined {
    return this.failure?.message ?? (this.socket.destroyed ? 'the connection closed' : undefined);
  }

  get usable(): boolean {
    return !this.failure && !this.socket.destroyed;
  }

  /** a command is waiting for its reply: the connection is in use whatever the transaction state says */
  get awaitingReply(): boolean {
    return this.waiters.length > 0;
  }

  get maxSize(): number | undefined {
    const size = Number(this.capabilities.get('SIZE'));
    return Number.isFinite(size) && size > 0 ? size : undefined;
  }

  supports(extension: string): boolean {
    return this.capabilities.has(extension.toUpperCase());
  }

  private async open(): Promise<void> {
    const { host, port } = this.endpoint;
    const socket =
      this.endpoint.tls === 'implicit'
        ? tls.connect({ host, port, ...this.tlsOptions() })
        : net.connect({ host, port });
    socket.setNoDelay(true);
    this.attach(socket);
    try {
      // A destroyed socket emits only 'close', which once() does not watch: the connect deadline ends the wait.
      await once(socket, this.endpoint.tls === 'implicit' ? 'secureConnect' : 'connect', { signal: this.failed.signal });
    } catch (err) {
      throw new UpstreamError('connect', `cannot connect to upstream ${host}:${port}: ${(err as Error).message}`);
    }
    this.connected = true;
    this.secure = this.endpoint.tls === 'implicit';
  }

  private tlsOptions(): tls.ConnectionOptions {
    const e = this.endpoint;
    return {
      // The name the certificate is checked against is the servername, else the host: without a host, a
      // STARTTLS upgrade (tls.connect over the plain socket) would check an IP upstream against "localhost".
      host: e.host,
      servername: e.servername ?? (net.isIP(e.host) ? undefined : e.host),
      rejectUnauthorized: e.verifyCertificate,
      ca: e.ca,
      minVersion: 'TLSv1.2',
    };
  }

  private attach(socket: net.Socket): void {
    this.socket = socket;
    // UTF-8: a reply may quote an international address (SMTPUTF8), and goes to the client as it was
    // written. A character split between two reads is joined first.
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.onData(chunk));
    // Before the connection is made, an error is the connection's (refused, unreachable): "connect", which the
    // alert reads as the MTA down, not "closed", an MTA dropping sessions.
    socket.on('error', (err) => this.fail(new UpstreamError(this.connected ? 'closed' : 'connect', `${this.connected ? 'upstream connection failed' : `cannot connect to upstream ${this.endpoint.host}:${this.endpoint.port}`}: ${err.message}`)));
    socket.on('close', () => this.fail(new UpstreamError('closed', 'upstream closed the connection')));
  }

  private detach(socket: net.Socket): void {
    socket.removeAllListeners('data');
    socket.removeAllListeners('error');
    socket.removeAllListeners('close');
    socket.on('error', () => {});
  }

  private onData(chunk: string): void {
    let replies: SmtpReply[];
    try {
      replies = this.parser.push(chunk);
    } catch (err) {
      this.fail(new UpstreamError('protocol', (err as Error).message));
      return;
    }
    for (const reply of replies) {
      const waiter = this.waiters.shift();
      if (waiter) {
        clearTimeout(waiter.timer);
        waiter.settled = true;
        if (reply.code >= 400) this.errorsSinceDelivery++;
        waiter.resolve(reply);
        // 421 to any command: the upstream closes the session (RFC 5321 3.8). Its close may come a little
        // later; until then the connection must not go back to the pool for another session.
        if (reply.code === 421) this.fail(new UpstreamError('closed', `upstream answered ${formatReply(reply)}: it closes the session`, reply));
      } else {
        // An unsolicited reply is the upstream ending the session (421 on idle or shutdown).
        this.fail(new UpstreamError('closed', `upstream sent ${formatReply(reply)} unprompted`, reply));
      }
    }
  }

  private fail(err: UpstreamError): void {
    if (!this.failure) {
      this.failure = err;
      this.failed.abort(err);
    }
    while (this.waiters.length) {
      const w = this.waiters.shift()!;
      clearTimeout(w.timer);
      w.settled = true;
      w.reject(this.failure);
    }
    if (this.socket && !this.socket.destroyed) this.socket.destroy();
  }

  private read(timeout: number): Promise<SmtpReply> {
    const next = this.readLater(timeout);
    next.arm();
    return next.reply;
  }

  /**
   * Takes the next reply, with its deadline started by arm(): a reply to a command still being sent (the
   * message after DATA) is waited for from the last byte on. The time to send is another deadline's
   * (writeChunk: the upstream must keep reading).
   */
  private readLater(timeout: number): { reply: Promise<SmtpReply>; arm: () => void; came: () => boolean } {
    if (this.failure) return { reply: Promise.reject(this.failure), arm: () => undefined, came: () => true };
    let waiter!: Waiter;
    const reply = new Promise<SmtpReply>((resolve, reject) => {
      waiter = { resolve, reject };
      this.waiters.push(waiter);
    });
    const arm = () => {
      if (waiter.settled || waiter.timer) return;
      waiter.timer = setTimeout(() => this.fail(new UpstreamError('timeout', `upstream did not answer within ${timeout} ms`)), timeout);
    };
    return { reply, arm, came: () => waiter.settled === true };
  }

  private write(data: string | Buffer): boolean {
    if (this.failure) throw this.failure;
    return this.socket.write(data);
  }

  /** Sends one command line and waits for its reply. */
  async command(line: string, timeout = this.endpoint.timeouts.command): Promise<SmtpReply> {
    if (/[\r\n\0]/.test(line)) throw new UpstreamError('protocol', 'refusing to send a command containing CR, LF or NUL');
    if (this.failure) throw this.failure;
    const reply = this.read(timeout);
    if (/^(?:RSET|NOOP)\b/i.test(line)) this.junkSinceDelivery++;
    try {
      this.write(line + '\r\n');
    } catch (err) {
      reply.catch(() => {});
      throw err;
    }
    this.lastUsedAt = Date.now();
    return reply;
  }

  /**
   * Sends NOOP every `timeouts.keepalive` while nothing else is said, for as long as the client is still
   * sending its message or it is being checked: the upstream's idle timeout (Postfix: smtpd_timeout) runs
   * meanwhile, and an AUTH session cannot be opened again without the password. Returns the stop function,
   * which waits for a NOOP in flight (NOOP ends a pipelined group: nothing may follow it unanswered).
   */
  keepAlive(): () => Promise<void> {
    let inFlight: Promise<unknown> | undefined;
    // Only for the transaction open now: once it is reset (its client left) the connection may serve
    // another session, whose upstream must not count NOOPs of ours.
    const serial = this.transactionSerial;
    const timer = setInterval(() => {
      if (this.failure || this.awaitingReply || !this.inTransaction || this.transactionSerial !== serial) return;
      inFlight = this.command('NOOP').then(
        (reply) => {
          // 421: the upstream is closing the session (Postfix under stress shortens its timeouts).
          if (reply.code === 421) this.fail(new UpstreamError('closed', `upstream answered NOOP with ${formatReply(reply)}`, reply));
        },
        () => undefined,
      );
    }, this.endpoint.timeouts.keepalive);
    timer.unref();
    return async () => {
      clearInterval(timer);
      await inFlight;
    };
  }

  private async ehlo(name = this.endpoint.heloName): Promise<void> {
    let reply = await this.command(`EHLO ${name}`);
    if (reply.code >= 500) reply = await this.command(`HELO ${name}`);
    if (reply.code !== 250) throw new UpstreamError('refused', `upstream refused EHLO: ${formatReply(reply)}`, reply);
    this.capabilities = new Map();
    for (const line of reply.lines.slice(1)) {
      const [keyword, ...params] = line.trim().split(/\s+/);
      if (keyword) this.capabilities.set(keyword.toUpperCase(), params.join(' '));
    }
  }

  private async starttls(): Promise<void> {
    if (!this.capabilities.has('STARTTLS')) {
      throw new UpstreamError('tls', 'upstream does not offer STARTTLS but the configuration requires it (upstream.tls: starttls)');
    }
    const reply = await this.command('STARTTLS');
    if (reply.code !== 220) throw new UpstreamError('tls', `upstream refused STARTTLS: ${formatReply(reply)}`, reply);
    // Anything after the 220 was sent in clear before the handshake, where anyone on the path can add it:
    // carried into the TLS session it would be read as the start of the encrypted EHLO reply (a CHUNKING
    // the upstream never offered). RFC 3207 §4.2: it is not to be trusted; a connection that has it is refused.
    if (!this.parser.idle) throw new UpstreamError('tls', 'upstream sent more after its 220 to STARTTLS, in clear, before the TLS handshake (an injection on the path?)');
    const raw = this.socket;
    this.detach(raw);
    const secure = tls.connect({ socket: raw, ...this.tlsOptions() });
    this.attach(secure);
    try {
      await once(secure, 'secureConnect', { signal: this.failed.signal });
    } catch (err) {
      throw new UpstreamError('tls', `TLS handshake with upstream failed: ${(err as Error).message}`);
    }
    this.secure = true;
  }

  /**
   * Passes the client's credentials through. PLAIN when the upstream offers it, else LOGIN; the
   * credentials are the same whichever mechanism the client used with us. Nothing here is logged.
   */
  async auth(username: string | Buffer, password: string | Buffer, authzid: string | Buffer = ''): Promise<SmtpReply> {
    // Opportunistic TLS gives way to whoever strips STARTTLS from the EHLO reply on the path: a client's
    // password then goes in clear only to an upstream on this machine. tls: none says in so many words
    // that the network is trusted.
    if (!this.secure && this.endpoint.tls === 'opportunistic' && !this.peerIsLocal(this.socket.remoteAddress ?? '')) {
      throw new UpstreamError('tls', `the upstream at ${this.endpoint.host} offered no STARTTLS: the client's credentials are not sent in clear (set upstream.tls to starttls, or to none on a network you trust)`);
    }
    const mechanisms = (this.capabilities.get('AUTH') ?? '').toUpperCase().split(/\s+/);
    let reply: SmtpReply;
    if (mechanisms.includes('PLAIN')) {
      const token = Buffer.concat([bytes(authzid), NUL, bytes(username), NUL, bytes(password)]).toString('base64');
      // RFC 4954: an initial response that would make the command longer than a command line may be (512
      // octets) goes on a line of its own, after the server's 334; Postfix cuts command lines at 2048.
      if (`AUTH PLAIN ${token}\r\n`.length <= 512) reply = await this.command(`AUTH PLAIN ${token}`);
      else {
        reply = await this.command('AUTH PLAIN');
        if (reply.code === 334) reply = await this.command(token);
      }
    } else if (mechanisms.includes('LOGIN')) {
      reply = await this.command('AUTH LOGIN');
      if (reply.code === 334) reply = await this.command(bytes(username).toString('base64'));
      if (reply.code === 334) reply = await this.command(bytes(password).toString('base64'));
    } else {
      throw new UpstreamError('refused', 'upstream offers neither AUTH PLAIN nor AUTH LOGIN on this connection');
    }
    if (reply.code === 334) {
      // A challenge we did not expect: abort the exchange rather than guess.
      reply = await this.command('*');
    }
    if (reply.code === 235) this.authenticated = true;
    return reply;
  }

  async mail(address: string, params: string[] = []): Promise<SmtpReply> {
    if (this.inTransaction) await this.rset();
    const reply = await this.command(`MAIL FROM:<${address}>${params.length ? ' ' + params.join(' ') : ''}`);
    // Any 2xx opens the transaction, as the client is told it did.
    if (reply.code >= 200 && reply.code < 300) {
      this.inTransaction = true;
      this.transactionSerial++;
    }
    return reply;
  }

  rcpt(address: string, params: string[] = []): Promise<SmtpReply> {
    return this.command(`RCPT TO:<${address}>${params.length ? ' ' + params.join(' ') : ''}`);
  }

  async rset(): Promise<SmtpReply> {
    const reply = await this.command('RSET');
    if (reply.code !== 250) throw new UpstreamError('protocol', `upstream refused RSET: ${formatReply(reply)}`, reply);
    this.inTransaction = false;
    this.transactionSerial++;
    return reply;
  }

  /**
   * Sends the message and returns the upstream's reply for it. With CHUNKING (RFC 3030) and a known size,
   * one `BDAT <size> LAST` carries it in one round trip and without dot-stuffing; otherwise DATA, the
   * message dot-stuffed, and the final dot. The message must use CRLF line endings only (the data checks
   * refuse anything else before we get here). `lastBytes` is called as the message's last bytes (the
   * final dot, or the end of BDAT LAST's chunk) are handed to the socket: from then on the upstream may
   * queue the message at any moment.
   */
  async data(message: Readable | AsyncIterable<Buffer>, prefix?: Buffer, size?: number, lastBytes?: () => void): Promise<SmtpReply> {
    const total = size === undefined ? undefined : size + (prefix?.length ?? 0);
    const chunking = total !== undefined && this.supports('CHUNKING');
    let start: SmtpReply | undefined;
    if (!chunking) {
      start = await this.command('DATA');
      if (start.code !== 354) {
        // A 2xx here is no answer to DATA: passed on, it would tell the client its message was sent.
        if (start.code < 400) {
          this.fail(new UpstreamError('protocol', `the upstream answered DATA with ${formatReply(start)} instead of 354`, start));
          throw this.failure;
        }
        // A refused DATA leaves the transaction open at the upstream; the next mail() sends RSET first.
        return start;
      }
    }
    // Waited for from the end of the message on: a big message to a slow upstream takes longer to send
    // than timeouts.data, which bounds each stall while sending (writeChunk) and the final answer.
    const { reply: final, arm: armFinal, came } = this.readLater(this.endpoint.timeouts.data);
    final.catch(() => {}); // observed below; avoid an unhandled rejection while streaming
    // An answer before the message's last bytes went out answers no message: the upstream is out of step.
    const send = async (chunk: Buffer) => {
      if (came()) throw new EarlyAnswer();
      await this.writeChunk(chunk);
    };
    // Small messages go out in one write (a syscall costs more than the copy); big ones stream.
    const cork = total !== undefined && total <= 256 * 1024;
    if (cork) this.socket.cork();
    try {
      if (chunking) {
        let written = prefix?.length ?? 0;
        // An empty message (or the tag header alone) is whole with its BDAT line.
        await send(Buffer.from(`BDAT ${total} LAST\r\n`));
        if (written >= total) lastBytes?.();
        if (prefix) await send(prefix);
        for await (const chunk of message) {
          const before = written;
          written += (chunk as Buffer).length;
          if (before < total && written >= total) lastBytes?.();
          await send(chunk as Buffer);
        }
      } else {
        const stuffer = new DotStuffer();
        if (prefix) await send(stuffer.push(prefix));
        for await (const chunk of message) await send(stuffer.push(chunk as Buffer));
        lastBytes?.();
        await send(stuffer.end());
      }
    } catch (err) {
      if (err instanceof EarlyAnswer) return this.earlyAnswer(final);
      this.fail(err instanceof UpstreamError ? err : new UpstreamError('closed', `sending the message failed: ${(err as Error).message}`));
      throw this.failure;
    } finally {
      if (cork) this.socket.uncork();
    }
    armFinal();
    this.lastUsedAt = Date.now();
    const reply = await final;
    this.inTransaction = false;
    if (reply.code === 250) this.errorsSinceDelivery = this.junkSinceDelivery = 0;
    return reply;
  }

  /**
   * The upstream answered while the message was still going out. A refusal is passed on (the client keeps
   * the message); an acceptance of a message it has not seen whole is a protocol error, which the client
   * gets as a 4xx. Either way the connection is out of step and not used again.
   */
  private async earlyAnswer(final: Promise<SmtpReply>): Promise<SmtpReply> {
    const reply = await final; // settled: a reply, or the connection's failure
    const error = new UpstreamError('protocol', `the upstream answered ${formatReply(reply)} before the end of the message`, reply);
    this.fail(error);
    if (reply.code < 400) throw error;
    this.inTransaction = false;
    return reply;
  }

  private async writeChunk(chunk: Buffer): Promise<void> {
    if (chunk.length === 0) return;
    // While corked nothing drains: the bounded small message is sent whole on uncork.
    if (!this.write(chunk) && this.socket.writableCorked === 0) {
      await new Promise<void>((resolve, reject) => {
        const onDrain = () => {
          cleanup();
          resolve();
        };
        const onClose = () => {
          cleanup();
          reject(this.failure ?? new UpstreamError('closed', 'upstream closed the connection during DATA'));
        };
        const timer = setTimeout(() => {
          cleanup();
          reject(new UpstreamError('timeout', `upstream stopped reading the message for ${this.endpoint.timeouts.data} ms`));
        }, this.endpoint.timeouts.data);
        const cleanup = () => {
          clearTimeout(timer);
          this.socket.off('drain', onDrain);
          this.socket.off('close', onClose);
        };
        this.socket.on('drain', onDrain);
        this.socket.on('close', onClose);
      });
    }
  }

  /** Polite close; never throws and never waits longer than the command deadline. */
  async quit(): Promise<void> {
    if (!this.usable) return this.destroy();
    try {
      await this.command('QUIT', Math.min(this.endpoint.timeouts.command, 5000));
    } catch {
      // already closing
    }
    this.destroy();
  }

  destroy(): void {
    if (!this.failure) this.failure = new UpstreamError('closed', 'connection closed by Douane');
    for (const w of this.waiters.splice(0)) {
      clearTimeout(w.timer);
      w.settled = true;
      w.reject(this.failure);
    }
    if (this.socket && !this.socket.destroyed) this.socket.destroy();
  }
}

/** Doubles a leading dot on every line (RFC 5321 4.5.2) and terminates the message. */
export class DotStuffer {
  private atLineStart = true;
  private lastTwo: Buffer = Buffer.from('\r\n');

  push(chunk: Buffer): Buffer {
    if (chunk.length === 0) return chunk;
    const parts: Buffer[] = [];
    let from = 0;
    if (this.atLineStart && chunk[0] === 0x2e) parts.push(Buffer.from('.'));
    for (let i = chunk.indexOf(0x0a); i >= 0 && i < chunk.length - 1; i = chunk.indexOf(0x0a, i + 1)) {
      if (chunk[i + 1] === 0x2e) {
        parts.push(chunk.subarray(from, i + 1), Buffer.from('.'));
        from = i + 1;
      }
    }
    parts.push(from === 0 ? chunk : chunk.subarray(from));
    this.atLineStart = chunk[chunk.length - 1] === 0x0a;
    this.lastTwo = chunk.length >= 2 ? chunk.subarray(chunk.length - 2) : Buffer.concat([this.lastTwo, chunk]).subarray(-2);
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
  }

  end(): Buffer {
    const endsWithCrlf = this.lastTwo[0] === 0x0d && this.lastTwo[1] === 0x0a;
    return Buffer.from(endsWithCrlf ? '.\r\n' : '\r\n.\r\n');
  }
}

const NUL = Buffer.from([0]);

/** A credential as bytes: a string is its UTF-8, a Buffer the client's own bytes. */
function bytes(credential: string | Buffer): Buffer {
  return Buffer.isBuffer(credential) ? credential : Buffer.from(credential, 'utf8');
}

function xtext(value: string): string {
  // xtext encodes bytes (RFC 3461): a character beyond ASCII is its UTF-8 bytes, each as +XX.
  return value.replace(/[^\x21-\x7e]|[+=]/gu, (c) => [...Buffer.from(c, 'utf8')].map((b) => '+' + b.toString(16).toUpperCase().padStart(2, '0')).join(''));
}

function xclientArgs(attrs: XclientAttributes, offered: string): string {
  const allowed = new Set(offered.toUpperCase().split(/\s+/));
  return Object.entries(attrs)
    .filter(([k, v]) => v !== undefined && (allowed.size === 0 || allowed.has(k)))
    .map(([k, v]) => `${k}=${xtext(String(v))}`)
    .join(' ');
}

function asUpstreamError(err: unknown): UpstreamError {
  if (err instanceof UpstreamError) return err;
  return new UpstreamError('connect', (err as Error)?.message ?? String(err));
}

const loopback = new AddressList(LOOPBACK);

/** 127.0.0.0/8 and ::1 (IPv4-mapped too): the peer of a connection that never leaves the machine. */
export function isLoopbackAddress(address: string): boolean {
  return loopback.has(address);
}
