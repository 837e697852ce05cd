#!/usr/bin/env node
// Smoke test for server.mjs: node smoke.mjs  (prints "idp smoke: ok", exit 0)
// Talks to 127.0.0.1 only. No dependencies beyond Node itself.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const DEADLINE_MS = 18_000;
const CLIENT_ID = 'smoke-client';
const CLIENT_SECRET = 'smoke-secret';
const RESOURCE = 'urn:gatehouse:test-api';

const b64url = (buf) => Buffer.from(buf).toString('base64url');
const decodeJwt = (jwt) => {
  const [h, p] = jwt.split('.');
  return { header: JSON.parse(Buffer.from(h, 'base64url')), payload: JSON.parse(Buffer.from(p, 'base64url')) };
};

// ---------------------------------------------------- throwaway RP server --
// Receives the authorization redirect and back-channel logout POSTs.
const received = { logoutTokens: [] };
const rp = http.createServer(async (req, res) => {
  let body = '';
  for await (const chunk of req) body += chunk;
  if (req.method === 'POST' && req.url === '/backchannel') {
    const token = new URLSearchParams(body).get('logout_token');
    if (token) received.logoutTokens.push(token);
    res.writeHead(token ? 200 : 400).end();
    return;
  }
  res.writeHead(200, { 'content-type': 'text/plain' }).end('rp ok');
});
await new Promise((resolve) => rp.listen(0, '127.0.0.1', resolve));
const rpBase = `http://127.0.0.1:${rp.address().port}`;
const REDIRECT_URI = `${rpBase}/oauth2/callback`;

// ------------------------------------------------------------ start the IdP --
const tmp = mkdtempSync(join(tmpdir(), 'gatehouse-idp-smoke-'));
const configPath = join(tmp, 'config.json');
writeFileSync(configPath, JSON.stringify({
  port: 0,
  clients: [{
    client_id: CLIENT_ID,
    client_secret: CLIENT_SECRET,
    redirect_uris: [REDIRECT_URI],
    post_logout_redirect_uris: [`${rpBase}/logged-out`],
    grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
    backchannel_logout_uri: `${rpBase}/backchannel`,
    backchannel_logout_session_required: true,
  }],
  ttl: { AccessToken: 30 },
}));

const serverPath = fileURLToPath(new URL('./server.mjs', import.meta.url));
const child = spawn(process.execPath, [serverPath, configPath], { stdio: ['ignore', 'pipe', 'pipe'] });
let childLog = '';
child.stderr.on('data', (d) => { childLog += d; });

function finish(code, message) {
  child.kill('SIGTERM');
  rp.close();
  rp.closeAllConnections();
  rmSync(tmp, { recursive: true, force: true });
  if (code === 0) {
    console.log(message);
  } else {
    console.error(`idp smoke: FAILED: ${message}`);
    console.error(`--- idp stderr ---\n${childLog}`);
  }
  process.exit(code);
}
setTimeout(() => finish(1, `timed out after ${DEADLINE_MS} ms`), DEADLINE_MS).unref();
child.on('exit', (code, sig) => finish(1, `idp exited early (code ${code}, signal ${sig})`));

const ready = await new Promise((resolve, reject) => {
  createInterface({ input: child.stdout }).once('line', (line) => {
    try { resolve(JSON.parse(line)); } catch (err) { reject(new Error(`bad ready line ${JSON.stringify(line)}`)); }
  });
});

// --------------------------------------------------- HTTP + cookie jar --
const jar = new Map(); // "name|path" -> { name, value, path }

function storeCookies(res) {
  for (const line of res.headers.getSetCookie()) {
    const [pair, ...attrs] = line.split(';').map((s) => s.trim());
    const eq = pair.indexOf('=');
    const name = pair.slice(0, eq);
    const value = pair.slice(eq + 1);
    let path = '/';
    let expired = value === '';
    for (const attr of attrs) {
      const [k, v = ''] = attr.split('=');
      if (k.toLowerCase() === 'path') path = v;
      if (k.toLowerCase() === 'expires' && Date.parse(v) < Date.now()) expired = true;
      if (k.toLowerCase() === 'max-age' && Number(v) <= 0) expired = true;
    }
    if (expired) jar.delete(`${name}|${path}`);
    else jar.set(`${name}|${path}`, { name, value, path });
  }
}

