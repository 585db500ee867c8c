// Builds test messages: MIME with base64 attachments, and stored (uncompressed) zip archives; and inspects
// a message with one attachment as the gateway does, with the shipped policy's verdict on it.

import { crc32 } from 'node:zlib';
import { MessageInspector } from '../../src/inspect/mime.js';
import type { Facts, MessageFacts } from '../../src/policy/facts.js';
import { loadPolicy } from '../../src/policy/load.js';
import type { Verdict } from '../../src/pipeline/verdict.js';

export interface Attachment {
  name: string;
  content: Buffer;
  type?: string;
}

export function mimeMessage(opts: { from: string; to?: string; subject?: string; text?: string; attachments?: Attachment[] }): string {
  const boundary = `b-${Math.random().toString(36).slice(2)}`;
  const lines = [
    `From: ${opts.from}`,
    `To: ${opts.to ?? 'user2@example.test'}`,
    `Subject: ${opts.subject ?? 'test'}`,
    `Message-ID: <${Math.random().toString(36).slice(2)}@example.test>`,
    'MIME-Version: 1.0',
    `Content-Type: multipart/mixed; boundary="${boundary}"`,
    '',
    `--${boundary}`,
    'Content-Type: text/plain; charset=utf-8',
    '',
    opts.text ?? 'Hello, see the attachment.',
  ];
  for (const a of opts.attachments ?? []) {
    lines.push(
      `--${boundary}`,
      `Content-Type: ${a.type ?? 'application/octet-stream'}; name="${a.name}"`,
      'Content-Transfer-Encoding: base64',
      `Content-Disposition: attachment; filename="${a.name}"`,
      '',
      ...(a.content.toString('base64').match(/.{1,76}/g) ?? ['']),
    );
  }
  lines.push(`--${boundary}--`, '');
  return lines.join('\r\n');
}

/** A zip archive with stored entries; `encrypted` sets the encryption flag (content left as is). */
export function zip(entries: { name: string; content: Buffer }[], opts: { encrypted?: boolean } = {}): Buffer {
  const locals: Buffer[] = [];
  const central: Buffer[] = [];
  let offset = 0;
  for (const e of entries) {
    const name = Buffer.from(e.name);
    const crc = crc32(e.content);
    const flags = opts.encrypted ? 1 : 0;
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt16LE(flags, 6);
    local.writeUInt16LE(0, 8);
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(e.content.length, 18);
    local.writeUInt32LE(e.content.length, 22);
    local.writeUInt16LE(name.length, 26);
    locals.push(local, name, e.content);
    const cd = Buffer.alloc(46);
    cd.writeUInt32LE(0x02014b50, 0);
    cd.writeUInt16LE(20, 4);
    cd.writeUInt16LE(20, 6);
    cd.writeUInt16LE(flags, 8);
    cd.writeUInt32LE(crc, 16);
    cd.writeUInt32LE(e.content.length, 20);
    cd.writeUInt32LE(e.content.length, 24);
    cd.writeUInt16LE(name.length, 28);
    cd.writeUInt32LE(offset, 42);
    central.push(cd, name);
    offset += 30 + name.length + e.content.length;
  }
  const cdBuf = Buffer.concat(central);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(entries.length, 8);
  end.writeUInt16LE(entries.length, 10);
  end.writeUInt32LE(cdBuf.length, 12);
  end.writeUInt32LE(offset, 16);
  return Buffer.concat([...locals, cdBuf, end]);
}

/** The facts of a message carrying this attachment (inspected in 16 KB pieces), and the shipped policy's verdict. */
export async function inspectAttachment(content: Buffer, name: string): Promise<{ message: MessageFacts; verdict: Verdict }> {
  const raw = Buffer.from(mimeMessage({ from: 'user1@example.test', subject: 'facture', text: 'Ci-joint.', attachments: [{ name, content }] }));
  const inspector = new MessageInspector({ maxParts: 100, maxDepth: 10, maxHeaderSize: 65_536 });
  for (let i = 0; i < raw.length; i += 16_384) await inspector.write(raw.subarray(i, i + 16_384));
  const message = await inspector.end();
  const facts: Facts = {
    listener: 'submission',
    listenerMode: 'starttls',
    clientIp: '192.0.2.7',
    authenticated: true,
    account: { name: 'user1@example.test', domain: 'example.test', plan: 'standard', status: 'active', allowlisted: { neverSuspend: false, bulkExempt: false, trustedSubmitter: false } },
    sender: 'user1@example.test',
    recipients: ['user2@example.test'],
    message,
  };
  return { message, verdict: loadPolicy('policies').evaluate('data', facts).verdict };
}
