// fflate's streaming inflater, as Douane uses it (fflate is pinned: this reads its internal state).

import type { Inflate } from 'fflate';

/** The deflate stream's last block is done, so bytes after it are not deflate data. */
export function deflateEnded(inflater: Inflate): boolean {
  const state = (inflater as unknown as { s?: { f?: number; l?: unknown } }).s;
  return Boolean(state?.f && !state.l);
}
