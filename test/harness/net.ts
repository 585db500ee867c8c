// Loopback helpers for tests: free ports, waiting for a port, and a raw SMTP conversation.

import net from 'node:net';
import tls from 'node:tls';

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

/**
 * A loopback port where nothing listens, for "the service is down" tests. Port 1 (tcpmux) is outside the
 * range free ports come from, so no server another test starts can take it: connections are refused.
 */
export const DEAD_PORT = 1;

export async function waitForPort(port: number, timeoutMs = 10_000, host = '127.0.0.1'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect({ port, host });
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`port ${host}:${port} did not open within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/**
 * A raw SMTP client for tests that must control every byte (pipelining, smuggling, bare LF):
 * write() sends bytes as they are; reply() waits for the next complete reply.
 */
export class RawSmtp {
  private buffer = '';
  private replies: string[] = [];
  private waiting: ((r: string) => void)[] = [];
  closed = false;
  private constructor(public socket: net.Socket) {
    this.listen(socket);
  }

  private listen(socket: net.Socket): void {
    socket.setEncoding('latin1');
    socket.on('data', (d: string) => {
      this.buffer += d;
      for (;;) {
        const m = /^(?:\d{3}-[^\n]*\n)*\d{3}(?: [^\n]*)?\r?\n/.exec(this.buffer);
        if (!m) break;
        this.buffer = this.buffer.slice(m[0].length);
        const reply = m[0].trimEnd();
        const w = this.waiting.shift();
        if (w) w(reply);
        else this.replies.push(reply);
      }
    });
    socket.on('close', () => {
      this.closed = true;
      for (const w of this.waiting.splice(0)) w('(closed)');
    });
    socket.on('error', () => {});
  }

  static async connect(port: number, opts: { tls?: boolean; localAddress?: string } = {}): Promise<RawSmtp> {
    const socket = opts.tls
      ? tls.connect({ socket: net.connect({ port, host: '127.0.0.1', localAddress: opts.localAddress }), rejectUnauthorized: false })
      : net.connect({ port, host: '127.0.0.1', localAddress: opts.localAddress });
    await new Promise<void>((resolve, reject) => {
      socket.once(opts.tls ? 'secureConnect' : 'connect', () => resolve());
      socket.once('error', reject);
    });
    return new RawSmtp(socket);
  }

  /** A conversation on a socket already connected (after a PROXY line, say). */
  static over(socket: net.Socket | tls.TLSSocket): RawSmtp {
    return new RawSmtp(socket);
  }

  /** Upgrades the connection after a 220 to STARTTLS. */
  async starttls(): Promise<void> {
    this.socket.removeAllListeners('data');
    this.socket.removeAllListeners('close');
    const secure = tls.connect({ socket: this.socket, rejectUnauthorized: false });
    await new Promise<void>((resolve, reject) => {
      secure.once('secureConnect', () => resolve());
      secure.once('error', reject);
    });
    this.socket = secure;
    this.listen(secure);
  }

  write(data: string | Buffer): void {
    this.socket.write(data);
  }

  reply(timeoutMs = 5000): Promise<string> {
    const r = this.replies.shift();
    if (r !== undefined) return Promise.resolve(r);
    if (this.closed) return Promise.resolve('(closed)');
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        const i = this.waiting.indexOf(done);
        if (i >= 0) this.waiting.splice(i, 1);
        resolve('(timeout)');
      }, timeoutMs);
      const done = (reply: string) => {
        clearTimeout(timer);
        resolve(reply);
      };
      this.waiting.push(done);
    });
  }

  async command(line: string, timeoutMs?: number): Promise<string> {
    this.write(line + '\r\n');
    return this.reply(timeoutMs);
  }

  async replies_(n: number, timeoutMs?: number): Promise<string[]> {
    const out: string[] = [];
    for (let i = 0; i < n; i++) out.push(await this.reply(timeoutMs));
    return out;
  }

  close(): void {
    this.socket.destroy();
  }
}
