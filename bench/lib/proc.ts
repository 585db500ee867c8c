// Process measurements for benchmarks: CPU time (user+system) and peak resident memory, read from /proc.

import { readdirSync, readFileSync } from 'node:fs';

const TICKS_PER_SECOND = 100; // getconf CLK_TCK on Linux

function stat(pid: number): { ppid: number; cpu: number } | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
    return { ppid: Number(fields[1]), cpu: (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND };
  } catch {
    return undefined;
  }
}

/** The process and its descendants (Haraka's launcher runs the server as a child process). */
export function processTree(pid: number): number[] {
  const all = readdirSync('/proc').filter((d) => /^\d+$/.test(d)).map(Number);
  const children = new Map<number, number[]>();
  for (const p of all) {
    const s = stat(p);
    if (s) children.set(s.ppid, [...(children.get(s.ppid) ?? []), p]);
  }
  const out: number[] = [];
  const walk = (p: number) => {
    out.push(p);
    for (const c of children.get(p) ?? []) walk(c);
  };
  walk(pid);
  return out;
}

/** CPU seconds used so far by a process and its descendants (utime + stime). */
export function cpuSeconds(pid: number): number {
  return processTree(pid).reduce((sum, p) => sum + (stat(p)?.cpu ?? 0), 0);
}

/** Peak resident set size in bytes (VmHWM) of the largest process of the tree. */
export function peakRss(pid: number): number {
  let peak = 0;
  for (const p of processTree(pid)) {
    try {
      const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${p}/status`, 'utf8'));
      if (m) peak = Math.max(peak, Number(m[1]) * 1024);
    } catch {
      // gone
    }
  }
  return peak;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

export function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

/** Services started and not yet stopped: stopped on Ctrl-C too (Redis runs detached, and would stay). */
const running = new Set<() => Promise<unknown>>();

/** Registers `service` to be stopped if the benchmark is interrupted; its stop() then runs once. */
export function stopOnInterrupt<T extends { stop(): Promise<unknown> }>(service: T): T {
  const stop = service.stop.bind(service);
  let stopping: Promise<unknown> | undefined;
  const once = () => {
    running.delete(once);
    stopping ??= stop();
    return stopping;
  };
  running.add(once);
  service.stop = once;
  return service;
}

/** Stops every service still running. */
export async function stopEverything(): Promise<void> {
  await Promise.allSettled([...running].map((stop) => stop()));
}
