// What a purge removed, in the audit trail: one entry per message, under its account (so that `douane
// accounts history` shows its evidence is gone), and one for the purge itself.

import type { AuditLog } from '../audit/log.js';
import type { PurgeResult } from './store.js';

export async function auditPurge(audit: AuditLog, actor: string, entries: PurgeResult['entries'], olderThan: string): Promise<void> {
  if (!entries.length) return;
  for (const e of entries) await audit.append({ action: 'quarantine_expired', actor, account: e.account, reference: e.reference, quarantine_id: e.id, older_than: olderThan, ...(e.damaged ? { damaged: e.damaged } : {}) });
  await audit.append({ action: 'quarantine_purge', actor, removed: entries.length, older_than: olderThan });
}