async function request(url, { method = 'GET', form, headers = {} } = {}) {
  const u = new URL(url);
  assert.equal(u.hostname, '127.0.0.1', `refusing non-loopback request to ${url}`);
  const cookies = [...jar.values()]
    .filter((c) => u.pathname === c.path || u.pathname.startsWith(c.path.endsWith('/') ? c.path : `${c.path}/`))
    .map((c) => `${c.name}=${c.value}`);
  const h = { ...headers };
  if (cookies.length) h.cookie = cookies.join('; ');
  let body;
  if (form) {
    body = new URLSearchParams(form).toString();
    h['content-type'] = 'application/x-www-form-urlencoded';
  }
  const res = await fetch(u, { method, headers: h, body, redirect: 'manual' });
  storeCookies(res);
  return res;
}

// Follow redirects (GET) until a non-redirect or a redirect to `stopAt`.
async function follow(res, from, stopAt) {
  for (let hops = 0; hops < 10; hops++) {
    if (res.status < 300 || res.status > 399) return { res, url: from };
    const next = new URL(res.headers.get('location'), from).href;
    if (stopAt && next.startsWith(stopAt)) return { location: next };
    from = next;
    res = await request(next);
  }
  throw new Error('too many redirects');
}

const basic = `Basic ${Buffer.from(`${encodeURIComponent(CLIENT_ID)}:${encodeURIComponent(CLIENT_SECRET)}`).toString('base64')}`;
async function token(params) {
  const res = await request(disco.token_endpoint, { method: 'POST', form: params, headers: { authorization: basic } });
  const json = await res.json();
  assert.equal(res.status, 200, `token endpoint (${params.grant_type}): ${JSON.stringify(json)}`);
  return json;
}

function verifySignature(jwt, keys) {
  const [h, p, s] = jwt.split('.');
  const { header } = decodeJwt(jwt);
  const jwk = keys.find((k) => k.kid === header.kid);
  assert.ok(jwk, `no JWKS key for kid ${header.kid}`);
  assert.equal(header.alg, 'RS256');
  const key = crypto.createPublicKey({ key: jwk, format: 'jwk' });
  assert.ok(crypto.verify('sha256', Buffer.from(`${h}.${p}`), key, Buffer.from(s, 'base64url')), 'bad JWT signature');
}

