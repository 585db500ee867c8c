// The configuration file's schema: every key, its type and its default, in one place.
// The example file (douane.example.yaml) documents each key; the two must be kept together.

import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { templateProblems } from '../lifecycle/templates.js';
import { cidr, ipAddress, LOOPBACK, type Cidr } from '../validate/net.js';
import {
  bool,
  bytes,
  duration,
  either,
  int,
  list,
  obj,
  oneOf,
  optional,
  record,
  refine,
  required,
  str,
  section,
  withDefault,
  type Issue,
  type Schema,
} from '../validate/schema.js';

/** The policies shipped with Douane (policies/ next to src/ and dist/). */
export const SHIPPED_POLICIES = fileURLToPath(new URL('../../policies', import.meta.url));

/** An admin bearer token. Printable ASCII, because an HTTP header carries bytes: a token with "è" in it could never match. */
const adminToken = () => str({ pattern: /^[\x21-\x7e]{16,}$/, expected: 'at least 16 printable ASCII characters, no spaces', secret: true });

const listener = refine(
  obj({
    mode: required(oneOf('starttls', 'tls', 'trusted')),
    address: withDefault(ipAddress(), '127.0.0.1'),
    port: required(int({ min: 0, max: 65535 })),
    allow: optional(list(cidr(), { min: 1 })),
    // Load balancers in front of this listener that open each connection with a PROXY protocol (v1) line
    // naming the client: connections from them are taken as from that client, the others as they are.
    proxy_protocol_from: optional(list(ipAddress(), { min: 1 })),
  }),
  (l, path): Issue[] => {
    if (l.mode === 'trusted' && !l.allow) {
      return [{ path: [...path, 'allow'], message: 'is required for a trusted listener: list the networks of the hosts allowed to submit without AUTH' }];
    }
    if (l.mode !== 'trusted' && l.allow) {
      return [{ path: [...path, 'allow'], atKey: true, message: 'only applies to a trusted listener (mode: trusted); clients of this listener authenticate' }];
    }
    // A client of a trusted listener sends as any account without AUTH: every address is an open relay
    // in every customer's name.
    const everyone = (l.allow ?? []).findIndex((c) => c.prefix === 0);
    if (everyone >= 0) {
      return [{ path: [...path, 'allow', everyone], message: `is ${l.allow![everyone]!.text}, every address: anyone who reaches this port would send as any customer without AUTH; list the webmail and mailbox hosts` }];
    }
    return [];
  },
);

// A name this host or the upstream answers to: what is sent in the greeting and in EHLO, where a space,
// a CR (a CRLF env file) or an "@" would make every session fail. Underscores are tolerated, as resolvers do.
const LABEL = '[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?';
const DOMAIN = `(?=[^\\s]{1,253}$)${LABEL}(?:\\.${LABEL})*\\.?`;
const HOST_NAME = new RegExp(`^(?:${DOMAIN}|\\[(?:IPv6:[0-9A-Fa-f:.]+|[0-9.]+)\\])$`);
const HOST_NAME_EXPECTED = 'a host name such as mail.example.com (letters, digits, hyphens and dots; an internationalised one in its xn-- form), or an address literal such as [192.0.2.1]';
// An IPv6 address may name its interface (fe80::1%eth0), as net.connect takes it.
// An IPv6 address has two colons at least: "127.0.0.1:25" is a host with its port, not an address.
const HOST = new RegExp(`^(?:${DOMAIN}|[0-9A-Fa-f.]*:[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*(?:%[\\w.-]+)?)$`);
/** Text shown in SMTP replies and notices: one line, no control characters. */
const ONE_LINE = { pattern: /^[^\p{Cc}\u2028\u2029]+$/u, expected: 'one line of text (no line break or control character: it is shown in SMTP replies)' };

