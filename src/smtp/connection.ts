// Adapts smtp-server's connection to a submission proxy. smtp-server is pinned to 3.21.6 and these
// overrides are covered by test/functional/smtp-connection.test.ts, so an upgrade that changes the
// internals they rely on fails loudly rather than silently. What changes and why:
//  - no 100 ms early-talker pause before the greeting: on a submission port it is pure latency and caps a
//    one-message-per-connection client near 10 messages/s. A command that arrives while our connect checks
//    run is still answered 421 by smtp-server; as the checks are local, commands written at once are in
//    practice read after the greeting and answered in order;
//  - every reply carries the enhanced status code we chose (ours, or the upstream's), not the library's
//    guess from the reply code; MAIL and RCPT successes carry the upstream's own text;
//  - command lines ended by a bare LF, or containing NUL, are refused (smtp-server accepts "\n" alone);
//  - AUTH is not offered before STARTTLS on a listener that refuses it there (538);
//  - during a graceful shutdown, new transactions are refused while open ones may finish;
//  - an overall session deadline bounds how long one client may hold a connection;
//  - MAIL FROM and RCPT TO addresses reach the upstream as the client wrote them: smtp-server turns an
//    IDNA domain (xn--…) into Unicode, which relayed would put 8-bit bytes in a command the client sent in
//    ASCII, and it splits a quoted local part with a space in it ("john doe"@example.com, RFC 5321 4.1.2);
//    an address that is not UTF-8 is refused rather than relayed with its bytes replaced. Their parameters
//    are kept as written too (paramsAsWritten): smtp-server decodes xtext (ENVID, ORCPT), which relayed
//    would no longer be xtext;
//  - DSN and SMTPUTF8 are offered only while the upstream offers them (ConnectionHooks.upstreamOffers), and a
//    MAIL or RCPT parameter that would not reach the upstream for what it asks is refused (555);
//  - AUTH credentials are kept as the client's bytes (takeCredentialsAsSent): smtp-server decodes them as
//    UTF-8, replacing what is not, and a password typed on an old client in its code page would reach the
//    upstream changed, and fail there.

import { isUtf8 } from 'node:buffer';
import type net from 'node:net';
import type tls from 'node:tls';
import { SMTPServer, type SMTPServerOptions, type SMTPServerSession } from 'smtp-server';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';
import { SMTPStream } from 'smtp-server/lib/smtp-stream.js';
import type { ReasonCode } from '../reasons.js';
import { paramNotTaken, type WrittenParams } from '../upstream/params.js';
import type { Phase } from '../pipeline/verdict.js';
import { LIBRARY_REPLIES, PROTOCOL_ENHANCED, formatWire, naturalAction, replyFor, type WireReply } from './replies.js';

type ParsedAddress = ReturnType<SMTPConnection['_parseAddressCommand']>;

/** Extensions EHLO offers only while the upstream does. */
const UPSTREAM_EXTENSIONS = ['DSN', 'SMTPUTF8'];

/** How often a session past its deadline looks again for a moment when none of our replies is pending. */
const DEADLINE_RECHECK_MS = 100;

const ENHANCED_PREFIX = /^[245]\.\d{1,3}\.\d{1,3} /;
/** "MAIL FROM:" or "RCPT TO:", then the path in angle brackets: after any blank smtp-server's own parse trims */
const ADDRESS_COMMAND = /^([^:]*:\s*)<([^<>]*)>/;
/** a quoted local part, escapes included */
const QUOTED_LOCAL_PART = /^"(?:[^"\\]|\\.)*"(?=@)/;
/** a source route, which RFC 5321 says to accept and ignore */
const SOURCE_ROUTE = /^@[^\s,:@]+(?:,@[^\s,:@]+)*:/;

