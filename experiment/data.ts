import { rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { generateExperimentData, INSPECTION_CLASSES, type ExperimentPart } from '../synthetic-data/generate.js';
import { loadDataset, loadImageSet, type ImageSet, type LocalDataset } from '../training/image-folder.js';
import { createImageDecoder } from '../training/images.js';
import { ErrorCodes, FedlineError } from '../shared/protocol/errors.js';
import type { ExperimentConfig } from './config.js';
import type { ExperimentResults, Probe, Site } from './results.js';
import { concatImageSets, pooledDataset } from './sets.js';

/**
 * The experiment's data: which sites, external set and probes (generated, or the user's folders),
 * then every site's images loaded and split as the agents load theirs, and the test sets every
 * model is evaluated on.
 */

interface DataLayout {
  sites: Site[];
  external: string | null;
  probes: Probe[];
  classes: string[];
  /** Reference images for pretraining (given, or generated when a base must be trained). */
  referenceDir: string | null;
}

interface LoadedData {
  siteData: Map<string, LocalDataset>;
  externalSet: ImageSet | null;
  probeSets: Map<string, ImageSet>;
  /** Every site's data pooled: the centralized arm's training set and the pooled local test split. */
  pooled: LocalDataset;
  /** Every site's own test split, as `site:<id>`. */
  siteTests: { id: string; set: ImageSet }[];
  /** Every test set a model is evaluated on: local-test, site:<id>, external, probe:<id>, probes. */
  allSets: { id: string; set: ImageSet }[];
}

/** Generate the synthetic data (under `<out>/data`) or take the configured folders. */
export async function prepareDataLayout(config: ExperimentConfig, needPretraining: boolean, say: (line: string) => void): Promise<DataLayout> {
  const referenceDir = config.pretrained?.data ?? null;
  if (config.data.source === 'synthetic') {
    const seed = config.data.seed ?? config.seed;
    const dataDir = join(config.out, 'data');
    await rm(dataDir, { recursive: true, force: true });
    const parts: ExperimentPart[] = ['clients', 'external', 'probes'];
    const referenceScale = config.pretrained?.referenceScale ?? config.data.scale;
    // Every part has its own random streams: the reference images at their own scale, in a second
    // call, leave the clients', external and probe images exactly as with one call.
    const referenceApart = referenceScale !== config.data.scale;
    if (needPretraining && !referenceDir && !referenceApart) parts.push('reference');
    const t0 = Date.now();
    const common = {
      out: dataDir,
      seed,
      size: config.data.size,
      clientClutter: config.data.clientClutter,
      references: config.pretrained?.references ?? ('classic' as const),
    };
    const gen = await generateExperimentData({ ...common, scale: config.data.scale, parts });
    if (needPretraining && !referenceDir && referenceApart) {
      const ref = await generateExperimentData({ ...common, scale: referenceScale, parts: ['reference'] });
      gen.reference = ref.reference;
      gen.files += ref.files;
    }
    say(
      `generated ${gen.files} images (${config.data.size}x${config.data.size} px, seed ${seed}, scale ${config.data.scale}` +
        `${referenceApart && gen.reference ? `, reference images at scale ${referenceScale}` : ''}` +
        `${gen.reference && common.references !== 'classic' ? `, ${common.references} reference images` : ''}) in ${dataDir} (${((Date.now() - t0) / 1000).toFixed(1)} s)`,
    );
    return {
      sites: gen.clients.map((c) => ({ id: c.name, dir: c.dir })),
      external: gen.external?.dir ?? null,
      probes: gen.probes.map((p) => ({ id: p.name, dir: p.dir, product: p.client, defectOf: p.defectOf })),
      classes: [...INSPECTION_CLASSES],
      referenceDir: gen.reference ? gen.reference.dir : referenceDir,
    };
  }
  const d = config.data;
  const sites = Object.entries(d.sites).map(([id, dir]) => ({ id, dir }));
  const probes = Object.entries(d.probes ?? {}).map(([id, dir]) => ({
    id,
    dir,
    product: d.probeSites?.[id]?.product ?? null,
    defectOf: d.probeSites?.[id]?.defectOf ?? null,
  }));
  for (const p of probes) {
    for (const s of [p.product, p.defectOf])
      if (s !== null && !sites.some((x) => x.id === s))
        throw new FedlineError(ErrorCodes.CONFIG_INVALID, `probe ${p.id}: site "${s}" is not one of data.sites (${sites.map((x) => x.id).join(', ')})`);
  }
  return { sites, external: d.external ?? null, probes, classes: [...d.classes], referenceDir };
}

/** The class counted as a defect (configured, else NOT_OKAY when it is a class) and its index (-1: none). */
export function defectClassOf(config: ExperimentConfig, classes: readonly string[]): { defectClass: string | null; defectIndex: number } {
  const defectClass = config.defectClass === undefined ? (classes.includes('NOT_OKAY') ? 'NOT_OKAY' : null) : config.defectClass;
  if (defectClass !== null && !classes.includes(defectClass))
    throw new FedlineError(ErrorCodes.CONFIG_INVALID, `defectClass "${defectClass}" is not one of the classes (${classes.join(', ')})`);
  return { defectClass, defectIndex: defectClass === null ? -1 : classes.indexOf(defectClass) };
}

/** Load every site (the agents' own loading: same folder, classes, split fraction and seed, decoder) and the evaluation sets. */
export async function loadData(config: ExperimentConfig, layout: DataLayout, say: (line: string) => void): Promise<LoadedData> {
  const { sites, classes } = layout;
  const decoder = await createImageDecoder(config.training.decoder);
  const inputShape = config.model.inputShape as [number, number, number];
  const splitSeed = config.splitSeed ?? config.seed;
  const cacheBytes = config.training.cacheMB * 1024 * 1024;
  const siteData = new Map<string, LocalDataset>();
  for (const s of sites) {
    const data = await loadDataset({ dir: s.dir, classes, inputShape, testFraction: config.testFraction, splitSeed, cacheBytes, decoder });
    for (const p of data.problems.slice(0, 20)) say(`  ${s.id}: ${p}`);
    siteData.set(s.id, data);
    say(`  ${s.id}: train ${data.counts.train.join('/')} test ${data.counts.test.join('/')} (${classes.join('/')})`);
  }
  const evalSets: { id: string; set: ImageSet }[] = [];
  const extra = async (id: string, dir: string) => {
    const { set, problems } = await loadImageSet({ dir, classes, inputShape, cacheBytes, decoder });
    for (const p of problems.slice(0, 20)) say(`  ${id}: ${p}`);
    evalSets.push({ id, set });
    return set;
  };
  const externalSet = layout.external ? await extra('external', layout.external) : null;
  const probeSets = new Map<string, ImageSet>();
  for (const p of layout.probes) probeSets.set(p.id, await extra(`probe:${p.id}`, p.dir));
  const pooled = pooledDataset(sites.map((s) => siteData.get(s.id)!));
  const siteTests = sites.map((s) => ({ id: `site:${s.id}`, set: siteData.get(s.id)!.test }));
  const allSets = [{ id: 'local-test', set: pooled.test }, ...siteTests, ...evalSets];
  if (probeSets.size > 0) {
    allSets.push({ id: 'probes', set: concatImageSets([...probeSets.values()]) });
  }
  return { siteData, externalSet, probeSets, pooled, siteTests, allSets };
}

/** Bytes of each site's training image files: what the centralized arm moves. */
export async function trainingImageBytes(sites: readonly Site[], data: LoadedData): Promise<Map<string, number>> {
  const bytes = new Map<string, number>();
  for (const s of sites) {
    let n = 0;
    for (const p of data.siteData.get(s.id)!.train.paths) n += (await stat(p)).size;
    bytes.set(s.id, n);
  }
  return bytes;
}

/** results.json's `data`: the sets and their counts. */
export function dataSummary(layout: DataLayout, data: LoadedData): ExperimentResults['data'] {
  const { sites, external, probes, classes } = layout;
  const { siteData, externalSet, probeSets } = data;
  return {
    sites: Object.fromEntries(sites.map((s) => [s.id, { dir: s.dir, train: siteData.get(s.id)!.counts.train, test: siteData.get(s.id)!.counts.test }])),
    external:
      externalSet && external
        ? { dir: external, count: externalSet.count, perClass: classes.map((_, c) => externalSet.labels.filter((l) => l === c).length) }
        : null,
    probes: Object.fromEntries(probes.map((p) => [p.id, { dir: p.dir, count: probeSets.get(p.id)!.count, product: p.product, defectOf: p.defectOf }])),
  };
}
