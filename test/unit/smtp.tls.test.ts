// The throwaway development certificate (tls.insecure_dev): made for any host name the configuration
// accepts, and a failure says what to do in one line.

import { X509Certificate } from 'node:crypto';
import { mkdtempSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { makeSelfSigned } from '../../src/smtp/tls.js';

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
