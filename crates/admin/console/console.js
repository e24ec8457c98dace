// Junction's web console: a page over the management API (/api), with no library and no
// CDN. Every value from the broker is put in the page as text (never as HTML), so a queue
// or client named like markup stays a name. The page polls the API every two seconds and
// redraws only the live part of the current view, so forms keep what is typed in them.
'use strict';

const POLL_MS = 2000;
const HISTORY = 90; // chart points kept: three minutes at one per poll

const state = {
  auth: sessionStorage.getItem('junction-auth'),
  user: null,
  timer: null,
  history: [], // overview samples: {t, publish, deliver, ack, ready, unacked}
  last: null,
};

// ---- DOM helpers ------------------------------------------------------------------------

/** An element with attributes (on* as listeners) and children (strings become text). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.className = value;
    else el.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function svg(tag, attrs = {}) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, value);
  return el;
}

const fmt = (n) => (n === undefined || n === null ? '' : Number(n).toLocaleString('en-US'));
const rate = (r) => (r === undefined || r === null ? '' : `${Number(r).toFixed(1)}/s`);
const bytes = (n) => {
  if (!n) return '0 B';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
};
const enc = encodeURIComponent;

function table(columns, rows, rowAttrs) {
  return h('table', {},
    h('thead', {}, h('tr', {}, columns.map((c) => h('th', { class: c.num ? 'num' : '' }, c.title)))),
    h('tbody', {}, rows.map((row) => h('tr', rowAttrs ? rowAttrs(row) : {},
      columns.map((c) => h('td', { class: c.num ? 'num' : '' }, c.cell(row)))))));
}

// ---- API ----------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super(body && body.reason ? body.reason : `HTTP ${status}`);
    this.status = status;
  }
}

async function api(method, path, body) {
  const response = await fetch(`/api${path}`, {
    method,
    headers: { Authorization: state.auth, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401 && path !== '/whoami') {
    logout();
    throw new ApiError(401, { reason: 'logged out' });
  }
  const text = await response.text();
  const parsed = text ? JSON.parse(text) : null;
  if (!response.ok && response.status !== 503) throw new ApiError(response.status, parsed);
  return parsed;
}

const get = (path) => api('GET', path);

// ---- login --------------------------------------------------------------------------------

async function login(event) {
  event.preventDefault();
  const user = document.getElementById('username').value;
  const password = document.getElementById('password').value;
  state.auth = `Basic ${btoa(unescape(encodeURIComponent(`${user}:${password}`)))}`;
  try {
    const me = await api('GET', '/whoami');
    if (!me) throw new ApiError(401, { reason: 'Login failed' });
    sessionStorage.setItem('junction-auth', state.auth);
    start(me);
  } catch (err) {
    state.auth = null;
    document.getElementById('login-error').textContent =
      err.status === 401 ? 'Login failed (or the user has no management tag)' : err.message;
  }
}

function logout() {
  sessionStorage.removeItem('junction-auth');
  state.auth = null;
  location.hash = '';
  location.reload();
}

function start(me) {
  state.user = me;
  document.getElementById('nav').hidden = false;
  document.getElementById('who').replaceChildren(
    `${me.name} `, ...me.tags.map((t) => h('span', { class: 'tag' }, t)),
    h('button', { class: 'plain', id: 'logout', onclick: logout }, 'Log out'));
  window.addEventListener('hashchange', show);
  if (!location.hash) location.hash = '#overview';
  show();
}

// ---- views ---------------------------------------------------------------------------------

/** The current view: its static part is drawn once, `live` every poll. */
let current = null;

function show() {
  clearTimeout(state.timer);
  const [name, ...args] = location.hash.slice(1).split('/').map(decodeURIComponent);
  const view = VIEWS[name] || VIEWS.overview;
  for (const link of document.querySelectorAll('#nav a')) {
    link.classList.toggle('active', link.getAttribute('href') === `#${name}`);
  }
  const main = document.getElementById('main');
  const live = h('div', { id: 'live' });
  main.replaceChildren(...view.draw(args, live), live);
  current = { view, args, live };
  tick();
}

