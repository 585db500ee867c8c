// What the gateway and its inspection threads say to each other (pool.ts, worker.ts).

import type { MessageFacts } from '../policy/facts.js';
import type { InspectLimits } from './mime.js';

export type ToWorker =
  | { type: 'start'; id: number; limits: InspectLimits }
  | { type: 'chunk'; id: number; data: Uint8Array }
  | { type: 'end'; id: number }
  /** the sender gave the message up (its spool could not be read): forget it */
  | { type: 'abort'; id: number };

export type FromWorker =
  /** a chunk was taken in: the sender may send that many more bytes */
  | { type: 'taken'; id: number; bytes: number }
  | { type: 'facts'; id: number; facts: MessageFacts }
  | { type: 'failed'; id: number; error: string };
