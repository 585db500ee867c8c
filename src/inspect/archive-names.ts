// The names an archive listing keeps: each once, the first `max`, then each name whose extension was not
// seen yet (up to `max` more), so that a thousand harmless names cannot push one out. A name ends at its
// first NUL, as it does for the extractors (C strings: "evil.exe\0.txt" is evil.exe); trailing dots and
// spaces go, as Windows names files ("evil.exe. " is evil.exe). Names are bounded in length, one by one
// and together: comparing long strings over and over would otherwise cost quadratic time.

const MAX_NAME = 4096;
const MAX_CHARACTERS = 1 << 20;

/** What an archive lister reports: the names kept (see ArchiveNames), and whether any were left out. */
export interface ArchiveListing {
  /** in archive order, each once */
  entries: string[];
  /** false when names may be missing */
  complete: boolean;
}

export class ArchiveNames {
  readonly entries: string[] = [];
  /** false once a name was left out: more kinds of names than the listing holds */
  complete = true;
  private readonly names = new Set<string>();
  private readonly extensions = new Set<string>();
  private extra = 0;
  private characters = 0;

  constructor(private readonly max: number) {}

  add(raw: string): void {
    if (raw.length > MAX_NAME || this.characters + raw.length > MAX_CHARACTERS) {
      this.complete = false;
      return;
    }
    const nul = raw.indexOf('\0');
    const name = (nul < 0 ? raw : raw.slice(0, nul)).replace(/[. ]+$/, '');
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
    this.characters += name.length;
    this.extensions.add(extension);
    this.entries.push(name);
  }
}
