// A directory only the service reads (0700), made at its first use. A failure is not kept: the
// directory made (or the disk mended) later is used at the next one.

import { mkdir } from 'node:fs/promises';

export class PrivateDirectory {
  private ready: Promise<void> | undefined;

  constructor(readonly path: string) {}

  made(): Promise<void> {
    this.ready ??= mkdir(this.path, { recursive: true, mode: 0o700 }).then(
      () => undefined,
      (err: unknown) => {
        this.ready = undefined;
        throw err;
      },
    );
    return this.ready;
  }
}
