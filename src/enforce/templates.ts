// The notifications' words: to the account holder in French and English (plain words: what happened,
// which article of the contract, how to appeal), and to the abuse team with the evidence.

export interface Notice {
  account: string;
  reference: string;
  /** strike events behind it, e.g. "malware ×3 (Eicar-Test-Signature)" */
  events: string[];
  total: number;
  article: string;
  contact: string;
  provider: string;
  until?: number;
  factor?: number;
}

export interface Mail {
  subject: string;
  text: string;
}

const frDate = (ms: number) => new Date(ms).toLocaleString('fr-FR', { timeZone: 'Europe/Paris' });
const enDate = (ms: number) => new Date(ms).toUTCString();

const ARTICLES_FR: Record<string, string> = {
  '4.1': "l'article 4.1 des conditions particulières (vous êtes responsable de vos identifiants ; un compte qui semble compromis est bloqué)",
  '4.3': "l'article 4.3 des conditions particulières (contenus illicites ou offensants)",
  '4.4': "l'article 4.4 des conditions particulières (atteinte aux serveurs)",
  '4.6': "l'article 4.6 des conditions particulières (envois non sollicités en grand nombre et virus interdits)",
};
const ARTICLES_EN: Record<string, string> = {
  '4.1': 'article 4.1 of the service terms (you are responsible for your credentials; an account that looks compromised is locked)',
  '4.3': 'article 4.3 of the service terms (illegal or offensive content)',
  '4.4': 'article 4.4 of the service terms (harming the servers)',
  '4.6': 'article 4.6 of the service terms (bulk unsolicited mail and viruses are forbidden)',
};

function appeal(n: Notice): { fr: string; en: string } {
  return {
    fr: `Si vous pensez qu'il s'agit d'une erreur, ou si votre mot de passe a pu être volé, répondez à ${n.contact} en citant la référence ${n.reference}. Changez votre mot de passe dès que possible.`,
    en: `If you believe this is a mistake, or your password may have been stolen, write to ${n.contact} quoting reference ${n.reference}. Change your password as soon as you can.`,
  };
}

function bilingual(fr: string[], en: string[]): string {
  return [...fr, '', '-- English --', '', ...en, ''].join('\n');
}

export function warningMail(n: Notice): Mail {
  const a = appeal(n);
  return {
    subject: `[${n.provider}] Avertissement / Warning — ${n.account}`,
    text: bilingual(
      [
        'Bonjour,',
        '',
        `Des messages envoyés depuis votre compte ${n.account} ont été refusés : ${n.events.join(', ')}.`,
        `Ces envois ne sont pas permis par ${ARTICLES_FR[n.article] ?? `l'article ${n.article} des conditions particulières`}.`,
        "Si cela continue, l'envoi de messages depuis ce compte sera limité puis suspendu.",
        a.fr,
      ],
      [
        'Hello,',
        '',
        `Messages sent from your account ${n.account} were refused: ${n.events.join(', ')}.`,
        `Such sending is not allowed by ${ARTICLES_EN[n.article] ?? `article ${n.article} of the service terms`}.`,
        'If it goes on, sending from this account will be limited, then suspended.',
        a.en,
      ],
    ),
  };
}

export function throttleMail(n: Notice): Mail {
  const a = appeal(n);
  const pct = Math.round((n.factor ?? 0) * 100);
  return {
    subject: `[${n.provider}] Envoi limité / Sending limited — ${n.account}`,
    text: bilingual(
      [
        'Bonjour,',
        '',
        `Après des envois refusés (${n.events.join(', ')}), l'envoi depuis ${n.account} est limité à ${pct} % de votre offre${n.until ? ` jusqu'au ${frDate(n.until)}` : ''}.`,
        `Motif : ${ARTICLES_FR[n.article] ?? `article ${n.article}`}.`,
        a.fr,
      ],
      [
        'Hello,',
        '',
        `After refused messages (${n.events.join(', ')}), sending from ${n.account} is limited to ${pct}% of your plan${n.until ? ` until ${enDate(n.until)}` : ''}.`,
        `Reason: ${ARTICLES_EN[n.article] ?? `article ${n.article}`}.`,
        a.en,
      ],
    ),
  };
}

export function suspensionMail(n: Notice, account: boolean): Mail {
  const a = appeal(n);
  return {
    subject: `[${n.provider}] Envoi suspendu / Sending suspended — ${n.account}`,
    text: bilingual(
      [
        'Bonjour,',
        '',
        `L'envoi de messages depuis votre compte ${n.account} est suspendu${n.until ? ` jusqu'au ${frDate(n.until)}` : ''}${account ? ' et le compte est verrouillé' : ''}, à la suite de : ${n.events.join(', ')}.`,
        `Cette mesure est prévue par ${ARTICLES_FR[n.article] ?? `l'article ${n.article} des conditions particulières`}.`,
        account ? 'Les messages qui vous sont adressés continuent de vous parvenir.' : 'Vous continuez de recevoir vos messages.',
        a.fr,
      ],
      [
        'Hello,',
        '',
        `Sending from your account ${n.account} is suspended${n.until ? ` until ${enDate(n.until)}` : ''}${account ? ' and the account is locked' : ''}, after: ${n.events.join(', ')}.`,
        `This is provided for by ${ARTICLES_EN[n.article] ?? `article ${n.article} of the service terms`}.`,
        'Mail addressed to you is still delivered.',
        a.en,
      ],
    ),
  };
}

export function reinstatedMail(n: Notice): Mail {
  return {
    subject: `[${n.provider}] Envoi rétabli / Sending restored — ${n.account}`,
    text: bilingual(
      ['Bonjour,', '', `L'envoi de messages depuis votre compte ${n.account} est rétabli (référence ${n.reference}).`],
      ['Hello,', '', `Sending from your account ${n.account} is restored (reference ${n.reference}).`],
    ),
  };
}

/** To the abuse team: what happened, the evidence, and what is waiting for them. */
export function abuseMail(kind: string, n: Notice, lines: string[]): Mail {
  return {
    subject: `[douane] ${kind}: ${n.account} (${n.reference})`,
    text: [`${kind} for ${n.account}`, `reference: ${n.reference}`, `strike total: ${n.total}`, `events: ${n.events.join(', ')}`, ...lines, ''].join('\n'),
  };
}
