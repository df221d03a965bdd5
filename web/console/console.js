// The agent console: status, offers, the queue, one's chats, transfers, past chats and offline
// messages. Live updates come over one WebSocket; every action goes through the REST API.

import { api } from './api.js';
import { clientMsgId, el, signIn, signOut, ROLE_NAMES } from './ui.js';

const root = document.getElementById('root');
let session = null;
let overview = null;
let departments = [];
let ws = null;
let wsReady = false;
let backoff = 500;
let current = null; // { id, readOnly, lastSeq, log, typing, pending }
const unread = new Set();
let refreshTimer = null;
let heartbeat = null;

signIn(root, start);

function deptName(id) {
  return departments.find((d) => d.id === id)?.name ?? '';
}

function visitorLabel(c) {
  return c.prechat?.name || c.prechat?.email || 'Visitor';
}

async function start(s) {
  session = s;
  departments = (await api('GET', '/departments')).departments;
  const status = el('select', { class: 'status', id: 'my-status', 'aria-label': 'Your status' },
    ['online', 'away', 'offline'].map((v) => el('option', { value: v }, v[0].toUpperCase() + v.slice(1))));
  status.addEventListener('change', async () => {
    await api('PUT', '/console/status', { status: status.value });
    refresh();
  });
  document.getElementById('who').replaceChildren(
    `${s.user.display_name} · ${s.site?.name ?? ''} `, status, ' ',
    el('button', { type: 'button', onclick: signOut }, 'Sign out'));
  await refresh();
  status.value = overview.status;
  connect();
}

function scheduleRefresh() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refresh, 150);
}

async function refresh() {
  overview = await api('GET', '/console/overview');
  render();
}

function item(c, actions, open) {
  const label = `${visitorLabel(c)} · ${deptName(c.department_id)}`;
  return el('li', { 'aria-current': current?.id === c.id ? 'true' : 'false' },
    open ? el('button', { type: 'button', class: 'link', onclick: () => openChat(c.id, open === 'watch') }, label) : el('span', {}, label),
    unread.has(c.id) ? el('span', { class: 'badge unread' }, 'new') : '',
    el('span', {}, ...actions));
}

function section(title, id, items, emptyText) {
  return el('section', { class: 'card', id }, el('h2', {}, title, el('span', { class: 'badge' }, String(items.length))),
    items.length ? el('ul', {}, items) : el('p', { class: 'hint' }, emptyText));
}

function act(label, fn, cls = '') {
  return el('button', { type: 'button', class: cls, onclick: async () => {
    try { await fn(); } catch (err) { alert(err.message); }
    refresh();
  } }, label);
}

function render() {
  const u = session.user;
  const side = el('div', { class: 'side' },
    el('section', { class: 'card' }, el('h2', { id: 'welcome' }, `Signed in as ${u.display_name}`),
      el('p', { class: 'hint' }, el('span', { class: 'badge', id: 'my-role' }, ROLE_NAMES[u.role]), ` Capacity ${overview.capacity} · `,
        session.departments.length ? el('span', { id: 'my-departments' }, session.departments.map((d) => d.name).join(', ')) : el('span', { id: 'my-departments' }, 'no department yet'))),
    section('Offered to you', 'offers', overview.offers.map((c) => item(c, [
      act('Accept', () => api('POST', `/console/conversations/${c.id}/accept`).then(() => openChat(c.id)), 'primary'),
      act('Reject', () => api('POST', `/console/conversations/${c.id}/reject`)),
    ])), 'No offers right now.'),
    section('My chats', 'my-chats', overview.chats.map((c) => item(c, [], 'open')), overview.status === 'online' ? 'Waiting for chats…' : 'Go online to take chats.'),
    section('Queue', 'queue', overview.queue.map((c) => item(c, [
      act('Accept', () => api('POST', `/console/conversations/${c.id}/accept`).then(() => openChat(c.id))),
    ])), 'Nobody is waiting.'),
    overview.live.length || session.permissions.includes('supervise_chats')
      ? section('Live chats (supervise)', 'live', overview.live.map((c) => item(c, [el('span', { class: 'hint' }, c.agent_name ?? '')], 'watch')), 'No live chats.')
      : '',
    el('section', { class: 'card' }, el('h2', {}, 'More'),
      el('ul', {},
        el('li', {}, el('button', { type: 'button', class: 'link', id: 'show-transcripts', onclick: showTranscripts }, 'Past chats')),
        el('li', {}, el('button', { type: 'button', class: 'link', id: 'show-offline', onclick: showOffline }, 'Offline messages')),
        session.permissions.includes('view_users') ? el('li', {}, el('a', { href: '/admin' }, 'Admin panel')) : '')));
  const pane = current?.pane ?? el('section', { class: 'card pane', id: 'pane' }, el('p', { class: 'empty' }, 'Pick a chat on the left.'));
  root.replaceChildren(el('div', { class: 'console' }, side, pane));
}

