// Starts the real components shared by all test files once per run, and stops them by PID afterwards.
// Every temporary file and directory of the run (the tests', the servers') goes under one directory,
// removed at the end: a run leaves nothing behind in /tmp, even from a test that did not clean up.

import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestProject } from 'vitest/node';
import { startMailStack, stopMailStack, type MailStackInfo } from './mail-stack.js';

declare module 'vitest' {
  export interface ProvidedContext {
    mailStack: MailStackInfo;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const root = mkdtempSync(join(tmpdir(), 'douane-tests-'));
  // Like /tmp: Postfix, Dovecot and clamd run as their own users and must reach their directories.
  chmodSync(root, 0o1777);
  // os.tmpdir() reads TMPDIR at each call, here and in the test workers, which inherit it.
  process.env.TMPDIR = root;
  let mail: MailStackInfo;
  try {
    mail = await startMailStack();
  } catch (err) {
    // No teardown runs after a setup that failed: what it made is removed here.
    rmSync(root, { recursive: true, force: true });
    throw err;
  }
  project.provide('mailStack', mail);
  return async () => {
    await stopMailStack(mail);
    rmSync(root, { recursive: true, force: true });
  };
}
