// The admin HTTP endpoint, on its own port (loopback by default): /metrics for Prometheus, /healthz
// (the process answers) and /readyz (ready to take mail: every dependency reachable, or explicitly
// allowed to fail open). An optional bearer token protects all three.

import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { timingSafeEqual } from 'node:crypto';
import type { Logger } from './log.js';
import type { Metrics } from './metrics.js';

export interface ReadinessResult {
  ok: boolean;
  detail?: string;
}

/** A named readiness probe; probes are cached by their owners, /readyz runs them all. */
export type ReadinessProbe = () => Promise<ReadinessResult>;

export class AdminServer {
  private server: http.Server | undefined;
  private readonly probes = new Map<string, ReadinessProbe>();

  constructor(
    private readonly opts: { address: string; port: number; token?: string },
    private readonly metrics: Metrics,
    private readonly log: Logger,
  ) {}

  addProbe(name: string, probe: ReadinessProbe): void {
    this.probes.set(name, probe);
  }

  async start(): Promise<void> {
    this.server = http.createServer((req, res) => {
      this.handle(req, res).catch((err: Error) => {
        this.log.error({ event: 'admin_error', err: err.message }, 'admin request failed');
        if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
        res.end('internal error\n');
      });
    });
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(this.opts.port, this.opts.address, () => resolve());
    });
    this.log.info({ event: 'admin_listening', address: this.opts.address, port: this.port }, `admin endpoint on ${this.opts.address}:${this.port}`);
  }

  get port(): number {
    return (this.server?.address() as AddressInfo | null)?.port ?? 0;
  }

  async stop(): Promise<void> {
    if (!this.server) return;
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server!.close(() => resolve()));
  }

  private authorized(req: http.IncomingMessage): boolean {
    if (!this.opts.token) return true;
    const given = Buffer.from(req.headers.authorization ?? '');
    const wanted = Buffer.from(`Bearer ${this.opts.token}`);
    return given.length === wanted.length && timingSafeEqual(given, wanted);
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    if (!this.authorized(req)) {
      res.writeHead(401, { 'www-authenticate': 'Bearer', 'content-type': 'text/plain' }).end('bearer token required\n');
      return;
    }
    switch (path) {
      case '/metrics': {
        const body = await this.metrics.registry.metrics();
        res.writeHead(200, { 'content-type': this.metrics.registry.contentType }).end(body);
        return;
      }
      case '/healthz':
        res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
        return;
      case '/readyz': {
        const results = await Promise.all(
          [...this.probes].map(async ([name, probe]) => [name, await probe().catch((e: Error) => ({ ok: false, detail: e.message }))] as const),
        );
        const ready = results.every(([, r]) => r.ok);
        const body = Object.fromEntries(results.map(([name, r]) => [name, r]));
        res.writeHead(ready ? 200 : 503, { 'content-type': 'application/json' }).end(JSON.stringify({ ready, checks: body }) + '\n');
        return;
      }
      default:
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /metrics, /healthz or /readyz\n');
    }
  }
}

/** Wraps a probe so that it runs at most once per `ttlMs` (a load balancer may poll often). */
export function cachedProbe(probe: ReadinessProbe, ttlMs: number): ReadinessProbe {
  let last: { at: number; result: Promise<ReadinessResult> } | undefined;
  return () => {
    const now = Date.now();
    if (!last || now - last.at >= ttlMs) last = { at: now, result: probe().catch((e: Error) => ({ ok: false, detail: e.message })) };
    return last.result;
  };
}
