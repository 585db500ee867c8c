// The names an archive listing keeps: each once, the first `max`, then each name whose extension was not
// seen yet (up to `max` more), so that a thousand harmless names cannot push one out. Trailing dots and
// spaces go, as Windows names files ("evil.exe. " is evil.exe).

export class ArchiveNames {
  readonly entries: string[] = [];
  /** false once a name was left out: more kinds of names than the listing holds */
  complete = true;
  private readonly names = new Set<string>();
  private readonly extensions = new Set<string>();
  private extra = 0;

  constructor(private readonly max: number) {}

  add(raw: string): void {
    const name = raw.replace(/[. ]+$/, '');
    if (this.names.has(name)) return;
    const dot = name.lastIndexOf('.');
    const extension = dot > name.lastIndexOf('/') ? name.slice(dot + 1).toLowerCase() : '';
    if (this.entries.length >= this.max) {
      if (this.extensions.has(extension)) return;
      if (this.extra >= this.max) {
        this.complete = false;
        return;
      }
      this.extra++;
    }
    this.names.add(name);
    this.extensions.add(extension);
    this.entries.push(name);
  }
}
