// The AUTH path, as real mail clients use it: our own load generator connects, STARTTLS, AUTH PLAIN and
// sends messages, 20 sessions at a time — directly to Postfix (with Dovecot SASL, like Zimbra's MTA) and
// through Douane to the same Postfix (Douane passes AUTH through on the session's own upstream
// connection). Interleaved repetitions, medians, and the ratio.
//
//   npm run bench:auth

import { startMailStack, stopMailStack } from '../test/harness/mail-stack.js';
import { authLoad } from './lib/load.js';
import { cpuSeconds, median, stopOnInterrupt } from './lib/proc.js';
import { runBenchmark, table, writeSection } from './lib/report.js';
import { startDouane } from './lib/stack.js';

const REPS = Number(process.env.REPS ?? 3);
const MESSAGES = Number(process.env.MESSAGES ?? 600);

async function main(): Promise<void> {
  const mail = await startMailStack();
  const stack = stopOnInterrupt({ ...mail, stop: () => stopMailStack(mail) });
  // Twenty logins of one account at once would be past its brute-force limit (10 attempts in flight):
  // the sessions are spread over three accounts, as a provider's clients are over theirs.
  const users = ['user1@example.test', 'user2@example.test', 'user3@example.test'].map((u): [string, string] => [u, stack.users[u]!]);
  const direct: number[] = [];
  const through: number[] = [];
  const cpu: number[] = [];
  try {
    for (let rep = 1; rep <= REPS; rep++) {
      const d = await authLoad(stack.authPort, { sessions: 20, messages: MESSAGES, perSession: 5, size: 4096, users });
      direct.push(d.perSecond);
      const douane = await startDouane({
        sinkPort: stack.authPort,
        policyDir: 'fixtures/policies/minimal',
        upstream: `upstream: { host: 127.0.0.1, port: ${stack.authPort}, trusted_port: ${stack.openPort}, tls: opportunistic, verify_certificate: false, pool: { size: 64 } }`,
      });
      try {
        await authLoad(douane.submissionPort, { sessions: 5, messages: 25, perSession: 5, size: 4096, users });
        const c0 = cpuSeconds(douane.pid);
        const t = await authLoad(douane.submissionPort, { sessions: 20, messages: MESSAGES, perSession: 5, size: 4096, users });
        // A refused or failed transaction is not a throughput: the run stops with it.
        if (d.failed || t.failed) throw new Error(`rep ${rep}: not every message was accepted (${d.failed ? 'direct' : 'through Douane'})`);
        through.push(t.perSecond);
        cpu.push(((cpuSeconds(douane.pid) - c0) * 1000) / MESSAGES);
        console.error(`rep ${rep}: direct ${d.perSecond.toFixed(0)} msg/s, through Douane ${t.perSecond.toFixed(0)} msg/s, ${cpu[cpu.length - 1]!.toFixed(2)} ms CPU/msg`);
      } finally {
        await douane.stop();
      }
    }
    writeSection(
      'auth',
      'The AUTH path: STARTTLS + AUTH PLAIN, to Postfix with Dovecot SASL',
      'npm run bench:auth',
      [
        `20 sessions at a time, each: connect, STARTTLS, AUTH PLAIN (as one of three accounts in turn), 5 messages of 4 KB, QUIT; ${MESSAGES} messages per run; medians of ${REPS} interleaved repetitions. Postfix delivers to its discard transport. Through Douane: the client's TLS session ends at Douane, which opens its own STARTTLS session to Postfix per client session and passes AUTH through. This measures the AUTH path itself: Douane runs with the minimal test policy, without Redis (limits counted in memory) and without clamd (the side-by-side section has the checks' costs).`,
        '',
        table(
          ['setup', 'msg/s', 'Douane CPU ms/msg'],
          [
            ['client → Postfix', median(direct).toFixed(0), '—'],
            ['client → Douane → Postfix', median(through).toFixed(0), median(cpu).toFixed(2)],
            // Within each repetition (the two runs follow each other), then the median.
            ['ratio (through Douane / direct)', median(through.map((t, i) => t / direct[i]!)).toFixed(2), ''],
          ],
        ),
      ].join('\n'),
    );
  } finally {
    await stack.stop();
  }
}

runBenchmark(main);