async function tick() {
  const view = current;
  try {
    await refreshAlarms();
    // The overview's charts follow the whole visit, whatever page is shown.
    if (view.view !== VIEWS.overview) record(await get('/overview'));
    const content = await view.view.live(view.args);
    if (current === view) view.live.replaceChildren(...[content].flat());
  } catch (err) {
    if (current === view) view.live.replaceChildren(h('p', { class: 'error' }, err.message));
  }
  if (current === view) state.timer = setTimeout(tick, POLL_MS);
}

async function refreshAlarms() {
  const banner = document.getElementById('alarms');
  const check = await get('/health/checks/alarms');
  if (check && check.status === 'failed') {
    banner.hidden = false;
    banner.textContent = `Resource alarm: ${check.alarms.map((a) => `${a.resource} (${a.reason})`).join(', ')}` +
      ' — publishers are blocked until it clears.';
  } else {
    banner.hidden = true;
  }
}

/** A form that calls `action(values)` and shows its outcome beside the button. */
function actionForm(fields, label, action, extra = {}) {
  const note = h('span', { class: 'muted' });
  const form = h('form', { class: 'inline', ...extra }, fields, h('button', { type: 'submit' }, label), note);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const values = Object.fromEntries(new FormData(form).entries());
    note.className = 'muted';
    note.textContent = '…';
    try {
      note.textContent = (await action(values, form)) || 'done';
      note.className = 'ok';
    } catch (err) {
      note.textContent = err.message;
      note.className = 'error';
    }
  });
  return form;
}

const field = (label, name, attrs = {}) => h('label', {}, label, h('input', { name, ...attrs }));

function vhostSelect(vhosts, name = 'vhost') {
  return h('label', {}, 'Vhost', h('select', { name }, vhosts.map((v) => h('option', { value: v.name }, v.name))));
}

function chart(series, max) {
  const width = 600;
  const height = 180;
  const top = Math.max(max || 0, ...series.flatMap((s) => s.points), 1);
  const el = svg('svg', { class: 'chart', viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: 'none' });
  for (let i = 1; i < 4; i += 1) {
    el.append(svg('line', { x1: 0, x2: width, y1: (height * i) / 4, y2: (height * i) / 4, stroke: '#e5e7eb' }));
  }
  for (const s of series) {
    const step = width / Math.max(HISTORY - 1, 1);
    const offset = HISTORY - s.points.length;
    const points = s.points.map((v, i) => `${((offset + i) * step).toFixed(1)},${(height - (v / top) * (height - 10)).toFixed(1)}`);
    el.append(svg('polyline', { points: points.join(' '), fill: 'none', stroke: s.color, 'stroke-width': 2 }));
  }
  const label = svg('text', { x: 4, y: 14, fill: '#667085', 'font-size': 12 });
  label.textContent = `max ${fmt(Math.round(top))}`;
  el.append(label);
  return h('div', {}, el, h('div', { class: 'legend' },
    series.map((s) => h('span', {}, h('i', { style: `background:${s.color}` }), `${s.name} ${fmt(Math.round(s.points.at(-1) ?? 0))}`))));
}

function record(overview) {
  const stats = overview.message_stats || {};
  const totals = overview.queue_totals || {};
  const now = Date.now();
  const sample = {
    t: now,
    publish: stats.publish || 0,
    deliver: stats.deliver_get || 0,
    ack: stats.ack || 0,
    ready: totals.messages_ready || 0,
    unacked: totals.messages_unacknowledged || 0,
  };
  const prev = state.last;
  state.last = sample;
  if (!prev) return;
  const seconds = Math.max((now - prev.t) / 1000, 0.001);
  state.history.push({
    publish: Math.max(sample.publish - prev.publish, 0) / seconds,
    deliver: Math.max(sample.deliver - prev.deliver, 0) / seconds,
    ack: Math.max(sample.ack - prev.ack, 0) / seconds,
    ready: sample.ready,
    unacked: sample.unacked,
  });
  if (state.history.length > HISTORY) state.history.shift();
}

