import { chmodSync, chownSync, mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { securePrivateDir } from '../../src/data/private-dir.js';

const made: string[] = [];
afterEach(() => {
  for (const dir of made.splice(0)) rmSync(dir, { recursive: true, force: true });
});

function scratch(): string {
  const dir = mkdtempSync(join(tmpdir(), 'douane-private-'));
  made.push(dir);
  return dir;
}

const modeOf = (path: string) => statSync(path).mode & 0o7777;
const me = process.getuid?.() ?? 0;

describe('the quarantine and outbox directories', () => {
  it('are made private when missing', () => {
    const dir = join(scratch(), 'a', 'quarantine');
    expect(securePrivateDir(dir)).toEqual({});
    expect(modeOf(dir)).toBe(0o700);
  });

  it('are closed to other users when an earlier install left them open, saying what they were', () => {
    const dir = join(scratch(), 'quarantine');
    mkdirSync(dir);
    chmodSync(dir, 0o777);
    expect(securePrivateDir(dir)).toEqual({ was: 0o777 });
    expect(modeOf(dir)).toBe(0o700);
    expect(securePrivateDir(dir)).toEqual({});
  });

  it('are refused when another user owns them', () => {
    const dir = join(scratch(), 'outbox');
    mkdirSync(dir, { mode: 0o700 });
    // As root, the directory is given away; as another user, the process poses as someone else.
    if (me === 0) chownSync(dir, 65534, 65534);
    const uid = me === 0 ? 0 : me + 1;
    expect(() => securePrivateDir(dir, uid)).toThrow(`${dir} belongs to uid ${me === 0 ? 65534 : me}, not to the user Douane runs as (uid ${uid})`);
  });

  it.skipIf(me !== 0)('root\'s, when Douane is not root: kept if others cannot write in it, refused if they can', () => {
    const dir = join(scratch(), 'quarantine');
    mkdirSync(dir);
    chmodSync(dir, 0o755);
    expect(securePrivateDir(dir, 65534)).toEqual({});
    expect(modeOf(dir)).toBe(0o755);
    chmodSync(dir, 0o777);
    expect(() => securePrivateDir(dir, 65534, new Set([65534]))).toThrow(`${dir} can be written by every user (mode 0777) and only root may change that`);
    // Its group's writing is Douane's when Douane is in that group (root:douane 0770), a stranger's otherwise.
    chmodSync(dir, 0o770);
    expect(securePrivateDir(dir, 65534, new Set([0]))).toEqual({});
    expect(() => securePrivateDir(dir, 65534, new Set([65534]))).toThrow(`${dir} can be written by group 0, which Douane is not in (mode 0770)`);
  });
});
