// The configuration used when no file is given: everything on loopback, for trying Douane on one machine
// in front of a local MTA (submission on 587, plain SMTP on 25). Not for production: the TLS
// listeners use a throwaway self-signed certificate and limits live in memory.

export const EMBEDDED_DEFAULT = `
listeners:
  submission: { mode: starttls, address: 127.0.0.1, port: 2587 }
  submissions: { mode: tls, address: 127.0.0.1, port: 2465 }
  trusted: { mode: trusted, address: 127.0.0.1, port: 2525, allow: [127.0.0.1/32, "::1/128"] }
tls:
  insecure_dev: true
upstream:
  host: 127.0.0.1
  port: 587
  trusted_port: 25
  tls: opportunistic
  verify_certificate: false
# No virus scanning here: point this at a clamd (clamd: { hosts: [{ socket: /run/clamav/clamd.ctl }] })
# to try it; a configuration must say one or the other.
clamd: none
`;
