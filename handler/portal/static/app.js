// jitaccess portal: a thin page over the public REST API (/api/v1).
// Every value from the API reaches the page through textContent or an
// attribute; nothing from the API is ever parsed as HTML.
'use strict';

(() => {
  const DEFAULT_PORTS = [22, 3389, 5985, 5986]; // Defender's defaults
  const DEFAULT_MAX = 3 * 3600; // seconds
  const TABS = ['configured', 'notconfigured', 'unsupported', 'requests', 'activity', 'approvals'];
  const UNITS = [['s', 'seconds', 1], ['m', 'minutes', 60], ['h', 'hours', 3600]];

  const state = {
    me: null,
    vms: [],
    policies: {}, // name → provisioningState
    policyPorts: {}, // lower-case VM id → its ports, from the policies
    requests: [],
    pending: [],
    selected: { configured: new Set(), notconfigured: new Set() },
    tab: 'configured',
    signatures: {},
    pollTimer: 0,
  };

  // ---------- small DOM helpers ----------

  const $ = (id) => document.getElementById(id);

  // el builds an element; attrs starting with "on" are listeners, "text" is
  // textContent, other values become attributes (false/null are left out).
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === false || v === null || v === undefined) continue;
      if (k === 'text') e.textContent = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else if (k === 'hidden' || k === 'disabled' || k === 'checked' || k === 'selected' || k === 'required') e[k] = Boolean(v);
      else if (k === 'value') { e.setAttribute('value', v); e.value = v; }
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function has(role) {
    const roles = (state.me && state.me.roles) || [];
    return roles.includes('JIT.Admin') || roles.includes(role);
  }

  function lastSegment(id) {
    const s = String(id || '');
    return s.slice(s.lastIndexOf('/') + 1);
  }

  function say(msg) {
    const m = $('page-message');
    m.textContent = msg;
  }

  function showPageError(msg) {
    const e = $('page-error');
    e.textContent = msg;
    e.hidden = !msg;
  }

  // ---------- API ----------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(method, path, body, headers) {
    const init = { method, headers: Object.assign({ Accept: 'application/json' }, headers || {}), credentials: 'same-origin' };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (err) {
      throw new ApiError(0, 'NetworkError', 'the service did not answer (' + err.message + ')');
    }
    const text = await resp.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch (_) { data = null; }
    }
    if (!resp.ok) {
      const e = data && data.error;
      throw new ApiError(resp.status, e ? e.code : 'HTTP' + resp.status, e ? e.message : 'the service answered ' + resp.status);
    }
    return { data, etag: resp.headers.get('ETag') };
  }

  // apiAll reads every page of a list, following nextLink (on this page's
  // own origin: the service may know itself by another name behind a
  // proxy), at most maxPages pages.
  async function apiAll(path, maxPages) {
    const value = [];
    let next = path;
    for (let i = 0; next && i < (maxPages || 100); i++) {
      const { data } = await api('GET', next);
      value.push(...((data && data.value) || []));
      next = data && data.nextLink ? samePath(data.nextLink) : null;
    }
    return { data: { value } };
  }

  function samePath(link) {
    const u = new URL(link, location.href);
    return u.pathname + u.search;
  }

  // ---------- durations ----------

  // parseISODuration understands what the API writes: P1D, PT3H, PT1H30M, PT90S.
  function parseISODuration(s) {
    const m = /^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$/.exec(String(s || ''));
    if (!m) return NaN;
    return (+(m[1] || 0)) * 86400 + (+(m[2] || 0)) * 3600 + (+(m[3] || 0)) * 60 + (+(m[4] || 0));
  }

  function isoDuration(amount, unit) {
    const n = Number(amount);
    if (!Number.isFinite(n)) return '';
    return 'PT' + String(amount).trim() + unit.toUpperCase();
  }

  function humanDuration(secs) {
    if (!Number.isFinite(secs)) return '?';
    const parts = [];
    const h = Math.floor(secs / 3600), m = Math.floor((secs % 3600) / 60), s = Math.round(secs % 60);
    if (h) parts.push(h + ' h');
    if (m) parts.push(m + ' min');
    if (s || !parts.length) parts.push(s + ' s');
    return parts.join(' ');
  }

  // bestUnit splits seconds into an amount and the largest unit that divides it.
  function bestUnit(secs) {
    for (let i = UNITS.length - 1; i >= 0; i--) {
      const [u, , f] = UNITS[i];
      if (secs >= f && secs % f === 0) return [secs / f, u];
    }
    return [secs, 's'];
  }

  function countdown(endMs) {
    const left = Math.round((endMs - Date.now()) / 1000);
    if (left <= 0) return 'closing…';
    const h = Math.floor(left / 3600), m = Math.floor((left % 3600) / 60), s = left % 60;
    const pad = (n) => String(n).padStart(2, '0');
    return 'closes in ' + (h ? h + ':' + pad(m) : m) + ':' + pad(s);
  }

  const timeFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });
  function fmtTime(iso) {
    if (!iso) return '—';
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? String(iso) : timeFmt.format(d);
  }

  // durationInput is a number and a unit, labelled as one field.
  function durationInput(label, secs, key) {
    const [amount, unit] = bestUnit(secs);
    const num = el('input', { type: 'number', min: '1', step: '1', value: String(amount), 'aria-label': label + ' (amount)', 'data-key': key + ':amount', class: 'num' });
    const sel = el('select', { 'aria-label': label + ' (unit)', 'data-key': key + ':unit' },
      UNITS.map(([u, name]) => el('option', { value: u, selected: u === unit, text: name })));
    const wrap = el('span', { class: 'duration' }, num, sel);
    wrap.read = () => isoDuration(num.value, sel.value);
    wrap.focusTarget = num;
    return wrap;
  }

  // ---------- field errors ----------

  // The API names the field in its messages, e.g.
  // "properties.virtualMachines[0].ports[1].maxRequestAccessDuration: ...".
  function parseFieldPath(msg) {
    const m = /^(?:properties\.)?virtualMachines\[(\d+)\](?:\.ports\[(\d+)\](?:\.(\w+))?)?/.exec(msg);
    if (!m) return null;
    let field = m[3] || '';
    const rest = msg.slice(m[0].length);
    if (!field) {
      if (/source|prefix/i.test(rest)) field = 'source';
      else if (/maxRequestAccessDuration|duration|requested time|endTimeUtc|maximum|minimum/i.test(rest)) field = 'duration';
      else if (/protocol/i.test(rest)) field = 'protocol';
      else if (/port/i.test(rest)) field = 'number';
    }
    if (/^allowedSourceAddressPrefix/.test(field)) field = 'source';
    if (/maxRequestAccessDuration|duration|endTimeUtc/.test(field)) field = 'duration';
    return { vm: +m[1], port: m[2] === undefined ? -1 : +m[2], field };
  }

  // A form keeps one error region at its top and marks fields.
  function clearErrors(form) {
    for (const e of form.querySelectorAll('.field-error')) e.remove();
    for (const e of form.querySelectorAll('[aria-invalid]')) {
      e.removeAttribute('aria-invalid');
      e.removeAttribute('aria-describedby');
    }
    const top = form.querySelector('.form-error');
    top.textContent = '';
    top.hidden = true;
  }

  let errorSeq = 0;
  function fieldError(input, msg) {
    const id = 'err-' + (++errorSeq);
    const p = el('p', { class: 'field-error', id, text: msg });
    const cell = input.closest('td, .field') || input.parentElement;
    cell.append(p);
    input.setAttribute('aria-invalid', 'true');
    input.setAttribute('aria-describedby', id);
    return input;
  }

  function formError(form, msg) {
    const top = form.querySelector('.form-error');
    top.textContent = msg;
    top.hidden = false;
  }

  // ---------- tabs ----------

  function tabButtons() {
    return TABS.map((t) => $('tab-' + t)).filter((b) => !b.hidden);
  }

  function showTab(name, focus) {
    if (!TABS.includes(name) || $('tab-' + name).hidden) name = 'configured';
    state.tab = name;
    for (const t of TABS) {
      const b = $('tab-' + t);
      const on = t === name;
      b.setAttribute('aria-selected', String(on));
      b.tabIndex = on ? 0 : -1;
      $('panel-' + t).hidden = !on;
    }
    if (focus) $('tab-' + name).focus();
    if (location.hash !== '#' + name) history.replaceState(null, '', '#' + name);
    if (name === 'activity') loadActivity();
  }

  function setupTabs() {
    for (const b of document.querySelectorAll('[role=tab]')) {
      b.addEventListener('click', () => showTab(b.dataset.tab));
      b.addEventListener('keydown', (ev) => {
        const list = tabButtons();
        const i = list.indexOf(b);
        let j = -1;
        if (ev.key === 'ArrowRight') j = (i + 1) % list.length;
        else if (ev.key === 'ArrowLeft') j = (i - 1 + list.length) % list.length;
        else if (ev.key === 'Home') j = 0;
        else if (ev.key === 'End') j = list.length - 1;
        if (j >= 0) {
          ev.preventDefault();
          showTab(list[j].dataset.tab, true);
        }
      });
    }
    window.addEventListener('hashchange', () => showTab(location.hash.slice(1)));
  }

  // ---------- rendering tables ----------

  // renderInto replaces a container's content but keeps keyboard focus on
  // the element with the same data-key, so polling never steals focus.
  function renderInto(container, node) {
    const active = document.activeElement;
    const key = active && container.contains(active) ? active.getAttribute('data-key') : null;
    container.replaceChildren(node);
    if (key) {
      const again = container.querySelector('[data-key="' + CSS.escape(key) + '"]');
      if (again) again.focus();
    }
  }

  function table(caption, headers, rows, emptyText) {
    if (!rows.length) return el('p', { class: 'empty', text: emptyText });
    return el('table', {},
      el('caption', { class: 'visually-hidden', text: caption }),
      el('thead', {}, el('tr', {}, headers.map((h) => typeof h === 'string'
        ? el('th', { scope: 'col', text: h })
        : el('th', { scope: 'col', class: h.cls || null }, h.node)))),
      el('tbody', {}, rows));
  }

  function td(label, ...children) {
    return el('td', { 'data-label': label }, ...children);
  }

  function selectBox(kind, vm) {
    return el('input', {
      type: 'checkbox', 'aria-label': 'Select ' + vm.name, 'data-key': 'sel:' + kind + ':' + vm.id,
      'data-vm': vm.name, checked: state.selected[kind].has(vm.id),
      onchange: (ev) => {
        if (ev.target.checked) state.selected[kind].add(vm.id); else state.selected[kind].delete(vm.id);
        updateSelectionUI();
      },
    });
  }

  function selectAll(kind, vms) {
    const all = vms.length > 0 && vms.every((v) => state.selected[kind].has(v.id));
    return el('input', {
      type: 'checkbox', 'aria-label': 'Select all', 'data-key': 'selall:' + kind, checked: all,
      onchange: (ev) => {
        for (const v of vms) { if (ev.target.checked) state.selected[kind].add(v.id); else state.selected[kind].delete(v.id); }
        renderVMs(true);
      },
    });
  }

  function activityButton(vm) {
    return el('button', {
      type: 'button', class: 'link', 'data-key': 'act:' + vm.id, 'aria-label': 'Activity log of ' + vm.name,
      onclick: () => { $('activity-vm').value = vm.id; showTab('activity', true); },
    }, 'Activity');
  }

  function openPortsCell(vm) {
    if (!vm.openPorts.length) return el('span', { class: 'muted', text: 'none open' });
    return el('ul', { class: 'plain' }, vm.openPorts.map((p) => el('li', {},
      el('span', { class: 'badge open', text: p.number + '/' + p.protocol }), ' from ', (p.sources || []).join(', '), ' ',
      el('span', { class: 'countdown', 'data-end': p.endTimeUtc, text: countdown(Date.parse(p.endTimeUtc)) }))));
  }

  function portsSummary(ports) {
    return (ports || []).map((p) => p.number + '/' + (p.protocol === '*' ? 'any' : p.protocol)).join(', ');
  }

  // LOCKDOWN says in words where a VM of a policy stands, with the badge
  // class that colours it (the words carry the meaning; colour repeats it).
  const LOCKDOWN = {
    Configured: ['Locked', 'ok'],
    LockdownPending: ['Lockdown pending…', 'pending'],
    LockdownFailed: ['Lockdown failed', 'failed'],
    DenyRuleMissing: ['Deny rule missing', 'failed'],
    Releasing: ['Being removed', 'closed'],
  };

  // tabOf is the VM tab a VM belongs to: every VM a policy names is on
  // "Configured", whatever its lockdown's progress.
  function tabOf(v) {
    if (v.policy) return 'configured';
    return v.state === 'NotConfigured' ? 'notconfigured' : 'unsupported';
  }

  // settling says whether a VM's lockdown is on its way somewhere, so the
  // page polls fast until it arrives.
  function settling(v) {
    return Boolean(v.policy) && v.state !== 'Configured' && v.state !== 'LockdownFailed';
  }

  function lockdownCell(v) {
    const [label, cls] = LOCKDOWN[v.state] || [v.state, ''];
    // The reason of a locked VM repeats its first warning, listed below.
    const reason = v.state !== 'Configured' && v.reason ? v.reason : '';
    return [
      el('span', { class: 'badge lockdown ' + cls, 'data-lockdown': v.state, text: label }),
      reason ? el('div', { class: 'small', text: reason }) : null,
      (v.warnings || []).length ? el('ul', { class: 'plain warnings' }, v.warnings.map((w) => el('li', { class: 'small' },
        el('strong', { text: 'Warning: ' }), w))) : null,
    ];
  }

  // portsOf is a policy VM's ports: the VM list gives them for a locked VM
  // only, its policy for any.
  function portsOf(v) {
    return v.ports || state.policyPorts[v.id.toLowerCase()] || [];
  }

  function policyCell(v) {
    const ps = state.policies[v.policy];
    return [
      el('span', { class: 'nowrap', text: v.policy || '' }),
      ps && ps !== 'Succeeded' ? el('div', { class: 'muted small', 'data-provisioning': ps, text: 'provisioning: ' + ps }) : null,
    ];
  }

  function renderVMs(force) {
    const by = { configured: [], notconfigured: [], unsupported: [] };
    for (const v of state.vms) by[tabOf(v)].push(v);
    // A selection holds only VMs still on its tab.
    for (const k of Object.keys(state.selected)) {
      const here = new Set(by[k].map((v) => v.id));
      for (const id of state.selected[k]) if (!here.has(id)) state.selected[k].delete(id);
    }
    $('count-configured').textContent = '(' + by.configured.length + ')';
    $('count-notconfigured').textContent = '(' + by.notconfigured.length + ')';
    $('count-unsupported').textContent = '(' + by.unsupported.length + ')';

    const sig = JSON.stringify([state.vms, state.policies, state.policyPorts, [...state.selected.configured], [...state.selected.notconfigured]]);
    if (!force && sig === state.signatures.vms) return;
    state.signatures.vms = sig;

    renderInto($('table-configured'), table('Configured VMs',
      [{ label: '', node: selectAll('configured', by.configured), cls: 'sel' }, 'VM', 'Lockdown', 'Approved requests (7 days)', 'Last access', 'Last user', 'Connection details', 'JIT ports', 'Policy', ''],
      by.configured.map((v) => el('tr', { 'data-vm': v.name, 'data-state': v.state },
        td('Select', selectBox('configured', v)),
        td('VM', el('strong', { class: 'nowrap', text: v.name }), el('div', { class: 'muted small', text: v.location })),
        td('Lockdown', lockdownCell(v)),
        td('Approved requests (7 days)', String(v.approvedRequestsLast7Days)),
        td('Last access', fmtTime(v.lastAccessTimeUtc)),
        td('Last user', v.lastUser || '—'),
        td('Connection details', el('div', {}, 'Private IP ', el('code', { text: (v.privateIpAddresses || []).join(', ') || '—' })), openPortsCell(v)),
        td('JIT ports', portsSummary(portsOf(v))),
        td('Policy', policyCell(v)),
        td('', activityButton(v)))),
      'No VM has JIT yet. Enable it on the "Not configured" tab.'));

    renderInto($('table-notconfigured'), table('VMs without JIT',
      [{ label: '', node: selectAll('notconfigured', by.notconfigured), cls: 'sel' }, 'VM', 'Private IP', 'Network security groups', 'Reason', ''],
      by.notconfigured.map((v) => el('tr', { 'data-vm': v.name },
        td('Select', selectBox('notconfigured', v)),
        td('VM', el('strong', { class: 'nowrap', text: v.name }), el('div', { class: 'muted small', text: v.location })),
        td('Private IP', el('code', { text: (v.privateIpAddresses || []).join(', ') || '—' })),
        td('Network security groups', el('ul', { class: 'plain' }, v.networkSecurityGroups.map((n) => el('li', {}, lastSegment(n.id), el('span', { class: 'muted', text: ' (' + n.scope + ')' }))))),
        td('Reason', v.reason || ''),
        td('', activityButton(v)))),
      'Every supported VM has JIT.'));

    renderInto($('table-unsupported'), table('Unsupported VMs', ['VM', 'Private IP', 'Reason'],
      by.unsupported.map((v) => el('tr', { 'data-vm': v.name },
        td('VM', el('strong', { class: 'nowrap', text: v.name }), el('div', { class: 'muted small', text: v.location })),
        td('Private IP', el('code', { text: (v.privateIpAddresses || []).join(', ') || '—' })),
        td('Reason', v.reason || ''))),
      'No unsupported VMs.'));

    const names = JSON.stringify(state.vms.map((v) => [v.id, v.name]));
    for (const sel of names === state.signatures.vmNames ? [] : [$('requests-vm'), $('activity-vm')]) {
      const cur = sel.value;
      sel.replaceChildren(el('option', { value: '', text: 'All VMs' }), ...state.vms.map((v) => el('option', { value: v.id, text: v.name })));
      sel.value = cur;
    }
    state.signatures.vmNames = names;
    updateSelectionUI();
  }

  function updateSelectionUI() {
    const nc = state.selected.configured.size, nn = state.selected.notconfigured.size;
    $('selected-configured').textContent = nc ? nc + ' selected' : 'Select VMs in the table';
    $('selected-notconfigured').textContent = nn ? nn + ' selected' : 'Select VMs in the table';
    $('btn-request').disabled = nc === 0;
    $('btn-edit').disabled = nc !== 1;
    $('btn-disable').disabled = nc === 0;
    $('btn-enable').disabled = nn === 0;
  }

  // ---------- requests ----------

  // requestLabel is what a person reads: Pending, Opening, Open, Closed,
  // Revoked, Failed. The grant statuses (Initiating, Initiated, ...) are shown
  // beside it.
  function requestLabel(r) {
    const gs = (r.grants || []).map((g) => g.status);
    if (r.status === 'Pending') return 'Pending';
    if (r.status === 'Denied') return 'Denied';
    if (r.status === 'Expired') return 'Expired'; // waited too long for approval
    if (gs.includes('Failed')) return 'Failed';
    const ended = gs.every((s) => s === 'Closed' || s === 'Revoked');
    if (r.status === 'Closed' || ended) return gs.includes('Revoked') ? 'Revoked' : 'Closed';
    if (gs.includes('Initiating')) return 'Opening';
    return 'Open';
  }

  function isLive(r) {
    const l = requestLabel(r);
    return l === 'Pending' || l === 'Opening' || l === 'Open';
  }

  function renderRequests(force) {
    const reqs = state.requests;
    const live = reqs.filter(isLive).length;
    $('count-requests').textContent = live ? '(' + live + ' active)' : '';
    const sig = JSON.stringify(reqs);
    if (!force && sig === state.signatures.requests) return;
    state.signatures.requests = sig;
    renderInto($('table-requests'), table('Access requests',
      ['Requested', 'By', 'Access', 'Status', 'Justification', ''],
      reqs.map((r) => {
        const label = requestLabel(r);
        const grantStatuses = [...new Set((r.grants || []).map((g) => g.status))].join(', ');
        return el('tr', { 'data-request-id': r.id },
          td('Requested', fmtTime(r.startTimeUtc), el('div', { class: 'muted small', text: 'id ' + r.id })),
          td('By', r.requestor || r.requestorId || ''),
          td('Access', el('ul', { class: 'plain' }, (r.grants || []).map((g) => el('li', {},
            el('strong', { text: lastSegment(g.vm) }), ' ', (g.ports || []).join(', ') + '/' + (g.protocol === '*' ? 'any' : g.protocol),
            ' from ', (g.sources || []).join(', '),
            el('div', { class: 'muted small' }, 'until ' + fmtTime(g.endTimeUtc),
              (g.status === 'Initiated' || g.status === 'Initiating') ? [' · ', el('span', { class: 'countdown', 'data-end': g.endTimeUtc, text: countdown(Date.parse(g.endTimeUtc)) })] : null,
              g.statusReason ? ' · ' + g.statusReason : null))))),
          td('Status', el('span', { class: 'badge status ' + label.toLowerCase(), 'data-status': label, text: label }),
            grantStatuses ? el('div', { class: 'muted small', text: 'grant: ' + grantStatuses }) : null),
          td('Justification', r.justification || '—'),
          td('', el('div', { class: 'row-actions' },
            isLive(r) && label !== 'Pending' ? el('button', { type: 'button', 'data-key': 'extend:' + r.id, 'aria-label': 'Extend request ' + r.id, onclick: () => openExtend(r) }, 'Extend') : null,
            isLive(r) ? el('button', { type: 'button', class: 'danger', 'data-key': 'revoke:' + r.id, 'aria-label': 'Revoke request ' + r.id, onclick: (ev) => revoke(r, ev.target) }, 'Revoke') : null)));
      }),
      'No requests match.'));
  }

  async function revoke(r, button) {
    button.disabled = true;
    showPageError('');
    try {
      await api('POST', '/api/v1/requests/' + encodeURIComponent(r.id) + '/revoke');
      say('Request ' + r.id + ' revoked: its access is being closed.');
    } catch (e) {
      showPageError('Revoking request ' + r.id + ' failed: ' + e.message);
      button.disabled = false;
    }
    refresh();
  }

  function openExtend(r) {
    const slot = $('slot-requests');
    const first = (r.grants || [])[0];
    const left = first ? Math.max(60, Math.round((Date.parse(first.endTimeUtc) - Date.now()) / 1000)) : 1800;
    const dur = durationInput('New duration from now', Math.min(1800, left) || 1800, 'extend-dur');
    const form = el('form', { class: 'card', 'aria-labelledby': 'extend-title', novalidate: true },
      el('h2', { id: 'extend-title', text: 'Extend request ' + r.id }),
      el('div', { class: 'form-error', role: 'alert', hidden: true }),
      el('div', { class: 'field' }, el('span', { class: 'label', text: 'Keep access open for' }), dur, el('span', { class: 'hint', text: ' from now, within each port\'s maximum counted from the request\'s start' })),
      el('div', { class: 'actions' },
        el('button', { type: 'submit', class: 'primary', text: 'Extend' }),
        el('button', { type: 'button', text: 'Cancel', onclick: () => { slot.replaceChildren(); } })));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      clearErrors(form);
      try {
        await api('POST', '/api/v1/requests/' + encodeURIComponent(r.id) + '/extend', { duration: dur.read() });
        slot.replaceChildren();
        say('Request ' + r.id + ' extended.');
        refresh();
      } catch (e) {
        if (/duration|endTimeUtc|maximum/i.test(e.message)) fieldError(dur.focusTarget, e.message).focus();
        else formError(form, e.message);
      }
    });
    slot.replaceChildren(form);
    dur.focusTarget.focus();
  }

  // ---------- request access ----------

  function openRequestForm() {
    const slot = $('slot-configured');
    const vms = state.vms.filter((v) => v.policy && state.selected.configured.has(v.id));
    if (!vms.length) return;
    const myIP = (state.me && state.me.address) || '';
    const rows = []; // {vm, port, check, source, range, dur}
    const fieldsets = vms.map((vm) => el('fieldset', { class: 'vm-ports' },
      el('legend', {}, vm.name, el('span', { class: 'muted', text: ' · ' + (vm.privateIpAddresses || []).join(', ') })),
      el('table', { class: 'ports' },
        el('thead', {}, el('tr', {}, ['Open', 'Port', 'Allowed source', 'Time range'].map((h) => el('th', { scope: 'col', text: h })))),
        el('tbody', {}, portsOf(vm).map((p) => {
          const key = 'req:' + vm.id + ':' + p.number + ':' + p.protocol;
          const max = parseISODuration(p.maxRequestAccessDuration);
          const allowed = p.allowedSourceAddressPrefixes || [p.allowedSourceAddressPrefix || '*'];
          const anySource = allowed.includes('*');
          const check = el('input', { type: 'checkbox', id: key, 'data-key': key, 'data-port': String(p.number) });
          const source = el('select', { 'aria-label': 'Allowed source for port ' + p.number + ' on ' + vm.name, 'data-key': key + ':src' },
            el('option', { value: 'my', selected: anySource, text: 'My IP' + (myIP ? ' (' + myIP + ')' : '') }),
            el('option', { value: 'range', selected: !anySource, text: 'IP range' }));
          const range = el('input', { type: 'text', class: 'range', 'aria-label': 'IP addresses or ranges for port ' + p.number + ' on ' + vm.name,
            placeholder: 'e.g. 203.0.113.0/24', value: anySource ? '' : allowed.join(', '), hidden: anySource, 'data-key': key + ':range' });
          source.addEventListener('change', () => { range.hidden = source.value !== 'range'; if (!range.hidden) range.focus(); });
          const dur = durationInput('Time range for port ' + p.number + ' on ' + vm.name, Number.isFinite(max) ? max : DEFAULT_MAX, key + ':dur');
          rows.push({ vm, port: p, check, source, range, dur });
          return el('tr', {},
            td('Open', check),
            td('Port', el('label', { for: key }, el('strong', { text: String(p.number) }), ' ' + (p.protocol === '*' ? 'any' : p.protocol))),
            td('Allowed source', el('div', { class: 'inline' }, source, range), el('div', { class: 'hint', text: 'allowed: ' + allowed.join(', ') })),
            td('Time range', dur, el('div', { class: 'hint', text: 'at most ' + humanDuration(max) })));
        })))));
    const justification = el('textarea', { id: 'req-justification', rows: '2', 'data-key': 'req:just', placeholder: 'What you will do, ticket number…' });
    const form = el('form', { class: 'card', id: 'request-form', 'aria-labelledby': 'request-title', novalidate: true },
      el('h2', { id: 'request-title', text: 'Request access' }),
      el('p', { class: 'hint', text: 'Tick the ports to open. Access starts at once and closes by itself when the time range is over.' }),
      el('div', { class: 'form-error', role: 'alert', hidden: true }),
      fieldsets,
      el('div', { class: 'field' }, el('label', { for: 'req-justification', text: 'Justification' }), justification),
      el('div', { class: 'actions' },
        el('button', { type: 'submit', class: 'primary', text: 'Open ports' }),
        el('button', { type: 'button', text: 'Cancel', onclick: () => { slot.replaceChildren(); $('btn-request').focus(); } })));
    form.addEventListener('submit', (ev) => { ev.preventDefault(); submitRequest(form, rows, justification.value.trim()); });
    slot.replaceChildren(form);
    const first = rows[0];
    if (first) first.check.focus();
  }

  async function submitRequest(form, rows, justification) {
    clearErrors(form);
    const chosen = rows.filter((r) => r.check.checked);
    if (!chosen.length) {
      formError(form, 'Tick at least one port to open.');
      if (rows[0]) rows[0].check.focus();
      return;
    }
    // One request per policy; keep which row each body entry came from.
    const byPolicy = new Map();
    for (const r of chosen) {
      const name = r.vm.policy;
      if (!byPolicy.has(name)) byPolicy.set(name, { body: { virtualMachines: [], justification }, rows: [] });
      const g = byPolicy.get(name);
      let i = g.body.virtualMachines.findIndex((v) => v.id === r.vm.id);
      if (i < 0) {
        i = g.body.virtualMachines.length;
        g.body.virtualMachines.push({ id: r.vm.id, ports: [] });
        g.rows.push([]);
      }
      const port = { number: r.port.number, duration: r.dur.read() };
      if (r.source.value === 'range') {
        const list = r.range.value.split(/[\s,]+/).filter(Boolean);
        if (list.length === 1) port.allowedSourceAddressPrefix = list[0];
        else if (list.length > 1) port.allowedSourceAddressPrefixes = list;
        else {
          fieldError(r.range, 'Give an IP address or range, or choose My IP.').focus();
          return;
        }
      }
      g.body.virtualMachines[i].ports.push(port);
      g.rows[i].push(r);
    }
    const sent = [];
    for (const [policy, g] of byPolicy) {
      try {
        const { data } = await api('POST', '/api/v1/policies/' + encodeURIComponent(policy) + '/initiate', g.body);
        sent.push(data.id);
      } catch (e) {
        const where = parseFieldPath(e.message);
        const row = where && g.rows[where.vm] && g.rows[where.vm][where.port];
        if (row) {
          const target = where.field === 'source' ? (row.source.value === 'range' ? row.range : row.source)
            : where.field === 'duration' ? row.dur.focusTarget : row.check;
          fieldError(target, e.message).focus();
          formError(form, (sent.length ? 'Sent ' + sent.join(', ') + '; ' : '') + 'A port needs a change: see the marked field.');
        } else {
          formError(form, (sent.length ? 'Sent ' + sent.join(', ') + '; ' : '') + e.message);
          form.querySelector('.form-error').focus();
        }
        refresh();
        return;
      }
    }
    $('slot-configured').replaceChildren();
    state.selected.configured.clear();
    say('Access requested (' + sent.join(', ') + '). Follow it on the Requests tab.');
    await refresh();
    showTab('requests', true);
  }

  // ---------- policy editor ----------

  // policyNameFor names the policy of a VM after the VM: one policy per VM.
  function policyNameFor(vm) {
    let n = vm.name.replace(/[^A-Za-z0-9._-]/g, '-').replace(/^[^A-Za-z0-9]+/, '');
    return (n || 'vm').slice(0, 64);
  }

  // cleanPorts keeps what a PUT takes of a policy's ports, approval rules
  // included: dropping one would let requests through without an approver.
  function cleanPorts(ports) {
    return (ports || []).map((p) => {
      const o = { number: p.number, protocol: p.protocol, maxRequestAccessDuration: p.maxRequestAccessDuration };
      if (p.allowedSourceAddressPrefixes && p.allowedSourceAddressPrefixes.length) o.allowedSourceAddressPrefixes = p.allowedSourceAddressPrefixes;
      else o.allowedSourceAddressPrefix = p.allowedSourceAddressPrefix || '*';
      if (p.approval) o.approval = p.approval;
      return o;
    });
  }

  // policyProperties is a policy's properties to PUT back with other VMs:
  // its approval rule and requesters stay as they are.
  function policyProperties(got, vms) {
    const props = { virtualMachines: vms };
    if (got.properties.approval) props.approval = got.properties.approval;
    if (got.properties.requesters) props.requesters = got.properties.requesters;
    return props;
  }

  function openPolicyEditor(kind, vms, ports) {
    const slot = $('slot-' + kind);
    const enabling = kind === 'notconfigured';
    const tbody = el('tbody', {});
    const rows = [];
    let seq = 0;
    function addRow(p, focus) {
      const k = 'pol:' + (++seq);
      const number = el('input', { type: 'number', min: '1', max: '65535', class: 'num port', value: p.number ? String(p.number) : '', 'aria-label': 'Port number', 'data-key': k + ':num' });
      const protocol = el('select', { 'aria-label': 'Protocol', 'data-key': k + ':proto' },
        [['TCP', 'TCP'], ['UDP', 'UDP'], ['*', 'Any']].map(([v, t]) => el('option', { value: v, selected: (p.protocol || 'TCP') === v, text: t })));
      const src = p.allowedSourceAddressPrefixes && p.allowedSourceAddressPrefixes.length ? p.allowedSourceAddressPrefixes : [p.allowedSourceAddressPrefix || '*'];
      const sources = el('input', { type: 'text', class: 'sources', value: src.join(', '), 'aria-label': 'Allowed source addresses', placeholder: '* for any, or 203.0.113.0/24, …', 'data-key': k + ':src' });
      const max = durationInput('Maximum request time', parseISODuration(p.maxRequestAccessDuration) || DEFAULT_MAX, k + ':max');
      const row = { number, protocol, sources, max };
      const tr = el('tr', {},
        td('Port', number), td('Protocol', protocol), td('Allowed sources', sources), td('Maximum request time', max),
        td('', el('button', {
          type: 'button', class: 'link danger', 'data-key': k + ':rm',
          onclick: () => {
            const i = rows.indexOf(row);
            rows.splice(i, 1);
            tr.remove();
            const next = rows[i] || rows[i - 1];
            (next ? next.number : addBtn).focus();
          },
        }, 'Remove')));
      // The remove button names its port, also after the number changes.
      const rm = tr.querySelector('button');
      const name = () => rm.setAttribute('aria-label', 'Remove port ' + (number.value || '(new)'));
      number.addEventListener('input', name);
      name();
      row.tr = tr;
      rows.push(row);
      tbody.append(tr);
      if (focus) number.focus();
    }
    const addBtn = el('button', { type: 'button', text: 'Add port', onclick: () => addRow({ protocol: 'TCP', allowedSourceAddressPrefix: '*', maxRequestAccessDuration: 'PT3H' }, true) });
    for (const p of ports) addRow(p, false);
    const title = enabling ? 'Enable JIT on ' + vms.map((v) => v.name).join(', ') : 'Ports of ' + vms[0].name;
    const form = el('form', { class: 'card', id: 'policy-form', 'aria-labelledby': 'policy-title', novalidate: true },
      el('h2', { id: 'policy-title', text: title }),
      el('p', { class: 'hint', text: enabling
        ? 'Defender\'s defaults: SSH 22, RDP 3389, WinRM 5985 and 5986, from any source, for at most 3 hours. Each VM gets a policy named after it.'
        : 'Policy ' + vms[0].policy + '. Changing ports rewrites the VM\'s deny rules.' }),
      el('div', { class: 'form-error', role: 'alert', hidden: true }),
      el('table', { class: 'ports' },
        el('thead', {}, el('tr', {}, ['Port', 'Protocol', 'Allowed sources', 'Maximum request time', ''].map((h) => el('th', { scope: 'col', text: h })))),
        tbody),
      el('div', { class: 'actions' },
        addBtn,
        el('span', { class: 'spacer' }),
        el('button', { type: 'submit', class: 'primary', text: enabling ? 'Enable JIT' : 'Save ports' }),
        el('button', { type: 'button', text: 'Cancel', onclick: () => { slot.replaceChildren(); $(enabling ? 'btn-enable' : 'btn-edit').focus(); } })));
    form.addEventListener('submit', (ev) => { ev.preventDefault(); savePolicy(form, kind, vms, rows); });
    slot.replaceChildren(form);
    if (rows[0]) rows[0].number.focus(); else addBtn.focus();
  }

  function readPorts(rows) {
    return rows.map((r) => {
      const p = { number: parseInt(r.number.value, 10) || 0, protocol: r.protocol.value, maxRequestAccessDuration: r.max.read() };
      const list = r.sources.value.split(/[\s,]+/).filter(Boolean);
      if (list.length > 1) p.allowedSourceAddressPrefixes = list;
      else p.allowedSourceAddressPrefix = list[0] || '*';
      return p;
    });
  }

  // putVMPorts writes ports for one VM: into its current policy, or into a
  // policy named after it (added to that policy if it exists already). It
  // returns the policy's name and provisioningState: the API answers before
  // the deny rules are written.
  async function putVMPorts(vm, ports) {
    const name = vm.policy || policyNameFor(vm);
    let body = { kind: 'Basic', properties: { virtualMachines: [] } };
    let etag = null;
    try {
      const got = await api('GET', '/api/v1/policies/' + encodeURIComponent(name));
      etag = got.etag;
      body.properties = policyProperties(got.data, got.data.properties.virtualMachines.map((v) => ({ id: v.id, ports: cleanPorts(v.ports) })));
    } catch (e) {
      if (e.status !== 404) throw Object.assign(e, { vmIndex: -1 });
    }
    let index = body.properties.virtualMachines.findIndex((v) => v.id.toLowerCase() === vm.id.toLowerCase());
    if (index < 0) {
      index = body.properties.virtualMachines.length;
      body.properties.virtualMachines.push({ id: vm.id, ports });
    } else {
      // The editor does not show a port's own approval rule: keep it.
      const old = body.properties.virtualMachines[index].ports;
      body.properties.virtualMachines[index].ports = ports.map((p) => {
        const was = old.find((o) => o.number === p.number && o.protocol === p.protocol);
        return was && was.approval ? Object.assign({}, p, { approval: was.approval }) : p;
      });
    }
    let put;
    try {
      put = await api('PUT', '/api/v1/policies/' + encodeURIComponent(name), body, etag ? { 'If-Match': etag } : undefined);
    } catch (e) {
      throw Object.assign(e, { vmIndex: index });
    }
    return { name, provisioningState: (put.data && put.data.properties && put.data.properties.provisioningState) || 'Updating' };
  }

  async function savePolicy(form, kind, vms, rows) {
    clearErrors(form);
    const ports = readPorts(rows);
    const done = [];
    const states = new Set();
    for (const vm of vms) {
      try {
        const put = await putVMPorts(vm, ports);
        done.push(vm.name + ' → policy ' + put.name);
        states.add(put.provisioningState);
      } catch (e) {
        const where = parseFieldPath(e.message);
        const prefix = (vms.length > 1 ? vm.name + ': ' : '') + (done.length ? '(saved ' + done.join('; ') + ') ' : '');
        const row = where && where.vm === e.vmIndex && rows[where.port];
        if (row) {
          const target = { number: row.number, protocol: row.protocol, source: row.sources, duration: row.max.focusTarget }[where.field] || row.number;
          fieldError(target, e.message).focus();
          formError(form, prefix + 'A port needs a change: see the marked field.');
        } else {
          formError(form, prefix + e.message);
        }
        refresh();
        return;
      }
    }
    $('slot-' + kind).replaceChildren();
    state.selected[kind].clear();
    let progress = ' Lockdown in progress: the deny rules are being written; the Lockdown column shows "Locked" once they are in place.';
    if (states.has('Failed')) progress = ' The lockdown failed: the Lockdown column says why.';
    else if (states.size === 1 && states.has('Succeeded')) progress = ' The deny rules are in place.';
    say((kind === 'notconfigured' ? 'Enabling JIT: ' : 'Ports saved: ') + done.join('; ') + '.' + progress);
    await refresh();
    if (kind === 'notconfigured') showTab('configured', true);
  }

  function openDisableConfirm() {
    const slot = $('slot-configured');
    const vms = state.vms.filter((v) => v.policy && state.selected.configured.has(v.id));
    if (!vms.length) return;
    const yes = el('button', { type: 'button', class: 'danger', text: 'Disable JIT' });
    const box = el('div', { class: 'card warn', role: 'group', 'aria-labelledby': 'disable-title' },
      el('h2', { id: 'disable-title', text: 'Disable JIT on ' + vms.map((v) => v.name).join(', ') + '?' }),
      el('p', { text: 'Their deny rules are removed and any open access is revoked. Their management ports are then governed by the other rules of their network security groups.' }),
      el('div', { class: 'form-error', role: 'alert', hidden: true }),
      el('div', { class: 'actions' }, yes, el('button', { type: 'button', text: 'Cancel', onclick: () => { slot.replaceChildren(); $('btn-disable').focus(); } })));
    yes.addEventListener('click', async () => {
      yes.disabled = true;
      clearErrors(box);
      for (const vm of vms) {
        try {
          const got = await api('GET', '/api/v1/policies/' + encodeURIComponent(vm.policy));
          const rest = got.data.properties.virtualMachines.filter((v) => v.id.toLowerCase() !== vm.id.toLowerCase());
          if (rest.length === 0) {
            await api('DELETE', '/api/v1/policies/' + encodeURIComponent(vm.policy), undefined, { 'If-Match': got.etag });
          } else {
            await api('PUT', '/api/v1/policies/' + encodeURIComponent(vm.policy),
              { kind: 'Basic', properties: policyProperties(got.data, rest.map((v) => ({ id: v.id, ports: cleanPorts(v.ports) }))) }, { 'If-Match': got.etag });
          }
          state.selected.configured.delete(vm.id);
        } catch (e) {
          formError(box, vm.name + ': ' + e.message);
          yes.disabled = false;
          refresh();
          return;
        }
      }
      slot.replaceChildren();
      say('Disabling JIT on ' + vms.map((v) => v.name).join(', ') + ': removal in progress. Their deny rules are being removed; each VM moves to "Not configured" once its rules are gone.');
      refresh();
    });
    slot.replaceChildren(box);
    yes.focus();
  }

  // ---------- activity log ----------

  function activityQuery() {
    const q = new URLSearchParams();
    const vm = $('activity-vm').value;
    if (vm) q.set('vm', vm);
    for (const k of ['from', 'to']) {
      const v = $('activity-' + k).value;
      if (v) {
        const d = new Date(v);
        if (!Number.isNaN(d.getTime())) q.set(k, d.toISOString());
      }
    }
    return q;
  }

  async function loadActivity() {
    const q = activityQuery();
    const csv = new URLSearchParams(q);
    csv.set('format', 'csv');
    $('activity-csv').href = '/api/v1/audit?' + csv.toString();
    q.set('limit', '500');
    const err = $('activity-error');
    try {
      const { data } = await api('GET', '/api/v1/audit?' + q.toString());
      err.hidden = true;
      const events = data.value || [];
      renderInto($('table-activity'), table('Activity log', ['Time', 'Action', 'Result', 'By', 'VM', 'NSG', 'Ports', 'Sources', 'Detail'],
        events.map((e) => el('tr', { 'data-action': e.action },
          td('Time', fmtTime(e.timeUtc)),
          td('Action', el('span', { class: 'badge action', text: e.action })),
          td('Result', el('span', { class: 'badge ' + (e.result === 'success' ? 'ok' : 'failed'), text: e.result })),
          td('By', el('span', { class: 'nowrap', text: e.actor || '' })),
          td('VM', el('span', { class: 'nowrap', title: e.vm || '', text: lastSegment(e.vm) || '—' })),
          td('NSG', el('span', { class: 'nowrap', title: e.nsg || '', text: lastSegment(e.nsg) || '—' })),
          td('Ports', (e.ports || []).join(', ') + (e.protocol ? ' ' + (e.protocol === '*' ? 'any' : e.protocol) : '')),
          td('Sources', (e.sources || []).join(', ')),
          td('Detail', e.detail || ''))),
        'No activity in this range.'));
    } catch (e) {
      err.textContent = e.message;
      err.hidden = false;
    }
  }

  // ---------- approvals (shown only to approvers, when something waits) ----------

  function renderApprovals() {
    const show = (has('JIT.Approver')) && state.pending.length > 0;
    const tab = $('tab-approvals');
    tab.hidden = !show;
    if (!show) {
      if (state.tab === 'approvals') showTab('requests');
      return;
    }
    $('count-approvals').textContent = '(' + state.pending.length + (state.pendingMore ? '+' : '') + ')';
    const sig = JSON.stringify(state.pending);
    if (sig === state.signatures.approvals) return;
    state.signatures.approvals = sig;
    renderInto($('table-approvals'), table('Requests waiting for approval', ['Requested', 'By', 'Access', 'Justification', ''],
      state.pending.map((r) => el('tr', { 'data-request-id': r.id },
        td('Requested', fmtTime(r.startTimeUtc)),
        td('By', r.requestor || r.requestorId || ''),
        td('Access', (r.grants || []).map((g) => lastSegment(g.vm) + ' ' + (g.ports || []).join(', ') + ' from ' + (g.sources || []).join(', ')).join('; ')),
        td('Justification', r.justification || '—'),
        td('', el('div', { class: 'row-actions' },
          el('button', { type: 'button', class: 'primary', 'data-key': 'approve:' + r.id, onclick: () => decide(r, 'approve') }, 'Approve'),
          el('button', { type: 'button', class: 'danger', 'data-key': 'deny:' + r.id, onclick: () => decide(r, 'deny') }, 'Deny'))))),
      'Nothing waits for approval.'));
  }

  async function decide(r, verb) {
    const err = $('approvals-error');
    err.hidden = true;
    try {
      await api('POST', '/api/v1/requests/' + encodeURIComponent(r.id) + '/' + verb);
      say('Request ' + r.id + (verb === 'approve' ? ' approved.' : ' denied.'));
    } catch (e) {
      err.textContent = e.message;
      err.hidden = false;
    }
    refresh();
  }

  // ---------- refresh loop ----------

  function requestsQuery() {
    const q = new URLSearchParams({ limit: '100' });
    if ($('requests-vm').value) q.set('vm', $('requests-vm').value);
    if ($('requests-status').value) q.set('status', $('requests-status').value);
    return q;
  }

  let refreshing = null;
  function refresh() {
    if (!refreshing) refreshing = doRefresh().finally(() => { refreshing = null; });
    return refreshing;
  }

  async function doRefresh() {
    const asked = Date.now();
    try {
      const [vms, pols, reqs, pending] = await Promise.all([
        apiAll('/api/v1/vms?limit=1000'),
        apiAll('/api/v1/policies?limit=1000').catch(() => ({ data: { value: [] } })),
        api('GET', '/api/v1/requests?' + requestsQuery().toString()),
        // One page, the newest; the count says when more wait.
        has('JIT.Approver') ? api('GET', '/api/v1/requests?status=Pending&limit=100').catch(() => ({ data: { value: [] } })) : Promise.resolve({ data: { value: [] } }),
      ]);
      state.vms = (vms.data.value || []).slice().sort((a, b) => a.name.localeCompare(b.name));
      state.policies = {};
      state.policyPorts = {};
      for (const p of pols.data.value || []) {
        state.policies[p.name] = p.properties.provisioningState;
        for (const v of p.properties.virtualMachines || []) state.policyPorts[v.id.toLowerCase()] = v.ports;
      }
      state.requests = (reqs.data.value || []).slice().sort((a, b) => String(b.startTimeUtc).localeCompare(String(a.startTimeUtc)));
      state.pending = pending.data.value || [];
      state.pendingMore = !!pending.data.nextLink;
      renderVMs(false);
      // What the VM tabs show is as of this moment (the API's "as last seen").
      document.body.setAttribute('data-vms-asked', String(asked));
      renderRequests(false);
      renderApprovals();
      showPageError('');
    } catch (e) {
      showPageError('Could not load: ' + e.message);
    }
    schedule();
  }

  // Poll fast while access or a lockdown is changing, slowly otherwise, not
  // at all in a hidden tab.
  function schedule() {
    clearTimeout(state.pollTimer);
    if (document.hidden) return;
    const busy = state.requests.some(isLive) || state.vms.some((v) => (v.openPorts && v.openPorts.length) || settling(v));
    state.pollTimer = setTimeout(refresh, busy ? 1000 : 5000);
  }

  function tick() {
    for (const e of document.querySelectorAll('[data-end]')) e.textContent = countdown(Date.parse(e.getAttribute('data-end')));
  }

  function renderMe() {
    const me = state.me;
    const dl = $('whoami');
    dl.replaceChildren(
      el('div', {}, el('dt', { text: 'Signed in as' }), el('dd', { text: me.name || me.id })),
      el('div', {}, el('dt', { text: 'Roles' }), el('dd', { text: (me.roles || []).join(', ') || 'none' })),
      el('div', {}, el('dt', { text: 'My IP' }), el('dd', {}, el('code', { text: me.address || 'unknown' }))));
    for (const b of document.querySelectorAll('[data-needs]')) {
      const need = b.dataset.needs === 'admin' ? 'JIT.Admin' : 'JIT.Requester';
      b.hidden = !has(need);
    }
  }

  async function start() {
    setupTabs();
    $('btn-request').addEventListener('click', openRequestForm);
    $('btn-edit').addEventListener('click', () => {
      const vm = state.vms.find((v) => v.policy && state.selected.configured.has(v.id));
      if (vm) openPolicyEditor('configured', [vm], portsOf(vm));
    });
    $('btn-disable').addEventListener('click', openDisableConfirm);
    $('btn-enable').addEventListener('click', () => {
      const vms = state.vms.filter((v) => tabOf(v) === 'notconfigured' && state.selected.notconfigured.has(v.id));
      if (vms.length) openPolicyEditor('notconfigured', vms, DEFAULT_PORTS.map((n) => ({ number: n, protocol: 'TCP', allowedSourceAddressPrefix: '*', maxRequestAccessDuration: 'PT3H' })));
    });
    $('requests-filter').addEventListener('change', () => refresh());
    $('requests-filter').addEventListener('submit', (ev) => { ev.preventDefault(); refresh(); });
    $('activity-filter').addEventListener('submit', (ev) => { ev.preventDefault(); loadActivity(); });
    $('activity-vm').addEventListener('change', loadActivity);
    document.addEventListener('visibilitychange', () => { if (!document.hidden) refresh(); });
    updateSelectionUI();
    try {
      state.me = (await api('GET', '/api/v1/me')).data;
      renderMe();
    } catch (e) {
      showPageError('Could not tell who you are: ' + e.message);
      state.me = { roles: [] };
    }
    await refresh();
    showTab(location.hash.slice(1) || 'configured');
    setInterval(tick, 1000);
    document.body.setAttribute('data-ready', 'true');
  }

  start();
})();
