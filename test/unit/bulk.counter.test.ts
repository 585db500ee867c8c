// The bulk counter in memory (the embedded default, and the insurance when Redis fails): bounded by its
// window and by a number of bands, a content seen once kept as one record for all its bands.

import { describe, expect, it } from 'vitest';
import { BulkCounter } from '../../src/bulk/counter.js';
import type { BulkFingerprint } from '../../src/bulk/fingerprint.js';
import { createLogger } from '../../src/log.js';
import { Metrics } from '../../src/metrics.js';

const WINDOW = 3_600_000;

function counter(now: () => number, maxBands?: number, maxValues?: number): BulkCounter {
  return new BulkCounter({ keyPrefix: 'douane', deadlineMs: 500, metrics: new Metrics({ version: 't', defaultMetrics: false }), log: createLogger({ level: 'silent' }), now, maxBands, maxValues });
}

function message(id: string, bands: string[]): BulkFingerprint {
  return { id, bands, basis: 'text' } as BulkFingerprint;
}

describe('bulk counter in memory', () => {
  it('counts a band shared with an earlier message from that message\'s recipients and account on', async () => {
    const t = Date.parse('2026-11-02T08:00:00Z');
    const c = counter(() => t);
    expect(await c.count(message('a', ['x', 'y']), 'a@example.test', ['r1@example.net', 'r2@example.net'], WINDOW)).toMatchObject({ accountRecipients: 2, globalRecipients: 2, globalAccounts: 1 });
    expect(await c.count(message('b', ['y', 'z']), 'b@example.test', ['r2@example.net', 'r3@example.net'], WINDOW)).toMatchObject({ accountRecipients: 2, globalRecipients: 3, globalAccounts: 2 });
    expect(await c.count(message('c', ['y']), 'a@example.test', ['r4@example.net'], WINDOW)).toMatchObject({ accountRecipients: 3, globalRecipients: 4, globalAccounts: 2 });
    // The bands only the first message had still count it as seen once.
    expect(await c.count(message('d', ['x']), 'a@example.test', ['r1@example.net'], WINDOW)).toMatchObject({ accountRecipients: 2, globalRecipients: 2, globalAccounts: 1 });
    expect(c.bandsKept).toBe(3);
  });

  it('bounds what the bands\' sets hold: each set stops at 10 000, and all of them together at their bound, the oldest forgotten first', async () => {
    const t = Date.parse('2026-11-02T08:00:00Z');
    const bands = Array.from({ length: 48 }, (_, b) => `t${b}:campaign`);
    // One campaign from 400 accounts, 500 recipients each: 200 000 pairs, on every one of 48 bands.
    const c = counter(() => t, undefined, 50_000);
    let last;
    for (let a = 0; a < 400; a++) last = await c.count(message(`m${a}`, bands), `a${a}@example.test`, Array.from({ length: 500 }, (_, r) => `r${a}-${r}@example.net`), WINDOW);
    expect(c.valuesKept).toBeLessThanOrEqual(50_000);
    // The counts go on meanwhile: this message's own 500 at least.
    expect(last!.accountRecipients).toBeGreaterThanOrEqual(500);
    // One account's set of one band: 10 000 at most, however many recipients.
    const big = counter(() => t);
    await big.count(message('x', ['solo', 'other']), 'a@example.test', ['first@example.net'], WINDOW);
    const counted = await big.count(message('y', ['solo']), 'a@example.test', Array.from({ length: 20_000 }, (_, r) => `r${r}@example.net`), WINDOW);
    expect(counted).toMatchObject({ accountRecipients: 10_000, globalRecipients: 10_000 });
    expect(big.valuesKept).toBeLessThanOrEqual(20_001);
  });

  it('forgets bands whose window ended, and the oldest past its bound', async () => {
    let t = Date.parse('2026-11-02T08:00:00Z');
    const c = counter(() => t, 100);
    const bands = (n: number) => Array.from({ length: 48 }, (_, b) => `t${b}:${n}`);
    await c.count(message('m1', bands(1)), 'a@example.test', ['r1@example.net'], WINDOW);
    t += 1000;
    await c.count(message('m2', bands(2)), 'a@example.test', ['r2@example.net'], WINDOW);
    expect(c.bandsKept).toBe(96);
    t += 1000;
    await c.count(message('m3', bands(3)), 'a@example.test', ['r3@example.net'], WINDOW);
    expect(c.bandsKept).toBe(100);
    // The first message's bands went first: the same content again counts as new; the third's is known.
    expect(await c.count(message('m1', bands(1).slice(0, 4)), 'b@example.test', ['r9@example.net'], WINDOW)).toMatchObject({ globalAccounts: 1 });
    expect(await c.count(message('m3', bands(3).slice(0, 1)), 'b@example.test', ['r9@example.net'], WINDOW)).toMatchObject({ globalAccounts: 2, globalRecipients: 2 });
    // A window later, all of it is gone but what is counted now.
    t += WINDOW;
    await c.count(message('m4', ['only']), 'a@example.test', ['r1@example.net'], WINDOW);
    expect(c.bandsKept).toBe(1);
  });

  it('a window shortened by a reload: bands that ended go before live ones when the bound is reached', async () => {
    let t = Date.parse('2026-11-02T08:00:00Z');
    const c = counter(() => t, 4);
    const [day, minute] = [86_400_000, 60_000];
    await c.count(message('campaign', ['c1', 'c2']), 'a@example.test', ['r1@example.net'], day);
    await c.count(message('m1', ['x1', 'x2']), 'b@example.test', ['r2@example.net'], minute);
    t += 2 * minute;
    await c.count(message('m2', ['y1', 'y2']), 'b@example.test', ['r3@example.net'], minute);
    expect(c.bandsKept).toBe(4);
    expect(await c.count(message('campaign', ['c1', 'c2']), 'z@example.test', ['r9@example.net'], day)).toMatchObject({ globalAccounts: 2, globalRecipients: 2 });
  });
});
