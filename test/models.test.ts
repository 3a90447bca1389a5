import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { modelMetaSchema, type ModelMeta } from '../shared/protocol/messages.js';
import { bundleTensors, decodeBundle, type NamedTensor } from '../shared/bundle/tensor-bundle.js';
import { loadTf } from '../training/backend.js';
import { buildInitialBundle } from '../training/initial-model.js';
import { extractModel, saveLayersModelToDir, weightNames } from '../training/model-io.js';
import { freezeAllBut } from '../training/tfjs-trainer.js';
import { federationSizes } from '../training/model-size.js';
import { buildModel, countParameters, PAPER_HEAD, VGG_BLOCKS } from '../training/models.js';
import { tempDir } from './helpers.js';

const CLASSES = ['OKAY', 'NOT_OKAY', 'HIDDEN', 'EMPTY'];

async function initial(spec: Parameters<typeof buildInitialBundle>[1]): Promise<Map<string, NamedTensor> & { meta?: ModelMeta }> {
  const { tf } = await loadTf('cpu');
  const decoded = decodeBundle<ModelMeta>(await buildInitialBundle(tf, spec), modelMetaSchema);
  const map = new Map(bundleTensors(decoded).map((t) => [t.name, t])) as Map<string, NamedTensor> & { meta?: ModelMeta };
  map.meta = decoded.header.meta;
  return map;
}

test('vgg11/16/19: Keras layer names, conv count per block, width multiplier, custom head ending in the class count', async () => {
  const { tf } = await loadTf('cpu');
  for (const arch of ['vgg11', 'vgg16', 'vgg19'] as const) {
    const model = buildModel(tf, {
      architecture: arch,
      inputShape: [32, 32, 3],
      numClasses: 5,
      seed: 1,
      width: 0.125,
      head: { dense: [24, 12], dropout: 0.3 },
    });
    try {
      const convs = model.layers.filter((l) => /^block\d_conv\d$/.test(l.name));
      assert.equal(
        convs.length,
        VGG_BLOCKS[arch].reduce((a, b) => a + b, 0),
        arch,
      );
      VGG_BLOCKS[arch].forEach((n, i) =>
        assert.ok(model.layers.some((l) => l.name === `block${i + 1}_conv${n}`) && !model.layers.some((l) => l.name === `block${i + 1}_conv${n + 1}`)),
      );
      // width 0.125: 64 -> 8 filters in block 1, 512 -> 64 in block 5
      assert.equal((convs[0]!.getWeights()[0]!.shape as number[])[3], 8);
      assert.equal((convs.at(-1)!.getWeights()[0]!.shape as number[])[3], 64);
      const head = model.layers.filter((l) => l.name.startsWith('head_')).map((l) => l.name);
      assert.deepEqual(head, ['head_dense1', 'head_dropout1', 'head_dense2', 'head_dropout2', 'head_predictions']);
      assert.deepEqual(model.outputs[0]!.shape, [null, 5]);
    } finally {
      model.dispose();
    }
  }
  assert.throws(() => buildModel(tf, { architecture: 'vgg16', inputShape: [24, 24, 3], numClasses: 4, seed: 1 }), /at least 32x32/);
});

test('the seeded initial model is identical for one seed and differs for another', async () => {
  const spec = {
    architecture: 'vgg11' as const,
    width: 0.125,
    inputShape: [32, 32, 3] as [number, number, 3],
    classes: CLASSES,
    seed: 7,
    normalization: undefined,
    initFrom: undefined,
  };
  const a = await initial(spec);
  const b = await initial(spec);
  const c = await initial({ ...spec, seed: 8 });
  for (const [name, t] of a) assert.deepEqual(t.data, b.get(name)!.data, name);
  assert.notDeepEqual(a.get('head_predictions/kernel')!.data, c.get('head_predictions/kernel')!.data);
  assert.equal(a.meta!.normalization, 'per-image', 'seeded init: per-image normalisation by default');
  assert.deepEqual(a.meta!.headTensors, ['head_dense1/kernel', 'head_dense1/bias', 'head_predictions/kernel', 'head_predictions/bias']);
});

