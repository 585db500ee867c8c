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
  return { message, verdict: shippedVerdict(message) };
}

/** The shipped policy's DATA verdict on `message`, sent by an ordinary authenticated account. */
export function shippedVerdict(message: MessageFacts): Verdict {
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
  return loadPolicy('policies').evaluate('data', facts).verdict;
}

/**
 * A TNEF stream (winmail.dat) as Outlook writes one, after MS-OXTNEF: the message's version, code page
 * and class, then per file its rendering, short name (attAttachTitle), data and, when `long` is given, the
 * MAPI properties with its long name (PR_ATTACH_LONG_FILENAME) and attach method (5: an embedded message).
 * `embedded` is an Outlook item attached inside: a TNEF stream of its own, kept in PR_ATTACH_DATA_OBJ
 * after the GUID IID_IMessage.
 */
export function tnef(files: { title: string; long?: string; data: Buffer; method?: number; embedded?: Buffer }[]): Buffer {
  const u32 = (n: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(n >>> 0, 0);
    return b;
  };
  const padded = (b: Buffer) => Buffer.concat([b, Buffer.alloc(((b.length + 3) & ~3) - b.length)]);
  const attribute = (level: number, id: number, data: Buffer) => {
    const head = Buffer.alloc(9);
    head.writeUInt8(level, 0);
    head.writeUInt32LE(id, 1);
    head.writeUInt32LE(data.length, 5);
    const checksum = Buffer.alloc(2);
    checksum.writeUInt16LE(data.reduce((sum, b) => (sum + b) & 0xffff, 0), 0);
    return Buffer.concat([head, data, checksum]);
  };
  const parts = [u32(0x223e9f78), Buffer.from([0x01, 0x00])];
  parts.push(attribute(1, 0x00089006, u32(0x00010000)), attribute(1, 0x00069007, Buffer.concat([u32(1252), u32(0)])), attribute(1, 0x00078008, Buffer.from('IPM.Microsoft Mail.Note\0')));
  for (const f of files) {
    const rendering = Buffer.alloc(14);
    rendering.writeUInt16LE(1, 0);
    rendering.writeUInt32LE(0xffffffff, 2);
    parts.push(attribute(2, 0x00069002, rendering), attribute(2, 0x00018010, Buffer.from(`${f.title}\0`, 'latin1')), attribute(2, 0x0006800f, f.data));
    if (f.long !== undefined) {
      const name = Buffer.from(`${f.long}\0`, 'latin1');
      const properties = [u32(0x3707001e), u32(1), u32(name.length), padded(name), u32(0x37050003), u32(f.embedded ? 5 : (f.method ?? 1))];
      if (f.embedded) {
        const object = Buffer.concat([Buffer.from('0703020000000000c000000000000046', 'hex'), f.embedded]);
        properties.push(u32(0x3701000d), u32(1), u32(object.length), padded(object));
      }
      parts.push(attribute(2, 0x00069005, Buffer.concat([u32(f.embedded ? 3 : 2), ...properties])));
    }
  }
  return Buffer.concat(parts);
}
