// A private Postfix instance with Dovecot SASL (passwd-file users) on free loopback ports: the upstream
// MTA of the end-to-end tests, configured like Zimbra's MTA (AUTH on one port, mynetworks on another).

import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, waitForPort } from './net.js';
import { run, runDaemonizing, stopPid } from './procs.js';

export interface MailStackInfo {
  base: string;
  authPort: number;
  openPort: number;
  saslPort: number;
  caFile: string;
  users: Record<string, string>;
}

export const TEST_USERS: Record<string, string> = {
  'user1@example.test': 'secret1',
  'user2@example.test': 'secret2',
  'user3@example.test': 'secret3',
  // An application token for a password: longer than an SMTP command line may be.
  'token@example.test': 't'.repeat(1600),
};

function uid(name: string): { uid: number; gid: number } {
  const line = readFileSync('/etc/passwd', 'utf8').split('\n').find((l) => l.startsWith(name + ':'));
  if (!line) throw new Error(`system user ${name} missing: install postfix and dovecot-core (see .ci/run)`);
  const parts = line.split(':');
  return { uid: Number(parts[2]), gid: Number(parts[3]) };
}

export async function startMailStack(): Promise<MailStackInfo> {
  const base = mkdtempSync(join(tmpdir(), 'douane-mta-'));
  const [authPort, openPort, saslPort] = [await freePort(), await freePort(), await freePort()];
  const info: MailStackInfo = { base, authPort, openPort, saslPort, caFile: join(base, 'pf/tls/cert.pem'), users: TEST_USERS };
  try {
    await startDaemons(info);
  } catch (err) {
    // Dovecot may be running when Postfix fails to start (another instance starting at the same moment):
    // what was started is stopped, so that a failed start leaves no process behind.
    await stopMailStack(info);
    throw err;
  }
  return info;
}

async function startDaemons({ base, authPort, openPort, saslPort }: MailStackInfo): Promise<void> {
  chmodSync(base, 0o755);
  for (const d of ['dovecot/run', 'dovecot/state', 'pf/etc', 'pf/spool', 'pf/data', 'pf/mail', 'pf/tls']) mkdirSync(join(base, d), { recursive: true });
  const postfix = uid('postfix');
  const dovecotGroup = Number(readFileSync('/etc/group', 'utf8').split('\n').find((l) => l.startsWith('dovecot:'))?.split(':')[2] ?? 0);

  // Dovecot: SASL only.
  writeFileSync(
    join(base, 'dovecot/dovecot.conf'),
    `base_dir = ${base}/dovecot/run
state_dir = ${base}/dovecot/state
instance_name = douane-test-${authPort}
log_path = ${base}/dovecot/dovecot.log
protocols = none
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u ${base}/dovecot/users
}
userdb {
  driver = static
  args = uid=nobody gid=nogroup home=/nonexistent
}
service auth {
  inet_listener {
    address = 127.0.0.1
    port = ${saslPort}
  }
}
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
`,
  );
  writeFileSync(join(base, 'dovecot/users'), Object.entries(TEST_USERS).map(([u, p]) => `${u}:{PLAIN}${p}\n`).join(''));
  chownSync(join(base, 'dovecot/users'), 0, dovecotGroup);
  chmodSync(join(base, 'dovecot/users'), 0o640);
  runDaemonizing('dovecot', ['-c', join(base, 'dovecot/dovecot.conf')], join(base, 'dovecot/start.log'));
  await waitForPort(saslPort);

  run('openssl', [
    'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '30', '-subj', '/CN=upstream.example.test',
    '-addext', 'subjectAltName=DNS:upstream.example.test,DNS:localhost,IP:127.0.0.1',
    '-keyout', join(base, 'pf/tls/key.pem'), '-out', join(base, 'pf/tls/cert.pem'),
  ]);
  chownSync(join(base, 'pf/data'), postfix.uid, postfix.gid);
  chownSync(join(base, 'pf/mail'), postfix.uid, postfix.gid);
  writeFileSync(
    join(base, 'pf/etc/main.cf'),
    `compatibility_level = 3.6
queue_directory = ${base}/pf/spool
data_directory = ${base}/pf/data
meta_directory = /etc/postfix
maillog_file = ${base}/pf/maillog
maillog_file_prefixes = /var, /dev/stdout, ${base}
myhostname = upstream.example.test
mydomain = example.test
myorigin = $myhostname
mydestination =
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
smtputf8_enable = no
virtual_mailbox_domains = example.test
virtual_mailbox_base = ${base}/pf/mail
virtual_mailbox_maps = texthash:${base}/pf/etc/vmailbox
virtual_mailbox_limit = 0
virtual_uid_maps = static:${postfix.uid}
virtual_gid_maps = static:${postfix.gid}
default_transport = discard:no-external-delivery
relay_transport = discard:no-external-delivery
message_size_limit = 52428800
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = inet:127.0.0.1:${saslPort}
smtpd_tls_security_level = may
smtpd_tls_cert_file = ${base}/pf/tls/cert.pem
smtpd_tls_key_file = ${base}/pf/tls/key.pem
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_recipient_restrictions = permit_sasl_authenticated, reject
smtpd_authorized_xclient_hosts = 127.0.0.1
smtpd_authorized_xforward_hosts = 127.0.0.1
smtpd_error_sleep_time = 0
smtpd_soft_error_limit = 100
smtpd_hard_error_limit = 1000
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
anvil_rate_time_unit = 60s
`,
  );
  writeFileSync(
    join(base, 'pf/etc/vmailbox'),
    Object.keys(TEST_USERS).map((u) => `${u} example.test/${u.split('@')[0]}/\n`).join('') + '@example.test example.test/catchall/\n',
  );
  const services = [
    'pickup unix n - n 60 1 pickup', 'cleanup unix n - n - 0 cleanup', 'qmgr unix n - n 300 1 qmgr',
    'tlsmgr unix - - n 1000? 1 tlsmgr', 'rewrite unix - - n - - trivial-rewrite', 'bounce unix - - n - 0 bounce',
    'defer unix - - n - 0 bounce', 'trace unix - - n - 0 bounce', 'verify unix - - n - 1 verify',
    'flush unix n - n 1000? 0 flush', 'proxymap unix - - n - - proxymap', 'proxywrite unix - - n - 1 proxymap',
    'smtp unix - - n - - smtp', 'relay unix - - n - - smtp', 'showq unix n - n - - showq', 'error unix - - n - - error',
    'retry unix - - n - - error', 'discard unix - - n - - discard', 'local unix - n n - - local',
    'virtual unix - n n - - virtual', 'lmtp unix - - n - - lmtp', 'anvil unix - - n - 1 anvil',
    'scache unix - - n - 1 scache', 'postlog unix-dgram n - n - 1 postlogd',
  ];
  writeFileSync(
    join(base, 'pf/etc/master.cf'),
    `127.0.0.1:${authPort} inet n - n - - smtpd
127.0.0.1:${openPort} inet n - n - - smtpd
  -o smtpd_sasl_auth_enable=no
  -o smtpd_relay_restrictions=permit_mynetworks,reject
  -o smtpd_recipient_restrictions=permit_mynetworks,reject
${services.join('\n')}
`,
  );
  // postfix(1) prints its errors only to a terminal; script(1) provides one.
  run('script', ['-qec', `postfix -c ${base}/pf/etc check`, '/dev/null']);
  runDaemonizing('script', ['-qec', `postfix -c ${base}/pf/etc start`, '/dev/null'], join(base, 'pf/start.log'));
  await waitForPort(authPort);
  await waitForPort(openPort);
}

