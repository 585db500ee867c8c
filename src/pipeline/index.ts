// The pipeline: for each SMTP phase, the checks that run, in order. This is the one place to read what
// Douane does to a session; `douane pipeline` prints it. The first verdict that is not "continue" or
// "tag" ends the phase; a check that throws is an error, and an error tempfails (nothing passes unchecked).

import type { CheckResult } from '../session/state.js';
import { connectPerIpCap } from './checks/connect.per-ip-cap.js';
import { connectTrustedNetwork } from './checks/connect.trusted-network.js';
import { dataLineEndings } from './checks/data.line-endings.js';
import { dataSize } from './checks/data.size.js';
import { mailDeclaredSize } from './checks/mail.declared-size.js';
import { mailSenderAlignment } from './checks/mail.sender-alignment.js';
import { mailLimits } from './checks/mail.limits.js';
import { rcptLimits } from './checks/rcpt.limits.js';
import { authBruteForce } from './checks/auth.brute-force.js';
import { mailAccountStatus } from './checks/mail.account-status.js';
import { mailPolicy } from './checks/mail.policy.js';
import { rcptPolicy } from './checks/rcpt.policy.js';
import { dataPolicy } from './checks/data.policy.js';
import { dataSenderAlignment } from './checks/data.sender-alignment.js';
import { dataBulk } from './checks/data.bulk.js';
import { dataScan } from './checks/data.scan.js';
import { rcptMaxRecipients } from './checks/rcpt.max-recipients.js';
import type { Check, CheckContext } from './types.js';
import { CONTINUE, isTerminal, type Phase, type Verdict } from './verdict.js';

export const PIPELINE: Readonly<Record<Phase, readonly Check[]>> = Object.freeze({
  connect: [connectTrustedNetwork, connectPerIpCap],
  auth: [authBruteForce],
  mail: [mailDeclaredSize, mailAccountStatus, mailSenderAlignment, mailLimits, mailPolicy],
  rcpt: [rcptMaxRecipients, rcptLimits, rcptPolicy],
  data: [dataLineEndings, dataSize, dataScan, dataSenderAlignment, dataBulk, dataPolicy],
});

export interface PhaseOutcome {
  verdict: Verdict;
  results: CheckResult[];
  tags: string[];
}

export async function runPhase(phase: Phase, ctx: CheckContext, checks: readonly Check[] = PIPELINE[phase]): Promise<PhaseOutcome> {
  const results: CheckResult[] = [];
  const tags: string[] = [];
  for (const check of checks) {
    const started = performance.now();
    let verdict: Verdict;
    let errored = false;
    try {
      verdict = await check.run(ctx);
    } catch (err) {
      errored = true;
      verdict = { action: 'tempfail', reason: 'internal.check_failed', evidence: { check: check.id, error: (err as Error).message } };
    }
    const result: CheckResult = {
      check: check.id,
      phase,
      result: errored ? 'error' : verdict.skip ? 'skip' : verdict.action === 'continue' ? 'pass' : verdict.action === 'tag' || verdict.action === 'accept' ? 'pass' : 'fail',
      action: verdict.action,
      ms: Math.round((performance.now() - started) * 1000) / 1000,
    };
    if (verdict.reason) result.reason = verdict.reason;
    if (verdict.rule) result.rule = verdict.rule;
    if (verdict.skip) result.note = verdict.skip;
    if (verdict.evidence) result.evidence = verdict.evidence;
    results.push(result);
    if (verdict.action === 'tag' && verdict.rule) tags.push(verdict.rule.id);
    if (isTerminal(verdict)) return { verdict, results, tags };
  }
  return { verdict: CONTINUE, results, tags };
}

/** Starts the phase's slow lookups at once (Check.prepare); their checks still run in pipeline order. */
export function preparePhase(phase: Phase, ctx: CheckContext, checks: readonly Check[] = PIPELINE[phase]): void {
  for (const check of checks) check.prepare?.(ctx);
}

/** The pipeline as text, one line per check, for people. */
export function describePipeline(pipeline: Readonly<Record<Phase, readonly Check[]>> = PIPELINE): string {
  const lines: string[] = [];
  for (const [phase, checks] of Object.entries(pipeline)) {
    lines.push(`${phase}:`);
    if (checks.length === 0) lines.push('  (no checks)');
    checks.forEach((c, i) => lines.push(`  ${i + 1}. ${c.id.padEnd(28)} ${c.describe}`));
  }
  return lines.join('\n');
}
