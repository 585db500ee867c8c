// Micro-benchmark: the CPU the content checks cost per message, stage by stage, on this process alone
// (no sockets): parsing the MIME into facts and computing the bulk fingerprint, for a typical 4 KB
// message and a 100 KB one. Where the per-message CPU of the whole gateway goes that is not here, it goes
// to the network: see the comparison section.
//
//   npm run bench:checks

import { readdirSync, readFileSync } from 'node:fs';
import { DEFAULT_MIN_TEXT_LENGTH, fingerprint } from '../src/bulk/fingerprint.js';
import { inspectStream, type InspectLimits } from '../src/inspect/mime.js';
import type { MessageFacts } from '../src/policy/facts.js';
import { median } from './lib/proc.js';
import { runBenchmark, table, writeSection } from './lib/report.js';

const LIMITS: InspectLimits = { maxParts: 500, maxDepth: 20, maxHeaderSize: 262_144 };
const OPTS = { minTextLength: DEFAULT_MIN_TEXT_LENGTH };

/**
 * CPU time per call after warm-up, in ms: the fastest of 25 batches (the cost of the code) and the median
 * batch (what it costs on a shared machine, with V8's helper threads collecting earlier garbage).
 */
async function cpuPerCall(perBatch: number, call: () => unknown): Promise<{ min: number; median: number }> {
  for (let i = 0; i < perBatch * 3; i++) await call();
  const batches: number[] = [];
  for (let b = 0; b < 25; b++) {
    const c0 = process.cpuUsage();
    for (let i = 0; i < perBatch; i++) await call();
    const c = process.cpuUsage(c0);
    batches.push((c.user + c.system) / 1000 / perBatch);
  }
  return { min: Math.min(...batches), median: median(batches) };
}

/** Text of the kinds people send (notes, newsletters, promotions, orders) from the bulk corpus. */
function corpusText(): string {
  const dir = 'fixtures/bulk/';
  return readdirSync(dir)
    .filter((f) => /^(ham-note|ham-newsletter|promo-fr|ham-order)-\d+\.eml$/.test(f))
    .sort()
    .map((f) => readFileSync(dir + f, 'utf8').split(/\r?\n\r?\n/).slice(1).join('\n\n'))
    .join('\n\n');
}

function message(subject: string, body: string): Buffer {
  return Buffer.from(
    [
      'From: Alice <alice@example.test>',
      'To: bob@example.net',
      `Subject: ${subject}`,
      'Date: Fri, 27 Nov 2026 10:00:00 +0000',
      'Message-ID: <bench@example.test>',
      'MIME-Version: 1.0',
      'Content-Type: text/plain; charset=utf-8',
      '',
      body.replace(/\r?\n/g, '\r\n'),
      '',
    ].join('\r\n'),
  );
}

async function main(): Promise<void> {
  const text = corpusText();
  let big = '';
  // Vary words between copies so the large text is not one paragraph repeated (which shingles compress).
  for (let i = 0; big.length < 100_000; i++) big += text.replace(/\b([a-z]+)\b/g, (w) => (w.length > 3 && i % 2 ? `${w}x` : w)) + '\n';
  const samples = [
    { label: '4 KB text', raw: message('Your spring offer', text.slice(0, 4096)), perBatch: 200 },
    { label: '100 KB text', raw: message('A long one', big.slice(0, 100_000)), perBatch: 20 },
    { label: 'HTML newsletter (fixtures)', raw: readFileSync('fixtures/messages/newsletter-html.eml'), perBatch: 200 },
    { label: 'attachments (fixtures)', raw: readFileSync('fixtures/messages/clean-attachments.eml'), perBatch: 200 },
  ];
  const rows: string[][] = [];
  const ms = (x: number) => x.toFixed(3);
  for (const s of samples) {
    const facts: MessageFacts = await inspectStream([s.raw], LIMITS);
    const parse = await cpuPerCall(s.perBatch, () => inspectStream([s.raw], LIMITS));
    const fp = await cpuPerCall(s.perBatch, () => fingerprint(facts, OPTS));
    rows.push([s.label, String(s.raw.length), `${ms(parse.min)} (${ms(parse.median)})`, `${ms(fp.min)} (${ms(fp.median)})`]);
  }
  writeSection(
    'checks',
    'Content checks, CPU per message',
    'npm run bench:checks',
    [
      'CPU time of the two content stages that run in the gateway process for every message, measured in one process without sockets: the fastest of 25 batches, and the median batch in brackets. Policy evaluation has its own section.',
      '',
      table(['message', 'bytes', 'MIME parse to facts, ms', 'bulk fingerprint, ms'], rows),
    ].join('\n'),
  );
}

runBenchmark(main);
