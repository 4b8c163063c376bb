// Real-browser check of the Kiungo dashboard, driven through Debian's
// Chromium (/usr/bin/chromium) with playwright-core.
//
//   node dashboard.mjs --url http://127.0.0.1:PORT --token TOKEN \
//     --expect-dead-letter ID --screenshot PATH [--viewer-token T] \
//     [--expect-replay resolved|parked_again|any] [--chromium PATH]
//
// It opens /dashboard as a phone (390x844), checks that the page does not
// scroll sideways, that a wrong token brings the server's message back to
// the sign-in form, signs in with TOKEN (an operator's), waits for dead
// letter ID in the open list, checks the throughput, failures, destination
// and flows sections, optionally checks in a second browser context that a
// viewer sees the list without Replay/Discard buttons, clicks Replay on ID,
// waits for the result and for the list to reflect it (the row leaves the
// open list when the replay resolved it; when it was parked again, the row
// stays with its replay count raised), takes full-page screenshots at phone
// and desktop width, and signs out. Every API request must carry the bearer
// token and `Accept: application/json`, go to the page's own origin, and
// the page must raise no script error, no Content-Security-Policy
// violation and no native dialog.
//
// Prints one JSON line of what it checked; exits 1 with a message on the
// first failure, and after 60 s overall.

import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const started = Date.now();
const OVERALL_MS = 60_000;
let step = 'parsing arguments';
let browser = null;

function usage(msg) {
  process.stderr.write(
    `dashboard.mjs: ${msg}\nusage: node dashboard.mjs --url http://127.0.0.1:PORT --token TOKEN ` +
      `--expect-dead-letter ID --screenshot PATH [--viewer-token T] [--expect-replay resolved|parked_again|any] [--chromium PATH]\n`,
  );
  process.exit(2);
}

function parseArgs(argv) {
  const known = ['--url', '--token', '--expect-dead-letter', '--screenshot', '--viewer-token', '--expect-replay', '--chromium'];
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!known.includes(a)) usage(`unknown argument ${a}`);
    if (i + 1 >= argv.length) usage(`${a} needs a value`);
    out[a.slice(2)] = argv[++i];
  }
  for (const k of ['url', 'token', 'expect-dead-letter', 'screenshot']) if (!out[k]) usage(`--${k} is required`);
  if (!/^\d+$/.test(out['expect-dead-letter'])) usage('--expect-dead-letter must be a number');
  out['expect-replay'] ??= 'any';
  if (!['resolved', 'parked_again', 'any'].includes(out['expect-replay'])) usage('--expect-replay must be resolved, parked_again or any');
  out.chromium ??= process.env.KIUNGO_CHROMIUM || '/usr/bin/chromium';
  return out;
}

async function closeBrowser() {
  if (!browser) return;
  const b = browser;
  browser = null;
  let timer;
  await Promise.race([b.close().catch(() => {}), new Promise((r) => (timer = setTimeout(r, 5000)))]);
  clearTimeout(timer);
}

async function fail(msg) {
  process.stderr.write(`dashboard check FAILED at step "${step}" after ${Date.now() - started} ms: ${msg}\n`);
  await closeBrowser();
  process.exit(1);
}

const overall = setTimeout(() => fail(`timed out after ${OVERALL_MS / 1000} s overall`), OVERALL_MS);

function check(cond, msg) {
  if (!cond) throw new Error(msg);
}

// Widths and the elements that stick out, when the page scrolls sideways.
async function horizontalScroll(page) {
  return page.evaluate(() => {
    const de = document.documentElement;
    const width = de.clientWidth;
    const scroll = Math.max(de.scrollWidth, document.body.scrollWidth);
    const culprits = [];
    if (scroll > width) {
      for (const el of document.querySelectorAll('body *')) {
        const r = el.getBoundingClientRect();
        if (r.width > 0 && r.right > width + 1) {
          culprits.push(`${el.tagName.toLowerCase()}${el.id ? '#' + el.id : ''}${el.className && typeof el.className === 'string' ? '.' + el.className.split(' ').join('.') : ''} right=${Math.round(r.right)}`);
          if (culprits.length >= 5) break;
        }
      }
    }
    return { width, scroll, culprits };
  });
}

