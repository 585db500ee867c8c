// Turns strike events into action, as the policy's ladder says (art. 4.6): strikes are summed per account
// over a sliding window, and each step — notify, throttle, suspend sending, suspend the account — is taken
// once, by one instance, when the total reaches it. A suspension blocks the account at MAIL FROM on every
// instance at once (shared state), then is carried out in the lifecycle API through the durable outbox.
// Safeguards: the never-suspend allowlist, dry-run, approval mode, and a circuit breaker that stops
// automatic suspension after too many in an hour, until a person resets it. Everything is audited.

import { readFileSync } from 'node:fs';
import type { AuditLog } from '../audit/log.js';
import type { AccountsAdmin } from '../admin.js';
import { removeLeftoversSync, writeFileDurably } from '../data/durable.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import type { Policy } from '../policy/policy.js';
import { comparableAddress } from '../policy/facts.js';
import { logStrike, type StrikeEvent, type StrikeSink } from '../policy/strikes.js';
import type { AccountInfo, LifecycleApi, SuspendOutcome } from '../lifecycle/types.js';
import { LifecycleError } from '../lifecycle/types.js';
import type { Job, Outbox } from './outbox.js';
import { mailJob, type WebhookJob } from './notify.js';
import { claimKey, keepsSuspension, type AccountState, type EnforcementState, type Pending, type StrikeRecord, type Suspension } from './state.js';
import { abuseMail, reinstatedMail, suspensionMail, throttleMail, warningMail, type Notice } from './templates.js';

/** One address, dot-atom local part and an ASCII domain: what a notice to an account holder may go to. */
const PLAIN_ADDRESS = /^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+$/;

export interface EnforcementSettings {
  dry_run: boolean;
  approval: boolean;
  breaker_max_per_hour: number;
  contact: string;
  provider: string;
  notify_holder: boolean;
  abuse_team: string[];
  webhook: boolean;
}

export interface LifecycleJob {
  op: 'suspend' | 'reinstate';
  account: string;
  reference: string;
  rule?: string;
  article?: string;
  summary: string;
  by: string;
}

/** What the MAIL FROM check needs to know about an account. */
export interface AccountLookup {
  state: AccountState;
  lifecycle?: AccountInfo;
  /** a dependency failed: the lookup is partial */
  degraded?: string;
  /** the lifecycle API is configured and did not answer: the account's status and aliases are unknown */
  lifecycleUnknown?: boolean;
  /**
   * The shared state did not answer, and this instance has never read it (nor kept what an earlier run
   * read): whether the account is suspended is not known.
   */
  suspensionsUnknown?: boolean;
}

export interface AccountStatusPort {
  lookup(account: string): Promise<AccountLookup>;
  /** the account an address is already known to belong to (see canonical), without asking: else the address */
  known(address: string): string;
}

type SuspendAction = Suspension['action'];

/** How long a ladder step being taken keeps others from taking it: far longer than a step takes. */
const STEP_IN_PROGRESS_MS = 5 * 60_000;

export class Enforcer implements StrikeSink, AccountStatusPort, AccountsAdmin {
  /** Suspensions seen in the shared state, by account: what MAIL FROM relies on while Redis does not answer. */
  private readonly knownSuspensions = new Map<string, Suspension>();
  /** the known suspensions as last written to deps.knownFile */
  private keptKnown = '{}';
  /** the shared state was read at least once since start, or an earlier run's reading was kept */
  private suspensionsSeen = false;
  /** when the never-suspend list's addresses were last asked of the lifecycle API */
  private listAskedAt = -Infinity;
  /** address → the account it belongs to, as the lifecycle API last said */
  private readonly owners = new Map<string, string>();
  /** addresses whose kept owner this process removed (asked once, not at every lookup) */
  private readonly ownerForgotten = new Set<string>();
  /** the shared state was lost and the suspensions known here are not all written back yet */
  private restoring = false;
  /** the restore under way, if any (see restoreIfLost) */
  private restoreRun: Promise<boolean> | undefined;
  /** the loss being restored was seen only through the mark an earlier run kept */
  private restoringEarlierRun = false;
  /**
   * Accounts reinstated here, and when (kept for REINSTATED_KEPT_MS, in the known file too): written back
   * after a loss, with the suspensions from before them lifted again, whichever instance wrote back first.
   */
  private readonly reinstatedHere = new Map<string, number>();
  /** the refresh under way, if any: one at a time, so that an older one never writes the file last */
  private refreshRun: Promise<void> | undefined;
  /** addresses whose account is being found out in the background (see known) */
  private readonly learning = new Set<string>();

  constructor(
    private readonly deps: {
      state: EnforcementState;
      outbox: Outbox;
      audit: AuditLog;
      policy: () => Policy;
      settings: EnforcementSettings;
      metrics: Metrics;
      log: Logger;
      lifecycle?: LifecycleApi;
      /** every lookup within this time */
      deadlineMs: number;
      /** the enforcement state's lookup (Redis), when shorter: limits.deadline */
      stateDeadlineMs?: number;
      /**
       * Where the suspensions seen in the shared state are kept between runs: an instance started while
       * Redis does not answer still refuses the accounts suspended before.
       */
      knownFile?: string;
      now?: () => number;
    },
  ) {
    if (deps.knownFile) this.loadKnown(deps.knownFile);
  }

