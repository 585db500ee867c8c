// Releasing a quarantined message when the upstream refuses some of its recipients: the others get it,
// and the output, the entry and the audit trail say who did not.

import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { AuditLog } from '../../src/audit/log.js';
import { releaseMessage } from '../../src/quarantine/release.js';
import { LocalQuarantine } from '../../src/quarantine/store.js';
import { FakeUpstream } from '../harness/fake-upstream.js';

let upstream: FakeUpstream | undefined;
afterEach(async () => {
  await upstream?.stop();
  upstream = undefined;
});

describe('quarantine release', () => {
  it('delivers to the recipients the upstream accepts and records the ones it refused', async () => {
    upstream = await FakeUpstream.start({ rcpt: (to) => (to === 'gone@example.net' ? '550 5.1.1 No such user' : undefined) });
    const dir = mkdtempSync(join(tmpdir(), 'douane-release-'));
    const store = new LocalQuarantine(join(dir, 'quarantine'));
    const audit = new AuditLog(join(dir, 'audit.log'));
    const raw = 'From: user1@example.test\r\nSubject: kept\r\n\r\nhello\r\n';
    const meta = await store.put(
      { reference: 'D-REL001', at: new Date().toISOString(), account: 'user1@example.test', listener: 'trusted', client: '127.0.0.1', sender: 'user1@example.test', recipients: ['bob@example.net', 'gone@example.net'], action: 'quarantine', reason: 'content.forbidden', rule: 'content.phishing-domains', policyVersion: 'abc', size: raw.length },
      Readable.from([Buffer.from(raw)]),
    );
    const endpoint = { host: '127.0.0.1', port: upstream.port, tls: 'none' as const, verifyCertificate: false, heloName: 'douane.test', timeouts: { connect: 2000, command: 2000, data: 5000, keepalive: 60_000 } };
    const released = await releaseMessage(store, meta.id, { endpoint, by: 'cli:test', audit });
    expect(upstream.messages).toHaveLength(1);
    expect(upstream.messages[0]!.to).toEqual(['bob@example.net']);
    expect(released.released!.refused).toEqual(['gone@example.net: 550 5.1.1 No such user']);
    expect((await store.get(meta.id))!.released!.refused).toEqual(['gone@example.net: 550 5.1.1 No such user']);
    const entry = JSON.parse(readFileSync(audit.path, 'utf8').trim()) as Record<string, unknown>;
    expect(entry).toMatchObject({ action: 'release', quarantine_id: meta.id, refused: ['gone@example.net: 550 5.1.1 No such user'] });
  });
});
