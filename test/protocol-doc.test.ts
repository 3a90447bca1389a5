import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ErrorCodes } from '../shared/protocol/errors.js';
import { agentStatusSchema, roundAnnouncementSchema } from '../shared/protocol/messages.js';
import { REPO_ROOT } from './helpers.js';

const doc = readFileSync(join(REPO_ROOT, 'docs', 'protocol.md'), 'utf8');

test('docs/protocol.md: its JSON examples satisfy the schemas', () => {
  const examples = [...doc.matchAll(/```json\n([\s\S]*?)\n```/g)].map((m) => JSON.parse(m[1]!) as Record<string, unknown>);
  assert.ok(examples.length >= 1);
  for (const e of examples) if ('agent' in e && 'state' in e) assert.ok(agentStatusSchema.safeParse(e).success, JSON.stringify(e));
});

test('docs/protocol.md: every error code and every round announcement field is documented', () => {
  for (const code of Object.values(ErrorCodes)) assert.ok(doc.includes(`\`${code}\``), `${code} is documented`);
  for (const field of Object.keys(roundAnnouncementSchema.shape))
    assert.ok(doc.includes(`| \`${field}\` |`), `round announcement field ${field} is documented`);
});
