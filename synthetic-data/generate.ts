import { mkdir, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { encodePng } from '../training/images.js';
import { deriveSeed, mulberry32, randInt, randNormal, randRange, type Rng } from '../shared/util/random.js';

/**
 * Procedural USB-stick inspection images, standing in for the seed paper's photos (which cannot be
 * downloaded here). Each client makes its own product (body shape and colour) and sees its own
 * defect type; all share OKAY, HIDDEN (port turned away) and EMPTY (no product: a blank background
 * or other objects such as wires, screws, nuts). Pose, scale, lighting, background and sensor noise
 * vary per image. One seed, one data set.
 *
 * generateExperimentData() adds what the paper's evaluation needs: an external set (a fourth
 * product with a USB 3.0 port, OKAY and HIDDEN only, never seen in training), cross-client probes
 * (each client's product with another client's defect, the paper's figures 13-14) and reference
 * images for a starting model (other products, other defect types, other objects).
 */

export const INSPECTION_CLASSES = ['OKAY', 'NOT_OKAY', 'HIDDEN', 'EMPTY'] as const;
export type InspectionClass = (typeof INSPECTION_CLASSES)[number];

export type BodyShape = 'hexagon' | 'rectangle' | 'rounded' | 'wedge';
/**
 * The clients' defects (sticker, damaged, rust) and the reference set's own (crack, dirt,
 * no-tongue: a starting model learns port anomalies in general, never the clients' ones).
 */
export type DefectType = 'sticker' | 'damaged' | 'rust' | 'crack' | 'dirt' | 'no-tongue';
export const CLIENT_DEFECTS: readonly DefectType[] = ['sticker', 'damaged', 'rust'];

export interface ProductSpec {
  name: string;
  shape: BodyShape;
  /** Body colour, RGB 0..255. */
  color: readonly [number, number, number];
  /** Colour of the port's contact tongue: USB 2.0 sticks have a light one (the default), USB 3.0 a blue one. */
  tongue?: readonly [number, number, number];
}

/**
 * EMPTY scenes. classic: a blank background or up to three wires and discs (the demo's, kept as
 * they were); workshop: a blank background a quarter of the time, else one to four objects of a
 * workbench: cables with a plug, screws, hex nuts, washers, bare circuit boards.
 */
export type ClutterStyle = 'classic' | 'workshop';

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

/** The paper's USB 3.0 external set: a product none of the clients makes (shape, colour, blue tongue), OKAY and HIDDEN only. */
export const EXTERNAL_PRODUCT: ProductSpec = { name: 'purple-wedge-usb3', shape: 'wedge', color: [112, 62, 150], tongue: [40, 95, 210] };
export const EXTERNAL_COUNTS: Record<InspectionClass, number> = { OKAY: 60, NOT_OKAY: 0, HIDDEN: 40, EMPTY: 0 };
/** NOT_OKAY images per cross-client probe set (one set per client and foreign defect). */
export const PROBE_COUNT = 30;

/**
 * Reference images for a starting model (`fedline pretrain`, the experiment's pretrained base):
 * other products with other defect types (cracks, dirt, a missing contact tongue) and workshop
 * clutter, standing in for ImageNet weights. Neither the clients' products, nor their defects,
 * nor the external product appear.
 */
export const PRETRAIN_CLIENTS: readonly ClientSpec[] = (
  [
    ['green-rectangle', 'rectangle', [60, 150, 70]],
    ['black-hexagon', 'hexagon', [40, 40, 44]],
    ['white-rounded', 'rounded', [225, 225, 220]],
  ] as const
).flatMap(([name, shape, color]) =>
  (['crack', 'dirt', 'no-tongue'] as const).map((defect) => ({
    name: `ref-${name}-${defect}`,
    product: { name, shape, color },
    defect,
    counts: { OKAY: 30, NOT_OKAY: 25, HIDDEN: 15, EMPTY: 15 },
  })),
);

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
    case 'wedge':
      // Wide at the back, narrow at the port end, with a notch in the back.
      return (u, v) => Math.abs(u) <= 0.5 && Math.abs(v) <= HALF_W * (1.05 - 0.4 * (u + 0.5)) && !(u < -0.42 && Math.abs(v) < 0.05);
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
    canvas.paint(pose, inTongue, product.tongue ? [...product.tongue] : [150, 130, 70]);
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
    case 'crack': {
      // A dark zig-zag crack from the body across the shell.
      const points: [number, number][] = [[randRange(rng, 0.3, 0.45), randRange(rng, -0.18, 0.18)]];
      for (let i = 0; i < 4; i++) points.push([points[i]![0] + randRange(rng, 0.06, 0.1), randRange(rng, -0.15, 0.15)]);
      const width = randRange(rng, 0.025, 0.04);
      canvas.paint(pose, (u, v) => points.some((p, i) => i > 0 && segmentDistance(u, v, points[i - 1]!, p) < width), [15, 15, 18]);
      break;
    }
    case 'dirt': {
      // A grey-brown smudge over the opening, darker in its middle.
      const cu = randRange(rng, 0.6, 0.72);
      const cv = randRange(rng, -0.06, 0.06);
      const ru = randRange(rng, 0.1, 0.15);
      const rv = randRange(rng, 0.08, 0.13);
      const tone = randRange(rng, 70, 110);
      canvas.paint(pose, (u, v) => ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1, (u, v) => {
        const d = ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2;
        const k = 0.7 + 0.3 * d;
        return [tone * k * 1.1, tone * k, tone * k * 0.8];
      });
      break;
    }
    case 'no-tongue':
      // The contact tongue is missing: the opening is empty, with a bright scar where it broke.
      canvas.paint(pose, inOpening, [28, 28, 30]);
      canvas.paint(pose, (u, v) => u >= 0.56 && u <= 0.6 && v >= -0.03 && v <= 0.07, [235, 235, 235]);
      break;
  }
}

