// Load generators: Postfix's smtp-source for throughput (no AUTH, no TLS: the trusted listener), and our
// own clients for single-session latency and for the AUTH path (STARTTLS + AUTH PLAIN, as real clients).

import { spawn } from 'node:child_process';
import net from 'node:net';
import tls from 'node:tls';
import { percentile } from './proc.js';

export interface Throughput {
  messages: number;
  seconds: number;
  perSecond: number;
  failed: boolean;
}

/** smtp-source: `messages` messages of `size` bytes over `sessions` parallel sessions, one message per connection. */
export function smtpSource(port: number, opts: { sessions: number; messages: number; size: number }): Promise<Throughput> {
  return new Promise((resolve) => {
    const started = performance.now();
    const child = spawn('smtp-source', ['-s', String(opts.sessions), '-m', String(opts.messages), '-l', String(opts.size), '-f', 'bench@example.test', '-t', 'sink@example.net', `127.0.0.1:${port}`], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d) => (err += d));
    child.on('exit', (code) => {
      const seconds = (performance.now() - started) / 1000;
      if (code !== 0 || err.trim()) console.error(`smtp-source: exit ${code} ${err.trim().slice(0, 300)}`);
      resolve({ messages: opts.messages, seconds, perSecond: opts.messages / seconds, failed: code !== 0 || /error|fatal/i.test(err) });
    });
  });
}

/** A line-oriented SMTP conversation on one socket. */
class Conversation {
  private buffer = '';
  private waiting: ((line: string) => void) | undefined;
  /** the server closed the connection: every reply still awaited is "(closed)", and the run stops with it */
  private closed = false;
  constructor(public socket: net.Socket) {
    this.listen();
  }
  private listen(): void {
    this.socket.setEncoding('latin1');
    this.socket.on('data', (d: string) => {
      this.buffer += d;
      this.drain();
    });
    const close = () => {
      this.closed = true;
      this.drain();
    };
    this.socket.on('close', close);
    this.socket.on('error', close);
  }
  private drain(): void {
    const m = /^(?:\d{3}-[^\n]*\n)*\d{3} [^\n]*\n/.exec(this.buffer);
    if (!m && this.closed && this.waiting) {
      const w = this.waiting;
      this.waiting = undefined;
      w('(closed)');
    } else if (m && this.waiting) {
      this.buffer = this.buffer.slice(m[0].length);
      const w = this.waiting;
      this.waiting = undefined;
      w(m[0]);
    }
  }
  reply(): Promise<string> {
    return new Promise((resolve) => {
      this.waiting = resolve;
      this.drain();
    });
  }
  async cmd(line: string, expect: string): Promise<void> {
    const r = this.reply();
    this.socket.write(line + '\r\n');
    const got = await r;
    if (!got.startsWith(expect)) throw new Error(`${line.split(' ')[0]}: expected ${expect}, got ${got.trim()}`);
  }
  async upgrade(): Promise<void> {
    this.socket.removeAllListeners('data');
    const secure = tls.connect({ socket: this.socket, rejectUnauthorized: false });
    await new Promise<void>((resolve, reject) => {
      secure.once('secureConnect', () => resolve());
      secure.once('error', reject);
    });
    this.socket = secure;
    this.listen();
  }
}

async function open(port: number): Promise<Conversation> {
  const socket = net.connect({ port, host: '127.0.0.1' });
  socket.setNoDelay(true);
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', () => resolve());
    socket.once('error', reject);
  });
  const c = new Conversation(socket);
  const greeting = await c.reply();
  if (!greeting.startsWith('220')) throw new Error(`greeting: ${greeting}`);
  await c.cmd('EHLO bench.example', '250');
  return c;
}

/** A message of about `size` bytes whose content differs each time (clamd caches clean content). */
export function message(size: number, n: number): string {
  const head = `From: bench@example.test\r\nTo: sink@example.net\r\nSubject: bench ${n}\r\nMessage-ID: <${n}.${Date.now()}@bench.example>\r\n\r\n`;
  const line = `${n} the quick brown fox jumps over the lazy dog ${(n * 7919) % 100003} `.padEnd(76, 'x') + '\r\n';
  return head + line.repeat(Math.max(1, Math.ceil((size - head.length) / line.length)));
}

async function transaction(c: Conversation, body: string): Promise<void> {
  await c.cmd('MAIL FROM:<bench@example.test>', '250');
  await c.cmd('RCPT TO:<sink@example.net>', '250');
  await c.cmd('DATA', '354');
  const r = c.reply();
  c.socket.write(body + '.\r\n');
  const got = await r;
  if (!got.startsWith('250')) throw new Error(`message: ${got.trim()}`);
}

/** Single-session latency: `messages` transactions one after another on one connection (ms each). */
export async function latency(port: number, opts: { messages: number; size: number }): Promise<{ p50: number; p99: number; mean: number }> {
  const c = await open(port);
  const times: number[] = [];
  for (let i = 0; i < opts.messages; i++) {
    const body = message(opts.size, i);
    const t = performance.now();
    await transaction(c, body);
    times.push(performance.now() - t);
  }
  c.socket.end('QUIT\r\n');
  return { p50: percentile(times, 50), p99: percentile(times, 99), mean: times.reduce((a, b) => a + b, 0) / times.length };
}

/**
 * The AUTH path: sessions that STARTTLS, AUTH PLAIN and send `perSession` messages each, `sessions` at a
 * time, each of them logging in as one of `users` in turn.
 */
export async function authLoad(port: number, opts: { sessions: number; messages: number; perSession: number; size: number; users: [string, string][] }): Promise<Throughput> {
  const tokens = opts.users.map(([user, password]) => Buffer.from(`\0${user}\0${password}`).toString('base64'));
  let next = 0;
  let failed = false;
  const started = performance.now();
  const worker = async (_: unknown, i: number) => {
    const token = tokens[i % tokens.length]!;
    while (next < opts.messages) {
      const c = await open(port);
      await c.cmd('STARTTLS', '220');
      await c.upgrade();
      await c.cmd('EHLO bench.example', '250');
      await c.cmd(`AUTH PLAIN ${token}`, '235');
      for (let i = 0; i < opts.perSession && next < opts.messages; i++) {
        const n = next++;
        try {
          await transaction(c, message(opts.size, n));
        } catch (err) {
          failed = true;
          console.error((err as Error).message);
        }
      }
      c.socket.end('QUIT\r\n');
    }
  };
  await Promise.all(Array.from({ length: opts.sessions }, worker));
  const seconds = (performance.now() - started) / 1000;
  return { messages: opts.messages, seconds, perSecond: opts.messages / seconds, failed };
}
