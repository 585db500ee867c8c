// Bulk-send detection on live traffic with a real Redis: personalised copies of one campaign add up per
// account and across accounts and instances; ordinary different messages do not.

import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { FakeUpstream } from '../harness/fake-upstream.js';
import { startGateway, type TestGateway } from '../harness/gateway.js';
import { RawSmtp } from '../harness/net.js';
import { startRedis, type RedisInstance } from '../harness/redis.js';

let redis: RedisInstance;
let upstream: FakeUpstream;
const gateways: TestGateway[] = [];

beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await redis?.stop();
});
beforeEach(async () => {
  redis.cli('flushall');
  upstream = await FakeUpstream.start();
});
afterEach(async () => {
  await Promise.all(gateways.splice(0).map((g) => g.stop()));
  await upstream.stop();
});

async function gateway(redisConfigured = true): Promise<TestGateway> {
  const gw = await startGateway(upstream.port, {
    policy: { dir: 'fixtures/policies/bulk', watch: false },
    limits: redisConfigured ? { redis: { url: redis.url } } : {},
  });
  gateways.push(gw);
  return gw;
}

const NAMES = ['Marie', 'Jean', 'Sophie', 'Luc', 'Camille', 'Hugo', 'Léa', 'Paul', 'Inès', 'Nora', 'Théo', 'Emma'];

/** A personalised copy of one promotional campaign. */
function campaign(from: string, n: number): string {
  const name = NAMES[n % NAMES.length]!;
  return [
    `From: ${from}`,
    `Subject: ${name}, -40% sur toute la boutique ce week-end`,
    `Message-ID: <promo-${n}-${Date.now()}@example.test>`,
    '',
    `Bonjour ${name},`,
    '',
    `Profitez de -40% sur toute la boutique jusqu'au 3${n % 10} mars avec votre code PROMO${1000 + n * 7}.`,
    `Plus de 2 000 articles en stock, livraison offerte dès 49 euros d'achat.`,
    `Voir les offres : https://shop.example.test/promo?u=${(n * 7919).toString(16)}&t=${Date.now() % 100000}`,
    '',
    `Pour ne plus recevoir nos offres : https://shop.example.test/unsubscribe?id=${n * 31}`,
    '',
  ].join('\r\n');
}

async function send(port: number, from: string, rcpts: string[], body: string) {
  const c = await RawSmtp.connect(port);
  await c.reply();
  await c.command('EHLO t');
  await c.command(`MAIL FROM:<${from}>`);
  for (const r of rcpts) await c.command(`RCPT TO:<${r}>`);
  await c.command('DATA');
  c.write(body + '\r\n.\r\n');
  const reply = await c.reply();
  c.close();
  return reply;
}

const rcpts = (from: number, n: number) => Array.from({ length: n }, (_, i) => `client${from + i}@example.net`);

describe('bulk detection', () => {
  it('personalised copies from one account add up; past 20 recipients the campaign is refused with 550 5.7.1 and a strike', async () => {
    const gw = await gateway();
    const replies = [];
    for (let i = 0; i < 5; i++) replies.push(await send(gw.port('trusted'), 'shop@example.test', rcpts(i * 5, 5), campaign('shop@example.test', i)));
    expect(replies.slice(0, 4).every((r) => r.startsWith('250'))).toBe(true);
    expect(replies[4]).toMatch(/^550 5\.7\.1 Message refused: the same content went to too many recipients \(25\); bulk mailing is not allowed from this account\. Ref D-[0-9A-Z]{6}, rule bulk\.campaign, art\. 4\.6\.$/);
    const strike = await gw.waitForLog((l) => l.event === 'strike');
    expect(strike).toMatchObject({ strike: 'bulk', weight: 8, rule: 'bulk.campaign' });
    expect((strike.evidence as { bulk: { fingerprint: string } }).bulk.fingerprint).toBeTruthy();
  });

  it('one campaign through several accounts on two instances is seen as one', async () => {
    const [a, b] = [await gateway(), await gateway()];
    const accounts = ['x1@example.test', 'x2@example.test', 'x3@example.test'];
    const replies: string[] = [];
    for (let i = 0; i < accounts.length; i++) {
      const from = accounts[i]!;
      replies.push(await send((i % 2 ? a : b).port('trusted'), from, rcpts(i * 12, 12), campaign(from, i)));
    }
    // 12 + 12 recipients from two accounts pass; the third account takes it to 36 > 30 across 3 accounts.
    expect(replies.slice(0, 2).every((r) => r.startsWith('250'))).toBe(true);
    expect(replies[2]).toMatch(/^550 5\.7\.1 .*rule bulk\.shared-campaign/);
  });

  it('different ordinary messages to many recipients do not add up', async () => {
    const gw = await gateway();
    const topics = [
      'Le compte rendu de la réunion de lundi est en pièce jointe, merci de le relire avant jeudi.',
      'Peux-tu me rappeler demain matin au sujet du devis pour la cuisine ? Je suis disponible après 10h.',
      'Voici les photos du week-end à la montagne, la neige était parfaite et les enfants ont adoré.',
      'Rappel : la facture de février reste à régler, le virement peut se faire sur le compte habituel.',
      'Le colis est parti ce matin, tu devrais le recevoir vendredi au plus tard selon le transporteur.',
      'Nous organisons un pot de départ pour Claire vendredi à 17h dans la salle du troisième étage.',
    ];
    for (let i = 0; i < topics.length; i++) {
      const body = `From: office@example.test\r\nSubject: Message ${i}\r\n\r\nBonjour,\r\n\r\n${topics[i]}\r\n\r\nBonne journée,\r\nAnne\r\n`;
      expect(await send(gw.port('trusted'), 'office@example.test', rcpts(i * 8, 8), body)).toMatch(/^250 /);
    }
  });

  it('an account with a bulk agreement is counted but not refused', async () => {
    const gw = await gateway();
    for (let i = 0; i < 5; i++) expect(await send(gw.port('trusted'), 'newsletter@example.test', rcpts(i * 10, 10), campaign('newsletter@example.test', i))).toMatch(/^250 /);
    // Counted: the first copy was new, the four after it were recognised as the same content.
    const counts = (await gw.metrics.bulkChecks.get()).values;
    expect(counts.find((v) => v.labels.result === 'new')?.value).toBe(1);
    expect(counts.find((v) => v.labels.result === 'seen')?.value).toBe(4);
  });

  it('without Redis, counts are kept in memory for this instance', async () => {
    const gw = await gateway(false);
    const replies = [];
    for (let i = 0; i < 5; i++) replies.push(await send(gw.port('trusted'), 'shop@example.test', rcpts(i * 5, 5), campaign('shop@example.test', i)));
    expect(replies[4]).toMatch(/^550 5\.7\.1 .*rule bulk\.campaign/);
    expect(redis.cli('dbsize')).toBe('0');
  });
});
