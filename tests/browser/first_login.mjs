#!/usr/bin/env node
// A first login through Gatehouse in a real browser (Debian's chromium, driven by
// playwright-core), enrolling TOTP on the way:
//
//   node tests/browser/first_login.mjs <start-url> <screenshot-dir> [<brand-json>]
//
// <brand-json>, when given, is {"title":..,"logo":..,"accent":"#rrggbb"}: the branding the
// server was configured with, which every Gatehouse page must show (title in <title> and the
// header, the logo's src, the accent as the buttons' text colour in light mode).
//
// On every Gatehouse page (chooser, enrolment, recovery codes) the script also runs
// accessibility checks in the browser, in light and in dark mode: no <script> (the pages work
// with JavaScript off), <html lang>, a label for
// every visible form field, a text/background contrast of at least 4.5:1 (3:1 for large text)
// computed from getComputedStyle for every element with text, a visible focus outline, and
// Tab reaching the page's controls in DOM order.
//
// <start-url> is a protected page behind Gatehouse (http://127.0.0.1:PORT/...). The script
// walks chooser -> IdP login (alice) -> TOTP enrolment -> recovery codes -> the echo app,
// takes a full-page screenshot of each page into <screenshot-dir> (01-chooser.png ...
// 05-app.png), and on success prints one JSON line on stdout:
//
//   {"ok":true,"screenshots":[...],"headers":{...}}
//
// The TOTP code is computed here with node:crypto (RFC 6238, HMAC-SHA1, 30 s, 6 digits), an
// implementation independent of the server's; it is checked against the RFC's test vectors
// before anything else runs. The browser may only reach 127.0.0.1: every other request is
// aborted and fails the run. Any step that lands on an unexpected page fails with a message
// naming the step, plus the page's URL and HTML on stderr; then a line {"ok":false,...} is
// printed and the exit status is 1.

import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { chromium } from 'playwright-core';

const CHROMIUM = '/usr/bin/chromium';
const OVERALL_TIMEOUT_MS = 60_000;
const STEP_TIMEOUT_MS = 15_000;
const USER = 'alice';
const PASSWORD = 'alice-pw';
const CONNECTION = 'test';
const RECOVERY_CODES = 10;
// How much of a page's HTML a failure prints.
const MAX_HTML = 20_000;

// ------------------------------------------------------------------ TOTP --

const BASE32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

/** Decodes RFC 4648 base32 (case-insensitive; spaces, dashes and '=' padding ignored). */
export function base32Decode(text) {
  const clean = text.replace(/[\s=-]/g, '').toUpperCase();
  const out = [];
  let bits = 0;
  let value = 0;
  for (const ch of clean) {
    const index = BASE32.indexOf(ch);
    if (index < 0) throw new Error(`not a base32 character: ${JSON.stringify(ch)}`);
    value = (value << 5) | index;
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      out.push((value >>> bits) & 0xff);
    }
  }
  return Buffer.from(out);
}

/** RFC 4226 HOTP with HMAC-SHA1. */
export function hotp(key, counter, digits = 6) {
  const message = Buffer.alloc(8);
  message.writeBigUInt64BE(BigInt(counter));
  const mac = crypto.createHmac('sha1', key).update(message).digest();
  const offset = mac[mac.length - 1] & 0x0f;
  const binary = ((mac[offset] & 0x7f) << 24)
    | (mac[offset + 1] << 16)
    | (mac[offset + 2] << 8)
    | mac[offset + 3];
  return String(binary % 10 ** digits).padStart(digits, '0');
}

/** RFC 6238 TOTP: the code for Unix time `seconds`. */
export function totp(key, seconds, { step = 30, digits = 6 } = {}) {
  return hotp(key, Math.floor(seconds / step), digits);
}

/** RFC 6238 appendix B, the SHA1 rows. Throws when this implementation disagrees. */
function checkTotpVectors() {
  const key = Buffer.from('12345678901234567890', 'ascii');
  const vectors = [
    [59, '94287082'],
    [1111111109, '07081804'],
    [1234567890, '89005924'],
    [20000000000, '65353130'],
  ];
  for (const [time, expected] of vectors) {
    const got = totp(key, time, { digits: 8 });
    if (got !== expected) {
      throw new Error(`TOTP self-check failed: T=${time} gave ${got}, RFC 6238 says ${expected}`);
    }
  }
  // The decoder too: "GEZDGNBVGY3TQOJQ" is base32 for ASCII "1234567890".
  if (base32Decode('GEZDGNBVGY3TQOJQ').toString('ascii') !== '1234567890') {
    throw new Error('base32 self-check failed');
  }
}