  /** The suspensions kept by the last run; a file that cannot be read is said and left aside. */
  private loadKnown(file: string): void {
    removeLeftoversSync(file);
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') this.deps.log.warn({ event: 'known_suspensions_unreadable', file, err: (err as Error).message }, 'the suspensions kept by the last run cannot be read');
      return;
    }
    let kept: KnownFile;
    try {
      kept = JSON.parse(text) as KnownFile;
      if (typeof kept !== 'object' || kept === null || typeof kept.suspensions !== 'object' || kept.suspensions === null) throw new Error('not a record of suspensions');
    } catch (err) {
      this.deps.log.warn({ event: 'known_suspensions_unreadable', file, err: (err as Error).message }, 'the suspensions kept by the last run cannot be read');
      return;
    }
    for (const [account, s] of Object.entries(kept.suspensions)) if (s && typeof s.since === 'number' && typeof s.action === 'string') this.knownSuspensions.set(account, s);
    for (const [account, at] of Object.entries(kept.reinstated ?? {})) if (typeof at === 'number') this.reinstatedHere.set(account, at);
    // The shared state's mark as the last run saw it: one gone or changed since is a loss while this
    // instance was stopped, and what it knew is written back.
    if (typeof kept.mark === 'string') this.deps.state.seedMark?.(kept.mark);
    this.keptKnown = JSON.stringify(this.knownRecord());
    this.suspensionsSeen = true;
  }

  private knownRecord(): KnownFile {
    const mark = this.deps.state.markSeen?.();
    for (const [account, at] of this.reinstatedHere) if (at < this.now() - REINSTATED_KEPT_MS) this.reinstatedHere.delete(account);
    return { ...(mark ? { mark } : {}), suspensions: Object.fromEntries(this.knownSuspensions), ...(this.reinstatedHere.size ? { reinstated: Object.fromEntries(this.reinstatedHere) } : {}) };
  }

  /** Keeps the known suspensions for the next run, when they changed. */
  private async saveKnown(): Promise<void> {
    const file = this.deps.knownFile;
    if (!file) return;
    const text = JSON.stringify(this.knownRecord());
    if (text === this.keptKnown) return;
    await writeFileDurably(file, text + '\n');
    this.keptKnown = text;
  }

  private now(): number {
    return (this.deps.now ?? Date.now)();
  }

  // ------------------------------------------------------------------ strikes and the ladder

  async record(e: StrikeEvent): Promise<void> {
    // A failure here must not turn into a reply: the message's own verdict stands. Not counted now (Redis
    // down or frozen), the strike is kept in the outbox and counted once the state answers, so that abuse
    // sent during an outage still climbs the ladder; its cooldown applies then as it would have.
    let total: number | undefined;
    try {
      total = await this.count(e);
    } catch (err) {
      const why = (err as Error)?.message ?? String(err);
      if (this.deps.outbox.waiting('strike') >= MAX_DEFERRED_STRIKES) {
        this.deps.log.error({ event: 'strike_lost', ref: e.reference, account: e.account, strike: e.event, err: why }, `could not record a strike, and ${MAX_DEFERRED_STRIKES} already wait: this one is not counted`);
        return;
      }
      this.deps.log.warn({ event: 'strike_deferred', ref: e.reference, account: e.account, strike: e.event, err: why }, 'could not record a strike now: kept, and counted once the enforcement state answers');
      await this.deps.outbox.enqueue('strike', e).catch((err2: Error) => this.deps.log.error({ event: 'enforcement_error', ref: e.reference, account: e.account, err: err2.message }, 'could not keep a strike for later'));
      return;
    }
    if (total === undefined) return;
    try {
      await this.climb(e, total);
    } catch (err) {
      // Counted, but a step failed (the state or the disk): the strike goes to the outbox, which takes the
      // steps again; it is not counted again (see strikeHandler). The next strike may be in a cooldown.
      this.deps.log.error({ event: 'enforcement_error', account: e.account, err: (err as Error)?.stack }, 'could not take a ladder step: it is taken again from the outbox');
      await this.deps.outbox.enqueue('strike', e).catch((err2: Error) => this.deps.log.error({ event: 'enforcement_error', ref: e.reference, account: e.account, err: err2.message }, 'could not keep a strike for later'));
    }
  }

  /**
   * The outbox's handler for a strike that could not be counted when it was made: counted now, unless
   * the account was reinstated since (what it did before is forgiven with the rest).
   */
  strikeHandler(): (job: Job) => Promise<void> {
    return async (job) => {
      const e = job.payload as StrikeEvent;
      const reinstated = await this.deps.state.reinstatedAt(e.account);
      if (reinstated !== undefined && reinstated >= e.at) {
        this.deps.log.info({ event: 'strike_dropped', ref: e.reference, account: e.account, strike: e.event, reinstated: new Date(reinstated).toISOString() }, 'a strike kept for later is from before the account was reinstated: not counted');
        return;
      }
      // Counted already (a step failed after the count): not counted, logged or audited again.
      const { window } = this.deps.policy().doc.strikes;
      const recorded = await this.deps.state.strikes(e.account, window);
      const total = recorded.some((r) => r.id === strikeId(e)) ? recorded.reduce((sum, r) => sum + r.weight, 0) : await this.count(e);
      // A step that fails again fails the job: the outbox tries again later.
      if (total !== undefined) await this.climb(e, total);
    };
  }

  /** Exposed for tests and tools: records a strike and takes the ladder steps it reaches. */
  async process(e: StrikeEvent): Promise<void> {
    const total = await this.count(e);
    if (total !== undefined) await this.climb(e, total);
  }

  /** Counts the strike (once per cooldown), logged and audited; the account's total, or undefined within its cooldown. */
  private async count(e: StrikeEvent): Promise<number | undefined> {
    const { window, events } = this.deps.policy().doc.strikes;
    const cooldown = events[e.event]?.cooldown;
    const record: StrikeRecord = { id: strikeId(e), event: e.event, weight: e.weight, at: e.at, rule: e.rule, reference: e.reference };
    // Held by this strike: counted again after a failure past the claim (record), it is still its own.
    if (cooldown && !(await this.deps.state.claim(claimKey('cooldown', e.account, e.event), cooldown, record.id))) {
      this.deps.log.debug({ event: 'strike_cooldown', account: e.account, strike: e.event }, 'strike within its cooldown: not counted');
      return undefined;
    }
    const total = await this.deps.state.addStrike(e.account, record, window);
    // Counted and logged once the state holds it, as the audit trail records it: not the retries a
    // cooldown drops, nor one the state did not take.
    this.deps.metrics.strikes.labels(e.event).inc();
    logStrike(this.deps.log, e);
    await this.deps.audit.append({ action: 'strike', actor: 'douane', account: e.account, reference: e.reference, strike: e.event, weight: e.weight, total, rule: e.rule, article: e.article, policy: e.policyVersion, evidence: e.evidence });
    return total;
  }

  /** Takes the ladder steps the account's total reaches, each once per window. */
  private async climb(e: StrikeEvent, total: number): Promise<void> {
    const policy = this.deps.policy();
    const { window, ladder } = policy.doc.strikes;
    const seen = new Map<string, number>();
    for (const step of ladder) {
      if (total < step.at) break;
      // Named by its action and how many steps of that action come before it, not by its place or its
      // threshold: after a reload that adds or removes another step, or moves this one's threshold, a
      // step already taken stays taken and a new one is not mistaken for it.
      const nth = seen.get(step.action) ?? 0;
      seen.set(step.action, nth + 1);
      // One instance takes each step once per window, however many strikes cross it at the same time.
      // The claim lasts the window only once the step is taken: while it is being taken it lasts a few
      // minutes, so that a step cut short by a crash is taken at the next strike after that, and a step
      // that failed gives its claim back at once.
      const key = claimKey('step', e.account, `${step.action}#${nth}`);
      if (!(await this.deps.state.claim(key, STEP_IN_PROGRESS_MS))) continue;
      try {
        // A reinstatement between the count and the claim wiped the strikes and the steps' claims: the
        // total read before is no longer the account's, and the step would be taken on strikes it erased.
        const still = (await this.deps.state.strikes(e.account, window)).reduce((sum, r) => sum + r.weight, 0);
        if (still < step.at) {
          await this.deps.state.dropClaim(key).catch(() => undefined);
          break;
        }
        const retryAfter = await this.takeStep(e, total, step, policy);
        // Not decided (the never-suspend list could not be checked): taken again by a later strike, not
        // by every one.
        if (retryAfter !== undefined) {
          await this.deps.state.holdClaim(key, Math.min(retryAfter, window));
          continue;
        }
      } catch (err) {
        await this.deps.state.dropClaim(key).catch(() => undefined);
        throw err;
      }
      await this.deps.state.holdClaim(key, window);
    }
  }

  private async notice(account: string, reference: string, total: number, article: string, extra: Partial<Notice> = {}, known?: StrikeRecord[]): Promise<Notice> {
    const strikes = known ?? (await this.deps.state.strikes(account, this.deps.policy().doc.strikes.window));
    const counts = new Map<string, number>();
    for (const s of strikes) counts.set(s.event, (counts.get(s.event) ?? 0) + 1);
    const events = [...counts].map(([ev, n]) => `${ev.replace(/_/g, ' ')} ×${n}`);
    const s = this.deps.settings;
    return { account, reference, events: events.length ? events : ['(none recorded)'], total, article, contact: s.contact, provider: s.provider, ...extra };
  }

  /** Takes a ladder step; returns how soon it may be taken again when it could not be decided now. */
  private async takeStep(e: StrikeEvent, total: number, step: Policy['doc']['strikes']['ladder'][number], policy: Policy): Promise<number | void> {
    const article = e.article ?? '4.6';
    const until = step.for ? this.now() + step.for : undefined;
    if (this.deps.settings.dry_run && (step.action === 'notify' || step.action === 'throttle')) {
      // A dry run touches no customer: no lowered limits, no mail to the holder; the log and audit say what would have been.
      this.deps.metrics.suspensions.labels(step.action, 'dry_run').inc();
      await this.deps.audit.append({ action: `${step.action}_dry_run`, actor: 'douane', account: e.account, reference: e.reference, total, step: step.at });
      this.deps.log.warn({ event: `${step.action}_dry_run`, account: e.account, ref: e.reference, total }, `dry run: would ${step.action} ${e.account}`);
      return;
    }
    if (step.action === 'notify') {
      const n = await this.notice(e.account, e.reference, total, article);
      await this.notifyHolder(e.account, warningMail(n));
      await this.notifyAbuse(abuseMail('warning', n, [`ladder step at ${step.at}: notify`]));
      await this.webhook({ type: 'notify', account: e.account, reference: e.reference, total, step: step.at });
      await this.deps.audit.append({ action: 'notify', actor: 'douane', account: e.account, reference: e.reference, total, step: step.at });
      this.deps.metrics.suspensions.labels('notify', 'done').inc();
      this.deps.log.info({ event: 'notified', account: e.account, ref: e.reference, total, step: step.at }, `${e.account} warned (strike total ${total})`);
      return;
    }
    if (step.action === 'throttle') {
      // An allowlisted account (the provider's postmaster, a critical service) is not restricted by the
      // ladder at all: a fifth of its limits could stop its mail as surely as a suspension.
      // One that may be on it (the lifecycle API cannot say now whose a listed alias is) is not either.
      const allowlisted = await this.neverSuspend(e.account, policy);
      if (allowlisted !== 'no') {
        const why = allowlisted === 'yes' ? 'allowlists.never_suspend' : UNVERIFIED;
        this.deps.metrics.suspensions.labels('throttle', allowlisted === 'yes' ? 'skipped_allowlist' : 'skipped_unverified').inc();
        this.deps.log.info({ event: 'throttle_skipped', account: e.account, ref: e.reference, total, why }, `${e.account} not throttled: ${why}`);
        // Tried again every ten minutes while the list cannot be checked: told once a window, not each time.
        const toldKey = claimKey('told', e.account, `throttle-unverified#${step.at}`);
        const told = allowlisted === 'yes' || (await this.deps.state.claim(toldKey, policy.doc.strikes.window));
        if (told) {
          try {
            const n = await this.notice(e.account, e.reference, total, article, { factor: step.factor, until });
            await this.deps.audit.append({ action: 'throttle_skipped', actor: 'douane', account: e.account, reference: e.reference, total, why });
            await this.notifyAbuse(abuseMail(`throttle skipped (${allowlisted === 'yes' ? 'never-suspend allowlist' : 'never-suspend allowlist not verifiable'})`, n, [`would have: throttle to ${step.factor} of the limits`]));
          } catch (err) {
            // Not told after all: the strike's retry tells.
            if (allowlisted !== 'yes') await this.deps.state.dropClaim(toldKey).catch(() => undefined);
            throw err;
          }
        }
        // Once the list can be checked again, a later strike throttles the account if it is not on it.
        return allowlisted === 'yes' ? undefined : UNVERIFIED_RETRY_MS;
      }
      await this.deps.state.setThrottle(e.account, { factor: step.factor!, until: until!, reference: e.reference });
      const n = await this.notice(e.account, e.reference, total, article, { factor: step.factor, until });
      await this.notifyHolder(e.account, throttleMail(n));
      await this.webhook({ type: 'throttle', account: e.account, reference: e.reference, total, factor: step.factor, until });
      await this.deps.audit.append({ action: 'throttle', actor: 'douane', account: e.account, reference: e.reference, total, factor: step.factor, until: until && new Date(until).toISOString() });
      this.deps.metrics.suspensions.labels('throttle', 'done').inc();
      this.deps.log.warn({ event: 'throttled', account: e.account, ref: e.reference, total, factor: step.factor, until: until && new Date(until).toISOString() }, `${e.account} throttled to ${step.factor} of its limits`);
      return;
    }
    await this.automaticSuspension(e.account, step.action, { reference: e.reference, total, until, rule: e.rule, article, reason: `strike total ${total} reached ${step.at}` }, policy);
  }

  /**
   * On the never-suspend allowlist by its own name, or by an address listed there that is one of its
   * aliases: strikes are counted under the account's name, and the address people know and list is often
   * an alias (Zimbra makes postmaster@ an alias of admin@). Each listed address is resolved as a login is.
   */
  private async neverSuspend(account: string, policy: Policy): Promise<'yes' | 'no' | 'unknown'> {
    if (policy.account(account).allowlisted.neverSuspend) return 'yes';
    if (!this.deps.lifecycle) return 'no';
    const name = comparableAddress(account);
    const owners = await Promise.all(
      this.listedAddresses(policy, name).map(async (entry) => {
        const address = comparableAddress(entry);
        // Kept by the list's refresh, whether an alias or an account of its own (which nothing else keeps).
        return (await this.ownerOf(address)).owner ?? (await deadline(this.deps.state.listedOwner(address), 'enforcement state', this.deps.stateDeadlineMs ?? this.deps.deadlineMs).catch(() => undefined));
      }),
    );
    if (owners.some((owner) => owner !== undefined && comparableAddress(owner) === name)) return 'yes';
    // A listed address whose account nobody can say now (the API down, nothing kept) may be this one's.
    return owners.includes(undefined) ? 'unknown' : 'no';
  }

  /** The never-suspend entries that are addresses (not whole domains) other than `except`. */
  private listedAddresses(policy: Policy, except?: string): string[] {
    return policy.doc.allowlists.never_suspend.filter((entry) => !entry.startsWith('*@') && !entry.startsWith('@') && comparableAddress(entry) !== except);
  }

  private async automaticSuspension(account: string, action: SuspendAction, why: { reference: string; total: number; until?: number; rule?: string; article: string; reason: string }, policy: Policy): Promise<void> {
    const s = this.deps.settings;
    const base = { actor: 'douane', account, reference: why.reference, total: why.total, suspend: action };
    const n = await this.notice(account, why.reference, why.total, why.article, { until: why.until });
    const allowlisted = await this.neverSuspend(account, policy);
    if (allowlisted === 'yes') {
      this.deps.metrics.suspensions.labels(action, 'skipped_allowlist').inc();
      this.deps.log.info({ event: 'suspension_skipped', account, action, ref: why.reference, total: why.total, why: 'allowlists.never_suspend' }, `${account} not suspended: on the never-suspend allowlist`);
      await this.deps.audit.append({ ...base, action: 'suspension_skipped', why: 'allowlists.never_suspend' });
      await this.notifyAbuse(abuseMail('suspension skipped (never-suspend allowlist)', n, [`would have: ${action}`]));
      return;
    }
    if (s.dry_run) {
      this.deps.metrics.suspensions.labels(action, 'dry_run').inc();
      await this.deps.audit.append({ ...base, action: 'suspension_dry_run' });
      this.deps.log.warn({ event: 'suspension_dry_run', account, action, ref: why.reference }, `dry run: would ${action} ${account}`);
      return;
    }
    // Held by the circuit breaker, a suspension waits for a person like one in approval mode: the ladder
    // step is taken, so nothing else would bring it back once the breaker is reset.
    const pending: Pending = { action, at: this.now(), total: why.total, reference: why.reference, reason: why.reason, until: why.until };
    // Perhaps on the never-suspend list (an alias there whose account the lifecycle API cannot name now):
    // a person decides, as in approval mode.
    if (allowlisted === 'unknown') {
      await this.deps.state.setPending(account, pending);
      this.deps.metrics.suspensions.labels(action, 'pending_approval').inc();
      this.deps.log.warn({ event: 'suspension_pending', account, action, ref: why.reference, total: why.total, why: UNVERIFIED }, `${account}: ${action} waits for approval: ${UNVERIFIED}`);
      await this.deps.audit.append({ ...base, action: 'suspension_pending', why: UNVERIFIED });
      await this.notifyAbuse(abuseMail('suspension waiting for approval (never-suspend allowlist not verifiable)', n, [`action: ${action}`, `why: ${UNVERIFIED}`, `approve with: douane accounts approve ${account}`]));
      return;
    }
    const breaker = await this.deps.state.breaker();
    if (breaker.open) {
      await this.deps.state.setPending(account, pending);
      this.deps.metrics.suspensions.labels(action, 'blocked_breaker').inc();
      this.deps.log.warn({ event: 'suspension_blocked', account, action, ref: why.reference, total: why.total, why: 'circuit breaker open' }, `${account} not suspended (${action}): the circuit breaker is open; it waits for approval`);
      await this.deps.audit.append({ ...base, action: 'suspension_blocked', why: 'circuit breaker open' });
      await this.notifyAbuse(abuseMail('suspension held by the circuit breaker', n, ['Automatic suspension is stopped. Check the policy, then: douane accounts breaker reset', `would have: ${action}`, `then, if it is right: douane accounts approve ${account}`]));
      return;
    }
    // Waiting for a person, it is not an automatic suspension: the breaker does not count it.
    if (s.approval) {
      await this.deps.state.setPending(account, pending);
      this.deps.metrics.suspensions.labels(action, 'pending_approval').inc();
      this.deps.log.warn({ event: 'suspension_pending', account, action, ref: why.reference, total: why.total }, `${account}: ${action} waits for approval (douane accounts approve ${account})`);
      await this.deps.audit.append({ ...base, action: 'suspension_pending' });
      await this.notifyAbuse(abuseMail('suspension waiting for approval', n, [`action: ${action}`, `approve with: douane accounts approve ${account}`]));
      return;
    }
    const lastHour = await this.deps.state.countSuspension(this.now());
    if (lastHour > s.breaker_max_per_hour) {
      await this.deps.state.setBreaker({ open: true, since: this.now(), reason: `${lastHour} automatic suspensions in an hour (limit ${s.breaker_max_per_hour})` });
      await this.deps.state.setPending(account, pending);
      this.deps.metrics.breakerOpen.set(1);
      this.deps.metrics.suspensions.labels(action, 'blocked_breaker').inc();
      this.deps.log.error({ event: 'circuit_breaker_open', suspensions_last_hour: lastHour, limit: s.breaker_max_per_hour }, 'circuit breaker open: automatic suspension stopped until a person resets it');
      await this.deps.audit.append({ ...base, action: 'circuit_breaker_open', suspensions_last_hour: lastHour });
      await this.notifyAbuse(abuseMail('CIRCUIT BREAKER OPEN', n, [`${lastHour} automatic suspensions in the last hour (limit ${s.breaker_max_per_hour}).`, 'Automatic suspension is stopped: a policy error could be locking out customers.', 'Check, then: douane accounts breaker reset']));
      await this.webhook({ type: 'circuit_breaker_open', suspensions_last_hour: lastHour });
      return;
    }
    await this.suspend(account, action, { by: 'douane', reference: why.reference, reason: why.reason, until: why.until, rule: why.rule, article: why.article, total: why.total });
  }

  // ------------------------------------------------------------------ actions (ladder and people)

  /** Blocks the account on every instance now, then (suspend_account) locks it in the lifecycle API. */
  async suspend(account: string, action: SuspendAction, why: { by: string; reference: string; reason: string; until?: number; rule?: string; article?: string; total?: number }): Promise<Suspension> {
    // Nothing would unlock the account in the lifecycle API when the time ran out.
    if (action === 'suspend_account' && why.until !== undefined) throw new Error('a lock in the lifecycle API lasts until reinstated: a timed suspension is suspend_sending');
    // A lock stays a lock: a weaker suspension (a later ladder step, a strike landing late from another
    // instance, a person) would otherwise hide it, and reinstating would then leave the account locked.
    // Sending suspended for longer is not shortened either.
    const current = (await this.deps.state.account(account)).suspension;
    const suspension: Suspension = { since: this.now(), until: why.until, action, reason: why.reason, reference: why.reference, by: why.by, ...(why.rule ? { rule: why.rule } : {}), ...(why.article ? { article: why.article } : {}) };
    if (current && keepsSuspension(current, suspension)) return this.kept(account, current, suspension);
    // Locked again: who locked it first is still who did (Zimbra will answer that it is locked already).
    if (current?.action === 'suspend_account' && current.lockedBy) suspension.lockedBy = current.lockedBy;
    // The evidence the contract asks for: every strike behind the suspension, each with its incident
    // reference (the message's own log line and, for malware, its quarantine entry). Read before the
    // change, so that a state that fails afterwards cannot leave a suspension in force without it.
    const strikes = await this.deps.state.strikes(account, this.deps.policy().doc.strikes.window);
    // The lock in the lifecycle API is on disk before the local one is made (see Outbox.enqueue): a crash
    // in between must not leave the account blocked here and open in Zimbra.
    const lock: LifecycleJob = { op: 'suspend', account, reference: why.reference, rule: why.rule, article: why.article, summary: why.reason, by: why.by };
    let inForce: Suspension | undefined = suspension;
    await this.changeThen(action === 'suspend_account' ? lock : undefined, async () => {
      // Checked again in the same step as the write: a lock made meanwhile (another instance, another
      // session's strike) stays.
      inForce = await this.deps.state.setSuspension(account, suspension);
      if (inForce === suspension || inForce?.reference === suspension.reference) await this.deps.state.setPending(account, undefined);
    });
    if (inForce && (inForce.action !== action || inForce.since !== suspension.since || inForce.reference !== suspension.reference)) return this.kept(account, inForce, suspension);
    this.deps.metrics.suspensions.labels(action, 'done').inc();
    const evidence = strikes.map((x) => ({ reference: x.reference, event: x.event, weight: x.weight, rule: x.rule, at: new Date(x.at).toISOString() }));
    await this.deps.audit.append({ action: action, actor: why.by, account, reference: why.reference, reason: why.reason, until: why.until && new Date(why.until).toISOString(), rule: why.rule, article: why.article, total: why.total, strikes: evidence });
    this.deps.log.warn({ event: 'suspended', account, action, ref: why.reference, by: why.by, reason: why.reason, rule: why.rule, until: why.until && new Date(why.until).toISOString() }, `${account} suspended (${action})`);
    // In force and audited: what is left tells people about it. Its failure is logged, and the
    // suspension is not reported as failed (a person would try it again; the ladder would give the step back).
    try {
      const n = await this.notice(account, why.reference, why.total ?? 0, why.article ?? '4.6', { until: why.until }, strikes);
      await this.notifyHolder(account, suspensionMail(n, action === 'suspend_account'));
      await this.notifyAbuse(abuseMail(`${action} carried out`, n, [`by: ${why.by}`, `reason: ${why.reason}`]));
      await this.webhook({ type: action, account, reference: why.reference, by: why.by, reason: why.reason, until: why.until });
    } catch (err) {
      this.deps.log.error({ event: 'notice_failed', account, action, ref: why.reference, err: (err as Error).message }, `${account} is suspended (${action}), but its notices could not be queued`);
    }
    await this.refreshGauge();
    return suspension;
  }

  private async kept(account: string, kept: Suspension, asked: Suspension): Promise<Suspension> {
    const until = (s: Suspension) => (s.until === undefined ? 'until reinstated' : `until ${new Date(s.until).toISOString()}`);
    await this.deps.audit.append({ action: 'suspension_kept', actor: asked.by, account, reference: asked.reference, kept: kept.action, kept_until: kept.until && new Date(kept.until).toISOString(), asked: asked.action, reason: asked.reason });
    this.deps.log.info({ event: 'suspension_kept', account, kept: kept.action, asked: asked.action, by: asked.by }, `${account} stays as it is (${kept.action} ${until(kept)}; ${asked.action} ${until(asked)} asked)`);
    return kept;
  }

  async reinstate(account: string, by: string): Promise<void> {
    const before = await this.deps.state.account(account);
    const reference = before.suspension?.reference ?? 'manual';
    // Only a lock Douane set is undone: an account locked by someone else, or only blocked here, stays as it is.
    const unlock: LifecycleJob = { op: 'reinstate', account, reference, summary: 'reinstated', by };
    // A lock call of Douane's may be under way (on another instance) or done before the suspension said so:
    // the mark it sets before each call counts too.
    const douaneLocked = (before.suspension?.action === 'suspend_account' && before.suspension.lockedBy !== 'someone_else') || (await this.deps.state.lockHeld(account));
    await this.changeThen(douaneLocked ? unlock : undefined, () => this.deps.state.resetAccount(account));
    this.reinstatedHere.set(account.toLowerCase(), this.now());
    await this.deps.audit.append({ action: 'reinstate', actor: by, account, reference, was: before.suspension ?? null, strikes_reset: true, unlock: douaneLocked && Boolean(this.deps.lifecycle) });
    this.deps.metrics.suspensions.labels('reinstate', 'done').inc();
    const n = await this.notice(account, reference, 0, '4.6');
    if (before.suspension) await this.notifyHolder(account, reinstatedMail(n));
    await this.webhook({ type: 'reinstate', account, reference, by });
    await this.refreshGauge();
  }

  /**
   * Makes a change to the local state that the lifecycle API must follow: the lifecycle job is written
   * first and held until the change is made, then released (replacing older jobs of the account); if the
   * change fails, it is dropped and older jobs stand. After a crash in between, the jobs on disk run at
   * the restart, oldest first, and each carries out what the state then says (or nothing: superseded).
   */
  private async changeThen(job: LifecycleJob | undefined, change: () => Promise<void>): Promise<void> {
    const queued = job && this.deps.lifecycle ? await this.deps.outbox.enqueue('lifecycle', job, lifecycleKey(job.account), { held: true }) : undefined;
    try {
      await change();
    } catch (err) {
      if (queued) await this.deps.outbox.discard(queued);
      throw err;
    }
    if (queued) await this.deps.outbox.release(queued);
  }

  /**
   * Whether Douane keeps a suspension, throttle, pending approval or lock under this very address. While
   * the lifecycle API does not answer, an alias cannot be resolved to its account, and what is done then
   * (by the ladder or by hand) is kept under the alias.
   */
  async keptUnder(address: string): Promise<boolean> {
    const state = await this.deps.state.account(address);
    return Boolean(state.suspension || state.throttle || state.pending) || (await this.deps.state.lockHeld(address));
  }

  async approve(account: string, by: string): Promise<Suspension> {
    const { pending } = await this.deps.state.account(account);
    if (!pending) throw new Error(`no suspension of ${account} is waiting for approval`);
    await this.deps.audit.append({ action: 'approve', actor: by, account, reference: pending.reference, suspend: pending.action });
    // A suspension "for a day" lasts a day from when it takes effect, however long it waited for a person.
    const until = pending.until === undefined ? undefined : this.now() + (pending.until - pending.at);
    const inForce = await this.suspend(account, pending.action, { by, reference: pending.reference, reason: `${pending.reason} (approved by ${by})`, until, total: pending.total });
    // A stronger or longer suspension in force was kept: the approval is done all the same, and the
    // account no longer waits for one.
    if ((await this.deps.state.account(account)).pending?.reference === pending.reference) {
      await this.deps.state.setPending(account, undefined);
      await this.deps.audit.append({ action: 'pending_superseded', actor: by, account, reference: pending.reference, kept: inForce.action });
    }
    return inForce;
  }

  async resetBreaker(by: string): Promise<void> {
    const was = await this.deps.state.breaker();
    await this.deps.state.setBreaker({ open: false });
    this.deps.metrics.breakerOpen.set(0);
    await this.deps.audit.append({ action: 'circuit_breaker_reset', actor: by, was });
  }

  async breaker() {
    const b = await this.deps.state.breaker();
    this.deps.metrics.breakerOpen.set(b.open ? 1 : 0);
    return b;
  }

  async strikes(account: string): Promise<{ total: number; window: number; strikes: StrikeRecord[] }> {
    const window = this.deps.policy().doc.strikes.window;
    const strikes = await this.deps.state.strikes(account, window);
    return { total: strikes.reduce((a, s) => a + s.weight, 0), window, strikes };
  }

  /** Everything about one account: local state, strikes, the lifecycle API's view, the breaker. */
  async status(account: string) {
    const [found, strikes, breaker] = await Promise.all([this.lookup(account), this.strikes(account), this.deps.state.breaker()]);
    return {
      account: account.toLowerCase(),
      suspension: found.state.suspension ?? null,
      throttle: found.state.throttle ?? null,
      pending_approval: found.state.pending ?? null,
      strikes: { total: strikes.total, window_ms: strikes.window, count: strikes.strikes.length },
      lifecycle: found.lifecycle ?? null,
      lifecycle_error: found.degraded ?? null,
      breaker,
    };
  }

  async overview() {
    const [suspended, pending, breaker] = await Promise.all([this.deps.state.suspendedAccounts(), this.deps.state.pendingAccounts(), this.deps.state.breaker()]);
    return { suspended, pending_approval: pending, breaker, outbox: this.deps.outbox.jobs().map((j) => ({ id: j.id, kind: j.kind, attempts: j.attempts, last_error: j.lastError })) };
  }

  async history(account: string) {
    const a = account.toLowerCase();
    return this.deps.audit.read((e) => e.account === a);
  }

  // ------------------------------------------------------------------ MAIL FROM lookups

  /**
   * The account a login (or a trusted sender's address) belongs to, as the lifecycle API names it: Zimbra
   * takes an alias, or a bare name in its default domain, as a login for the account. Each spelling must not get limits, strikes and a
   * suspension of its own. Without an API, or when it does not answer in time, the login as typed. A login
   * that is the account's own name costs nothing more: MAIL FROM reads the same status from the cache.
   */
  async canonical(login: string): Promise<string> {
    const { owner, err } = await this.ownerOf(login);
    if (owner === undefined) {
      this.deps.log.warn({ event: 'account_resolve_failed', login, err }, 'the lifecycle API did not say whose address this is: counted under it as typed');
      return login;
    }
    return owner;
  }

  /** Whose address this is; none when neither the API nor anything kept can say (and why). */
  private async ownerOf(login: string): Promise<{ owner?: string; err?: string }> {
    if (!this.deps.lifecycle) return { owner: login };
    // Whose an address is hardly ever changes: once known, it is not waited for again, and a slow or
    // failing API cannot give an alias back its own counters. It is asked again in the background.
    const known = this.owners.get(login);
    if (known !== undefined) {
      void this.resolve(login).catch(() => undefined);
      return { owner: known };
    }
    try {
      return { owner: await this.resolve(login) };
    } catch (err) {
      // Known before, by this instance before a restart or by another one: still that account's.
      const stored = await deadline(this.deps.state.owner(login), 'enforcement state', this.deps.stateDeadlineMs ?? this.deps.deadlineMs).catch(() => undefined);
      if (stored) {
        this.remember(login, stored);
        this.deps.log.info({ event: 'account_resolved_from_state', login, account: stored, err: (err as Error).message }, `the lifecycle API did not answer; ${login} was last known to be ${stored}`);
        return { owner: stored };
      }
      return { err: (err as Error).message };
    }
  }

  known(address: string): string {
    return this.owners.get(address) ?? address;
  }

  /**
   * A login failed under an address not known here (after a restart, on another instance, an alias its
   * holder never logs in with): whose it is is found out in the background (the API, or the owner kept
   * in the shared state), so that the next attempt counts against the account, not the spelling. One
   * lookup at a time per address, and a bounded number at once.
   */
  learn(address: string): void {
    if (!this.deps.lifecycle || this.owners.has(address) || this.learning.has(address) || this.learning.size >= MAX_LEARNING) return;
    this.learning.add(address);
    void this.canonical(address)
      .catch(() => undefined)
      .finally(() => this.learning.delete(address));
  }

  /**
   * Whose an address on the never-suspend list is, asked of the lifecycle API and kept in the shared
   * state apart from what logins teach, an account's own name too: an instance started while the API is
   * down then still knows the list.
   */
  private rememberListed(address: string): void {
    if (!this.deps.lifecycle || this.learning.has(address)) return;
    this.learning.add(address);
    void this.resolve(address)
      .then((owner) => this.deps.state.setListedOwner(address, owner))
      .catch(() => undefined)
      .finally(() => this.learning.delete(address));
  }

  /** Asks the lifecycle API whose address this is, and remembers the answer. */
  private async resolve(login: string): Promise<string> {
    const info = await deadline(this.deps.lifecycle!.status(login), 'lifecycle API', this.deps.deadlineMs);
    const before = this.owners.get(login);
    const name = info.status === 'unknown' ? login : info.name ? comparableAddress(info.name) : login;
    // No longer (or not known here to be) someone else's: an owner kept for it goes, so that an outage
    // does not bring back an alias it ceased to be.
    if (name === login && before !== login && !this.ownerForgotten.has(login)) {
      this.ownerForgotten.add(login);
      if (this.ownerForgotten.size > MAX_OWNERS) this.ownerForgotten.delete(this.ownerForgotten.values().next().value!);
      void this.deps.state.forgetOwner(login).catch(() => undefined);
    }
    if (name !== login) this.ownerForgotten.delete(login);
    if (info.status === 'unknown') {
      this.owners.delete(login);
      return login; // not (or no longer) an account's: asked again next time
    }
    this.remember(login, name);
    if (name !== login) {
      this.deps.log.debug({ event: 'account_resolved', login, account: name }, `${login} is account ${name}`);
      // For when the API does not answer: a restart, and the other instances, know it too.
      void this.deps.state.setOwner(login, name).catch((e: Error) => this.deps.log.warn({ event: 'owner_not_kept', login, err: e.message }, 'could not keep whose address this is'));
    }
    return name;
  }

  /** Bounded: the oldest answers are forgotten first. */
  private remember(login: string, name: string): void {
    this.owners.delete(login);
    this.owners.set(login, name);
    if (this.owners.size > MAX_OWNERS) this.owners.delete(this.owners.keys().next().value!);
  }

  async lookup(account: string): Promise<AccountLookup> {
    const [state, lifecycle] = await Promise.allSettled([
      deadline(this.deps.state.account(account), 'enforcement state', this.deps.stateDeadlineMs ?? this.deps.deadlineMs),
      this.deps.lifecycle ? deadline(this.deps.lifecycle.status(account), 'lifecycle API', this.deps.deadlineMs) : Promise.resolve(undefined),
    ]);
    const key = account.toLowerCase();
    let known: AccountState;
    if (state.status === 'fulfilled') {
      this.suspensionsSeen = true;
      known = state.value;
      if (known.suspension) this.knownSuspensions.set(key, known.suspension);
      else if (this.knownSuspensions.has(key)) {
        // Reinstated (the usual answer), or the shared state was lost: asked only then, one read. Lost
        // and written back by another instance, its suspensions are in the state read next time.
        // Within the state's deadline; unanswered, the suspension seen before holds, as in an outage.
        const lost = await deadline(this.restoreIfLost(), 'enforcement state', this.deps.stateDeadlineMs ?? this.deps.deadlineMs).catch(() => true);
        const suspension = lost ? this.knownSuspensions.get(key) : undefined;
        if (suspension && (!suspension.until || suspension.until > this.now())) known = { ...known, suspension };
        else this.knownSuspensions.delete(key);
      }
    } else {
      // The shared state does not answer (Redis down or frozen): a suspension seen before still holds.
      const cached = this.knownSuspensions.get(key);
      known = cached && (!cached.until || cached.until > this.now()) ? { suspension: cached } : {};
    }
    const out: AccountLookup = { state: known };
    if (state.status === 'rejected' && !this.suspensionsSeen) out.suspensionsUnknown = true;
    if (lifecycle.status === 'fulfilled') out.lifecycle = lifecycle.value;
    else out.lifecycleUnknown = true;
    const failures = [state, lifecycle].filter((r): r is PromiseRejectedResult => r.status === 'rejected').map((r) => (r.reason as Error).message);
    if (failures.length) {
      out.degraded = failures.join('; ');
      this.deps.log.warn({ event: 'account_lookup_degraded', account, err: out.degraded, ...(out.suspensionsUnknown ? { suspensions_unknown: true } : {}) }, out.suspensionsUnknown ? 'account status partly unknown, and whether it is suspended too: the shared state was never read since start' : 'account status partly unknown');
    }
    return out;
  }

  // ------------------------------------------------------------------ outbox handlers and notifications

  lifecycleHandler(): (job: Job) => Promise<void> {
    return async (job) => {
      const j = job.payload as LifecycleJob;
      const api = this.deps.lifecycle;
      if (!api) return;
      // A job may wait in the outbox for hours: carry out what is wanted now, not what was wanted then
      // (a lock queued while the API was down must not land after the account was reinstated). What is
      // wanted now is read from a state written back first if it was lost meanwhile: a Redis that came
      // back empty would otherwise have the lock dropped as no longer wanted.
      await this.restoreIfLost();
      const wantedNow = async () => ((await this.deps.state.account(j.account)).suspension?.action === 'suspend_account' ? 'suspend' : 'reinstate');
      let wanted = await wantedNow();
      // Lost between that look and the read (the read then finds nothing): looked at again, once restored.
      if (j.op !== wanted && (await this.restoreIfLost())) wanted = await wantedNow();
      if (j.op !== wanted) {
        await this.deps.audit.append({ action: 'lifecycle_superseded', actor: 'douane', account: j.account, reference: j.reference, op: j.op, now_wanted: wanted });
        return;
      }
      const started = performance.now();
      let outcome: SuspendOutcome | void = undefined;
      // Whether a lock of Douane's may already be there, from an earlier call whose answer was lost (a
      // timeout, a crash) or an unlock not carried out yet: then a lock found in place is not someone else's.
      let heldBefore = false;
      try {
        if (j.op === 'suspend') {
          heldBefore = await this.deps.state.lockHeld(j.account);
          await this.deps.state.setLockHeld(j.account, true);
          outcome = await api.suspend(j.account, { reference: j.reference, rule: j.rule, article: j.article, summary: j.summary });
        } else {
          await api.reinstate(j.account, { reference: j.reference, by: j.by });
          await this.deps.state.setLockHeld(j.account, false);
          // Locked again while the unlock was under way (on another instance, whose lock call found the
          // account still locked, and took that lock for its own): the unlock just undid it. A job of its
          // own locks it again.
          const again = (await this.deps.state.account(j.account)).suspension;
          if (again?.action === 'suspend_account') {
            await this.deps.outbox.enqueue('lifecycle', { op: 'suspend', account: j.account, reference: again.reference, rule: again.rule, article: again.article, summary: 'suspended again while it was being unlocked', by: 'douane' } satisfies LifecycleJob, lifecycleKey(j.account));
            await this.deps.audit.append({ action: 'lifecycle_relock_queued', actor: 'douane', account: j.account, reference: again.reference, adapter: api.kind });
          }
        }
      } catch (err) {
        if (err instanceof LifecycleError && !err.retryable) {
          // A lock or an unlock that was decided is carried out once the API takes it: credentials refused
          // while an admin password is changed, or an answer that is not the API's (a proxy's error page),
          // are tried again, and the outbox's oldest job (alert DouaneOutboxJobTooOld) shows that it
          // waits. Only the API's own no fails for good: no such account, or a status Douane does not change.
          const retrying = err.kind === 'auth' || err.kind === 'protocol';
          if (!retrying || job.attempts === 1) await this.deps.audit.append({ action: `lifecycle_${j.op}_failed`, actor: 'douane', account: j.account, reference: j.reference, error: err.message, ...(retrying ? { retrying: true } : {}) });
          if (retrying) throw new LifecycleError(err.kind, err.message, true);
        }
        throw err;
      } finally {
        this.deps.log.debug({ event: 'lifecycle_call', op: j.op, account: j.account, ms: Math.round(performance.now() - started) }, 'lifecycle call');
      }
      if (j.op === 'suspend') {
        // Found locked when no lock of Douane's could be there: someone else's lock, which reinstating the
        // account here leaves. (A first call that failed before reaching the API, followed by a person's
        // lock, is taken for Douane's: the one case read the wrong way, and it errs on unlocking.)
        let { suspension } = await this.deps.state.account(j.account);
        // Found gone because the state was lost during the call, not because of a reinstatement: looked
        // at again once restored, or the lock just made would be undone.
        if (suspension?.action !== 'suspend_account' && (await this.restoreIfLost())) ({ suspension } = await this.deps.state.account(j.account));
        const theirs = outcome === 'already_locked' && !heldBefore && suspension?.lockedBy !== 'douane';
        if (!theirs && suspension?.action !== 'suspend_account') {
          // Reinstated while the call was under way (here or on another instance, whose unlock may have
          // found nothing to undo yet): the lock just made is undone now. It is marked as Douane's again
          // (that unlock cleared the mark), and if the API fails now, a job of its own undoes it: a retry
          // of this one would find the reinstatement and do nothing, leaving the account locked.
          await this.deps.state.setLockHeld(j.account, true);
          try {
            await api.reinstate(j.account, { reference: j.reference, by: 'douane' });
          } catch (err) {
            await this.deps.outbox.enqueue('lifecycle', { op: 'reinstate', account: j.account, reference: j.reference, summary: 'reinstated while it was being locked', by: 'douane' } satisfies LifecycleJob, lifecycleKey(j.account));
            await this.deps.audit.append({ action: 'lifecycle_lock_undo_queued', actor: 'douane', account: j.account, reference: j.reference, adapter: api.kind, error: (err as Error).message });
            return;
          }
          await this.deps.state.setLockHeld(j.account, false);
          await this.deps.audit.append({ action: 'lifecycle_lock_undone', actor: 'douane', account: j.account, reference: j.reference, adapter: api.kind, reason: 'reinstated while the lock was being made' });
          return;
        }
        if (theirs) await this.deps.state.setLockHeld(j.account, false);
        // Only the same suspension is marked: a reinstatement that came meanwhile is not undone.
        if (suspension?.action === 'suspend_account' && !suspension.lockedBy) await this.deps.state.setSuspension(j.account, { ...suspension, lockedBy: theirs ? 'someone_else' : 'douane' }, { update: true });
        if (theirs) {
          await this.deps.audit.append({ action: 'lifecycle_already_locked', actor: 'douane', account: j.account, reference: j.reference, adapter: api.kind, attempts: job.attempts });
          return;
        }
      }
      await this.deps.audit.append({ action: j.op === 'suspend' ? 'lifecycle_locked' : 'lifecycle_active', actor: 'douane', account: j.account, reference: j.reference, adapter: api.kind, attempts: job.attempts });
    };
  }

  private async notifyHolder(account: string, mail: { subject: string; text: string }): Promise<void> {
    if (!this.deps.settings.notify_holder) return;
    // The account name may come from a client (a login that failed): mail goes to one plain address or
    // to nobody, never to a list or to anything a mail library would read as several recipients.
    if (!PLAIN_ADDRESS.test(account)) {
      this.deps.log.warn({ event: 'notify_skipped', account }, 'the account name is not a plain address: no notice to the holder');
      return;
    }
    await this.deps.outbox.enqueue('notify', mailJob('holder', [account], mail));
  }

  private async notifyAbuse(mail: { subject: string; text: string }): Promise<void> {
    if (this.deps.settings.abuse_team.length === 0) return;
    await this.deps.outbox.enqueue('notify', mailJob('abuse', this.deps.settings.abuse_team, mail));
  }

  private async webhook(event: Record<string, unknown>): Promise<void> {
    if (!this.deps.settings.webhook) return;
    await this.deps.outbox.enqueue('webhook', { event: { source: 'douane', at: new Date(this.now()).toISOString(), ...event } } satisfies WebhookJob);
  }

  /**
   * When the shared state was lost (Redis restarted empty, a replica promoted without it), every
   * suspension it held would be lifted without a word: those known here are written back. Strikes,
   * throttles and counts are not known here, and start again. Returns whether it was lost.
   */
  private restoreIfLost(): Promise<boolean> {
    // One at a time, shared by whoever asks meanwhile (a lifecycle job, the refresh, a MAIL FROM): a
    // second look would find no loss (the mark is set anew) and read the emptied state as the truth.
    this.restoreRun ??= this.restoreOnce().finally(() => (this.restoreRun = undefined));
    return this.restoreRun;
  }

  private async restoreOnce(): Promise<boolean> {
    const lost = await this.deps.state.lost();
    // A restore cut short (Redis gone again) is finished at the next call: the mark is already set anew.
    if (!lost && !this.restoring) return false;
    this.restoring = true;
    // Kept until the restore is done: a restore resumed after a failure asks the same question.
    if (lost) this.restoringEarlierRun = this.deps.state.lossFromEarlierRun?.() ?? false;
    const now = this.now();
    const known = [...this.knownSuspensions].filter(([, s]) => !s.until || s.until > now);
    // Lost while this instance was stopped, and another, running through the loss, has written back what
    // it knew: fresher than what this one kept from before it stopped (an account reinstated meanwhile
    // would come back suspended). What that one wrote is the truth: nothing is lost here any more.
    if (this.restoringEarlierRun && (await this.deps.state.restoredAlready?.())) {
      this.deps.log.warn({ event: 'enforcement_state_restored_by_another', known: known.length }, 'the shared enforcement state was lost while this instance was stopped, and another instance has written back what it knew: the suspensions known here before the stop are not brought back');
      await this.writeBackReinstatements();
      this.knownSuspensions.clear();
      this.restoring = false;
      this.restoringEarlierRun = false;
      return false;
    }
    if (lost) {
      this.deps.metrics.enforcementStateLost.inc();
      this.deps.log.error(
        { event: 'enforcement_state_lost', known: known.length, accounts: known.slice(0, 50).map(([a]) => a) },
        `the shared enforcement state was lost (Redis restarted without its data?): the ${known.length} suspension(s) known here are written back, but those lifted since; strikes and throttles start again`,
      );
    }
    await this.writeBackReinstatements();
    for (const [account, s] of known) {
      // Lifted since (on another instance, after the loss): not brought back.
      const reinstated = await this.deps.state.reinstatedAt(account);
      if (reinstated !== undefined && reinstated >= s.since) {
        this.knownSuspensions.delete(account);
        continue;
      }
      await this.deps.state.setSuspension(account, s);
    }
    await this.deps.state.markRestored?.();
    this.restoring = false;
    this.restoringEarlierRun = false;
    return true;
  }



  /**
   * After a loss: the reinstatements made here go back into the shared state, and a suspension from
   * before one of them (written back by an instance that did not know of it) is lifted again. In any
   * order: the instance that reinstated may write back before or after the one that did not.
   */
  private async writeBackReinstatements(): Promise<void> {
    if (!this.deps.state.setReinstatedAt) return;
    for (const [account, at] of this.reinstatedHere) {
      if (at < this.now() - REINSTATED_KEPT_MS) continue;
      const { suspension } = await this.deps.state.account(account);
      if (suspension && suspension.since <= at) await this.deps.state.resetAccount(account);
      await this.deps.state.setReinstatedAt(account, at);
    }
  }

  /** The suspended-accounts gauge, and the suspensions known here (other instances' too) for a Redis outage. */
  refreshGauge(): Promise<void> {
    // One after the other: two at once could write the known suspensions out of order.
    const run = (this.refreshRun ?? Promise.resolve()).then(() => this.refreshOnce());
    const settled = run.catch(() => undefined);
    this.refreshRun = settled;
    void settled.then(() => {
      if (this.refreshRun === settled) this.refreshRun = undefined;
    });
    return run;
  }

  private async refreshOnce(): Promise<void> {
    // Whose the aliases on the never-suspend list are, known before the lifecycle API is ever down, and
    // asked again every hour, so that what is kept of them (30 days) does not run out while unused.
    const hourly = this.now() - this.listAskedAt >= LIST_REFRESH_MS;
    if (hourly) this.listAskedAt = this.now();
    for (const entry of this.listedAddresses(this.deps.policy())) {
      const address = comparableAddress(entry);
      if (hourly || !this.owners.has(address)) this.rememberListed(address);
    }
    try {
      await this.restoreIfLost();
      const suspended = await this.deps.state.suspendedAccounts();
      this.suspensionsSeen = true;
      this.deps.metrics.suspendedAccounts.set(suspended.length);
      const fresh = new Map<string, Suspension>();
      for (const a of suspended) {
        const s = (await this.deps.state.account(a)).suspension;
        if (s) fresh.set(a.toLowerCase(), s);
      }
      this.knownSuspensions.clear();
      for (const [a, s] of fresh) this.knownSuspensions.set(a, s);
      await this.saveKnown().catch((err: Error) => this.deps.log.warn({ event: 'known_suspensions_not_kept', err: err.message }, 'the known suspensions could not be kept for the next run'));
    } catch {
      // the gauge and the known suspensions wait for the next refresh
    }
  }
}