const VIEWS = {
  overview: {
    draw: () => [h('h1', { class: 'page' }, 'Overview')],
    async live() {
      const overview = await get('/overview');
      record(overview);
      const totals = overview.object_totals;
      const queued = overview.queue_totals;
      const stat = (label, value) => h('div', { class: 'stat' }, h('div', { class: 'value' }, value), h('div', { class: 'label' }, label));
      const parts = [
        h('div', { class: 'grid card', id: 'totals' },
          stat('Connections', fmt(totals.connections)), stat('Channels', fmt(totals.channels)),
          stat('Queues', fmt(totals.queues)), stat('Consumers', fmt(totals.consumers)),
          stat('Exchanges', fmt(totals.exchanges)), stat('Ready', fmt(queued.messages_ready)),
          stat('Unacked', fmt(queued.messages_unacknowledged))),
        h('div', { class: 'charts' },
          h('div', { class: 'card' }, h('h2', {}, 'Message rates (per second)'), chart([
            { name: 'publish', color: '#2563eb', points: state.history.map((s) => s.publish) },
            { name: 'deliver/get', color: '#16a34a', points: state.history.map((s) => s.deliver) },
            { name: 'ack', color: '#f59e0b', points: state.history.map((s) => s.ack) },
          ])),
          h('div', { class: 'card' }, h('h2', {}, 'Queued messages'), chart([
            { name: 'ready', color: '#7c3aed', points: state.history.map((s) => s.ready) },
            { name: 'unacked', color: '#db2777', points: state.history.map((s) => s.unacked) },
          ]))),
      ];
      if (state.user.tags.some((t) => t === 'administrator' || t === 'monitoring')) {
        const [node] = await get('/nodes');
        parts.push(h('div', { class: 'card', id: 'node' }, h('h2', {}, `Node ${node.name}`),
          table([
            { title: 'Memory', cell: (n) => `${bytes(n.mem_used)} of ${bytes(n.mem_limit)}${n.mem_alarm ? ' ALARM' : ''}` },
            { title: 'Disk free', cell: (n) => `${bytes(n.disk_free)} (limit ${bytes(n.disk_free_limit)})${n.disk_free_alarm ? ' ALARM' : ''}` },
            { title: 'File descriptors', cell: (n) => `${fmt(n.fd_used)} / ${fmt(n.fd_total)}` },
            { title: 'Uptime', cell: (n) => `${Math.round(n.uptime / 1000)} s` },
            { title: 'Messages per fsync', cell: (n) => n.message_store.messages_per_fsync.toFixed(1) },
          ], [node])));
      }
      parts.push(h('div', { class: 'card' }, h('h2', {}, 'Listeners'), table([
        { title: 'Protocol', cell: (l) => l.protocol },
        { title: 'Address', cell: (l) => `${l.ip_address}:${l.port}` },
      ], overview.listeners)));
      return parts;
    },
  },

  connections: {
    draw: () => [h('h1', { class: 'page' }, 'Connections')],
    async live() {
      const connections = await get('/connections');
      const byProtocol = {};
      for (const c of connections) (byProtocol[c.protocol] ||= []).push(c);
      const summary = h('p', { class: 'muted' }, Object.keys(byProtocol).length
        ? Object.entries(byProtocol).map(([p, list]) => `${p}: ${list.length}`).join(' · ')
        : 'No connections.');
      return [summary, ...Object.entries(byProtocol).sort().map(([protocol, list]) => h('div', { class: 'card' },
        h('h2', {}, protocol),
        table([
          { title: 'Name', cell: (c) => c.name },
          { title: 'Client', cell: (c) => c.client_id || c.user_provided_name || '' },
          { title: 'User', cell: (c) => c.user },
          { title: 'Vhost', cell: (c) => c.vhost },
          { title: 'State', cell: (c) => h('span', { class: `state-${c.state}` }, c.state) },
          { title: 'Channels', num: true, cell: (c) => fmt(c.channels) },
          { title: 'In', num: true, cell: (c) => rate(c.recv_oct_details.rate).replace('/s', ' B/s') },
          { title: 'Out', num: true, cell: (c) => rate(c.send_oct_details.rate).replace('/s', ' B/s') },
          { title: '', cell: (c) => h('button', {
            class: 'danger', 'data-close': c.name,
            onclick: async () => {
              if (!confirm(`Close ${c.name}?`)) return;
              await api('DELETE', `/connections/${enc(c.name)}`);
              tick();
            },
          }, 'Close') },
        ], list, (c) => ({ 'data-connection': c.name, 'data-protocol': c.protocol }))))];
    },
  },

  channels: {
    draw: () => [h('h1', { class: 'page' }, 'Channels')],
    async live() {
      const channels = await get('/channels');
      return h('div', { class: 'card' }, channels.length ? table([
        { title: 'Channel', cell: (c) => c.name },
        { title: 'User', cell: (c) => c.user },
        { title: 'Vhost', cell: (c) => c.vhost },
        { title: 'State', cell: (c) => c.state },
      ], channels) : h('p', { class: 'muted' }, 'No channels.'));
    },
  },

  exchanges: {
    draw: () => [h('h1', { class: 'page' }, 'Exchanges'), h('div', { id: 'exchange-form' })],
    async live() {
      await drawOnce('exchange-form', async () => {
        const vhosts = await get('/vhosts');
        return h('div', { class: 'card' }, h('h2', {}, 'Add an exchange'), actionForm([
          vhostSelect(vhosts), field('Name', 'name', { required: true }),
          h('label', {}, 'Type', h('select', { name: 'type' }, (await get('/exchange-types')).map((t) => h('option', {}, t.name)))),
          h('label', {}, 'Durable', h('select', { name: 'durable' }, h('option', { value: 'true' }, 'yes'), h('option', { value: 'false' }, 'no'))),
        ], 'Add', async (v) => {
          await api('PUT', `/exchanges/${enc(v.vhost)}/${enc(v.name)}`, { type: v.type, durable: v.durable === 'true' });
          return `exchange ${v.name} declared`;
        }));
      });
      const exchanges = await get('/exchanges');
      return h('div', { class: 'card' }, table([
        { title: 'Vhost', cell: (x) => x.vhost },
        { title: 'Name', cell: (x) => h('a', { href: `#exchange/${enc(x.vhost)}/${enc(x.name || 'amq.default')}` }, x.name || '(AMQP default)') },
        { title: 'Type', cell: (x) => x.type },
        { title: 'Features', cell: (x) => [x.durable ? 'D ' : '', x.auto_delete ? 'AD ' : '', x.internal ? 'I' : ''].join('') },
        { title: 'In', num: true, cell: (x) => rate(x.message_stats.publish_in_details.rate) },
        { title: 'Out', num: true, cell: (x) => rate(x.message_stats.publish_out_details.rate) },
      ], exchanges));
    },
  },

  exchange: {
    draw([vhost, name]) {
      return [h('h1', { class: 'page' }, `Exchange ${name} in ${vhost}`),
        h('div', { class: 'card' }, h('h2', {}, 'Publish a message'), publishForm(vhost, name)),
        h('div', { class: 'card' }, h('h2', {}, 'Bind'), actionForm([
          h('label', {}, 'To', h('select', { name: 'kind' }, h('option', { value: 'q' }, 'queue'), h('option', { value: 'e' }, 'exchange'))),
          field('Destination', 'destination', { required: true }), field('Routing key', 'routing_key'),
        ], 'Bind', async (v) => {
          await api('POST', `/bindings/${enc(vhost)}/e/${enc(name)}/${v.kind}/${enc(v.destination)}`, { routing_key: v.routing_key, arguments: {} });
          return 'bound';
        })),
        h('p', {}, h('button', { class: 'danger', onclick: async () => {
          if (!confirm(`Delete exchange ${name}?`)) return;
          await api('DELETE', `/exchanges/${enc(vhost)}/${enc(name)}`);
          location.hash = '#exchanges';
        } }, 'Delete this exchange'))];
    },
    async live([vhost, name]) {
      const bindings = await get(`/exchanges/${enc(vhost)}/${enc(name)}/bindings/source`);
      return h('div', { class: 'card' }, h('h2', {}, 'Bindings from this exchange'), bindingTable(vhost, bindings));
    },
  },

  queues: {
    draw: () => [h('h1', { class: 'page' }, 'Queues'), h('div', { id: 'queue-form' })],
    async live() {
      await drawOnce('queue-form', async () => {
        const vhosts = await get('/vhosts');
        return h('div', { class: 'card' }, h('h2', {}, 'Add a queue'), actionForm([
          vhostSelect(vhosts), field('Name', 'name', { required: true }),
          h('label', {}, 'Type', h('select', { name: 'type' }, h('option', {}, 'classic'), h('option', {}, 'quorum'))),
          h('label', {}, 'Durable', h('select', { name: 'durable' }, h('option', { value: 'true' }, 'yes'), h('option', { value: 'false' }, 'no'))),
        ], 'Add', async (v) => {
          await api('PUT', `/queues/${enc(v.vhost)}/${enc(v.name)}`, { durable: v.durable === 'true', arguments: { 'x-queue-type': v.type } });
          return `queue ${v.name} declared`;
        }));
      });
      const queues = await get('/queues');
      return h('div', { class: 'card' }, queues.length ? table([
        { title: 'Vhost', cell: (q) => q.vhost },
        { title: 'Name', cell: (q) => h('a', { href: `#queue/${enc(q.vhost)}/${enc(q.name)}` }, q.name) },
        { title: 'Type', cell: (q) => q.type },
        { title: 'Ready', num: true, cell: (q) => fmt(q.messages_ready) },
        { title: 'Unacked', num: true, cell: (q) => fmt(q.messages_unacknowledged) },
        { title: 'Total', num: true, cell: (q) => fmt(q.messages) },
        { title: 'Consumers', num: true, cell: (q) => fmt(q.consumers) },
        { title: 'In', num: true, cell: (q) => rate(q.message_stats.publish_details.rate) },
        { title: 'Out', num: true, cell: (q) => rate(q.message_stats.deliver_get_details.rate) },
      ], queues, (q) => ({ 'data-queue': q.name })) : h('p', { class: 'muted' }, 'No queues.'));
    },
  },

  queue: {
    draw([vhost, name]) {
      const got = h('div', { id: 'got' });
      const path = `/queues/${enc(vhost)}/${enc(name)}`;
      return [h('h1', { class: 'page' }, `Queue ${name} in ${vhost}`),
        h('div', { class: 'card' }, h('h2', {}, 'Get messages'), actionForm([
          field('Count', 'count', { type: 'number', value: 1, min: 1 }),
          h('label', {}, 'Ack mode', h('select', { name: 'ackmode' },
            h('option', { value: 'ack_requeue_true' }, 'Nack, requeue'),
            h('option', { value: 'ack_requeue_false' }, 'Ack (remove)'),
            h('option', { value: 'reject_requeue_false' }, 'Reject (dead-letter)'))),
        ], 'Get', async (v) => {
          const messages = await api('POST', `${path}/get`, { count: Number(v.count), ackmode: v.ackmode, encoding: 'auto', truncate: 50000 });
          got.replaceChildren(...(messages.length ? messages.map((m) => h('div', { class: 'message' },
            h('div', { class: 'muted' }, `exchange ${m.exchange || '(default)'} · key ${m.routing_key} · ${m.payload_bytes} bytes${m.redelivered ? ' · redelivered' : ''}`),
            h('pre', { class: 'payload' }, m.payload))) : [h('p', { class: 'muted' }, 'Queue is empty.')]));
          return `${messages.length} message(s)`;
        }), got),
        h('div', { class: 'card' }, h('h2', {}, 'Publish to this queue'), publishForm(vhost, 'amq.default', name)),
        h('p', {},
          h('button', { class: 'danger', id: 'purge', onclick: async () => {
            if (!confirm(`Purge ${name}?`)) return;
            await api('DELETE', `${path}/contents`);
            tick();
          } }, 'Purge'), ' ',
          h('button', { class: 'danger', id: 'delete-queue', onclick: async () => {
            if (!confirm(`Delete ${name}?`)) return;
            await api('DELETE', path);
            location.hash = '#queues';
          } }, 'Delete'))];
    },
    async live([vhost, name]) {
      const path = `/queues/${enc(vhost)}/${enc(name)}`;
      const [q, bindings] = await Promise.all([get(path), get(`${path}/bindings`)]);
      return [h('div', { class: 'grid card', id: 'queue-stats' },
        ...[['Ready', q.messages_ready], ['Unacked', q.messages_unacknowledged], ['Total', q.messages],
          ['Consumers', q.consumers], ['Bytes ready', bytes(q.message_bytes_ready)], ['Paged out', q.messages_paged_out],
          ['Publish rate', rate(q.message_stats.publish_details.rate)], ['Deliver rate', rate(q.message_stats.deliver_get_details.rate)]]
          .map(([label, value]) => h('div', { class: 'stat' }, h('div', { class: 'value', 'data-stat': label }, typeof value === 'number' ? fmt(value) : value), h('div', { class: 'label' }, label)))),
      h('div', { class: 'card' }, h('h2', {}, 'Arguments'), h('pre', {}, JSON.stringify(q.arguments, null, 2))),
      h('div', { class: 'card' }, h('h2', {}, 'Consumers'), q.consumer_details.length ? table([
        { title: 'Tag', cell: (c) => c.consumer_tag },
        { title: 'Connection', cell: (c) => c.channel_details.connection_name },
        { title: 'Ack', cell: (c) => (c.ack_required ? 'manual' : 'auto') },
        { title: 'Prefetch', num: true, cell: (c) => fmt(c.prefetch_count) },
      ], q.consumer_details) : h('p', { class: 'muted' }, 'No consumers.')),
      h('div', { class: 'card' }, h('h2', {}, 'Bindings'), bindingTable(vhost, bindings))];
    },
  },

  mqtt: {
    draw: () => [h('h1', { class: 'page' }, 'MQTT'), h('div', { id: 'retained-form' })],
    async live() {
      const sessions = await get('/mqtt/sessions');
      await drawOnce('retained-form', async () => {
        const vhosts = await get('/vhosts');
        const out = h('div', { id: 'retained' });
        return h('div', { class: 'card' }, h('h2', {}, 'Retained messages'), actionForm([vhostSelect(vhosts)], 'Show', async (v) => {
          const retained = await get(`/mqtt/retained/${enc(v.vhost)}`);
          out.replaceChildren(retained.length ? table([
            { title: 'Topic', cell: (r) => r.topic },
            { title: 'QoS', num: true, cell: (r) => r.qos },
            { title: 'Payload', cell: (r) => h('pre', { class: 'payload' }, r.payload) },
          ], retained) : h('p', { class: 'muted' }, 'None.'));
          return `${retained.length} retained`;
        }), out);
      });
      return h('div', { class: 'card' }, h('h2', {}, 'Sessions'), sessions.length ? table([
        { title: 'Vhost', cell: (s) => s.vhost },
        { title: 'Client id', cell: (s) => s.client_id },
        { title: 'State', cell: (s) => (s.connected ? 'connected' : 'away (persistent session)') },
        { title: 'Subscriptions', cell: (s) => s.subscriptions.map((x) => `${x.filter}${x.qos === null ? '' : ` (QoS ${x.qos})`}`).join(', ') },
      ], sessions) : h('p', { class: 'muted' }, 'No sessions.'));
    },
  },

  admin: {
    draw() {
      if (!state.user.tags.includes('administrator')) return [h('p', { class: 'error' }, 'Administrators only.')];
      const download = h('a', { hidden: true });
      return [h('h1', { class: 'page' }, 'Admin'),
        h('div', { class: 'card' }, h('h2', {}, 'Add or update a user'), actionForm([
          field('Name', 'name', { required: true }), field('Password', 'password', { type: 'password' }),
          field('Tags', 'tags', { placeholder: 'management,monitoring' }),
        ], 'Save', async (v) => {
          // A blank password keeps an existing user's password (the API would clear it).
          const body = { tags: v.tags };
          if (v.password) {
            body.password = v.password;
          } else {
            const existing = await api('GET', `/users/${enc(v.name)}`).catch(() => null);
            if (!existing) throw new Error('a new user needs a password');
            body.password_hash = existing.password_hash;
          }
          await api('PUT', `/users/${enc(v.name)}`, body);
          return `user ${v.name} saved`;
        })),
        h('div', { class: 'card' }, h('h2', {}, 'Add a vhost'), actionForm([field('Name', 'name', { required: true }), field('Description', 'description')], 'Add', async (v) => {
          await api('PUT', `/vhosts/${enc(v.name)}`, { description: v.description });
          return `vhost ${v.name} added`;
        })),
        h('div', { class: 'card' }, h('h2', {}, 'Set permissions'), actionForm([
          field('User', 'user', { required: true }), field('Vhost', 'vhost', { required: true, value: '/' }),
          field('Configure', 'configure', { value: '.*' }), field('Write', 'write', { value: '.*' }), field('Read', 'read', { value: '.*' }),
        ], 'Set', async (v) => {
          await api('PUT', `/permissions/${enc(v.vhost)}/${enc(v.user)}`, { configure: v.configure, write: v.write, read: v.read });
          return 'permissions set';
        })),
        h('div', { class: 'card' }, h('h2', {}, 'Definitions'),
          h('p', {}, h('button', { id: 'export', onclick: async () => {
            const definitions = await get('/definitions');
            const blob = new Blob([JSON.stringify(definitions, null, 2)], { type: 'application/json' });
            download.href = URL.createObjectURL(blob);
            download.download = 'junction-definitions.json';
            download.click();
          } }, 'Export definitions'), download),
          actionForm([h('label', {}, 'Import a definitions file', h('input', { type: 'file', name: 'file', accept: 'application/json', required: true }))], 'Import', async (v) => {
            const text = await v.file.text();
            await api('POST', '/definitions', JSON.parse(text));
            return 'definitions imported';
          }))];
    },
    async live() {
      if (!state.user.tags.includes('administrator')) return [];
      const [users, vhosts, permissions] = await Promise.all([get('/users'), get('/vhosts'), get('/permissions')]);
      return [
        h('div', { class: 'card' }, h('h2', {}, 'Users'), table([
          { title: 'Name', cell: (u) => u.name },
          { title: 'Tags', cell: (u) => u.tags.map((t) => h('span', { class: 'tag' }, t)) },
          { title: '', cell: (u) => h('button', { class: 'danger', onclick: async () => {
            if (!confirm(`Delete user ${u.name}?`)) return;
            await api('DELETE', `/users/${enc(u.name)}`);
            tick();
          } }, 'Delete') },
        ], users)),
        h('div', { class: 'card' }, h('h2', {}, 'Vhosts'), table([
          { title: 'Name', cell: (v) => v.name },
          { title: 'Description', cell: (v) => v.description },
          { title: 'Messages', num: true, cell: (v) => fmt(v.messages) },
          { title: '', cell: (v) => h('button', { class: 'danger', onclick: async () => {
            if (!confirm(`Delete vhost ${v.name} and everything in it?`)) return;
            await api('DELETE', `/vhosts/${enc(v.name)}`);
            tick();
          } }, 'Delete') },
        ], vhosts)),
        h('div', { class: 'card' }, h('h2', {}, 'Permissions'), table([
          { title: 'User', cell: (p) => p.user },
          { title: 'Vhost', cell: (p) => p.vhost },
          { title: 'Configure', cell: (p) => p.configure },
          { title: 'Write', cell: (p) => p.write },
          { title: 'Read', cell: (p) => p.read },
        ], permissions)),
      ];
    },
  },
};