// --------------------------------------------------------------- helpers --

class StepFailure extends Error {
  constructor(step, message, page) {
    super(`step ${step}: ${message}`);
    this.page = page;
  }
}

function usage(message) {
  console.error(message);
  console.error('usage: node tests/browser/first_login.mjs <start-url> <screenshot-dir>');
  process.exit(2);
}

function isLoopback(url) {
  try {
    const { protocol, hostname } = new URL(url);
    if (protocol === 'data:' || protocol === 'about:' || protocol === 'blob:') return true;
    return hostname === '127.0.0.1';
  } catch {
    return false;
  }
}

/** Resolves with `promise`, or rejects after `ms` with `what` in the message. */
function bounded(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms / 1000} s`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// ------------------------------------------------------------------ main --

const [startUrl, shotDir, brandArg] = process.argv.slice(2);
const brand = brandArg ? JSON.parse(brandArg) : null;
if (!startUrl || !shotDir) usage('missing arguments');
if (!isLoopback(startUrl) || !startUrl.startsWith('http://')) {
  usage(`the start URL must be http://127.0.0.1:...: ${startUrl}`);
}
const startPath = new URL(startUrl).pathname;

try {
  checkTotpVectors();
} catch (e) {
  console.error(e.message);
  console.log(JSON.stringify({ ok: false, error: e.message }));
  process.exit(1);
}

fs.mkdirSync(shotDir, { recursive: true });
for (const old of fs.readdirSync(shotDir)) {
  if (/^\d\d-.*\.png$/.test(old)) fs.rmSync(path.join(shotDir, old));
}
if (!fs.existsSync(CHROMIUM)) {
  const message = `${CHROMIUM} is missing: apt-get install chromium`;
  console.error(message);
  console.log(JSON.stringify({ ok: false, error: message }));
  process.exit(1);
}

const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'gatehouse-chromium-'));
const screenshots = [];
const blocked = [];
let context;
let page;

async function shoot(name) {
  const file = path.join(shotDir, name);
  await page.screenshot({ path: file, fullPage: true });
  screenshots.push(file);
}

/** Fails step `step` unless `ok`; the failure carries the current page for the report. */
function expect(step, ok, message) {
  if (!ok) throw new StepFailure(step, message, page);
}

async function pathOf() {
  return new URL(page.url()).pathname;
}

// --------------------------------------------------------- accessibility --

/**
 * Runs in the page: every problem found by the static checks (lang, labels, contrast).
 * Contrast follows WCAG 2: relative luminance from the computed colours, the background
 * being the first non-transparent one up the tree (the canvas when none).
 */
