// The dashboard in a real browser, against a real `tickd demo`:
//
//   node dashboard.mjs <tickd binary> <scratch dir>
//
// Starts the demo on a free port, opens the printed Dashboard URL in Debian's Chromium, and
// checks what a user would see: market rows with prices that keep changing; the feed panel and
// the market table turning stale (with a banner) while the simulator drops the feed and refuses
// it back, and live again once it lets it in; the same tab reconnecting on its own after the
// demo is stopped and started again. Leaves <scratch dir>/dashboard.png (the final screen) and
// dashboard-stale.png (while the feed was refused), and exits 0, or prints what went wrong (with the demo's log) and exits 1. The demo is stopped on
// every path out.

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import readline from 'node:readline';
import { chromium } from 'playwright-core';

const CHROMIUM = '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
// Bounds of each wait. The demo's first start runs initdb; a feed refused and let back in
// reconnects within its backoff cap (30 s) plus jitter.
const DEMO_START_MS = 120_000;
const DEMO_STOP_MS = 60_000;
const PAGE_DATA_MS = 30_000;
const STALE_MS = 15_000;
const STAYS_STALE_MS = 3_000;
const LIVE_AGAIN_MS = 60_000;
const RECONNECT_MS = 60_000;
// The whole run; past it the script stops everything and fails.
const WHOLE_RUN_MS = 8 * 60_000;

const [binary, scratch] = process.argv.slice(2);
if (!binary || !scratch) {
  console.error('usage: node dashboard.mjs <tickd binary> <scratch dir>');
  process.exit(2);
}
const dataDir = path.join(scratch, 'demo');
const screenshot = path.join(scratch, 'dashboard.png');
const staleShot = path.join(scratch, 'dashboard-stale.png');
const failureShot = path.join(scratch, 'dashboard-failure.png');

function log(...args) {
  console.log(`[${new Date().toISOString().slice(11, 23)}]`, ...args);
}

class Failure extends Error {}

// ---- The demo ------------------------------------------------------------------------------

async function freePort() {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address();
  server.close();
  await once(server, 'close');
  return port;
}

// A running `tickd demo`: its stdout lines can be awaited, its stdin takes console commands,
// its stderr (the log) goes to a file shown on failure.
class Demo {
  constructor(port, run) {
    this.logPath = path.join(scratch, `demo-${run}.log`);
    const logFile = fs.openSync(this.logPath, 'w');
    this.child = spawn(binary, [
      'demo', '--data-dir', dataDir, '--listen', `127.0.0.1:${port}`,
      '--markets', '10', '--rate', '200', '--no-open',
    ], { stdio: ['pipe', 'pipe', logFile], env: { ...process.env, RUST_LOG: 'info' } });
    fs.closeSync(logFile);
    Demo.running.add(this.child);
    this.lines = [];
    this.waiters = [];
    this.exited = new Promise((resolve) => {
      this.child.on('exit', (code, signal) => {
        Demo.running.delete(this.child);
        this.exit = { code, signal };
        resolve(this.exit);
        for (const w of this.waiters) w.reject(new Failure(`tickd demo exited (${code ?? signal}) while ${w.what}`));
      });
    });
    readline.createInterface({ input: this.child.stdout }).on('line', (line) => {
      this.lines.push(line);
      for (const w of [...this.waiters]) {
        const m = line.match(w.pattern);
        if (m) {
          this.waiters.splice(this.waiters.indexOf(w), 1);
          w.resolve(m);
        }
      }
    });
  }

  // Resolves with the match of the first stdout line, from now on, that matches `pattern`.
  nextLine(pattern, what, timeoutMs) {
    return new Promise((resolve, reject) => {
      if (this.exit) {
        reject(new Failure(`tickd demo had exited (${this.exit.code ?? this.exit.signal}) before ${what}`));
        return;
      }
      const w = { pattern, what, resolve, reject };
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        reject(new Failure(`timed out after ${timeoutMs / 1000} s waiting for ${what}`));
      }, timeoutMs);
      w.resolve = (m) => { clearTimeout(timer); resolve(m); };
      w.reject = (e) => { clearTimeout(timer); reject(e); };
      this.waiters.push(w);
    });
  }

  // Sends a console command and waits for its `ok:` acknowledgement.
  async command(line) {
    const ack = this.nextLine(/^(ok|error): .*/, `the acknowledgement of \`${line}\``, 10_000);
    this.child.stdin.write(`${line}\n`);
    const [text, verdict] = await ack;
    if (verdict !== 'ok') throw new Failure(`\`${line}\` was answered ${text}`);
    log(`demo: ${line} -> ${text}`);
  }

  // SIGTERM, then the exit status within `timeoutMs` (SIGKILL past it).
  async stop(timeoutMs) {
    if (this.exit) return this.exit;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    const exit = await this.exited;
    clearTimeout(timer);
    return exit;
  }

  // Demos not yet exited, for the last-resort kill when this process exits.
  static running = new Set();

  logTail(n = 40) {
    try {
      return fs.readFileSync(this.logPath, 'utf8').trimEnd().split('\n').slice(-n).join('\n');
    } catch {
      return '(no log)';
    }
  }
}

