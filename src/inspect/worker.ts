// A thread for second looks (see pool.ts): each message is a MessageInspector of its own, with the full
// inflate budget, fed its chunks in order; a chunk is acknowledged once taken in, so that the sender can
// hold back.

import { parentPort } from 'node:worker_threads';
import { MessageInspector, type InspectLimits } from './mime.js';
import type { ToWorker, FromWorker } from './protocol.js';

const port = parentPort;
if (!port) throw new Error('the inspection worker must run in a worker thread');

interface Running {
  inspector: MessageInspector;
  /** a write that threw (a bug): the message cannot be judged, and end() says so */
  failure?: string;
  /** the last chunk's turn: each waits for the one before, as the inspector wants its writes in order */
  queue: Promise<void>;
}

const running = new Map<number, Running>();

function post(message: FromWorker): void {
  port!.postMessage(message);
}

port.on('message', (message: ToWorker) => {
  switch (message.type) {
    case 'start':
      running.set(message.id, { inspector: new MessageInspector(message.limits as InspectLimits), queue: Promise.resolve() });
      return;
    case 'chunk': {
      const run = running.get(message.id);
      if (!run) return;
      const chunk = Buffer.from(message.data.buffer, message.data.byteOffset, message.data.byteLength);
      run.queue = run.queue.then(async () => {
        // Given up meanwhile: nothing more is read of it.
        if (running.get(message.id) !== run) return;
        try {
          if (run.failure === undefined) await run.inspector.write(chunk);
        } catch (err) {
          run.failure = (err as Error)?.message ?? String(err);
        }
        post({ type: 'taken', id: message.id, bytes: chunk.length });
      });
      return;
    }
    case 'end': {
      const run = running.get(message.id);
      if (!run) return;
      run.queue = run.queue.then(async () => {
        try {
          if (run.failure !== undefined) throw new Error(run.failure);
          const facts = await run.inspector.end();
          post({ type: 'facts', id: message.id, facts });
        } catch (err) {
          post({ type: 'failed', id: message.id, error: (err as Error)?.message ?? String(err) });
        } finally {
          running.delete(message.id);
        }
      });
      return;
    }
    case 'abort':
      running.delete(message.id);
      return;
  }
});
