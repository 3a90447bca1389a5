import jpeg from 'jpeg-js';
import { PNG } from 'pngjs';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';

/**
 * Image decoding and resizing to the model's input. Two decoders give the same kind of result,
 * 8-bit pixels (HWC, the channel count the model wants) at the model's size:
 *   sharp  libvips through the optional `sharp` package: 5-10x faster on camera JPEGs and large
 *          PNGs (npm run bench:images); used when it is installed
 *   js     pngjs + jpeg-js + a bilinear resize, pure JavaScript, always available
 * Both report what the source was (size, channels, bit depth), so that odd images can be named.
 */

export interface SourceInfo {
  format: 'png' | 'jpeg';
  width: number;
  height: number;
  /** Channels in the file: 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA (or CMYK for JPEG). */
  channels: number;
  bitDepth: number;
}

export interface DecodedImage {
  /** width x height x channels bytes, row-major HWC. */
  pixels: Uint8Array;
  source: SourceInfo;
}

export interface ImageDecoder {
  readonly name: 'sharp' | 'js';
  decode(bytes: Buffer, path: string, width: number, height: number, channels: 1 | 3): Promise<DecodedImage>;
}

export interface RgbaImage {
  width: number;
  height: number;
  /** RGBA, 8 bits per channel, row-major. */
  data: Uint8Array;
}

export function imageFormat(bytes: Uint8Array): 'png' | 'jpeg' | null {
  if (bytes.length >= 8 && bytes[0] === 0x89 && bytes[1] === 0x50 && bytes[2] === 0x4e && bytes[3] === 0x47) return 'png';
  if (bytes.length >= 3 && bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff) return 'jpeg';
  return null;
}

/** Components and precision of a JPEG from its start-of-frame marker (jpeg-js does not report them). */
export function jpegFrameInfo(bytes: Uint8Array): { channels: number; bitDepth: number } | null {
  let i = 2;
  while (i + 9 < bytes.length) {
    if (bytes[i] !== 0xff) return null;
    const marker = bytes[i + 1]!;
    if (marker === 0xff) {
      i++;
      continue;
    }
    const length = (bytes[i + 2]! << 8) | bytes[i + 3]!;
    // SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC)
    if (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
      return { bitDepth: bytes[i + 4]!, channels: bytes[i + 9]! };
    }
    i += 2 + length;
  }
  return null;
}

/** Decode a PNG or JPEG to RGBA (pure JS). Throws with the path on anything else. */
export function decodeImage(bytes: Buffer, path: string): RgbaImage & { source: SourceInfo } {
  const format = imageFormat(bytes);
  if (format === 'png') {
    const png = PNG.sync.read(bytes);
    // colorType: 0 gray, 2 RGB, 3 palette, 4 gray+alpha, 6 RGBA
    const channels = png.colorType === 0 ? 1 : png.colorType === 4 ? 2 : png.colorType === 6 ? 4 : 3;
    return { width: png.width, height: png.height, data: png.data, source: { format, width: png.width, height: png.height, channels, bitDepth: png.depth } };
  }
  if (format === 'jpeg') {
    const img = jpeg.decode(bytes, { useTArray: true, formatAsRGBA: true, maxMemoryUsageInMB: 512 });
    const frame = jpegFrameInfo(bytes) ?? { channels: 3, bitDepth: 8 };
    return {
      width: img.width,
      height: img.height,
      data: img.data,
      source: { format, width: img.width, height: img.height, channels: frame.channels, bitDepth: frame.bitDepth },
    };
  }
  throw new FedlineError(ErrorCodes.DATA, `${path}: not a PNG or JPEG file`);
}

/**
 * Resampling weights along one axis with a triangle (bilinear) filter whose support grows with the
 * downscaling factor, as PIL and libvips do: upscaling is plain bilinear, downscaling averages every
 * source pixel under the output pixel (no aliasing: a small scratch on a 640 px photo still counts
 * in a 64 px input). Pixel centres are aligned: output x covers source [x*scale, (x+1)*scale).
 */
function axisWeights(inSize: number, outSize: number): { start: Int32Array; count: Int32Array; weights: Float64Array; taps: number } {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = filterScale; // triangle support 1, widened when downscaling
  const taps = Math.ceil(support) * 2 + 1;
  const start = new Int32Array(outSize);
  const count = new Int32Array(outSize);
  const weights = new Float64Array(outSize * taps);
  for (let x = 0; x < outSize; x++) {
    const center = (x + 0.5) * scale;
    const lo = Math.max(0, Math.floor(center - support));
    const hi = Math.min(inSize, Math.ceil(center + support));
    let sum = 0;
    let n = 0;
    for (let i = lo; i < hi && n < taps; i++, n++) {
      const w = Math.max(0, 1 - Math.abs((i + 0.5 - center) / filterScale));
      weights[x * taps + n] = w;
      sum += w;
    }
    // The tap nearest the centre always has a positive weight, so sum > 0.
    for (let k = 0; k < n; k++) weights[x * taps + k]! /= sum;
    start[x] = lo;
    count[x] = n;
  }
  return { start, count, weights, taps };
}

/**
 * Resize to `width` x `height` (see axisWeights) and convert to `channels` (1: luminance, 3: RGB).
 * `out` receives values in [0, 1] (a Float32Array) or 0..255 rounded (a Uint8Array) at `offset`.
 */
