import { mkdir, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { encodePng } from '../edge-agent/images.js';
import { deriveSeed, mulberry32, randInt, randNormal, randRange, type Rng } from '../shared/random.js';

/**
 * Procedural USB-stick inspection images, standing in for the seed paper's photos (which cannot be
 * downloaded here). Each client makes its own product (body shape and colour) and sees its own
 * defect type; all share OKAY, HIDDEN (port turned away) and EMPTY (no product, maybe clutter).
 * Pose, scale, lighting, background and sensor noise vary per image. One seed, one data set.
 */

export const INSPECTION_CLASSES = ['OKAY', 'NOT_OKAY', 'HIDDEN', 'EMPTY'] as const;
export type InspectionClass = (typeof INSPECTION_CLASSES)[number];

export type BodyShape = 'hexagon' | 'rectangle' | 'rounded';
export type DefectType = 'sticker' | 'damaged' | 'rust';

export interface ProductSpec {
  name: string;
  shape: BodyShape;
  /** Body colour, RGB 0..255. */
  color: readonly [number, number, number];
}

export interface ClientSpec {
  name: string;
  product: ProductSpec;
  defect: DefectType;
  /** Images per class, in INSPECTION_CLASSES order (unequal on purpose: non-IID). */
  counts: Record<InspectionClass, number>;
}

export const PAPER_CLIENTS: readonly ClientSpec[] = [
  { name: 'client1', product: { name: 'silver-hexagon', shape: 'hexagon', color: [178, 180, 186] }, defect: 'sticker', counts: { OKAY: 110, NOT_OKAY: 60, HIDDEN: 40, EMPTY: 35 } },
  { name: 'client2', product: { name: 'blue-rectangle', shape: 'rectangle', color: [40, 86, 196] }, defect: 'damaged', counts: { OKAY: 80, NOT_OKAY: 45, HIDDEN: 30, EMPTY: 30 } },
  { name: 'client3', product: { name: 'red-rounded', shape: 'rounded', color: [196, 44, 40] }, defect: 'rust', counts: { OKAY: 140, NOT_OKAY: 55, HIDDEN: 45, EMPTY: 40 } },
];

/**
 * Reference images for a starting model: other products (shapes and colours the demo's clients do
 * not make) with every defect type, standing in for the broad data a vendor's pretrained model has
 * seen (the paper starts from ImageNet weights, which cannot be downloaded here).
 */
export const REFERENCE_CLIENTS: readonly ClientSpec[] = [
  { name: 'ref-green', product: { name: 'green-rectangle', shape: 'rectangle', color: [60, 150, 70] }, defect: 'sticker', counts: { OKAY: 120, NOT_OKAY: 80, HIDDEN: 50, EMPTY: 50 } },
  { name: 'ref-black', product: { name: 'black-hexagon', shape: 'hexagon', color: [40, 40, 44] }, defect: 'damaged', counts: { OKAY: 120, NOT_OKAY: 80, HIDDEN: 50, EMPTY: 50 } },
  { name: 'ref-white', product: { name: 'white-rounded', shape: 'rounded', color: [225, 225, 220] }, defect: 'rust', counts: { OKAY: 120, NOT_OKAY: 80, HIDDEN: 50, EMPTY: 50 } },
];

interface Pose {
  cx: number;
  cy: number;
  angle: number;
  /** Body length in pixels. */
  length: number;
}

type Rgb = [number, number, number];

/** A canvas of float RGB with painter's-algorithm fills in the product's local coordinates. */
class Canvas {
  readonly size: number;
  readonly rgb: Float32Array;

  constructor(size: number) {
    this.size = size;
    this.rgb = new Float32Array(size * size * 3);
  }

  fillBackground(rng: Rng): void {
    const base = randRange(rng, 60, 200);
    const tint: Rgb = [randRange(rng, -12, 12), randRange(rng, -12, 12), randRange(rng, -12, 12)];
    const gx = randRange(rng, -40, 40);
    const gy = randRange(rng, -40, 40);
    for (let y = 0; y < this.size; y++) {
      for (let x = 0; x < this.size; x++) {
        const v = base + (gx * (x - this.size / 2)) / this.size + (gy * (y - this.size / 2)) / this.size;
        const o = (y * this.size + x) * 3;
        this.rgb[o] = v + tint[0];
        this.rgb[o + 1] = v + tint[1];
        this.rgb[o + 2] = v + tint[2];
      }
    }
  }

  /** Paint every pixel whose centre, mapped into the pose's local frame, satisfies `inside`. */
  paint(pose: Pose, inside: (u: number, v: number) => boolean, color: Rgb | ((u: number, v: number) => Rgb)): void {
    const cos = Math.cos(pose.angle);
    const sin = Math.sin(pose.angle);
    for (let y = 0; y < this.size; y++) {
      for (let x = 0; x < this.size; x++) {
        const dx = x + 0.5 - pose.cx;
        const dy = y + 0.5 - pose.cy;
        // Local frame: u along the body (port at u > 0.5), v across, both in body lengths.
        const u = (dx * cos + dy * sin) / pose.length;
        const v = (-dx * sin + dy * cos) / pose.length;
        if (!inside(u, v)) continue;
        const c = typeof color === 'function' ? color(u, v) : color;
        const o = (y * this.size + x) * 3;
        this.rgb[o] = c[0];
        this.rgb[o + 1] = c[1];
        this.rgb[o + 2] = c[2];
      }
    }
  }

  /** Paint in image coordinates (clutter on EMPTY images). */
  paintPixels(inside: (x: number, y: number) => boolean, color: Rgb): void {
    for (let y = 0; y < this.size; y++) {
      for (let x = 0; x < this.size; x++) {
        if (!inside(x + 0.5, y + 0.5)) continue;
        const o = (y * this.size + x) * 3;
        this.rgb[o] = color[0];
        this.rgb[o + 1] = color[1];
        this.rgb[o + 2] = color[2];
      }
    }
  }

  toRgba(rng: Rng, brightness: number, contrast: number, noise: number): Uint8Array {
    const out = new Uint8Array(this.size * this.size * 4);
    for (let i = 0, j = 0; i < this.rgb.length; i += 3, j += 4) {
      for (let c = 0; c < 3; c++) {
        const v = (this.rgb[i + c]! - 128) * contrast + 128 + brightness + randNormal(rng) * noise;
        out[j + c] = Math.max(0, Math.min(255, Math.round(v)));
      }
      out[j + 3] = 255;
    }
    return out;
  }
}

const HALF_W = 0.2; // body half-width in body lengths

function bodyInside(shape: BodyShape): (u: number, v: number) => boolean {
  switch (shape) {
    case 'rectangle':
      return (u, v) => Math.abs(u) <= 0.5 && Math.abs(v) <= HALF_W;
    case 'hexagon':
      // Chamfered ends: a long hexagon.
      return (u, v) => Math.abs(u) <= 0.5 && Math.abs(v) <= HALF_W && Math.abs(v) <= HALF_W - (Math.abs(u) - 0.36) * 1.4;
    case 'rounded':
      return (u, v) => {
        if (Math.abs(v) > HALF_W) return false;
        if (Math.abs(u) <= 0.5 - HALF_W) return true;
        const du = Math.abs(u) - (0.5 - HALF_W);
        return du * du + v * v <= HALF_W * HALF_W && Math.abs(u) <= 0.5;
      };
  }
}

const scale = (c: readonly number[], k: number): Rgb => [c[0]! * k, c[1]! * k, c[2]! * k];

// The port: a metal shell sticking out at u in [0.5, 0.78], with a dark opening and a tongue.
const SHELL = { u0: 0.48, u1: 0.8, v: 0.15 };
const OPENING = { u0: 0.56, u1: 0.8, v: 0.1 };
const inShell = (u: number, v: number) => u >= SHELL.u0 && u <= SHELL.u1 && Math.abs(v) <= SHELL.v;
const inOpening = (u: number, v: number) => u >= OPENING.u0 && u <= OPENING.u1 && Math.abs(v) <= OPENING.v;
const inTongue = (u: number, v: number) => u >= 0.6 && u <= 0.8 && v >= -0.02 && v <= 0.06;

function drawProduct(canvas: Canvas, pose: Pose, product: ProductSpec, rng: Rng, portVisible: boolean): void {
  const shade = randRange(rng, 0.85, 1.1);
  const body = scale(product.color, shade);
  const inBody = bodyInside(product.shape);
  // A drop shadow under the product, then the body with soft shading across it.
  const shadow: Pose = { ...pose, cx: pose.cx + pose.length * 0.05, cy: pose.cy + pose.length * 0.06 };
  canvas.paint(shadow, (u, v) => inBody(u, v) || (portVisible && inShell(u, v)), [25, 25, 28]);
  canvas.paint(pose, inBody, (u, v) => scale(body, 1 - 0.5 * Math.abs(v) + 0.05 * u));
  // A small label stripe on the body (every product has one).
  canvas.paint(pose, (u, v) => u > -0.3 && u < 0.0 && Math.abs(v) < 0.07, scale(body, 0.75));
  if (portVisible) {
    const metal: Rgb = scale([205, 205, 210], randRange(rng, 0.9, 1.05));
    canvas.paint(pose, inShell, metal);
    canvas.paint(pose, inOpening, [28, 28, 30]);
    canvas.paint(pose, inTongue, [150, 130, 70]);
  } else {
    // HIDDEN: the port end is capped or turned away: a cap in the body colour, darker.
    canvas.paint(pose, (u, v) => u >= SHELL.u0 && u <= 0.66 && Math.abs(v) <= HALF_W * 0.9, scale(body, 0.7));
  }
}

function drawDefect(canvas: Canvas, pose: Pose, defect: DefectType, rng: Rng): void {
  switch (defect) {
    case 'sticker': {
      // A bright sticker over the port, or scratches across it.
      const colors: Rgb[] = [
        [250, 235, 60],
        [250, 150, 40],
        [90, 230, 90],
        [250, 120, 200],
      ];
      const color = colors[randInt(rng, 0, colors.length)]!;
      const cu = randRange(rng, 0.58, 0.72);
      const cv = randRange(rng, -0.06, 0.06);
      const hu = randRange(rng, 0.1, 0.15);
      const hv = randRange(rng, 0.09, 0.14);
      canvas.paint(pose, (u, v) => Math.abs(u - cu) <= hu && Math.abs(v - cv) <= hv, color);
      if (rng() < 0.5) {
        const slope = randRange(rng, -1.5, 1.5);
        const off = randRange(rng, -0.05, 0.05);
        canvas.paint(pose, (u, v) => inShell(u, v) && Math.abs(v - off - slope * (u - 0.64)) < 0.02, [255, 255, 255]);
      }
      break;
    }
    case 'damaged': {
      // A crushed, torn shell: the port is bent away from the body axis, its opening squeezed
      // to a slit, and bright torn metal shows where it broke off.
      const shear = randRange(rng, 0.8, 1.4) * (rng() < 0.5 ? -1 : 1);
      canvas.paint(pose, inShell, scale([120, 120, 125], randRange(rng, 0.8, 1.1)));
      canvas.paint(pose, (u, v) => u >= 0.55 && u <= 0.84 && Math.abs(v - shear * (u - 0.55)) <= 0.12, [215, 215, 220]);
      canvas.paint(pose, (u, v) => u >= 0.6 && u <= 0.84 && Math.abs(v - shear * (u - 0.55)) <= 0.035, [20, 20, 22]);
      canvas.paint(pose, (u, v) => u >= 0.47 && u <= 0.55 && Math.abs(v) <= 0.18, [245, 245, 245]);
      break;
    }
    case 'rust': {
      // Orange-brown spots on the shell and around the port.
      const n = randInt(rng, 4, 8);
      for (let i = 0; i < n; i++) {
        const cu = randRange(rng, 0.5, 0.8);
        const cv = randRange(rng, -0.15, 0.15);
        const r = randRange(rng, 0.04, 0.08);
        const c: Rgb = [randRange(rng, 150, 200), randRange(rng, 70, 100), randRange(rng, 15, 35)];
        canvas.paint(pose, (u, v) => (u - cu) ** 2 + (v - cv) ** 2 <= r * r, c);
      }
      break;
    }
  }
}

function drawClutter(canvas: Canvas, rng: Rng): void {
  const n = randInt(rng, 0, 4);
  const s = canvas.size;
  for (let i = 0; i < n; i++) {
    const gray = randRange(rng, 20, 240);
    const color: Rgb = [gray + randRange(rng, -30, 30), gray + randRange(rng, -30, 30), gray + randRange(rng, -30, 30)];
    if (rng() < 0.5) {
      // a wire: a thick line
      const x0 = randRange(rng, 0, s);
      const y0 = randRange(rng, 0, s);
      const a = randRange(rng, 0, Math.PI);
      const w = randRange(rng, 0.5, 1.5) * (s / 32);
      canvas.paintPixels((x, y) => Math.abs((x - x0) * Math.sin(a) - (y - y0) * Math.cos(a)) < w, color);
    } else {
      // a screw or washer: a disc
      const cx = randRange(rng, 0, s);
      const cy = randRange(rng, 0, s);
      const r = randRange(rng, 1.5, 4) * (s / 32);
      canvas.paintPixels((x, y) => (x - cx) ** 2 + (y - cy) ** 2 < r * r, color);
    }
  }
}

export interface RenderOptions {
  size: number;
  product: ProductSpec;
  cls: InspectionClass;
  defect: DefectType;
}

/** Render one image (RGBA, size x size). */
export function renderSample(rng: Rng, { size, product, cls, defect }: RenderOptions): Uint8Array {
  const canvas = new Canvas(size);
  canvas.fillBackground(rng);
  if (cls === 'EMPTY') {
    drawClutter(canvas, rng);
  } else {
    // The product spans u in [-0.5, 0.8] body lengths (body + port): 1.3 lengths in all, kept in frame.
    const length = size * randRange(rng, 0.56, 0.68);
    const angle = randRange(rng, -0.25, 0.25) + (rng() < 0.5 ? 0 : Math.PI);
    const midX = size / 2 + randRange(rng, -0.05, 0.05) * size;
    const midY = size / 2 + randRange(rng, -0.12, 0.12) * size;
    const shift = 0.15 * length; // from the body centre to the middle of body + port
    const pose: Pose = { cx: midX - Math.cos(angle) * shift, cy: midY - Math.sin(angle) * shift, angle, length };
    drawProduct(canvas, pose, product, rng, cls !== 'HIDDEN');
    if (cls === 'NOT_OKAY') drawDefect(canvas, pose, defect, rng);
  }
  return canvas.toRgba(rng, randRange(rng, -25, 25), randRange(rng, 0.8, 1.15), randRange(rng, 2, 7));
}

export interface SynthOptions {
  out: string;
  seed: number;
  size: number;
  clients?: readonly ClientSpec[];
  /** Multiply every class count (quick demos use < 1). Default 1. */
  scale?: number;
}

export interface SynthResult {
  clients: { name: string; dir: string; counts: Record<string, number> }[];
  files: number;
}

/** Write `<out>/<client>/<CLASS>/<client>-<CLASS>-<n>.png` for every client. */
export async function generateDataset(options: SynthOptions): Promise<SynthResult> {
  const clients = options.clients ?? PAPER_CLIENTS;
  const result: SynthResult = { clients: [], files: 0 };
  for (const client of clients) {
    const dir = join(options.out, client.name);
    const counts: Record<string, number> = {};
    for (const cls of INSPECTION_CLASSES) {
      const n = client.counts[cls] === 0 ? 0 : Math.max(2, Math.round(client.counts[cls] * (options.scale ?? 1)));
      counts[cls] = n;
      const clsDir = join(dir, cls);
      await mkdir(clsDir, { recursive: true });
      const rng = mulberry32(deriveSeed(options.seed, `${client.name}/${cls}`));
      for (let i = 0; i < n; i++) {
        const rgba = renderSample(rng, { size: options.size, product: client.product, cls, defect: client.defect });
        await writeFile(join(clsDir, `${client.name}-${cls}-${String(i).padStart(4, '0')}.png`), encodePng(options.size, options.size, rgba));
        result.files++;
      }
    }
    result.clients.push({ name: client.name, dir, counts });
  }
  return result;
}

/** REFERENCE_CLIENTS' images in one folder: `<out>/<CLASS>/<ref>-<CLASS>-<n>.png`. */
export async function generateReferenceDataset(options: Omit<SynthOptions, 'clients'>): Promise<{ dir: string; files: number }> {
  const raw = join(options.out, '.per-product');
  const result = await generateDataset({ ...options, out: raw, clients: REFERENCE_CLIENTS });
  for (const cls of INSPECTION_CLASSES) await mkdir(join(options.out, cls), { recursive: true });
  for (const c of result.clients) {
    for (const cls of INSPECTION_CLASSES) {
      for (const f of await readdir(join(c.dir, cls))) await rename(join(c.dir, cls, f), join(options.out, cls, f));
    }
  }
  await rm(raw, { recursive: true, force: true });
  return { dir: options.out, files: result.files };
}
