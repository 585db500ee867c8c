// The HTTP lifecycle adapter as the configuration builds it: over https, trusting the certificate
// authority named in lifecycle.http.ca, and refusing an unknown certificate otherwise.

import { mkdtempSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { createLifecycle } from '../../src/lifecycle/factory.js';
import { Metrics } from '../../src/metrics.js';
import { makeSelfSigned } from '../../src/smtp/tls.js';

let server: https.Server;
let caFile: string;
beforeAll(async () => {
  const cert = makeSelfSigned('127.0.0.1');
  caFile = join(mkdtempSync(join(tmpdir(), 'douane-ca-')), 'ca.pem');
  writeFileSync(caFile, cert.cert);
  server = https.createServer({ key: cert.key, cert: cert.cert }, (_req, res) => res.writeHead(200, { 'content-type': 'application/json' }).end('{"state": "enabled"}'));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
});
afterAll(() => new Promise<void>((r) => server.close(() => r())));

function api(extra: string) {
  const url = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const text = [
    'listeners: { t: { mode: trusted, port: 0, allow: [127.0.0.1] } }',
    'upstream: { host: x }',
    'clamd: none',
    'lifecycle:',
    '  adapter: http',
    '  timeout: 2s',
    '  status_cache: 0s',
    '  http:',
    `    status: { url: "${url}/{account}", status_field: state, status_map: { enabled: active } }`,
    `    suspend: { url: "${url}/{account}/lock" }`,
    `    reinstate: { url: "${url}/{account}/unlock" }`,
    extra,
  ].join('\n');
  return createLifecycle(parseConfig('t.yaml', text).config, new Metrics({ version: 't', defaultMetrics: false }))!;
}

describe('lifecycle http adapter from the configuration', () => {
  it('trusts the certificate authority in lifecycle.http.ca', async () => {
    expect((await api(`    ca: ${caFile}`).status('a@x.test')).status).toBe('active');
  });

  it('refuses a certificate it cannot verify, unless told not to verify', async () => {
    await expect(api('').status('a@x.test')).rejects.toThrow(/TLS|certificate/i);
    expect((await api('    verify_certificate: false').status('a@x.test')).status).toBe('active');
  });
});
