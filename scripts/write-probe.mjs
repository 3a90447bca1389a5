#!/usr/bin/env node
// How fast this machine takes the aggregator's spool writes (docs/scaling.md, "The sites' disk"):
// F files of M MB each, pre-sized (ftruncate) and written in 256 KiB chunks at their offsets
// (pwrite, synchronous), round-robin over the files as concurrent uploads arrive, then each synced
// (fdatasync), as shared/bundle/file-reassembler.ts does. Prints seconds per GB and the slowest write.
// usage: node scripts/write-probe.mjs DIR [FILES=100] [MB=50]   (DIR is created and removed)
import { closeSync, fdatasyncSync, ftruncateSync, mkdirSync, openSync, rmSync, writeSync } from 'node:fs';
import { Buffer } from 'node:buffer';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';

const [dir, files = 100, mb = 50] = [process.argv[2], Number(process.argv[3] ?? 100), Number(process.argv[4] ?? 50)];
if (!dir) {
  console.error('usage: node scripts/write-probe.mjs DIR [FILES=100] [MB=50]');
  process.exit(2);
}
mkdirSync(dir, { recursive: true });
const chunk = Buffer.alloc(256 * 1024, 7);
const perFile = Math.ceil((mb * 1e6) / chunk.length);
try {
  const fds = Array.from({ length: files }, (_, i) => {
    const fd = openSync(join(dir, `upload-${i}`), 'w+');
    ftruncateSync(fd, perFile * chunk.length);
    return fd;
  });
  const t0 = performance.now();
  let slowestMs = 0;
  for (let seq = 0; seq < perFile; seq++)
    for (const fd of fds) {
      const a = performance.now();
      writeSync(fd, chunk, 0, chunk.length, seq * chunk.length);
      slowestMs = Math.max(slowestMs, performance.now() - a);
    }
  const t1 = performance.now();
  for (const fd of fds) {
    fdatasyncSync(fd);
    closeSync(fd);
  }
  const t2 = performance.now();
  const gb = (files * perFile * chunk.length) / 1e9;
  const s = (ms) => (ms / 1000).toFixed(1);
  console.log(
    `${files} files x ${mb} MB = ${gb.toFixed(2)} GB: writes ${s(t1 - t0)} s (${((t1 - t0) / 1000 / gb).toFixed(2)} s/GB, slowest write ${slowestMs.toFixed(0)} ms), fdatasync ${s(t2 - t1)} s`,
  );
} finally {
  rmSync(dir, { recursive: true, force: true });
}
