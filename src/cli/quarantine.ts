// `douane quarantine list | show | release | delete | purge`: the security team's view of refused
// messages kept for review. Release re-submits the original bytes to the upstream, once, and is audited.

import { join } from 'node:path';
import { AuditLog } from '../audit/log.js';
import { loadConfig } from '../config/load.js';
import { DamagedEntry, isQuarantineId, LocalQuarantine, type QuarantineMeta } from '../quarantine/store.js';
import { releaseMessage, ReleaseError } from '../quarantine/release.js';
import { auditPurge } from '../quarantine/audit.js';
import { formatSummary, printable, summarise, terminalJson } from '../quarantine/summary.js';
import { endpointsFrom } from '../upstream/provider.js';
import { comparableAddress } from '../policy/facts.js';
import { atMost, cliActor, flag, option, parseArgs, UsageError } from './args.js';

export const QUARANTINE_HELP = `Usage: douane quarantine <command> [options]

Commands:
  list [--account A] [--json]   quarantined messages, oldest first
  show ID [--raw]               metadata, the message decoded (headers, start of the text, attachments)
                                and its headers as kept (--raw: the whole message as kept)
  release ID [--force] [--allow-malware]
                                re-submit the original message to the upstream, once (audited);
                                --force sends it again after a release in doubt, --allow-malware
                                releases one the scanner found infected (a false positive)
  delete ID                     remove a message from quarantine (audited)
  purge                         remove messages older than quarantine.retention

Options:
  --config FILE                 configuration (state_dir, upstream); default: DOUANE_CONFIG or the embedded default
  --help                        this text

Exit codes: 0 ok, 1 not found or refused by the upstream, 64 usage error.`;

