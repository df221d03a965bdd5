// The visitor's chat, inside the widget iframe on Parley's origin. It keeps the visitor token in
// this origin's storage, talks to the widget API with it, and uses one WebSocket for live events.
// Every message shows its state: sending, sent (durably stored: the server acknowledged it with
// its seq), or failed with a retry. After any reconnect it resumes from the last seq it applied
// and re-sends unacknowledged messages with the same client id, so nothing is lost or doubled.

import { clientMsgId, el } from './ui.js';

const app = document.getElementById('app');
const site = new URLSearchParams(location.search).get('site') || '';
const storeKey = 'parley.visitor.' + site;
const parentOrigin = (location.ancestorOrigins && location.ancestorOrigins[0]) ||
  (document.referrer ? new URL(document.referrer).origin : null);

let token = null;
let session = null;
let conv = null;
let lastSeq = 0;
let ws = null;
let wsReady = false;
let backoff = 500;
let heartbeat = null;
let ended = false;
const pending = new Map(); // client_msg_id -> { body, node, timer }
let log; let statusLine; let typingLine; let composer; let headerTitle;

function toParent(message) {
  if (parentOrigin && window.parent !== window) window.parent.postMessage(message, parentOrigin);
}

async function call(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (token) headers.Authorization = 'Bearer ' + token;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch('/api/widget' + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await res.json().catch(() => null);
  if (!res.ok) {
    const err = new Error(data?.message ?? `request failed (${res.status})`);
    err.code = data?.code;
    err.status = res.status;
    throw err;
  }
  return data;
}

function header(title) {
  headerTitle = el('h1', {}, title);
  return el('header', {}, headerTitle, el('button', { type: 'button', onclick: () => toParent({ type: 'parley:close' }), 'aria-label': 'Close chat' }, 'Close'));
}

// Storage in a third-party iframe may be partitioned or refused: keep the token in our own
// storage when allowed, and in the embedding site's storage (through the loader) as well.
function ownStorage(action, value) {
  try {
    if (action === 'get') return localStorage.getItem(storeKey);
    localStorage.setItem(storeKey, value);
  } catch (e) {
    return null;
  }
  return null;
}

function tokenFromParent() {
  if (!parentOrigin || window.parent === window) return Promise.resolve(null);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(null), 1000);
    window.addEventListener('message', function once(event) {
      if (event.source !== window.parent || event.origin !== parentOrigin || event.data?.type !== 'parley:token') return;
      window.removeEventListener('message', once);
      clearTimeout(timer);
      resolve(typeof event.data.token === 'string' ? event.data.token : null);
    });
    window.parent.postMessage({ type: 'parley:token?' }, parentOrigin);
  });
}

async function boot() {
  token = ownStorage('get') || await tokenFromParent();
  try {
    session = await call('POST', '/session', { site_key: site, visitor_token: token || undefined });
  } catch (err) {
    app.replaceChildren(header('Chat'), el('p', { class: 'pad error', role: 'alert' },
      err.status === 404 ? 'This chat is not available.' : err.message));
    return;
  }
  token = session.visitor_token;
  ownStorage('set', token);
  toParent({ type: 'parley:store', token });
  if (session.conversation && session.conversation.status !== 'ended') chat(session.conversation);
  else startForm();
}

