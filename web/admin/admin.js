// The admin control panel: site settings, departments, users and the audit trail.

import { api } from './api.js';
import { el, field, onSubmit, signIn, signOut, ROLE_NAMES } from './ui.js';

const root = document.getElementById('root');
let session = null;
let departments = [];

signIn(root, start);

function can(permission) {
  return session.permissions.includes(permission);
}

async function start(s) {
  session = s;
  document.getElementById('who').replaceChildren(
    `${s.user.display_name} · ${ROLE_NAMES[s.user.role]} · ${s.site?.name ?? ''} `,
    el('button', { type: 'button', onclick: signOut }, 'Sign out'));
  const tabs = [
    ['site', 'Site', showSite, can('view_site')],
    ['departments', 'Departments', showDepartments, can('view_departments')],
    ['users', 'Users', showUsers, can('view_users')],
    ['audit', 'Audit trail', showAudit, can('view_audit')],
  ].filter((t) => t[3]);
  const panel = el('section', { id: 'panel', role: 'tabpanel' });
  const nav = el('nav', { class: 'tabs', role: 'tablist', 'aria-label': 'Admin sections' });
  for (const [id, label, show] of tabs) {
    nav.append(el('button', {
      type: 'button', role: 'tab', id: 'tab-' + id, 'aria-selected': 'false',
      onclick: async (ev) => {
        nav.querySelectorAll('button').forEach((b) => b.setAttribute('aria-selected', 'false'));
        ev.currentTarget.setAttribute('aria-selected', 'true');
        panel.replaceChildren(el('p', {}, 'Loading…'));
        try {
          await show(panel);
        } catch (err) {
          panel.replaceChildren(el('p', { class: 'error', role: 'alert' }, err.message));
        }
      },
    }, label));
  }
  root.replaceChildren(nav, panel);
  nav.querySelector('button')?.click();
}

async function showSite(panel) {
  const site = await api('GET', '/site');
  const name = el('input', { name: 'site-name', value: site.name, disabled: !can('edit_site') });
  const origins = el('textarea', { name: 'origins', rows: 4, disabled: !can('edit_site_security') });
  origins.value = site.allowed_origins.join('\n');
  const error = el('p', { class: 'error', role: 'alert' });
  const notice = el('p', { class: 'notice', role: 'status' });
  const p = site.connection_periods;
  const period = (n, v) => el('input', { name: n, type: 'number', min: 1, max: 86400, value: v, disabled: !can('edit_site') });
  const weak = period('weak', p.weak_after_secs);
  const lost = period('lost', p.lost_after_secs);
  const timeout = period('timeout', p.timeout_secs);
  const form = el('form', { class: 'card' },
    el('h2', {}, 'Site'),
    field('Site name', name),
    field('Allowed website origins', origins, 'One per line, like https://www.example.com. The chat widget works only on these sites.'),
    el('div', { class: 'row top' },
      field('Weak after (seconds)', weak, 'Silent visitors are shown to the agent as weak…'),
      field('Lost after (seconds)', lost, '…then as lost.'),
      field('Chat ends after (seconds)', timeout, 'A lost visitor who does not return in time has the chat ended.')),
    el('p', { class: 'hint' }, 'Workspace: ', el('code', {}, site.slug), ' · Site key: ', el('code', {}, site.site_key)),
    el('p', { class: 'hint' }, 'Embed the chat with this line near </body> on the allowed sites:'),
    el('pre', { class: 'secret', id: 'embed-code' }, `<script src="${location.origin}/widget.js" data-site="${site.site_key}" async></script>`),
    error, notice,
    (can('edit_site') || can('edit_site_security')) ? el('div', { class: 'actions' }, el('button', { type: 'submit', class: 'primary' }, 'Save')) : null);
  onSubmit(form, error, async () => {
    notice.textContent = '';
    const body = {};
    if (can('edit_site')) {
      body.name = name.value;
      body.connection_periods = { weak_after_secs: Number(weak.value), lost_after_secs: Number(lost.value), timeout_secs: Number(timeout.value) };
    }
    if (can('edit_site_security')) body.allowed_origins = origins.value.split('\n').map((s) => s.trim()).filter(Boolean);
    const saved = await api('PATCH', '/site', body);
    origins.value = saved.allowed_origins.join('\n');
    notice.textContent = 'Saved.';
  });
  panel.replaceChildren(form);
}

