// Inflating inside archives: the budget one message's archives share, the step the inflater is fed
// at, and fflate's streaming inflater as Douane uses it (fflate is pinned: this reads its internal state).

import type { Inflate } from 'fflate';

/**
 * Bytes inflated to list inner archives, and inner archives opened, all of one message together. A tar of
 * rotated logs holds a .gz per day, each opened (and given up after its first block): ten thousand cost
 * about a third of a second.
 */
const MAX_INFLATED = 128 * 1024 * 1024;
const MAX_NESTED_ARCHIVES = 10_000;
/** Compressed bytes given to the inflater at a time: its output per step stays under about 1 MB (deflate expands 1032 times at most), checked against the budget. */
export const INFLATE_STEP = 1024;

/**
 * 7z headers decoded, all of one message together: LZMA decodes about 6 MB a second in the worst case
 * here, and a real header is a few kilobytes (about 200 KB for ten thousand files). Each is at most
 * 512 KB (sevenzip.ts): this is four of the largest.
 */
const MAX_LZMA_DECODED = 2 * 1024 * 1024 + 4 * (0x300 << 12);

/** What inspecting one message may still cost (inner archives, 7z headers, attachments, HTML), shared by all its parts. */
export interface InflateBudget {
  bytes: number;
  archives: number;
  /** bytes of 7z headers still to decode */
  lzma: number;
  /** attachments still to open (each gets its listers, its hash, its type) */
  attachments: number;
  /** bytes of HTML text parts still to convert to text */
  html: number;
  /** something was left unread for want of budget */
  exhausted: boolean;
}

export type BudgetLimits = Omit<InflateBudget, 'exhausted'>;

/** A whole message's budget: attachments and HTML are bounded by the inspection limits (parts, text). */
export const FULL_BUDGET: BudgetLimits = { bytes: MAX_INFLATED, archives: MAX_NESTED_ARCHIVES, lzma: MAX_LZMA_DECODED, attachments: Infinity, html: Infinity };

/**
 * The budget of a first look in the thread every session shares: about ten milliseconds of work at each
 * bound (plus the step in progress when it runs out). Most messages, archives included, stay within it;
 * one that does not is looked at again, whole, in an inspection thread (pool.ts). A hundred attachments
 * take about 12 ms to open; 256 KB of HTML take up to 20 ms to convert (a page of character references).
 */
export const FIRST_LOOK_BUDGET: BudgetLimits = { bytes: 4 * 1024 * 1024, archives: 300, lzma: 64 * 1024, attachments: 100, html: 256 * 1024 };

export function inflateBudget(limits: BudgetLimits = FULL_BUDGET): InflateBudget {
  return { ...limits, exhausted: false };
}

/** The deflate stream's last block is done, so bytes after it are not deflate data. */
export function deflateEnded(inflater: Inflate): boolean {
  const state = (inflater as unknown as { s?: { f?: number; l?: unknown } }).s;
  return Boolean(state?.f && !state.l);
}

/**
 * Once the stream has ended: the bytes the inflater was given past its end (a gzip trailer, another
 * member). fflate keeps the unread input and the bit position within its first byte.
 */
export function bytesAfterEnd(inflater: Inflate): number {
  const internal = inflater as unknown as { p?: Uint8Array; s?: { p?: number } };
  const left = internal.p?.length ?? 0;
  return Math.max(0, left - (internal.s?.p ? 1 : 0));
}