function startForm(notice) {
  const depts = session.departments;
  const error = el('p', { class: 'error', role: 'alert' });
  const select = el('select', { id: 'department', name: 'department' }, depts.map((d) => el('option', { value: d.id }, d.name + (d.online ? '' : ' (offline)'))));
  const fields = el('div');
  const form = el('form', { class: 'form', novalidate: true });
  const inputs = {};
  function render() {
    const d = depts.find((x) => x.id === select.value) || depts[0];
    const nodes = [];
    if (!d) {
      fields.replaceChildren(el('p', {}, 'Chat is not set up yet.'));
      return;
    }
    if (!d.online) {
      nodes.push(el('p', { class: 'hint' }, 'Nobody is online right now. Leave a message and we will get back to you.'));
      for (const [key, label, type] of [['name', 'Your name', 'text'], ['email', 'Email', 'email']]) {
        inputs[key] = el('input', { id: 'f-' + key, name: key, type, required: true, autocomplete: key === 'name' ? 'name' : 'email' });
        nodes.push(el('label', { for: 'f-' + key }, label), inputs[key]);
      }
      inputs.message = el('textarea', { id: 'f-message', name: 'message', rows: 4, required: true, maxlength: 4000 });
      nodes.push(el('label', { for: 'f-message' }, 'Message'), inputs.message);
      nodes.push(el('div', { class: 'actions' }, el('button', { type: 'submit', class: 'primary' }, 'Leave a message')));
    } else {
      const f = d.prechat_fields;
      for (const [key, label, type] of [['name', 'Your name', 'text'], ['email', 'Email', 'email'], ['question', 'How can we help?', 'textarea']]) {
        if (f[key] === 'hidden') continue;
        const req = f[key] === 'required';
        inputs[key] = type === 'textarea'
          ? el('textarea', { id: 'f-' + key, name: key, rows: 3, required: req, maxlength: 4000 })
          : el('input', { id: 'f-' + key, name: key, type, required: req, autocomplete: key === 'name' ? 'name' : 'email' });
        nodes.push(el('label', { for: 'f-' + key }, label + (req ? '' : ' (optional)')), inputs[key]);
      }
      nodes.push(el('div', { class: 'actions' }, el('button', { type: 'submit', class: 'primary' }, 'Start chat')));
    }
    fields.replaceChildren(...nodes);
  }
  select.addEventListener('change', render);
  form.append(
    notice ? el('p', { class: 'hint', role: 'status' }, notice) : '',
    depts.length > 1 ? el('label', { for: 'department' }, 'Department') : '',
    depts.length > 1 ? select : '',
    fields, error);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    error.textContent = '';
    const d = depts.find((x) => x.id === select.value) || depts[0];
    const value = (k) => (inputs[k] && inputs[k].value.trim()) || undefined;
    const button = form.querySelector('button[type=submit]');
    button.disabled = true;
    try {
      if (!d.online) {
        await call('POST', '/offline-messages', { department_id: d.id, name: value('name') || '', email: value('email') || '', message: value('message') || '' });
        app.replaceChildren(header(session.site_name), el('p', { class: 'pad', role: 'status', id: 'offline-thanks' }, 'Thank you! Your message was sent. We will answer by email.'));
        return;
      }
      const c = await call('POST', '/conversations', { department_id: d.id, name: value('name'), email: value('email'), question: value('question') });
      chat(c);
    } catch (err) {
      if (err.code === 'no_agent_online') {
        d.online = false;
        render();
      }
      error.textContent = err.message;
      button.disabled = false;
    }
  });
  app.replaceChildren(header(session.site_name), form);
  render();
}

function chat(c) {
  conv = c;
  lastSeq = 0;
  ended = false;
  log = el('div', { class: 'log', id: 'log', role: 'log', 'aria-label': 'Messages' });
  statusLine = el('div', { class: 'status', id: 'chat-status', role: 'status' }, 'Connecting…');
  typingLine = el('div', { class: 'typing', 'aria-live': 'polite' });
  const input = el('textarea', { id: 'message', name: 'message', 'aria-label': 'Your message', maxlength: 4000, placeholder: 'Write a message…' });
  let typingSent = false;
  input.addEventListener('input', () => {
    const on = input.value.length > 0;
    if (on !== typingSent) {
      typingSent = on;
      sendFrame({ type: 'typing', conversation_id: conv.id, on });
    }
  });
  input.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey) {
      ev.preventDefault();
      composer.requestSubmit();
    }
  });
  composer = el('form', { class: 'composer' }, input, el('button', { type: 'submit', class: 'primary' }, 'Send'));
  composer.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const body = input.value.trim();
    if (!body || ended) return;
    input.value = '';
    typingSent = false;
    sendMessage(body);
  });
  const endButton = el('button', { type: 'button', id: 'end-chat', onclick: endChat }, 'End chat');
  const head = header(session.site_name);
  head.insertBefore(endButton, head.lastChild);
  app.replaceChildren(head, statusLine, log, typingLine, composer);
  connect();
}

function sendFrame(frame) {
  if (ws && wsReady) ws.send(JSON.stringify(frame));
}

function sendMessage(body, id = clientMsgId()) {
  let entry = pending.get(id);
  if (!entry) {
    const node = el('div', { class: 'msg mine', 'data-client-id': id }, body, el('span', { class: 'meta' }, 'Sending…'));
    log.append(node);
    log.scrollTop = log.scrollHeight;
    entry = { body, node };
    pending.set(id, entry);
  }
  setState(entry, 'Sending…');
  clearTimeout(entry.timer);
  entry.timer = setTimeout(() => failed(id, 'Not sent yet.'), 10000);
  sendFrame({ type: 'send', conversation_id: conv.id, client_msg_id: id, body });
}

function setState(entry, text) {
  entry.node.classList.remove('failed');
  entry.node.querySelector('.meta').replaceChildren(text);
}

function failed(id, why) {
  const entry = pending.get(id);
  if (!entry) return;
  entry.node.classList.add('failed');
  entry.node.querySelector('.meta').replaceChildren(why, el('button', { type: 'button', onclick: () => sendMessage(entry.body, id) }, 'Retry'));
}