export function resizeInto(img: RgbaImage, width: number, height: number, channels: 1 | 3, out: Float32Array | Uint8Array, offset: number): void {
  const src = img.data;
  const h = axisWeights(img.width, width);
  const v = axisWeights(img.height, height);
  // Horizontal pass: [img.height, width, 3] in float64.
  const tmp = new Float64Array(img.height * width * 3);
  for (let y = 0; y < img.height; y++) {
    const row = y * img.width * 4;
    for (let x = 0; x < width; x++) {
      let r = 0;
      let g = 0;
      let b = 0;
      const s0 = h.start[x]!;
      for (let k = 0, n = h.count[x]!; k < n; k++) {
        const w = h.weights[x * h.taps + k]!;
        const i = row + (s0 + k) * 4;
        r += src[i]! * w;
        g += src[i + 1]! * w;
        b += src[i + 2]! * w;
      }
      const t = (y * width + x) * 3;
      tmp[t] = r;
      tmp[t + 1] = g;
      tmp[t + 2] = b;
    }
  }
  const toBytes = out instanceof Uint8Array;
  const scale = toBytes ? 1 : 1 / 255;
  for (let y = 0; y < height; y++) {
    const s0 = v.start[y]!;
    const n = v.count[y]!;
    for (let x = 0; x < width; x++) {
      let r = 0;
      let g = 0;
      let b = 0;
      for (let k = 0; k < n; k++) {
        const w = v.weights[y * v.taps + k]!;
        const t = ((s0 + k) * width + x) * 3;
        r += tmp[t]! * w;
        g += tmp[t + 1]! * w;
        b += tmp[t + 2]! * w;
      }
      const o = offset + (y * width + x) * channels;
      if (channels === 3) {
        out[o] = toBytes ? Math.round(r) : r * scale;
        out[o + 1] = toBytes ? Math.round(g) : g * scale;
        out[o + 2] = toBytes ? Math.round(b) : b * scale;
      } else {
        // ITU-R BT.601 luma
        const l = 0.299 * r + 0.587 * g + 0.114 * b;
        out[o] = toBytes ? Math.round(l) : l * scale;
      }
    }
  }
}

export const jsDecoder: ImageDecoder = {
  name: 'js',
  async decode(bytes, path, width, height, channels) {
    const img = decodeImage(bytes, path);
    if (img.width < 1 || img.height < 1) throw new FedlineError(ErrorCodes.DATA, `${path}: empty image`);
    const pixels = new Uint8Array(width * height * channels);
    resizeInto(img, width, height, channels, pixels, 0);
    return { pixels, source: img.source };
  },
};

type SharpFn = (
  input: Buffer,
  options?: object,
) => {
  metadata(): Promise<{ width?: number; height?: number; channels?: number; depth?: string }>;
  removeAlpha(): ReturnType<SharpFn>;
  toColourspace(space: string): ReturnType<SharpFn>;
  resize(w: number, h: number, o: object): ReturnType<SharpFn>;
  raw(): ReturnType<SharpFn>;
  toBuffer(): Promise<Buffer>;
};

/** The sharp decoder, or null when the optional `sharp` package is not installed here. */
export async function sharpDecoder(): Promise<ImageDecoder | null> {
  let sharp: SharpFn;
  try {
    const name = 'sharp'; // a variable: sharp is optional and may be absent
    sharp = ((await import(name)) as { default: SharpFn }).default;
  } catch {
    return null;
  }
  return {
    name: 'sharp',
    async decode(bytes, path, width, height, channels) {
      const format = imageFormat(bytes);
      if (!format) throw new FedlineError(ErrorCodes.DATA, `${path}: not a PNG or JPEG file`);
      const meta = await sharp(bytes).metadata();
      if (!meta.width || !meta.height) throw new FedlineError(ErrorCodes.DATA, `${path}: empty image`);
      const depth = meta.depth === 'ushort' ? 16 : meta.depth === 'uchar' ? 8 : 8;
      const source: SourceInfo = {
        format,
        width: meta.width,
        height: meta.height,
        channels: format === 'jpeg' ? (jpegFrameInfo(bytes)?.channels ?? meta.channels ?? 3) : (meta.channels ?? 3),
        bitDepth: depth,
      };
      // 'linear' = bilinear, 'fill' = exact size (no crop), as the pure-JS decoder does.
      let pipeline = sharp(bytes, { failOn: 'error' })
        .removeAlpha()
        .toColourspace(channels === 1 ? 'b-w' : 'srgb');
      pipeline = pipeline.resize(width, height, { fit: 'fill', kernel: 'linear' });
      const raw = await pipeline.raw().toBuffer();
      if (raw.byteLength !== width * height * channels)
        throw new FedlineError(ErrorCodes.DATA, `${path}: decoded to ${raw.byteLength} bytes, expected ${width * height * channels}`);
      return { pixels: new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength), source };
    },
  };
}

/** The decoder to use: sharp when installed (faster), else pure JS; `js` forces pure JS. */
export async function createImageDecoder(preference: 'auto' | 'sharp' | 'js' = 'auto'): Promise<ImageDecoder> {
  if (preference === 'js') return jsDecoder;
  const sharp = await sharpDecoder();
  if (sharp) return sharp;
  if (preference === 'sharp')
    throw new FedlineError(ErrorCodes.CONFIG_INVALID, 'data.decoder is "sharp" but the sharp package is not installed (npm install sharp)');
  return jsDecoder;
}

export function encodePng(width: number, height: number, rgba: Uint8Array): Buffer {
  const png = new PNG({ width, height });
  png.data = Buffer.from(rgba.buffer, rgba.byteOffset, rgba.byteLength);
  return PNG.sync.write(png);
}