// ---------------------------------------------------------------- checks --
let disco;
try {
  const issuer = ready.issuer;
  assert.equal(issuer, `http://127.0.0.1:${ready.port}`);

  // a. discovery + JWKS
  disco = await (await request(`${issuer}/.well-known/openid-configuration`)).json();
  assert.equal(disco.issuer, issuer);
  for (const k of ['authorization_endpoint', 'token_endpoint', 'jwks_uri', 'userinfo_endpoint',
    'end_session_endpoint', 'introspection_endpoint', 'revocation_endpoint']) {
    assert.ok(disco[k]?.startsWith(issuer), `discovery lacks ${k}`);
  }
  assert.ok(disco.scopes_supported.includes('groups'), 'groups not in scopes_supported');
  assert.equal(disco.backchannel_logout_supported, true);
  const { keys } = await (await request(disco.jwks_uri)).json();
  assert.deepEqual(keys.map((k) => k.alg).sort(), ['ES256', 'RS256']);
  assert.ok(keys.every((k) => k.kid && !k.d), 'JWKS keys need kid and must be public');

  // b. authorization code + PKCE as alice
  const verifier = b64url(crypto.randomBytes(32));
  const state = b64url(crypto.randomBytes(8));
  const nonce = b64url(crypto.randomBytes(8));
  const auth = new URL(disco.authorization_endpoint);
  auth.search = new URLSearchParams({
    client_id: CLIENT_ID, response_type: 'code', redirect_uri: REDIRECT_URI,
    scope: 'openid email profile groups', state, nonce,
    code_challenge: b64url(crypto.createHash('sha256').update(verifier).digest()),
    code_challenge_method: 'S256',
  });
  let res = await request(auth.href);
  assert.equal(res.status, 303, `authorize: expected 303, got ${res.status}`);
  assert.match(res.headers.get('location'), /\/interaction\/[\w-]+$/);
  const { res: formRes, url: formUrl } = await follow(res, auth.href);
  const html = await formRes.text();
  assert.match(html, /id="login-form"/);
  const action = new URL(/<form[^>]*action="([^"]+)"/.exec(html)[1], formUrl).href;

  res = await request(action, { method: 'POST', form: { login: 'alice', password: 'wrong' } });
  assert.equal(res.status, 401, 'wrong password should re-render the form with 401');
  assert.match(await res.text(), /Invalid username or password/);

  res = await request(action, { method: 'POST', form: { login: 'alice', password: 'alice-pw' } });
  const { location } = await follow(res, action, REDIRECT_URI);
  assert.ok(location, 'login did not end at the redirect_uri');
  const cb = new URL(location).searchParams;
  assert.equal(cb.get('state'), state);
  assert.equal(cb.get('iss'), issuer);
  assert.ok(cb.get('code'), `no code in ${location}`);

  const tokens = await token({
    grant_type: 'authorization_code', code: cb.get('code'), redirect_uri: REDIRECT_URI, code_verifier: verifier,
  });
  assert.ok(tokens.refresh_token, 'no refresh_token from the code exchange');
  assert.equal(tokens.access_token.split('.').length, 1, 'access token without resource= should be opaque');
  verifySignature(tokens.id_token, keys);
  const id = decodeJwt(tokens.id_token).payload;
  assert.equal(id.sub, 'alice');
  assert.equal(id.nonce, nonce);
  assert.equal(id.email, 'alice@example.com');
  assert.equal(id.email_verified, true);
  assert.equal(id.name, 'Alice Liddell');
  assert.equal(id.preferred_username, 'alice');
  assert.deepEqual(id.groups, ['admins', 'staff']);
  assert.ok(id.sid, 'id_token lacks sid');

  const userinfo = await (await request(disco.userinfo_endpoint, {
    headers: { authorization: `Bearer ${tokens.access_token}` },
  })).json();
  assert.equal(userinfo.email, 'alice@example.com');

  // c. refresh once
  const refreshed = await token({ grant_type: 'refresh_token', refresh_token: tokens.refresh_token });
  assert.ok(refreshed.access_token && refreshed.access_token !== tokens.access_token, 'refresh gave no new access token');

  // d. machine JWT via client_credentials + resource
  const cc = await token({ grant_type: 'client_credentials', resource: RESOURCE, scope: 'api' });
  assert.equal(cc.access_token.split('.').length, 3, 'client_credentials token is not a JWT');
  verifySignature(cc.access_token, keys);
  const at = decodeJwt(cc.access_token);
  assert.equal(at.header.typ, 'at+jwt');
  assert.equal(at.payload.aud, RESOURCE);
  assert.equal(at.payload.client_id, CLIENT_ID);
  assert.equal(at.payload.scope, 'api');

  // e. RP-initiated logout + back-channel logout
  const logout = new URL(disco.end_session_endpoint);
  logout.search = new URLSearchParams({
    id_token_hint: tokens.id_token, post_logout_redirect_uri: `${rpBase}/logged-out`, state: 'bye',
  });
  res = await request(logout.href);
  assert.equal(res.status, 200, `end_session: expected confirmation page, got ${res.status}`);
  const confirm = await res.text();
  const formTag = /<form[^>]*id="op\.logoutForm"[^>]*>/.exec(confirm)?.[0];
  assert.ok(formTag, 'no logout confirmation form');
  const confirmAction = new URL(/action="([^"]+)"/.exec(formTag)[1], logout).href;
  const xsrf = /name="xsrf" value="([^"]+)"/.exec(confirm)[1];
  res = await request(confirmAction, { method: 'POST', form: { xsrf, logout: 'yes' } });
  assert.equal(res.status, 303, `logout confirm: expected 303, got ${res.status}`);
  assert.equal(res.headers.get('location'), `${rpBase}/logged-out?state=bye`);

  for (let i = 0; i < 20 && received.logoutTokens.length === 0; i++) await new Promise((r) => setTimeout(r, 100));
  assert.equal(received.logoutTokens.length, 1, 'back-channel logout POST not received');
  verifySignature(received.logoutTokens[0], keys);
  const lt = decodeJwt(received.logoutTokens[0]).payload;
  assert.ok(lt.events?.['http://schemas.openid.net/event/backchannel-logout'], 'logout_token lacks events');
  assert.equal(lt.sid, id.sid);
  assert.equal(lt.sub, 'alice');
  assert.equal(lt.aud, CLIENT_ID);

  // logout revoked the grant, so the (rotated or not) refresh token is dead
  const dead = await request(disco.token_endpoint, {
    method: 'POST', headers: { authorization: basic },
    form: { grant_type: 'refresh_token', refresh_token: refreshed.refresh_token ?? tokens.refresh_token },
  });
  assert.equal(dead.status, 400, 'refresh token still valid after logout');
} catch (err) {
  finish(1, err.stack ?? String(err));
}
finish(0, 'idp smoke: ok');
