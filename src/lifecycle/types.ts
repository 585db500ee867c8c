// The account lifecycle API: where accounts are suspended and reinstated for good (Zimbra's admin API,
// or a provider's own account system), and where their status is read (non-payment, art. 6; closed,
// art. 8). Adapters implement this; Douane's enforcement only talks to this interface.

/** Normalised account status. Zimbra's own values map onto these (see each adapter). */
export const ACCOUNT_STATUSES = ['active', 'locked', 'lockout', 'suspended', 'closed', 'maintenance', 'pending', 'unknown', 'unavailable'] as const satisfies readonly AccountStatus[];

export type AccountStatus =
  | 'active'
  /** no login, mail still delivered: Zimbra's status for a compromised or abusive account */
  | 'locked'
  /** too many failed logins (Zimbra lockout) */
  | 'lockout'
  /** suspended for non-payment */
  | 'suspended'
  /** closed: end of contract */
  | 'closed'
  | 'maintenance'
  | 'pending'
  /** the API did not answer, and no answer of its is recent enough to serve (Douane's own: no API says it) */
  | 'unavailable'
  /** the API does not know the account */
  | 'unknown';

export interface AccountInfo {
  status: AccountStatus;
  /** the account's id in the lifecycle system, when it has one */
  id?: string;
  /** other addresses the account may send as (Zimbra: zimbraMailAlias) */
  aliases?: string[];
  /** the plan (art. 3.1), when the API knows it */
  plan?: string;
  /**
   * The account's own name, when the API found it by another one: an alias, or a bare login completed
   * with the default domain. Limits, strikes and suspensions are kept under this name.
   */
  name?: string;
  /** the status as the API wrote it, when Douane has no name for it (status "unknown" of an existing account) */
  rawStatus?: string;
}

export type LifecycleErrorKind = 'unavailable' | 'timeout' | 'auth' | 'not_found' | 'refused' | 'protocol';

export class LifecycleError extends Error {
  constructor(
    readonly kind: LifecycleErrorKind,
    message: string,
    /** worth retrying later (outage, timeout) rather than a permanent refusal */
    readonly retryable: boolean,
  ) {
    super(message);
    this.name = 'LifecycleError';
  }
}

export type SuspendOutcome = 'locked' | 'already_locked';

export interface LifecycleApi {
  /** short name for logs and metrics: "zimbra", "http" */
  readonly kind: string;
  status(account: string): Promise<AccountInfo>;
  /**
   * locks the account (idempotent: locking a locked account succeeds). "already_locked": it was locked
   * (or closed) before, by someone else, and a reinstatement must not unlock it; nothing said: locked.
   */
  suspend(account: string, reason: { reference: string; rule?: string; article?: string; summary: string }): Promise<SuspendOutcome | void>;
  /** back to active (idempotent) */
  reinstate(account: string, reason: { reference: string; by: string }): Promise<void>;
}
