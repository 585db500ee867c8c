// An inspection thread that dies at a chunk holding CRASH-THE-THREAD, as a bug or a memory limit would
// end one, spins for ever at one holding SPIN-THE-THREAD, and takes half a second over one holding
// SLOW-THE-THREAD; any other message is inspected by the real worker (the build's: the test command
// builds first). The real worker is loaded first, so that its listener hears every message from the start.
import { parentPort } from 'node:worker_threads';
import '../../dist/inspect/worker.js';

parentPort.on('message', (message) => {
  if (message.type !== 'chunk') return;
  const chunk = Buffer.from(message.data);
  if (chunk.includes('CRASH-THE-THREAD')) process.exit(70);
  if (chunk.includes('SPIN-THE-THREAD')) for (;;);
  if (chunk.includes('SLOW-THE-THREAD')) for (const until = Date.now() + 500; Date.now() < until; );
});
