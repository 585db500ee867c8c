// Holds the running policy and replaces it on reload (SIGHUP or a change in the directory): the new one is
// loaded and validated whole, then swapped in one assignment, or not at all — a bad reload keeps the last
// good policy, logs every problem and shows in metrics. A transaction keeps the policy it started with.

import { statSync, watch, type FSWatcher } from 'node:fs';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import { withoutBlockingAnalysis } from '../validate/schema.js';
import { ValidationError, type Problem } from '../validate/source.js';
import { analysePolicyPatterns, loadPolicy } from './load.js';
import type { Policy } from './policy.js';

export interface ReloadResult {
  ok: boolean;
  version: string;
  changed: boolean;
  problems?: string[];
}

export class PolicyStore {
  private policy: Policy;
  private watcher: FSWatcher | undefined;
  private debounce: NodeJS.Timeout | undefined;
  private recheck: NodeJS.Timeout | undefined;
  /** the directory being watched, as its device and inode: another one may be put in its place */
  private watched: string | undefined;
  private reloads: Promise<ReloadResult> = Promise.resolve({ ok: true, version: '', changed: false });

  constructor(
    readonly dir: string,
    private readonly log: Logger,
    private readonly metrics: Metrics,
    initial?: Policy,
    /** what does not fit between the policy and the configuration: logged at start and at each reload */
    private readonly mismatches: (p: Policy) => string[] = () => [],
  ) {
    // The first load is not a reload: a bad policy at start stops Douane (the caller sees the error).
    this.policy = initial ?? loadPolicy(dir);
    this.publish(undefined);
    this.warnMismatches();
  }

  private warnMismatches(): void {
    for (const warning of this.mismatches(this.policy)) this.log.warn({ event: 'config_policy_mismatch', version: this.policy.version, warning }, warning);
  }

  get current(): Policy {
    return this.policy;
  }

  /**
   * Loads the directory again and puts the new policy in force if it is valid. Its new patterns are
   * analysed first in a child process, while sessions go on; reloads run one after another.
   */
  reload(trigger: string): Promise<ReloadResult> {
    const run = async () => {
      const { failed } = await analysePolicyPatterns(this.dir);
      if (failed) this.log.warn({ event: 'pattern_analysis_failed', trigger, patterns: failed }, `the backtracking analysis of ${failed} new pattern(s) failed: the policy that has them is refused until it succeeds`);
      return this.swap(trigger);
    };
    this.reloads = this.reloads.then(run, run);
    return this.reloads;
  }

  private swap(trigger: string): ReloadResult {
    const previous = this.policy;
    let next: Policy;
    try {
      // Never blocking: what the analysis above did not see is refused, and the policy in force stays.
      next = withoutBlockingAnalysis(() => loadPolicy(this.dir));
      const dropped = droppedSections(previous, next);
      if (dropped.length) throw new ValidationError(dropped);
    } catch (err) {
      const problems = err instanceof ValidationError ? err.message.split('\n') : [(err as Error).message];
      this.metrics.policyReloads.labels('failure').inc();
      this.metrics.policyLastReloadSuccess.set(0);
      this.log.error({ event: 'policy_reload_failed', trigger, dir: this.dir, kept: previous.version, problems }, `policy reload failed; keeping version ${previous.version}`);
      return { ok: false, version: previous.version, changed: false, problems };
    }
    this.policy = next;
    this.metrics.policyReloads.labels('success').inc();
    this.metrics.policyLastReloadSuccess.set(1);
    this.publish(previous);
    const changed = next.version !== previous.version;
    this.log.info({ event: 'policy_reloaded', trigger, version: next.version, previous: previous.version, changed, rules: next.rules.length }, changed ? `policy ${next.version} in force (was ${previous.version})` : `policy reloaded, unchanged (${next.version})`);
    if (changed) this.warnMismatches();
    return { ok: true, version: next.version, changed };
  }

  /**
   * Reloads when a file in the directory changes (editors write several events: they are coalesced).
   * A watch follows the directory it was opened on; when another directory is put in its place (a
   * deployment that swaps it whole), a check every `recheckMs` notices, watches the new one and reloads.
   * Kubernetes' atomic writer swaps a "..data" link inside the directory: that counts as a change too.
   */
  watch(delayMs = 250, recheckMs = 5000): void {
    if (this.recheck) return;
    this.follow(delayMs);
    this.recheck = setInterval(() => {
      if (this.identity() === this.watched) return;
      this.log.info({ event: 'policy_dir_replaced', dir: this.dir }, 'the policy directory was replaced: watching the new one');
      this.follow(delayMs);
      void this.reload('directory replaced');
    }, recheckMs);
    this.recheck.unref();
  }

  private follow(delayMs: number): void {
    this.watcher?.close();
    this.watcher = undefined;
    this.watched = this.identity();
    if (this.watched === undefined) return; // gone for now: the next check looks again
    this.watcher = watch(this.dir, { persistent: false }, (_event, file) => {
      if (file && !/\.ya?ml$/.test(String(file)) && !String(file).startsWith('..')) return;
      clearTimeout(this.debounce);
      this.debounce = setTimeout(() => void this.reload('file change'), delayMs);
    });
    this.watcher.on('error', (err) => this.log.warn({ event: 'policy_watch_error', err: err.message }, 'watching the policy directory failed'));
  }

  private identity(): string | undefined {
    try {
      const s = statSync(this.dir);
      return `${s.dev}:${s.ino}`;
    } catch {
      return undefined;
    }
  }

  close(): void {
    clearTimeout(this.debounce);
    clearInterval(this.recheck);
    this.recheck = undefined;
    this.watcher?.close();
    this.watcher = undefined;
  }

  private publish(previous: Policy | undefined): void {
    // The version in force and the one it replaced: not every version ever loaded, one series each, until a restart.
    this.metrics.policyInfo.reset();
    if (previous && previous.version !== this.policy.version) this.metrics.policyInfo.labels(previous.version).set(0);
    this.metrics.policyInfo.labels(this.policy.version).set(1);
    this.metrics.policyRules.reset();
    for (const r of this.policy.rules) this.metrics.policyRules.labels(r.phase, r.mode).inc();
  }
}

/**
 * A section the policy in force defines and the new one does not: a file removed or renamed by mistake
 * (rules.yaml moved aside) would otherwise put the defaults in force, no rules and no allowlist. Taking a
 * section out is said in its file (`rules: []`).
 */
function droppedSections(previous: Policy, next: Policy): Problem[] {
  const kept = new Set(next.files.flatMap((f) => f.sections));
  return previous.files.flatMap((f) =>
    f.sections
      .filter((section) => !kept.has(section))
      .map((section) => ({ file: f.path, key: section, message: `is defined by no policy file now (a file removed or renamed?): the policy in force, which defines it here, stays; to take the section out, say so in a file (${section === 'rules' ? 'rules: []' : `${section}: {}`})` })),
  );
}