export interface ConnectionHooks {
  /** incident reference for replies that are not about one transaction */
  sessionReference(session: SMTPServerSession): string;
  /** the upstream's success text for the MAIL or RCPT just accepted, taken once */
  takeSuccessText(session: SMTPServerSession, context: 'MAIL_FROM_OK' | 'RCPT_TO_OK'): string | undefined;
  /** true while the gateway drains for shutdown */
  draining(): boolean;
  /** a session-level refusal that no handler saw (bare LF, deadline, cap) — for the log and metrics */
  onProtocolRefusal(session: SMTPServerSession, reason: ReasonCode, reply: WireReply, client: string): void;
  /** the library's own error reply (unknown command, bad syntax, bad sequence), as sent */
  onProtocolError(session: SMTPServerSession, reply: string): void;
  /** overall per-session deadline in ms */
  sessionDeadline: number;
  /** the client ended the transaction in progress without DATA (RSET, EHLO, HELO, STARTTLS) */
  onTransactionReset(session: SMTPServerSession): void;
  /** whether the upstream offers an extension: EHLO offers DSN and SMTPUTF8 only while it does */
  upstreamOffers(extension: string): boolean;
  /**
   * Implicit TLS: connections one address may hold before their handshake is done (its sessions
   * included). Before the handshake nothing can be written, and smtp-server refuses every new connection
   * once max_connections wait for theirs: without this cap one address could lock everyone out.
   */
  maxSocketsPerIp?: number;
  /** a connection closed at once for the cap above */
  onSocketRefused?(ip: string): void;
  /**
   * A load balancer sending the PROXY protocol: its connections are many clients', named only by the
   * header that follows, so the cap above does not count them (the balancer's own limits do).
   */
  isProxy?(ip: string): boolean;
  /** a balancer's connection closed because its PROXY line was missing or malformed (v2, garbage) */
  onProxyRefused?(ip: string, why: string): void;
}

/** MAIL FROM and RCPT TO parameters as the client wrote them, by parsed command. */
const writtenParams = new WeakMap<object, { command: 'mail' | 'rcpt'; params: WrittenParams }>();

/** A MAIL FROM or RCPT TO command's parameters as written (values not xtext-decoded), for relaying. */
export function paramsAsWritten(address: object): WrittenParams {
  return writtenParams.get(address)?.params ?? {};
}

/** The credentials of an AUTH exchange as the client's bytes. */
export interface CredentialsAsSent {
  username: Buffer;
  password: Buffer;
  authzid: Buffer;
}

/** By session: those of the AUTH exchange whose last line is being handled. */
const credentialsBySession = new WeakMap<object, CredentialsAsSent>();

/** The credentials of the AUTH exchange the session's onAuth is called for, as sent; taken once. */
export function takeCredentialsAsSent(session: object): CredentialsAsSent | undefined {
  const credentials = credentialsBySession.get(session);
  credentialsBySession.delete(session);
  return credentials;
}

/**
 * The credentials carried by an AUTH exchange (its command, then its continuation lines), read as
 * smtp-server reads them but into bytes; undefined while it is incomplete or when it is not PLAIN or LOGIN.
 */
export function decodeAuthExchange(exchange: readonly string[]): CredentialsAsSent | undefined {
  const [, mechanism = '', ...args] = exchange[0]!.trim().split(/\s+/);
  const given = [...args, ...exchange.slice(1).map((line) => line.trim())];
  if (given.includes('*')) return undefined;
  if (mechanism.toUpperCase() === 'PLAIN' && given.length >= 1) {
    const fields = splitNul(Buffer.from(given[0]!, 'base64'));
    if (fields.length !== 3) return undefined;
    const [authzid, authcid, password] = fields as [Buffer, Buffer, Buffer];
    // smtp-server's reading: an empty authentication identity falls back to the authorisation identity.
    return { username: authcid.length ? authcid : authzid, password, authzid };
  }
  if (mechanism.toUpperCase() === 'LOGIN' && given.length >= 2) {
    return { username: Buffer.from(given[0]!, 'base64'), password: Buffer.from(given[1]!, 'base64'), authzid: Buffer.alloc(0) };
  }
  return undefined;
}