async function loadDepartments() {
  departments = (await api('GET', '/departments')).departments;
  return departments;
}

async function showDepartments(panel) {
  await loadDepartments();
  const ask = { required: 'Required', optional: 'Optional', hidden: 'Not asked' };
  const rows = departments.map((d) => el('tr', {},
    el('td', {}, d.name),
    el('td', {}, d.routing_mode === 'offer' ? `Offer (${d.offer_timeout_secs} s to accept)` : 'Assign directly'),
    el('td', {}, ['name', 'email', 'question'].map((f) => `${f}: ${ask[d.prechat_fields[f]].toLowerCase()}`).join(', ')),
    el('td', {}, can('manage_departments') ? departmentSettings(d, panel, ask) : '')));
  const list = el('section', { class: 'card' }, el('h2', {}, 'Departments'),
    departments.length
      ? el('table', {}, el('thead', {}, el('tr', {}, ...['Name', 'Routing', 'Pre-chat form', ''].map((h) => el('th', {}, h)))), el('tbody', {}, rows))
      : el('p', { class: 'hint' }, 'No departments yet.'));
  const parts = [list];
  if (can('manage_departments')) {
    const name = el('input', { name: 'department-name', required: true, maxlength: 80 });
    const error = el('p', { class: 'error', role: 'alert' });
    const form = el('form', { class: 'card' }, el('h2', {}, 'New department'),
      el('div', { class: 'row' }, field('Name', name), el('button', { type: 'submit', class: 'primary' }, 'Create department')),
      error);
    onSubmit(form, error, async () => {
      await api('POST', '/departments', { name: name.value });
      await showDepartments(panel);
    });
    parts.push(form);
  }
  panel.replaceChildren(...parts);
}

function departmentSettings(d, panel, ask) {
  const mode = el('select', { name: 'routing-mode' }, el('option', { value: 'offer' }, 'Offer to the best agent'), el('option', { value: 'assign' }, 'Assign directly'));
  mode.value = d.routing_mode;
  const timeout = el('input', { name: 'offer-timeout', type: 'number', min: 5, max: 600, value: d.offer_timeout_secs });
  const fields = {};
  for (const f of ['name', 'email', 'question']) {
    fields[f] = el('select', { name: 'prechat-' + f }, Object.entries(ask).map(([v, label]) => el('option', { value: v }, label)));
    fields[f].value = d.prechat_fields[f];
  }
  const error = el('p', { class: 'error', role: 'alert' });
  const form = el('form', {},
    field('Routing', mode), field('Seconds to accept an offer', timeout),
    field('Visitor name', fields.name), field('Visitor email', fields.email), field('Question', fields.question),
    error, el('div', { class: 'actions' }, el('button', { type: 'submit', class: 'primary' }, 'Save settings')));
  onSubmit(form, error, async () => {
    await api('PATCH', '/departments/' + d.id, {
      routing_mode: mode.value,
      offer_timeout_secs: Number(timeout.value),
      prechat_fields: { name: fields.name.value, email: fields.email.value, question: fields.question.value },
    });
    await showDepartments(panel);
  });
  return el('details', {}, el('summary', { 'aria-label': `Settings of ${d.name}` }, 'Settings'), form);
}

function departmentNames(ids) {
  return ids.map((id) => departments.find((d) => d.id === id)?.name ?? id).join(', ');
}

