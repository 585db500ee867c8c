// The policy on live traffic: refusals that name the rule and article, monitor mode, tags, strikes,
// and reloads that swap the whole policy at once without touching transactions in flight.

import { cpSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { FakeUpstream } from '../harness/fake-upstream.js';
import { gatewayWithUpstream, startGateway } from '../harness/gateway.js';
import { RawSmtp } from '../harness/net.js';

function policyDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'douane-policy-'));
  cpSync('fixtures/policies/minimal', dir, { recursive: true });
  return dir;
}

const start = gatewayWithUpstream();
const setup = (dir: string) => start({}, { policy: { dir, watch: false }, smtp: { max_connections_per_ip: 100 } });

async function send(port: number, subject: string, from = 'user1@example.test'): Promise<{ mail: string; data: string }> {
  const c = await RawSmtp.connect(port);
  await c.reply();
  await c.command('EHLO t');
  const mail = await c.command(`MAIL FROM:<${from}>`);
  if (!mail.startsWith('250')) return { mail, data: '' };
  await c.command('RCPT TO:<user2@example.test>');
  await c.command('DATA');
  c.write(`From: ${from}\r\nSubject: ${subject}\r\n\r\nbody\r\n.\r\n`);
  const data = await c.reply();
  c.close();
  return { mail, data };
}