function splitNul(blob: Buffer): Buffer[] {
  const fields: Buffer[] = [];
  let start = 0;
  for (let nul = blob.indexOf(0); nul >= 0; nul = blob.indexOf(0, start)) {
    fields.push(blob.subarray(start, nul));
    start = nul + 1;
  }
  fields.push(blob.subarray(start));
  return fields;
}

/** Records, per command line, whether it ended with a bare LF. */
class LineEndingTrackingStream extends SMTPStream {
  readonly bareLf: boolean[] = [];
  private lastByte = -1;

  override _write(chunk: Buffer, encoding: BufferEncoding, next: (err?: Error | null) => void): void {
    if (!this._dataMode && chunk && chunk.length) {
      for (let i = chunk.indexOf(0x0a); i >= 0; i = chunk.indexOf(0x0a, i + 1)) {
        this.bareLf.push((i > 0 ? chunk[i - 1] : this.lastByte) !== 0x0d);
      }
      this.lastByte = chunk[chunk.length - 1]!;
    } else if (this._dataMode) {
      // Whatever followed DATA in the same chunk is message content, not command lines.
      this.bareLf.length = 0;
      this.lastByte = -1;
    }
    super._write(chunk, encoding, next);
  }
}

export class GatewayConnection extends SMTPConnection {
  declare _server: GatewaySmtpServer;
  private deadlineTimer: NodeJS.Timeout | undefined;
  private deadlinePassed = false;
  /** the lines of the AUTH exchange in progress, AUTH command first */
  private authExchange: string[] | undefined;

  private get hooks(): ConnectionHooks {
    return this._server.hooks;
  }

  override init(): void {
    this._setListeners(() => {
      const max = this._server.options.maxClients;
      if (max && this._server.connections.size > max) {
        this.refuse('connection.too_many', 'connect');
        return;
      }
      this.deadlineTimer = setTimeout(() => this.onDeadline(), this.hooks.sessionDeadline);
      this.deadlineTimer.unref();
      this.connectionReady();
    });
  }

  /**
   * smtp-server forgets the envelope at RSET, EHLO, HELO and STARTTLS (and after DATA). A transaction
   * that ends so is the gateway's to end too: its counts given back, its upstream transaction reset.
   */
  override _resetSession(): void {
    if (this.session?.envelope?.mailFrom) this.hooks.onTransactionReset(this.session);
    super._resetSession();
  }

  override _createParser(): SMTPStream {
    const parser = new LineEndingTrackingStream({ maxCommandLength: this._server.options.maxCommandLength });
    parser.oncommand = (command: Buffer, callback?: () => void) => this._onCommand(command, callback);
    // The only parser error is an over-long line; after it the byte stream cannot be trusted, so close.
    parser.on('error', () => this.refuse('smtp.line_too_long', 'connect'));
    return parser;
  }

  override _onCommand(command: Buffer, callback?: () => void): void {
    const parser = this._parser as LineEndingTrackingStream | false;
    const bareLf = parser && parser.bareLf.length ? parser.bareLf.shift() : false;
    if (this._ready && !this._upgrading) {
      const refusal: ReasonCode | undefined = bareLf ? 'smtp.bare_lf_in_command' : command.includes(0) ? 'smtp.nul_in_command' : undefined;
      if (refusal) {
        this._nextHandler = false; // a broken line also ends an AUTH exchange in progress
        // Counted as an unknown command is: ten, and the client is shown the door.
        if (++this._unrecognizedCommands >= 10) return this.refuse('smtp.too_many_errors', 'connect');
        this.refuse(refusal, 'connect');
        // The next line once this reply is written, as for any command: a client that sends broken lines
        // and never reads the replies must not have Douane hold them for it.
        this._whenWritable(() => callback?.());
        return;
      }
      const verb = command.toString('latin1', 0, 8).split(' ')[0]!.toUpperCase();
      if (!this.session.envelope.mailFrom && (this.hooks.draining() || this.deadlinePassed) && !['QUIT', 'NOOP'].includes(verb)) {
        this.refuse(this.deadlinePassed ? 'session.deadline' : 'session.shutting_down', 'connect');
        return;
      }
      this.keepAuthExchange(command, verb);
    }
    super._onCommand(command, callback);
  }