async function showUsers(panel) {
  await loadDepartments();
  const { users } = await api('GET', '/users');
  const canManage = can('manage_users');
  const rows = users.map((u) => el('tr', {},
    el('td', {}, u.display_name, el('br'), el('span', { class: 'hint' }, u.email)),
    el('td', {}, ROLE_NAMES[u.role]),
    el('td', {}, departmentNames(u.department_ids) || '—'),
    el('td', {}, String(u.capacity)),
    el('td', {}, u.disabled ? el('span', { class: 'badge off' }, 'Disabled') : el('span', { class: 'badge' }, u.must_change_password ? 'Invited' : 'Active')),
    el('td', {}, canManage && u.id !== session.user.id
      ? el('button', {
        type: 'button', class: u.disabled ? '' : 'danger',
        'aria-label': `${u.disabled ? 'Enable' : 'Disable'} ${u.display_name}`,
        onclick: async () => {
          try {
            await api('PATCH', '/users/' + u.id, { disabled: !u.disabled });
            await showUsers(panel);
          } catch (err) {
            alert(err.message);
          }
        },
      }, u.disabled ? 'Enable' : 'Disable')
      : null)));
  const list = el('section', { class: 'card' }, el('h2', {}, 'Users'),
    el('table', {}, el('thead', {}, el('tr', {}, ...['Name', 'Role', 'Departments', 'Capacity', 'Status', ''].map((h) => el('th', {}, h)))),
      el('tbody', {}, rows)));
  const parts = [list];
  if (canManage) parts.push(newUserForm(panel));
  panel.replaceChildren(...parts);
}

function newUserForm(panel) {
  const email = el('input', { name: 'user-email', type: 'email', required: true });
  const name = el('input', { name: 'user-name', required: true, maxlength: 100 });
  const roles = session.user.role === 'site_admin' ? Object.keys(ROLE_NAMES) : ['agent'];
  const role = el('select', { name: 'user-role' }, roles.map((r) => el('option', { value: r }, ROLE_NAMES[r])));
  role.value = 'agent';
  const depts = el('select', { name: 'user-departments', multiple: true },
    departments.map((d) => el('option', { value: d.id }, d.name)));
  const capacity = el('input', { name: 'user-capacity', type: 'number', min: 1, max: 50, value: 3 });
  const error = el('p', { class: 'error', role: 'alert' });
  const result = el('div', { role: 'status' });
  const form = el('form', { class: 'card' }, el('h2', {}, 'New user'),
    el('div', { class: 'row' }, field('Email', email), field('Display name', name)),
    el('div', { class: 'row top' }, field('Role', role), field('Departments', depts, 'Ctrl/Cmd-click to pick several.'), field('Chat capacity', capacity)),
    error,
    el('div', { class: 'actions' }, el('button', { type: 'submit', class: 'primary' }, 'Create user')),
    result);
  onSubmit(form, error, async () => {
    const created = await api('POST', '/users', {
      email: email.value,
      display_name: name.value,
      role: role.value,
      department_ids: [...depts.selectedOptions].map((o) => o.value),
      capacity: Number(capacity.value),
    });
    await showUsers(panel);
    panel.append(el('section', { class: 'card', role: 'status' },
      el('h2', {}, `Created ${created.user.display_name}`),
      el('p', {}, 'Give them this one-time password through a safe channel. It is shown only now; they must change it when they first sign in.'),
      el('p', { class: 'secret', id: 'one-time-password' }, created.one_time_password)));
  });
  return form;
}

async function showAudit(panel) {
  const { events } = await api('GET', '/audit?limit=200');
  const rows = events.map((e) => el('tr', {},
    el('td', { class: 'mono' }, String(e.seq)),
    el('td', {}, new Date(e.at).toLocaleString()),
    el('td', {}, e.action),
    el('td', { class: 'mono' }, e.actor),
    el('td', { class: 'mono' }, e.target ?? ''),
    el('td', { class: 'mono' }, e.ip ?? ''),
    el('td', { class: 'mono' }, e.detail)));
  panel.replaceChildren(el('section', { class: 'card' }, el('h2', {}, 'Audit trail (newest first)'),
    el('p', { class: 'hint' }, 'Every change, sign-in and denied action, hash-chained. Operators verify the chain with `parley audit verify`.'),
    el('table', {}, el('thead', {}, el('tr', {}, ...['#', 'When', 'Action', 'Actor', 'Target', 'IP', 'Detail'].map((h) => el('th', {}, h)))),
      el('tbody', {}, rows))));
}
