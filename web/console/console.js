// The agent console. This first version shows who is signed in and their departments; the chat
// screens build on it.

import { el, signIn, signOut, ROLE_NAMES } from './ui.js';

const root = document.getElementById('root');

signIn(root, (session) => {
  const u = session.user;
  document.getElementById('who').replaceChildren(
    `${u.display_name} · ${session.site?.name ?? ''} `,
    el('button', { type: 'button', onclick: signOut }, 'Sign out'));
  const depts = session.departments.length
    ? el('ul', { id: 'my-departments' }, session.departments.map((d) => el('li', {}, d.name)))
    : el('p', { class: 'hint', id: 'my-departments' }, 'You are not in any department yet. Ask your administrator to add you.');
  const parts = [
    el('section', { class: 'card' },
      el('h2', { id: 'welcome' }, `Signed in as ${u.display_name}`),
      el('p', {}, el('span', { class: 'badge', id: 'my-role' }, ROLE_NAMES[u.role]), ' ', u.email),
      el('p', {}, `Chat capacity: ${u.capacity} at a time`)),
    el('section', { class: 'card' }, el('h2', {}, 'Your departments'), depts),
  ];
  if (session.permissions.includes('view_users')) {
    parts.push(el('p', {}, el('a', { href: '/admin' }, 'Open the admin panel')));
  }
  root.replaceChildren(...parts);
});