  /** Before smtp-server handles the line: a continuation of AUTH is read as such while its handler waits. */
  private keepAuthExchange(command: Buffer, verb: string): void {
    if (this._nextHandler && this.authExchange) this.authExchange.push(command.toString('latin1'));
    else this.authExchange = verb === 'AUTH' ? [command.toString('latin1')] : undefined;
    const credentials = this.authExchange && decodeAuthExchange(this.authExchange);
    if (credentials) credentialsBySession.set(this.session, credentials);
    else credentialsBySession.delete(this.session);
  }

  override _parseAddressCommand(name: string, command: Buffer | string): ParsedAddress {
    // Bytes that are not UTF-8 (Latin-1 from an old client) would be read as U+FFFD and relayed so: the
    // upstream and the checks would see another address than the client's. 501, as for a syntax error.
    if (Buffer.isBuffer(command) && !isUtf8(command)) return false;
    const text = (command || '').toString();
    const path = ADDRESS_COMMAND.exec(text);
    // No path in angle brackets: a syntax error (501). smtp-server's own parse is not a fallback, since what it
    // accepted would go upstream without the parameters and spelling the client wrote.
    if (!path) return false;
    const written = path[2]!.replace(SOURCE_ROUTE, '');
    // smtp-server checks the address with any space in a quoted local part stood in for; we keep what was written.
    const standIn = written.replace(QUOTED_LOCAL_PART, (quoted) => quoted.replace(/ /g, '_'));
    const params = text.slice(path[0].length);
    const parsed = super._parseAddressCommand(name, `${path[1]}<${standIn}>${params}`);
    if (parsed && parsed.address) parsed.address = written;
    if (parsed) {
      const asWritten: WrittenParams = {};
      for (const param of params.trim().split(/\s+/)) {
        const eq = param.indexOf('=');
        if (eq > 0) asWritten[param.slice(0, eq).toUpperCase()] = param.slice(eq + 1);
        else if (param) asWritten[param.toUpperCase()] = true;
      }
      writtenParams.set(parsed, { command: /^mail/i.test(name) ? 'mail' : 'rcpt', params: asWritten });
    }
    return parsed;
  }

  /**
   * After smtp-server's own checks of MAIL and RCPT parameters: one that would not reach the upstream for
   * what it asks is refused (555) before anything goes upstream, rather than taken and dropped
   * (paramNotTaken), and before smtp-server answers REQUIRETLS in its own words.
   */
  override _rejectInvalidParams(parsed: Exclude<ParsedAddress, false>, keys: string[], callback: () => void): boolean {
    if (super._rejectInvalidParams(parsed, keys, callback)) return true;
    const written = writtenParams.get(parsed);
    // A command out of sequence is answered 503 by smtp-server, which looks at the sequence after this.
    if (written && (written.command === 'rcpt') !== Boolean(this.session.envelope.mailFrom)) return false;
    const param = written && paramNotTaken(written.command, written.params, (extension) => this.hooks.upstreamOffers(extension));
    if (!written || param === undefined) return false;
    const reply = replyFor({ action: 'reject', reason: 'smtp.param_not_offered', detail: { param } }, written.command, this.hooks.sessionReference(this.session));
    this.hooks.onProtocolRefusal(this.session, 'smtp.param_not_offered', reply, this.remoteAddress);
    super.send(reply.code, formatWire(reply), false);
    callback();
    return true;
  }

