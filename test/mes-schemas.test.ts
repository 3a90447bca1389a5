import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { conditionHolds, extractPayloadValue, parseJsonPath } from '../edge-agent/triggers/condition.js';
import { commandSchema, commandVerbs, eventSchemas, releasedManifestSchema, verdictSchema } from '../shared/protocol/mes.js';
import { agentStatusSchema, modelManifestSchema } from '../shared/protocol/messages.js';
import { REPO_ROOT } from './helpers.js';

const topicsDoc = readFileSync(join(REPO_ROOT, 'docs', 'topics.md'), 'utf8');
const protocolDoc = readFileSync(join(REPO_ROOT, 'docs', 'protocol.md'), 'utf8');
const examples = [...topicsDoc.matchAll(/```json ([\w:-]+)\n([\s\S]*?)\n```/g)].map((m) => ({
  tag: m[1]!,
  text: m[2]!,
  value: JSON.parse(m[2]!) as Record<string, unknown>,
}));

test('docs/topics.md: every example payload satisfies its schema (strict for what fedline publishes)', () => {
  assert.ok(examples.length >= 15);
  for (const e of examples) {
    const [kind, name] = e.tag.split(':');
    let schema;
    if (kind === 'event') schema = eventSchemas[name as keyof typeof eventSchemas];
    else if (kind === 'command') schema = commandSchema;
    else if (kind === 'status') schema = agentStatusSchema;
    else if (kind === 'manifest') schema = modelManifestSchema;
    else if (kind === 'verdict') schema = verdictSchema;
    else if (kind === 'released') schema = releasedManifestSchema;
    else if (kind === 'line-state') continue;
    assert.ok(schema, `a schema for example "${e.tag}"`);
    const r = schema.safeParse(e.value);
    assert.ok(r.success, `${e.tag}: ${r.success ? '' : r.error.message}\n${e.text}`);
    if (kind === 'event') assert.equal(e.value.type, name, `${e.tag}: its type field`);
  }
  // A wrong field is caught (the check above can fail).
  const started = examples.find((e) => e.tag === 'event:round-started')!.value;
  assert.ok(!eventSchemas['round-started'].safeParse({ ...started, round: 'three' }).success);
  assert.ok(!eventSchemas['round-started'].safeParse({ ...started, surprise: 1 }).success, 'events are strict: undocumented fields are caught');
});

test('docs/topics.md documents every event type and every command, with an example each', () => {
  for (const type of Object.keys(eventSchemas)) {
    assert.ok(
      examples.some((e) => e.tag === `event:${type}`),
      `example of event ${type}`,
    );
    assert.ok(topicsDoc.includes(`### ${type}`), `section for event ${type}`);
    assert.ok(protocolDoc.includes(`\`${type}\``), `docs/protocol.md names event ${type} too`);
  }
  for (const verb of commandVerbs) {
    assert.ok(
      examples.some((e) => e.tag === `command:${verb}`),
      `example of command ${verb}`,
    );
    assert.ok(topicsDoc.includes(`| \`${verb}\` |`), `table row for command ${verb}`);
  }
  for (const tag of ['status', 'manifest', 'released', 'verdict', 'line-state'])
    assert.ok(
      examples.some((e) => e.tag === tag),
      `example of ${tag}`,
    );
  for (const topic of [
    '<root>/events/<type>',
    '<root>/events/<type>/<agent>',
    '<root>/cmd/<verb>',
    '<root>/agent/<agent>/status',
    '<root>/model/latest',
    '<root>/model/released',
    '<root>/inspection/<agent>/verdict',
  ]) {
    assert.ok(topicsDoc.includes(`\`${topic}`), `topic ${topic} documented`);
  }
  for (const field of Object.keys(agentStatusSchema.shape)) assert.ok(topicsDoc.includes(`"${field}"`), `status field ${field} in the example`);
});

test("docs/topics.md: the line-state example opens the window it says it opens (the MQTT trigger's own code)", () => {
  const e = examples.find((x) => x.tag === 'line-state')!;
  const got = extractPayloadValue(Buffer.from(e.text), parseJsonPath('$.state'));
  assert.deepEqual(got, { value: 'Idle' });
  assert.ok(conditionHolds({ in: ['Idle', 'Maintenance'] }, (got as { value: string }).value));
});