/** A URL that parses, with one of `protocols` and a host: a typo fails here rather than at the first call. */
function url(protocols: string[], expected: string, secret = false): Schema<string> {
  return refine(str({ pattern: new RegExp(`^(?:${protocols.map((p) => p.replace(':', '')).join('|')})://`), expected, secret }), (value, path): Issue[] => {
    let parsed: URL;
    try {
      parsed = new URL(value);
    } catch {
      return [{ path, message: `is not a URL that can be read (expected ${expected})` }];
    }
    if (!protocols.includes(parsed.protocol) || parsed.hostname === '') return [{ path, message: `names no host (expected ${expected})` }];
    return [];
  });
}

const HOST_EXPECTED = 'a host name such as mta.example.com (an internationalised one in its xn-- form), or an IP address such as 192.0.2.10 or 2001:db8::10, without a port (the port has a key of its own)';

export const configSchema = obj({
  hostname: withDefault(str({ pattern: HOST_NAME, expected: HOST_NAME_EXPECTED }), os.hostname()),
  listeners: required(
    refine(record(listener, { key: /^[a-z][a-z0-9]*$/, keyExpected: 'lower-case letters and digits, starting with a letter' }), (ls, path) =>
      Object.keys(ls).length === 0 ? [{ path, message: 'must define at least one listener' }] : [],
    ),
  ),
  tls: section(
    obj({
      cert: optional(str()),
      key: optional(str()),
      insecure_dev: withDefault(bool(), false),
      // TLS 1.0 and 1.1 are not offered (RFC 8996; smtp-server would take TLS 1.0): 1.2 or 1.3 at least.
      min_version: withDefault(oneOf('TLSv1.2', 'TLSv1.3'), 'TLSv1.2'),
    }),
  ),
  upstream: required(
    obj({
      host: required(str({ pattern: HOST, expected: HOST_EXPECTED })),
      port: withDefault(int({ min: 1, max: 65535 }), 587),
      trusted_port: withDefault(int({ min: 1, max: 65535 }), 25),
      tls: withDefault(oneOf('opportunistic', 'starttls', 'implicit', 'none'), 'opportunistic'),
      verify_certificate: withDefault(bool(), true),
      ca: optional(str()),
      servername: optional(str({ pattern: HOST, expected: HOST_EXPECTED })),
      xclient: withDefault(bool(), false),
      helo_name: optional(str({ pattern: HOST_NAME, expected: HOST_NAME_EXPECTED })),
      timeouts: section(
        obj({
          connect: withDefault(duration({ min: 1, timer: true }), 10_000),
          command: withDefault(duration({ min: 1, timer: true }), 60_000),
          data: withDefault(duration({ min: 1, timer: true }), 600_000),
          /** while the client sends its message and it is checked, a NOOP this often keeps the upstream session open */
          keepalive: withDefault(duration({ min: 1, timer: true }), 60_000),
        }),
      ),
      pool: section(
        obj({
          size: withDefault(int({ min: 0, max: 1000 }), 16),
          idle: withDefault(duration({ min: 1, timer: true }), 30_000),
        }),
      ),
    }),
  ),
  smtp: section(
    obj({
      max_message_size: withDefault(bytes({ min: 1024 }), 26_214_400),
      max_recipients: withDefault(int({ min: 1, max: 100_000 }), 100),
      // Postfix's smtpd_recipient_overshoot_limit: a client may go on past its refusals for a while, not for ever.
      max_refused_recipients: withDefault(int({ min: 1, max: 100_000 }), 1000),
      max_connections: withDefault(int({ min: 1 }), 1000),
      max_connections_per_ip: withDefault(int({ min: 1 }), 20),
      max_auth_failures: withDefault(int({ min: 1 }), 3),
      max_line_length: withDefault(bytes({ min: 512 }), 4096),
      idle_timeout: withDefault(duration({ min: 100, timer: true }), 300_000),
      session_deadline: withDefault(duration({ min: 1000, timer: true }), 1_800_000),
    }),
  ),
  /** Douane's own durable files: quarantine/, audit.log, and the lifecycle outbox */
  state_dir: withDefault(str(), os.tmpdir() + '/douane-state'),
  quarantine: section(
    obj({
      /** quarantined messages older than this are purged */
      retention: withDefault(duration({ min: 60_000 }), 30 * 86_400_000),
    }),
  ),
  spool: section(
    obj({
      dir: withDefault(str(), os.tmpdir() + '/douane-spool'),
      memory_threshold: withDefault(bytes({ min: 0 }), 262_144),
    }),
  ),
  /**
   * Threads for the second look at a message whose first look, in the thread every session shares, ran
   * out of its small budget (a large compressed archive): they hold only each other's second looks.
   */
  inspection: section(obj({ threads: withDefault(int({ min: 1, max: 64 }), 1) })),
  shutdown: section(obj({ drain_timeout: withDefault(duration({ min: 0, timer: true }), 30_000) })),
  /**
   * Where to scan, or `none`: no virus scanning. Required and written out, so that a configuration that
   * lost its clamd section cannot relay unscanned mail by omission (scan.result is then unknown to the rules).
   */
  clamd: required(
    either(
      (v) => (typeof v === 'string' ? 'a' : 'b'),
      oneOf('none'),
      obj({
        hosts: required(
          list(
            refine(
              obj({ host: optional(str({ pattern: HOST, expected: HOST_EXPECTED })), port: optional(int({ min: 1, max: 65535 })), socket: optional(str()) }),
              (h, path): Issue[] => ((h.socket ? !h.host && !h.port : Boolean(h.host && h.port)) ? [] : [{ path, message: 'needs either socket, or host and port' }]),
            ),
            { min: 1 },
          ),
        ),
        /** the whole scan, from the first byte to the verdict, failover included */
        timeout: withDefault(duration({ min: 100, timer: true }), 60_000),
      }),
      'clamd hosts (hosts: [...]), or none to run without virus scanning',
    ),
  ),
  /** the account lifecycle API: suspend/reinstate accounts for good, read their status */
  lifecycle: section(
    refine(obj({
      adapter: withDefault(oneOf('none', 'zimbra', 'http'), 'none'),
      timeout: withDefault(duration({ min: 100, timer: true }), 10_000),
      /** how long an account's status is reused before asking again */
      status_cache: withDefault(duration({ min: 0 }), 60_000),
      zimbra: optional(
        obj({
          url: required(url(['http:', 'https:'], 'the admin SOAP URL, e.g. https://zimbra.internal:7071/service/admin/soap')),
          admin_user: required(str()),
          admin_password: required(str({ secret: true })),
          /** the policy's plan for each class of service (its zimbraId: zmprov gc NAME zimbraId) */
          cos_plans: optional(record(str(), { key: /^.+$/ })),
          ca: optional(str()),
          verify_certificate: withDefault(bool(), true),
        }),
      ),
      http: optional(
        obj({
          status: required(
            obj({
              method: withDefault(oneOf('GET', 'POST'), 'GET'),
              url: required(str({ pattern: /^https?:\/\//, expected: 'an http(s):// URL template with {account}' })),
              body: optional(str()),
              status_field: required(str()),
              status_map: optional(record(oneOf('active', 'locked', 'lockout', 'suspended', 'closed', 'maintenance', 'pending', 'unknown'), { key: /^.+$/ })),
              aliases_field: optional(str()),
              plan_field: optional(str()),
              name_field: optional(str()),
            }),
          ),
          suspend: required(obj({
          method: withDefault(oneOf('GET', 'POST', 'PUT', 'PATCH', 'DELETE'), 'POST'),
          url: required(str({ pattern: /^https?:\/\//, expected: 'an http(s):// URL template' })),
          body: optional(str()),
        })),
          reinstate: required(obj({
          method: withDefault(oneOf('GET', 'POST', 'PUT', 'PATCH', 'DELETE'), 'POST'),
          url: required(str({ pattern: /^https?:\/\//, expected: 'an http(s):// URL template' })),
          body: optional(str()),
        })),
          bearer: optional(str({ secret: true })),
          hmac_secret: optional(str({ secret: true })),
          ca: optional(str()),
          verify_certificate: withDefault(bool(), true),
        }),
      ),
    }), (l, path): Issue[] => {
      if ((l.adapter === 'zimbra' && !l.zimbra) || (l.adapter === 'http' && !l.http)) {
        return [{ path: [...path, 'adapter'], message: `is ${l.adapter}: add the lifecycle.${l.adapter} section with its settings` }];
      }
      // A section the adapter does not use: suspensions would never reach the API it describes.
      const unused = (['zimbra', 'http'] as const).find((name) => l[name] && l.adapter !== name);
      if (unused) {
        return [{ path: [...path, 'adapter'], atKey: true, message: `is ${l.adapter}${l.adapter === 'none' ? ' (its default)' : ''}, so lifecycle.${unused} is not used: no suspension would be carried out there and no status read; set adapter: ${unused}, or remove lifecycle.${unused}` }];
      }
      const issues: Issue[] = [];
      if (l.http) {
        for (const op of ['status', 'suspend', 'reinstate'] as const) {
          for (const p of templateProblems(op, l.http[op])) issues.push({ path: [...path, 'http', op, p.where], message: p.message });
        }
        if (l.http.bearer !== undefined && l.http.hmac_secret !== undefined) issues.push({ path: [...path, 'http', 'hmac_secret'], message: 'and bearer are both set: choose one way for Douane to authenticate its requests' });
      }
      return issues;
    }),
  ),
  enforcement: section(
    obj({
      /** log and audit what would be done, do nothing */
      dry_run: withDefault(bool(), false),
      /** suspensions wait for `douane accounts approve` */
      approval: withDefault(bool(), false),
      /** more automatic suspensions than this in an hour stops them until `douane accounts breaker reset` */
      breaker_max_per_hour: withDefault(int({ min: 1 }), 10),
      /** whom customers contact about a refusal or a suspension (shown in replies and notices) */
      contact: withDefault(str(ONE_LINE), 'your provider\'s support'),
      /** the provider's name in notices */
      provider: withDefault(str(ONE_LINE), 'Douane'),
      notify: section(
        obj({
          holder: withDefault(bool(), true),
          abuse_team: withDefault(list(str({ pattern: /^[^\s@]+@[^\s@]+$/, expected: 'an address' })), []),
          from: optional(str({ pattern: /^(?:[^\s@]+@[^\s@]+|[^<>@\p{Cc}]*<[^\s@<>]+@[^\s@<>]+>)$/u, expected: 'an address, or a name and an address ("Abuse desk <abuse@example.net>")' })),
          /** where notices are sent; default: the upstream's trusted port */
          smtp: optional(
            obj({
              host: required(str({ pattern: HOST, expected: HOST_EXPECTED })),
              port: required(int({ min: 1, max: 65535 })),
              secure: withDefault(bool(), false),
              verify_certificate: withDefault(bool(), true),
              ca: optional(str()),
              servername: optional(str({ pattern: HOST, expected: HOST_EXPECTED })),
            }),
          ),
        }),
      ),
      webhook: optional(obj({ url: required(url(['http:', 'https:'], 'an http(s):// URL')), secret: optional(str({ secret: true })), timeout: withDefault(duration({ min: 100, timer: true }), 5000) })),
      outbox: section(
        refine(
          obj({
            retry_min: withDefault(duration({ min: 10, timer: true }), 5000),
            retry_max: withDefault(duration({ min: 100, timer: true }), 600_000),
            /** notices and webhook events are given up after this long (lifecycle calls never are) */
            give_up_after: withDefault(duration({ min: 60_000 }), 7 * 86_400_000),
          }),
          (o, path): Issue[] => (o.retry_max < o.retry_min ? [{ path: [...path, 'retry_max'], message: `must not be shorter than retry_min (${o.retry_min} ms)` }] : []),
        ),
      ),
    }),
  ),
  limits: section(
    obj({
      /** absent: counters in memory (one instance only) */
      redis: optional(
        refine(
          obj({
            // secret: the URL may carry the password (redis://:password@host)
            url: optional(url(['redis:', 'rediss:'], 'a redis:// or rediss:// URL', true)),
            sentinels: optional(list(obj({ host: required(str({ pattern: HOST, expected: HOST_EXPECTED })), port: required(int({ min: 1, max: 65535 })) }), { min: 1 })),
            sentinel_name: optional(str()),
            cluster: optional(list(obj({ host: required(str({ pattern: HOST, expected: HOST_EXPECTED })), port: required(int({ min: 1, max: 65535 })) }), { min: 1 })),
            username: optional(str()),
            password: optional(str({ secret: true })),
            tls: withDefault(bool(), false),
            key_prefix: withDefault(str({ pattern: /^[A-Za-z0-9_.:-]+$/, expected: 'letters, digits, _ . : -' }), 'douane'),
          }),
          (r, path): Issue[] => {
            const modes = [r.url, r.sentinels, r.cluster].filter((x) => x !== undefined).length;
            return modes === 1 ? [] : [{ path, message: 'needs exactly one of url, sentinels or cluster' }];
          },
        ),
      ),
      /** every limiter decision within this time, Redis or not */
      deadline: withDefault(duration({ min: 10, timer: true }), 500),
      /** when Redis fails: decide with in-process insurance limits (and log, count), or tempfail (451) */
      on_redis_failure: withDefault(oneOf('insurance', 'tempfail'), 'insurance'),
    }),
  ),
  policy: section(
    obj({
      dir: withDefault(str(), SHIPPED_POLICIES),
      /** reload when a file in the directory changes (SIGHUP always reloads) */
      watch: withDefault(bool(), true),
    }),
  ),
  admin: section(
    refine(
      obj({
        address: withDefault(ipAddress(), '127.0.0.1'),
        port: withDefault(int({ min: 0, max: 65535 }), 9725),
        /** full access; the audit trail records the actor the caller declares */
        token: optional(adminToken()),
        /** named tokens: the audit trail records the name; `read` cannot change anything */
        tokens: withDefault(
          list(
            obj({
              name: required(str({ pattern: /^[A-Za-z0-9._-]{1,64}$/, expected: 'a name of letters, digits, ".", "_" or "-"' })),
              token: required(adminToken()),
              scope: required(oneOf('read', 'act')),
            }),
          ),
          [],
        ),
        /** without any token, the accounts API answers these networks only (/metrics and /readyz stay open) */
        without_token_from: withDefault(list(cidr(), { min: 1 }), [...LOOPBACK]),
        enabled: withDefault(bool(), true),
      }),
      (a, path): Issue[] => {
        const issues: Issue[] = [];
        const names = new Set<string>();
        // Not compared with admin.token: `douane accounts` takes its holder's own token from
        // DOUANE_ADMIN_TOKEN (admin.token) while reading the same file.
        const secrets = new Set<string>();
        a.tokens.forEach((t, i) => {
          if (names.has(t.name)) issues.push({ path: [...path, 'tokens', i, 'name'], message: `"${t.name}" is used by another token` });
          if (secrets.has(t.token)) issues.push({ path: [...path, 'tokens', i, 'token'], message: 'is the same as another token: each holder needs their own' });
          names.add(t.name);
          secrets.add(t.token);
        });
        return issues;
      },
    ),
  ),
  log: section(
    obj({
      level: withDefault(oneOf('trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'), 'info'),
      pretty: withDefault(bool(), false),
    }),
  ),
});

type Parsed<S> = S extends { parse(...args: never[]): infer T | undefined } ? NonNullable<T> : never;
export type Config = Parsed<typeof configSchema>;
export type ListenerConfig = Config['listeners'][string];
export type UpstreamConfig = Config['upstream'];
export type { Cidr };
