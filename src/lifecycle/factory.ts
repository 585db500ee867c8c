// Builds the lifecycle API the configuration names (none, zimbra, http), with its status cache.

import { readFileSync } from 'node:fs';
import type { Config } from '../config/schema.js';
import type { Metrics } from '../metrics.js';
import { CachedLifecycle } from './cached.js';
import { HttpLifecycleApi } from './http.js';
import type { LifecycleApi } from './types.js';
import { ZimbraAdminApi } from './zimbra.js';

export function createLifecycle(config: Readonly<Config>, metrics: Metrics): LifecycleApi | undefined {
  const l = config.lifecycle;
  let api: LifecycleApi;
  if (l.adapter === 'none') return undefined;
  if (l.adapter === 'zimbra') {
    const z = l.zimbra;
    if (!z) throw new Error('lifecycle.adapter is zimbra but lifecycle.zimbra is missing');
    api = new ZimbraAdminApi({
      url: z.url,
      adminUser: z.admin_user,
      adminPassword: z.admin_password,
      ...(z.cos_plans ? { cosPlans: z.cos_plans } : {}),
      timeoutMs: l.timeout,
      tls: { ca: z.ca ? readFileSync(z.ca) : undefined, rejectUnauthorized: z.verify_certificate },
      metrics,
    });
  } else {
    const h = l.http;
    if (!h) throw new Error('lifecycle.adapter is http but lifecycle.http is missing');
    api = new HttpLifecycleApi({
      status: { method: h.status.method, url: h.status.url, body: h.status.body, statusField: h.status.status_field, statusMap: h.status.status_map, aliasesField: h.status.aliases_field, planField: h.status.plan_field, nameField: h.status.name_field },
      suspend: { method: h.suspend.method, url: h.suspend.url, body: h.suspend.body },
      reinstate: { method: h.reinstate.method, url: h.reinstate.url, body: h.reinstate.body },
      auth: h.hmac_secret ? { hmac: { secret: h.hmac_secret } } : h.bearer ? { bearer: h.bearer } : undefined,
      tls: { ca: h.ca ? readFileSync(h.ca) : undefined, rejectUnauthorized: h.verify_certificate },
      timeoutMs: l.timeout,
      metrics,
    });
  }
  // A failing API keeps answering with what it said last, for up to ten times the cache time.
  return new CachedLifecycle(api, { ttlMs: l.status_cache, staleMs: Math.max(l.status_cache * 10, 600_000) });
}
