// Live chat end to end in headless Chromium. A customer's page on another origin embeds the widget;
// a visitor starts a chat; an agent accepts it in the console; they write both ways; the agent
// transfers it to a second agent, who ends it; the transcript shows every message once, in order.
// Then, with nobody online, a visitor leaves an offline message that an agent reads.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startParley, launchBrowser, watchedPage, screenshot, startCustomerSite, apiClient } from './harness.mjs';

let parley;
let chrome;
let shop;
let tenant;
const agents = {};

before(async () => {
  parley = await startParley();
  chrome = await launchBrowser();
  shop = await startCustomerSite(parley.base);
  tenant = parley.createTenant('Acme Bank', 'admin@acme.test', [shop.url]);
  shop.setSiteKey(tenant.site_key);
  const admin = await apiClient(parley.base, tenant.slug, 'admin@acme.test', tenant.one_time_password);
  await admin('POST', '/auth/password', { current_password: tenant.one_time_password, new_password: 'Sturdy-Horse-2026!' });
  const support = await admin('POST', '/departments', { name: 'Support' });
  for (const [key, name] of [['alice', 'Alice Agent'], ['bob', 'Bob Agent']]) {
    const created = await admin('POST', '/users', { email: `${key}@acme.test`, display_name: name, role: 'agent', department_ids: [support.id], capacity: 2 });
    agents[key] = { email: `${key}@acme.test`, otp: created.one_time_password, name };
  }
});

after(async () => {
  await chrome?.close();
  await shop?.stop();
  await parley?.stop();
});

async function consoleFor(key) {
  const a = agents[key];
  const { page, problems } = await watchedPage(chrome.browser);
  await page.goto(parley.base + '/console');
  await page.getByLabel('Workspace').fill(tenant.slug);
  await page.getByLabel('Email').fill(a.email);
  await page.getByLabel('Password').fill(a.otp);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByLabel('Current (one-time) password').fill(a.otp);
  await page.getByLabel('New password', { exact: true }).fill('Quiet-River-2026!');
  await page.getByLabel('New password again').fill('Quiet-River-2026!');
  await page.getByRole('button', { name: 'Set password' }).click();
  await page.locator('#welcome').waitFor();
  a.password = 'Quiet-River-2026!';
  return { page, problems };
}

async function goOnline(page) {
  await page.getByLabel('Your status').selectOption('online');
  await page.locator('#my-chats').getByText('Waiting for chats…').waitFor();
}

