// `douane policy diff`: replays a corpus of messages under two policies and reports which outcomes
// change — the preview before a rollout. Each message's envelope comes from its headers (account and
// sender: the From: address; recipients: To, Cc and Bcc), or from a sidecar FILE.json holding
// { account, sender, recipients, listener, given } when the headers are not what was sent.

import { existsSync, readdirSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import addressparser from 'nodemailer/lib/addressparser';
import type { Config } from '../config/schema.js';
import { list, obj, oneOf, optional, required, str } from '../validate/schema.js';
import { readYamlFile, validateYaml } from '../validate/source.js';
import { evaluateOffline, type OfflineInput, type OfflineOutcome } from './offline.js';
import type { Policy } from './policy.js';
import { givenSchema } from './tests.js';

/** A sidecar is checked as a test case is: a misspelt fact would otherwise be computed, not given. */
const sidecarSchema = obj({
  account: required(str()),
  sender: optional(str({ nonEmpty: false })),
  recipients: required(list(str(), { min: 1 })),
  listener: optional(oneOf('starttls', 'tls', 'trusted')),
  given: optional(givenSchema),
});

export interface DiffEntry {
  file: string;
  before: string;
  after: string;
}

export interface DiffReport {
  total: number;
  changed: DiffEntry[];
  /** "accept → reject by from.not-owned" → number of messages */
  transitions: Map<string, number>;
  /** per rule: messages it now decides that it did not (gained) and the reverse (lost) */
  rules: Map<string, { gained: number; lost: number }>;
  /** messages that could not be read or evaluated */
  errors: { file: string; error: string }[];
}

export function corpusFiles(dir: string): string[] {
  const out: string[] = [];
  // A folder linked from inside itself ("archive -> .") is walked once: each real folder is visited once.
  const seen = new Set<string>();
  const walk = (d: string) => {
    const real = realpathSync(d);
    if (seen.has(real)) return;
    seen.add(real);
    for (const name of readdirSync(d).sort()) {
      const p = join(d, name);
      let folder = false;
      try {
        folder = statSync(p).isDirectory();
      } catch {
        // a link to nothing: a message that cannot be read, reported as such if it is named like one
      }
      if (folder) walk(p);
      else if (name.toLowerCase().endsWith('.eml')) out.push(p);
    }
  };
  walk(dir);
  return out;
}

function addresses(value: string | undefined): string[] {
  if (!value) return [];
  const out: string[] = [];
  const walk = (list: { address?: string; group?: unknown[] }[]) => {
    for (const a of list) {
      if (a.address) out.push(a.address.toLowerCase());
      if (Array.isArray(a.group)) walk(a.group as { address?: string }[]);
    }
  };
  walk(addressparser(value) as { address?: string; group?: unknown[] }[]);
  return out;
}

/** The envelope of a corpus message: sidecar JSON, else its headers. */
export function envelopeOf(file: string, raw: Buffer): OfflineInput {
  const sidecar = file.replace(/\.eml$/i, '.json');
  if (existsSync(sidecar)) {
    // JSON is YAML: read this way, a mistake is reported with its line and key.
    const { value } = validateYaml(sidecar, readYamlFile(sidecar), sidecarSchema);
    return { ...(value as Omit<OfflineInput, 'message'>), message: raw };
  }
  const headerEnd = raw.indexOf('\r\n\r\n') >= 0 ? raw.indexOf('\r\n\r\n') : raw.indexOf('\n\n');
  const head = raw.subarray(0, headerEnd < 0 ? raw.length : headerEnd).toString('utf8').replace(/\r?\n[ \t]+/g, ' ');
  const header = (name: string) =>
    head
      .split(/\r?\n/)
      .filter((l) => l.toLowerCase().startsWith(name + ':'))
      .map((l) => l.slice(name.length + 1))
      .join(', ');
  const from = addresses(header('from'))[0];
  const recipients = [...addresses(header('to')), ...addresses(header('cc')), ...addresses(header('bcc'))];
  if (!from) throw new Error('no From: address (add a sidecar .json with the envelope)');
  if (!recipients.length) throw new Error('no To/Cc/Bcc recipient (add a sidecar .json with the envelope)');
  return { account: from, sender: from, recipients, message: raw };
}

export function summarize(o: OfflineOutcome): string {
  const message = o.action === 'accept' ? 'accept' : `${o.action} by ${o.rule?.id ?? o.reason ?? '(built-in check)'}`;
  // Recipients refused while the others went on change the outcome as much as the message's fate does.
  if (o.action !== 'accept' || o.refusedRecipients.length === 0) return message;
  const by = [...new Set(o.refusedRecipients.map((r) => r.rule ?? '(built-in check)'))].join(', ');
  const n = o.refusedRecipients.length;
  return `${message}, ${n} recipient${n === 1 ? '' : 's'} refused by ${by}`;
}

/** The rules that decided something in an outcome: the message's, and those that refused a recipient. */
function decidingRules(o: OfflineOutcome): Set<string> {
  const rules = new Set<string>();
  if (o.rule) rules.add(o.rule.id);
  for (const r of o.refusedRecipients) if (r.rule) rules.add(r.rule);
  return rules;
}

export async function diffPolicies(
  before: Policy,
  after: Policy,
  config: Readonly<Config>,
  corpusDir: string,
  onProgress?: (done: number, total: number) => void,
): Promise<DiffReport> {
  const files = corpusFiles(corpusDir);
  const report: DiffReport = { total: files.length, changed: [], transitions: new Map(), rules: new Map(), errors: [] };
  const bump = (rule: string | undefined, key: 'gained' | 'lost') => {
    if (!rule) return;
    const r = report.rules.get(rule) ?? { gained: 0, lost: 0 };
    r[key]++;
    report.rules.set(rule, r);
  };
  for (let i = 0; i < files.length; i++) {
    const file = files[i]!;
    try {
      const input = envelopeOf(file, readFileSync(file));
      const a = await evaluateOffline(before, config, input);
      const b = await evaluateOffline(after, config, input);
      const sa = summarize(a);
      const sb = summarize(b);
      if (sa !== sb) {
        report.changed.push({ file: relative(corpusDir, file), before: sa, after: sb });
        const key = `${sa} → ${sb}`;
        report.transitions.set(key, (report.transitions.get(key) ?? 0) + 1);
        const [ra, rb] = [decidingRules(a), decidingRules(b)];
        for (const rule of rb) if (!ra.has(rule)) bump(rule, 'gained');
        for (const rule of ra) if (!rb.has(rule)) bump(rule, 'lost');
      }
    } catch (err) {
      report.errors.push({ file: relative(corpusDir, file), error: (err as Error).message });
    }
    onProgress?.(i + 1, files.length);
  }
  return report;
}
