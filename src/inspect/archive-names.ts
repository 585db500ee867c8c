// The names an archive listing keeps: each once, the first `max`, then each name whose extension was not
// seen yet (up to `max` more), so that a thousand harmless names cannot push one out. An extension with
// a date or serial number in it (4 digits or more: "log-20230101", as logrotate's dateext writes) counts
// with its digits left out: no file type has such an extension, and a year of rotated logs is otherwise
// a thousand extensions, each new. A name ends at its first NUL, as it does for the extractors (C
// strings: "evil.exe\0.txt" is evil.exe); trailing dots and spaces go, as Windows names files
// ("evil.exe. " is evil.exe). Names are bounded in length, one by one and together: comparing long
// strings over and over would otherwise cost quadratic time.

/** Entries opened as archives of their own: what Windows, or WinRAR and 7-Zip, open with a double click. */
export const NESTED_ARCHIVE = /\.(zip|rar|7z|tar|tgz|gz|txz|xz|tbz2?|bz2?|tzst|zst|iso|img|cab)$/i;

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

  /**
   * `opensArchives: false` for a lister that does not open the archives inside (7z, RAR, cabinet, disk
   * image): one named like an archive is a listing with names missing, what it holds.
   */
  constructor(
    private readonly max: number,
    private readonly options: { opensArchives: boolean } = { opensArchives: true },
  ) {}

  /**
   * Adds a name as the extractors may show it: up to its first NUL (unrar, Windows' C strings), and, when
   * it has one, whole with each NUL as "_" (The Unarchiver): "readme.txt\0.exe" is both.
   */
  add(raw: string): void {
    this.addOne(raw);
    if (raw.includes('\0')) this.addOne(raw.replace(/\0/g, '_'));
    // "evil.exe/." (or "evil.exe//./."): libarchive (bsdtar, Windows' tar.exe) writes the file evil.exe,
    // where 7-Zip and unzip make a folder of that name.
    const upToNul = raw.split('\0', 1)[0]!;
    const folded = upToNul.replace(/(\/+\.)+$/, '');
    if (folded !== upToNul && folded) this.addOne(folded);
  }

  /** Forgets every name: they were not an archive's after all. */
  clear(): void {
    this.entries.length = 0;
    this.names.clear();
    this.extensions.clear();
    this.extra = 0;
    this.characters = 0;
    this.complete = true;
  }

  private addOne(raw: string): void {
    if (raw.length > MAX_NAME || this.characters + raw.length > MAX_CHARACTERS) {
      this.complete = false;
      return;
    }
    const name = normalizeName(raw);
    if (this.names.has(name)) return;
    if (!this.options.opensArchives && NESTED_ARCHIVE.test(name)) this.complete = false;
    const dot = name.lastIndexOf('.');
    const extension = extensionKind(dot > name.lastIndexOf('/') ? name.slice(dot + 1).toLowerCase() : '');
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

/**
 * A name 7-Zip gives a 7z or cabinet file stored without one (the archive's name less its extension:
 * `docs.zip.7z` holds `docs.zip`) is an archive that the 7z and cabinet listers do not open either.
 */
export function namesArchive(name: string): boolean {
  return NESTED_ARCHIVE.test(normalizeName(name));
}

/** "log-20230101" and "log-20230102" are one kind of extension; "exe", "ps1" and "001" are their own. */
function extensionKind(extension: string): string {
  return /\d{4}/.test(extension) ? extension.replace(/\d+/g, '#') : extension;
}

/** A name as Windows shows it: up to its first NUL, without trailing dots and spaces. */
export function normalizeName(raw: string): string {
  const nul = raw.indexOf('\0');
  return (nul < 0 ? raw : raw.slice(0, nul)).replace(/[. ]+$/, '');
}

/** A name stored as bytes: UTF-8 on today's systems, else read one byte a character. */
export function nameFromBytes(bytes: Buffer): string {
  const utf8 = bytes.toString('utf8');
  return utf8.includes('\ufffd') ? bytes.toString('latin1') : utf8;
}