/** A strike's id: the same when it is counted again. */
function strikeId(e: StrikeEvent): string {
  return `${e.reference}-${e.event}-${e.at}`;
}

/** state_dir/known-suspensions.json */
interface KnownFile {
  /** the shared state's mark when they were read */
  mark?: string;
  suspensions: Record<string, Suspension>;
  /** accounts reinstated by this instance, and when */
  reinstated?: Record<string, number>;
}

/** How long an instance remembers the reinstatements it made, for a loss of the shared state. */
const REINSTATED_KEPT_MS = 30 * 86_400_000;

/** How often the never-suspend list's addresses are asked of the lifecycle API again. */
const LIST_REFRESH_MS = 3_600_000;

/** How soon a throttle skipped for an unverifiable never-suspend list may be taken by a later strike. */
const UNVERIFIED_RETRY_MS = 10 * 60_000;

/** Why a ladder step waits: the never-suspend list cannot be checked against this account now. */
const UNVERIFIED = 'the lifecycle API cannot say now whose the addresses on the never-suspend list are: this account may be one of them';

/** Strikes kept for later while the enforcement state does not answer, at most (files in the outbox). */
const MAX_DEFERRED_STRIKES = 10_000;

/** Background lookups of whose an address is (see known) at once, at most. */
const MAX_LEARNING = 100;
/** Addresses whose account is remembered (see canonical). */
const MAX_OWNERS = 100_000;

/** One account's lifecycle calls run one at a time, and the newest replaces those still waiting. */
function lifecycleKey(account: string): string {
  return `lifecycle:${account.toLowerCase()}`;
}

/** Rejects after `ms` (the timer is cleared as soon as the answer is in, not left to fire for nothing). */
function deadline<T>(p: Promise<T>, what: string, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
      timer.unref();
    }),
  ]).finally(() => clearTimeout(timer));
}