export async function quarantineCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (!sub || sub === '--help' || sub === 'help') {
    console.log(QUARANTINE_HELP);
    return sub ? 0 : 64;
  }
  const args = parseArgs(rest, { flags: ['help', 'json', 'raw', 'force', 'allow-malware'], options: ['config', 'account'] });
  if (flag(args, 'help')) {
    console.log(QUARANTINE_HELP);
    return 0;
  }
  const { config } = loadConfig({ file: option(args, 'config') });
  const store = new LocalQuarantine(join(config.state_dir, 'quarantine'));
  const audit = new AuditLog(join(config.state_dir, 'audit.log'));
  const actor = cliActor();
  const id = args.positional[0];
  atMost(args, sub === 'list' || sub === 'purge' ? 0 : 1, `quarantine ${sub}`);
  const needId = () => {
    if (!id) throw new UsageError(`quarantine ${sub} needs an ID (see douane quarantine list)`);
    if (!isQuarantineId(id)) throw new UsageError(`"${id}" is not a quarantine ID: they look like D-7K2M9Q (see douane quarantine list)`);
    return id;
  };
  switch (sub) {
    case 'list': {
      // One account however it is written (case, an internationalised domain in either form): the entry
      // has the account as authenticated, or the envelope sender as the client wrote it.
      const given = option(args, 'account');
      const account = given === undefined ? undefined : comparableAddress(given);
      const scanned = await store.scan();
      const entries = scanned.entries.filter((m) => !account || comparableAddress(m.account) === account);
      if (flag(args, 'json')) console.log(terminalJson(entries, 2));
      // Which one: without --config (or DOUANE_CONFIG) it is the embedded default's, under /tmp.
      else if (entries.length === 0 && scanned.damaged.length === 0) {
        const where = `${join(config.state_dir, 'quarantine')}${option(args, 'config') || process.env.DOUANE_CONFIG ? '' : ': the embedded default configuration\'s; --config FILE for another'}`;
        console.log(given === undefined || scanned.entries.length === 0 ? `quarantine is empty (${where})` : `nothing for ${given} in the quarantine (${where})`);
      }
      else for (const m of entries) console.log(line(m));
      // Not an account's for all one can tell: named for a person to look at (show, delete), and purged
      // once its files are past retention.
      for (const d of scanned.damaged) console.error(`douane: ${d.id} is damaged: ${printable(d.why)} (douane quarantine delete ${d.id})`);
      return 0;
    }
    case 'show': {
      const meta = await store.get(needId());
      if (!meta) return notFound(id!);
      if (flag(args, 'raw')) {
        for await (const chunk of store.open(meta.id)) process.stdout.write(chunk as Buffer);
        return 0;
      }
      // Strings in the metadata come from the message (subject, addresses): printed for a person, cleaned.
      console.log(JSON.stringify(meta, (_key, value: unknown) => (typeof value === 'string' ? printable(value) : value), 2));
      const summary = await summarise(store.open(meta.id)).then(formatSummary, (err: Error) => `(the message could not be decoded: ${printable(err.message)})`);
      console.log('\n' + summary);
      let head = '';
      for await (const chunk of store.open(meta.id)) {
        head += (chunk as Buffer).toString('latin1');
        if (head.includes('\r\n\r\n') || head.length > 65_536) break;
      }
      const lines = head.split('\r\n\r\n')[0]!.split('\r\n').map(printable);
      console.log('\nHeaders as kept:\n' + lines.join('\n'));
      return 0;
    }
    case 'release': {
      try {
        const released = await releaseMessage(store, needId(), { endpoint: endpointsFrom(config.upstream, config.hostname).trusted, by: actor, audit, force: flag(args, 'force'), allowMalware: flag(args, 'allow-malware') });
        const refused = released.released!.refused ?? [];
        console.log(`${released.id} released to ${released.recipients.filter((r) => !refused.some((x) => x.startsWith(`${r}: `))).join(', ')}: ${released.released!.reply}`);
        for (const r of refused) console.log(`  not delivered, refused by the upstream: ${r}`);
        return 0;
      } catch (err) {
        if (err instanceof ReleaseError) {
          console.error(`douane: ${err.message}`);
          return 1;
        }
        throw err;
      }
    }
    case 'delete': {
      // A damaged entry (its metadata cut short) can be deleted too: audited without its account.
      const meta = await store.get(needId()).catch((err: unknown) => {
        if (!(err instanceof DamagedEntry)) throw err;
        console.error(`douane: ${printable(err.message)}`);
        return null;
      });
      if (meta === undefined) return notFound(id!);
      // The audit record first: evidence is never gone without a trace of who removed it (an audit trail
      // that cannot be written stops the deletion).
      const record = { actor, account: meta?.account, reference: meta?.reference ?? id!, quarantine_id: id!, ...(meta ? {} : { damaged: true }) };
      await audit.append({ action: 'quarantine_delete', ...record });
      const deleted = await store.delete(id!).catch((err: Error) => {
        console.error(`douane: ${printable(err.message)}`);
        return undefined;
      });
      if (!deleted) {
        await audit.append({ action: 'quarantine_delete_failed', ...record, why: deleted === undefined ? 'the files could not be removed' : 'no such entry (removed meanwhile)' });
        return deleted === undefined ? 1 : notFound(id!);
      }
      console.log(`${id!} deleted`);
      return 0;
    }
    case 'purge': {
      const { removed, entries, claimed, failed } = await store.purge(Date.now() - config.quarantine.retention);
      await auditPurge(audit, actor, entries, new Date(Date.now() - config.quarantine.retention).toISOString());
      console.log(`purged ${removed} message(s)`);
      for (const c of claimed) console.error(`douane: ${c.id} left in place: ${printable(c.why)}`);
      for (const f of failed) console.error(`douane: ${f.id} could not be removed: ${printable(f.why)}`);
      return failed.length ? 1 : 0;
    }
    default:
      throw new UsageError(`unknown quarantine command "${sub}" (list, show, release, delete, purge)`);
  }
}

function line(m: QuarantineMeta): string {
  const why = m.signature ? `${m.rule ?? m.reason} (${m.signature})` : (m.rule ?? m.reason ?? m.action);
  const state = m.released ? `  released ${m.released.at}` : m.releaseInDoubt ? `  release in doubt ${m.releaseInDoubt.at}` : '';
  return printable(`${m.id}  ${m.at}  ${m.account}  → ${m.recipients.length} rcpt  ${why}  ${m.size} B${state}  ${m.subject ?? ''}`);
}

function notFound(id: string): number {
  console.error(`douane: no quarantined message ${id}`);
  return 1;
}