test('a visitor chats with an agent, is transferred, and the transcript is whole', async () => {
  const alice = await consoleFor('alice');
  const bob = await consoleFor('bob');
  await goOnline(alice.page);

  const visitor = await watchedPage(chrome.browser);
  await visitor.page.goto(shop.url);
  await visitor.page.getByRole('button', { name: 'Chat with us' }).click();
  const widget = visitor.page.frameLocator('iframe[title="Chat"]');
  await widget.getByLabel('Your name').fill('Vera Visitor');
  await widget.getByLabel('How can we help? (optional)').fill('My card is blocked');
  await widget.getByRole('button', { name: 'Start chat' }).click();
  await widget.locator('#chat-status').waitFor();

  // Alice is offered the chat with the visitor's answers, and accepts.
  await alice.page.locator('#offers').getByText('Vera Visitor').waitFor();
  await alice.page.locator('#offers').getByRole('button', { name: 'Accept' }).click();
  await alice.page.locator('#chat-title').getByText('Vera Visitor').waitFor();
  await alice.page.locator('#log').getByText('My card is blocked').waitFor();
  await widget.getByText('Alice Agent joined the chat').waitFor();

  await widget.getByLabel('Your message').fill('Hello, is anyone there?');
  await widget.getByRole('button', { name: 'Send' }).click();
  await widget.locator('.msg.mine', { hasText: 'Hello, is anyone there?' }).getByText('Sent').waitFor();
  await alice.page.locator('#log').getByText('Hello, is anyone there?').waitFor();
  await alice.page.getByLabel('Your reply').fill('Hi Vera, Alice here. Let me look.');
  await alice.page.getByRole('button', { name: 'Send' }).click();
  await widget.getByText('Hi Vera, Alice here. Let me look.').waitFor();
  await screenshot(alice.page, 'console-chat');
  await screenshot(visitor.page, 'widget-chat');

  // Bob comes online; Alice transfers the chat to him with a note.
  await goOnline(bob.page);
  await alice.page.reload();
  await alice.page.locator('#my-chats').getByRole('button', { name: /Vera Visitor/ }).click();
  await alice.page.getByLabel('Transfer to').selectOption({ label: 'Bob Agent (online)' });
  await alice.page.getByLabel('Note for the next agent').fill('Card blocked since Monday');
  await alice.page.getByRole('button', { name: 'Transfer' }).click();
  await bob.page.locator('#my-chats').getByRole('button', { name: /Vera Visitor/ }).click();
  await bob.page.locator('#log').getByText('Note: Card blocked since Monday').waitFor();
  await widget.getByText('You were transferred to Bob Agent').waitFor();
  assert.equal(await widget.getByText('Card blocked since Monday').count(), 0, 'the note is for agents only');

  await bob.page.getByLabel('Your reply').fill('Bob here: your card works again.');
  await bob.page.getByRole('button', { name: 'Send' }).click();
  await widget.getByText('Bob here: your card works again.').waitFor();
  await bob.page.getByRole('button', { name: 'End chat' }).click();
  await widget.getByText('Chat ended', { exact: true }).waitFor();
  await widget.getByRole('button', { name: 'Start a new chat' }).waitFor();

  // The transcript: every message once, in order.
  await bob.page.locator('#show-transcripts').click();
  await bob.page.getByRole('button', { name: /Vera Visitor/ }).click();
  await bob.page.locator('#log').getByText('Chat ended by the agent').waitFor();
  const messages = await bob.page.locator('#log .msg').allTextContents();
  assert.deepEqual(messages.map((m) => m.replace(/(Visitor|Alice Agent|Bob Agent)$/, '').trim()), [
    'My card is blocked',
    'Hello, is anyone there?',
    'Hi Vera, Alice here. Let me look.',
    'Bob here: your card works again.',
  ]);
  await screenshot(bob.page, 'console-transcript');
  for (const [who, p] of [['alice', alice], ['bob', bob], ['visitor', visitor]]) {
    assert.deepEqual(p.problems, [], `no console errors or CSP violations (${who})`);
  }
  await alice.page.getByLabel('Your status').selectOption('offline');
  await bob.page.getByLabel('Your status').selectOption('offline');
  await bob.page.locator('#my-chats').getByText('Go online to take chats.').waitFor();
});

test('with nobody online the visitor leaves a message that an agent reads', async () => {
  const visitor = await watchedPage(chrome.browser);
  await visitor.page.goto(shop.url);
  await visitor.page.getByRole('button', { name: 'Chat with us' }).click();
  const widget = visitor.page.frameLocator('iframe[title="Chat"]');
  await widget.getByText('Nobody is online right now').waitFor();
  await widget.getByLabel('Your name').fill('Otto Offline');
  await widget.getByLabel('Email').fill('otto@example.test');
  await widget.getByLabel('Message').fill('Please call me back about my loan.');
  await widget.getByRole('button', { name: 'Leave a message' }).click();
  await widget.locator('#offline-thanks').waitFor();
  await screenshot(visitor.page, 'widget-offline');

  const { page, problems } = await watchedPage(chrome.browser);
  await page.goto(parley.base + '/console');
  await page.getByLabel('Workspace').fill(tenant.slug);
  await page.getByLabel('Email').fill(agents.alice.email);
  await page.getByLabel('Password').fill(agents.alice.password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#show-offline').click();
  await page.getByText('Please call me back about my loan.').waitFor();
  await page.getByRole('button', { name: 'Mark answered' }).click();
  await page.getByText('Answered').waitFor();
  assert.deepEqual([...problems, ...visitor.problems], []);
});