function sendFrame(f) {
  if (ws && wsReady) ws.send(JSON.stringify(f));
}

async function connect() {
  let ticket;
  try {
    ticket = (await api('POST', '/console/ticket')).ticket;
  } catch (err) {
    if (err.status === 401) return location.reload();
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
      if (current) sendFrame({ type: 'resume', conversation_id: current.id, since: current.lastSeq });
      clearInterval(heartbeat);
      heartbeat = setInterval(() => sendFrame({ type: 'ping' }), 20000);
    } else if (f.type === 'resumed' && current && f.conversation_id === current.id) {
      f.events.forEach(apply);
    } else if (f.type === 'event') {
      if (current && f.conversation_id === current.id) apply(f);
      else if (f.kind === 'message' && f.author === 'visitor') { unread.add(f.conversation_id); scheduleRefresh(); }
      if (['assigned', 'ended', 'transferred', 'requeued', 'connection'].includes(f.kind)) scheduleRefresh();
    } else if (f.type === 'ack' && current) {
      const p = current.pending.get(f.client_msg_id);
      if (p) p.querySelector('.meta').textContent = 'Sent';
    } else if (f.type === 'nack' && current) {
      const p = current.pending.get(f.client_msg_id);
      if (p) p.querySelector('.meta').textContent = `Not sent: ${f.message}`;
    } else if (f.type === 'typing' && current && f.conversation_id === current.id && f.who === 'visitor') {
      current.typing.textContent = f.on ? 'The visitor is typing…' : '';
    } else if (['offer', 'offer_withdrawn', 'chat_assigned', 'chat_closed', 'queue_changed', 'offline_message'].includes(f.type)) {
      scheduleRefresh();
    }
  };
  ws.onclose = () => {
    wsReady = false;
    setTimeout(connect, backoff = Math.min(backoff * 2, 10000));
  };
}

function apply(e) {
  if (!current || e.seq <= current.lastSeq) return;
  if (e.seq > current.lastSeq + 1) {
    sendFrame({ type: 'resume', conversation_id: current.id, since: current.lastSeq });
    return;
  }
  current.lastSeq = e.seq;
  const log = current.log;
  if (e.kind === 'message') {
    const mine = e.author === 'agent' && e.agent_id === session.user.id;
    const pending = e.client_msg_id && current.pending.get(e.client_msg_id);
    if (mine && pending) {
      pending.querySelector('.meta').textContent = 'Sent';
      current.pending.delete(e.client_msg_id);
    } else {
      log.append(el('div', { class: `msg ${e.author === 'visitor' ? 'theirs' : 'mine'}` }, e.body,
        el('span', { class: 'meta' }, e.author === 'visitor' ? 'Visitor' : (e.agent_name ?? 'Agent'))));
    }
    if (e.author === 'visitor') current.typing.textContent = '';
  } else if (e.kind === 'started') {
    log.append(el('div', { class: 'system' }, `Chat started · ${new Date(e.at).toLocaleString()}`));
  } else if (e.kind === 'assigned') {
    log.append(el('div', { class: 'system' }, `${e.data?.agent_name ?? 'An agent'} joined`));
  } else if (e.kind === 'transferred') {
    log.append(el('div', { class: 'system' }, `Transferred to ${e.data?.agent_name ?? deptName(e.data?.department_id)}`));
    if (e.body) log.append(el('div', { class: 'note' }, `Note: ${e.body}`));
  } else if (e.kind === 'connection') {
    const text = { weak: 'The visitor’s connection is weak', lost: 'The visitor’s connection was lost', restored: 'The visitor is back' };
    log.append(el('div', { class: 'system' }, text[e.data?.state] ?? 'Connection changed'));
  } else if (e.kind === 'requeued') {
    log.append(el('div', { class: 'system' }, 'Back in the queue'));
  } else if (e.kind === 'ended') {
    log.append(el('div', { class: 'system' }, `Chat ended by the ${e.data?.by ?? 'agent'}`));
    current.composer?.replaceChildren(el('p', { class: 'hint' }, 'This chat has ended.'));
    current.tools?.remove();
  }
  log.scrollTop = log.scrollHeight;
}

