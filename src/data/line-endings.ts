// Watches the DATA stream for line endings other than CR LF and for NUL bytes. A lone "\n" or "\r" is how
// SMTP smuggling works: a receiving server that accepts "\n.\n" as end-of-data would see the rest as new
// commands. Such a message is refused whole, and nothing of it is relayed.

export interface LineEndingFacts {
  bareLf: number;
  bareCr: number;
  nul: number;
  /** byte offset of the first offence, for the log */
  firstOffset?: number;
}

export class LineEndingWatch {
  private prev = -1;
  private offset = 0;
  readonly facts: LineEndingFacts = { bareLf: 0, bareCr: 0, nul: 0 };

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    // indexOf scans natively; a byte-by-byte loop costs more than the rest of the data path.
    for (let i = chunk.indexOf(0x0a); i >= 0; i = chunk.indexOf(0x0a, i + 1)) {
      if ((i > 0 ? chunk[i - 1] : this.prev) !== 0x0d) this.offence('bareLf', i);
    }
    if (this.prev === 0x0d && chunk[0] !== 0x0a) this.offence('bareCr', -1);
    for (let i = chunk.indexOf(0x0d); i >= 0 && i < chunk.length - 1; i = chunk.indexOf(0x0d, i + 1)) {
      if (chunk[i + 1] !== 0x0a) this.offence('bareCr', i);
    }
    for (let i = chunk.indexOf(0x00); i >= 0; i = chunk.indexOf(0x00, i + 1)) this.offence('nul', i);
    this.prev = chunk[chunk.length - 1]!;
    this.offset += chunk.length;
  }

  /** Call at the end of the message: a trailing CR is bare. */
  end(): LineEndingFacts {
    if (this.prev === 0x0d) this.offence('bareCr', -1);
    this.prev = -1;
    return this.facts;
  }

  get clean(): boolean {
    return this.facts.bareLf === 0 && this.facts.bareCr === 0 && this.facts.nul === 0;
  }

  private offence(kind: 'bareLf' | 'bareCr' | 'nul', index: number): void {
    this.facts[kind]++;
    if (this.facts.firstOffset === undefined) this.facts.firstOffset = this.offset + index;
  }
}