// ---- The page ------------------------------------------------------------------------------

// Polls `fn` in the page until it returns a truthy value, or fails naming `what`.
async function waitInPage(page, what, timeoutMs, fn, arg) {
  try {
    return await (await page.waitForFunction(fn, arg, { timeout: timeoutMs, polling: 100 })).jsonValue();
  } catch (e) {
    if (e.name !== 'TimeoutError') throw e;
    const state = await pageState(page).catch(() => 'unreadable');
    throw new Failure(`timed out after ${timeoutMs / 1000} s waiting for ${what}; the page shows: ${state}`);
  }
}

// A one-line summary of the page, for failure messages.
async function pageState(page) {
  return page.evaluate(() => {
    const q = (sel) => document.querySelector(sel);
    const rows = document.querySelectorAll('#markets tbody tr[data-market]');
    const first = rows[0];
    return JSON.stringify({
      conn: q('#conn-state')?.textContent,
      reason: q('#conn-reason')?.textContent,
      feeds: q('#feeds')?.dataset.state,
      feedRows: [...document.querySelectorAll('#feeds tbody tr')].map((tr) => `${tr.dataset.key}=${tr.dataset.state}`),
      banner: q('#stale-banner')?.hidden ? null : q('#stale-banner')?.textContent.trim(),
      rows: rows.length,
      firstRow: first ? first.textContent : null,
    });
  });
}

// The text of every price, volume and age cell of the market table, by market.
function marketCells() {
  const cells = {};
  for (const tr of document.querySelectorAll('#markets tbody tr[data-market]')) {
    cells[tr.dataset.market] = ['.bid', '.ask', '.last', '.volume']
      .map((c) => tr.querySelector(c)?.textContent ?? '')
      .join('|');
  }
  return cells;
}

async function rowsShowPrices(page) {
  await waitInPage(page, 'market rows with prices', PAGE_DATA_MS, () => {
    const rows = [...document.querySelectorAll('#markets tbody tr[data-market]')];
    const priced = rows.filter((tr) => /\d/.test(tr.querySelector('.bid')?.textContent ?? '')
      && /\d/.test(tr.querySelector('.last')?.textContent ?? ''));
    return priced.length >= 1 ? priced.length : false;
  });
}

async function rowsUpdate(page, what) {
  const before = await page.evaluate(marketCells);
  const market = await waitInPage(page, what, PAGE_DATA_MS, ([before]) => {
    for (const tr of document.querySelectorAll('#markets tbody tr[data-market]')) {
      const now = ['.bid', '.ask', '.last', '.volume'].map((c) => tr.querySelector(c)?.textContent ?? '').join('|');
      if (before[tr.dataset.market] !== undefined && before[tr.dataset.market] !== now) return tr.dataset.market;
    }
    return false;
  }, [before]);
  log(`page: ${what}: ${market} changed`);
}

const isStale = () => {
  const feeds = document.querySelector('#feeds');
  const markets = document.querySelector('#markets');
  const banner = document.querySelector('#stale-banner');
  return feeds.classList.contains('stale') && feeds.dataset.state !== 'live'
    && markets.classList.contains('stale') && !banner.hidden && banner.offsetHeight > 0;
};

const isLive = () => {
  const feeds = document.querySelector('#feeds');
  const rows = [...document.querySelectorAll('#feeds tbody tr')];
  return document.querySelector('#conn-state').dataset.state === 'open'
    && feeds.dataset.state === 'live' && !feeds.classList.contains('stale')
    && !document.querySelector('#markets').classList.contains('stale')
    && document.querySelector('#stale-banner').hidden
    && rows.length > 0 && rows.every((tr) => tr.dataset.state === 'live');
};

// ---- The scenario --------------------------------------------------------------------------

