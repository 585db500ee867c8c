// An in-process upstream MTA for functional tests that must make the upstream fail on purpose: each
// command's reply can be replaced, delayed, or turned into a dropped connection or a hang. It speaks
// plain SMTP (no TLS); the end-to-end tests use a real Postfix instead.

import net from 'node:net';

export type Fault = 'drop' | 'hang' | { delayMs: number; reply?: string };
type Scripted = string | Fault | undefined;

export interface FakeUpstreamOptions {
  /** the port to listen on (default: any free one) */
  port?: number;
  /** passwords by user: a string is compared as its UTF-8 bytes, a Buffer byte for byte */
  users?: Record<string, string | Buffer>;
  capabilities?: string[];
  greeting?: string;
  /** a slow upstream: the greeting comes this late */
  greetingDelayMs?: number;
  /** as Postfix's smtpd_timeout: a session silent this long gets 421 and is closed */
  idleTimeoutMs?: number;
  mail?: (from: string) => Scripted;
  rcpt?: (to: string) => Scripted;
  /** reply to the DATA command itself */
  data?: () => Scripted;
  /** reply after the final dot */
  dataEnd?: (message: ReceivedMessage) => Scripted;
  auth?: (user: string) => Scripted;
  noop?: () => Scripted;
  /** with XCLIENT among the capabilities: whether IPv6 addresses are taken (as Postfix with inet_protocols = all) */
  xclientIpv6?: boolean;
}

export interface ReceivedMessage {
  from: string;
  to: string[];
  raw: Buffer;
  user?: string;
  /** raw MAIL FROM line as received, with its parameters */
  mailLine: string;
}

export class FakeUpstream {
  readonly messages: ReceivedMessage[] = [];
  readonly commands: string[] = [];
  connections = 0;
  private server!: net.Server;
  private sockets = new Set<net.Socket>();

  /** connections open now */
  get open(): number {
    return this.sockets.size;
  }
  port = 0;

  constructor(private readonly opts: FakeUpstreamOptions = {}) {}

  static async start(opts: FakeUpstreamOptions = {}): Promise<FakeUpstream> {
    const f = new FakeUpstream(opts);
    f.server = net.createServer((s) => f.handle(s));
    await new Promise<void>((resolve) => f.server.listen(opts.port ?? 0, '127.0.0.1', () => resolve()));
    f.port = (f.server.address() as net.AddressInfo).port;
    return f;
  }

  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  /** What Douane's start did here (it learns what the upstream offers), set aside by forgetStartup. */
  startup: { connections: number; commands: string[] } = { connections: 0, commands: [] };

  /** Sets aside what came so far (Douane's start), so that tests see only what their clients cause. */
  forgetStartup(): void {
    this.startup = { connections: this.connections, commands: this.commands.splice(0) };
    this.messages.length = 0;
    this.connections = 0;
  }

