import { test } from 'node:test';
import assert from 'node:assert/strict';
import { classificationMetrics } from '../shared/fl/classification-metrics.js';

test('accuracy, balanced accuracy, per-class precision/recall and the confusion matrix', () => {
  // 6 OKAY (class 0), 2 NOT_OKAY (class 1); the model passes everything but one defect.
  const labels = [0, 0, 0, 0, 0, 0, 1, 1];
  const preds = [0, 0, 0, 0, 0, 0, 0, 1];
  const m = classificationMetrics(labels, preds, 3, 0.25);
  assert.deepEqual(m.confusion, [
    [6, 0, 0],
    [1, 1, 0],
    [0, 0, 0],
  ]);
  assert.equal(m.accuracy, 7 / 8);
  assert.deepEqual(m.recall, [1, 0.5, null]);
  assert.deepEqual(m.precision, [6 / 7, 1, null]);
  assert.equal(m.balancedAccuracy, 0.75, 'mean recall over the classes present');
  assert.equal(m.loss, 0.25);
  assert.equal(classificationMetrics([], [], 2).accuracy, 0);
  assert.throws(() => classificationMetrics([0, 5], [0, 0], 2), /out of range/);
});