/** Draws the element with `id` once per visit to a view (forms that must keep their input). */
async function drawOnce(id, make) {
  const slot = document.getElementById(id);
  if (!slot || slot.dataset.drawn) return;
  slot.dataset.drawn = 'yes';
  slot.replaceChildren(await make());
}

function publishForm(vhost, exchange, routingKey = '') {
  return actionForm([
    field('Routing key', 'routing_key', { value: routingKey }),
    h('label', {}, 'Delivery', h('select', { name: 'delivery_mode' }, h('option', { value: '1' }, 'transient'), h('option', { value: '2' }, 'persistent'))),
    h('label', { style: 'flex: 1 1 100%' }, 'Payload', h('textarea', { name: 'payload' })),
  ], 'Publish', async (v) => {
    const result = await api('POST', `/exchanges/${enc(vhost)}/${enc(exchange)}/publish`, {
      routing_key: v.routing_key, payload: v.payload, payload_encoding: 'string',
      properties: { delivery_mode: Number(v.delivery_mode) },
    });
    return result.routed ? 'published and routed' : 'published, but no queue took it';
  });
}

function bindingTable(vhost, bindings) {
  if (!bindings.length) return h('p', { class: 'muted' }, 'No bindings.');
  return table([
    { title: 'From', cell: (b) => b.source || '(AMQP default)' },
    { title: 'To', cell: (b) => `${b.destination_type} ${b.destination}` },
    { title: 'Routing key', cell: (b) => b.routing_key },
    { title: '', cell: (b) => (b.source ? h('button', { class: 'plain', onclick: async () => {
      await api('DELETE', `/bindings/${enc(vhost)}/e/${enc(b.source)}/${b.destination_type === 'queue' ? 'q' : 'e'}/${enc(b.destination)}/${enc(b.properties_key)}`);
      tick();
    } }, 'Unbind') : '') },
  ], bindings);
}

// ---- start ------------------------------------------------------------------------------------

document.getElementById('login').addEventListener('submit', login);
if (state.auth) {
  api('GET', '/whoami').then((me) => (me ? start(me) : logout())).catch(() => logout());
}