test("initFrom: base layers carry the pretrained file's weights (matched by name), the head keeps the seeded init", async () => {
  const { tf } = await loadTf('cpu');
  const dir = tempDir('pretrained');
  try {
    // A small "pretrained" VGG-11 saved as a tfjs layers model folder, another seed and another head.
    const pre = buildModel(tf, { architecture: 'vgg11', width: 0.125, inputShape: [32, 32, 3], numClasses: 10, seed: 99, head: { dense: [16], dropout: 0 } });
    const preWeights = new Map((await extractModel(tf, pre)).tensors.map((t) => [t.name, t.data]));
    await saveLayersModelToDir(tf, pre, join(dir.path, 'base'));
    pre.dispose();

    const spec = {
      architecture: 'vgg11' as const,
      width: 0.125,
      inputShape: [32, 32, 3] as [number, number, 3],
      classes: CLASSES,
      seed: 7,
      normalization: undefined,
    };
    const seeded = await initial({ ...spec, initFrom: undefined });
    const fromFile = await initial({ ...spec, initFrom: join(dir.path, 'base') });
    let base = 0;
    for (const [name, t] of fromFile) {
      if (name.startsWith('head_')) {
        assert.deepEqual(t.data, seeded.get(name)!.data, `${name}: seeded head, identical on every agent`);
      } else {
        assert.deepEqual(t.data, preWeights.get(name), `${name}: from the pretrained file`);
        if (name.endsWith('/kernel')) assert.notDeepEqual(t.data, seeded.get(name)!.data);
        base++;
      }
    }
    assert.equal(base, 16, '8 conv layers x (kernel, bias)');
    assert.equal(fromFile.meta!.normalization, 'imagenet', 'a pretrained init defaults to ImageNet normalisation');

    // Weight names with a model prefix, as some converter versions write them, still match.
    const modelJson = JSON.parse(readFileSync(join(dir.path, 'base', 'model.json'), 'utf8')) as { weightsManifest: { weights: { name: string }[] }[] };
    for (const w of modelJson.weightsManifest[0]!.weights) w.name = `vgg11/${w.name}`;
    writeFileSync(join(dir.path, 'base', 'model.json'), JSON.stringify(modelJson));
    const prefixed = await initial({ ...spec, initFrom: join(dir.path, 'base') });
    assert.deepEqual(prefixed.get('block3_conv2/kernel')!.data, preWeights.get('block3_conv2/kernel'));

    // Another width: the shapes differ, and the error names the weight and both shapes.
    await assert.rejects(
      initial({ ...spec, width: 0.25, initFrom: join(dir.path, 'base') }),
      /block1_conv1\/kernel is 3x3x3x8 in the file but 3x3x3x16 in the model/,
    );
    await assert.rejects(initial({ ...spec, initFrom: join(dir.path, 'missing') }), /cannot read the pretrained model/);
  } finally {
    dir.cleanup();
  }
});

test('update bytes per round of the full-size VGG-19 at 224x224 (built, not trained): federate all vs head', async () => {
  const { tf } = await loadTf('cpu');
  // The paper's head sized like Keras' own VGG-19 top (fc 4096, 4096): its Process1 figure (~134M trainable, ~550 MB).
  const paper = await federationSizes(tf, { architecture: 'vgg19', inputShape: [224, 224, 3], numClasses: 4, head: PAPER_HEAD });
  assert.equal(paper.parameters.total, 139_586_628);
  assert.equal(paper.parameters.head, 119_562_244);
  assert.ok(
    paper.updateBytes.all > paper.parameters.total * 4 && paper.updateBytes.all < paper.parameters.total * 4 + 64 * 1024,
    `all: ${paper.updateBytes.all}`,
  );
  assert.ok(
    paper.updateBytes.head > paper.parameters.head * 4 && paper.updateBytes.head < paper.parameters.head * 4 + 64 * 1024,
    `head: ${paper.updateBytes.head}`,
  );
  // A 1024-unit head: about the paper's Process2 head (~26M parameters).
  const small = await federationSizes(tf, { architecture: 'vgg19', inputShape: [224, 224, 3], numClasses: 4, head: { dense: [1024], dropout: 0.5 } });
  assert.equal(small.parameters.head, 25_088 * 1024 + 1024 + 1024 * 4 + 4);
  assert.ok(small.updateBytes.head < small.updateBytes.all / 1.7);
  const m = buildModel(tf, { architecture: 'vgg19', inputShape: [224, 224, 3], numClasses: 4, seed: 0, init: 'zeros', head: PAPER_HEAD });
  assert.deepEqual(countParameters(m), paper.parameters);
  m.dispose();
});

test('batchNorm: conv (no bias) -> BN -> ReLU per convolution; its moving statistics are weights that travel; a frozen BN layer normalises with them in training too', async () => {
  const { tf } = await loadTf('cpu');
  const m = buildModel(tf, {
    architecture: 'vgg11',
    inputShape: [32, 32, 3],
    numClasses: 4,
    seed: 3,
    width: 0.125,
    batchNorm: true,
    head: { dense: [8], dropout: 0 },
  });
  try {
    const names = weightNames(m);
    assert.ok(names.includes('block1_conv1_bn/moving_mean') && names.includes('block1_conv1_bn/moving_variance') && names.includes('block1_conv1_bn/gamma'));
    assert.ok(!names.includes('block1_conv1/bias'), 'no conv bias before BN');
    assert.equal(
      m.layers.filter((l) => l.getClassName() === 'BatchNormalization').length,
      VGG_BLOCKS.vgg11.reduce((a, b) => a + b, 0),
    );
    const x = tf.randomNormal([4, 32, 32, 3], 2, 3, 'float32', 7);
    const inference = () => (m.predict(x) as import('@tensorflow/tfjs').Tensor).arraySync() as number[][];
    const trainingMode = () => (m.apply(x, { training: true }) as import('@tensorflow/tfjs').Tensor).arraySync() as number[][];
    const maxDiff = (a: number[][], b: number[][]) => Math.max(...a.flatMap((r, i) => r.map((v, j) => Math.abs(v - b[i]![j]!))));
    assert.ok(maxDiff(inference(), trainingMode()) > 1e-3, 'a trainable BN layer normalises with the batch statistics');
    freezeAllBut(m, new Set(names.filter((n) => n.startsWith('head_'))));
    const before = m.getWeights().map((w) => w.dataSync().slice());
    assert.ok(maxDiff(inference(), trainingMode()) < 1e-5, 'frozen (federate head): the moving statistics, as in evaluation');
    m.getWeights().forEach((w, i) => assert.deepEqual(w.dataSync(), before[i], 'and they stay put'));
  } finally {
    m.dispose();
  }
});
