import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import jpeg from 'jpeg-js';
import { decodeImage, encodePng, resizeInto } from '../training/images.js';
import { mulberry32 } from '../shared/util/random.js';

/**
 * `npm run bench:images`: decoding + resizing inspection photos to model input sizes (64..224 px),
 * fedline's two decoders (training/images.ts): pure JavaScript (pngjs, jpeg-js, resize) and
 * `sharp` (libvips, an optional dependency) when it is installed.
 * Sources: 640x480 JPEG (quality 90) and PNG photos of a synthetic scene, and 256x256 PNGs like the
 * demo's. Reports milliseconds per image, one image at a time and with 8 in flight.
 */

type Decoder = (bytes: Buffer, size: number) => Promise<void>;

function scene(width: number, height: number, seed: number): Uint8Array {
  const rng = mulberry32(seed);
  const rgba = new Uint8Array(width * height * 4);
  const cx = width * (0.3 + 0.4 * rng());
  const cy = height * (0.3 + 0.4 * rng());
  for (let y = 0; y < height; y++)
    for (let x = 0; x < width; x++) {
      const o = (y * width + x) * 4;
      const inside = Math.abs(x - cx) < width * 0.2 && Math.abs(y - cy) < height * 0.1;
      const noise = rng() * 30;
      rgba[o] = (inside ? 180 : 90 + (x * 60) / width) + noise;
      rgba[o + 1] = (inside ? 182 : 100 + (y * 40) / height) + noise;
      rgba[o + 2] = (inside ? 190 : 110) + noise;
      rgba[o + 3] = 255;
    }
  return rgba;
}

async function timeIt(decode: Decoder, files: Buffer[], size: number, inFlight: number): Promise<number> {
  const runOnce = async () => {
    const t0 = performance.now();
    let next = 0;
    const lane = async () => {
      while (next < files.length) await decode(files[next++]!, size);
    };
    await Promise.all(Array.from({ length: inFlight }, lane));
    return (performance.now() - t0) / files.length;
  };
  await runOnce(); // warm-up
  let best = Infinity;
  for (let r = 0; r < 3; r++) best = Math.min(best, await runOnce());
  return best;
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'fedline-image-bench-'));
  try {
    const sources: Record<string, Buffer[]> = { 'jpeg 640x480': [], 'png 640x480': [], 'png 256x256': [] };
    for (let i = 0; i < 24; i++) {
      const big = scene(640, 480, i);
      sources['jpeg 640x480']!.push(jpeg.encode({ data: big, width: 640, height: 480 }, 90).data as Buffer);
      sources['png 640x480']!.push(encodePng(640, 480, big));
      sources['png 256x256']!.push(encodePng(256, 256, scene(256, 256, 100 + i)));
    }
    // Through the file system, as the agent reads them.
    for (const [kind, bufs] of Object.entries(sources)) bufs.forEach((b, i) => writeFileSync(join(dir, `${kind.replace(/\W/g, '_')}_${i}`), b));
    const pureJs: Decoder = async (bytes, size) => {
      const img = decodeImage(bytes, 'bench');
      resizeInto(img, size, size, 3, new Float32Array(size * size * 3), 0);
    };
    const decoders: [string, Decoder][] = [['pure JS', pureJs]];
    let sharpNote = '';
    try {
      const sharp = (
        (await import('sharp' as string)) as {
          default: (b: Buffer) => { removeAlpha(): { resize(w: number, h: number, o: object): { raw(): { toBuffer(): Promise<Buffer> } } } };
        }
      ).default;
      decoders.push([
        'sharp',
        async (bytes, size) => {
          const raw = await sharp(bytes).removeAlpha().resize(size, size, { fit: 'fill', kernel: 'linear' }).raw().toBuffer();
          const out = new Float32Array(size * size * 3);
          for (let i = 0; i < out.length; i++) out[i] = raw[i]! / 255;
        },
      ]);
    } catch {
      sharpNote = 'sharp: not installed here (an optional dependency: npm install sharp), not compared';
    }
    console.log(`bench:images  decode + resize to NxN RGB float32; ms per image, best of 3 passes over 24 images; ${cpus().length} x ${cpus()[0]?.model}`);
    console.log('source          size  ' + decoders.map(([n]) => `${n} (1 / 8 in flight)`.padStart(28)).join(''));
    for (const [kind, bufs] of Object.entries(sources)) {
      const files = bufs.map((_, i) => readFileSync(join(dir, `${kind.replace(/\W/g, '_')}_${i}`)));
      for (const size of [64, 128, 224]) {
        const cells: string[] = [];
        for (const [, d] of decoders)
          cells.push(`${(await timeIt(d, files, size, 1)).toFixed(2)} / ${(await timeIt(d, files, size, 8)).toFixed(2)}`.padStart(28));
        console.log(`${kind.padEnd(14)} ${String(size).padStart(5)}  ${cells.join('')}`);
      }
    }
    if (sharpNote) console.log(sharpNote);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err: Error) => {
  console.error(`bench:images failed: ${err.message}`);
  process.exit(1);
});
