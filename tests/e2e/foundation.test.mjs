// The foundation end to end in headless Chromium: the site administrator signs in with the
// one-time password from `parley tenant create`, sets a new password, creates a department and an
// agent; the agent signs in to the console with their own one-time password and sees their
// department.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startParley, launchBrowser, watchedPage, screenshot } from './harness.mjs';

let parley;
let chrome;

before(async () => {
  parley = await startParley();
  chrome = await launchBrowser();
});

after(async () => {
  await chrome?.close();
  await parley?.stop();
});

async function signInWithOneTimePassword(page, url, workspace, email, oneTime, newPassword) {
  await page.goto(url);
  await page.getByLabel('Workspace').fill(workspace);
  await page.getByLabel('Email').fill(email);
  await page.getByLabel('Password').fill(oneTime);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Choose a new password' }).waitFor();
  await page.getByLabel('Current (one-time) password').fill(oneTime);
  await page.getByLabel('New password', { exact: true }).fill(newPassword);
  await page.getByLabel('New password again').fill(newPassword);
  await page.getByRole('button', { name: 'Set password' }).click();
}

test('site administrator creates a department and an agent, who signs in to the console', async () => {
  const tenant = parley.createTenant('Acme Bank', 'admin@acme.test');
  const { page, problems } = await watchedPage(chrome.browser);

  // A wrong password is refused with a clear message.
  await page.goto(parley.base + '/admin');
  await page.getByLabel('Workspace').fill(tenant.slug);
  await page.getByLabel('Email').fill('admin@acme.test');
  await page.getByLabel('Password').fill('wrong password');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByText('the workspace, email or password is not right').waitFor();

  await signInWithOneTimePassword(page, parley.base + '/admin', tenant.slug, 'admin@acme.test',
    tenant.one_time_password, 'Sturdy-Horse-2026!');
  await page.getByRole('tab', { name: 'Site' }).waitFor();
  await page.getByRole('tab', { name: 'Audit trail' }).waitFor();

  await page.getByRole('tab', { name: 'Departments' }).click();
  await page.getByLabel('Name').fill('Sales');
  await page.getByRole('button', { name: 'Create department' }).click();
  await page.getByRole('cell', { name: 'Sales', exact: true }).waitFor();

  await page.getByRole('tab', { name: 'Users' }).click();
  await page.getByLabel('Email').fill('agent.smith@acme.test');
  await page.getByLabel('Display name').fill('Agent Smith');
  await page.getByLabel('Role').selectOption('agent');
  await page.getByLabel('Departments').selectOption({ label: 'Sales' });
  await page.getByLabel('Chat capacity').fill('4');
  await page.getByRole('button', { name: 'Create user' }).click();
  const otp = (await page.locator('#one-time-password').textContent()).trim();
  assert.match(otp, /^[A-Za-z2-9]{5}(-[A-Za-z2-9]{5}){3}$/);
  await page.getByRole('cell', { name: /^Agent Smith agent.smith@acme.test/ }).waitFor();
  await screenshot(page, 'admin-users');

  await page.getByRole('tab', { name: 'Audit trail' }).click();
  await page.getByRole('cell', { name: 'department.created' }).waitFor();
  await screenshot(page, 'admin-audit');
  assert.deepEqual(problems, [], 'no console errors or CSP violations in the admin panel');

  // The agent, in a separate browser context (own cookies), signs in to the console.
  const agent = await watchedPage(chrome.browser);
  await signInWithOneTimePassword(agent.page, parley.base + '/console', tenant.slug, 'agent.smith@acme.test', otp,
    'Quiet-River-2026!');
  await agent.page.locator('#welcome').getByText('Signed in as Agent Smith').waitFor();
  assert.equal((await agent.page.locator('#my-role').textContent()).trim(), 'Agent');
  assert.equal((await agent.page.locator('#my-departments').textContent()).trim(), 'Sales');
  await screenshot(agent.page, 'console-agent');
  assert.deepEqual(agent.problems, [], 'no console errors or CSP violations in the console');

  // Signing out returns to the sign-in form; the session is gone.
  await agent.page.getByRole('button', { name: 'Sign out' }).click();
  await agent.page.getByRole('heading', { name: 'Sign in to Parley' }).waitFor();
  const status = await agent.page.evaluate(async () => (await fetch('/api/auth/session')).status);
  assert.equal(status, 401);
});
