// The throwaway development certificate (tls.insecure_dev): made for any host name the configuration
// accepts, and a failure says what to do in one line. And what an operator is told about a certificate's
// dates: expired, not valid yet, or ending soon.

import { X509Certificate } from 'node:crypto';
import { mkdtempSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CERTIFICATE_WARN_BEFORE_MS, certificateDates, certificateWarning, makeSelfSigned } from '../../src/smtp/tls.js';

describe('tls.insecure_dev certificate', () => {
  it('is made for a host name longer than a common name holds (64), which it names in the SAN', () => {
    const hostname = `${'relay-'.repeat(11)}example.test`;
    expect(hostname.length).toBeGreaterThan(64);
    const cert = new X509Certificate(makeSelfSigned(hostname).cert);
    expect(cert.subjectAltName).toContain(`DNS:${hostname}`);
    expect(cert.checkHost(hostname)).toBe(hostname);
  });

  it('says in one line that openssl is missing, and what else would do', () => {
    // A PATH holding only node: no openssl to run.
    const bin = mkdtempSync(join(tmpdir(), 'douane-no-openssl-'));
    symlinkSync(process.execPath, join(bin, 'node'));
    const path = process.env.PATH;
    process.env.PATH = bin;
    try {
      expect(() => makeSelfSigned('douane.test')).toThrow(/^tls\.insecure_dev: could not create a self-signed certificate: openssl is not installed \(apt-get install openssl\); or set tls\.cert and tls\.key$/);
    } finally {
      process.env.PATH = path;
    }
  });
});

describe('a certificate\'s dates', () => {
  const DAY = 86_400_000;
  const now = Date.parse('2026-11-29T12:00:00Z');
  const dates = (fromDays: number, toDays: number) => ({ subject: 'CN=mail.example.test', validFrom: new Date(now + fromDays * DAY), validTo: new Date(now + toDays * DAY) });

  it('are read from the certificate clients are shown', () => {
    const material = makeSelfSigned('mail.example.test');
    const d = certificateDates(material.cert);
    expect(d.subject).toBe('CN=mail.example.test');
    // openssl -days 30, made just now
    expect(d.validTo.getTime() - Date.now()).toBeGreaterThan(29 * DAY);
    expect(d.validTo.getTime() - Date.now()).toBeLessThanOrEqual(30 * DAY);
    expect(d.validFrom.getTime()).toBeLessThanOrEqual(Date.now());
  });

  it('give no warning with more than 14 days left', () => {
    expect(CERTIFICATE_WARN_BEFORE_MS).toBe(14 * DAY);
    expect(certificateWarning(dates(-60, 30), now)).toBeUndefined();
    expect(certificateWarning(dates(-60, 14.01), now)).toBeUndefined();
  });

  it('warn of an end within 14 days, in whole days, and of an end within the day', () => {
    expect(certificateWarning(dates(-60, 14), now)).toEqual({
      event: 'tls_certificate_expiring',
      message: 'the TLS certificate (CN=mail.example.test) expires on 2026-12-13T12:00:00Z, in 14 days: renew it and send SIGHUP',
    });
    expect(certificateWarning(dates(-60, 1.5), now)?.message).toMatch(/, in 1 day: /);
    expect(certificateWarning(dates(-60, 0.2), now)?.message).toMatch(/, in less than a day: /);
  });

  it('say that an expired certificate is refused by clients, and one not valid yet points at the clock', () => {
    expect(certificateWarning(dates(-60, 0), now)).toEqual({
      event: 'tls_certificate_expired',
      message: 'the TLS certificate (CN=mail.example.test) expired on 2026-11-29T12:00:00Z: clients that check certificates refuse it; renew it and send SIGHUP',
    });
    expect(certificateWarning(dates(1, 90), now)).toEqual({
      event: 'tls_certificate_not_yet_valid',
      message: 'the TLS certificate (CN=mail.example.test) is not valid before 2026-11-30T12:00:00Z: clients that check certificates refuse it; check this machine\'s clock',
    });
  });
});
