#!/usr/bin/env node
// A first login with Email OTP in a real browser (Debian's chromium, driven by playwright-core):
//
//   node tests/browser/email_otp.mjs <start-url> <mailbox-dir>
//
// <start-url> is a protected page behind a Gatehouse with one connection and Email OTP
// required; <mailbox-dir> is where the test's SMTP server (tests/smtp/server.py) writes each
// message as a file. The script walks: protected page -> IdP login (alice) -> the Email OTP
// page -> "Email me a code" -> reads the code from the mail in the mailbox (its Subject) ->
// types it -> the echo app. On success it prints {"ok":true,"headers":{...}}; on failure
// {"ok":false,"error":...} (with the page's URL on stderr) and exits 1. The browser may only
// reach 127.0.0.1.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { chromium } from 'playwright-core';

const CHROMIUM = '/usr/bin/chromium';
const STEP_TIMEOUT_MS = 15_000;

const [startUrl, mailbox] = process.argv.slice(2);
if (!startUrl || !mailbox) {
  console.error('usage: node tests/browser/email_otp.mjs <start-url> <mailbox-dir>');
  process.exit(2);
}

function isLoopback(url) {
  try {
    const u = new URL(url);
    return u.hostname === '127.0.0.1' || u.protocol === 'data:' || u.protocol === 'about:';
  } catch {
    return false;
  }
}

/** Waits for the first mail in the mailbox; returns the code in its Subject. */
async function codeFromMailbox() {
  const deadline = Date.now() + STEP_TIMEOUT_MS;
  while (Date.now() < deadline) {
    const files = fs.readdirSync(mailbox).filter((f) => !f.startsWith('.')).sort();
    if (files.length) {
      const text = fs.readFileSync(path.join(mailbox, files[0]), 'utf8');
      const subject = text.split(/\r?\n/).find((l) => l.startsWith('Subject: '));
      const match = subject && subject.match(/(\d{6,8})\s*$/);
      if (!match) throw new Error(`no code in the mail's subject: ${subject}`);
      return match[1];
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('no mail arrived in the mailbox');
}

const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'gatehouse-email-otp-'));
let context;
let page;
const blocked = [];

async function run() {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
      '--disable-background-networking', '--no-proxy-server',
      '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1'],
    timeout: STEP_TIMEOUT_MS,
  });
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  await context.route('**/*', (route) => {
    const url = route.request().url();
    if (isLoopback(url)) return route.continue();
    blocked.push(url);
    return route.abort('blockedbyclient');
  });
  page = context.pages()[0] ?? (await context.newPage());
  const startPath = new URL(startUrl).pathname;

  await page.goto(startUrl, { waitUntil: 'load' });
  await page.locator('form#login-form').waitFor();
  await page.fill('#login', 'alice');
  await page.fill('#password', 'alice-pw');
  await Promise.all([page.waitForURL((u) => u.pathname === '/oauth2/mfa'), page.click('#submit')]);

  await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), page.click('#mfa-send')]);
  const code = await codeFromMailbox();
  const form = page.locator('form#mfa-email-form');
  await form.locator('#code').fill(code);
  await Promise.all([
    page.waitForURL((u) => u.pathname === startPath),
    form.locator('#mfa-submit').click(),
  ]);
  const text = await page.evaluate(() => document.body?.innerText ?? '');
  const echo = JSON.parse(text.slice(text.indexOf('{'), text.lastIndexOf('}') + 1));
  if (blocked.length) throw new Error(`requests off 127.0.0.1 were blocked: ${blocked}`);
  const headers = Object.fromEntries(Object.entries(echo.headers ?? {})
    .filter(([name]) => name.startsWith('x-auth-request-') || name.startsWith('x-gatehouse-')));
  return { ok: true, path: echo.path, headers };
}

let status = 1;
try {
  console.log(JSON.stringify(await run()));
  status = 0;
} catch (error) {
  console.error(`email otp walk failed: ${error.message}; page: ${page?.url()}`);
  console.log(JSON.stringify({ ok: false, error: error.message }));
} finally {
  if (context) await context.close().catch((e) => console.error(e.message));
  fs.rmSync(profile, { recursive: true, force: true });
}
process.exit(status);