async function scenario(ctx) {
  const port = await freePort();
  ctx.demo = new Demo(port, 1);
  const [, url] = await ctx.demo.nextLine(/^Dashboard: (\S+)/, 'the Dashboard line of the banner', DEMO_START_MS);
  log(`demo: dashboard at ${url.replace(/token=.*/, 'token=…')}`);

  const userDataDir = fs.mkdtempSync(path.join(scratch, 'chromium-'));
  ctx.browser = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true, viewport: { width: 1440, height: 900 },
  });
  const page = ctx.browser.pages()[0] || await ctx.browser.newPage();
  ctx.page = page;
  page.on('pageerror', (e) => ctx.pageErrors.push(`uncaught: ${e.message}`));
  page.on('console', (m) => {
    if (/Content.Security.Policy/i.test(m.text())) ctx.pageErrors.push(`CSP: ${m.text()}`);
  });

  await page.goto(url);
  await rowsShowPrices(page);
  await rowsUpdate(page, 'a market row to update');
  await waitInPage(page, 'the feed panel to show every feed live', PAGE_DATA_MS, isLive);
  log('page: live');

  // Drop the feed and refuse it back: the page must say its data is stale, and keep saying so.
  await ctx.demo.command('refuse 1000000');
  await ctx.demo.command('drop');
  await waitInPage(page, 'the feed panel and market table to turn stale', STALE_MS, isStale);
  log('page: stale');
  await page.screenshot({ path: staleShot });
  const until = Date.now() + STAYS_STALE_MS;
  while (Date.now() < until) {
    if (!(await page.evaluate(isStale))) {
      throw new Failure(`the page turned live while the simulator refused every connection: ${await pageState(page)}`);
    }
    await page.waitForTimeout(200);
  }

  // Let the feed back in: live again, and the rows move again.
  await ctx.demo.command('refuse 0');
  await waitInPage(page, 'the feed panel to turn live again', LIVE_AGAIN_MS, isLive);
  await rowsUpdate(page, 'a market row to update after the feed came back');
  log('page: live again');

  // Restart the demo under the open page: the same document must reconnect by itself.
  await page.evaluate(() => { window.tickdTestMarker = 'not reloaded'; });
  const first = await ctx.demo.stop(DEMO_STOP_MS);
  if (first.code !== 0) throw new Failure(`tickd demo exited with ${first.code ?? first.signal} after SIGTERM, not 0`);
  log('demo: stopped with 0');
  await waitInPage(page, 'the page to notice the demo has gone', 15_000,
    () => document.querySelector('#conn-state').dataset.state !== 'open'
      && document.querySelector('#feeds').classList.contains('stale'));

  ctx.demo = new Demo(port, 2);
  await ctx.demo.nextLine(/^Dashboard: (\S+)/, 'the Dashboard line of the second run', DEMO_START_MS);
  await waitInPage(page, 'the page to reconnect to the restarted demo', RECONNECT_MS,
    () => document.querySelector('#conn-state').dataset.state === 'open');
  await waitInPage(page, 'the feed panel to turn live after the restart', LIVE_AGAIN_MS, isLive);
  await rowsUpdate(page, 'a market row to update after the restart');
  const marker = await page.evaluate(() => window.tickdTestMarker);
  if (marker !== 'not reloaded') throw new Failure('the page was reloaded; it should have reconnected in place');
  log('page: reconnected in place');

  if (ctx.pageErrors.length) throw new Failure(`the page reported errors:\n  ${ctx.pageErrors.join('\n  ')}`);
  await page.screenshot({ path: screenshot });
  log(`screenshot: ${screenshot}`);

  const second = await ctx.demo.stop(DEMO_STOP_MS);
  if (second.code !== 0) throw new Failure(`the second tickd demo exited with ${second.code ?? second.signal}, not 0`);
}

async function main() {
  const ctx = { demo: null, browser: null, page: null, pageErrors: [] };
  const watchdog = setTimeout(() => {
    console.error(`FAIL: the whole run took more than ${WHOLE_RUN_MS / 60000} min`);
    ctx.demo?.child.kill('SIGKILL');
    process.exit(1);
  }, WHOLE_RUN_MS);
  let code = 0;
  try {
    await scenario(ctx);
    log('PASS');
  } catch (e) {
    code = 1;
    console.error(`FAIL: ${e instanceof Failure ? e.message : e.stack}`);
    if (ctx.page) await ctx.page.screenshot({ path: failureShot }).then(() => console.error(`screenshot: ${failureShot}`), () => {});
    if (ctx.demo) console.error(`--- tickd demo log (last lines) ---\n${ctx.demo.logTail()}`);
  } finally {
    await ctx.browser?.close().catch(() => {});
    if (ctx.demo && !ctx.demo.exit) await ctx.demo.stop(DEMO_STOP_MS);
    clearTimeout(watchdog);
  }
  process.exit(code);
}

// Whatever ends this process, no demo outlives it (its PostgreSQL stops with it).
process.on('exit', () => {
  for (const child of Demo.running) child.kill('SIGKILL');
});
// Stopped from outside (the Rust test's time limit): fail like any other failure.
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    console.error(`FAIL: stopped by ${signal}`);
    process.exit(1);
  });
}
main();
