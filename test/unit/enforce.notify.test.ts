// Notices reach the upstream as relayed mail does: its TLS mode, its CA and the name on its certificate
// (a Zimbra MTA with a certificate of its own CA), unless enforcement.notify.smtp says otherwise.

import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SMTPServer } from 'smtp-server';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { mailHandler } from '../../src/enforce/notify.js';
import { PermanentFailure, type Job } from '../../src/enforce/outbox.js';
import { noticeSmtp } from '../../src/gateway.js';
import { Metrics } from '../../src/metrics.js';
import { makeSelfSigned } from '../../src/smtp/tls.js';

const dir = mkdtempSync(join(tmpdir(), 'douane-notify-'));
const material = makeSelfSigned('mx.provider.test');
writeFileSync(join(dir, 'ca.pem'), material.cert);

const config = (upstream: string, notify = '') =>
  parseConfig('t.yaml', ['listeners: { t: { mode: trusted, address: 127.0.0.1, port: 0, allow: [127.0.0.1] } }', `upstream: { host: 127.0.0.1, ${upstream} }`, 'clamd: none', `state_dir: ${dir}/state`, `spool: { dir: ${dir}/spool }`, notify].join('\n')).config;

const job = { id: 'n1', kind: 'notify', payload: { channel: 'holder', to: ['user1@example.test'], subject: 'Avertissement', text: 'texte' } } as unknown as Job;

describe('where notices are sent', () => {
  it('to the upstream\'s trusted port with its TLS mode, CA and certificate name', () => {
    const smtp = noticeSmtp(config(`trusted_port: 2525, tls: starttls, ca: ${dir}/ca.pem, servername: mx.provider.test`));
    expect(smtp).toMatchObject({ host: '127.0.0.1', port: 2525, secure: false, require_tls: true, verify_certificate: true, servername: 'mx.provider.test' });
    expect(smtp.ca?.equals(material.cert)).toBe(true);
    expect(noticeSmtp(config('trusted_port: 465, tls: implicit'))).toMatchObject({ secure: true, require_tls: false });
    expect(noticeSmtp(config('tls: none'))).toMatchObject({ ignore_tls: true });
    const own = noticeSmtp(config('tls: none', `enforcement: { notify: { smtp: { host: relay.test, port: 587, ca: ${dir}/ca.pem, servername: relay.test } } }`));
    expect(own).toMatchObject({ host: 'relay.test', port: 587, servername: 'relay.test' });
    expect(own.ca?.equals(material.cert)).toBe(true);
  });

  it('a notice is delivered over STARTTLS to a server whose certificate only its CA vouches for; without it, tried again', async () => {
    const received: string[] = [];
    const server = new SMTPServer({
      key: material.key,
      cert: material.cert,
      authOptional: true,
      logger: false,
      onData(stream, session, cb) {
        stream.on('data', () => undefined);
        stream.on('end', () => {
          received.push(session.envelope.rcptTo.map((r) => r.address).join(','));
          cb();
        });
      },
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.server.address() as { port: number }).port;
    try {
      const metrics = new Metrics({ version: 't', defaultMetrics: false });
      const send = mailHandler({ from: 'douane@provider.test', smtp: noticeSmtp(config(`trusted_port: ${port}, tls: starttls, ca: ${dir}/ca.pem, servername: mx.provider.test`)) }, metrics);
      await send(job);
      expect(received).toEqual(['user1@example.test']);
      const unverified = mailHandler({ from: 'douane@provider.test', smtp: noticeSmtp(config(`trusted_port: ${port}, tls: starttls, servername: mx.provider.test`)) }, metrics);
      await expect(unverified(job)).rejects.toSatisfy((e: unknown) => e instanceof Error && !(e instanceof PermanentFailure) && /self[- ]signed/i.test(e.message));
      expect(received).toHaveLength(1);
    } finally {
      server.close();
    }
  });
});
