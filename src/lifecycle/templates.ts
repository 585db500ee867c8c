// The request templates of the HTTP lifecycle adapter (lifecycle.http.status | suspend | reinstate): the
// placeholders each may use, how they are filled (URL-encoded in the URL, JSON-escaped in the body), and
// what can be wrong with one — checked by the configuration loader (file:line) and by the adapter.

export const PLACEHOLDERS = {
  status: ['account'],
  suspend: ['account', 'reference', 'rule', 'article', 'summary'],
  reinstate: ['account', 'reference', 'by'],
} as const;

export type Values = Record<string, string | undefined>;

export function jsonEscape(s: string): string {
  return JSON.stringify(s).slice(1, -1);
}

export function render(template: string, values: Values, encode: (s: string) => string): string {
  return template.replace(/\{(\w+)\}/g, (whole, name: string) => (Object.prototype.hasOwnProperty.call(values, name) ? encode(values[name] ?? '') : whole));
}

/** What is wrong with a request template: unknown placeholders, a body that is not JSON, a URL that is not http(s). */
export function templateProblems(op: keyof typeof PLACEHOLDERS, t: { url: string; body?: string }): { where: 'url' | 'body'; message: string }[] {
  const allowed: readonly string[] = PLACEHOLDERS[op];
  const problems: { where: 'url' | 'body'; message: string }[] = [];
  for (const [where, text] of [['url', t.url], ['body', t.body]] as const) {
    if (text === undefined) continue;
    for (const m of text.matchAll(/\{(\w+)\}/g)) {
      if (!allowed.includes(m[1]!)) problems.push({ where, message: `has an unknown placeholder {${m[1]}} (known for ${op}: ${allowed.map((a) => `{${a}}`).join(' ')})` });
    }
  }
  if (problems.length) return problems;
  const sample = Object.fromEntries(allowed.map((a) => [a, 'x']));
  if (t.body !== undefined) {
    try {
      JSON.parse(render(t.body, sample, jsonEscape));
    } catch {
      problems.push({ where: 'body', message: 'is not JSON once its placeholders are filled' });
    }
  }
  let url: URL | undefined;
  try {
    url = new URL(render(t.url, sample, encodeURIComponent));
  } catch {
    problems.push({ where: 'url', message: 'is not a URL' });
  }
  if (url && url.protocol !== 'http:' && url.protocol !== 'https:') problems.push({ where: 'url', message: 'must be http: or https:' });
  return problems;
}
