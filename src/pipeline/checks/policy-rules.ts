// Shared by mail.policy, rcpt.policy and data.policy: evaluates the rules of one phase under the
// transaction's policy, counts enforced and monitor-mode matches, records strike events (those of the data
// phase once the gateway knows the message's fate), and returns the deciding rule's verdict.

import { factsFor } from '../../policy/build-facts.js';
import type { StrikeEvent } from '../../policy/strikes.js';
import type { RulePhase } from '../../policy/fields.js';
import type { CheckContext } from '../types.js';
import { isRefusal, type Verdict } from '../verdict.js';

export async function evaluateRules(phase: RulePhase, ctx: CheckContext): Promise<Verdict> {
  const tx = ctx.tx;
  if (!tx) return { action: 'continue', skip: 'no transaction' };
  const policy = tx.policy;
  if (policy.rulesByPhase[phase].length === 0) return { action: 'continue', skip: 'no rules for this phase' };
  const facts = factsFor(ctx);
  const ev = policy.evaluate(phase, facts, { trace: Boolean(ctx.trace) });
  if (ev.trace) ctx.trace!(ev.trace);
  // A rule resting on a fact that is false only for want of the lifecycle API (sender.aligned while the
  // aliases are unknown) neither refuses nor strikes: its refusal becomes a tempfail, the client retries.
  const unverified = tx.unverified;
  const restsOnUnverified = (ruleId: string | undefined) => {
    if (!unverified || ruleId === undefined) return false;
    const rule = policy.rules.find((r) => r.id === ruleId);
    return Boolean(rule?.condition.fields.some((f) => unverified.fields.has(f)));
  };
  const { metrics, strikes, clock } = ctx.deps;
  for (const m of ev.would) {
    metrics.policyWould.labels(m.rule.id, m.action).inc();
    tx.would.push({ rule: m.rule.id, action: m.action, phase });
  }
  for (const m of ev.matched) metrics.policyMatches.labels(m.rule.id, m.action).inc();
  for (const s of ev.strikes) {
    if (restsOnUnverified(s.rule)) continue;
    const rule = ev.matched.find((m) => m.rule.id === s.rule)?.rule;
    const strike: StrikeEvent = {
      account: facts.account.name,
      event: s.event,
      weight: s.weight,
      rule: s.rule,
      article: rule?.article,
      reference: tx.reference,
      policyVersion: policy.version,
      evidence: strikeEvidence(ctx, ev.verdict.detail),
      at: clock.now(),
    };
    // At data, the gateway records them once the message is refused, kept or relayed (Transaction.pendingStrikes).
    if (phase === 'data') (tx.pendingStrikes ??= []).push(strike);
    else await strikes.record(strike);
  }
  if (isRefusal(ev.verdict) && restsOnUnverified(ev.verdict.rule?.id)) {
    return { action: 'tempfail', reason: 'sender.unverifiable', detail: { address: unverified!.address }, evidence: { rule: ev.verdict.rule?.id, unverified: [...unverified!.fields] } };
  }
  tx.tags.push(...ev.tags);
  if (ev.verdict.action === 'quarantine') tx.quarantine = true;
  return ev.verdict.action === 'continue' ? { action: 'continue', evidence: ev.would.length ? { would: ev.would.map((w) => w.rule.id) } : undefined } : ev.verdict;
}

/**
 * Whether a data-phase verdict is the message's fate, so that its pending strikes count: any verdict but a
 * tempfail that no rule decided (a failure of Douane's or a check's, after which the message comes back).
 */
export function settlesMessage(verdict: Verdict): boolean {
  return verdict.action !== 'tempfail' || verdict.rule !== undefined;
}

function strikeEvidence(ctx: CheckContext, detail: Record<string, string | number> | undefined): Record<string, unknown> {
  const tx = ctx.tx!;
  const e: Record<string, unknown> = { sender: tx.mailFrom, recipients: tx.recipients.filter((r) => r.accepted).length };
  if (ctx.recipient) e.recipient = ctx.recipient;
  const messageId = tx.message?.headers.get('message-id')?.[0];
  if (messageId) e.message_id = messageId;
  if (tx.scan?.signature) e.signature = tx.scan.signature;
  if (tx.limits) e.limits = tx.limits;
  if (ctx.phase === 'rcpt' && tx.recipientLimits) e.recipient_limits = tx.recipientLimits;
  if (tx.bulk) e.bulk = tx.bulk;
  if (tx.baselineRatio !== undefined) e.baseline_ratio = tx.baselineRatio;
  if (detail) e.detail = detail;
  return e;
}
