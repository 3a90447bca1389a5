import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createTopics, isValidId, topicMatches } from '../shared/protocol/topics.js';

test('topic builders and parsers agree', () => {
  const t = createTopics('fl/usb');
  assert.equal(t.round(), 'fl/usb/round');
  assert.equal(t.update(3, 'site-a'), 'fl/usb/round/3/update/site-a');
  assert.deepEqual(t.parseUpdate(t.update(3, 'site-a')), { round: 3, agent: 'site-a' });
  assert.deepEqual(t.parseAck(t.ack(12, 'b')), { round: 12, agent: 'b' });
  assert.deepEqual(t.parseModelChunk(t.modelChunk(4, 17)), { version: 4, seq: 17 });
  assert.deepEqual(t.parseStatus(t.status('site-c')), { agent: 'site-c' });
  assert.deepEqual(t.parseCommand(t.command('pause')), { verb: 'pause' });
  for (const bad of [
    'fl/usb/round/x/update/a',
    'fl/usb/round/01/update/a',
    'fl/other/round/1/update/a',
    'fl/usb/round/1/update/a/b',
    'fl/usb/round/1/update/$x',
  ]) {
    assert.equal(t.parseUpdate(bad), null, bad);
  }
  assert.equal(t.parseModelChunk('fl/usb/model/latest'), null);
  assert.throws(() => createTopics('fl/#'), /invalid topic root/);
});

test('MQTT wildcard matching follows MQTT 3.1.1 §4.7', () => {
  assert.ok(topicMatches('a/+/c', 'a/b/c'));
  assert.ok(!topicMatches('a/+/c', 'a/b/d'));
  assert.ok(topicMatches('a/#', 'a'));
  assert.ok(topicMatches('a/#', 'a/b/c'));
  assert.ok(!topicMatches('a/+', 'a/b/c'));
  assert.ok(topicMatches('fl/usb/round/+/update/+', 'fl/usb/round/1/update/x'));
  assert.ok(topicMatches('#', 'a/b') && topicMatches('+/+', 'a/b') && topicMatches('+', 'a'));
  assert.ok(!topicMatches('a/b', 'a/b/c') && !topicMatches('a/b/c', 'a/b') && !topicMatches('+/b', 'a/c'));
  assert.ok(topicMatches('a/+/#', 'a/b') && topicMatches('a/+/#', 'a/b/c/d') && !topicMatches('a/+/#', 'a'));
  // '+' matches an empty level too (§4.7.1.3): 'a//c' has three levels.
  assert.ok(topicMatches('a/+/c', 'a//c') && topicMatches('+/b', '/b'));
});

test('MQTT 3.1.1 §4.7.2: a filter starting with a wildcard does not match a topic starting with "$"', () => {
  assert.ok(!topicMatches('#', '$SYS/broker/uptime'));
  assert.ok(!topicMatches('+/broker/uptime', '$SYS/broker/uptime'));
  assert.ok(!topicMatches('+', '$x'));
  assert.ok(topicMatches('$SYS/#', '$SYS/broker/uptime'), 'a filter naming the $ level does match');
  assert.ok(topicMatches('$SYS/+/uptime', '$SYS/broker/uptime'));
  assert.ok(topicMatches('a/#', 'a/$b') && topicMatches('a/+', 'a/$b'), 'only a leading $ is special');
});

test('identifiers that would break topics are invalid', () => {
  for (const ok of ['site-a', 'A1', 'client_3', 'x.y']) assert.ok(isValidId(ok), ok);
  for (const bad of ['', 'a/b', 'a+b', '#', '-lead', 'x'.repeat(65), '$SYS']) assert.ok(!isValidId(bad), bad);
});
