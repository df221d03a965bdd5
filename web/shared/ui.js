// Small DOM helpers. All user-supplied text goes in as text nodes: never as HTML.

import { api, setCsrf } from './api.js';

// A fresh client_msg_id: the time in milliseconds (12 hex digits) first, then a random UUID.
// Ids that sort by time are stored next to each other, so a busy server writes fewer pages per
// message (docs/PROTOCOL.md); the random part keeps them unique.
export function clientMsgId() {
  return Date.now().toString(16).padStart(12, '0') + '-' + crypto.randomUUID();
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (k === 'text') node.textContent = v;
    else node.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

export function field(label, input, hint) {
  const id = input.id || 'f-' + Math.random().toString(36).slice(2);
  input.id = id;
  return el('div', {}, el('label', { for: id }, label), input, hint ? el('p', { class: 'hint' }, hint) : null);
}

export const ROLE_NAMES = {
  site_admin: 'Site administrator',
  site_manager: 'Site manager',
  department_manager: 'Department manager',
  agent: 'Agent',
};

export function showError(node, err) {
  node.textContent = err ? err.message : '';
}

// Runs `submit` for a form, disabling its button and showing errors in `errorNode`.
export function onSubmit(form, errorNode, submit) {
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const button = form.querySelector('button[type=submit]');
    button && (button.disabled = true);
    showError(errorNode, null);
    try {
      await submit();
    } catch (err) {
      showError(errorNode, err);
    } finally {
      button && (button.disabled = false);
    }
  });
}

// The sign-in and first-password flow shared by the admin panel and the console. Calls
// `ready(session)` once the user is signed in with a usable password.
export async function signIn(root, ready) {
  try {
    const session = await api('GET', '/auth/session');
    setCsrf(session.csrf_token);
    if (session.must_change_password) return changePassword(root, ready);
    return ready(session);
  } catch (err) {
    if (err.status !== 401) {
      root.replaceChildren(el('p', { class: 'error', role: 'alert' }, err.message));
      return;
    }
  }
  const remembered = localStorage.getItem('parley.workspace') || '';
  const workspace = el('input', { name: 'workspace', autocomplete: 'organization', required: true, value: remembered });
  const email = el('input', { name: 'email', type: 'email', autocomplete: 'username', required: true });
  const password = el('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const error = el('p', { class: 'error', role: 'alert', 'aria-live': 'assertive' });
  const form = el('form', { class: 'card narrow', 'aria-labelledby': 'signin-title' },
    el('h2', { id: 'signin-title' }, 'Sign in to Parley'),
    field('Workspace', workspace, 'The workspace name your administrator gave you.'),
    field('Email', email),
    field('Password', password),
    error,
    el('div', { class: 'actions' }, el('button', { type: 'submit', class: 'primary' }, 'Sign in')));
  onSubmit(form, error, async () => {
    const res = await api('POST', '/auth/sign-in', {
      workspace: workspace.value, email: email.value, password: password.value,
    });
    localStorage.setItem('parley.workspace', workspace.value.trim().toLowerCase());
    setCsrf(res.csrf_token);
    password.value = '';
    return signIn(root, ready);
  });
  root.replaceChildren(form);
  (remembered ? email : workspace).focus();
}

function changePassword(root, ready) {
  const current = el('input', { type: 'password', name: 'current', autocomplete: 'current-password', required: true });
  const next = el('input', { type: 'password', name: 'new', autocomplete: 'new-password', required: true, minlength: 12 });
  const again = el('input', { type: 'password', name: 'again', autocomplete: 'new-password', required: true });
  const error = el('p', { class: 'error', role: 'alert', 'aria-live': 'assertive' });
  const form = el('form', { class: 'card narrow', 'aria-labelledby': 'pw-title' },
    el('h2', { id: 'pw-title' }, 'Choose a new password'),
    el('p', { class: 'hint' }, 'Your password was set by someone else. Choose your own before you go on: at least 12 characters, mixing letters with digits or symbols.'),
    field('Current (one-time) password', current),
    field('New password', next),
    field('New password again', again),
    error,
    el('div', { class: 'actions' }, el('button', { type: 'submit', class: 'primary' }, 'Set password')));
  onSubmit(form, error, async () => {
    if (next.value !== again.value) throw new Error('The two new passwords differ.');
    await api('POST', '/auth/password', { current_password: current.value, new_password: next.value });
    return signIn(root, ready);
  });
  root.replaceChildren(form);
  current.focus();
}

export async function signOut() {
  try {
    await api('POST', '/auth/sign-out');
  } finally {
    location.reload();
  }
}
