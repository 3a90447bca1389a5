import jpeg from 'jpeg-js';
import { PNG } from 'pngjs';

/**
 * Image decoding and resizing in pure JavaScript (no native dependency to install on a factory
 * box). Pixels come out as float32 in [0, 1], HWC order, with the channel count the model wants.
 */

export interface RgbaImage {
  width: number;
  height: number;
  /** RGBA, 8 bits per channel, row-major. */
  data: Uint8Array;
}

export function decodeImage(bytes: Buffer, path: string): RgbaImage {
  const isPng = bytes.length >= 8 && bytes.readUInt32BE(0) === 0x89504e47;
  const isJpeg = bytes.length >= 3 && bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff;
  if (isPng) {
    const png = PNG.sync.read(bytes);
    return { width: png.width, height: png.height, data: png.data };
  }
  if (isJpeg) {
    const img = jpeg.decode(bytes, { useTArray: true, formatAsRGBA: true, maxMemoryUsageInMB: 512 });
    return { width: img.width, height: img.height, data: img.data };
  }
  throw new Error(`${path}: not a PNG or JPEG file`);
}

/**
 * Bilinear resize to `width` x `height` and conversion to `channels` (1: luminance, 3: RGB),
 * written into `out` at `offset` as values in [0, 1].
 */
export function resizeInto(img: RgbaImage, width: number, height: number, channels: 1 | 3, out: Float32Array, offset: number): void {
  const sx = img.width / width;
  const sy = img.height / height;
  const src = img.data;
  const rowBytes = img.width * 4;
  for (let y = 0; y < height; y++) {
    // Pixel centres: sample at (y + 0.5) * scale - 0.5, clamped to the image.
    const fy = Math.min(Math.max((y + 0.5) * sy - 0.5, 0), img.height - 1);
    const y0 = Math.floor(fy);
    const y1 = Math.min(y0 + 1, img.height - 1);
    const wy = fy - y0;
    for (let x = 0; x < width; x++) {
      const fx = Math.min(Math.max((x + 0.5) * sx - 0.5, 0), img.width - 1);
      const x0 = Math.floor(fx);
      const x1 = Math.min(x0 + 1, img.width - 1);
      const wx = fx - x0;
      const i00 = y0 * rowBytes + x0 * 4;
      const i01 = y0 * rowBytes + x1 * 4;
      const i10 = y1 * rowBytes + x0 * 4;
      const i11 = y1 * rowBytes + x1 * 4;
      const o = offset + (y * width + x) * channels;
      let r = 0;
      let g = 0;
      let b = 0;
      for (let c = 0; c < 3; c++) {
        const top = src[i00 + c]! * (1 - wx) + src[i01 + c]! * wx;
        const bottom = src[i10 + c]! * (1 - wx) + src[i11 + c]! * wx;
        const v = (top * (1 - wy) + bottom * wy) / 255;
        if (c === 0) r = v;
        else if (c === 1) g = v;
        else b = v;
      }
      if (channels === 3) {
        out[o] = r;
        out[o + 1] = g;
        out[o + 2] = b;
      } else {
        // ITU-R BT.601 luma
        out[o] = 0.299 * r + 0.587 * g + 0.114 * b;
      }
    }
  }
}

export function encodePng(width: number, height: number, rgba: Uint8Array): Buffer {
  const png = new PNG({ width, height });
  png.data = Buffer.from(rgba.buffer, rgba.byteOffset, rgba.byteLength);
  return PNG.sync.write(png);
}
