// The README's first command: `npm run demo` runs Douane on its embedded default in front of a private
// Postfix + Dovecot and shows a message going through, a wrong password and a smuggling attempt. What it
// prints is what a new user sees first, so it is checked here line by line.

import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const exec = promisify(execFile);

describe('npm run demo', () => {
  it('shows the listeners, a delivered message, a 535 and a smuggling refusal, then stops everything', { timeout: 180_000 }, async () => {
    const { stdout } = await exec('npm', ['run', '--silent', 'demo'], { encoding: 'utf8', timeout: 170_000 });
    const text = stdout.replace(/\x1b\[[0-9;]*m/g, '');
    for (const l of ['listening on 127.0.0.1:2587 (starttls)', 'listening on 127.0.0.1:2465 (tls)', 'listening on 127.0.0.1:2525 (trusted)']) expect(text).toContain(l);
    // the client's conversation after STARTTLS, with its AUTH and the upstream's own queue id
    expect(text).toMatch(/<~ {2}235 2\.7\.0 Authentication successful/);
    const queued = /<~ {2}250 2\.0\.0 Ok: \d+ bytes queued as ([0-9A-F]+)/.exec(text);
    expect(queued, text).not.toBeNull();
    // delivered by Postfix: the mailbox copy carries the same queue id
    expect(text).toContain('Delivered-To: user2@example.test');
    expect(text).toContain(`id ${queued![1]}`);
    expect(text).toMatch(/535 5\.7\.8 Authentication failed: wrong user name or password\. Ref D-[0-9A-Z]{6}\./);
    expect(text).toMatch(/550 5\.6\.0 Message refused: it contains a bare CR or LF.*Ref D-[0-9A-Z]{6}\./);
    // the log lines: the accepted transaction, the failed AUTH, the refused one
    expect(text).toMatch(/"event":"transaction".*"verdict":"accept"/);
    expect(text).toMatch(/"event":"auth".*"result":"failure"/);
    expect(text).toMatch(/"event":"transaction".*"verdict":"reject","reason":"message\.bare_line_ending"/);
    expect(text).toContain('Done: Douane and the private Postfix/Dovecot were stopped.');
  });
});
