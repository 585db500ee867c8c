// Starts the real components shared by all test files once per run, and stops them by PID afterwards.

import type { TestProject } from 'vitest/node';
import { startMailStack, stopMailStack, type MailStackInfo } from './mail-stack.js';

declare module 'vitest' {
  export interface ProvidedContext {
    mailStack: MailStackInfo;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const mail = await startMailStack();
  project.provide('mailStack', mail);
  return async () => {
    await stopMailStack(mail);
  };
}