  override send(code: number, data?: string | string[] | null, context?: string | false): void {
    if (code === 250 && Array.isArray(data) && this.authNeedsTls()) {
      // Like Postfix's smtpd_tls_auth_only: no AUTH offered in clear, so that no client sends a password
      // before STARTTLS only to have it refused (538) after it crossed the wire.
      data = data.filter((line) => !/^AUTH\b/i.test(line));
    }
    // Their parameters can only be relayed to an upstream that offers them.
    if (code === 250 && Array.isArray(data)) data = data.filter((line) => !UPSTREAM_EXTENSIONS.includes(line) || this.hooks.upstreamOffers(line));
    if (typeof data === 'string' && ENHANCED_PREFIX.test(data)) {
      return super.send(code, lines(data), false);
    }
    if ((context === 'MAIL_FROM_OK' || context === 'RCPT_TO_OK') && code === 250) {
      const upstreamText = this.hooks.takeSuccessText(this.session, context);
      if (upstreamText) return super.send(code, lines(upstreamText), false);
    }
    // By the library's own context, or by code; never by a context that is the client's command name (an
    // unknown command called "530" or "MESSAGE_TOO_BIG").
    const library = (code === 552 && context === 'MESSAGE_TOO_BIG' && LIBRARY_REPLIES.MESSAGE_TOO_BIG) || LIBRARY_REPLIES[String(code)];
    if (library && code >= 400) {
      const reply = replyFor(
        { action: code < 500 ? 'tempfail' : 'reject', reason: library.reason, detail: { limit: this._server.options.size ?? 0 } },
        library.phase,
        this.hooks.sessionReference(this.session),
      );
      this.hooks.onProtocolRefusal(this.session, library.reason, reply, this.remoteAddress);
      return super.send(reply.code, formatWire(reply), false);
    }
    // smtp-server's idle timeout (smtp.idle_timeout): a session Douane ends, said as such.
    if (code === 421 && data === 'Timeout - closing connection') return this.refuse('session.idle', 'connect');
    if (code === 421 && typeof data === 'string' && /too many (unrecognized|unauthenticated) commands/i.test(data)) {
      return this.refuse('smtp.too_many_errors', 'connect');
    }
    if (code >= 400 && PROTOCOL_ENHANCED[code] && typeof data === 'string') {
      // The library's protocol errors (unknown command, bad syntax, bad sequence, a malformed EHLO, which it
      // sends without a context) carry a reference too.
      const text = `${PROTOCOL_ENHANCED[code]} ${data.replace(/\.?$/, '.')} Ref ${this.hooks.sessionReference(this.session)}.`;
      this.hooks.onProtocolError(this.session, `${code} ${text}`);
      return super.send(code, text, false);
    }
    super.send(code, data, context);
  }

  /** smtp-server's own rule for answering AUTH with 538 on this connection, as it stands now. */
  private authNeedsTls(): boolean {
    const o = this._server.options;
    return !this.secure && this._isSupported('STARTTLS') && !o.hideSTARTTLS && !o.allowInsecureAuth;
  }

  /** Sends one of our refusals outside a handler; closes the connection if the reply says so. */
  refuse(reason: ReasonCode, phase: Phase): void {
    const reply = replyFor({ action: naturalAction(reason), reason }, phase, this.hooks.sessionReference(this.session));
    // The connection's address: one refused as it opens (too many connections) has no session's yet.
    this.hooks.onProtocolRefusal(this.session, reason, reply, this.remoteAddress);
    super.send(reply.code, formatWire(reply), false); // a 421 closes the connection by itself
    if (reply.close && reply.code !== 421) this.close();
  }

  /** True while a handler of ours runs (upstream, scan) — the client is waiting for us, not idle. */
  get busy(): boolean {
    return this._handlerPending || Boolean(this._dataStream && this._parser && !this._parser._dataMode);
  }

