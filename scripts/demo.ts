// `npm run demo`: Douane's main job on its embedded default configuration, end to end on one machine.
// Starts a private Postfix + Dovecot as the upstream MTA (the same one the tests use), runs
// `douane serve` with no configuration file (only the upstream's ports given through DOUANE_*), sends a
// message with swaks over STARTTLS + AUTH, shows what each side saw, then tries two things Douane
// refuses. Everything listens on 127.0.0.1 and is stopped at the end.

import { execFileSync, spawn } from 'node:child_process';
import { startMailStack, stopMailStack, waitForMailbox } from '../test/harness/mail-stack.js';
import { RawSmtp, waitForPort } from '../test/harness/net.js';

function section(title: string): void {
  console.log(`\n\x1b[1m== ${title}\x1b[0m`);
}

function swaks(args: string[]): string {
  try {
    return execFileSync('swaks', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    // swaks exits non-zero on a refusal, which the demo shows; its own errors (a Perl module missing) are on stderr.
    const { stdout, stderr, message } = e as { stdout: string | null; stderr: string | null; message: string };
    return (stdout ?? '') + (stderr ?? '') || message;
  }
}

const stack = await startMailStack();
const logs: Record<string, unknown>[] = [];
const douane = spawn('node', ['dist/cli.js', 'serve'], {
  env: { ...process.env, DOUANE_UPSTREAM_PORT: String(stack.authPort), DOUANE_UPSTREAM_TRUSTED_PORT: String(stack.openPort) },
  stdio: ['ignore', 'pipe', 'inherit'],
});
douane.stdout.setEncoding('utf8');
let pending = '';
douane.stdout.on('data', (d: string) => {
  pending += d;
  const lines = pending.split('\n');
  pending = lines.pop()!;
  for (const l of lines) if (l.trim()) logs.push(JSON.parse(l) as Record<string, unknown>);
});

try {
  await waitForPort(2587, 10_000);
  section('douane serve (embedded default): listeners');
  // Douane buffers its log lines (flushed every second): wait for the start-up lines.
  const listening = () => logs.filter((x) => x.event === 'listening' || x.event === 'insecure_dev_tls');
  for (const until = Date.now() + 5000; listening().length < 4 && Date.now() < until; ) await new Promise((r) => setTimeout(r, 100));
  for (const l of listening()) console.log(`  ${String(l.msg)}`);

  section('1. swaks → Douane :2587 (STARTTLS + AUTH PLAIN) → Postfix, which checks the password with Dovecot');
  const out = swaks([
    '--server', '127.0.0.1:2587', '--tls', '--auth', 'PLAIN', '--auth-user', 'user1@example.test', '--auth-password', 'secret1',
    '--from', 'user1@example.test', '--to', 'user2@example.test', '--header', 'Subject: Hello through Douane', '--body', 'Delivered end to end.',
  ]);
  const transcript = out.split('\n');
  const from = transcript.findIndex((l) => / -> STARTTLS/.test(l));
  if (from < 0) throw new Error(`swaks did not get as far as STARTTLS; it said:\n${out}`);
  // The conversation from STARTTLS on, without the message body lines.
  console.log(transcript.slice(from).filter((l) => /^(<~|<-)\*?\s+\d{3}[ -]/.test(l) || /~> [A-Z]{4}/.test(l)).map((l) => '  ' + l).join('\n'));
  const box = await waitForMailbox(stack, 'user2', 1);
  if (box.length === 0) throw new Error(`the message was not delivered; swaks said:\n${out}`);
  section('   delivered by Postfix into user2\'s mailbox');
  console.log(box[box.length - 1]!.toString().split('\n').slice(0, 6).map((l) => '  ' + l).join('\n'));

  section('2. the same client with a wrong password');
  const wrong = swaks([
    '--server', '127.0.0.1:2587', '--tls', '--auth', 'PLAIN', '--auth-user', 'user1@example.test', '--auth-password', 'wrong',
    '--from', 'user1@example.test', '--to', 'user2@example.test',
  ]);
  const refused = wrong.split('\n').filter((l) => / 535 /.test(l));
  if (refused.length === 0) throw new Error(`the wrong password was not refused with 535; swaks said:\n${wrong}`);
  console.log(refused.join('\n'));

  section('3. an SMTP smuggling attempt on the trusted port (:2525): refused, nothing relayed');
  const c = await RawSmtp.connect(2525);
  await c.reply();
  await c.command('EHLO webmail.example.test');
  await c.command('MAIL FROM:<user1@example.test>');
  await c.command('RCPT TO:<user2@example.test>');
  await c.command('DATA');
  c.write('Subject: hi\r\n\r\nhello\n.\nMAIL FROM:<ceo@example.test>\nRCPT TO:<user2@example.test>\nDATA\nsmuggled\n.\n\r\n.\r\n');
  console.log('  ' + (await c.reply()));
  c.close();

  await new Promise((r) => setTimeout(r, 1500)); // the log's next flush
  section('Douane\'s log: one JSON line per transaction');
  for (const l of logs.filter((x) => x.event === 'transaction' || x.event === 'auth')) {
    const { event, ref, account, verdict, reason, reply, result } = l as Record<string, unknown>;
    console.log('  ' + JSON.stringify({ event, ref, account, verdict, reason, result, reply }));
  }
} finally {
  douane.kill('SIGTERM');
  await new Promise((r) => douane.once('exit', r));
  await stopMailStack(stack);
}
console.log('\nDone: Douane and the private Postfix/Dovecot were stopped.');