function pageA11yProblems() {
  const problems = [];
  // Works with JavaScript off: the page has no script at all (and its CSP allows none).
  if (document.scripts.length > 0) problems.push(`${document.scripts.length} <script> element(s)`);
  const lang = document.documentElement.getAttribute('lang');
  if (!lang || !lang.trim()) problems.push('<html> has no lang');
  const fields = [...document.querySelectorAll('input, select, textarea')]
    .filter((el) => el.type !== 'hidden');
  for (const el of fields) {
    const labelled = (el.labels && el.labels.length > 0)
      || el.getAttribute('aria-label') || el.getAttribute('aria-labelledby');
    if (!labelled) problems.push(`field ${el.outerHTML.slice(0, 80)} has no label`);
  }
  const parse = (c) => {
    const m = c.match(/rgba?\(([^)]+)\)/);
    if (!m) return null;
    const [r, g, b, a = '1'] = m[1].split(/[,\s/]+/).filter(Boolean);
    return { r: +r, g: +g, b: +b, a: +a };
  };
  const lum = ({ r, g, b }) => {
    const ch = (v) => {
      const c = v / 255;
      return c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
    };
    return 0.2126 * ch(r) + 0.7152 * ch(g) + 0.0722 * ch(b);
  };
  const canvas = parse(getComputedStyle(document.documentElement).backgroundColor);
  const dark = matchMedia('(prefers-color-scheme: dark)').matches;
  const fallback = { r: dark ? 18 : 255, g: dark ? 18 : 255, b: dark ? 18 : 255, a: 1 };
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c && c.a > 0) return c;
    }
    return canvas && canvas.a > 0 ? canvas : fallback;
  };
  let checked = 0;
  for (const el of document.body.querySelectorAll('*')) {
    if (el.closest('svg, #qr')) continue; // the QR code is an image, on white by design
    const hasText = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!hasText) continue;
    const style = getComputedStyle(el);
    if (style.visibility === 'hidden' || style.display === 'none') continue;
    const fg = parse(style.color);
    const bg = background(el);
    const l1 = lum(fg);
    const l2 = lum(bg);
    const ratio = (Math.max(l1, l2) + 0.05) / (Math.min(l1, l2) + 0.05);
    const size = parseFloat(style.fontSize);
    const large = size >= 24 || (size >= 18.66 && +style.fontWeight >= 700);
    const needed = large ? 3 : 4.5;
    checked += 1;
    if (ratio < needed) {
      problems.push(`contrast ${ratio.toFixed(2)}:1 < ${needed} for <${el.tagName.toLowerCase()}> `
        + `"${el.textContent.trim().slice(0, 40)}" (${style.color} on rgb(${bg.r}, ${bg.g}, ${bg.b}))`);
    }
  }
  if (checked === 0) problems.push('no text element was checked');
  return problems;
}

/** The page's focusable controls in DOM order, as short descriptions. */
function focusables() {
  return [...document.querySelectorAll('a[href], button, input:not([type=hidden]), select, textarea')]
    .filter((el) => !el.disabled && el.getClientRects().length > 0)
    .map((el) => `${el.tagName.toLowerCase()}#${el.id}|${el.getAttribute('href') ?? el.name ?? ''}`);
}

/**
 * Checks the current page: static checks in light and dark mode, then Tab from the top
 * reaches every control in DOM order, each with a visible focus outline. Screenshots the
 * dark variant as `<name>-dark.png`.
 */
async function checkAccessibility(step, name) {
  for (const scheme of ['light', 'dark']) {
    await page.emulateMedia({ colorScheme: scheme });
    const problems = await page.evaluate(pageA11yProblems);
    expect(`${step} (accessibility, ${scheme})`, problems.length === 0, problems.join('; '));
    if (scheme === 'dark') await shoot(`${name}-dark.png`);
  }
  await page.emulateMedia({ colorScheme: 'light' });
  const wanted = await page.evaluate(focusables);
  expect(`${step} (focus order)`, wanted.length > 0, 'no focusable control');
  await page.evaluate(() => {
    if (document.activeElement && document.activeElement !== document.body) document.activeElement.blur();
    window.scrollTo(0, 0);
  });
  const reached = [];
  for (let i = 0; i < wanted.length; i += 1) {
    await page.keyboard.press('Tab');
    const info = await page.evaluate(() => {
      const el = document.activeElement;
      if (!el || el === document.body) return null;
      const style = getComputedStyle(el);
      return {
        id: `${el.tagName.toLowerCase()}#${el.id}|${el.getAttribute('href') ?? el.name ?? ''}`,
        outline: style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) > 0,
      };
    });
    if (!info) break;
    expect(`${step} (focus)`, info.outline, `${info.id} shows no focus outline`);
    reached.push(info.id);
  }
  expect(`${step} (focus order)`, JSON.stringify(reached) === JSON.stringify(wanted),
    `Tab reached ${JSON.stringify(reached)}, the DOM order is ${JSON.stringify(wanted)}`);
}

/** The configured branding is on the current page. */
async function checkBrand(step) {
  if (!brand) return;
  const title = await page.title();
  expect(`${step} (brand)`, title.includes(brand.title),
    `<title> ${JSON.stringify(title)} lacks the configured title ${JSON.stringify(brand.title)}`);
  const shown = (await page.locator('#site-title').innerText()).trim();
  expect(`${step} (brand)`, shown === brand.title, `#site-title shows ${JSON.stringify(shown)}`);
  const logo = await page.locator('img#site-logo').getAttribute('src');
  expect(`${step} (brand)`, logo === brand.logo, `img#site-logo src is ${JSON.stringify(logo)}`);
  if (brand.accent) {
    const hex = brand.accent.replace('#', '');
    const rgb = `rgb(${[0, 2, 4].map((i) => parseInt(hex.slice(i, i + 2), 16)).join(', ')})`;
    const color = await page.locator('.button').first()
      .evaluate((el) => getComputedStyle(el).color);
    expect(`${step} (brand)`, color === rgb, `.button colour is ${color}, expected ${rgb}`);
  }
}

