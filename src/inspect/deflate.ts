// fflate's streaming inflater, as Douane uses it (fflate is pinned: this reads its internal state).

import type { Inflate } from 'fflate';

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
