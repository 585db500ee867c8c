// An enforcer as the gateway wires it (its outbox runs the lifecycle jobs), over a state and a lifecycle API
// the test gives: for tests that drive enforcement without SMTP (crashes, races between instances).

import { join } from 'node:path';
import { AuditLog } from '../../src/audit/log.js';
import { Enforcer } from '../../src/enforce/enforcer.js';
import { Outbox } from '../../src/enforce/outbox.js';
import type { EnforcementState } from '../../src/enforce/state.js';
import type { LifecycleApi } from '../../src/lifecycle/types.js';
import { createLogger } from '../../src/log.js';
import { Metrics } from '../../src/metrics.js';
import type { Policy } from '../../src/policy/policy.js';

export function enforcement(opts: { dir: string; state: EnforcementState; lifecycle: LifecycleApi; policy: Policy; deadlineMs: number; now?: () => number; knownFile?: string }): { enforcer: Enforcer; outbox: Outbox } {
  const metrics = new Metrics({ version: 't', defaultMetrics: false });
  const log = createLogger({ level: 'silent' });
  let enforcer: Enforcer | undefined;
  const outbox = new Outbox({
    dir: join(opts.dir, 'outbox'),
    handlers: { lifecycle: (j) => enforcer!.lifecycleHandler()(j), notify: async () => undefined, webhook: async () => undefined, strike: (j) => enforcer!.strikeHandler()(j) },
    minDelayMs: 10,
    maxDelayMs: 50,
    metrics,
    log,
    ...(opts.now ? { now: opts.now } : {}),
  });
  enforcer = new Enforcer({
    state: opts.state,
    outbox,
    audit: new AuditLog(join(opts.dir, 'audit.log')),
    policy: () => opts.policy,
    settings: { dry_run: false, approval: false, breaker_max_per_hour: 10, contact: 'abuse@x.test', provider: 'T', notify_holder: false, abuse_team: [], webhook: false },
    metrics,
    log,
    deadlineMs: opts.deadlineMs,
    ...(opts.now ? { now: opts.now } : {}),
    lifecycle: opts.lifecycle,
    ...(opts.knownFile ? { knownFile: opts.knownFile } : {}),
  });
  return { enforcer, outbox };
}