async function run() {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--disable-quic',
      // Belt and braces for "loopback only": no proxy from the environment, and no name
      // resolves (the tests use IP addresses).
      '--no-proxy-server',
      '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
    ],
    viewport: { width: 1000, height: 800 },
    timeout: STEP_TIMEOUT_MS,
  });
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  context.setDefaultNavigationTimeout(STEP_TIMEOUT_MS);
  await context.route('**/*', (route) => {
    const url = route.request().url();
    if (isLoopback(url)) return route.continue();
    blocked.push(url);
    return route.abort('blockedbyclient');
  });
  page = context.pages()[0] ?? (await context.newPage());

  // a. The protected page sends an anonymous browser to the chooser.
  await page.goto(startUrl, { waitUntil: 'load' });
  expect('a (chooser)', (await pathOf()) === '/oauth2/start',
    `expected Gatehouse's chooser at /oauth2/start, got ${page.url()}`);
  const connections = await page.locator('a[id^="connection-"]').count();
  expect('a (chooser)', connections === 2,
    `expected 2 connection links (a[id^="connection-"]), found ${connections}`);
  const testLink = page.locator(`a#connection-${CONNECTION}`);
  expect('a (chooser)', (await testLink.count()) === 1, `no link a#connection-${CONNECTION}`);
  await checkBrand('a (chooser)');
  await checkAccessibility('a (chooser)', '01-chooser');
  await shoot('01-chooser.png');
  await Promise.all([page.waitForURL(/\/interaction\//), testLink.click()]);

  // b. The IdP's login form.
  expect('b (IdP login)', (await page.locator('form#login-form').count()) === 1,
    `expected the IdP's form#login-form, got ${page.url()}`);
  await page.fill('#login', USER);
  await page.fill('#password', PASSWORD);
  await shoot('02-idp-login.png');
  await Promise.all([page.waitForURL((u) => u.pathname === '/oauth2/mfa'), page.click('#submit')]);

  // c. Gatehouse's TOTP enrolment.
  const title = await page.title();
  expect('c (enrolment)', title.includes('Set up two-step sign-in'),
    `expected a title with "Set up two-step sign-in", got ${JSON.stringify(title)}`);
  expect('c (enrolment)', (await page.locator('#qr svg').count()) === 1,
    'expected an inline <svg> QR code inside #qr');
  const uri = (await page.locator('#otpauth-uri').innerText()).trim();
  expect('c (enrolment)', uri.startsWith('otpauth://totp/'),
    `#otpauth-uri is not an otpauth://totp/ URI: ${JSON.stringify(uri)}`);
  const shown = (await page.locator('#secret').innerText()).trim();
  let key;
  try {
    key = base32Decode(shown);
  } catch (e) {
    expect('c (enrolment)', false, `#secret is not base32 (${e.message}): ${JSON.stringify(shown)}`);
  }
  expect('c (enrolment)', key.length >= 10, `#secret is only ${key.length} bytes`);
  const params = new URL(uri).searchParams;
  const uriSecret = params.get('secret') ?? '';
  expect('c (enrolment)', uriSecret && base32Decode(uriSecret).equals(key),
    `the secret in #otpauth-uri (${uriSecret}) differs from #secret (${shown})`);
  for (const [name, wanted] of [['algorithm', 'SHA1'], ['digits', '6'], ['period', '30']]) {
    const value = params.get(name);
    expect('c (enrolment)', value === null || value.toUpperCase() === wanted,
      `the otpauth URI asks for ${name}=${value}; this script computes ${name}=${wanted}`);
  }
  await checkBrand('c (enrolment)');
  await checkAccessibility('c (enrolment)', '03-enrol');
  await shoot('03-enrol.png');
  // Too close to the end of a 30 s window the code could turn stale in transit: wait for
  // the next window then.
  const intoStep = (Date.now() / 1000) % 30;
  if (intoStep > 27) await page.waitForTimeout((30.5 - intoStep) * 1000);
  const code = totp(key, Date.now() / 1000);
  const form = page.locator('form#mfa-enrol-form');
  expect('c (enrolment)', (await form.count()) === 1, 'no form#mfa-enrol-form');
  await form.locator('#code').fill(code);
  await Promise.all([
    page.waitForNavigation({ waitUntil: 'load' }),
    form.locator('#mfa-submit').click(),
  ]);

  // d. The recovery codes, shown once.
  const items = await page.locator('#recovery-codes li').count();
  expect('d (recovery codes)', items === RECOVERY_CODES,
    `expected ${RECOVERY_CODES} items in #recovery-codes, found ${items} (at ${page.url()})`);
  const cont = page.locator('a#continue');
  expect('d (recovery codes)', (await cont.count()) === 1, 'no link a#continue');
  await checkBrand('d (recovery codes)');
  await checkAccessibility('d (recovery codes)', '04-recovery-codes');
  await shoot('04-recovery-codes.png');
  await Promise.all([page.waitForURL((u) => u.pathname === startPath), cont.click()]);

  // e. The app behind Gatehouse, with the identity headers.
  const text = await page.evaluate(() => document.querySelector('pre')?.textContent
    ?? document.body?.innerText ?? '');
  let echo;
  try {
    echo = JSON.parse(text);
  } catch {
    const first = text.indexOf('{');
    const last = text.lastIndexOf('}');
    try {
      echo = JSON.parse(text.slice(first, last + 1));
    } catch {
      expect('e (app)', false, `the page is not the echo app's JSON: ${text.slice(0, 500)}`);
    }
  }
  const headers = echo.headers ?? {};
  const one = (name) => [].concat(headers[name] ?? [])[0];
  expect('e (app)', one('x-auth-request-user') === USER,
    `expected x-auth-request-user ${USER}, got ${JSON.stringify(headers['x-auth-request-user'])}`);
  expect('e (app)', Boolean(one('x-gatehouse-user-id')), 'no x-gatehouse-user-id header');
  expect('e (app)', echo.path === startPath,
    `the app saw path ${JSON.stringify(echo.path)}, expected ${JSON.stringify(startPath)}`);
  await shoot('05-app.png');

  expect('loopback', blocked.length === 0, `requests off 127.0.0.1 were blocked: ${blocked}`);
  const identity = Object.fromEntries(Object.entries(headers)
    .filter(([name]) => name.startsWith('x-auth-request-') || name.startsWith('x-gatehouse-')));
  return { ok: true, screenshots, headers: identity };
}

async function report(error) {
  console.error(`first login failed: ${error.message}`);
  if (blocked.length) console.error(`requests off 127.0.0.1 (blocked): ${blocked.join(' ')}`);
  if (page && !page.isClosed()) {
    try {
      console.error(`page: ${page.url()}`);
      const html = await bounded(page.content(), 5_000, 'page.content');
      const shown = html.length > MAX_HTML ? `${html.slice(0, MAX_HTML)}\n[... ${html.length - MAX_HTML} more characters]` : html;
      console.error(`--- page HTML ---\n${shown}\n--- end of page HTML ---`);
      await bounded(page.screenshot({ path: path.join(shotDir, '99-failure.png'), fullPage: true }),
        5_000, 'failure screenshot');
    } catch (e) {
      console.error(`(could not read the page: ${e.message})`);
    }
  }
}

// Last resort when even closing the browser hangs.
const hardStop = setTimeout(() => {
  console.error('first login: hard stop');
  process.exit(3);
}, OVERALL_TIMEOUT_MS + 15_000);
hardStop.unref();

let status = 1;
try {
  const result = await bounded(run(), OVERALL_TIMEOUT_MS, 'the whole first login');
  console.log(JSON.stringify(result));
  status = 0;
} catch (error) {
  await report(error);
  console.log(JSON.stringify({ ok: false, error: error.message, screenshots }));
} finally {
  if (context) {
    await bounded(context.close(), 10_000, 'closing the browser').catch((e) => console.error(e.message));
  }
  fs.rmSync(profile, { recursive: true, force: true });
}
process.exit(status);
