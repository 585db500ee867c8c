// pino JSON logs. Secrets are removed by configuration (redact), not by remembering not to log them.

import { format, inspect, type InspectOptions } from 'node:util';
import pino, { type Logger } from 'pino';

export type { Logger };

export const REDACT_PATHS = [
  'password',
  '*.password',
  'auth.password',
  'credentials',
  '*.credentials',
  'token',
  '*.token',
  'authorization',
  '*.authorization',
  'headers.authorization',
  'headers.cookie',
  'body',
  '*.body',
];

export function createLogger(opts: { level: string; pretty?: boolean; destination?: pino.DestinationStream }): Logger {
  const options: pino.LoggerOptions = {
    level: opts.level,
    base: { service: 'douane' },
    timestamp: pino.stdTimeFunctions.isoTime,
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    formatters: { level: (label) => ({ level: label }) },
  };
  if (opts.pretty) {
    // pino-pretty prints the message as it is: a client's name holding a line break or a terminal escape
    // would print a line of its own. The JSON log escapes them already.
    const hooks: pino.LoggerOptions['hooks'] = {
      logMethod(args, method) {
        method.apply(this, args.map((a) => (typeof a === 'string' ? printable(a) : a)) as Parameters<typeof method>);
      },
    };
    return pino({ ...options, hooks, transport: { target: 'pino-pretty', options: { colorize: true, translateTime: 'SYS:standard' } } });
  }
  if (opts.destination) return pino(options, opts.destination);
  // Nothing to write: no buffer to flush.
  if (opts.level === 'silent') return pino(options);
  // Buffered: one write per 8 KB of log lines instead of one per line (a write costs more than the line
  // on a busy gateway); flushed every second and when the process exits, so lines are late, not lost.
  const dest = pino.destination({ dest: 1, sync: false, minLength: 8192 });
  const timer = setInterval(() => dest.flush(), 1000);
  timer.unref();
  flushedAtExit(dest);
  return pino(options, dest);
}

/** Control characters and line separators written as escapes (\n, \u001b), as JSON writes them. */
export function printable(text: string): string {
  return text.replace(/[\p{Cc}\u2028\u2029]/gu, (c) => JSON.stringify(c).slice(1, -1));
}

/** Buffers flushed when the process exits: one exit listener for all of them. */
const buffers = new Set<{ flushSync(): void }>();

function flushedAtExit(dest: { flushSync(): void }): void {
  if (buffers.size === 0) {
    process.once('exit', () => {
      for (const b of buffers) {
        try {
          b.flushSync();
        } catch {
          // nothing more can be done while exiting
        }
      }
    });
  }
  buffers.add(dest);
}

/**
 * Sends what libraries print with console (clamscan prints every socket error to stderr, on several lines)
 * and Node's own warnings (a deprecation in a dependency, too many listeners) to the JSON log, one line
 * each, so that a log collector reading the gateway's output sees nothing but JSON. Returns the function
 * that puts both back.
 */
export function routeConsoleToLog(logger: Logger): () => void {
  const methods = ['log', 'info', 'warn', 'error', 'debug', 'trace', 'dir'] as const;
  const saved = methods.map((m) => console[m]);
  let writing = false;
  methods.forEach((m, i) => {
    console[m] = (...args: unknown[]) => {
      // Should the logger itself ever print, that goes out as it was, not round again.
      if (writing) return (saved[i] as (...a: unknown[]) => void)(...args);
      writing = true;
      try {
        const text = m === 'dir' ? inspect(args[0], args[1] as InspectOptions) : format(...args);
        const level = m === 'error' || m === 'warn' ? 'warn' : 'debug';
        logger[level]({ event: 'library_output', console: m }, text.length > 4096 ? `${text.slice(0, 4096)}…` : text);
      } finally {
        writing = false;
      }
    };
  });
  // Node prints a warning to stderr through its own 'warning' listener: that one is set aside meanwhile.
  const printers = process.listeners('warning');
  for (const p of printers) process.off('warning', p);
  const onWarning = (w: Error & { code?: string }) => logger.warn({ event: 'runtime_warning', warning: w.name, ...(w.code ? { code: w.code } : {}) }, w.message);
  process.on('warning', onWarning);
  return () => {
    methods.forEach((m, i) => ((console as unknown as Record<string, unknown>)[m] = saved[i]));
    process.off('warning', onWarning);
    for (const p of printers) process.on('warning', p);
  };
}