async function noHorizontalScroll(page, where) {
  const h = await horizontalScroll(page);
  check(h.scroll <= h.width, `the page scrolls sideways ${where}: scrollWidth ${h.scroll} > clientWidth ${h.width}; sticking out: ${h.culprits.join(', ')}`);
  return h.width;
}

// Watches a page: API requests' headers and origin, script errors, dialogs.
function watch(page, origin, log) {
  page.on('request', (req) => {
    const u = new URL(req.url());
    if (u.protocol === 'data:' || u.protocol === 'about:' || u.protocol === 'blob:') return;
    if (u.origin !== origin) log.external.push(req.url());
    if (u.pathname.startsWith('/v1/')) {
      log.api += 1;
      const hd = req.headers();
      if (!/^Bearer \S+/.test(hd.authorization || '')) log.badHeaders.push(`${req.method()} ${u.pathname}: no bearer token`);
      if (!(hd.accept || '').includes('application/json')) log.badHeaders.push(`${req.method()} ${u.pathname}: Accept is ${hd.accept}`);
    }
  });
  page.on('pageerror', (e) => log.scriptErrors.push(String(e && e.message ? e.message : e)));
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy/i.test(m.text())) log.scriptErrors.push(`CSP: ${m.text()}`);
  });
  page.on('dialog', (d) => {
    log.dialogs.push(`${d.type()}: ${d.message()}`);
    d.dismiss().catch(() => {});
  });
}

async function signIn(page, token) {
  await page.locator('#token').fill(token);
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
}

