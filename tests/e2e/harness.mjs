// Starts a real Parley server (the binary from PARLEY_BIN) on a free loopback port with a fresh data
// directory, creates tenants with its CLI, and launches Debian's Chromium through playwright-core.

import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const BIN = process.env.PARLEY_BIN || new URL('../../target/debug/parley', import.meta.url).pathname;

export async function startParley() {
  const dir = mkdtempSync(join(tmpdir(), 'parley-e2e-'));
  const env = { ...process.env, PARLEY_DATA_DIR: dir, PARLEY_LOG: 'info' };
  delete env.PARLEY_DATABASE_URL;
  delete env.PARLEY_MASTER_KEY_FILE;
  const proc = spawn(BIN, ['serve', '--listen', '127.0.0.1:0'], { env, stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  const base = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('Parley did not start within 20 s:\n' + log)), 20000);
    proc.stderr.on('data', (chunk) => {
      log += chunk;
      const m = log.match(/listening on (http:\/\/127\.0\.0\.1:\d+)/);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    proc.on('exit', (code) => reject(new Error(`Parley exited with ${code}:\n${log}`)));
  });
  return {
    base,
    dir,
    createTenant(name, adminEmail, allowedOrigins = []) {
      const origins = allowedOrigins.flatMap((o) => ['--allowed-origin', o]);
      const out = execFileSync(BIN, ['tenant', 'create', '--name', name, '--admin-email', adminEmail, '--json', ...origins], {
        env: { ...env, PARLEY_LOG: 'warn' },
      });
      return JSON.parse(out.toString());
    },
    async stop() {
      proc.kill('SIGTERM');
      await new Promise((r) => (proc.exitCode !== null ? r() : proc.on('exit', r)));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export async function launchBrowser() {
  // Playwright gives every launch a fresh temporary profile directory of its own.
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  return {
    browser,
    async close() {
      await browser.close();
    },
  };
}

// A page that records console errors and uncaught exceptions (a CSP violation shows up here).
export async function watchedPage(browser) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const problems = [];
  // HTTP error answers the page expects (401 before sign-in, 422 for a refused form) are not problems.
  page.on('console', (m) => m.type() === 'error' && !m.text().startsWith('Failed to load resource') && problems.push(m.text()));
  page.on('pageerror', (e) => problems.push(String(e)));
  return { page, problems };
}

export async function screenshot(page, name) {
  const dir = process.env.PARLEY_SCREENSHOTS;
  if (!dir) return;
  mkdirSync(dir, { recursive: true });
  await page.screenshot({ path: join(dir, `${name}.png`), fullPage: true });
}

// A customer's website on another origin (localhost rather than 127.0.0.1) embedding the widget.
// The site key is set once the tenant exists (the tenant needs the site's origin first).
export async function startCustomerSite(parleyBase) {
  const { createServer } = await import('node:http');
  let siteKey = '';
  const server = createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(`<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Acme Shop</title></head>
<body><h1>Acme Shop</h1><p>Welcome to our shop.</p>
<script src="${parleyBase}/widget.js" data-site="${siteKey}" async></script></body></html>`);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://localhost:${server.address().port}`,
    setSiteKey(key) { siteKey = key; },
    stop: () => new Promise((r) => server.close(r)),
  };
}

// Sign a user in through the API (no browser) and return a small authenticated client.
export async function apiClient(base, workspace, email, password) {
  const r = await fetch(`${base}/api/auth/sign-in`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ workspace, email, password }),
  });
  if (!r.ok) throw new Error(`sign-in failed: ${r.status} ${await r.text()}`);
  const cookie = r.headers.get('set-cookie').split(';')[0];
  const { csrf_token: csrf } = await r.json();
  return async (method, path, body) => {
    const res = await fetch(`${base}/api${path}`, {
      method, headers: { cookie, 'x-csrf-token': csrf, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = res.status === 204 ? null : await res.json();
    if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(data)}`);
    return data;
  };
}