/** Distance from (u, v) to the segment a-b. */
function segmentDistance(u: number, v: number, a: readonly [number, number], b: readonly [number, number]): number {
  const du = b[0] - a[0];
  const dv = b[1] - a[1];
  const t = Math.max(0, Math.min(1, ((u - a[0]) * du + (v - a[1]) * dv) / (du * du + dv * dv || 1)));
  return Math.hypot(u - a[0] - t * du, v - a[1] - t * dv);
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

const metalGray = (rng: Rng): Rgb => {
  const g = randRange(rng, 120, 220);
  return [g, g, g + randRange(rng, 0, 12)];
};

/** A workbench without a product: blank (a quarter of the time), or cables, screws, nuts, washers and boards. */
function drawWorkshopClutter(canvas: Canvas, rng: Rng): void {
  if (rng() < 0.25) return;
  const s = canvas.size;
  const n = randInt(rng, 1, 5);
  for (let i = 0; i < n; i++) {
    const kind = randInt(rng, 0, 5);
    const cx = randRange(rng, 0.15, 0.85) * s;
    const cy = randRange(rng, 0.15, 0.85) * s;
    const a = randRange(rng, 0, Math.PI * 2);
    const r = randRange(rng, 0.06, 0.12) * s;
    const pose: Pose = { cx, cy, angle: a, length: r };
    if (kind === 0) {
      // A cable: a bent line across the picture, with a plug at one end.
      const gray = randRange(rng, 15, 90);
      const color: Rgb = rng() < 0.5 ? [gray, gray, gray] : [randRange(rng, 120, 230), randRange(rng, 30, 120), randRange(rng, 20, 90)];
      const w = randRange(rng, 0.025, 0.045) * s;
      const bend = randRange(rng, -0.25, 0.25) * s;
      const p0: [number, number] = [cx - Math.cos(a) * s * 0.6, cy - Math.sin(a) * s * 0.6];
      const p2: [number, number] = [cx, cy];
      const mid: [number, number] = [(p0[0] + p2[0]) / 2 - Math.sin(a) * bend, (p0[1] + p2[1]) / 2 + Math.cos(a) * bend];
      const pts: [number, number][] = Array.from({ length: 9 }, (_, k) => {
        const t = k / 8;
        return [(1 - t) ** 2 * p0[0] + 2 * t * (1 - t) * mid[0] + t * t * p2[0], (1 - t) ** 2 * p0[1] + 2 * t * (1 - t) * mid[1] + t * t * p2[1]];
      });
      canvas.paintPixels((x, y) => pts.some((p, k) => k > 0 && segmentDistance(x, y, pts[k - 1]!, p) < w), color);
      canvas.paint(pose, (u, v) => u >= -0.2 && u <= 0.9 && Math.abs(v) <= 0.35, [35, 35, 38]);
      canvas.paint(pose, (u, v) => u > 0.9 && u <= 1.4 && Math.abs(v) <= 0.22, metalGray(rng));
    } else if (kind === 1) {
      // A screw: a round head with a slot and a threaded shaft.
      const metal = metalGray(rng);
      canvas.paint(pose, (u, v) => u >= 0 && u <= 2.6 && Math.abs(v) <= 0.28, (u) => scale(metal, Math.floor(u * 6) % 2 === 0 ? 0.75 : 0.95));
      canvas.paint(pose, (u, v) => u * u + v * v <= 0.36, metal);
      canvas.paint(pose, (u, v) => Math.abs(u) <= 0.08 && Math.abs(v) <= 0.5, scale(metal, 0.35));
    } else if (kind === 2) {
      // A hex nut with its hole.
      const metal = metalGray(rng);
      canvas.paint(pose, (u, v) => {
        const ang = Math.atan2(v, u);
        const sector = Math.PI / 3;
        const local = ((ang % sector) + sector) % sector - sector / 2;
        return Math.hypot(u, v) * Math.cos(local) <= 0.8;
      }, metal);
      canvas.paint(pose, (u, v) => u * u + v * v <= 0.16, scale(metal, 0.3));
    } else if (kind === 3) {
      // A washer: a flat ring.
      const metal = metalGray(rng);
      canvas.paint(pose, (u, v) => u * u + v * v <= 0.64 && u * u + v * v >= 0.12, metal);
    } else {
      // A bare circuit board with pads.
      const green: Rgb = [randRange(rng, 20, 50), randRange(rng, 90, 140), randRange(rng, 40, 70)];
      canvas.paint(pose, (u, v) => Math.abs(u) <= 1.6 && Math.abs(v) <= 0.9, green);
      canvas.paint(pose, (u, v) => Math.abs(u) <= 1.4 && Math.abs(v) <= 0.7 && Math.abs((u * 3) % 1) < 0.35 && Math.abs((v * 3) % 1) < 0.35, [200, 170, 80]);
    }
  }
}

export interface RenderOptions {
  size: number;
  product: ProductSpec;
  cls: InspectionClass;
  defect: DefectType;
  /** EMPTY scenes; default classic. */
  clutter?: ClutterStyle;
}

/** Render one image (RGBA, size x size). */
export function renderSample(rng: Rng, { size, product, cls, defect, clutter }: RenderOptions): Uint8Array {
  const canvas = new Canvas(size);
  canvas.fillBackground(rng);
  if (cls === 'EMPTY') {
    if (clutter === 'workshop') drawWorkshopClutter(canvas, rng);
    else drawClutter(canvas, rng);
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
  /** EMPTY scenes (default classic: the demo's images stay as they were). */
  clutter?: ClutterStyle;
}

export interface SynthResult {
  clients: { name: string; dir: string; counts: Record<string, number> }[];
  files: number;
}

/** Write `<out>/<client>/<CLASS>/<client>-<CLASS>-<n>.png` for every client (no folder for a class with no image). */
export async function generateDataset(options: SynthOptions): Promise<SynthResult> {
  const clients = options.clients ?? PAPER_CLIENTS;
  const result: SynthResult = { clients: [], files: 0 };
  for (const client of clients) {
    const dir = join(options.out, client.name);
    const counts: Record<string, number> = {};
    await mkdir(dir, { recursive: true });
    for (const cls of INSPECTION_CLASSES) {
      const n = client.counts[cls] === 0 ? 0 : Math.max(2, Math.round(client.counts[cls] * (options.scale ?? 1)));
      counts[cls] = n;
      if (n === 0) continue;
      const clsDir = join(dir, cls);
      await mkdir(clsDir, { recursive: true });
      const rng = mulberry32(deriveSeed(options.seed, `${client.name}/${cls}`));
      for (let i = 0; i < n; i++) {
        const rgba = renderSample(rng, { size: options.size, product: client.product, cls, defect: client.defect, clutter: options.clutter ?? 'classic' });
        await writeFile(join(clsDir, `${client.name}-${cls}-${String(i).padStart(4, '0')}.png`), encodePng(options.size, options.size, rgba));
        result.files++;
      }
    }
    result.clients.push({ name: client.name, dir, counts });
  }
  return result;
}

/** One folder per class with the images of several generated clients pooled: `<out>/<CLASS>/<client>-<CLASS>-<n>.png`. */
async function generatePooled(options: SynthOptions & { clients: readonly ClientSpec[] }): Promise<{ dir: string; files: number; counts: Record<string, number> }> {
  const raw = join(options.out, '.per-product');
  await rm(raw, { recursive: true, force: true });
  const result = await generateDataset({ ...options, out: raw });
  const counts: Record<string, number> = {};
  for (const c of result.clients) {
    for (const cls of INSPECTION_CLASSES) {
      if (!c.counts[cls]) continue;
      await mkdir(join(options.out, cls), { recursive: true });
      for (const f of await readdir(join(c.dir, cls))) await rename(join(c.dir, cls, f), join(options.out, cls, f));
      counts[cls] = (counts[cls] ?? 0) + c.counts[cls]!;
    }
  }
  await rm(raw, { recursive: true, force: true });
  return { dir: options.out, files: result.files, counts };
}

/** REFERENCE_CLIENTS' images in one folder: `<out>/<CLASS>/<ref>-<CLASS>-<n>.png`. */
export async function generateReferenceDataset(options: Omit<SynthOptions, 'clients'>): Promise<{ dir: string; files: number }> {
  const { dir, files } = await generatePooled({ ...options, clients: REFERENCE_CLIENTS });
  return { dir, files };
}

export const EXPERIMENT_PARTS = ['clients', 'external', 'probes', 'reference'] as const;
export type ExperimentPart = (typeof EXPERIMENT_PARTS)[number];

export interface ExperimentDataOptions {
  out: string;
  seed: number;
  size: number;
  /** Multiply every count. Default 1. */
  scale?: number;
  /** What to write; default all four. */
  parts?: readonly ExperimentPart[];
}

export interface ProbeSet {
  /** `<client>-<defect>`: the client's product carrying another client's defect. */
  name: string;
  client: string;
  defect: DefectType;
  /** The client whose defect it is. */
  defectOf: string;
  dir: string;
  count: number;
}

export interface ExperimentData {
  /** `<out>/<client>/<CLASS>/*.png`: each client's own product and defect (an agent's data.dir). */
  clients: SynthResult['clients'];
  /** `<out>/external/{OKAY,HIDDEN}`: the fourth product, never trained on (the paper's USB 3.0 set). */
  external: { dir: string; counts: Record<string, number> } | null;
  /** `<out>/probes/<client>-<defect>/NOT_OKAY`: cross-client probes (the paper's figures 13-14). */
  probes: ProbeSet[];
  /** `<out>/reference/<CLASS>`: other products, defects and objects, for `fedline pretrain`. */
  reference: { dir: string; files: number; counts: Record<string, number> } | null;
  files: number;
}

/**
 * Everything the paper's comparison needs, from one seed: the three clients (EMPTY with workshop
 * clutter), the external set, the cross-client probes and the reference images for a starting
 * model. Every part has its own random streams (by name), so writing one part never changes another.
 */
export async function generateExperimentData(options: ExperimentDataOptions): Promise<ExperimentData> {
  const parts = new Set(options.parts ?? EXPERIMENT_PARTS);
  const common = { seed: options.seed, size: options.size, scale: options.scale ?? 1, clutter: 'workshop' as const };
  const out: ExperimentData = { clients: [], external: null, probes: [], reference: null, files: 0 };
  if (parts.has('clients')) {
    const r = await generateDataset({ ...common, out: options.out, clients: PAPER_CLIENTS });
    out.clients = r.clients;
    out.files += r.files;
  }
  if (parts.has('external')) {
    const r = await generateDataset({ ...common, out: options.out, clients: [{ name: 'external', product: EXTERNAL_PRODUCT, defect: 'sticker', counts: EXTERNAL_COUNTS }] });
    out.external = { dir: r.clients[0]!.dir, counts: r.clients[0]!.counts };
    out.files += r.files;
  }
  if (parts.has('probes')) {
    const specs: (ClientSpec & { defectOf: string })[] = PAPER_CLIENTS.flatMap((c) =>
      PAPER_CLIENTS.filter((o) => o.defect !== c.defect).map((o) => ({
        name: `${c.name}-${o.defect}`,
        product: c.product,
        defect: o.defect,
        defectOf: o.name,
        counts: { OKAY: 0, NOT_OKAY: PROBE_COUNT, HIDDEN: 0, EMPTY: 0 },
      })),
    );
    const r = await generateDataset({ ...common, out: join(options.out, 'probes'), clients: specs });
    out.probes = r.clients.map((c, i) => ({ name: c.name, client: PAPER_CLIENTS.find((p) => c.name.startsWith(`${p.name}-`))!.name, defect: specs[i]!.defect, defectOf: specs[i]!.defectOf, dir: c.dir, count: c.counts.NOT_OKAY! }));
    out.files += r.files;
  }
  if (parts.has('reference')) {
    const r = await generatePooled({ ...common, out: join(options.out, 'reference'), clients: PRETRAIN_CLIENTS });
    out.reference = r;
    out.files += r.files;
  }
  return out;
}
