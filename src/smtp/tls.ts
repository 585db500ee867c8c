// Certificates for the TLS listeners. Without one, smtp-server would use the key published in its own
// source tree — anyone could read the "encrypted" session — so we never let it: either a configured
// certificate, or (tls.insecure_dev only) a throwaway self-signed one made at start and never reused.

import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createSecureContext } from 'node:tls';
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

/**
 * The configured certificate and key read again (a renewal replaced the files), checked to belong
 * together before any listener takes them. Throws with the reason; the caller keeps the pair in use.
 */
export function reloadTlsMaterial(config: Readonly<Config>): TlsMaterial {
  const { cert, key } = config.tls;
  if (!cert || !key) throw new Error('no tls.cert and tls.key in the configuration');
  const material = { cert: readFileSync(cert), key: readFileSync(key), selfSigned: false };
  try {
    createSecureContext({ cert: material.cert, key: material.key });
  } catch (err) {
    throw new Error(`${cert} and ${key} do not make a certificate and its key: ${(err as Error).message}`);
  }
  return material;
}

export interface CertificateDates {
  subject: string;
  validFrom: Date;
  validTo: Date;
}

/** The dates of the certificate clients are shown: the first of the file, the leaf of a chain by convention. */
export function certificateDates(cert: Buffer): CertificateDates {
  const x509 = new X509Certificate(cert);
  return { subject: x509.subject.replace(/\n/g, ', '), validFrom: new Date(x509.validFrom), validTo: new Date(x509.validTo) };
}

/** How long before its end a certificate is worth a warning: a renewal that failed once still has time to be fixed. */
export const CERTIFICATE_WARN_BEFORE_MS = 14 * 86_400_000;

/**
 * What an operator must hear about a certificate's dates at `now`: expired, not valid yet, or ending within
 * CERTIFICATE_WARN_BEFORE_MS. Undefined when nothing is wrong. An expired certificate does not stop Douane:
 * clients that check it refuse the session, but refusing to start would stop every client instead.
 */
export function certificateWarning(dates: CertificateDates, now: number): { event: string; message: string } | undefined {
  const day = (d: Date) => d.toISOString().replace(/\.\d{3}Z$/, 'Z');
  if (dates.validTo.getTime() <= now) {
    return { event: 'tls_certificate_expired', message: `the TLS certificate (${dates.subject}) expired on ${day(dates.validTo)}: clients that check certificates refuse it; renew it and send SIGHUP` };
  }
  if (dates.validFrom.getTime() > now) {
    return { event: 'tls_certificate_not_yet_valid', message: `the TLS certificate (${dates.subject}) is not valid before ${day(dates.validFrom)}: clients that check certificates refuse it; check this machine's clock` };
  }
  const left = dates.validTo.getTime() - now;
  if (left <= CERTIFICATE_WARN_BEFORE_MS) {
    const days = Math.floor(left / 86_400_000);
    return { event: 'tls_certificate_expiring', message: `the TLS certificate (${dates.subject}) expires on ${day(dates.validTo)}, in ${days === 0 ? 'less than a day' : `${days} day${days === 1 ? '' : 's'}`}: renew it and send SIGHUP` };
  }
  return undefined;
}

export function makeSelfSigned(hostname: string): TlsMaterial {
  const dir = mkdtempSync(join(tmpdir(), 'douane-devcert-'));
  try {
    execFileSync(
      'openssl',
      [
        'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '30',
        // A common name holds 64 characters at most; the name clients check is in the SAN anyway.
        '-subj', `/CN=${hostname.length <= 64 ? hostname : 'douane-insecure-dev'}`,
        '-addext', `subjectAltName=DNS:${hostname},DNS:localhost,IP:127.0.0.1`,
        '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'),
      ],
      { stdio: 'pipe' },
    );
    return { key: readFileSync(join(dir, 'key.pem')), cert: readFileSync(join(dir, 'cert.pem')), selfSigned: true };
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: Buffer };
    const why = e.code === 'ENOENT' ? 'openssl is not installed (apt-get install openssl)' : (e.stderr?.toString().trim().split('\n').pop() ?? e.message);
    throw new Error(`tls.insecure_dev: could not create a self-signed certificate: ${why}; or set tls.cert and tls.key`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
