// A stand-in for Kiungo's admin API (/v1/...) with fake data, for
// developing the dashboard and its browser test without the Rust service.
// No dependencies: node:http only.
//
//   node mock-server.mjs [--port 0] [--host 127.0.0.1]
//
// Prints one line `listening http://HOST:PORT` once it accepts connections.
// Tokens: "operator-token" (ops-olga, operator), "viewer-token"
// (viewer-vic, viewer), "app-token" (cht-app, app). Dead letters 3 and 5
// are replayed successfully; 4 (not_json) is parked again, like the real
// service does with a body that is still not JSON.

import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const DASHBOARD = path.resolve(here, '../../bridge/src/admin/dashboard.html');

function arg(name, dflt) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : dflt;
}

const TOKENS = {
  'operator-token': { name: 'ops-olga', role: 'operator' },
  'viewer-token': { name: 'viewer-vic', role: 'viewer' },
  'app-token': { name: 'cht-app', role: 'app' },
};

const started = Date.now();
const now = () => Date.now();
const counters = {
  ingest: { received: 1200, stored: 1100, duplicate: 60, stale: 2, replaced: 20, superseded: 1, parked: 17 },
  delivery: { fhir: { delivered: 1050, retried: 40, parked: 3 }, dhis2: { delivered: 830, retried: 5, parked: 2 } },
};
// Counters grow while the mock runs, so that the dashboard shows rates.
setInterval(() => {
  const n = 3 + Math.floor(Math.random() * 6);
  counters.ingest.received += n + 1;
  counters.ingest.stored += n;
  counters.ingest.duplicate += 1;
  counters.delivery.fhir.delivered += n;
  counters.delivery.dhis2.delivered += Math.floor(n / 2);
}, 1000).unref();

const t0 = now();
const deadLetters = [
  { id: 1, stage: 'fhir', source: 'commcare', queue: null, message_id: 'outbox:77', event_id: 'e-77', mapping: 'commcare-immunization', reason_code: 'fhir_rejected', reason: 'HTTP 422 from FHIR server: OperationOutcome: Patient.birthDate: value "2024-13-01" is not a valid date', seen_count: 1, replay_count: 0, received_at: t0 - 3600e3 },
  { id: 2, stage: 'dhis2', source: 'cht', queue: null, message_id: null, event_id: null, mapping: 'cht-anc', reason_code: 'dhis2_conflict', reason: 'E7619: Value must be zero or one for data element Y53Jcc9LBYh (boolean) — refused for period 202511, org unit DiszpKrYNg8', seen_count: 4, replay_count: 1, received_at: t0 - 7200e3 },
  { id: 3, stage: 'ingest', source: 'cht', queue: 'kiungo.cht', message_id: 'm-3', event_id: 'e-3', mapping: 'cht-anc', reason_code: 'missing_field', reason: 'mapping cht-anc: field fields.visit_date: missing in event e-3', seen_count: 1, replay_count: 0, received_at: t0 - 600e3 },
  { id: 4, stage: 'ingest', source: 'kobo', queue: 'kiungo.kobo', message_id: 'm-4', event_id: null, mapping: null, reason_code: 'not_json', reason: 'payload is not JSON: expected value at line 1 column 1 <img src=x onerror="document.title=\'pwned\'"><script>document.title="pwned"</script>', seen_count: 2, replay_count: 0, received_at: t0 - 60e3 },
  { id: 5, stage: 'ingest', source: 'inhouse', queue: 'kiungo.inhouse', message_id: 'a-very-long-message-id-without-any-spaces-0123456789abcdef0123456789abcdef', event_id: null, mapping: null, reason_code: 'no_mapping', reason: 'no mapping matches source inhouse and this event: ' + 'x'.repeat(300), seen_count: 9, replay_count: 0, received_at: t0 - 5e3 },
].map((d) => ({ state: 'open', ...d }));
const audit = [];

function destinations() {
  return [
    { name: 'fhir', configured: true, circuit: 'closed', last_success_ms: now() - 4000, last_error: { at_ms: now() - 900e3, message: 'HTTP 503 Service Unavailable from http://fhir.example/fhir' }, pending: 3, retrying: 1, parked: 3 },
    { name: 'dhis2', configured: true, circuit: 'half_open', last_success_ms: now() - 1800e3, last_error: { at_ms: now() - 20e3, message: 'connection refused <b>not bold</b>' }, pending: 12, retrying: 12, parked: 2 },
  ];
}

function summary() {
  const open = deadLetters.filter((d) => d.state === 'open');
  const by = new Map();
  for (const d of open) {
    const k = `${d.stage}\u0000${d.reason_code}`;
    by.set(k, { stage: d.stage, reason_code: d.reason_code, count: (by.get(k)?.count ?? 0) + 1 });
  }
  return {
    uptime_s: (now() - started) / 1000,
    now_ms: now(),
    ingest: { ...counters.ingest },
    delivery: JSON.parse(JSON.stringify(counters.delivery)),
    store: { events_live: counters.ingest.stored - 40, events_superseded: 20, previous_versions: 20, outbox_pending: 3, outbox_superseded: 0, contributions: 5120, dhis2_dirty: 12, dead_letters_open: open.length },
    dead_letters_by_reason: [...by.values()],
  };
}

