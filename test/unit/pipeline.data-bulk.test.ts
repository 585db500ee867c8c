import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { Readable } from 'node:stream';
import { parseConfig } from '../../src/config/load.js';
import { inspectStream } from '../../src/inspect/mime.js';
import { preparePhase, runPhase } from '../../src/pipeline/index.js';
import { dataBulk } from '../../src/pipeline/checks/data.bulk.js';
import type { CheckContext } from '../../src/pipeline/types.js';
import type { BulkPort } from '../../src/bulk/counter.js';
import type { BulkFacts } from '../../src/policy/facts.js';
import type { SessionState, Transaction } from '../../src/session/state.js';
import { loadPolicy } from '../../src/policy/load.js';
import { Metrics } from '../../src/metrics.js';

const { config } = parseConfig('t.yaml', 'listeners: { t: { mode: trusted, port: 0, allow: [127.0.0.1] } }\nupstream: { host: x }\nclamd: none\n');
const policy = loadPolicy('fixtures/policies/minimal');
const raw = readFileSync('fixtures/messages/newsletter-html.eml');
const facts: BulkFacts = { fingerprint: 'f00d', accountRecipients: 3, globalRecipients: 7, globalAccounts: 2 };

async function context(bulk: BulkPort): Promise<CheckContext & { tx: Transaction }> {
  const message = await inspectStream(Readable.from([raw]), { maxParts: 100, maxDepth: 10, maxHeaderSize: 65_536 });
  const session: SessionState = { id: 's', reference: 'D-1', listener: { name: 't', mode: 'trusted' }, remoteAddress: '127.0.0.1', startedAt: 0, authFailures: 0, transactions: 0, counted: true, account: 'alice@example.com' };
  const tx: Transaction = { reference: 'D-2', startedAt: 0, mailFrom: 'alice@example.com', params: {}, recipients: [{ address: 'bob@example.net', reply: '250', accepted: true }, { address: 'eve@example.net', reply: '550', accepted: false }], results: [], tags: [], policy, recipientGrants: [], would: [], timings: {}, done: false, message };
  const deps = { clock: { now: () => 0 }, connectionsFrom: () => 1, trustedNetwork: () => true, policy: () => policy, strikes: { record: async () => {} }, metrics: new Metrics({ version: 't', defaultMetrics: false }), limiter: { countMessage: () => Promise.reject(new Error('unused')), checkRecipient: () => Promise.reject(new Error('unused')), authAttempt: async () => ({ retryAfter: 0, settle: async () => ({ accountBlockedNow: false, failures: 0 }) }), refund: async () => undefined }, bulk, accounts: { lookup: async () => ({ state: {} }), known: (a: string) => a } };
  return { phase: 'data', config, session, deps, tx } as CheckContext & { tx: Transaction };
}

describe('data.bulk: counted while the scan finishes', () => {
  it('prepare starts the count at once; run takes that result and does not count twice', async () => {
    const calls: { account: string; recipients: string[] }[] = [];
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const ctx = await context({
      count: async (_fp, account, recipients) => {
        calls.push({ account, recipients });
        await gate;
        return facts;
      },
    });
    preparePhase('data', ctx, [dataBulk]);
    expect(calls).toEqual([{ account: 'alice@example.com', recipients: ['bob@example.net'] }]);
    const running = runPhase('data', ctx, [dataBulk]);
    release();
    const out = await running;
    expect(calls).toHaveLength(1);
    expect(ctx.tx.bulk).toEqual(facts);
    expect(out.results[0]).toMatchObject({ check: 'data.bulk', result: 'pass', evidence: { ...facts } });
  });

  it('without prepare, run alone counts and gives the same verdict', async () => {
    let counted = 0;
    const ctx = await context({ count: async () => (counted++, facts) });
    const out = await runPhase('data', ctx, [dataBulk]);
    expect(counted).toBe(1);
    expect(out.results[0]).toMatchObject({ result: 'pass', evidence: { ...facts } });
  });

  it('a count that fails is held until run, which tempfails; never an unhandled rejection', async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (e: unknown) => unhandled.push(e);
    process.on('unhandledRejection', onUnhandled);
    try {
      const ctx = await context({ count: () => Promise.reject(new Error('redis went away')) });
      preparePhase('data', ctx, [dataBulk]);
      // An earlier check refuses and data.bulk never runs: the failed count must not surface anywhere.
      const idle = await context({ count: () => Promise.reject(new Error('redis went away')) });
      preparePhase('data', idle, [dataBulk]);
      await new Promise((r) => setTimeout(r, 20));
      expect(unhandled).toEqual([]);
      const out = await runPhase('data', ctx, [dataBulk]);
      expect(out.verdict).toMatchObject({ action: 'tempfail', reason: 'internal.check_failed' });
      expect(out.results[0]).toMatchObject({ result: 'error', evidence: { error: 'redis went away' } });
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });

  it('counts unavailable without insurance (limits.on_redis_failure: tempfail): 451 as for the other limits', async () => {
    const { BulkCountsUnavailable } = await import('../../src/bulk/counter.js');
    const ctx = await context({ count: () => Promise.reject(new BulkCountsUnavailable('bulk counts unavailable: Connection is closed.')) });
    preparePhase('data', ctx, [dataBulk]);
    const out = await runPhase('data', ctx, [dataBulk]);
    expect(out.verdict).toMatchObject({ action: 'tempfail', reason: 'limits.unavailable' });
    expect(out.results[0]).toMatchObject({ result: 'fail', evidence: { degraded: true } });
  });

  it('nothing to prepare without an inspected message', async () => {
    let counted = 0;
    const ctx = await context({ count: async () => (counted++, facts) });
    ctx.tx.message = undefined;
    preparePhase('data', ctx, [dataBulk]);
    const out = await runPhase('data', ctx, [dataBulk]);
    expect(counted).toBe(0);
    expect(out.results[0]).toMatchObject({ result: 'skip', note: 'message not inspected' });
  });
});