describe('policy on live traffic', () => {
  it('refuses with the reason\'s reply, naming the rule and the contract article, and logs the policy version', async () => {
    const { gw, upstream } = await setup(policyDir());
    const { data } = await send(gw.port('trusted'), 'FORBIDDEN-SUBJECT inside');
    expect(data).toMatch(/^550 5\.7\.1 Message refused: its content is not allowed by the terms of service\. Ref D-[0-9A-Z]{6}, rule subject\.forbidden, art\. 4\.3\.$/);
    expect(upstream.messages).toHaveLength(0);
    const line = await gw.waitForLog((l) => l.event === 'transaction');
    expect(line).toMatchObject({ verdict: 'reject', reason: 'content.forbidden', rule: 'subject.forbidden', article: '4.3', policy: gw.gateway.policies.current.version });
    expect(line.rule_source).toMatch(/policy\.yaml:15$/);
    const strike = await gw.waitForLog((l) => l.event === 'strike');
    expect(strike).toMatchObject({ account: 'user1@example.test', strike: 'content_rule', weight: 2, rule: 'subject.forbidden', article: '4.3', ref: line.ref, policy: line.policy });
  });

  it('a quarantine that cannot be kept tempfails without a strike; the try that is kept strikes once', async () => {
    const dir = policyDir();
    const file = join(dir, 'policy.yaml');
    writeFileSync(file, readFileSync(file, 'utf8').replace('    action: reject\n    reason: content.forbidden', '    action: quarantine\n    reason: content.forbidden'));
    const { gw, upstream } = await setup(dir);
    // The quarantine's disk is unusable (full, read-only; here a file in the directory's place).
    const quarantine = join(gw.stateDir, 'quarantine');
    rmSync(quarantine, { recursive: true, force: true });
    writeFileSync(quarantine, 'not a directory');
    for (let i = 0; i < 3; i++) expect((await send(gw.port('trusted'), 'FORBIDDEN-SUBJECT')).data).toMatch(/^451 4\.3\.0 /);
    await gw.waitForLog((l) => l.event === 'transaction' && l.verdict === 'tempfail');
    expect(gw.logs.filter((l) => l.event === 'strike')).toEqual([]);
    // The disk is back: the next try is refused, kept, and strikes once.
    rmSync(quarantine);
    mkdirSync(quarantine, { mode: 0o700 });
    expect((await send(gw.port('trusted'), 'FORBIDDEN-SUBJECT')).data).toMatch(/^550 5\.7\.1 .*rule subject\.forbidden/);
    const kept = await gw.waitForLog((l) => l.event === 'transaction' && l.verdict === 'quarantine');
    expect(gw.logs.filter((l) => l.event === 'strike')).toEqual([expect.objectContaining({ strike: 'content_rule', ref: kept.ref })]);
    expect(upstream.messages).toHaveLength(0);
  });

  it('a relayed message gets its 250 without waiting for its strikes to be recorded', async () => {
    const dir = policyDir();
    const file = join(dir, 'policy.yaml');
    writeFileSync(file, readFileSync(file, 'utf8').replace('    action: reject\n    reason: content.forbidden\n', '    action: tag\n'));
    // A ladder that never answers (a Redis or a disk that hangs): the message is delivered already.
    const recorded: string[] = [];
    const upstream = await FakeUpstream.start();
    const gw = await startGateway(upstream.port, { policy: { dir, watch: false } }, { strikes: { record: (e) => (recorded.push(e.event), new Promise(() => undefined)) } });
    try {
      const reply = await Promise.race([send(gw.port('trusted'), 'FORBIDDEN-SUBJECT'), new Promise((resolve) => setTimeout(() => resolve('no reply within 5 s'), 5000))]);
      expect(reply).toMatchObject({ data: expect.stringMatching(/^250 /) });
      expect(upstream.messages).toHaveLength(1);
      expect(recorded).toEqual(['content_rule']);
    } finally {
      await gw.stop();
      await upstream.stop();
    }
  });

  it('monitor mode lets the message through and counts what the rule would have done', async () => {
    const { gw, upstream } = await setup(policyDir());
    const { data } = await send(gw.port('trusted'), 'hello', 'someone@watched.example');
    expect(data).toMatch(/^250 /);
    expect(upstream.messages).toHaveLength(1);
    const line = await gw.waitForLog((l) => l.event === 'transaction');
    expect(line.would).toEqual([{ rule: 'sender.watch', action: 'reject', phase: 'mail' }]);
    const metrics = await gw.metrics.registry.metrics();
    expect(metrics).toMatch(/douane_policy_would_total\{rule="sender\.watch",action="reject"\} 1/);
    expect(gw.logs.some((l) => l.event === 'strike')).toBe(false);
  });

  it('a tag rule marks the relayed message with X-Douane-Tags', async () => {
    const dir = policyDir();
    writeFileSync(
      join(dir, 'policy.yaml'),
      readFileSync(join(dir, 'policy.yaml'), 'utf8').replace(
        'rules:\n',
        'rules:\n  - id: tag.hello\n    description: tags hello\n    article: "4.3"\n    when: { subject: { contains: hello } }\n    action: tag\n',
      ),
    );
    const { gw, upstream } = await setup(dir);
    expect((await send(gw.port('trusted'), 'hello world')).data).toMatch(/^250 /);
    expect(upstream.messages[0]!.raw.toString()).toMatch(/^X-Douane-Tags: tag\.hello\r\nFrom: user1@example\.test\r\n/);
  });

  it('folds X-Douane-Tags when many tags would make a long line', async () => {
    const dir = policyDir();
    const ids = Array.from({ length: 12 }, (_, i) => `content.a-rather-long-rule-identifier-${i}`);
    const rules = ids.map((id) => `  - id: ${id}\n    description: tags hello\n    article: "4.3"\n    when: { subject: { contains: hello } }\n    action: tag\n`).join('');
    writeFileSync(join(dir, 'policy.yaml'), readFileSync(join(dir, 'policy.yaml'), 'utf8').replace('rules:\n', `rules:\n${rules}`));
    const { gw, upstream } = await setup(dir);
    expect((await send(gw.port('trusted'), 'hello world')).data).toMatch(/^250 /);
    const header = /^X-Douane-Tags: (?:.*\r\n )*.*\r\n/.exec(upstream.messages[0]!.raw.toString())![0];
    const lines = header.split('\r\n').slice(0, -1);
    expect(lines.length).toBeGreaterThan(4);
    for (const line of lines) expect(line.length).toBeLessThanOrEqual(78);
    expect(header.replace(/^X-Douane-Tags: /, '').replace(/\r\n /g, ' ').trim().split(/, ?/)).toEqual(ids);
  });
});