  /** Waits until `n` messages were received (or the timeout passes). */
  async waitForMessages(n: number, timeoutMs = 5000): Promise<ReceivedMessage[]> {
    const deadline = Date.now() + timeoutMs;
    while (this.messages.length < n && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    return this.messages;
  }

  private handle(socket: net.Socket): void {
    this.connections++;
    this.sockets.add(socket);
    socket.on('close', () => this.sockets.delete(socket));
    socket.on('error', () => {});
    let buffer = Buffer.alloc(0);
    let dataMode = false;
    let from = '';
    let mailLine = '';
    let to: string[] = [];
    let user: string | undefined;
    let authStep: undefined | { mech: 'LOGIN'; user?: string } = undefined;
    let busy = false;
    let inTransaction = false;
    const queue: Buffer[] = [];

    const send = (line: string) => {
      if (!socket.destroyed) socket.write(line + '\r\n');
    };
    const act = async (scripted: Scripted, normal: string): Promise<boolean> => {
      if (scripted === 'drop') {
        socket.destroy();
        return false;
      }
      if (scripted === 'hang') return false;
      if (typeof scripted === 'object') {
        await new Promise((r) => setTimeout(r, scripted.delayMs));
        send(scripted.reply ?? normal);
        return true;
      }
      send(scripted ?? normal);
      return true;
    };

    const command = async (line: string): Promise<void> => {
      if (authStep) {
        const decoded = Buffer.from(line, 'base64');
        if (!authStep.user) {
          authStep.user = decoded.toString();
          send('334 UGFzc3dvcmQ6');
          return;
        }
        const u = authStep.user;
        authStep = undefined;
        await this.checkAuth(u, decoded, send, act, (x) => (user = x));
        return;
      }
      const verb = line.split(' ')[0]!.toUpperCase();
      this.commands.push(verb === 'AUTH' ? 'AUTH ***' : line);
      if (verb === 'EHLO') {
        const caps = this.opts.capabilities ?? ['PIPELINING', 'SIZE 52428800', '8BITMIME', 'ENHANCEDSTATUSCODES', 'AUTH PLAIN LOGIN'];
        const lines = ['fake.upstream', ...caps];
        send(lines.map((l, i) => `250${i === lines.length - 1 ? ' ' : '-'}${l}`).join('\r\n'));
      } else if (verb === 'HELO') send('250 fake.upstream');
      else if (verb === 'XCLIENT' && this.opts.capabilities?.some((c) => c.startsWith('XCLIENT'))) {
        // As Postfix checks ADDR: an IPv4 address, or an IPv6 one after IPV6: (refused without IPv6).
        const addr = /\bADDR=(\S+)/i.exec(line)?.[1];
        const v6 = addr?.toUpperCase().startsWith('IPV6:') ? addr.slice(5) : undefined;
        const ok = addr === undefined || net.isIPv4(addr) || (v6 !== undefined && net.isIPv6(v6) && this.opts.xclientIpv6 !== false);
        send(ok ? '220 fake.upstream ESMTP' : `501 5.5.4 Bad ADDR syntax: ${addr}`);
      }
      else if (verb === 'AUTH') {
        const [, mech, initial] = line.split(' ');
        // As Postfix: one login per session.
        if (user) return send('503 5.5.1 Error: already authenticated');
        if (mech?.toUpperCase() === 'PLAIN' && initial) {
          const blob = Buffer.from(initial, 'base64');
          const first = blob.indexOf(0);
          const second = blob.indexOf(0, first + 1);
          await this.checkAuth(blob.subarray(first + 1, second).toString(), second < 0 ? Buffer.alloc(0) : blob.subarray(second + 1), send, act, (x) => (user = x));
        } else if (mech?.toUpperCase() === 'LOGIN') {
          authStep = { mech: 'LOGIN' };
          send('334 VXNlcm5hbWU6');
        } else send('504 5.5.4 Unrecognized authentication type');
      } else if (verb === 'MAIL') {
        // As Postfix: a second MAIL in one transaction is a client error, not a new transaction.
        if (inTransaction) return send('503 5.5.1 Error: nested MAIL command');
        from = /<([^>]*)>/.exec(line)?.[1] ?? '';
        mailLine = line;
        to = [];
        const scripted = this.opts.mail?.(from);
        const reply = typeof scripted === 'string' ? scripted : typeof scripted === 'object' ? (scripted.reply ?? '250') : '250';
        if (reply.startsWith('250')) inTransaction = true;
        await act(scripted, '250 2.1.0 Ok');
      } else if (verb === 'RCPT') {
        const addr = /<([^>]*)>/.exec(line)?.[1] ?? '';
        const scripted = this.opts.rcpt?.(addr);
        const reply = typeof scripted === 'string' ? scripted : '250 2.1.5 Ok';
        if (reply.startsWith('25') && scripted !== 'drop' && scripted !== 'hang') to.push(addr);
        await act(scripted, '250 2.1.5 Ok');
      } else if (verb === 'DATA') {
        const scripted = this.opts.data?.();
        if (scripted === undefined || (typeof scripted === 'string' && scripted.startsWith('354'))) {
          send('354 End data with <CR><LF>.<CR><LF>');
          dataMode = true;
        } else if (typeof scripted === 'object' && !scripted.reply) {
          // A slow upstream: the 354 comes, late.
          await new Promise((r) => setTimeout(r, scripted.delayMs));
          send('354 End data with <CR><LF>.<CR><LF>');
          dataMode = true;
        } else await act(scripted, '');
      } else if (verb === 'BDAT') {
        const [, n, last] = line.split(' ');
        if (last?.toUpperCase() !== 'LAST') send('504 5.5.4 only BDAT <size> LAST is supported here');
        else if (Number(n) === 0) await finishData(Buffer.alloc(0), false); // RFC 3030: an empty last chunk
        else bdatLeft = Number(n);
      } else if (verb === 'RSET') {
        from = '';
        to = [];
        inTransaction = false;
        send('250 2.0.0 Ok');
      } else if (verb === 'NOOP') await act(this.opts.noop?.(), '250 2.0.0 Ok');
      else if (verb === 'QUIT') {
        send('221 2.0.0 Bye');
        socket.end();
      } else send('502 5.5.2 Error: command not recognized');
    };

    const finishData = async (body: Buffer, stuffed = true): Promise<void> => {
      inTransaction = false;
      const raw = stuffed ? unstuff(body) : body;
      const message: ReceivedMessage = { from, to: [...to], raw, user, mailLine };
      const scripted = this.opts.dataEnd?.(message);
      const accepted = scripted === undefined || (typeof scripted === 'string' && scripted.startsWith('250')) || (typeof scripted === 'object' && (scripted.reply ?? '250').startsWith('250'));
      if (accepted) this.messages.push(message);
      await act(scripted, `250 2.0.0 Ok: queued as FAKE${this.messages.length}`);
    };

    // In data mode, chunks are kept in a list and only the seam is searched, so a large message costs
    // linear time (a growing Buffer.concat would be quadratic).
    let dataChunks: Buffer[] = [];
    /** bytes still owed by a BDAT command (RFC 3030) */
    let bdatLeft = 0;
    let bdatChunks: Buffer[] = [];
    const pump = async () => {
      if (busy) return;
      busy = true;
      try {
        while (queue.length) {
          let incoming = queue.shift()!;
          for (;;) {
            if (bdatLeft > 0) {
              const all = Buffer.concat([buffer, incoming]);
              buffer = Buffer.alloc(0);
              incoming = Buffer.alloc(0);
              const take = all.subarray(0, bdatLeft);
              bdatChunks.push(take);
              bdatLeft -= take.length;
              buffer = all.subarray(take.length);
              if (bdatLeft > 0) break;
              const body = Buffer.concat(bdatChunks);
              bdatChunks = [];
              await finishData(body, false);
              continue;
            }
            if (dataMode) {
              const prefix = buffer;
              buffer = Buffer.alloc(0);
              const seam = Buffer.concat([prefix, incoming]);
              incoming = Buffer.alloc(0);
              const atStart = dataChunks.length === 0;
              if (atStart && seam.subarray(0, 3).toString() === '.\r\n') {
                dataMode = false;
                buffer = seam.subarray(3);
                await finishData(Buffer.alloc(0));
                continue;
              }
              // Look for CRLF.CRLF, including one that starts in the last bytes of the previous chunk.
              const carry = dataChunks.length ? dataChunks[dataChunks.length - 1]!.subarray(-4) : Buffer.alloc(0);
              const window = Buffer.concat([carry, seam]);
              const at = window.indexOf('\r\n.\r\n');
              if (at < 0) {
                // Nothing yet (the DATA line ended its chunk) is not a line: a "." next still ends an empty message.
                if (seam.length) dataChunks.push(seam);
                break;
              }
              const endInSeam = at - carry.length + 2; // bytes of seam that belong to the body (may be < 0)
              const body = Buffer.concat(dataChunks);
              const full = endInSeam >= 0 ? Buffer.concat([body, seam.subarray(0, endInSeam)]) : body.subarray(0, body.length + endInSeam);
              buffer = seam.subarray(at - carry.length + 5);
              dataChunks = [];
              dataMode = false;
              await finishData(full);
              continue;
            }
            if (incoming.length) {
              buffer = Buffer.concat([buffer, incoming]);
              incoming = Buffer.alloc(0);
            }
            const nl = buffer.indexOf('\r\n');
            if (nl < 0) break;
            const line = buffer.subarray(0, nl).toString('latin1');
            buffer = buffer.subarray(nl + 2);
            await command(line);
          }
        }
      } finally {
        busy = false;
      }
    };
    let idleTimer: NodeJS.Timeout | undefined;
    const idle = () => {
      if (!this.opts.idleTimeoutMs) return;
      clearTimeout(idleTimer);
      idleTimer = setTimeout(() => {
        send('421 4.4.2 fake.upstream Error: timeout exceeded');
        socket.end();
      }, this.opts.idleTimeoutMs);
    };
    idle();
    socket.on('close', () => clearTimeout(idleTimer));
    socket.on('data', (chunk: Buffer) => {
      idle();
      queue.push(chunk);
      void pump();
    });
    const greeting = this.opts.greeting ?? '220 fake.upstream ESMTP';
    if (this.opts.greetingDelayMs) setTimeout(() => send(greeting), this.opts.greetingDelayMs);
    else send(greeting);
  }

  private async checkAuth(u: string, p: Buffer, send: (l: string) => void, act: (s: Scripted, n: string) => Promise<boolean>, setUser: (u: string) => void): Promise<void> {
    const scripted = this.opts.auth?.(u);
    // A slow upstream (a password hash being checked): the usual answer, late.
    if (typeof scripted === 'object' && scripted.reply === undefined) await new Promise((r) => setTimeout(r, scripted.delayMs));
    else if (scripted !== undefined) {
      await act(scripted, '');
      return;
    }
    const users = this.opts.users ?? { 'user1@example.test': 'secret1' };
    const known = users[u];
    if (known !== undefined && Buffer.from(known).equals(p)) {
      setUser(u);
      send('235 2.7.0 Authentication successful');
    } else send('535 5.7.8 Error: authentication failed: bad credentials');
  }
}

/** Removes SMTP dot-stuffing from a received body. */
export function unstuff(body: Buffer): Buffer {
  const text = body.toString('latin1');
  return Buffer.from(text.replace(/(^|\r\n)\.\./g, '$1.'), 'latin1');
}
