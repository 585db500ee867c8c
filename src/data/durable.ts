// Files that must survive a power cut whole or not at all: written to a temporary name, flushed, renamed
// over the real name, and the directory flushed so that the rename itself is on the disk.

import { randomBytes } from 'node:crypto';
import { readdirSync, rmSync } from 'node:fs';
import { open, rename, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/**
 * fsync of a file, or of a directory (its entries: a rename made durable). Some file systems cannot
 * flush a directory (EINVAL, ENOTSUP): the rename is then as durable as they make it.
 */
export async function syncFile(path: string, directory = false): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } catch (err) {
    if (!directory || !['EINVAL', 'ENOTSUP', 'EISDIR', 'EBADF'].includes((err as NodeJS.ErrnoException).code ?? '')) throw err;
  } finally {
    await handle.close();
  }
}

/** Replaces `path` with `text`: after a crash it holds the old text or the new, never a part of either. */
export async function writeFileDurably(path: string, text: string, mode = 0o600): Promise<void> {
  // Its own temporary name: two writes of one file at once must not write into the same one.
  const tmp = join(dirname(path), `.${basename(path)}.${randomBytes(4).toString('hex')}.tmp`);
  try {
    await writeFile(tmp, text, { mode });
    await syncFile(tmp);
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true }).catch(() => undefined);
    throw err;
  }
  await syncFile(dirname(path), true);
}

/**
 * Removes the temporary files of `path` that writes cut short by a crash left beside it. Only at start,
 * when no write of it can be under way (the state directory is this process's alone).
 */
export function removeLeftoversSync(path: string): void {
  const prefix = `.${basename(path)}.`;
  let names: string[];
  try {
    names = readdirSync(dirname(path));
  } catch {
    return;
  }
  for (const name of names) {
    if (name.startsWith(prefix) && /^[0-9a-f]{8}\.tmp$/.test(name.slice(prefix.length))) rmSync(join(dirname(path), name), { force: true });
  }
}
