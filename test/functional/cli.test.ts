// The douane command as an operator runs it: exit codes, error messages naming file:line, and `serve`
// relaying a message and draining on SIGTERM. Runs the compiled dist/cli.js (npm test builds it first).

import { execFile, spawn, spawnSync } from 'node:child_process';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import { misbehavingClamd, resetAfter } from '../harness/clamd.js';
import { FakeUpstream } from '../harness/fake-upstream.js';
import { RawSmtp } from '../harness/net.js';

const exec = promisify(execFile);
const CLI = 'dist/cli.js';

function douane(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return exec('node', [CLI, ...args], { env: { PATH: process.env.PATH!, ...(process.env.TMPDIR ? { TMPDIR: process.env.TMPDIR } : {}), ...env } }).then(
    (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  );
}

/** `douane serve` on a configuration of `settings`, without the admin endpoint, its spool and state in `dir`. */
function serveOn(dir: string, settings: string[]) {
  writeFileSync(join(dir, 'douane.yaml'), [...settings, 'admin: { enabled: false }', `spool: { dir: ${dir}/spool }`, `state_dir: ${dir}/state`, ''].join('\n'));
  return spawn('node', [CLI, 'serve', '--config', join(dir, 'douane.yaml')], { stdio: ['ignore', 'pipe', 'pipe'] });
}

let upstream: FakeUpstream | undefined;
afterEach(async () => {
  await upstream?.stop();
  upstream = undefined;
});

describe('log.pretty', () => {
  it('prints a line break or a terminal escape in a message as an escape, never as a line of its own', async () => {
    const script = `import('./dist/log.js').then(({ createLogger }) => createLogger({ level: 'info', pretty: true }).info({ event: 'x' }, 'a@x.test\\n[12:00:00] INFO (douane): auth success \\u001b[31m'))`;
    const { stdout } = await exec(process.execPath, ['-e', script], { env: { ...process.env, NO_COLOR: '1' } });
    const first = stdout.split('\n').find((l) => l.includes('a@x.test'))!;
    expect(first).toContain('a@x.test\\n[12:00:00] INFO (douane): auth success \\u001b[31m');
    expect(stdout).not.toMatch(/^\[12:00:00\]/m);
    expect(stdout).not.toContain('\u001b[31m');
  });
});

describe('douane CLI', () => {
  it('prints help and exits 0; an unknown command exits 64', async () => {
    const help = await douane(['--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/Usage: douane <command>/);
    expect((await douane(['serve', '--help'])).stdout).toMatch(/Usage: douane serve/);
    const bad = await douane(['frobnicate']);
    expect(bad.code).toBe(64);
    expect(bad.stderr).toMatch(/unknown command "frobnicate"/);
    expect((await douane(['serve', '--bogus'])).code).toBe(64);
  });

  it('serve refuses a stray argument instead of running on the embedded default', async () => {
    const r = await douane(['serve', 'douane.yaml']);
    expect(r).toMatchObject({ code: 64, stderr: 'douane: serve takes no argument "douane.yaml" (did you mean --config douane.yaml?)\n' });
  });

  it('config check: 0 for a valid file, 1 with file:line:col and key for an invalid one', async () => {
    const ok = await douane(['config', 'check', 'fixtures/config/valid.yaml']);
    expect(ok).toMatchObject({ code: 0, stdout: 'fixtures/config/valid.yaml: ok\n' });
    const bad = await douane(['config', 'check', 'fixtures/config/unknown-key.yaml']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/^fixtures\/config\/unknown-key\.yaml:7:3: upstream\.prot is not a known key/);
  });

  // Run as root, which may write anywhere, nothing could be refused: serve runs as nobody here (where this
  // checkout is one nobody can read).
  const nobodyCanRun = process.getuid?.() === 0 && spawnSync('runuser', ['-u', 'nobody', '--', 'test', '-r', join(process.cwd(), CLI)]).status === 0;
  it.skipIf(!nobodyCanRun)('serve, run as a user that cannot write its directories, says which, by key; config check leaves that to serve', async () => {
    const { chmodSync } = await import('node:fs');
    const dir = mkdtempSync(join(tmpdir(), 'douane-dirs-'));
    chmodSync(dir, 0o755);
    const text = ['listeners: { t: { mode: trusted, address: 127.0.0.1, port: 0, allow: [127.0.0.1] } }', 'upstream: { host: 127.0.0.1, port: 1, trusted_port: 1 }', 'clamd: none', 'admin: { enabled: false }', `state_dir: ${dir}/state`, `spool: { dir: ${dir}/spool }`, `policy: { dir: ${process.cwd()}/policies }`, ''].join('\n');
    try {
      writeFileSync(join(dir, 'douane.yaml'), text);
      chmodSync(join(dir, 'douane.yaml'), 0o644);
      const asNobody = (...args: string[]) => exec('runuser', ['-u', 'nobody', '--', process.execPath, join(process.cwd(), CLI), ...args, join(dir, 'douane.yaml')], { cwd: '/', timeout: 15_000 }).then(
        (r) => ({ code: 0, stderr: r.stderr }),
        (e: { code: number; stderr: string }) => e,
      );
      const served = await asNobody('serve', '--config');
      expect(served.code).toBe(1);
      expect(served.stderr).toContain(`douane.yaml:5:12: state_dir ${dir}/state cannot be created: ${dir} is not writable by nobody, the user douane runs as`);
      expect(served.stderr).toMatch(/douane\.yaml:6:\d+: spool\.dir .* cannot be created/);
      // The operator checking the service's configuration is not the service's user.
      expect((await asNobody('config', 'check')).code).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('config check works where the machine\'s addresses cannot be read (a sandbox without netlink), and still finds a loop to itself', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-netlink-'));
    try {
      // What systemd's RestrictAddressFamilies without AF_NETLINK makes of os.networkInterfaces().
      writeFileSync(join(dir, 'no-netlink.cjs'), "const os = require('node:os'); os.networkInterfaces = () => { const e = new Error('uv_interface_addresses returned Unknown system error 97'); e.code = 'ERR_SYSTEM_ERROR'; throw e; }; require('node:module').syncBuiltinESMExports();\n");
      const settings = (host: string) => ['listeners: { submission: { mode: trusted, address: 0.0.0.0, port: 2587, allow: [10.0.0.0/8] } }', `upstream: { host: ${host}, port: 2587, trusted_port: 2587 }`, 'clamd: none', `state_dir: ${dir}/state`, `spool: { dir: ${dir}/spool }`, `policy: { dir: ${process.cwd()}/policies }`, ''].join('\n');
      writeFileSync(join(dir, 'mta.yaml'), settings('mta.internal'));
      writeFileSync(join(dir, 'self.yaml'), settings('127.0.0.1'));
      const check = (file: string) =>
        exec(process.execPath, ['--require', join(dir, 'no-netlink.cjs'), CLI, 'config', 'check', join(dir, file)]).then(
          (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
          (e: { code: number; stdout: string; stderr: string }) => e,
        );
      expect(await check('mta.yaml')).toMatchObject({ code: 0, stdout: `${join(dir, 'mta.yaml')}: ok\n` });
      const self = await check('self.yaml');
      expect(self.code).toBe(1);
      expect(self.stderr).toMatch(/upstream\.port is 2587, where listener "submission" listens: Douane would relay to itself/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('serve refuses to start a TLS listener without a certificate, naming the key', async () => {
    const r = await douane(['serve', '--config', 'fixtures/config/no-cert.yaml']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/no-cert\.yaml:2:23: listeners\.submission\.mode is starttls, which needs tls\.cert and tls\.key/);
  });

  it('serve exits 1 naming the listener when its port is taken, rather than run half started', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-port-'));
    const { createServer } = await import('node:net');
    const taken = createServer();
    await new Promise<void>((r) => taken.listen(0, '127.0.0.1', () => r()));
    const port = (taken.address() as { port: number }).port;
    try {
      writeFileSync(
        join(dir, 'douane.yaml'),
        [`listeners: { first: { mode: trusted, address: 127.0.0.1, port: 0, allow: [127.0.0.1] }, second: { mode: trusted, address: 127.0.0.1, port: ${port}, allow: [127.0.0.1] } }`, 'upstream: { host: 127.0.0.1, port: 1, trusted_port: 1 }', 'clamd: none', 'admin: { port: 0 }', `spool: { dir: ${dir}/spool }`, `state_dir: ${dir}/state`, ''].join('\n'),
      );
      const r = await exec('node', [CLI, 'serve', '--config', join(dir, 'douane.yaml')], { timeout: 15_000 }).then(
        () => ({ code: 0, stdout: '', stderr: '' }),
        (e: { code: number; stdout: string; stderr: string }) => e,
      );
      expect(r.code).toBe(1);
      expect(r.stderr).toBe(`douane: listeners.second: cannot listen on 127.0.0.1:${port}: the address is already in use\n`);
      expect(r.stdout).toMatch(/"event":"start_failed"/);
    } finally {
      taken.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('serve refuses a state directory another serve is using, naming it and its PID; the lock goes with a clean stop', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-lock-'));
    const first = serveOn(dir, ['listeners: { t: { mode: trusted, address: 127.0.0.1, port: 0, allow: [127.0.0.1] } }', 'upstream: { host: 127.0.0.1, port: 1, trusted_port: 1 }', 'clamd: none']);
    let out = '';
    first.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((r) => first.on('exit', r));
    try {
      await expect.poll(() => out.includes('"event":"policy"'), { timeout: 15_000 }).toBe(true);
      expect(existsSync(join(dir, 'state', 'douane.lock'))).toBe(true);
      // What it runs with, in one line, and a state directory a reboot may wipe, said.
      const lines = out.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
      expect(lines.find((l) => l.event === 'config')).toMatchObject({ upstream: { host: '127.0.0.1', port: 1, trusted_port: 1 }, clamd: 'none (no virus scanning)', redis: 'none (counters in memory, this instance only)', lifecycle: 'none', state_dir: `${dir}/state`, spool_dir: `${dir}/spool` });
      expect(lines.find((l) => l.event === 'state_in_tmp')).toMatchObject({ level: 'warn', dirs: [`${dir}/state`, `${dir}/spool`] });
      const second = await exec('node', [CLI, 'serve', '--config', join(dir, 'douane.yaml')], { timeout: 15_000 }).then(
        () => ({ code: 0, stderr: '' }),
        (e: { code: number; stderr: string }) => e,
      );
      expect(second.code).toBe(1);
      expect(second.stderr).toContain(`douane: state_dir ${dir}/state is in use by another douane (PID ${first.pid} on `);
      expect(second.stderr).toMatch(/would send every notice and carry out every suspension twice/);
      first.kill('SIGTERM');
      expect(await exited).toBe(0);
      expect(existsSync(join(dir, 'state', 'douane.lock'))).toBe(false);
    } finally {
      first.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('serve logs a fault that nothing caught as one JSON line, then exits 70 for its supervisor to restart it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'douane-crash-'));
    try {
      // A stand-in for a bug: a promise rejected with nobody to catch it, once the gateway runs.
      // It waits for serve's own handlers, however slowly the machine starts the gateway.
      writeFileSync(
        join(dir, 'fault.mjs'),
        "const t = setInterval(() => { if (process.listenerCount('unhandledRejection') > 0) { clearInterval(t); void Promise.reject(new Error('injected fault')); } }, 50);\n",
      );
      writeFileSync(
        join(dir, 'douane.yaml'),
        ['listeners: { t: { mode: trusted, address: 127.0.0.1, port: 0, allow: [127.0.0.1] } }', 'upstream: { host: 127.0.0.1, port: 1, trusted_port: 1 }', 'clamd: none', 'admin: { enabled: false }', `spool: { dir: ${dir}/spool }`, `state_dir: ${dir}/state`, ''].join('\n'),
      );
      const r = await exec('node', ['--import', join(dir, 'fault.mjs'), CLI, 'serve', '--config', join(dir, 'douane.yaml')], { timeout: 15_000 }).then(
        () => ({ code: 0, stdout: '' }),
        (e: { code: number; stdout: string }) => e,
      );
      expect(r.code).toBe(70);
      const crash = r.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.event === 'crash');
      expect(crash).toMatchObject({ level: 'fatal', kind: 'unhandled rejection' });
      expect(String(crash!.err)).toMatch(/^Error: injected fault\n\s+at /);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('serve writes nothing but JSON lines: what a library prints (clamscan on a clamd that hung up) goes to the log', async () => {
    upstream = await FakeUpstream.start();
    // A clamd that resets the connection mid-stream, as one over its StreamMaxLength does.
    const clamd = await misbehavingClamd(resetAfter(64 * 1024));
    const dir = mkdtempSync(join(tmpdir(), 'douane-console-'));
    const child = serveOn(dir, [
      'listeners: { t: { mode: trusted, address: 127.0.0.1, port: 0, allow: [127.0.0.1] } }',
      `upstream: { host: 127.0.0.1, port: ${upstream.port}, trusted_port: ${upstream.port}, tls: none }`,
      `clamd: { hosts: [{ host: 127.0.0.1, port: ${clamd.port} }], timeout: 5s }`,
    ]);
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    const port = () => out.split('\n').filter((l) => l.endsWith('}')).map((l) => JSON.parse(l) as { event?: string; port?: number }).find((l) => l.event === 'listening')?.port;
    try {
      await expect.poll(port, { timeout: 10_000 }).toBeDefined();
      const c = await RawSmtp.connect(port()!);
      expect(await c.reply()).toMatch(/^220 /);
      await c.command('EHLO cli.test');
      await c.command('MAIL FROM:<user1@example.test>');
      await c.command('RCPT TO:<user2@example.test>');
      await c.command('DATA');
      c.write(`Subject: big\r\n\r\n${'x'.repeat(76).concat('\r\n').repeat(4000)}.\r\n`);
      expect(await c.reply()).toMatch(/^451 4\.3\.0 /);
      c.close();
      const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
      expect(err).toBe('');
      const lines = out.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
      expect(lines.find((l) => l.event === 'library_output')).toMatchObject({ level: 'warn', console: 'error', msg: expect.stringMatching(/^node-clam: Error emitted from ClamAV socket: /) });
    } finally {
      child.kill('SIGKILL');
      await clamd.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('serve sends Node warnings and console.dir output of a library to the log, not to stderr', async () => {
    upstream = await FakeUpstream.start();
    const dir = mkdtempSync(join(tmpdir(), 'douane-warning-'));
    writeFileSync(
      join(dir, 'douane.yaml'),
      [
        'listeners: { t: { mode: trusted, address: 127.0.0.1, port: 0, allow: [127.0.0.1] } }',
        `upstream: { host: 127.0.0.1, port: ${upstream.port}, trusted_port: ${upstream.port}, tls: none }`,
        'admin: { enabled: false }',
        `spool: { dir: ${dir}/spool }`,
        `state_dir: ${dir}/state`,
        'clamd: none',
        'log: { level: debug }',
        '',
      ].join('\n'),
    );
    // Stands in for a dependency that warns (a deprecation) and dumps an object, once the gateway runs.
    writeFileSync(
      join(dir, 'noisy-library.cjs'),
      "process.on('SIGUSR2', () => { process.emitWarning('old API used', { type: 'DeprecationWarning', code: 'DEP0999' }); console.dir({ pool: { size: 3 } }); });\n",
    );
    const child = spawn('node', ['--require', join(dir, 'noisy-library.cjs'), CLI, 'serve', '--config', join(dir, 'douane.yaml')], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    const lines = () => out.split('\n').filter((l) => l.endsWith('}')).map((l) => JSON.parse(l) as Record<string, unknown>);
    try {
      await expect.poll(() => lines().some((l) => l.event === 'listening'), { timeout: 10_000 }).toBe(true);
      child.kill('SIGUSR2');
      // The log is buffered for up to a second.
      await expect.poll(() => lines().filter((l) => l.event === 'runtime_warning' || l.console === 'dir').length, { timeout: 5_000 }).toBe(2);
      const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
      expect(err).toBe('');
      expect(lines().find((l) => l.event === 'runtime_warning')).toMatchObject({ level: 'warn', warning: 'DeprecationWarning', code: 'DEP0999', msg: 'old API used' });
      expect(lines().find((l) => l.console === 'dir')).toMatchObject({ event: 'library_output', level: 'debug', msg: '{ pool: { size: 3 } }' });
    } finally {
      child.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('serve takes a renewed TLS certificate on SIGHUP, keeps the one in use when the new pair is bad, and survives a SIGHUP while starting', async () => {
    const { execFileSync } = await import('node:child_process');
    const { copyFileSync } = await import('node:fs');
    const tls = await import('node:tls');
    const net = await import('node:net');
    const dir = mkdtempSync(join(tmpdir(), 'douane-tls-reload-'));
    // The first ends within the 14 days that are worth a warning; its renewal does not.
    for (const [name, days] of [['first', '2'], ['second', '60']]) {
      execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', days!, '-subj', `/CN=${name}.douane.test`, '-keyout', join(dir, `${name}.key`), '-out', join(dir, `${name}.crt`)], { stdio: 'pipe' });
    }
    copyFileSync(join(dir, 'first.crt'), join(dir, 'cert.pem'));
    copyFileSync(join(dir, 'first.key'), join(dir, 'key.pem'));
    // An upstream that never greets holds the start for a few seconds (learning its extensions).
    const silent = net.createServer(() => undefined);
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', () => r()));
    const silentPort = (silent.address() as { port: number }).port;
    const child = serveOn(dir, [
      'listeners: { submissions: { mode: tls, address: 127.0.0.1, port: 0 } }',
      `tls: { cert: ${dir}/cert.pem, key: ${dir}/key.pem }`,
      `upstream: { host: 127.0.0.1, port: ${silentPort}, trusted_port: ${silentPort}, tls: none }`,
      'clamd: none',
    ]);
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    const lines = () => out.split('\n').filter((l) => l.endsWith('}')).map((l) => JSON.parse(l) as Record<string, unknown>);
    const served = async (port: number) => {
      const socket = tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false });
      await new Promise((r) => socket.once('secureConnect', r));
      const cn = socket.getPeerCertificate().subject.CN;
      socket.destroy();
      return cn;
    };
    try {
      await expect.poll(() => lines().some((l) => l.event === 'start'), { timeout: 10_000 }).toBe(true);
      child.kill('SIGHUP');
      await expect.poll(() => lines().find((l) => l.event === 'listening')?.port, { timeout: 15_000 }).toBeDefined();
      expect(child.exitCode).toBeNull();
      const port = lines().find((l) => l.event === 'listening')!.port as number;
      expect(await served(port)).toBe('first.douane.test');
      const expiring = () => lines().filter((l) => l.event === 'tls_certificate_expiring');
      expect(expiring()).toEqual([expect.objectContaining({ level: 'warn', subject: 'CN=first.douane.test', msg: expect.stringMatching(/, in 1 day: renew it and send SIGHUP$/) })]);
      const check = await douane(['config', 'check', join(dir, 'douane.yaml')]);
      expect(check.code).toBe(0);
      expect(check.stdout).toMatch(new RegExp(`^  warning: tls\\.cert ${dir}/cert\\.pem: the TLS certificate \\(CN=first\\.douane\\.test\\) expires on \\S+, in 1 day: `, 'm'));

      copyFileSync(join(dir, 'second.crt'), join(dir, 'cert.pem'));
      copyFileSync(join(dir, 'second.key'), join(dir, 'key.pem'));
      child.kill('SIGHUP');
      await expect.poll(() => lines().find((l) => l.event === 'tls_reloaded'), { timeout: 5000 }).toMatchObject({ subject: 'CN=second.douane.test' });
      expect(await served(port)).toBe('second.douane.test');
      expect(expiring()).toHaveLength(1);
      // The configuration is not reloaded, and a SIGHUP after it changed says so.
      expect(lines().filter((l) => l.event === 'config_changed')).toEqual([]);
      writeFileSync(join(dir, 'douane.yaml'), `${readFileSync(join(dir, 'douane.yaml'), 'utf8')}log: { level: debug }\n`);
      child.kill('SIGHUP');
      await expect.poll(() => lines().find((l) => l.event === 'config_changed'), { timeout: 5000 }).toMatchObject({ level: 'warn', config: join(dir, 'douane.yaml'), msg: expect.stringMatching(/restart douane to apply the configuration$/) });
      expect((await douane(['config', 'check', join(dir, 'douane.yaml')])).stdout).not.toMatch(/warning/);

      // Half copied: the first certificate with the second key. Refused; the pair in use stays.
      copyFileSync(join(dir, 'first.crt'), join(dir, 'cert.pem'));
      child.kill('SIGHUP');
      await expect.poll(() => lines().find((l) => l.event === 'tls_reload_failed'), { timeout: 5000 }).toMatchObject({ err: expect.stringMatching(/do not make a certificate and its key/) });
      expect(await served(port)).toBe('second.douane.test');

      const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
    } finally {
      child.kill('SIGKILL');
      silent.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('serve on the embedded default relays a message, then drains and exits 0 on SIGTERM, a second one notwithstanding', async () => {
    upstream = await FakeUpstream.start();
    // Port 0 everywhere (no port can be taken by another test meanwhile); the log says which were bound.
    const child = spawn('node', [CLI, 'serve'], {
      env: {
        PATH: process.env.PATH!,
        ...(process.env.TMPDIR ? { TMPDIR: process.env.TMPDIR } : {}),
        DOUANE_UPSTREAM_PORT: String(upstream.port),
        DOUANE_UPSTREAM_TRUSTED_PORT: String(upstream.port),
        DOUANE_LISTENERS_SUBMISSION_PORT: '0',
        DOUANE_LISTENERS_SUBMISSIONS_PORT: '0',
        DOUANE_LISTENERS_TRUSTED_PORT: '0',
        DOUANE_ADMIN_PORT: '0',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const bound = (event: string, listener?: string) => {
      for (const l of out.split('\n')) {
        if (!l.startsWith('{') || !l.endsWith('}')) continue; // a line still being written
        const j = JSON.parse(l) as { event?: string; listener?: string; port?: number };
        if (j.event === event && (!listener || j.listener === listener) && j.port) return j.port;
      }
      return undefined;
    };
    try {
      await expect.poll(() => bound('listening', 'trusted') !== undefined && bound('admin_listening') !== undefined, { timeout: 10_000 }).toBe(true);
      const [trusted, admin] = [bound('listening', 'trusted')!, bound('admin_listening')!];
      const c = await RawSmtp.connect(trusted);
      expect(await c.reply()).toMatch(/^220 /);
      await c.command('EHLO cli.test');
      await c.command('MAIL FROM:<user1@example.test>');
      await c.command('RCPT TO:<user2@example.test>');
      await c.command('DATA');
      c.write('Subject: cli\r\n\r\nvia douane serve\r\n.\r\n');
      expect(await c.reply()).toMatch(/^250 2\.0\.0 Ok: queued as FAKE1/);
      c.close();
      const health = await fetch(`http://127.0.0.1:${admin}/healthz`);
      expect(health.status).toBe(200);
      // A transaction open at the signal is drained: a second SIGTERM does not cut it short.
      const open = await RawSmtp.connect(trusted);
      await open.reply();
      await open.command('EHLO cli.test');
      await open.command('MAIL FROM:<user1@example.test>');
      await open.command('RCPT TO:<user2@example.test>');
      const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
      child.kill('SIGTERM');
      await expect.poll(() => out.includes('"signal":"SIGTERM"')).toBe(true);
      child.kill('SIGTERM');
      await expect.poll(() => out.includes('already stopping')).toBe(true);
      expect(child.exitCode).toBeNull();
      await open.command('DATA');
      open.write('Subject: drained\r\n\r\nsent while stopping\r\n.\r\n');
      expect(await open.reply()).toMatch(/^250 2\.0\.0 Ok: queued as FAKE2/);
      open.close();
      expect(await exited).toBe(0);
      const lines = out.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
      expect(lines[0]).toMatchObject({ event: 'start', config: '(embedded default)' });
      expect(lines.some((l) => l.event === 'insecure_dev_tls')).toBe(true);
      expect(lines.find((l) => l.event === 'transaction')).toMatchObject({ verdict: 'accept', listener: 'trusted' });
      expect(lines[lines.length - 1]).toMatchObject({ event: 'stopped' });
    } finally {
      child.kill('SIGKILL');
    }
  });
});

describe('douane accounts', () => {
  it('suspends, shows, reinstates and lists the history of an account through the admin endpoint', async () => {
    const { startGateway } = await import('../harness/gateway.js');
    const { AdminServer } = await import('../../src/admin.js');
    const { createLogger } = await import('../../src/log.js');
    upstream = await FakeUpstream.start();
    const gw = await startGateway(upstream.port);
    const admin = new AdminServer({ address: '127.0.0.1', port: 0 }, gw.metrics, createLogger({ level: 'silent' }));
    admin.setAccounts(gw.gateway.enforcer);
    await admin.start();
    const url = `http://127.0.0.1:${admin.port}`;
    // Run through sudo as the service user, as staff would: the person behind sudo is the actor.
    const run = (...args: string[]) => douane(['accounts', ...args, '--admin', url], { SUDO_USER: 'alice' });
    try {
      const suspended = await run('suspend', 'user1@example.test', '--sending-only', '--for', '2h', '--reason', 'phishing complaint');
      expect(suspended.code).toBe(0);
      expect(JSON.parse(suspended.stdout)).toMatchObject({ action: 'suspend_sending', reason: 'phishing complaint' });
      const status = JSON.parse((await run('status', 'user1@example.test')).stdout) as { suspension: { by: string; until: number } };
      expect(status.suspension.by).toBe('cli:alice');
      expect(status.suspension.until - Date.now()).toBeGreaterThan(7_000_000);
      const c = await RawSmtp.connect(gw.port('trusted'));
      await c.reply();
      await c.command('EHLO t');
      expect(await c.command('MAIL FROM:<user1@example.test>')).toMatch(/^550 5\.7\.1 Sending is suspended/);
      c.close();
      expect((await run('reinstate', 'user1@example.test')).code).toBe(0);
      const history = JSON.parse((await run('history', 'user1@example.test')).stdout) as { action: string }[];
      expect(history.map((h) => h.action)).toEqual(['suspend_sending', 'reinstate']);
      const approve = await run('approve', 'user1@example.test');
      expect(approve.code).toBe(1);
      expect(approve.stderr).toMatch(/no suspension of user1@example\.test is waiting for approval/);
      expect((await run('status', 'not-an-address')).code).toBe(64);
      // A second account, or a word breaker does not know, is a usage error, not dropped: nothing is done.
      const two = await run('suspend', 'user2@example.test', 'user3@example.test');
      expect(two).toMatchObject({ code: 64, stderr: 'douane: accounts suspend takes one argument; unexpected: "user3@example.test"\n' });
      expect(await run('breaker', 'rest')).toMatchObject({ code: 64, stderr: 'douane: accounts breaker takes "reset" or nothing (got "rest")\n' });
      expect((await run('list', 'user2@example.test')).code).toBe(64);
      // Past ten years, or nothing: a usage error, and nothing suspended.
      for (const length of ['99999999d', '0s']) {
        const tooLong = await run('suspend', 'user2@example.test', '--sending-only', '--for', length);
        expect(tooLong.code).toBe(64);
        expect(tooLong.stderr).toMatch(/--for takes a duration such as 24h or 7d, at most 3650d/);
      }
      expect((JSON.parse((await run('status', 'user2@example.test')).stdout) as { suspension: unknown }).suspension).toBeNull();
      // A trailing slash is the same endpoint.
      expect((await douane(['accounts', 'status', 'user2@example.test', '--admin', `${url}/`])).code).toBe(0);
      // A login beyond ASCII (a header carries bytes) is the actor, as written.
      expect((await douane(['accounts', 'suspend', 'user2@example.test', '--sending-only', '--admin', url], { SUDO_USER: 'Łukasz' })).code).toBe(0);
      expect((JSON.parse((await run('status', 'user2@example.test')).stdout) as { suspension: { by: string } }).suspension.by).toBe('cli:Łukasz');
    } finally {
      await admin.stop();
      await gw.stop();
    }
  });

  it('says what is wrong in one line, without a stack: an endpoint not running, a URL that is none, a token it wants', async () => {
    const down = await douane(['accounts', 'list', '--admin', 'http://127.0.0.1:1']);
    expect(down).toMatchObject({ code: 1, stderr: expect.stringMatching(/^douane: cannot reach Douane's admin endpoint at http:\/\/127\.0\.0\.1:1 .*is douane serve running\? \(--admin URL\)\n$/) });
    const notUrl = await douane(['accounts', 'list', '--admin', 'notaurl']);
    expect(notUrl).toMatchObject({ code: 64, stderr: "douane: --admin takes the admin endpoint's URL, such as http://127.0.0.1:9725 (got notaurl)\n" });
    const { AdminServer } = await import('../../src/admin.js');
    const { Metrics } = await import('../../src/metrics.js');
    const { createLogger } = await import('../../src/log.js');
    const admin = new AdminServer({ address: '127.0.0.1', port: 0, token: 'a-token-of-twenty-chars' }, new Metrics({ version: 't', defaultMetrics: false }), createLogger({ level: 'silent' }));
    await admin.start();
    // Something else on that port (a dashboard) answering 200 with its own page: not a success.
    const other = http.createServer((_req, res) => res.writeHead(200, { 'content-type': 'text/html' }).end('<html>Grafana</html>'));
    await new Promise<void>((resolve) => other.listen(0, '127.0.0.1', resolve));
    try {
      const refused = await douane(['accounts', 'list', '--admin', `http://127.0.0.1:${admin.port}`]);
      expect(refused).toMatchObject({ code: 1, stderr: 'douane: the admin endpoint wants a token (HTTP 401): set DOUANE_ADMIN_TOKEN to a token of admin.token or admin.tokens\n' });
      const port = (other.address() as AddressInfo).port;
      const wrong = await douane(['accounts', 'reinstate', 'user1@example.test', '--admin', `http://127.0.0.1:${port}`]);
      expect(wrong).toMatchObject({ code: 1, stderr: `douane: HTTP 200 from http://127.0.0.1:${port}/accounts/user1%40example.test/reinstate is not Douane's answer (no JSON): is --admin the admin endpoint?\n` });
    } finally {
      await admin.stop();
      other.close();
    }
  });
});

describe('douane quarantine', () => {
  it('lists, deletes and purges, auditing the person behind sudo, and says what a purge left', async () => {
    const { LocalQuarantine } = await import('../../src/quarantine/store.js');
    const { Readable } = await import('node:stream');
    const { readFileSync } = await import('node:fs');
    const dir = mkdtempSync(join(tmpdir(), 'douane-cli-q-'));
    const config = join(dir, 'douane.yaml');
    writeFileSync(config, `hostname: douane.example.test\nlisteners:\n  trusted: { mode: trusted, port: 2525, allow: [127.0.0.1] }\nupstream: { host: 127.0.0.1 }\nclamd: none\nstate_dir: ${dir}/state\n`);
    const store = new LocalQuarantine(join(dir, 'state', 'quarantine'));
    const raw = 'From: user1@example.test\r\nSubject: kept\r\n\r\nhello\r\n';
    const keep = (reference: string, at: string) =>
      store.put({ reference, at, account: 'user1@example.test', listener: 'trusted', client: '127.0.0.1', sender: 'user1@example.test', recipients: ['bob@example.net'], action: 'quarantine', reason: 'malware', signature: 'Eicar-Test-Signature', policyVersion: 'abc', size: raw.length }, Readable.from([Buffer.from(raw)]));
    await keep('D-CLIQ01', new Date().toISOString());
    await keep('D-CLIQ02', '2020-01-01T00:00:00.000Z');
    await keep('D-CLIQ03', '2020-01-01T00:00:00.000Z');
    await keep('D-CLIQ04', '2020-01-01T00:00:00.000Z');
    const q = (...args: string[]) => douane(['quarantine', ...args, '--config', config], { SUDO_USER: 'alice' });
    try {
      const list = await q('list');
      expect(list.code).toBe(0);
      expect(list.stdout.trim().split('\n').map((l) => l.split(/\s+/)[0])).toEqual(['D-CLIQ02', 'D-CLIQ03', 'D-CLIQ04', 'D-CLIQ01']);
      // One account however it is written: case, an internationalised domain in either form.
      expect((await q('list', '--account', 'User1@Example.TEST')).stdout.trim().split('\n')).toHaveLength(4);
      // Nothing for an account: which quarantine was read is said.
      expect((await q('list', '--account', 'nobody@example.test')).stdout).toBe(`nothing for nobody@example.test in the quarantine (${join(dir, 'state', 'quarantine')})\n`);
      // Without --config, the embedded default's (under /tmp), and how to read another.
      expect((await douane(['quarantine', 'list'])).stdout).toMatch(/^quarantine is empty \(.*douane-state\/quarantine: the embedded default configuration's; --config FILE for another\)\n$/);
      const idn = await store.put({ reference: 'D-CLIQ05', at: new Date().toISOString(), account: 'joe@xn--bcher-kva.test', listener: 'trusted', client: '127.0.0.1', sender: 'joe@bücher.test', recipients: ['bob@example.net'], action: 'quarantine', reason: 'malware', policyVersion: 'abc', size: raw.length }, Readable.from([Buffer.from(raw)]));
      expect((await q('list', '--account', 'Joe@Bücher.test')).stdout).toMatch(/^D-CLIQ05 /);
      await store.delete(idn.id);
      // A second ID, or an ID given to purge (which takes none), is a usage error, and nothing is deleted.
      expect(await q('delete', 'D-CLIQ02', 'D-CLIQ01')).toMatchObject({ code: 64, stderr: 'douane: quarantine delete takes one argument; unexpected: "D-CLIQ01"\n' });
      expect(await q('purge', 'D-CLIQ02')).toMatchObject({ code: 64, stderr: 'douane: quarantine purge takes no argument; unexpected: "D-CLIQ02"\n' });
      expect((await store.list()).map((m) => m.id)).toEqual(['D-CLIQ02', 'D-CLIQ03', 'D-CLIQ04', 'D-CLIQ01']);
      expect(await q('delete', 'D-CLIQ02')).toMatchObject({ code: 0, stdout: 'D-CLIQ02 deleted\n' });
      const unlock = await store.lock('D-CLIQ03');
      const purge = await q('purge');
      expect(purge).toMatchObject({ code: 0, stdout: 'purged 1 message(s)\n' });
      expect(purge.stderr).toMatch(new RegExp(`^douane: D-CLIQ03 left in place: D-CLIQ03 is being released or deleted by someone else by process ${process.pid} on `));
      await unlock();
      const audit = readFileSync(join(dir, 'state', 'audit.log'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
      expect(audit).toEqual([
        expect.objectContaining({ action: 'quarantine_delete', actor: 'cli:alice', quarantine_id: 'D-CLIQ02' }),
        // Under its account: its history shows that the evidence is gone.
        expect.objectContaining({ action: 'quarantine_expired', actor: 'cli:alice', quarantine_id: 'D-CLIQ04', account: expect.any(String) }),
        expect.objectContaining({ action: 'quarantine_purge', actor: 'cli:alice', removed: 1 }),
      ]);
      expect((await store.list()).map((m) => m.id)).toEqual(['D-CLIQ03', 'D-CLIQ01']);
      // An entry whose metadata was cut short (a crash): named in one line, and it can be deleted.
      writeFileSync(join(dir, 'state', 'quarantine', 'D-CLIQ01.json'), '{"id": "D-CL');
      const shown = await q('show', 'D-CLIQ01');
      expect(shown.code).toBe(1);
      expect(shown.stderr).toBe(`douane: quarantine entry D-CLIQ01: ${join(dir, 'state', 'quarantine', 'D-CLIQ01.json')} cannot be read (${shown.stderr.match(/cannot be read \((.*)\); its message/)?.[1]}); its message is ${join(dir, 'state', 'quarantine', 'D-CLIQ01.eml')}\n`);
      const listed = await q('list');
      expect(listed.code).toBe(0);
      expect(listed.stderr).toMatch(/^douane: D-CLIQ01 is damaged: its metadata is not JSON \(.*\) \(douane quarantine delete D-CLIQ01\)\n$/);
      expect(await q('delete', 'D-CLIQ01')).toMatchObject({ code: 0, stdout: 'D-CLIQ01 deleted\n' });
      expect(existsSync(join(dir, 'state', 'quarantine', 'D-CLIQ01.eml'))).toBe(false);
      // An entry that cannot be removed: reported, exit 1, and what was removed beside it is audited.
      rmSync(join(dir, 'state', 'quarantine', 'D-CLIQ03.eml'));
      mkdirSync(join(dir, 'state', 'quarantine', 'D-CLIQ03.eml', 'x'), { recursive: true });
      await keep('D-CLIQ06', '2020-01-01T00:00:00.000Z');
      const failing = await q('purge');
      expect(failing).toMatchObject({ code: 1, stdout: 'purged 1 message(s)\n', stderr: expect.stringMatching(/^douane: D-CLIQ03 could not be removed: /) });
      const after = readFileSync(join(dir, 'state', 'audit.log'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
      expect(after.at(-2)).toMatchObject({ action: 'quarantine_expired', quarantine_id: 'D-CLIQ06' });
      // Metadata naming another entry (restored under the wrong name) is damaged: neither shown nor released
      // with the other's envelope.
      const now = new Date().toISOString();
      await keep('D-CLIQ07', now);
      await keep('D-CLIQ08', now);
      writeFileSync(join(dir, 'state', 'quarantine', 'D-CLIQ07.json'), readFileSync(join(dir, 'state', 'quarantine', 'D-CLIQ08.json')));
      for (const command of ['show', 'release']) {
        const refused = await q(command, 'D-CLIQ07');
        expect(refused, command).toMatchObject({ code: 1, stderr: expect.stringContaining(`quarantine entry D-CLIQ07: ${join(dir, 'state', 'quarantine', 'D-CLIQ07.json')} is damaged: its metadata names another entry ("D-CLIQ08")`) });
      }
      // An audit trail that cannot be written stops a deletion before anything is removed.
      rmSync(join(dir, 'state', 'audit.log'));
      mkdirSync(join(dir, 'state', 'audit.log'));
      expect((await q('delete', 'D-CLIQ08')).code).toBe(1);
      expect(existsSync(join(dir, 'state', 'quarantine', 'D-CLIQ08.eml'))).toBe(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
