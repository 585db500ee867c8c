import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { preparePhase, runPhase } from '../../src/pipeline/index.js';
import { mailLimits } from '../../src/pipeline/checks/mail.limits.js';
import type { CheckContext } from '../../src/pipeline/types.js';
import type { SessionState, Transaction } from '../../src/session/state.js';
import { loadPolicy } from '../../src/policy/load.js';
import { Limiter } from '../../src/limits/limiter.js';
import { createLogger } from '../../src/log.js';
import { Metrics } from '../../src/metrics.js';

// The small-limits fixture's default plan allows 3 messages a minute.
const { config } = parseConfig('t.yaml', 'listeners: { t: { mode: trusted, port: 0, allow: [127.0.0.1] } }\nupstream: { host: x }\nclamd: none\n');
const policy = loadPolicy('fixtures/policies/small-limits');
const metrics = new Metrics({ version: 't', defaultMetrics: false });

function setup() {
  const limiter = new Limiter({ keyPrefix: 't', onFailure: 'insurance', deadlineMs: 1000, metrics, log: createLogger({ level: 'silent' }) });
  const deps = { clock: { now: () => 0 }, connectionsFrom: () => 1, trustedNetwork: () => true, policy: () => policy, strikes: { record: async () => {} }, metrics, limiter, bulk: { count: async () => undefined }, accounts: { lookup: async () => ({ state: {} }), known: (a: string) => a } };
  const context = (): CheckContext & { tx: Transaction } => {
    const session: SessionState = { id: 's', reference: 'D-1', listener: { name: 't', mode: 'trusted' }, remoteAddress: '127.0.0.1', startedAt: 0, authFailures: 0, transactions: 0, counted: true, account: 'alice@example.com' };
    const tx: Transaction = { reference: 'D-2', startedAt: 0, mailFrom: 'alice@example.com', params: {}, recipients: [], results: [], tags: [], policy, recipientGrants: [], would: [], timings: {}, done: false };
    return { phase: 'mail', config, session, deps, tx } as CheckContext & { tx: Transaction };
  };
  /** One MAIL FROM as the gateway runs it: counting starts with the phase, the check judges in order. */
  const mail = async (throttle?: number) => {
    const ctx = context();
    preparePhase('mail', ctx, [mailLimits]);
    if (throttle) ctx.tx.throttle = throttle; // found meanwhile by mail.account-status
    await runPhase('mail', ctx, [mailLimits]);
    return ctx.tx;
  };
  return { limiter, context, mail };
}

const settle = () => new Promise((r) => setImmediate(r));

describe('mail.limits: counted with the account state, judged in pipeline order', () => {
  it('judges the counts against the limits a throttle found meanwhile lowers', async () => {
    const plain = setup();
    await plain.mail();
    expect((await plain.mail()).limits?.exceeded).toEqual([]);

    const throttled = setup();
    await throttled.mail(0.5); // 3 a minute × 0.5 → 1
    const second = await throttled.mail(0.5);
    expect(second.limits?.exceeded).toEqual(['messages_per_minute']);
    expect(second.limits?.usage.messages_per_minute).toBe(2);
  });

  it('a count that comes back after the transaction was refused is given back', async () => {
    const { context, mail } = setup();
    const refused = context();
    preparePhase('mail', refused, [mailLimits]);
    refused.tx.done = true; // an earlier check refused it before Redis answered
    await settle();
    expect(refused.tx.limitGrant).toBeUndefined();
    expect((await mail()).limits?.usage.messages_per_minute).toBe(1);
  });

  it('a count that came back first is held by the transaction, for its end to settle', async () => {
    const { context, limiter, mail } = setup();
    const ctx = context();
    preparePhase('mail', ctx, [mailLimits]);
    await settle();
    expect(ctx.tx.limitGrant?.consumed).toHaveLength(4); // three message counters and the bytes reserved
    await limiter.refund(ctx.tx.limitGrant!);
    expect((await mail()).limits?.usage.messages_per_minute).toBe(1);
  });

  it('counts once when prepared, and run alone counts the same', async () => {
    const { context, mail } = setup();
    const ctx = context();
    await runPhase('mail', ctx, [mailLimits]);
    expect(ctx.tx.limits?.usage.messages_per_minute).toBe(1);
    expect((await mail()).limits?.usage.messages_per_minute).toBe(2);
  });
});