async function openChat(id, readOnly = false) {
  unread.delete(id);
  const { conversation: c, events } = await api('GET', `/conversations/${id}`);
  const log = el('div', { class: 'log', id: 'log', role: 'log', 'aria-label': 'Messages' });
  const typing = el('div', { class: 'typing', 'aria-live': 'polite' });
  const p = c.prechat ?? {};
  const head = el('div', { class: 'head' }, el('h2', { id: 'chat-title' }, visitorLabel(c)),
    el('p', { class: 'hint' }, [p.email, deptName(c.department_id), c.status].filter(Boolean).join(' · ')));
  const pane = el('section', { class: 'card pane', id: 'pane' }, head, log, typing);
  current = { id, readOnly, lastSeq: 0, log, typing, pending: new Map(), pane };
  const mine = c.status === 'assigned' && c.agent_id === session.user.id;
  if (mine && !readOnly) {
    const input = el('textarea', { id: 'reply', 'aria-label': 'Your reply', maxlength: 4000, placeholder: 'Write a reply…' });
    let typingSent = false;
    input.addEventListener('input', () => {
      const on = input.value.length > 0;
      if (on !== typingSent) { typingSent = on; sendFrame({ type: 'typing', conversation_id: id, on }); }
    });
    input.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && !ev.shiftKey) { ev.preventDefault(); composer.requestSubmit(); }
    });
    const composer = el('form', { class: 'composer' }, input, el('button', { type: 'submit', class: 'primary' }, 'Send'));
    composer.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const body = input.value.trim();
      if (!body) return;
      input.value = '';
      typingSent = false;
      const clientId = clientMsgId();
      const node = el('div', { class: 'msg mine' }, body, el('span', { class: 'meta' }, 'Sending…'));
      current.pending.set(clientId, node);
      log.append(node);
      log.scrollTop = log.scrollHeight;
      if (wsReady) sendFrame({ type: 'send', conversation_id: id, client_msg_id: clientId, body });
      else api('POST', `/console/conversations/${id}/messages`, { client_msg_id: clientId, body })
        .then(() => { node.querySelector('.meta').textContent = 'Sent'; })
        .catch((err) => { node.querySelector('.meta').textContent = `Not sent: ${err.message}`; });
    });
    const target = el('select', { id: 'transfer-target', 'aria-label': 'Transfer to' },
      el('option', { value: '' }, 'Transfer to…'),
      overview.agents.map((a) => el('option', { value: 'agent:' + a.id }, `${a.name} (${a.status})`)),
      departments.map((d) => el('option', { value: 'department:' + d.id }, `${d.name} queue`)));
    const note = el('input', { id: 'transfer-note', 'aria-label': 'Note for the next agent', placeholder: 'Note for the next agent' });
    const tools = el('div', { class: 'tools' }, target, note,
      act('Transfer', async () => {
        if (!target.value) throw new Error('Choose an agent or a department.');
        const [kind, tid] = target.value.split(':');
        await api('POST', `/console/conversations/${id}/transfer`, { [kind === 'agent' ? 'agent_id' : 'department_id']: tid, note: note.value || undefined });
        current = null;
      }),
      act('End chat', async () => { await api('POST', `/console/conversations/${id}/end`); }, 'danger'));
    current.composer = composer;
    current.tools = tools;
    pane.append(composer, tools);
  }
  events.forEach(apply);
  render();
  log.scrollTop = log.scrollHeight;
  sendFrame({ type: 'resume', conversation_id: id, since: current.lastSeq });
}

async function showTranscripts() {
  current = null;
  const q = el('input', { id: 'search', type: 'search', 'aria-label': 'Search past chats', placeholder: 'Search name, email or messages' });
  const list = el('ul');
  const pane = el('section', { class: 'card', id: 'pane' }, el('h2', {}, 'Past chats'),
    el('form', { class: 'row', onsubmit: (ev) => { ev.preventDefault(); load(); } }, q, el('button', { type: 'submit' }, 'Search')), list);
  async function load() {
    const { conversations } = await api('GET', '/conversations' + (q.value ? `?q=${encodeURIComponent(q.value)}` : ''));
    list.replaceChildren(...(conversations.length ? conversations.map((c) => el('li', {},
      el('button', { type: 'button', class: 'link', onclick: () => openChat(c.id, true) }, `${visitorLabel(c)} · ${deptName(c.department_id)} · ${new Date(c.ended_at).toLocaleString()}`))) : [el('p', { class: 'hint' }, 'No chats found.')]));
  }
  current = { id: null, pane, lastSeq: 0, pending: new Map() };
  render();
  await load();
}

async function showOffline() {
  const { offline_messages: messages } = await api('GET', '/offline-messages');
  const pane = el('section', { class: 'card', id: 'pane' }, el('h2', {}, 'Offline messages'),
    messages.length ? el('table', {}, el('thead', {}, el('tr', {}, ...['From', 'Department', 'Message', ''].map((h) => el('th', {}, h)))),
      el('tbody', {}, messages.map((m) => el('tr', {},
        el('td', {}, m.name, el('br'), el('a', { href: `mailto:${m.email}` }, m.email)),
        el('td', {}, deptName(m.department_id)),
        el('td', { class: 'offline-text' }, m.message),
        el('td', {}, m.handled_at ? el('span', { class: 'badge' }, 'Answered') : act('Mark answered', async () => {
          await api('POST', `/offline-messages/${m.id}/handled`);
          showOffline();
        })))))) : el('p', { class: 'hint' }, 'No offline messages.'));
  current = { id: null, pane, lastSeq: 0, pending: new Map() };
  render();
}
