// Network-address schemas and matching (CIDR allowlists), built on node:net's BlockList.

import { BlockList, isIP, isIPv6 } from 'node:net';
import { type Schema } from './schema.js';

export interface Cidr {
  text: string;
  address: string;
  prefix: number;
  family: 'ipv4' | 'ipv6';
}

export function parseCidr(text: string): Cidr | undefined {
  const [address, prefixText] = text.trim().split('/');
  if (!address) return undefined;
  const version = isIP(address);
  if (version === 0) return undefined;
  const max = version === 4 ? 32 : 128;
  const prefix = prefixText === undefined ? max : /^\d+$/.test(prefixText) ? Number(prefixText) : NaN;
  if (!Number.isInteger(prefix) || prefix < 0 || prefix > max) return undefined;
  return { text, address, prefix, family: version === 4 ? 'ipv4' : 'ipv6' };
}

export function cidr(): Schema<Cidr> {
  return {
    expected: 'an IP address or network such as 10.0.0.0/8 or 2001:db8::/32',
    parse(value, path, issues) {
      const parsed = typeof value === 'string' ? parseCidr(value) : undefined;
      if (!parsed) issues.push({ path, message: `must be an IP address or network such as 10.0.0.0/8 (got ${JSON.stringify(value)})` });
      return parsed;
    },
  };
}

export function ipAddress(): Schema<string> {
  return {
    expected: 'an IP address',
    parse(value, path, issues) {
      if (typeof value === 'string' && isIP(value) !== 0) return value;
      issues.push({ path, message: `must be an IP address such as 127.0.0.1 or :: (got ${JSON.stringify(value)})` });
      return undefined;
    },
  };
}

/** This host's own addresses: the default of lists that mean "only from here". */
export const LOOPBACK: readonly Cidr[] = [parseCidr('127.0.0.0/8')!, parseCidr('::1')!];

/** An allowlist of networks; IPv4-mapped IPv6 client addresses (::ffff:a.b.c.d) match their IPv4 entry. */
export class AddressList {
  private readonly list = new BlockList();
  constructor(readonly entries: readonly Cidr[]) {
    for (const c of entries) this.list.addSubnet(c.address, c.prefix, c.family);
  }
  has(address: string): boolean {
    const plain = address.startsWith('::ffff:') && isIP(address.slice(7)) === 4 ? address.slice(7) : address;
    const family = isIP(plain) === 4 ? 'ipv4' : 'ipv6';
    if (isIP(plain) === 0) return false;
    return this.list.check(plain, family);
  }
}

/** One spelling per address: IPv6 in its short form, an IPv4-mapped one as IPv4; a host name as it is. */
export function canonicalIp(address: string): string {
  if (!isIPv6(address)) return address;
  const short = new URL(`http://[${address}]/`).hostname.slice(1, -1);
  const mapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(short);
  if (!mapped) return short;
  const [hi, lo] = [parseInt(mapped[1]!, 16), parseInt(mapped[2]!, 16)];
  return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
}

/**
 * The network a client address stands for when counting its failures: an IPv4 address itself, an IPv6
 * one's /64 (one host gets a whole /64, and can pick a new address in it for every attempt).
 */
export function clientNetwork(address: string): string {
  const ip = canonicalIp(address);
  if (!isIPv6(ip)) return ip;
  // Expanded to its eight groups, then the first four kept.
  const [head = '', tail = ''] = ip.split('::');
  const left = head ? head.split(':') : [];
  const right = tail ? tail.split(':') : [];
  const groups = ip.includes('::') ? [...left, ...Array(8 - left.length - right.length).fill('0'), ...right] : left;
  return `${groups.slice(0, 4).map((g) => parseInt(g, 16).toString(16)).join(':')}::/64`;
}
