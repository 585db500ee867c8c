// Sends notifications through the outbox (a failure never blocks enforcement, and is retried): mails to
// the account holder and the abuse team with nodemailer, and JSON events to the SIEM's webhook, signed
// with webhook.secret as src/lifecycle/signing.ts describes.

import nodemailer from 'nodemailer';
import { signingHeaders } from '../lifecycle/signing.js';
import type { Metrics } from '../metrics.js';
import { PermanentFailure, type Job } from './outbox.js';
import type { Mail } from './templates.js';

export interface MailJob {
  channel: 'holder' | 'abuse';
  to: string[];
  subject: string;
  text: string;
}

export interface WebhookJob {
  event: Record<string, unknown>;
}

/** Where notices are sent, and how its certificate is checked. */
export interface NoticeSmtp {
  host: string;
  port: number;
  /** TLS from the first byte (465); otherwise STARTTLS when offered, or always with `require_tls` */
  secure: boolean;
  verify_certificate: boolean;
  /** the CA that signed its certificate (PEM), when not a public one */
  ca?: Buffer;
  /** the name its certificate carries, when not `host` */
  servername?: string;
  require_tls?: boolean;
  /** no STARTTLS even when offered */
  ignore_tls?: boolean;
}

export interface NotifySettings {
  from: string;
  smtp: NoticeSmtp;
  webhook?: { url: string; secret?: string; timeout: number };
}

export function mailHandler(settings: NotifySettings, metrics: Metrics): (job: Job) => Promise<void> {
  const transport = nodemailer.createTransport({
    host: settings.smtp.host,
    port: settings.smtp.port,
    secure: settings.smtp.secure,
    requireTLS: settings.smtp.require_tls ?? false,
    ignoreTLS: settings.smtp.ignore_tls ?? false,
    tls: { rejectUnauthorized: settings.smtp.verify_certificate, ...(settings.smtp.ca ? { ca: settings.smtp.ca } : {}), ...(settings.smtp.servername ? { servername: settings.smtp.servername } : {}) },
    connectionTimeout: 10_000,
    greetingTimeout: 10_000,
    socketTimeout: 30_000,
  });
  return async (job) => {
    const m = job.payload as MailJob;
    try {
      await transport.sendMail({ from: settings.from, to: m.to, subject: m.subject, text: m.text, headers: { 'Auto-Submitted': 'auto-generated', 'X-Douane-Notice': m.channel } });
      metrics.notifications.labels(m.channel, 'sent').inc();
    } catch (err) {
      // Counted as what happens next: a 5xx is never tried again.
      const code = (err as { responseCode?: number }).responseCode;
      const permanent = code !== undefined && code >= 500;
      metrics.notifications.labels(m.channel, permanent ? 'failed' : 'retry').inc();
      if (permanent) throw new PermanentFailure(`${m.channel} notification refused: ${(err as Error).message}`);
      throw err;
    }
  };
}

export function webhookHandler(settings: NonNullable<NotifySettings['webhook']>, metrics: Metrics): (job: Job) => Promise<void> {
  return async (job) => {
    const body = JSON.stringify((job.payload as WebhookJob).event);
    const headers: Record<string, string> = {
      'content-type': 'application/json',
      ...(settings.secret ? signingHeaders(settings.secret, 'POST', new URL(settings.url), body) : { 'x-douane-timestamp': String(Math.floor(Date.now() / 1000)) }),
    };
    let res: Response;
    try {
      // Not followed: a 301/302/303 would turn the event into a bodiless GET that answers 200, and a
      // 307/308 would send the signed event wherever the redirect points. A moved endpoint is a
      // configuration error.
      res = await fetch(settings.url, { method: 'POST', headers, body, redirect: 'manual', signal: AbortSignal.timeout(settings.timeout) });
    } catch (err) {
      metrics.notifications.labels('webhook', 'retry').inc();
      throw new Error(`webhook unreachable: ${(err as Error).message}`);
    }
    // Only the status matters; the body is let go so that the connection is freed.
    await res.body?.cancel().catch(() => undefined);
    if (res.ok) {
      metrics.notifications.labels('webhook', 'sent').inc();
      return;
    }
    // As the lifecycle API's answers are read: the endpoint is busy or slow (408, 425, 429) or down (5xx).
    const retried = res.status >= 500 || res.status === 408 || res.status === 425 || res.status === 429;
    metrics.notifications.labels('webhook', retried ? 'retry' : 'failed').inc();
    if (retried) throw new Error(`webhook answered ${res.status}`);
    if (res.status >= 300 && res.status < 400) throw new PermanentFailure(`webhook answered ${res.status}, a redirect to ${res.headers.get('location') ?? '(no location)'}: set webhook.url to where the endpoint is now`);
    throw new PermanentFailure(`webhook refused the event: ${res.status}`);
  };
}

export function mailJob(channel: MailJob['channel'], to: string[], mail: Mail): MailJob {
  return { channel, to, subject: mail.subject, text: mail.text };
}
