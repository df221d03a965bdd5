// Renders /api/openapi.json as a readable page: every operation with its parameters, body and
// answers. Text only; nothing from the document is treated as HTML.

import { el } from './ui.js';

const root = document.getElementById('root');

function resolve(doc, schema) {
  if (schema && schema.$ref) return resolve(doc, schema.$ref.split('/').slice(1).reduce((o, k) => o[k], doc));
  return schema;
}

function schemaText(doc, schema, depth = 0) {
  schema = resolve(doc, schema);
  if (!schema) return '';
  if (schema.type === 'object' && schema.properties) {
    const req = new Set(schema.required || []);
    const pad = '  '.repeat(depth + 1);
    const fields = Object.entries(schema.properties)
      .map(([k, v]) => `${pad}${k}${req.has(k) ? '' : '?'}: ${schemaText(doc, v, depth + 1)}`);
    return `{\n${fields.join('\n')}\n${'  '.repeat(depth)}}`;
  }
  if (schema.type === 'array') return `[${schemaText(doc, schema.items, depth)}]`;
  return schema.enum ? schema.enum.map((e) => JSON.stringify(e)).join(' | ') : (schema.type || 'any');
}

const doc = await (await fetch('/api/openapi.json')).json();
const parts = [el('section', { class: 'card' }, el('h2', {}, `${doc.info.title} ${doc.info.version}`), el('p', {}, doc.info.description))];
for (const [path, ops] of Object.entries(doc.paths)) {
  for (const [method, op] of Object.entries(ops)) {
    const body = op.requestBody?.content?.['application/json']?.schema;
    parts.push(el('section', { class: 'card' },
      el('h2', {}, el('code', {}, `${method.toUpperCase()} /api${path}`)),
      el('p', {}, op.summary || ''),
      op.description ? el('p', { class: 'hint' }, op.description) : null,
      body ? el('pre', { class: 'mono' }, schemaText(doc, body)) : null,
      el('table', {}, el('tbody', {}, Object.entries(op.responses).map(([code, r]) =>
        el('tr', {}, el('td', { class: 'mono' }, code), el('td', {}, r.description)))))));
  }
}
root.replaceChildren(...parts);
