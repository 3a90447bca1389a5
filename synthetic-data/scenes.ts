import { randInt, randRange, type Rng } from '../shared/util/random.js';
import { Canvas, scale, segmentDistance, type Pose, type Rgb } from './canvas.js';
import type { ClutterStyle, DefectType, InspectionClass, BodyShape, ProductSpec } from './catalogue.js';

/**
 * The scenes of the generated images: a USB stick (body, port, or the port hidden) with its
 * defect, or an EMPTY scene (classic clutter or a workbench). Every random draw comes from the
 * caller's stream in a fixed order: changing the order changes every image of a seed.
 */

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

// The port: a metal shell sticking out at u in [0.5, 0.78], with a dark opening and a tongue.
const SHELL = { u0: 0.48, u1: 0.8, v: 0.15 };
const OPENING = { u0: 0.56, u1: 0.8, v: 0.1 };
const inShell = (u: number, v: number) => u >= SHELL.u0 && u <= SHELL.u1 && Math.abs(v) <= SHELL.v;
const inOpening = (u: number, v: number) => u >= OPENING.u0 && u <= OPENING.u1 && Math.abs(v) <= OPENING.v;
const inTongue = (u: number, v: number) => u >= 0.6 && u <= 0.8 && v >= -0.02 && v <= 0.06;

/** The tongue's colour: one of `tongues` at a random tone (draws only then), else `tongue`, else light brown. */
export function tongueColour(product: ProductSpec, rng: Rng): Rgb {
  if (product.tongues && product.tongues.length > 0) {
    const base = product.tongues[randInt(rng, 0, product.tongues.length)]!;
    return scale([...base], randRange(rng, 0.85, 1.15));
  }
  return product.tongue ? [...product.tongue] : [150, 130, 70];
}

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
    canvas.paint(pose, inTongue, tongueColour(product, rng));
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
      canvas.paint(
        pose,
        (u, v) => ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1,
        (u, v) => {
          const d = ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2;
          const k = 0.7 + 0.3 * d;
          return [tone * k * 1.1, tone * k, tone * k * 0.8];
        },
      );
      break;
    }
    case 'no-tongue':
      // The contact tongue is missing: the opening is empty, with a bright scar where it broke.
      canvas.paint(pose, inOpening, [28, 28, 30]);
      canvas.paint(pose, (u, v) => u >= 0.56 && u <= 0.6 && v >= -0.03 && v <= 0.07, [235, 235, 235]);
      break;
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
      canvas.paint(
        pose,
        (u, v) => u >= 0 && u <= 2.6 && Math.abs(v) <= 0.28,
        (u) => scale(metal, Math.floor(u * 6) % 2 === 0 ? 0.75 : 0.95),
      );
      canvas.paint(pose, (u, v) => u * u + v * v <= 0.36, metal);
      canvas.paint(pose, (u, v) => Math.abs(u) <= 0.08 && Math.abs(v) <= 0.5, scale(metal, 0.35));
    } else if (kind === 2) {
      // A hex nut with its hole.
      const metal = metalGray(rng);
      canvas.paint(
        pose,
        (u, v) => {
          const ang = Math.atan2(v, u);
          const sector = Math.PI / 3;
          const local = (((ang % sector) + sector) % sector) - sector / 2;
          return Math.hypot(u, v) * Math.cos(local) <= 0.8;
        },
        metal,
      );
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