function flows() {
  const open = (s) => deadLetters.filter((d) => d.state === 'open' && d.source === s).length;
  return [
    { source: 'cht', mapping: 'cht-anc', events: 640, last_received_ms: now() - 2000, dead_letters_open: open('cht') },
    { source: 'commcare', mapping: 'commcare-immunization', events: 410, last_received_ms: now() - 40e3, dead_letters_open: open('commcare') },
    { source: 'kobo', mapping: null, events: 0, last_received_ms: now() - 60e3, dead_letters_open: open('kobo') },
    { source: 'inhouse', mapping: 'inhouse-malaria', events: 70, last_received_ms: null, dead_letters_open: open('inhouse') },
  ];
}

function send(res, status, body, type = 'application/json') {
  const data = type === 'application/json' ? JSON.stringify(body) : body;
  res.writeHead(status, { 'Content-Type': type, 'Cache-Control': 'no-store', 'Content-Length': Buffer.byteLength(data) });
  res.end(data);
}
const err = (res, status, code, message) => send(res, status, { error: { code, message } });

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://mock');
  if (req.method === 'GET' && url.pathname === '/dashboard') {
    // The same policy as the real service sends with the page.
    res.setHeader(
      'Content-Security-Policy',
      "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    );
    res.setHeader('X-Content-Type-Options', 'nosniff');
    return send(res, 200, fs.readFileSync(DASHBOARD), 'text/html; charset=utf-8');
  }
  if (!url.pathname.startsWith('/v1/')) return err(res, 404, 'not_found', 'no such route');
  const auth = req.headers.authorization || '';
  const who = auth.startsWith('Bearer ') ? TOKENS[auth.slice(7)] : undefined;
  if (!who) return err(res, 401, 'unauthorized', auth ? 'unknown token' : 'missing bearer token');
  const route = `${req.method} ${url.pathname}`;
  if (route === 'GET /v1/whoami') return send(res, 200, who);
  if (who.role === 'app') return err(res, 403, 'forbidden', `role app may not call ${url.pathname}`);
  if (route === 'GET /v1/summary') return send(res, 200, summary());
  if (route === 'GET /v1/destinations') return send(res, 200, { destinations: destinations() });
  if (route === 'GET /v1/flows') return send(res, 200, { flows: flows() });
  if (route === 'GET /v1/dead-letters') {
    const q = url.searchParams;
    const want = (k, field) => !q.has(k) || q.get(k) === field;
    const limit = Math.max(1, Math.min(10000, Number(q.get('limit') || 100)));
    const state = q.get('state') || 'open';
    const list = deadLetters
      .filter((d) => (state === 'all' || d.state === state) && want('stage', d.stage) && want('source', d.source) && want('reason', d.reason_code) && want('mapping', d.mapping))
      .sort((a, b) => b.received_at - a.received_at)
      .slice(0, limit);
    return send(res, 200, { dead_letters: list });
  }
  const m = url.pathname.match(/^\/v1\/dead-letters\/(\d+)\/(replay|discard)$/);
  if (m && req.method === 'POST') {
    if (who.role !== 'operator') return err(res, 403, 'forbidden', `role ${who.role} may not ${m[2]} dead letters`);
    const id = Number(m[1]);
    const d = deadLetters.find((x) => x.id === id);
    audit.push({ at: now(), actor: who.name, action: `dead_letter.${m[2]}`, target: `dead_letter:${id}` });
    if (m[2] === 'discard') {
      const n = d && d.state === 'open' ? 1 : 0;
      if (n) d.state = 'discarded';
      return send(res, 200, { discarded: n });
    }
    let replay;
    if (!d) replay = { result: 'not_found' };
    else if (d.state !== 'open') replay = { result: 'not_open' };
    else if (d.reason_code === 'not_json') {
      d.replay_count += 1;
      d.seen_count += 1;
      replay = { result: 'parked_again', reason: 'not_json' };
    } else {
      d.replay_count += 1;
      d.state = 'replayed';
      replay = { result: 'ingested', outcome: { status: 'stored' } };
    }
    // A little latency, as a real replay has.
    return setTimeout(() => send(res, 200, { results: [{ id, replay }] }), 150);
  }
  if (route === 'GET /v1/audit') return send(res, 200, { audit });
  return err(res, 404, 'not_found', `no route ${route}`);
});

server.listen(Number(arg('--port', '0')), arg('--host', '127.0.0.1'), () => {
  const { address, port } = server.address();
  console.log(`listening http://${address}:${port}`);
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => server.close(() => process.exit(0)));