export async function stopMailStack(info: MailStackInfo): Promise<void> {
  try {
    runDaemonizing('script', ['-qc', `postfix -c ${info.base}/pf/etc stop`, '/dev/null'], join(info.base, 'pf/stop.log'));
  } catch {
    // already stopped
  }
  const pidFile = join(info.base, 'dovecot/run/master.pid');
  if (existsSync(pidFile)) await stopPid(Number(readFileSync(pidFile, 'utf8').trim()));
  const pfPid = join(info.base, 'pf/spool/pid/master.pid');
  if (existsSync(pfPid)) await stopPid(Number(readFileSync(pfPid, 'utf8').trim()));
  rmSync(info.base, { recursive: true, force: true });
}

/** Messages delivered to a mailbox (Maildir new/), newest last. */
export function mailbox(info: MailStackInfo, localPart: string): Buffer[] {
  const dir = join(info.base, 'pf/mail/example.test', localPart, 'new');
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .sort(byDelivery)
    .map((f) => readFileSync(join(dir, f)));
}

/**
 * Oldest first. Postfix names a maildir file "seconds.VdevIinodeMmicroseconds.host": the microseconds are
 * not padded, so names alone do not sort two messages of one second.
 */
function byDelivery(a: string, b: string): number {
  const when = (name: string) => {
    const m = /^(\d+)\..*?M(\d+)\./.exec(name);
    return m ? Number(m[1]) * 1e6 + Number(m[2]) : Number(/^(\d+)/.exec(name)?.[1] ?? 0) * 1e6;
  };
  return when(a) - when(b) || a.localeCompare(b);
}

/** Waits until the mailbox holds at least n messages; returns them. */
export async function waitForMailbox(info: MailStackInfo, localPart: string, n: number, timeoutMs = 10_000): Promise<Buffer[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const msgs = mailbox(info, localPart);
    if (msgs.length >= n || Date.now() > deadline) return msgs;
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Every message delivered to any mailbox of the test domain. */
export function allDelivered(info: MailStackInfo): number {
  const root = join(info.base, 'pf/mail/example.test');
  if (!existsSync(root)) return 0;
  let n = 0;
  for (const box of readdirSync(root)) {
    const dir = join(root, box, 'new');
    if (existsSync(dir)) n += readdirSync(dir).length;
  }
  return n;
}
