// Certificates for the TLS listeners. Without one, smtp-server would use the key published in its own
// source tree — anyone could read the "encrypted" session — so we never let it: either a configured
// certificate, or (tls.insecure_dev only) a throwaway self-signed one made at start and never reused.

import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Config } from '../config/schema.js';

export interface TlsMaterial {
  key: Buffer;
  cert: Buffer;
  /** true for the throwaway development certificate */
  selfSigned: boolean;
}

export function loadTlsMaterial(config: Readonly<Config>): TlsMaterial | undefined {
  const { cert, key, insecure_dev } = config.tls;
  if (cert && key) {
    return { cert: readFileSync(cert), key: readFileSync(key), selfSigned: false };
  }
  if (!insecure_dev) return undefined;
  return makeSelfSigned(config.hostname);
}

export function makeSelfSigned(hostname: string): TlsMaterial {
  const dir = mkdtempSync(join(tmpdir(), 'douane-devcert-'));
  try {
    execFileSync(
      'openssl',
      [
        'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '30',
        '-subj', `/CN=${hostname}`,
        '-addext', `subjectAltName=DNS:${hostname},DNS:localhost,IP:127.0.0.1`,
        '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'),
      ],
      { stdio: 'pipe' },
    );
    return { key: readFileSync(join(dir, 'key.pem')), cert: readFileSync(join(dir, 'cert.pem')), selfSigned: true };
  } catch (err) {
    throw new Error(`tls.insecure_dev: could not create a self-signed certificate with openssl: ${(err as Error).message}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
