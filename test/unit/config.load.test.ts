// Configuration: every kind of mistake names the file, line, column and key; env overrides name the variable.

import { chmodSync, chownSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { makeSelfSigned } from '../../src/smtp/tls.js';
import { loadConfig, parseConfig } from '../../src/config/load.js';
import { ValidationError } from '../../src/validate/source.js';

/**
 * Most texts below are about other keys. Every configuration must say where clamd is or that there is none,
 * so this appends `clamd: none` to a text that does not name it; at the end, where it moves no line.
 */
function parse(name: string, text: string, env: Record<string, string | undefined> = {}, opts: { files?: boolean; writable?: boolean } = {}) {
  return parseConfig(name, /^clamd:/m.test(text) ? text : `${text.replace(/\n?$/, '\n')}clamd: none\n`, env, opts);
}

function problems(fn: () => unknown): string[] {
  try {
    fn();
  } catch (err) {
    if (err instanceof ValidationError) return err.message.split('\n');
    throw err;
  }
  throw new Error('expected a ValidationError');
}

describe('configuration loading', () => {
  it('starts from the embedded default when no file is given', () => {
    const { config, source } = loadConfig({ env: {} });
    expect(source).toBe('(embedded default)');
    expect(config.listeners.submission).toMatchObject({ mode: 'starttls', address: '127.0.0.1', port: 2587 });
    expect(config.listeners.trusted!.allow!.map((c) => c.text)).toEqual(['127.0.0.1/32', '::1/128']);
    expect(config.upstream.timeouts).toEqual({ connect: 10_000, command: 60_000, data: 600_000, keepalive: 60_000 });
    expect(config.smtp.max_message_size).toBe(26_214_400);
    expect(Object.isFrozen(config.smtp)).toBe(true);
  });

  it('reads a valid file with units', () => {
    const { config } = loadConfig({ file: 'fixtures/config/valid.yaml', env: {} });
    expect(config.upstream.timeouts.command).toBe(45_000);
    expect(config.smtp.max_message_size).toBe(30 * 1024 * 1024);
    expect(config.upstream.port).toBe(587);
  });

  it('names file:line:col and key for an unknown key, with a suggestion', () => {
    expect(problems(() => loadConfig({ file: 'fixtures/config/unknown-key.yaml', env: {} }))).toEqual([
      'fixtures/config/unknown-key.yaml:7:3: upstream.prot is not a known key (did you mean "port"?); known keys: host, port, trusted_port, tls, verify_certificate, ca, servername, xclient, helo_name, timeouts, pool',
    ]);
  });

  it('takes no name of a built-in object property for a known key', () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-config-'));
    const file = join(dir, 'douane.yaml');
    writeFileSync(file, readFileSync('fixtures/config/valid.yaml', 'utf8').replace('  max_message_size: 30M\n', '  max_message_size: 30M\n  constructor: 12\n  toString: yes\n  __proto__: { bogus: 1 }\n'));
    const all = problems(() => loadConfig({ file, env: {} })).join('\n');
    expect(all).toMatch(/douane\.yaml:\d+:\d+: smtp\.constructor is not a known key/);
    expect(all).toMatch(/douane\.yaml:\d+:\d+: smtp\.toString is not a known key/);
    expect(all).toMatch(/douane\.yaml:\d+:\d+: smtp\.__proto__ is not a known key/);
  });

  it('reports every bad value at once, each with its position', () => {
    expect(problems(() => loadConfig({ file: 'fixtures/config/bad-types.yaml', env: {} }))).toEqual([
      'fixtures/config/bad-types.yaml:4:11: listeners.submission.port must be an integer between 0 and 65535 (got 70000)',
      'fixtures/config/bad-types.yaml:10:14: upstream.timeouts.command must be a duration such as 500ms, 30s, 5m, 2h or 1d (got 30)',
      'fixtures/config/bad-types.yaml:13:21: smtp.max_message_size must be a size in bytes such as 52428800, 512K, 25M or 1G (got "25 megabytes")',
      'fixtures/config/bad-types.yaml:12:19: smtp.max_recipients must be an integer between 1 and 100000 (got -1)',
    ]);
  });

  it('refuses at load what would fail later: URLs that cannot be read, host:port in a host, a reply text on two lines, what YAML tags make', () => {
    const base = 'listeners: { t: { mode: trusted, port: 0, allow: [127.0.0.1] } }\nupstream: { host: x }\n';
    expect(
      problems(() =>
        parse(
          't.yaml',
          base +
            'lifecycle: { adapter: zimbra, zimbra: { url: "https://", admin_user: a, admin_password: b } }\n' +
            'limits: { redis: { url: "redis://:pw@h:99999/0" } }\n' +
            'clamd: { hosts: [ { host: "clamd.internal:3310", port: 3310 } ] }\n' +
            'enforcement: { contact: "support@example.net\\r\\n250 OK", webhook: { url: "https://exa mple.com/x" }, notify: { from: "not an address", smtp: { host: "a b", port: 25 } } }\n',
        ),
      ),
    ).toEqual([
      't.yaml:5:27: clamd.hosts[0].host must be a host name such as mta.example.com (an internationalised one in its xn-- form), or an IP address such as 192.0.2.10 or 2001:db8::10, without a port (the port has a key of its own) (got "clamd.internal:3310")',
      't.yaml:3:46: lifecycle.zimbra.url is not a URL that can be read (expected the admin SOAP URL, e.g. https://zimbra.internal:7071/service/admin/soap)',
      expect.stringMatching(/^t\.yaml:6:25: enforcement\.contact must be one line of text \(no line break or control character: it is shown in SMTP replies\) \(got "support@example\.net\\r\\n250 OK"\)$/),
      't.yaml:6:118: enforcement.notify.from must be an address, or a name and an address ("Abuse desk <abuse@example.net>") (got "not an address")',
      expect.stringMatching(/^t\.yaml:6:\d+: enforcement\.notify\.smtp\.host must be a host name .* \(got "a b"\)$/),
      't.yaml:6:74: enforcement.webhook.url is not a URL that can be read (expected an http(s):// URL)',
      // The password in it is not repeated.
      't.yaml:4:25: limits.redis.url is not a URL that can be read (expected a redis:// or rediss:// URL)',
    ]);
    // A name with the address, as mail programs write it, is one.
    expect(parse('t.yaml', base + 'enforcement: { notify: { from: "Abuse desk <abuse@example.net>" } }\n').config.enforcement.notify.from).toBe('Abuse desk <abuse@example.net>');
    // A tag's value, which would leave every key of the section unchecked and at its default.
    expect(problems(() => parse('t.yaml', base + 'smtp: !!omap [ { max_recipients: 0 } ]\nadmin: !!set { token }\n'))).toEqual([
      't.yaml:3:14: smtp must be a mapping of keys to values (got a YAML !!omap or !!pairs (write a plain mapping))',
      't.yaml:4:14: admin must be a mapping of keys to values (got a YAML !!set (write a list))',
    ]);
  });

  it('says what the minimum is when a well-formed value is under it', () => {
    const base = 'listeners: { t: { mode: trusted, port: 0, allow: [127.0.0.1] } }\nupstream: { host: x }\n';
    expect(problems(() => parse('t.yaml', base + 'quarantine: { retention: 5s }\nsmtp: { max_message_size: 100, idle_timeout: 50ms }\n'))).toEqual([
      't.yaml:4:27: smtp.max_message_size must be at least 1K (got 100)',
      't.yaml:4:46: smtp.idle_timeout must be at least 100ms (got "50ms")',
      't.yaml:3:26: quarantine.retention must be at least 1m (got "5s")',
    ]);
    // A timer longer than Node.js keeps would fire at once: every session would end as it starts.
    expect(problems(() => parse('t.yaml', base + 'smtp: { session_deadline: 25d }\nquarantine: { retention: 365d }\n'))).toEqual([
      't.yaml:3:27: smtp.session_deadline must be at most 24d (got "25d")',
    ]);
    // Past ten years, no duration is meant, and Redis would refuse it as an expiry at run time.
    expect(problems(() => parse('t.yaml', base + 'quarantine: { retention: 200000000000d }\n'))).toEqual([
      't.yaml:3:26: quarantine.retention must be at most 3650d (got "200000000000d")',
    ]);
  });

  it('refuses a TLS listener without a certificate unless insecure_dev is set', () => {
    const [p] = problems(() => loadConfig({ file: 'fixtures/config/no-cert.yaml', env: {} }));
    expect(p).toMatch(/^fixtures\/config\/no-cert\.yaml:2:23: listeners\.submission\.mode is starttls, which needs tls\.cert and tls\.key: a STARTTLS or TLS listener needs a certificate/);
    expect(p).toMatch(/publicly known key/);
  });

  it('serve and config check check the certificate and key: readable, PEM, and a pair', () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-certs-'));
    const [a, b] = [makeSelfSigned('a.test'), makeSelfSigned('b.test')];
    writeFileSync(join(dir, 'a.crt'), a.cert);
    writeFileSync(join(dir, 'a.key'), a.key);
    writeFileSync(join(dir, 'b.key'), b.key);
    writeFileSync(join(dir, 'junk.pem'), 'not a certificate\n');
    const check = (t: string) => parse('t.yaml', t, {}, { files: true });
    const text = (cert: string, key: string) => `listeners: { s: { mode: starttls, port: 2587 } }\ntls:\n  cert: ${join(dir, cert)}\n  key: ${join(dir, key)}\nupstream: { host: x }\n`;
    expect(check(text('a.crt', 'a.key')).config.tls.cert).toBe(join(dir, 'a.crt'));
    expect(problems(() => check(text('a.crt', 'b.key')))[0]).toMatch(/^t\.yaml:4:8: tls\.key does not go with the certificate in tls\.cert \(.*key values mismatch\)$/);
    expect(problems(() => check(text('junk.pem', 'a.key')))[0]).toMatch(/^t\.yaml:3:9: tls\.cert is not a PEM certificate \(/);
    expect(problems(() => check(text('missing.crt', 'a.key')))[0]).toMatch(/^t\.yaml:3:9: tls\.cert cannot be read: ENOENT/);
    // Only serve and config check look at the files: the other commands may run as people who cannot read the key.
    expect(parse('t.yaml', text('missing.crt', 'a.key')).config.tls.cert).toBe(join(dir, 'missing.crt'));
  });

  it('reads a relative path in the file against the file\'s directory, one from the environment against the working directory', () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-relative-'));
    mkdirSync(join(dir, 'tls'));
    mkdirSync(join(dir, 'policies'));
    const a = makeSelfSigned('douane.test');
    writeFileSync(join(dir, 'tls/a.crt'), a.cert);
    writeFileSync(join(dir, 'tls/a.key'), a.key);
    writeFileSync(
      join(dir, 'douane.yaml'),
      'listeners: { s: { mode: starttls, port: 2587 } }\ntls: { cert: tls/a.crt, key: ./tls/a.key }\nupstream: { host: x }\n' +
        'clamd: { hosts: [{ socket: run/clamd.sock }] }\npolicy: { dir: policies }\nstate_dir: state\nspool: { dir: /var/spool/douane }\n',
    );
    // Loaded from elsewhere (the tests run in the project's directory), with the files checked as serve does.
    const { config } = loadConfig({ file: join(dir, 'douane.yaml'), env: {}, files: true });
    expect([config.tls.cert, config.tls.key, config.policy.dir, config.state_dir, config.spool.dir]).toEqual([join(dir, 'tls/a.crt'), join(dir, 'tls/a.key'), join(dir, 'policies'), join(dir, 'state'), '/var/spool/douane']);
    expect(config.clamd).toMatchObject({ hosts: [{ socket: join(dir, 'run/clamd.sock') }] });
    expect(loadConfig({ file: join(dir, 'douane.yaml'), env: { DOUANE_STATE_DIR: 'here' } }).config.state_dir).toBe(join(process.cwd(), 'here'));
    // "~" is the shell's: taken as a path it would make a directory named "~" next to the file.
    expect(problems(() => loadConfig({ file: join(dir, 'douane.yaml'), env: { DOUANE_STATE_DIR: '~/state' } }))).toEqual(['env DOUANE_STATE_DIR: state_dir starts with "~", which is not expanded here: write the whole path (~/state)']);
  });

  it('serve and config check check the other files and directories named: CAs, the state and spool directories, the policy directory', () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-named-'));
    writeFileSync(join(dir, 'a-file'), 'x');
    writeFileSync(join(dir, 'key.pem'), makeSelfSigned('k.test').key);
    const check = (t: string) => parse('t.yaml', t, {}, { files: true });
    const base = 'listeners: { t: { mode: trusted, port: 0, allow: [127.0.0.1] } }\n';
    const text = [
      base,
      `upstream: { host: x, ca: ${join(dir, 'key.pem')} }`,
      `lifecycle: { adapter: zimbra, zimbra: { url: "https://z:7071/service/admin/soap", admin_user: a, admin_password: p, ca: ${join(dir, 'nope.pem')} } }`,
      `state_dir: ${join(dir, 'a-file')}`,
      `spool: { dir: ${join(dir, 'a-file', 'spool')} }`,
      `policy: { dir: ${join(dir, 'no-policies')} }`,
      '',
    ].join('\n');
    expect(problems(() => check(text))).toEqual([
      `t.yaml:3:26: upstream.ca ${join(dir, 'key.pem')} holds no PEM certificate (-----BEGIN CERTIFICATE-----)`,
      expect.stringMatching(/^t\.yaml:4:\d+: lifecycle\.zimbra\.ca cannot be read: ENOENT/),
      `t.yaml:5:12: state_dir ${join(dir, 'a-file')} is a file, not a directory`,
      `t.yaml:6:15: spool.dir ${join(dir, 'a-file', 'spool')} cannot be created: ${join(dir, 'a-file')} is a file`,
      `t.yaml:7:16: policy.dir ${join(dir, 'no-policies')} cannot be read: no such directory`,
    ]);
  });

  it('serve refuses a state or spool directory that other users may write in, or that another user owns, naming the key', () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-strangers-'));
    const open = join(dir, 'open');
    mkdirSync(open);
    chmodSync(open, 0o1777);
    const theirs = join(dir, 'theirs');
    mkdirSync(theirs, { mode: 0o700 });
    // Another user's directory takes root to make; a user that is not root sees only the mode refused.
    const root = process.getuid?.() === 0;
    if (root) chownSync(theirs, 65534, 65534);
    const base = 'listeners: { t: { mode: trusted, port: 0, allow: [127.0.0.1] } }\nupstream: { host: x }\n';
    const serve = (t: string) => parse('t.yaml', t, {}, { files: true, writable: true });
    const found = problems(() => serve(`${base}state_dir: ${open}\nspool: { dir: ${root ? theirs : open} }\n`));
    expect(found[0]).toBe(`t.yaml:3:12: state_dir ${open} can be written by every user (mode 1777): they could replace what douane keeps there; take that away (chmod o-w)`);
    if (root) expect(found[1]).toBe(`t.yaml:4:15: spool.dir ${theirs} belongs to uid 65534, not to root, the user douane runs as: that user could read or replace what douane keeps there`);
    expect(found).toHaveLength(2);
    // config check, which may run as another user, says the same of one every user may write in; another
    // user's directory is serve's to judge.
    const check = (t: string) => parse('t.yaml', t, {}, { files: true });
    expect(problems(() => check(`${base}state_dir: ${open}\nspool: { dir: ${root ? theirs : join(dir, 'spool')} }\n`))).toEqual([found[0]]);
    // Readable by a group (the operators') is not a danger: the files are the service's alone. Writable by
    // the service's own group (a volume given to it) is how it writes there when root owns it.
    chmodSync(open, 0o750);
    expect(() => serve(`${base}state_dir: ${open}\nspool: { dir: ${join(open, 'spool')} }\n`)).not.toThrow();
    chmodSync(open, 0o2770);
    expect(() => serve(`${base}state_dir: ${open}\nspool: { dir: ${join(open, 'spool')} }\n`)).not.toThrow();
    if (root) {
      chownSync(open, 0, 65534);
      expect(problems(() => serve(`${base}state_dir: ${open}\nspool: { dir: ${join(open, 'spool')} }\n`))).toEqual([
        `t.yaml:3:12: state_dir ${open} can be written by group 65534, which Douane is not in (mode 2770): they could replace what douane keeps there; take that away (chmod g-w, or give the directory douane's group)`,
      ]);
    }
  });

  it('refuses an upstream that is one of its own listeners', () => {
    const text = 'listeners: { t: { mode: trusted, address: 127.0.0.1, port: 2525, allow: [127.0.0.1] } }\nupstream: { host: localhost, port: 587, trusted_port: 2525 }\n';
    expect(problems(() => parse('t.yaml', text))).toEqual(['t.yaml:2:55: upstream.trusted_port is 2525, where listener "t" listens: Douane would relay to itself (the upstream is the MTA behind it)']);
    // The same port on another host is another server.
    expect(() => parse('t.yaml', text.replace('localhost', 'mta.internal'))).not.toThrow();
    // Another loopback address, or the other family, is another socket; a wildcard takes its own family.
    expect(() => parse('t.yaml', text.replace('address: 127.0.0.1', 'address: 127.0.0.2').replace('localhost', '127.0.0.1'))).not.toThrow();
    expect(() => parse('t.yaml', text.replace('address: 127.0.0.1', 'address: "::1"').replace('localhost', '127.0.0.1'))).not.toThrow();
    expect(() => parse('t.yaml', text.replace('address: 127.0.0.1', 'address: 0.0.0.0').replace('localhost', '"::1"'))).not.toThrow();
    expect(problems(() => parse('t.yaml', text.replace('address: 127.0.0.1', 'address: 0.0.0.0').replace('localhost', '127.0.0.1')))[0]).toMatch(/relay to itself/);
    expect(problems(() => parse('t.yaml', text.replace('address: 127.0.0.1', 'address: "::"').replace('localhost', '127.0.0.1')))[0]).toMatch(/relay to itself/);
    // Other spellings of the same addresses.
    expect(problems(() => parse('t.yaml', text.replace('address: 127.0.0.1', 'address: "0:0:0:0:0:0:0:0"').replace('localhost', '127.0.0.1')))[0]).toMatch(/relay to itself/);
    expect(problems(() => parse('t.yaml', text.replace('localhost', '"::ffff:127.0.0.1"')))[0]).toMatch(/relay to itself/);
  });

  it('requires an allow list on a trusted listener', () => {
    expect(problems(() => loadConfig({ file: 'fixtures/config/trusted-without-allow.yaml', env: {} }))[0]).toMatch(
      /trusted-without-allow\.yaml:2:12: listeners\.trusted\.allow is required for a trusted listener/,
    );
  });

  it('refuses a trusted listener open to every address, a host written with its port, and a lifecycle section its adapter does not use', () => {
    const base = 'listeners: { t: { mode: trusted, address: 127.0.0.1, port: 2525, allow: [127.0.0.1] } }\nupstream: { host: 127.0.0.1 }\n';
    expect(problems(() => parse('t.yaml', base.replace('allow: [127.0.0.1]', 'allow: [10.0.0.0/8, "::/0"]')))).toEqual([
      't.yaml:1:86: listeners.t.allow[1] is ::/0, every address: anyone who reaches this port would send as any customer without AUTH; list the webmail and mailbox hosts',
    ]);
    expect(problems(() => parse('t.yaml', base.replace('allow: [127.0.0.1]', 'allow: [0.0.0.0/0]')))[0]).toMatch(/allow\[0\] is 0\.0\.0\.0\/0, every address/);
    expect(problems(() => parse('t.yaml', base.replace('host: 127.0.0.1', 'host: "127.0.0.1:25"')))[0]).toMatch(/^t\.yaml:2:19: upstream\.host must be .*without a port \(the port has a key of its own\) \(got "127\.0\.0\.1:25"\)$/);
    expect(problems(() => parse('t.yaml', base.replace('host: 127.0.0.1', 'host: "mta.internal:587"')))[0]).toMatch(/upstream\.host must be/);
    for (const address of ['"::1"', '"2001:db8::10"', '"fe80::1%eth0"']) expect(() => parse('t.yaml', base.replace('host: 127.0.0.1', `host: ${address}`))).not.toThrow();
    const zimbra = 'lifecycle:\n  zimbra: { url: "https://zimbra.internal:7071/service/admin/soap", admin_user: admin, admin_password: pw }\n';
    expect(problems(() => parse('t.yaml', base + zimbra))).toEqual([
      't.yaml:4:3: lifecycle.adapter is none (its default), so lifecycle.zimbra is not used: no suspension would be carried out there and no status read; set adapter: zimbra, or remove lifecycle.zimbra',
    ]);
    expect(() => parse('t.yaml', base + zimbra + '  adapter: zimbra\n')).not.toThrow();
  });

  it('the configuration line serve logs at start names Redis without its password', async () => {
    const { configSummary } = await import('../../src/cli/serve.js');
    const base = 'listeners: { t: { mode: trusted, address: 127.0.0.1, port: 2525, allow: [127.0.0.1] } }\nupstream: { host: 127.0.0.1 }\n';
    const summary = configSummary(parse('t.yaml', base + 'limits: { redis: { url: "redis://douane:s3cret-pass@redis.internal:6380/2" } }\n').config);
    expect(summary.redis).toBe('redis://redis.internal:6380/2');
    expect(JSON.stringify(summary)).not.toContain('s3cret');
    expect(configSummary(parse('t.yaml', base + 'limits: { redis: { url: "redis://redis.internal:6379/0?password=s3cret&db=1" } }\n').config).redis).toBe('redis://redis.internal:6379/0');
    expect(configSummary(parse('t.yaml', base + 'limits: { redis: { sentinels: [{ host: s1, port: 26379 }], sentinel_name: main } }\n').config).redis).toEqual({ sentinels: ['s1:26379'], name: 'main' });
  });

  it('checks the lifecycle HTTP request templates and its authentication at load, with file:line:col', () => {
    const text = [
      'listeners: { t: { mode: trusted, port: 0, allow: [127.0.0.1] } }',
      'upstream: { host: x }',
      'lifecycle:',
      '  adapter: http',
      '  http:',
      '    status: { method: GET, url: "https://a.test/m/{account}", status_field: state }',
      '    suspend: { method: POST, url: "https://a.test/m/{account}/lock", body: \'{"reason": "{sumary}"}\' }',
      '    reinstate: { method: POST, url: "https://a.test/m/{account}/unlock", body: \'{"by": {by}}\' }',
      '    bearer: token',
      '    hmac_secret: secret',
      '',
    ].join('\n');
    expect(problems(() => parse('t.yaml', text))).toEqual([
      't.yaml:7:76: lifecycle.http.suspend.body has an unknown placeholder {sumary} (known for suspend: {account} {reference} {rule} {article} {summary})',
      't.yaml:8:80: lifecycle.http.reinstate.body is not JSON once its placeholders are filled',
      't.yaml:10:18: lifecycle.http.hmac_secret and bearer are both set: choose one way for Douane to authenticate its requests',
    ]);
  });

  it('checks named admin tokens: a name and a secret for each holder, and a scope', () => {
    const text = [
      'listeners: { t: { mode: trusted, port: 0, allow: [127.0.0.1] } }',
      'upstream: { host: x }',
      'admin:',
      '  tokens:',
      '    - { name: prometheus, token: read-only-token-000001, scope: read }',
      '    - { name: prometheus, token: alice-personal-token-01, scope: act }',
      '    - { name: bob, token: read-only-token-000001, scope: write }',
      '    - { name: carol, token: short, scope: act }',
      '    - { name: dave, token: "mot-de-passe-très-long", scope: act }',
      '',
    ].join('\n');
    expect(problems(() => parse('t.yaml', text))).toEqual([
      't.yaml:7:58: admin.tokens[2].scope must be one of read, act (got "write")',
      't.yaml:8:29: admin.tokens[3].token must be at least 16 printable ASCII characters, no spaces (got a text of 5 characters)',
      // An HTTP header carries bytes: a token with "è" in it could never match.
      't.yaml:9:28: admin.tokens[4].token must be at least 16 printable ASCII characters, no spaces (got a text of 22 characters)',
    ]);
    const duplicates = text.replace('scope: write', 'scope: read').replace('token: short', 'token: carol-personal-token-1').replace('très', 'tres');
    expect(problems(() => parse('t.yaml', duplicates))).toEqual([
      't.yaml:6:15: admin.tokens[1].name "prometheus" is used by another token',
      't.yaml:7:27: admin.tokens[2].token is the same as another token: each holder needs their own',
    ]);
    // The full-access token is held to the same rule.
    const full = (token: string) => `listeners: { t: { mode: trusted, port: 0, allow: [127.0.0.1] } }\nupstream: { host: x }\nadmin: { token: ${token} }\n`;
    expect(problems(() => parse('t.yaml', full('"clé-très-secrète-0001"')))).toEqual([
      't.yaml:3:17: admin.token must be at least 16 printable ASCII characters, no spaces (got a text of 21 characters)',
    ]);
    expect(problems(() => parse('t.yaml', full('s3cret')))).toEqual(['t.yaml:3:17: admin.token must be at least 16 printable ASCII characters, no spaces (got a text of 6 characters)']);
    expect(parse('t.yaml', full('s3cret-token-value')).config.admin.token).toBe('s3cret-token-value');
    const ok = parse('t.yaml', duplicates.replace('name: prometheus, token: alice', 'name: alice, token: alice').replace('bob, token: read-only-token-000001', 'bob, token: bob-personal-token-0001'));
    expect(ok.config.admin.tokens.map((t) => [t.name, t.scope])).toEqual([['prometheus', 'read'], ['alice', 'act'], ['bob', 'read'], ['carol', 'act'], ['dave', 'act']]);
  });

  it('an unclosed bracket or quote at the end of the file is reported on its last line with content', () => {
    expect(problems(() => parseConfig('t.yaml', 'hostname: a\nsmtp: { max_message_size: 10M\n\n\n'))[0]).toMatch(/^t\.yaml:2:\d+: YAML: Flow map/);
    expect(problems(() => parseConfig('t.yaml', 'hostname: "unterminated\n'))[0]).toMatch(/^t\.yaml:1:\d+: YAML: Missing closing "quote/);
  });

  it('reports YAML syntax errors and duplicate keys with their position', () => {
    expect(problems(() => loadConfig({ file: 'fixtures/config/yaml-syntax.yaml', env: {} }))[0]).toMatch(/^fixtures\/config\/yaml-syntax\.yaml:\d+:\d+: YAML: /);
    expect(problems(() => loadConfig({ file: 'fixtures/config/duplicate-key.yaml', env: {} }))[0]).toMatch(
      /^fixtures\/config\/duplicate-key\.yaml:5:3: YAML: the key "host" appears twice in this mapping: keep one$/,
    );
  });

  it('refuses a shell variable in the file, which would be taken literally, and never echoes a secret', () => {
    const base = 'listeners: { t: { mode: trusted, port: 0, allow: [127.0.0.1] } }\nupstream: { host: x }\n';
    expect(problems(() => parse('v.yaml', `${base}admin:\n  token: \${DOUANE_ADMIN_SECRET}\n`))).toEqual(['v.yaml:4:10: admin.token holds a shell variable, which is not expanded here: set DOUANE_ADMIN_TOKEN in the environment instead, and remove the key or leave any value in the file']);
    expect(parse('v.yaml', `${base}admin:\n  token: \${DOUANE_ADMIN_SECRET}\n`, { DOUANE_ADMIN_TOKEN: 'a-real-token-0123456789' }).config.admin.token).toBe('a-real-token-0123456789');
    // A secret from the environment may start with "$": it is not a variable of the file.
    expect(parse('v.yaml', base, { DOUANE_ADMIN_TOKEN: '$Zq7TxWk2LmNp9RbVc' }).config.admin.token).toBe('$Zq7TxWk2LmNp9RbVc');
    const echoed = problems(() => parse('v.yaml', `${base}admin:\n  token: "my token has spaces in it"\n`)).join('\n');
    expect(echoed).toBe('v.yaml:4:10: admin.token must be at least 16 printable ASCII characters, no spaces (got a text of 25 characters)');
    // Nor a secret YAML read as a number, nor one inside a Redis URL, nor any of the lifecycle and webhook secrets.
    const secrets = problems(() =>
      parse(
        's.yaml',
        `${base}admin:\n  token: 1234567890123456789\nlimits: { redis: { url: "redis//:Hunter2Secret@redis:6379", password: 20240101 } }\n` +
          'lifecycle: { adapter: http, http: { suspend: { url: "https://l.test/s" }, reinstate: { url: "https://l.test/r" }, status: { url: "https://l.test/st" }, bearer: 99887766 } }\n' +
          'enforcement: { webhook: { url: "https://w.test/", secret: 55443322 } }\n',
      ),
    ).join('\n');
    for (const secret of ['1234567890123456789', '1234567890123456800', 'Hunter2Secret', '20240101', '99887766', '55443322']) expect(secrets).not.toContain(secret);
    expect(secrets).toContain('s.yaml:4:10: admin.token must be at least 16 printable ASCII characters, no spaces, in quotes: YAML reads this value unquoted as a number (write it in quotes, as you meant it)');
    expect(secrets).toMatch(/limits\.redis\.url must be a redis:\/\/ or rediss:\/\/ URL \(got a text of 32 characters\)/);
  });

  it('refuses a clamd host with a port and no host, an outbox that retries faster at most than at least, a size no one means', () => {
    const base = 'listeners: { t: { mode: trusted, port: 0, allow: [127.0.0.1] } }\nupstream: { host: x }\n';
    expect(problems(() => parse('c.yaml', `${base}clamd: { hosts: [{ port: 3310 }] }\n`))).toEqual(['c.yaml:3:18: clamd.hosts[0] needs either socket, or host and port']);
    expect(problems(() => parse('c.yaml', `${base}clamd: { hosts: [{ socket: /run/clamd.sock, host: x }] }\n`))).toEqual(['c.yaml:3:18: clamd.hosts[0] needs either socket, or host and port']);
    expect(problems(() => parse('c.yaml', `${base}enforcement: { outbox: { retry_min: 10m, retry_max: 5s } }\n`))[0]).toMatch(/^c\.yaml:3:\d+: enforcement\.outbox\.retry_max must not be shorter than retry_min/);
    expect(problems(() => parse('c.yaml', `${base}smtp: { max_message_size: 99999999999999999999G }\n`))[0]).toMatch(/^c\.yaml:3:\d+: smtp\.max_message_size must be a size in bytes/);
  });

  it('needs the clamd section or an explicit `clamd: none`: leaving it out does not turn scanning off', () => {
    const base = 'listeners: { t: { mode: trusted, port: 0, allow: [127.0.0.1] } }\nupstream: { host: x }\n';
    expect(problems(() => parseConfig('s.yaml', base))).toEqual(['s.yaml:1:1: clamd is required (clamd hosts (hosts: [...]), or none to run without virus scanning)']);
    expect(problems(() => parseConfig('s.yaml', `${base}clamd: off\n`))).toEqual(['s.yaml:3:8: clamd must be one of none (got "off")']);
    expect(problems(() => parseConfig('s.yaml', `${base}clamd:\n`))[0]).toMatch(/^s\.yaml:3:\d+: clamd has no value: give clamd hosts/);
    expect(parseConfig('s.yaml', `${base}clamd: none\n`).config.clamd).toBe('none');
    expect(parseConfig('s.yaml', `${base}clamd: { hosts: [{ socket: /run/clamd.sock }] }\n`).config.clamd).toEqual({ hosts: [{ socket: '/run/clamd.sock' }], timeout: 60_000 });
    // From the environment: its keys over `none` (the embedded default says none), or `none` over hosts.
    const hosts = loadConfig({ env: { DOUANE_CLAMD_HOSTS: '[{host: 127.0.0.1, port: 3310}]', DOUANE_CLAMD_TIMEOUT: '30s' } });
    expect(hosts.config.clamd).toEqual({ hosts: [{ host: '127.0.0.1', port: 3310 }], timeout: 30_000 });
    expect(loadConfig({ file: 'fixtures/config/valid.yaml', env: { DOUANE_CLAMD: 'none' } }).config.clamd).toBe('none');
    // A relative socket given whole in the environment is the working directory's, not the file's.
    expect(loadConfig({ file: 'fixtures/config/valid.yaml', env: { DOUANE_CLAMD: '{hosts: [{socket: run/clamd.sock}]}' } }).config.clamd).toMatchObject({ hosts: [{ socket: join(process.cwd(), 'run/clamd.sock') }] });
  });

  it('names the key given twice, and says a file holds one document', () => {
    const base = 'listeners: { t: { mode: trusted, port: 0, allow: [127.0.0.1] } }\n';
    expect(problems(() => parse('k.yaml', `${base}upstream:\n  host: x\n  port: 25\n  host: y\n`))).toEqual(['k.yaml:5:3: YAML: the key "host" appears twice in this mapping: keep one']);
    expect(problems(() => parse('k.yaml', `${base}upstream: { host: x }\n---\nadmin: {}\n`))).toEqual(['k.yaml:3:1: YAML: the file holds more than one YAML document (a "---" line after content): one document per file']);
  });

  it('says when the file cannot be read', () => {
    expect(problems(() => loadConfig({ file: 'fixtures/config/missing.yaml', env: {} }))[0]).toBe('fixtures/config/missing.yaml: cannot be read: no such file');
  });

  it('takes no variable an orchestrator sets for a service named douane, nor the compose file\'s own, for a setting', () => {
    const env = {
      DOUANE_SERVICE_HOST: '10.96.0.12',
      DOUANE_SERVICE_PORT: '587',
      DOUANE_SERVICE_PORT_SUBMISSION: '587',
      DOUANE_PORT: 'tcp://10.96.0.12:587',
      DOUANE_PORT_587_TCP: 'tcp://10.96.0.12:587',
      DOUANE_PORT_587_TCP_ADDR: '10.96.0.12',
      DOUANE_PORT_587_TCP_PORT: '587',
      DOUANE_PORT_587_TCP_PROTO: 'tcp',
      DOUANE_TLS_DIR: '/srv/tls',
      // A service douane-admin: its port variable has a setting's name (admin.port), not its value.
      DOUANE_ADMIN_SERVICE_HOST: '10.96.0.13',
      DOUANE_ADMIN_PORT: 'tcp://10.96.0.13:9725',
      DOUANE_ADMIN_PORT_9725_TCP_ADDR: '10.96.0.13',
    };
    expect(loadConfig({ env }).overrides).toEqual([]);
    // A listener named like a service's variable is still set.
    expect(loadConfig({ env: { DOUANE_LISTENERS_TRUSTED_PORT: '2626' } }).config.listeners.trusted!.port).toBe(2626);
    // A misspelt setting is still one, a port's too; and a link's value under another name is a value.
    expect(problems(() => loadConfig({ env: { DOUANE_UPSTREAM_HOTS: 'x' } }))).toEqual([expect.stringMatching(/^env DOUANE_UPSTREAM_HOTS: .*does not name a setting/)]);
    expect(problems(() => loadConfig({ env: { DOUANE_UPSTREM_PORT: '2525' } }))).toEqual([expect.stringMatching(/^env DOUANE_UPSTREM_PORT: .*does not name a setting/)]);
    expect(problems(() => loadConfig({ env: { DOUANE_UPSTREAM_HOST: 'tcp://mta:25' } }))).toEqual([expect.stringMatching(/^env DOUANE_UPSTREAM_HOST: upstream\.host must be a host name/)]);
  });

  it('applies DOUANE_* overrides, typed by the setting', () => {
    const { config, overrides } = loadConfig({
      env: {
        DOUANE_UPSTREAM_HOST: 'mta.internal',
        DOUANE_UPSTREAM_PORT: '10587',
        DOUANE_LISTENERS_TRUSTED_ALLOW: '[10.0.0.0/8, 192.168.1.0/24]',
        DOUANE_SMTP_MAX_MESSAGE_SIZE: '10M',
        DOUANE_UPSTREAM_TIMEOUTS_COMMAND: '5s',
        DOUANE_LOG_LEVEL: 'warn',
        DOUANE_CONFIG: '',
        // read by the container's health check, not a setting
        DOUANE_HEALTHCHECK_URL: 'http://10.0.0.5:9725/healthz',
        PATH: '/usr/bin',
      },
    });
    expect(config.upstream.host).toBe('mta.internal');
    expect(config.upstream.port).toBe(10587);
    expect(config.listeners.trusted!.allow!.map((c) => c.text)).toEqual(['10.0.0.0/8', '192.168.1.0/24']);
    expect(config.smtp.max_message_size).toBe(10 * 1024 * 1024);
    expect(config.upstream.timeouts.command).toBe(5000);
    expect(config.log.level).toBe('warn');
    expect(overrides.sort()).toEqual([
      'DOUANE_LISTENERS_TRUSTED_ALLOW', 'DOUANE_LOG_LEVEL', 'DOUANE_SMTP_MAX_MESSAGE_SIZE', 'DOUANE_UPSTREAM_HOST', 'DOUANE_UPSTREAM_PORT', 'DOUANE_UPSTREAM_TIMEOUTS_COMMAND',
    ]);
  });

  it('names the environment variable when an override is wrong, and refuses unknown DOUANE_ variables', () => {
    expect(problems(() => loadConfig({ env: { DOUANE_UPSTREAM_PORT: 'smtp' } }))).toEqual([
      'env DOUANE_UPSTREAM_PORT: upstream.port must be an integer between 1 and 65535 (got "smtp")',
    ]);
    expect(problems(() => loadConfig({ env: { DOUANE_UPSTREM_HOST: 'x' } }))[0]).toMatch(/^env DOUANE_UPSTREM_HOST: does not name a setting/);
  });

  it('refuses a host name that would break the greeting or EHLO: a CR from a CRLF env file, a space, an @', () => {
    const text = 'listeners: { t: { mode: trusted, port: 0, allow: [127.0.0.1] } }\nupstream: { host: mta.example.test }\n';
    expect(problems(() => parse('t.yaml', text, { DOUANE_HOSTNAME: 'mail.example.test\r' }))).toEqual([
      'env DOUANE_HOSTNAME: hostname must be a host name such as mail.example.com (letters, digits, hyphens and dots; an internationalised one in its xn-- form), or an address literal such as [192.0.2.1] (got "mail.example.test\\r")',
    ]);
    expect(problems(() => parse('t.yaml', `hostname: mail example\n${text}`))[0]).toMatch(/^t\.yaml:1:11: hostname must be a host name such as mail\.example\.com/);
    expect(problems(() => parse('t.yaml', text.replace('mta.example.test', '"mta@example.test"')))[0]).toMatch(/^t\.yaml:2:19: upstream\.host must be a host name such as mta\.example\.com \(an internationalised one in its xn-- form\), or an IP address such as 192\.0\.2\.10 or 2001:db8::10, without a port \(the port has a key of its own\) \(got "mta@example\.test"\)/);
    expect(problems(() => parse('t.yaml', `${text}upstream_x: 1\n`.replace('upstream_x: 1\n', ''), { DOUANE_UPSTREAM_HELO_NAME: 'a:b c' }))[0]).toMatch(/^env DOUANE_UPSTREAM_HELO_NAME: upstream\.helo_name must be a host name/);
    // What hosts are called: names, trailing dots, underscores, IPv4 and IPv6 addresses, address literals.
    for (const [hostname, host] of [['mail.example.test', 'zimbra-mta'], ['mail.example.test.', '192.0.2.10'], ['[192.0.2.1]', '2001:db8::10'], ['[IPv6:2001:db8::1]', 'mta_1.internal'], ['localhost', '::1'], ['xn--bcher-kva.example', 'fe80::1%eth0']]) {
      expect(parse('t.yaml', `hostname: "${hostname}"\n${text.replace('mta.example.test', `"${host}"`)}`).config).toMatchObject({ hostname, upstream: { host } });
    }
  });

  it('refuses an empty override rather than dropping the file\'s value (an admin token, a limit)', () => {
    const text = 'listeners: { t: { mode: trusted, port: 0, allow: [127.0.0.1] } }\nupstream: { host: x }\nadmin: { token: s3cret-token-value }\n';
    expect(problems(() => parse('t.yaml', text, { DOUANE_ADMIN_TOKEN: '' }))).toEqual(["env DOUANE_ADMIN_TOKEN: admin.token is empty: unset it to keep the file's value, or give one"]);
    expect(problems(() => parse('t.yaml', text, { DOUANE_SMTP_MAX_RECIPIENTS: ' ' }))).toEqual(["env DOUANE_SMTP_MAX_RECIPIENTS: smtp.max_recipients is empty: unset it to keep the file's value, or give one"]);
  });

  it('refuses a key left without a value instead of quietly using the default; an empty section is fine', () => {
    const text = 'listeners: { t: { mode: trusted, port: 0, allow: [127.0.0.1] } }\nupstream: { host: x }\nsmtp:\n  max_recipients:\nadmin:\n';
    expect(problems(() => parse('t.yaml', text))).toEqual(['t.yaml:4:18: smtp.max_recipients has no value: give an integer between 1 and 100000, or remove the line to use the default']);
  });

  it('names the variable when an override makes a listener the file does not have', () => {
    const text = 'listeners: { t: { mode: trusted, port: 0, allow: [127.0.0.1] } }\nupstream: { host: x }\n';
    expect(problems(() => parse('t.yaml', text, { DOUANE_LISTENERS_SUBMISSION_PORT: '2587' }))).toEqual(['env DOUANE_LISTENERS_SUBMISSION_PORT: listeners.submission.mode is required (one of starttls, tls, trusted)']);
    // Made of a scalar the file has: the variable is named, not the file's line.
    const none = 'listeners: { t: { mode: trusted, port: 0, allow: [127.0.0.1] } }\nupstream: { host: x }\nclamd: none\n';
    expect(problems(() => parse('t.yaml', none, { DOUANE_CLAMD_TIMEOUT: '5s' }))).toEqual([expect.stringMatching(/^env DOUANE_CLAMD_TIMEOUT: clamd\.hosts is required/)]);
  });

  it('refuses two listeners on one address and port', () => {
    const text = 'listeners:\n  a: { mode: trusted, port: 2525, allow: [127.0.0.1] }\n  b: { mode: trusted, port: 2525, allow: [127.0.0.1] }\nupstream: { host: x }\n';
    expect(problems(() => parse('dup.yaml', text))).toEqual(['dup.yaml:3:29: listeners.b.port is already used by listener "a" on 127.0.0.1:2525 (127.0.0.1:2525 overlaps it)']);
  });

  it('refuses a port taken by a wildcard address, and the admin endpoint on a listener\'s port', () => {
    const text = 'listeners:\n  a: { mode: trusted, address: 0.0.0.0, port: 2525, allow: [127.0.0.1] }\n  b: { mode: trusted, address: 127.0.0.1, port: 2525, allow: [127.0.0.1] }\n  c: { mode: trusted, address: "::1", port: 2526, allow: [127.0.0.1] }\nupstream: { host: x }\nadmin: { port: 2526 }\n';
    expect(problems(() => parse('dup.yaml', text))).toEqual([
      'dup.yaml:3:49: listeners.b.port is already used by listener "a" on 0.0.0.0:2525 (127.0.0.1:2525 overlaps it)',
      // IPv4 127.0.0.1 and IPv6 ::1 are different sockets: no collision there.
    ]);
    const admin = 'listeners:\n  a: { mode: trusted, address: "::", port: 2526, allow: [127.0.0.1] }\nupstream: { host: x }\nadmin: { port: 2526 }\n';
    expect(problems(() => parse('dup.yaml', admin))).toEqual(['dup.yaml:4:16: admin.port is already used by listener "a" on :::2526 (127.0.0.1:2526 overlaps it)']);
  });
});

describe('the documented example', () => {
  it('douane.example.yaml is valid and mentions every key of the schema', async () => {
    const { readFileSync } = await import('node:fs');
    const { configSchema } = await import('../../src/config/schema.js');
    loadConfig({ file: 'douane.example.yaml', env: {} });
    const text = readFileSync('douane.example.yaml', 'utf8');
    const missing: string[] = [];
    const walk = (schema: { fields?: Record<string, { schema: unknown }>; values?: unknown }, prefix: string) => {
      for (const [key, field] of Object.entries(schema.fields ?? {})) {
        if (!new RegExp(`^\\s*#?\\s*${key}:`, 'm').test(text)) missing.push(prefix + key);
        walk(field.schema as never, `${prefix}${key}.`);
      }
      if (schema.values) walk(schema.values as never, prefix + '<name>.');
    };
    walk(configSchema as never, '');
    expect(missing).toEqual([]);
  });
});