describe('policy reload', () => {
  it('analyses the new patterns of a reload while sessions go on, then refuses a pattern it cannot bound', async () => {
    const dir = policyDir();
    const { gw, upstream } = await setup(dir);
    const before = gw.gateway.policies.current.version;
    // A back-reference is refused at load; it is analysed first, with the other new patterns, and the
    // analysis gives it at least a second of crafted inputs: sessions must go on meanwhile.
    writeFileSync(
      join(dir, 'policy.yaml'),
      readFileSync(join(dir, 'policy.yaml'), 'utf8').replace(
        'rules:\n',
        "rules:\n  - id: tag.repeated-word\n    description: a word twice\n    article: \"4.3\"\n    when: { subject: { matches: '(\\w+)\\s\\1' } }\n    action: tag\n",
      ),
    );
    let reloaded = false;
    const reloading = gw.gateway.policies.reload('test').finally(() => (reloaded = true));
    expect((await send(gw.port('trusted'), 'during the reload')).data).toMatch(/^250 /);
    expect(reloaded).toBe(false);
    const result = await reloading;
    expect(result).toMatchObject({ ok: false, version: before });
    expect(result.problems![0]).toMatch(/policy\.yaml:\d+:\d+: rules\[0\]\.when\.subject\.matches uses a back-reference \(\\1\)/);
    expect(upstream.messages).toHaveLength(1);
  });

  it('keeps the last good policy when the new one is invalid, and says so in logs and metrics', async () => {
    const dir = policyDir();
    const { gw } = await setup(dir);
    const before = gw.gateway.policies.current.version;
    writeFileSync(join(dir, 'policy.yaml'), readFileSync(join(dir, 'policy.yaml'), 'utf8').replace('messages_per_hour: 10000', 'messages_per_hour: -1'));
    const result = await gw.gateway.policies.reload('test');
    expect(result).toMatchObject({ ok: false, version: before });
    expect(result.problems![0]).toMatch(/policy\.yaml:5:24: plans\.basic\.messages_per_hour must be a positive integer/);
    expect(gw.gateway.policies.current.version).toBe(before);
    const failed = await gw.waitForLog((l) => l.event === 'policy_reload_failed');
    expect(failed.kept).toBe(before);
    const metrics = await gw.metrics.registry.metrics();
    expect(metrics).toMatch(/douane_policy_reloads_total\{result="failure"\} 1/);
    expect(metrics).toMatch(/douane_policy_last_reload_success 0/);
    // Still enforcing the old policy.
    expect((await send(gw.port('trusted'), 'FORBIDDEN-SUBJECT')).data).toMatch(/^550 /);
  });

  it('exports the policy version in force and the one it replaced, not every version loaded since the start', async () => {
    const dir = policyDir();
    const { gw } = await setup(dir);
    const versions = [gw.gateway.policies.current.version];
    for (let i = 0; i < 3; i++) {
      writeFileSync(join(dir, 'policy.yaml'), `${readFileSync(join(dir, 'policy.yaml'), 'utf8')}# change ${i}\n`);
      versions.push((await gw.gateway.policies.reload('test')).version);
    }
    const series = (await gw.metrics.registry.getSingleMetricAsString('douane_policy_info')).split('\n').filter((l) => l.startsWith('douane_policy_info{'));
    expect(series.sort()).toEqual([`douane_policy_info{version="${versions[2]}"} 0`, `douane_policy_info{version="${versions[3]}"} 1`].sort());
  });

  it('refuses a reload that would drop a section (its file removed or renamed), until a file says so', async () => {
    const dir = policyDir();
    writeFileSync(join(dir, 'allowlists.yaml'), 'allowlists:\n  never_suspend: [boss@example.test]\n');
    const { gw } = await setup(dir);
    const before = gw.gateway.policies.current.version;
    rmSync(join(dir, 'allowlists.yaml'));
    const result = await gw.gateway.policies.reload('test');
    expect(result).toMatchObject({ ok: false, version: before });
    expect(result.problems).toEqual([expect.stringMatching(/allowlists\.yaml: allowlists is defined by no policy file now \(a file removed or renamed\?\): the policy in force, which defines it here, stays; to take the section out, say so in a file \(allowlists: \{\}\)$/)]);
    expect(gw.gateway.policies.current.doc.allowlists.never_suspend).toEqual(['boss@example.test']);
    writeFileSync(join(dir, 'allowlists.yaml'), 'allowlists: {}\n');
    expect(await gw.gateway.policies.reload('test')).toMatchObject({ ok: true, changed: true });
    expect(gw.gateway.policies.current.doc.allowlists.never_suspend).toEqual([]);
  });

  it('reloads on a file change, and a transaction in flight finishes under the policy it started with', async () => {
    const dir = policyDir();
    const { gw } = await setup(dir);
    gw.gateway.policies.watch(50);
    const v1 = gw.gateway.policies.current.version;
    const c = await RawSmtp.connect(gw.port('trusted'));
    await c.reply();
    await c.command('EHLO t');
    await c.command('MAIL FROM:<user1@example.test>');
    await c.command('RCPT TO:<user2@example.test>');
    // The new policy no longer forbids the subject.
    writeFileSync(join(dir, 'policy.yaml'), readFileSync(join(dir, 'policy.yaml'), 'utf8').replace('FORBIDDEN-SUBJECT', 'SOMETHING-ELSE'));
    const reloaded = await gw.waitForLog((l) => l.event === 'policy_reloaded');
    expect(reloaded.previous).toBe(v1);
    await c.command('DATA');
    c.write('From: user1@example.test\r\nSubject: FORBIDDEN-SUBJECT\r\n\r\nx\r\n.\r\n');
    expect(await c.reply()).toMatch(/^550 .*rule subject\.forbidden/);
    c.close();
    const old = await gw.waitForLog((l) => l.event === 'transaction');
    expect(old.policy).toBe(v1);
    // A new transaction runs under the new policy.
    expect((await send(gw.port('trusted'), 'FORBIDDEN-SUBJECT')).data).toMatch(/^250 /);
    const lines = gw.transactions();
    expect(lines[lines.length - 1]!.policy).toBe(reloaded.version);
  });

  it('keeps reloading after the directory is replaced whole, as deployments do (mv, or a swapped link)', async () => {
    const dir = policyDir();
    const { gw } = await setup(dir);
    gw.gateway.policies.watch(50, 200);
    const v1 = gw.gateway.policies.current.version;
    const next = policyDir();
    writeFileSync(join(next, 'policy.yaml'), readFileSync(join(next, 'policy.yaml'), 'utf8').replace('FORBIDDEN-SUBJECT', 'OTHER-SUBJECT'));
    renameSync(dir, `${dir}.old`);
    renameSync(next, dir);
    const replaced = await gw.waitForLog((l) => l.event === 'policy_reloaded' && l.trigger === 'directory replaced', 5000);
    expect(replaced.previous).toBe(v1);
    // The new directory is watched: an edit in it is a reload too.
    writeFileSync(join(dir, 'policy.yaml'), readFileSync(join(dir, 'policy.yaml'), 'utf8').replace('OTHER-SUBJECT', 'THIRD-SUBJECT'));
    const edited = await gw.waitForLog((l) => l.event === 'policy_reloaded' && l.trigger === 'file change', 5000);
    expect(edited.previous).toBe(replaced.version);
    expect((await send(gw.port('trusted'), 'FORBIDDEN-SUBJECT')).data).toMatch(/^250 /);
  });

  it('follows a Kubernetes ConfigMap volume: files linked through "..data", which is swapped to a new version at once', async () => {
    // What kubelet's atomic writer does: each version in a "..<timestamp>" directory, "..data" linking to
    // the current one, each file a link through "..data"; an update links "..data_tmp" and renames it over "..data".
    const dir = mkdtempSync(join(tmpdir(), 'douane-configmap-'));
    const original = readFileSync('fixtures/policies/minimal/policy.yaml', 'utf8');
    const version = (name: string, text: string) => {
      mkdirSync(join(dir, name));
      writeFileSync(join(dir, name, 'policy.yaml'), text);
    };
    version('..2026_11_27_10_00_00.1', original);
    symlinkSync('..2026_11_27_10_00_00.1', join(dir, '..data'));
    symlinkSync('..data/policy.yaml', join(dir, 'policy.yaml'));
    const { gw } = await setup(dir);
    gw.gateway.policies.watch(50);
    const v1 = gw.gateway.policies.current.version;
    expect((await send(gw.port('trusted'), 'FORBIDDEN-SUBJECT')).data).toMatch(/^550 /);

    version('..2026_11_27_10_05_00.2', original.replace('FORBIDDEN-SUBJECT', 'SOMETHING-ELSE'));
    symlinkSync('..2026_11_27_10_05_00.2', join(dir, '..data_tmp'));
    renameSync(join(dir, '..data_tmp'), join(dir, '..data'));
    rmSync(join(dir, '..2026_11_27_10_00_00.1'), { recursive: true });
    const reloaded = await gw.waitForLog((l) => l.event === 'policy_reloaded', 5000);
    expect(reloaded).toMatchObject({ previous: v1, changed: true });
    expect((await send(gw.port('trusted'), 'FORBIDDEN-SUBJECT')).data).toMatch(/^250 /);
  });

  it('under load, every transaction sees exactly one policy version, never a mix', async () => {
    const dir = policyDir();
    const { gw } = await setup(dir);
    const original = readFileSync(join(dir, 'policy.yaml'), 'utf8');
    // Version A forbids the subject at DATA and watches nothing; version B forbids nothing and
    // rejects the sender at MAIL. A transaction judged by a mix would show B's MAIL and A's DATA.
    const versionB = original.replace('FORBIDDEN-SUBJECT', 'NEVER-USED').replace(/(id: sender\.watch[\s\S]*?)mode: monitor\n/, '$1mode: enforce\n');
    const vA = gw.gateway.policies.current.version;
    let flips = 0;
    const flipper = setInterval(() => {
      writeFileSync(join(dir, 'policy.yaml'), flips++ % 2 === 0 ? versionB : original);
      void gw.gateway.policies.reload('test');
    }, 15);
    // Waves of 20 concurrent transactions until the policy has changed under them several times and
    // both versions judged some: however fast the machine, the flips land among transactions in flight.
    const results: Awaited<ReturnType<typeof send>>[] = [];
    for (let wave = 0; wave < 20 && (flips < 4 || new Set(gw.transactions().map((l) => l.policy)).size < 2); wave++) {
      results.push(...(await Promise.all(Array.from({ length: 20 }, (_, i) => send(gw.port('trusted'), 'FORBIDDEN-SUBJECT', i % 2 ? 'x@watched.example' : 'user1@example.test')))));
    }
    clearInterval(flipper);
    expect(flips).toBeGreaterThan(3);
    const lines = gw.transactions();
    expect(lines).toHaveLength(results.length);
    const versions = new Set(lines.map((l) => l.policy));
    expect(versions.size).toBeGreaterThan(1);
    for (const l of lines) {
      if (l.policy === vA) {
        // A: the watched sender is only monitored, the subject is refused at DATA.
        expect(l.verdict).toBe('reject');
        expect(l.rule).toBe('subject.forbidden');
      } else {
        // B: the subject passes; the watched sender is refused at MAIL.
        if (String(l.from).endsWith('@watched.example')) expect(l).toMatchObject({ verdict: 'reject', rule: 'sender.watch' });
        else expect(l.verdict).toBe('accept');
      }
    }
    expect(results.every((r) => r.mail.startsWith('250') || r.mail.startsWith('550'))).toBe(true);
  });
});
