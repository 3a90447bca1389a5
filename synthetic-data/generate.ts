import { mkdir, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { encodePng } from '../training/images.js';
import { deriveSeed, mulberry32 } from '../shared/util/random.js';
import {
  EXTERNAL_COUNTS,
  EXTERNAL_PRODUCT,
  INSPECTION_CLASSES,
  PAPER_CLIENTS,
  PROBE_COUNT,
  REFERENCE_CLIENTS,
  pretrainClients,
  type ClientSpec,
  type ClutterStyle,
  type DefectType,
  type ReferenceSet,
} from './catalogue.js';
import { renderSample } from './scenes.js';

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

// What the data set is made of (catalogue.ts) and how one image is drawn (scenes.ts), importable from here as before.
export {
  EXTERNAL_COUNTS,
  EXTERNAL_PRODUCT,
  INSPECTION_CLASSES,
  PAPER_CLIENTS,
  PRETRAIN_CLIENTS,
  PROBE_COUNT,
  REFERENCE_CLIENTS,
  REFERENCE_SETS,
  REFERENCE_TONGUES,
  pretrainClients,
  type BodyShape,
  type ClientSpec,
  type ClutterStyle,
  type DefectType,
  type InspectionClass,
  type ProductSpec,
  type ReferenceSet,
} from './catalogue.js';
export { renderSample, type RenderOptions } from './scenes.js';

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
async function generatePooled(
  options: SynthOptions & { clients: readonly ClientSpec[] },
): Promise<{ dir: string; files: number; counts: Record<string, number> }> {
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
  /** The clients' EMPTY scenes: workshop (default) or classic (as `fedline demo`'s images). */
  clientClutter?: ClutterStyle;
  /** The reference images' products: classic (default) or varied-tongues (catalogue.ts REFERENCE_SETS). */
  references?: ReferenceSet;
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
    const r = await generateDataset({ ...common, clutter: options.clientClutter ?? 'workshop', out: options.out, clients: PAPER_CLIENTS });
    out.clients = r.clients;
    out.files += r.files;
  }
  if (parts.has('external')) {
    const r = await generateDataset({
      ...common,
      out: options.out,
      clients: [{ name: 'external', product: EXTERNAL_PRODUCT, defect: 'sticker', counts: EXTERNAL_COUNTS }],
    });
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
    out.probes = r.clients.map((c, i) => ({
      name: c.name,
      client: PAPER_CLIENTS.find((p) => c.name.startsWith(`${p.name}-`))!.name,
      defect: specs[i]!.defect,
      defectOf: specs[i]!.defectOf,
      dir: c.dir,
      count: c.counts.NOT_OKAY!,
    }));
    out.files += r.files;
  }
  if (parts.has('reference')) {
    const r = await generatePooled({ ...common, out: join(options.out, 'reference'), clients: pretrainClients(options.references ?? 'classic') });
    out.reference = r;
    out.files += r.files;
  }
  return out;
}
