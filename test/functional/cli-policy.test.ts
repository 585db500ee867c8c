// `douane policy check | test | explain | diff | fields` as the security team runs them, against the
// shipped policy and the fixture directories in fixtures/policies/ (valid and invalid).

import { execFile } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const exec = promisify(execFile);

function douane(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return exec('node', ['dist/cli.js', 'policy', ...args], { env: { PATH: process.env.PATH!, ...(process.env.TMPDIR ? { TMPDIR: process.env.TMPDIR } : {}) } }).then(
    (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  );
}

describe('douane policy check', () => {
  it('validates the shipped policy and prints its version and rules by phase', async () => {
    const r = await douane(['check', 'policies']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^policies: ok — version [0-9a-f]{12}\n/);
    expect(r.stdout).toMatch(/mail rules: account\.closed, account\.nonpayment/);
    expect(r.stdout).toMatch(/data rules: malware\.found, .*content\.phishing-lure \(monitor\)/);
    expect(r.stdout).not.toMatch(/warning/);
  });

  it('refuses an empty directory argument and a second one (64), rather than check something else', async () => {
    // An unset variable: "" would otherwise mean the shipped policies, and say ok.
    expect(await douane(['check', ''])).toMatchObject({ code: 64, stderr: 'douane: an empty argument (""): a variable that is not set?\n' });
    expect(await douane(['check', '--config='])).toMatchObject({ code: 64, stderr: 'douane: --config is empty: a variable that is not set?\n' });
    expect(await douane(['check', 'policies', 'fixtures/policies/bad-limit'])).toMatchObject({ code: 64, stderr: 'douane: policy check takes one argument; unexpected: "fixtures/policies/bad-limit"\n' });
    expect((await douane(['test', 'policies', 'fixtures/policies/bad-limit'])).code).toBe(64);
    expect((await douane(['diff', 'a', 'b', 'c', '--corpus', 'd'])).code).toBe(64);
  });

  it('exits 1 with file:line:col and key for each invalid fixture directory', async () => {
    for (const [dir, expected] of [
      ['bad-limit', /bad-limit\/limits\.yaml:5:24: plans\.basic\.messages_per_hour must be a positive integer/],
      ['unknown-key', /unknown-key\/limits\.yaml:13:5: plans\.basic\.mesages_per_week is not a known key/],
      ['bad-references', /bad-references\/limits\.yaml:13:15: default_plan names plan "premium"/],
      ['bad-conditions', /bad-conditions\/rules\.yaml:5:30: rules\[0\]\.when\.body\.matches may take exponential time/],
      ['duplicate-section', /duplicate-section\/b\.yaml:2:1: plans is already defined in/],
      ['bad-ladder', /bad-ladder\/strikes\.yaml:6:13: strikes\.ladder\[1\]\.at must be greater/],
      ['yaml-syntax', /yaml-syntax\/policy\.yaml:\d+:\d+: YAML:/],
    ] as const) {
      const r = await douane(['check', `fixtures/policies/${dir}`]);
      expect(r.code, dir).toBe(1);
      expect(r.stderr, dir).toMatch(expected);
    }
  });

  it('with --config, warns of a message size above what the policy scans: taken whole, then refused', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-sizes-'));
    try {
      const settings = (size: string, clamd = 'clamd: { hosts: [{ socket: /run/clamav/clamd.ctl }] }') =>
        ['listeners: { t: { mode: trusted, address: 127.0.0.1, port: 2525, allow: [127.0.0.1] } }', 'upstream: { host: mta.internal }', clamd, `smtp: { max_message_size: ${size} }`, `state_dir: ${dir}/state`, `spool: { dir: ${dir}/spool }`, `policy: { dir: ${process.cwd()}/policies }`, ''].join('\n');
      writeFileSync(join(dir, 'big.yaml'), settings('50M'));
      const r = await douane(['check', '--config', join(dir, 'big.yaml')]);
      expect(r.code).toBe(0);
      expect(r.stdout).toContain('  warning: smtp.max_message_size (52428800 bytes) is above the policy\'s scanning.max_size (26214400 bytes): a message between the two is taken whole, then refused (552 5.3.4) as too big to scan');
      writeFileSync(join(dir, 'same.yaml'), settings('25M'));
      expect((await douane(['check', '--config', join(dir, 'same.yaml')])).stdout).not.toMatch(/warning/);
      writeFileSync(join(dir, 'unscanned.yaml'), settings('50M', 'clamd: none'));
      expect((await douane(['check', '--config', join(dir, 'unscanned.yaml')])).stdout).not.toMatch(/warning/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('with --config, warns of a rule naming a listener the configuration does not have, and of a class of service mapped to no plan', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-names-'));
    try {
      cpSync('policies', join(dir, 'policies'), { recursive: true });
      const rules = join(dir, 'policies', 'rules.yaml');
      writeFileSync(rules, readFileSync(rules, 'utf8').replace(/^rules:\n/m, 'rules:\n  - { id: test.webmail, description: d, article: "4.3", when: { listener: { in: [webmail, submision] } }, action: tag }\n'));
      const config = [
        'listeners: { submission: { mode: starttls, address: 127.0.0.1, port: 2587 }, webmail: { mode: trusted, address: 127.0.0.1, port: 2525, allow: [127.0.0.1] } }',
        'tls: { insecure_dev: true }',
        'upstream: { host: mta.internal }',
        'clamd: none',
        'lifecycle: { adapter: zimbra, zimbra: { url: "https://zimbra.internal:7071/service/admin/soap", admin_user: a, admin_password: b, cos_plans: { cos-1: pro, cos-2: entreprize } } }',
        `state_dir: ${dir}/state`,
        `spool: { dir: ${dir}/spool }`,
        `policy: { dir: ${dir}/policies }`,
        '',
      ].join('\n');
      writeFileSync(join(dir, 'douane.yaml'), config);
      const r = await douane(['check', join(dir, 'policies'), '--config', join(dir, 'douane.yaml')]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout.split('\n').filter((l) => l.includes('warning:'))).toEqual([
        expect.stringMatching(/warning: .*rules\.yaml:\d+: rule test\.webmail compares listener with "submision", which is not a listener of the configuration \(submission, webmail\): that comparison never holds$/),
        '  warning: lifecycle.zimbra.cos_plans maps class of service cos-2 to plan "entreprize", which the policy does not define (standard, pro, entreprise): its accounts get default_plan (standard)',
      ]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('warns when no enforced rule rests on an abuse article of the contract', async () => {
    const r = await douane(['check', 'fixtures/policies/minimal']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/warning: no enforced rule rests on art\. 4\.1, 4\.4, 4\.6, 6, 8 of the contract/);
  });
});

describe('douane policy test', () => {
  it('the example of policies/README.md (Policy tests) passes against the shipped policy', async () => {
    const readme = readFileSync('policies/README.md', 'utf8');
    const example = /```yaml\n# policies\/tests\/example\.yaml\n([\s\S]*?)```/.exec(readme)![1]!;
    const dir = mkdtempSync(join(tmpdir(), 'douane-readme-'));
    try {
      cpSync('policies', join(dir, 'policies'), { recursive: true });
      cpSync('fixtures/messages', join(dir, 'fixtures/messages'), { recursive: true });
      for (const f of readdirSync(join(dir, 'policies/tests'))) rmSync(join(dir, 'policies/tests', f));
      writeFileSync(join(dir, 'policies/tests/example.yaml'), example);
      const r = await exec('node', [join(process.cwd(), 'dist/cli.js'), 'policy', 'test', 'policies'], { cwd: dir });
      expect(r.stdout).toMatch(/PASS: 3\/3/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('runs the shipped policy\'s tests: all pass', async () => {
    const r = await douane(['test', 'policies']);
    expect(r.stdout).toMatch(/PASS: (\d+)\/\1 /);
    expect(r.code).toBe(0);
  });

  it('names a test file it cannot read (a dangling link), rather than finding no tests', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-policy-tests-'));
    try {
      cpSync('fixtures/policies/failing-tests', dir, { recursive: true });
      symlinkSync(join(dir, 'gone.yaml'), join(dir, 'tests/moved.yaml'));
      const r = await douane(['test', dir]);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/tests\/moved\.yaml: cannot be read: a link to a file that does not exist/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('names both places it looked for a test message: beside the policy directory and from the current one', async () => {
    // The shipped policy copied on its own (/etc/douane/policies), its test messages left behind.
    const root = mkdtempSync(join(tmpdir(), 'douane-policy-copy-'));
    try {
      cpSync('policies', join(root, 'policies'), { recursive: true });
      mkdirSync(join(root, 'elsewhere'));
      const r = await exec('node', [join(process.cwd(), 'dist/cli.js'), 'policy', 'test', join(root, 'policies')], { cwd: join(root, 'elsewhere') }).then(
        () => ({ code: 0, stderr: '' }),
        (e: { code: number; stderr: string }) => e,
      );
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(`cases[0].message cannot be read: neither ${root}/fixtures/messages/`);
      expect(r.stderr).toContain(`(beside the policy directory) nor ${root}/elsewhere/fixtures/messages/`);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it('reports a failing case with its file and line, and exits 1', async () => {
    const r = await douane(['test', 'fixtures/policies/failing-tests']);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/FAIL {2}wrong on purpose {2}\(fixtures\/policies\/failing-tests\/tests\/cases\.yaml:5\)\n\s+action: expected reject, got accept/);
    expect(r.stdout).toMatch(/PASS: 1\/2 {3}FAIL: 1/);
  });
});

describe('douane policy explain', () => {
  it('prints every check and rule with file:line, the outcome and the reply', async () => {
    const r = await douane(['explain', 'fixtures/messages/exe-renamed-pdf.eml', '--account', 'user1@example.test', '--rcpt', 'user2@example.test', '--dir', 'policies']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^MAIL$/m);
    expect(r.stdout).toMatch(/mail\.sender-alignment +pass +\{"aligned":true\}/);
    expect(r.stdout).toMatch(/● attachments\.executable {2}policies\/rules\.yaml:\d+\n +match: attachments\.detected_types \{"in":\["executable","script"\]\} \(value: \["executable"\]\)/);
    expect(r.stdout).toMatch(/OUTCOME: quarantine at data by rule attachments\.executable \(art\. 4\.6, policies\/rules\.yaml:\d+\)/);
    expect(r.stdout).toMatch(/reply: 550 5\.7\.1 Message refused: it carries a type of attachment that may not be sent/);
    expect(r.stdout).toMatch(/strikes: content_rule \+2/);
  });

  it('takes live-service facts from --given, and says when the usage is wrong', async () => {
    const { writeFileSync, mkdtempSync } = await import('node:fs');
    const { join } = await import('node:path');
    const { tmpdir } = await import('node:os');
    const given = join(mkdtempSync(join(tmpdir(), 'douane-given-')), 'given.yaml');
    writeFileSync(given, 'limits: { exceeded: [messages_per_hour], retry_after: 1800 }\n');
    const r = await douane(['explain', 'fixtures/messages/clean-text.eml', '--account', 'user1@example.test', '--rcpt', 'x@example.net', '--dir', 'policies', '--given', given]);
    expect(r.stdout).toMatch(/OUTCOME: tempfail at mail by rule limits\.message-hourly/);
    expect(r.stdout).toMatch(/reply: 450 4\.7\.1 Sending limit reached \(messages per hour\); try again in 30 minutes\./);
    const missing = await douane(['explain', 'fixtures/messages/no-such.eml', '--account', 'user1@example.test', '--rcpt', 'x@example.net', '--dir', 'policies']);
    expect(missing).toMatchObject({ code: 1, stderr: 'douane: cannot read the message fixtures/messages/no-such.eml: no such file\n' });
    const bad = await douane(['explain', 'fixtures/messages/clean-text.eml']);
    expect(bad.code).toBe(64);
    expect(bad.stderr).toMatch(/explain needs MESSAGE\.eml, --account and at least one --rcpt/);
    // A misspelled fact would be ignored and the explanation wrong: it is refused, where it is.
    writeFileSync(given, 'scan: { resut: infected }\n');
    const typo = await douane(['explain', 'fixtures/messages/clean-text.eml', '--account', 'user1@example.test', '--rcpt', 'x@example.net', '--dir', 'policies', '--given', given]);
    expect(typo.code).toBe(1);
    expect(typo.stderr).toContain(`${given}:1:9: scan.resut is not a known key (did you mean "result"?)`);
  });
});

describe('douane policy diff', () => {
  const corpusSize = readdirSync('fixtures/messages').filter((n) => n.endsWith('.eml')).length;

  it('shows which messages of a corpus change outcome, by rule and by change', async () => {
    const r = await douane(['diff', 'fixtures/policies/minimal', 'fixtures/policies/minimal-strict', '--corpus', 'fixtures/messages']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`: (\\d+) of ${corpusSize} messages change outcome`));
    expect(r.stdout).toMatch(/attachments\.none +\+\d+ now decided by it/);
    expect(r.stdout).toMatch(/accept → reject by attachments\.none/);
    expect(r.stdout).toMatch(/ {2}clean-attachments\.eml: accept → reject by attachments\.none/);
    expect(r.stdout).not.toMatch(/clean-text\.eml/);
    expect(r.stderr).toMatch(`diff: ${corpusSize}/${corpusSize} messages`);
  });

  it('takes a message\'s envelope and given facts from its sidecar, and names the line of a mistake in it', async () => {
    const corpus = mkdtempSync(join(tmpdir(), 'douane-corpus-'));
    cpSync('fixtures/messages/clean-text.eml', join(corpus, 'infected.eml'));
    writeFileSync(join(corpus, 'infected.json'), JSON.stringify({ account: 'user1@example.test', recipients: ['x@example.net'], given: { scan: { result: 'infected', signature: 'Test.Sig' } } }, null, 2));
    const r = await douane(['diff', 'fixtures/policies/minimal', 'policies', '--corpus', corpus, '--json']);
    expect(JSON.parse(r.stdout)).toMatchObject({ changed: [{ file: 'infected.eml', before: 'accept', after: 'quarantine by malware.found' }], errors: [] });

    // A misspelt fact would be computed rather than given, and the diff would say nothing of it.
    writeFileSync(join(corpus, 'infected.json'), JSON.stringify({ account: 'user1@example.test', recipients: ['x@example.net'], given: { scan: { resut: 'infected' } } }, null, 2));
    const typo = await douane(['diff', 'fixtures/policies/minimal', 'policies', '--corpus', corpus]);
    expect(typo.code).toBe(1);
    expect(typo.stderr).toContain(`could not evaluate infected.eml: ${join(corpus, 'infected.json')}:8:7: given.scan.resut is not a known key (did you mean "result"?)`);
    writeFileSync(join(corpus, 'infected.json'), JSON.stringify({ account: 'user1@example.test', recipients: 'x@example.net' }));
    expect((await douane(['diff', 'fixtures/policies/minimal', 'policies', '--corpus', corpus])).stderr).toMatch(/infected\.json:1:\d+: recipients /);
    rmSync(corpus, { recursive: true, force: true });
  });

  it('reads messages named .EML with their sidecars; a corpus with no message is an error, not "nothing changes"', async () => {
    const corpus = mkdtempSync(join(tmpdir(), 'douane-corpus-'));
    const empty = await douane(['diff', 'fixtures/policies/minimal', 'policies', '--corpus', corpus]);
    expect(empty).toMatchObject({ code: 1, stderr: `douane: ${corpus} holds no message (*.eml): nothing to compare\n` });
    cpSync('fixtures/messages/clean-text.eml', join(corpus, 'M1.EML'));
    writeFileSync(join(corpus, 'M1.json'), JSON.stringify({ account: 'user1@example.test', recipients: ['x@example.net'], given: { scan: { result: 'infected', signature: 'Test.Sig' } } }));
    const r = await douane(['diff', 'fixtures/policies/minimal', 'policies', '--corpus', corpus, '--json']);
    expect(JSON.parse(r.stdout)).toMatchObject({ total: 1, changed: [{ file: 'M1.EML', after: 'quarantine by malware.found' }] });
    rmSync(corpus, { recursive: true, force: true });
  });

  it('walks a corpus with a folder linked into itself once, and reports a message linked to nothing as one it could not read', async () => {
    const { symlinkSync } = await import('node:fs');
    const corpus = mkdtempSync(join(tmpdir(), 'douane-corpus-'));
    cpSync('fixtures/messages/clean-text.eml', join(corpus, 'a.eml'));
    symlinkSync('.', join(corpus, 'archive'));
    symlinkSync(join(corpus, 'gone.txt'), join(corpus, 'gone.eml'));
    const r = await douane(['diff', 'fixtures/policies/minimal', 'policies', '--corpus', corpus, '--json']);
    const report = JSON.parse(r.stdout) as { total: number; errors: { file: string; error: string }[] };
    expect(report.total).toBe(2);
    expect(report.errors).toEqual([{ file: 'gone.eml', error: expect.stringMatching(/ENOENT/) }]);
    rmSync(corpus, { recursive: true, force: true });
  });

  it('reports nothing when the policies are the same', async () => {
    const r = await douane(['diff', 'fixtures/policies/minimal', 'fixtures/policies/minimal', '--corpus', 'fixtures/messages', '--json']);
    expect(JSON.parse(r.stdout)).toMatchObject({ total: corpusSize, changed: [], errors: [] });
  });
});

describe('douane policy fields', () => {
  it('lists the fields with type, phase and meaning', async () => {
    const r = await douane(['fields']);
    expect(r.stdout).toMatch(/recipients\.count +number +data +number of accepted recipients/);
    expect(r.stdout).toMatch(/scan\.result +string +data/);
  });
});