// Fails when a section shows its own "could not load" / "role cannot see" note.
async function sectionErrors(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll('.sec-err')].filter((e) => e.offsetParent !== null).map((e) => `${e.closest('section').id}: ${e.textContent}`),
  );
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const id = opts['expect-dead-letter'];
  const base = opts.url.replace(/\/+$/, '');
  const origin = new URL(base).origin;
  const shot = path.resolve(opts.screenshot);
  const ext = path.extname(shot);
  const shotDesktop = ext ? shot.slice(0, -ext.length) + '-desktop' + ext : shot + '-desktop';
  const out = { ok: false, url: `${base}/dashboard`, dead_letter: Number(id), checks: [] };
  const done = (what) => out.checks.push(what);

  step = 'launching Chromium';
  check(fs.existsSync(opts.chromium), `${opts.chromium} not found: install Debian's Chromium with \`apt-get install -y chromium\``);
  browser = await chromium.launch({
    executablePath: opts.chromium,
    headless: true,
    timeout: 30_000,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  out.browser = browser.version();
  const phone = { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 1 };
  const log = { api: 0, external: [], badHeaders: [], scriptErrors: [], dialogs: [] };

  step = 'opening /dashboard at phone width';
  const ctx = await browser.newContext(phone);
  ctx.setDefaultTimeout(15_000);
  const page = await ctx.newPage();
  watch(page, origin, log);
  const resp = await page.goto(`${base}/dashboard`, { waitUntil: 'load' });
  check(resp && resp.ok(), `GET /dashboard answered ${resp ? resp.status() : 'nothing'}`);
  check((resp.headers()['content-type'] || '').includes('text/html'), `GET /dashboard is ${resp.headers()['content-type']}, not text/html`);
  await page.locator('#token').waitFor({ state: 'visible' });
  const title = await page.title();
  await noHorizontalScroll(page, 'on the sign-in form');
  done('sign-in form shown, no horizontal scroll at 390 px');

  step = 'signing in with a wrong token';
  await signIn(page, `not-a-token-${Date.now()}`);
  await page.waitForFunction(() => document.getElementById('signin-msg').textContent.trim() !== '');
  out.wrong_token_message = (await page.locator('#signin-msg').textContent()).trim();
  check(await page.locator('#signin').isVisible(), 'the sign-in form went away after a wrong token');
  check(!(await page.locator('#dash').isVisible()), 'the dashboard shows after a wrong token');
  done('a wrong token keeps the sign-in form with the server message');

  step = 'signing in as operator';
  await signIn(page, opts.token);
  await page.locator('#who').waitFor({ state: 'visible' });
  out.operator = (await page.locator('#who').textContent()).trim();
  check(/·\s*operator$/.test(out.operator), `--token is not an operator's: the dashboard shows "${out.operator}"`);
  check(await page.evaluate(() => sessionStorage.getItem('kiungo.token') !== null), 'the token is not in sessionStorage');
  done(`signed in, whoami shown as "${out.operator}", token kept in sessionStorage`);

  step = `waiting for dead letter ${id} in the open list`;
  const row = page.locator(`#dl-table tbody tr[data-id="${id}"]`);
  try {
    await row.waitFor({ state: 'visible', timeout: 20_000 });
  } catch {
    const shown = await page.locator('#dl-table tbody tr[data-id]').evaluateAll((trs) => trs.map((t) => t.dataset.id));
    const note = await sectionErrors(page);
    throw new Error(`dead letter ${id} did not appear in the open list within 20 s; open ids shown: [${shown.join(', ')}]${note.length ? '; ' + note.join(' | ') : ''}`);
  }
  done(`dead letter ${id} listed`);

  step = 'checking the sections';
  const errs = await sectionErrors(page);
  check(errs.length === 0, `sections show errors: ${errs.join(' | ')}`);
  const tpRows = await page.locator('#tp-table tbody tr').count();
  check(tpRows >= 3, `throughput shows ${tpRows} counters`);
  const reasons = await page.locator('#reasons-table tbody tr').allTextContents();
  check(reasons.length >= 1 && !/No open dead letters/.test(reasons[0]), `failures by reason is empty while dead letter ${id} is open`);
  const dests = await page.locator('#dest-table tbody tr[data-name]').count();
  check(dests >= 1, 'destination health lists no destination');
  const circuits = await page.locator('#dest-table tbody tr[data-name] td[data-label="Circuit"]').allTextContents();
  check(circuits.length === dests && circuits.every((c) => /Closed|Open|Half-open|not configured/.test(c)), `circuit states without a text label: ${JSON.stringify(circuits)}`);
  const flows = await page.locator('#flows-table tbody tr').count();
  check(flows >= 1, 'flows section has no row');
  const dlRowText = (await row.textContent()) || '';
  out.sections = { throughput_counters: tpRows, failure_reasons: reasons.length, destinations: dests, circuits, flows };
  check((await page.locator('#dash img, #dash script, #dash iframe, #dash object').count()) === 0, 'server text was rendered as HTML (an img/script/iframe/object appeared)');
  check((await page.title()) === title, 'the page title changed: server text was run as script');
  await noHorizontalScroll(page, 'with data at 390 px');
  done('throughput, failures by reason, destination health (circuit with text), flows render; no HTML from data; no horizontal scroll with data');

  if (opts['viewer-token']) {
    step = 'checking the viewer';
    const vctx = await browser.newContext(phone);
    vctx.setDefaultTimeout(15_000);
    const vpage = await vctx.newPage();
    watch(vpage, origin, log);
    await vpage.goto(`${base}/dashboard`, { waitUntil: 'load' });
    await signIn(vpage, opts['viewer-token']);
    await vpage.locator('#who').waitFor({ state: 'visible' });
    const vwho = (await vpage.locator('#who').textContent()).trim();
    check(/·\s*viewer$/.test(vwho), `--viewer-token is not a viewer's: the dashboard shows "${vwho}"`);
    await vpage.locator(`#dl-table tbody tr[data-id="${id}"]`).waitFor({ state: 'visible', timeout: 20_000 });
    const vbuttons = await vpage.locator('#dl-table button').count();
    const vreplay = await vpage.getByRole('button', { name: /replay|discard/i }).count();
    check(vbuttons === 0 && vreplay === 0, `a viewer sees ${vbuttons} buttons in the dead-letter list (${vreplay} replay/discard)`);
    await noHorizontalScroll(vpage, 'for the viewer at 390 px');
    out.viewer = vwho;
    await vctx.close();
    done(`viewer "${vwho}" sees dead letter ${id} and no Replay/Discard button`);
  }

  step = `replaying dead letter ${id}`;
  const replaysBefore = ((await row.locator('td.replays').textContent()) || '').trim();
  const replayButton = page.getByRole('button', { name: `Replay dead letter ${id}`, exact: true });
  check((await replayButton.count()) === 1, `no Replay button on dead letter ${id} for the operator`);
  check((await page.getByRole('button', { name: `Discard dead letter ${id}`, exact: true }).count()) === 1, `no Discard button on dead letter ${id} for the operator`);
  const apiAnswer = page.waitForResponse((r) => r.request().method() === 'POST' && new URL(r.url()).pathname === `/v1/dead-letters/${id}/replay`);
  await replayButton.click();
  const answer = await apiAnswer;
  let body = null;
  try {
    body = await answer.json();
  } catch {
    body = null;
  }
  check(answer.ok(), `POST /v1/dead-letters/${id}/replay answered ${answer.status()}: ${JSON.stringify(body)}`);
  const result = page.locator(`#action-result[data-id="${id}"][data-action="replay"]:not([data-result="pending"])`);
  await result.waitFor({ state: 'visible' });
  const kind = await result.getAttribute('data-result');
  out.replay = { api: body, result: kind, shown: ((await result.textContent()) || '').trim() };
  check(kind !== 'error', `the dashboard shows a failed replay: ${out.replay.shown}`);
  done(`replay result shown: "${out.replay.shown}"`);

  step = 'waiting for the list to reflect the replay';
  const resolved = ['ingested', 'requeued', 'remapped', 'remarked'].includes(kind);
  if (opts['expect-replay'] === 'resolved') check(resolved, `expected the replay to resolve dead letter ${id}, it was "${kind}"`);
  if (opts['expect-replay'] === 'parked_again') check(kind === 'parked_again', `expected dead letter ${id} to be parked again, it was "${kind}"`);
  if (resolved) {
    await row.waitFor({ state: 'detached' });
    done(`dead letter ${id} left the open list`);
  } else if (kind === 'parked_again') {
    await page.waitForFunction(
      ([sel, before]) => {
        const td = document.querySelector(sel);
        return td && td.textContent.trim() !== before;
      },
      [`#dl-table tbody tr[data-id="${id}"] td.replays`, replaysBefore],
    );
    const after = ((await row.locator('td.replays').textContent()) || '').trim();
    done(`dead letter ${id} was parked again and stays open, replays ${replaysBefore} -> ${after}`);
  } else {
    check(false, `unexpected replay result "${kind}" (${out.replay.shown})`);
  }
  out.list_after_replay = resolved ? 'row left the open list' : 'row still open, replay count raised';

  step = 'screenshots';
  await noHorizontalScroll(page, 'after the replay at 390 px');
  fs.mkdirSync(path.dirname(shot), { recursive: true });
  await page.screenshot({ path: shot, fullPage: true });
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.waitForTimeout(200);
  await noHorizontalScroll(page, 'at 1280 px');
  await page.screenshot({ path: shotDesktop, fullPage: true });
  out.screenshots = [shot, shotDesktop];
  for (const s of out.screenshots) check(fs.statSync(s).size > 5000, `screenshot ${s} is suspiciously small`);
  done('full-page screenshots at 390 px and 1280 px');

  step = 'signing out';
  await page.getByRole('button', { name: 'Sign out', exact: true }).click();
  await page.locator('#token').waitFor({ state: 'visible' });
  check(await page.evaluate(() => sessionStorage.getItem('kiungo.token') === null), 'the token is still in sessionStorage after Sign out');
  check(!(await page.locator('#dash').isVisible()), 'the dashboard still shows after Sign out');
  done('sign out clears the token and shows the sign-in form');

  step = 'checking requests, script errors and dialogs';
  check(log.external.length === 0, `requests left the page's origin: ${log.external.slice(0, 5).join(', ')}`);
  check(log.badHeaders.length === 0, `API requests without the expected headers: ${log.badHeaders.slice(0, 5).join('; ')}`);
  check(log.scriptErrors.length === 0, `script errors: ${log.scriptErrors.slice(0, 5).join('; ')}`);
  check(log.dialogs.length === 0, `native dialogs opened: ${log.dialogs.join('; ')}`);
  check(log.api > 0, 'no API request seen');
  done(`${log.api} API requests, all same-origin with bearer token and Accept: application/json; no script error, no dialog`);

  await ctx.close();
  await closeBrowser();
  out.ok = true;
  out.dead_letter_row = dlRowText.slice(0, 200);
  out.elapsed_ms = Date.now() - started;
  process.stdout.write(JSON.stringify(out) + '\n');
  clearTimeout(overall);
}

main().catch((e) => fail(e && e.message ? e.message.split('\n').slice(0, 6).join('\n') : String(e)));
