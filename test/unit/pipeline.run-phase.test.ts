import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { PIPELINE, describePipeline, runPhase } from '../../src/pipeline/index.js';
import type { Check, CheckContext } from '../../src/pipeline/types.js';
import type { SessionState } from '../../src/session/state.js';
import { loadPolicy } from '../../src/policy/load.js';
import { Metrics } from '../../src/metrics.js';

const { config } = parseConfig('t.yaml', 'listeners: { t: { mode: trusted, port: 0, allow: [127.0.0.1] } }\nupstream: { host: x }\nclamd: none\n');
const session: SessionState = { id: 's', reference: 'D-1', listener: { name: 't', mode: 'trusted' }, remoteAddress: '127.0.0.1', startedAt: 0, authFailures: 0, transactions: 0, counted: true };
const policy = loadPolicy('fixtures/policies/minimal');
const deps = { clock: { now: () => 0 }, connectionsFrom: () => 1, trustedNetwork: () => true, policy: () => policy, strikes: { record: async () => {} }, metrics: new Metrics({ version: 't', defaultMetrics: false }), limiter: { countMessage: () => Promise.reject(new Error('unused')), checkRecipient: () => Promise.reject(new Error('unused')), authAttempt: async () => ({ retryAfter: 0, settle: async () => ({ accountBlockedNow: false, failures: 0 }) }), refund: async () => undefined }, bulk: { count: async () => undefined }, accounts: { lookup: async () => ({ state: {} }), known: (a: string) => a } };
const ctx: CheckContext = { phase: 'mail', config, session, deps };

const check = (id: string, run: Check['run']): Check => ({ id, phase: 'mail', describe: id, run });

describe('pipeline runner', () => {
  it('stops at the first terminal verdict and records every result', async () => {
    const out = await runPhase('mail', ctx, [
      check('mail.a', () => ({ action: 'continue' })),
      check('mail.b', () => ({ action: 'reject', reason: 'message.too_big' })),
      check('mail.c', () => {
        throw new Error('must not run');
      }),
    ]);
    expect(out.verdict).toMatchObject({ action: 'reject', reason: 'message.too_big' });
    expect(out.results.map((r) => [r.check, r.result])).toEqual([
      ['mail.a', 'pass'],
      ['mail.b', 'fail'],
    ]);
  });

  it('turns a check that throws into a tempfail: nothing passes unchecked', async () => {
    const out = await runPhase('mail', ctx, [check('mail.boom', () => Promise.reject(new Error('scanner exploded')))]);
    expect(out.verdict).toMatchObject({ action: 'tempfail', reason: 'internal.check_failed' });
    expect(out.results[0]).toMatchObject({ result: 'error', evidence: { error: 'scanner exploded' } });
  });

  it('collects tags and continues after them', async () => {
    const out = await runPhase('mail', ctx, [check('mail.tag', () => ({ action: 'tag', rule: { id: 'r1' } })), check('mail.ok', () => ({ action: 'continue' }))]);
    expect(out.verdict.action).toBe('continue');
    expect(out.tags).toEqual(['r1']);
  });

  it('names each check by phase, and prints the pipeline in order', () => {
    for (const [phase, checks] of Object.entries(PIPELINE)) for (const c of checks) expect(c.id.startsWith(phase + '.')).toBe(true);
    const text = describePipeline();
    expect(text.indexOf('connect.trusted-network')).toBeLessThan(text.indexOf('data.line-endings'));
  });
});
