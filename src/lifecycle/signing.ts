// How Douane signs the requests it sends to a provider's lifecycle API and to the enforcement webhook
// (auth.hmac, webhook.secret), so that the receiver can check that a request comes from Douane:
//
//   X-Douane-Timestamp: <unix time in seconds when the request was made>
//   X-Douane-Signature: sha256=<hex of HMAC-SHA256(secret, signed text)>
//
// where the signed text is four lines joined by "\n": the timestamp, the method in capitals, the path
// with its query string exactly as sent (e.g. /api/mailboxes/alice%40example.com/lock), and the body
// exactly as sent (UTF-8; empty when there is none). The receiver recomputes it, compares in constant
// time and refuses timestamps more than a few minutes away from its clock. Signing the method and the
// path means a captured "lock" request cannot be replayed to the "unlock" URL, whatever the bodies say.

import { createHmac } from 'node:crypto';

export function signedText(timestamp: string, method: string, url: URL, body: string): string {
  return [timestamp, method.toUpperCase(), url.pathname + url.search, body].join('\n');
}

export function signature(secret: string, timestamp: string, method: string, url: URL, body: string): string {
  return createHmac('sha256', secret).update(signedText(timestamp, method, url, body), 'utf8').digest('hex');
}

/** The two headers of a signed request. */
export function signingHeaders(secret: string, method: string, url: URL, body: string, header = 'X-Douane-Signature', now = Date.now()): Record<string, string> {
  const timestamp = String(Math.floor(now / 1000));
  return { 'x-douane-timestamp': timestamp, [header.toLowerCase()]: `sha256=${signature(secret, timestamp, method, url, body)}` };
}
