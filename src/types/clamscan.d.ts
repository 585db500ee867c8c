// The part of the clamscan package's API Douane uses (the package ships no type declarations).
declare module 'clamscan' {
  import type { Readable } from 'node:stream';

  interface ScanStreamResult {
    isInfected: boolean | null;
    viruses: string[];
  }

  interface NodeClamInstance {
    scanStream(stream: Readable): Promise<ScanStreamResult>;
  }

  export default class NodeClam {
    init(options: Record<string, unknown>): Promise<NodeClamInstance>;
  }
}
