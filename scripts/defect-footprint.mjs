// Diagnostic for docs/experiment.md ("Why the base never learnt the reference defects"): how many
// pixels each generated defect changes, and by how much, at a given image size. Each scene is
// rendered twice with the same random draws, NOT_OKAY and OKAY (the defect's own draws skipped in
// the OKAY one, so pose, lighting and noise are identical): the pixels that differ are the defect.
// 20 scenes per generator client (the clients' own defects and the reference set's).
// usage (after npm run build): node scripts/defect-footprint.mjs [size=32] [scenes=20]
const D = new URL('../dist', import.meta.url).pathname;
const { renderSample } = await import(`${D}/synthetic-data/generate.js`);
const { PRETRAIN_CLIENTS, PAPER_CLIENTS } = await import(`${D}/synthetic-data/catalogue.js`);
const { mulberry32 } = await import(`${D}/shared/util/random.js`);
const size = Number(process.argv[2] ?? 32);
const scenes = Number(process.argv[3] ?? 20);

function recording(seed) {
  const r = mulberry32(seed);
  const values = [];
  const f = () => {
    const v = r();
    values.push(v);
    return v;
  };
  f.values = values;
  return f;
}
/** The recorded draws again, skipping `skip` of them from position `from`. */
function replay(values, from, skip) {
  let i = 0;
  return () => {
    if (i === from) i += skip;
    return values[i++] ?? 0.5;
  };
}
function footprint(product, defect, seed) {
  const r = recording(seed);
  const bad = renderSample(r, { size, product, cls: 'NOT_OKAY', defect });
  const plain = recording(seed);
  renderSample(plain, { size, product, cls: 'OKAY', defect });
  const skip = r.values.length - plain.values.length;
  // Where the defect's draws start is not exported: the position that leaves the fewest pixels
  // differing is it (any other shifts the lighting and noise of the whole image).
  let best = null;
  for (let from = 0; from < 64; from++) {
    const ok = renderSample(replay(r.values, from, skip), { size, product, cls: 'OKAY', defect });
    let changed = 0;
    let sum = 0;
    for (let p = 0; p < size * size; p++) {
      let d = 0;
      for (let c = 0; c < 3; c++) d += Math.abs(bad[p * 4 + c] - ok[p * 4 + c]);
      if (d > 0) {
        changed++;
        sum += d / 3;
      }
    }
    if (!best || changed < best.changed) best = { changed, mean: changed ? sum / changed : 0 };
  }
  return best;
}
const groups = new Map();
const add = (key, f) => groups.set(key, [...(groups.get(key) ?? []), f]);
for (const c of PAPER_CLIENTS) for (let s = 0; s < scenes; s++) add(`${c.name}: ${c.defect}`, footprint(c.product, c.defect, 1000 + s));
for (const c of PRETRAIN_CLIENTS) for (let s = 0; s < scenes; s++) add(`reference: ${c.defect}`, footprint(c.product, c.defect, 1000 + s));
const avg = (a) => a.reduce((x, y) => x + y, 0) / a.length;
console.log(`${size} px, ${scenes} scenes per client: pixels the defect changes (mean, min) and their mean change in grey levels (0-255)`);
for (const [k, g] of groups) {
  const px = g.map((f) => f.changed);
  console.log(
    `${k.padEnd(22)} ${avg(px).toFixed(1).padStart(5)} px (min ${Math.min(...px)}), mean change ${avg(g.map((f) => f.mean))
      .toFixed(0)
      .padStart(3)}`,
  );
}
