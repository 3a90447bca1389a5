#!/usr/bin/env node
// Production code size at a glance: files over 400 lines and functions over 80 lines (the habits of
// docs/development.md), counted on the TypeScript AST. test/ is left out.
// usage: node scripts/code-size.mjs [DIR]   (default: the repository)
import ts from 'typescript';
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';

const root = process.argv[2] ?? new URL('..', import.meta.url).pathname;
const skip = new Set(['node_modules', 'dist', '.git', 'test']);
const files = [];
const walk = (dir) => {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (skip.has(e.name)) continue;
    const p = join(dir, e.name);
    if (e.isDirectory()) walk(p);
    else if (p.endsWith('.ts')) files.push(p);
  }
};
walk(root);
const functions = [];
const sizes = [];
for (const file of files) {
  const text = readFileSync(file, 'utf8');
  const name = relative(root, file);
  sizes.push([text.split('\n').length, name]);
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true);
  const visit = (node, owner) => {
    if (ts.isFunctionLike(node) && node.body) {
      const first = sf.getLineAndCharacterOfPosition(node.getStart()).line;
      const last = sf.getLineAndCharacterOfPosition(node.end).line;
      const parent = node.parent;
      const fn = node.name
        ? node.name.getText()
        : parent && (ts.isVariableDeclaration(parent) || ts.isPropertyDeclaration(parent))
          ? parent.name.getText()
          : '(anonymous)';
      functions.push([last - first + 1, `${name}:${first + 1} ${owner ? owner + '.' : ''}${fn}`]);
    }
    ts.forEachChild(node, (child) => visit(child, ts.isClassDeclaration(node) && node.name ? node.name.getText() : owner));
  };
  visit(sf, '');
}
sizes.sort((a, b) => b[0] - a[0]);
functions.sort((a, b) => b[0] - a[0]);
console.log('files over 400 lines:');
for (const [n, f] of sizes.filter(([n]) => n > 400)) console.log(`  ${n}  ${f}`);
console.log('functions over 80 lines:');
for (const [n, f] of functions.filter(([n]) => n > 80)) console.log(`  ${n}  ${f}`);
console.log(`production code: ${sizes.reduce((a, [n]) => a + n, 0)} lines in ${sizes.length} files`);