  private onDeadline(): void {
    this.deadlinePassed = true;
    // If we are the ones the client waits for, let that reply go out first, then end the session as soon
    // as nothing of ours is pending (commands in the meantime, NOOP or RCPT included, do not keep it open).
    if (this.busy) {
      this.deadlineTimer = setTimeout(() => this.onDeadline(), DEADLINE_RECHECK_MS);
      this.deadlineTimer.unref();
      return;
    }
    this.refuse('session.deadline', 'connect');
  }

  override close(): void {
    clearTimeout(this.deadlineTimer);
    super.close();
  }

  /** However the socket closed (QUIT, the client dropping, an error): the deadline timer goes with it. */
  override _onClose(): void {
    clearTimeout(this.deadlineTimer);
    super._onClose();
  }
}

/** smtp-server with our connection class and the gateway's hooks. */
export class GatewaySmtpServer extends SMTPServer {
  constructor(
    options: SMTPServerOptions,
    readonly hooks: ConnectionHooks,
  ) {
    super(options);
    if (options.secure && hooks.maxSocketsPerIp) this.capSocketsPerIp(hooks.maxSocketsPerIp);
  }

  /**
   * Stops accepting, and ends the connections still in their TLS handshake, which have no session to
   * drain and would otherwise hold the stop until the handshake timeout (smtp.idle_timeout). As
   * smtp-server's close() does, the topmost socket is destroyed: tearing a TLS wrap down from below
   * mid-handshake crashes Node. Not before the next turn of the event loop: a connection accepted just
   * now is wrapped in TLS then (smtp-server defers it with setImmediate), and wrapping a socket already
   * destroyed crashes Node too (a segmentation fault on Node 20).
   */
  async stopAccepting(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    await new Promise((resolve) => setImmediate(resolve));
    const pending = (this as unknown as { _pendingSockets?: Map<net.Socket, net.Socket> })._pendingSockets;
    for (const socket of pending?.values() ?? []) socket.destroy();
    return closed;
  }

  /** Wraps smtp-server's own handler of new connections: it runs only for those within the cap. */
  private capSocketsPerIp(max: number): void {
    const listener = this.server;
    const accept = listener.listeners('connection') as ((socket: net.Socket) => void)[];
    if (accept.length !== 1) throw new Error(`smtp-server has ${accept.length} connection handlers where one was expected`);
    const perIp = new Map<string, number>();
    listener.removeAllListeners('connection');
    listener.on('connection', (socket: net.Socket) => {
      const ip = socket.remoteAddress ?? '';
      if (this.hooks.isProxy?.(ip)) return accept[0]!.call(listener, socket);
      const held = perIp.get(ip) ?? 0;
      if (held >= max) {
        socket.on('error', () => undefined);
        socket.destroy();
        this.hooks.onSocketRefused?.(ip);
        return;
      }
      perIp.set(ip, held + 1);
      socket.once('close', () => {
        const left = (perIp.get(ip) ?? 1) - 1;
        if (left <= 0) perIp.delete(ip);
        else perIp.set(ip, left);
      });
      accept[0]!.call(listener, socket);
    });
  }

  /** smtp-server drops a connection whose PROXY line is bad without a word: the log says which and why. */
  override _handleProxy(socket: net.Socket, callback: Parameters<SMTPServer['_handleProxy']>[1]): void {
    super._handleProxy(socket, (err, socketOptions) => {
      if (err) this.hooks.onProxyRefused?.(socket.remoteAddress ?? '', err.message);
      callback(err, socketOptions);
    });
  }

  override connect(socket: net.Socket | tls.TLSSocket, socketOptions?: ConstructorParameters<typeof SMTPConnection>[2]): void {
    const connection = new GatewayConnection(this, socket, socketOptions);
    this.connections.add(connection);
    connection.on('error', (err: Error) => this._onError(err));
    connection.on('connect', (data) => this._onClientConnect(data));
    connection.init();
  }
}

/** formatWire's text to what smtp-server sends: an array of lines is a multi-line reply (code on each). */
function lines(text: string): string | string[] {
  return text.includes('\n') ? text.split('\n') : text;
}