function agentName(e) {
  return e.agent_name || e.data?.agent_name || 'An agent';
}

function apply(e) {
  if (e.seq <= lastSeq) return; // already applied
  if (e.seq > lastSeq + 1) {
    sendFrame({ type: 'resume', conversation_id: conv.id, since: lastSeq }); // a gap: ask for it
    return;
  }
  lastSeq = e.seq;
  if (e.kind === 'message') {
    const entry = e.client_msg_id && pending.get(e.client_msg_id);
    if (e.author === 'visitor' && entry) {
      clearTimeout(entry.timer);
      setState(entry, 'Sent');
      pending.delete(e.client_msg_id);
    } else if (e.author === 'visitor') {
      log.append(el('div', { class: 'msg mine' }, e.body, el('span', { class: 'meta' }, 'Sent')));
    } else {
      log.append(el('div', { class: 'msg theirs' }, e.body, el('span', { class: 'meta' }, agentName(e))));
      typingLine.textContent = '';
    }
  } else if (e.kind === 'assigned') {
    headerTitle.textContent = agentName(e);
    statusLine.textContent = `You are chatting with ${agentName(e)}.`;
    log.append(el('div', { class: 'system' }, `${agentName(e)} joined the chat`));
  } else if (e.kind === 'transferred') {
    log.append(el('div', { class: 'system' }, e.data?.agent_name ? `You were transferred to ${e.data.agent_name}` : 'You were transferred; please wait for the next agent'));
    if (e.data?.agent_name) headerTitle.textContent = e.data.agent_name;
  } else if (e.kind === 'requeued') {
    statusLine.textContent = 'Waiting for the next available agent…';
  } else if (e.kind === 'ended') {
    ended = true;
    statusLine.textContent = 'The chat has ended. The transcript stays above.';
    log.append(el('div', { class: 'system' }, 'Chat ended'));
    composer.replaceChildren(el('button', { type: 'button', class: 'primary', id: 'new-chat', onclick: () => { ws?.close(); startForm(); } }, 'Start a new chat'));
    document.getElementById('end-chat')?.remove();
  }
  log.scrollTop = log.scrollHeight;
}

async function connect() {
  if (ended) return;
  let ticket;
  try {
    ticket = (await call('POST', '/ticket')).ticket;
  } catch (err) {
    statusLine.textContent = 'Offline. Reconnecting…';
    setTimeout(connect, backoff = Math.min(backoff * 2, 10000));
    return;
  }
  ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws');
  wsReady = false;
  ws.onopen = () => ws.send(JSON.stringify({ type: 'hello', ticket }));
  ws.onmessage = (m) => {
    const f = JSON.parse(m.data);
    if (f.type === 'ready') {
      wsReady = true;
      backoff = 500;
      ws.send(JSON.stringify({ type: 'resume', conversation_id: conv.id, since: lastSeq }));
      clearInterval(heartbeat);
      heartbeat = setInterval(() => sendFrame({ type: 'ping' }), 20000);
    } else if (f.type === 'resumed') {
      f.events.forEach(apply);
      if (!ended && statusLine.textContent === 'Connecting…') statusLine.textContent = 'Waiting for an agent…';
      for (const [id, entry] of pending) sendMessage(entry.body, id); // unacknowledged: same id again
    } else if (f.type === 'event') {
      apply(f);
    } else if (f.type === 'ack') {
      const entry = pending.get(f.client_msg_id);
      if (entry) {
        clearTimeout(entry.timer);
        setState(entry, 'Sent');
      }
    } else if (f.type === 'nack') {
      failed(f.client_msg_id, f.message);
    } else if (f.type === 'queue') {
      statusLine.textContent = `You are number ${f.position} in the queue (about ${Math.max(1, Math.round(f.estimated_wait_secs / 60))} min).`;
    } else if (f.type === 'typing' && f.who === 'agent') {
      typingLine.textContent = f.on ? 'The agent is typing…' : '';
    }
  };
  ws.onclose = () => {
    wsReady = false;
    clearInterval(heartbeat);
    if (!ended) {
      statusLine.textContent = 'Connection lost. Reconnecting…';
      setTimeout(connect, backoff = Math.min(backoff * 2, 10000));
    }
  };
}

async function endChat() {
  try {
    await call('POST', `/conversations/${conv.id}/end`);
  } catch (err) {
    statusLine.textContent = err.message;
  }
}

window.addEventListener('message', (event) => {
  if (event.source !== window.parent || event.origin !== parentOrigin) return;
  if (event.data?.type === 'parley:opened') document.querySelector('textarea, input, select')?.focus();
});

boot();
