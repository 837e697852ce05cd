#!/usr/bin/env node
// Gatehouse test OpenID Provider: oidc-provider 9.13.3 on 127.0.0.1 only.
//
//   node server.mjs [config.json]
//
// The first stdout line is {"issuer":"http://127.0.0.1:PORT","port":PORT};
// every other log line goes to stderr. See README.md for the config schema.
import crypto from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';

import Provider, { errors } from 'oidc-provider';

const HOST = '127.0.0.1';
const log = (...args) => console.error('[idp]', ...args);
// stdout carries exactly one line (the ready line); oidc-provider prints its
// NOTICEs with console.info, so route console.log/info to stderr as well.
console.log = console.error;
console.info = console.error;

// ---------------------------------------------------------------- config --

const DEFAULT_USERS = {
  alice: {
    password: 'alice-pw',
    claims: {
      email: 'alice@example.com', email_verified: true, name: 'Alice Liddell',
      preferred_username: 'alice', groups: ['admins', 'staff'], department: 'Engineering',
    },
  },
  bob: {
    password: 'bob-pw',
    claims: {
      email: 'bob@example.com', email_verified: false, name: 'Bob Builder',
      preferred_username: 'bob', groups: ['staff'], department: 'Construction',
    },
  },
  carol: {
    password: 'carol-pw',
    claims: {
      email: 'carol@example.org', email_verified: true, name: 'Carol Danvers',
      preferred_username: 'carol', groups: [],
    },
  },
};

const DEFAULT_CLIENTS = [{
  client_id: 'gatehouse',
  client_secret: 'gatehouse-secret',
  redirect_uris: ['http://127.0.0.1:8080/oauth2/callback'],
  post_logout_redirect_uris: ['http://127.0.0.1:8080/'],
  grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
  response_types: ['code'],
  token_endpoint_auth_method: 'client_secret_basic',
}];

const DEFAULT_TTL = {
  AccessToken: 3600,
  AuthorizationCode: 60,
  ClientCredentials: 600,
  IdToken: 3600,
  RefreshToken: 24 * 3600,
  Session: 24 * 3600,
  Grant: 24 * 3600,
  Interaction: 3600,
};

function loadConfig(path) {
  const raw = path ? JSON.parse(readFileSync(path, 'utf8')) : {};
  const users = new Map(); // login -> { password, claims }
  for (const [login, user] of Object.entries(raw.users ?? DEFAULT_USERS)) {
    const claims = { ...user.claims };
    claims.sub ??= login;
    users.set(login, { password: String(user.password ?? ''), claims });
  }
  return {
    port: Number(raw.port ?? 0),
    clients: raw.clients ?? DEFAULT_CLIENTS,
    users,
    ttl: { ...DEFAULT_TTL, ...raw.ttl },
    jwtResource: raw.jwt_resource ?? 'urn:gatehouse:test-api',
    pkceRequired: raw.pkce_required ?? true,
    exitOnStdinEof: raw.exit_on_stdin_eof ?? false,
  };
}

// ------------------------------------------------------ in-memory adapter --
// One shared store for every model. Entries carry an absolute expiry; lookups
// ignore expired ones and a periodic sweep drops them. Unlike the bundled
// adapter (an LRU capped at ~1000 entries) nothing is evicted early.

const store = {
  items: new Map(), // "Model:id" -> { payload, expiresAt }
  sessionUids: new Map(), // uid -> Session id
  userCodes: new Map(), // userCode -> "Model:id"
  grants: new Map(), // "Model:grantId" -> Set of "Model:id"

  get(key) {
    const entry = this.items.get(key);
    if (!entry) return undefined;
    if (entry.expiresAt <= Date.now()) {
      this.items.delete(key);
      return undefined;
    }
    return entry.payload;
  },

  sweep() {
    for (const key of this.items.keys()) this.get(key);
    for (const [uid, id] of this.sessionUids) if (!this.items.has(`Session:${id}`)) this.sessionUids.delete(uid);
    for (const [code, key] of this.userCodes) if (!this.items.has(key)) this.userCodes.delete(code);
    for (const [grant, keys] of this.grants) {
      for (const key of keys) if (!this.items.has(key)) keys.delete(key);
      if (keys.size === 0) this.grants.delete(grant);
    }
  },
};
setInterval(() => store.sweep(), 30_000).unref();

class MapAdapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    const expiresAt = expiresIn ? Date.now() + expiresIn * 1000 : Infinity;
    store.items.set(key, { payload, expiresAt });
    if (this.model === 'Session' && payload.uid) store.sessionUids.set(payload.uid, id);
    if (payload.userCode) store.userCodes.set(payload.userCode, key);
    if (payload.grantId) {
      const gkey = this.key(payload.grantId);
      if (!store.grants.has(gkey)) store.grants.set(gkey, new Set());
      store.grants.get(gkey).add(key);
    }
  }

  async find(id) {
    return store.get(this.key(id));
  }

  async findByUid(uid) {
    const id = store.sessionUids.get(uid);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode(userCode) {
    const key = store.userCodes.get(userCode);
    return key === undefined ? undefined : store.get(key);
  }

  async consume(id) {
    const payload = store.get(this.key(id));
    if (payload) payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    store.items.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    const gkey = this.key(grantId);
    for (const key of store.grants.get(gkey) ?? []) store.items.delete(key);
    store.grants.delete(gkey);
  }
}

// ------------------------------------------------------------------ pages --

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(title, body) {
  return `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>${esc(title)}</title>
<style>body{font-family:sans-serif;max-width:26em;margin:3em auto}label,input,button{display:block;margin:.4em 0}.error{color:#b00}</style>
</head><body><h1>${esc(title)}</h1>
${body}
</body></html>`;
}

function loginPage(uid, clientId, error, login = '') {
  return page('Sign in', `<p>to continue to <b>${esc(clientId)}</b></p>
${error ? `<p class="error" id="error">${esc(error)}</p>` : ''}
<form id="login-form" method="post" action="/interaction/${esc(uid)}/login">
<label for="login">Username</label><input id="login" name="login" value="${esc(login)}" autocomplete="username" autofocus required>
<label for="password">Password</label><input id="password" name="password" type="password" autocomplete="current-password" required>
<button id="submit" type="submit">Sign in</button>
</form>`);
}

// ---------------------------------------------------------------- provider --

async function signingKeys() {
  const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return [
    { ...rsa.privateKey.export({ format: 'jwk' }), kid: 'rs256-1', alg: 'RS256', use: 'sig' },
    { ...ec.privateKey.export({ format: 'jwk' }), kid: 'es256-1', alg: 'ES256', use: 'sig' },
  ];
}

// oidc-provider 9.13 refuses to talk to special-use addresses (127/8
// included) via an SSRF-guarding dispatcher. Back-channel logout in this
// setup targets loopback only, so drop that dispatcher and allow nothing
// *but* loopback instead.
function loopbackFetch(url, options) {
  const { hostname } = new URL(url);
  if (!['127.0.0.1', 'localhost', '[::1]'].includes(hostname)) {
    return Promise.reject(new Error(`test idp refuses outgoing request to non-loopback ${url}`));
  }
  const { dispatcher, ...rest } = options;
  return globalThis.fetch(url, rest);
}

function buildProvider(issuer, cfg, jwks) {
  const bySub = new Map([...cfg.users.values()].map((u) => [u.claims.sub, u]));
  const ttl = Object.fromEntries(Object.entries(cfg.ttl).map(([k, v]) => [k, Number(v)]));

  const provider = new Provider(issuer, {
    adapter: MapAdapter,
    clients: cfg.clients,
    jwks: { keys: jwks },
    cookies: { keys: ['gatehouse-idp-cookie-key-1', 'gatehouse-idp-cookie-key-2'] },
    clientDefaults: {
      grant_types: ['authorization_code'],
      response_types: ['code'],
      id_token_signed_response_alg: 'RS256',
      token_endpoint_auth_method: 'client_secret_basic',
    },
    conformIdTokenClaims: false,
    scopes: ['openid', 'offline_access', 'email', 'profile', 'groups', 'api'],
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name', 'preferred_username', 'department', 'employee_id'],
      groups: ['groups'],
    },
    pkce: { required: () => cfg.pkceRequired },
    ttl,
    // Refresh tokens whenever the client may use them, no offline_access needed.
    issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
    fetch: loopbackFetch,
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      backchannelLogout: { enabled: true },
      // Any authenticated client may introspect; only the owner may revoke.
      introspection: { enabled: true, allowedPolicy: async () => true },
      revocation: { enabled: true, allowedPolicy: async (ctx, client, token) => token.clientId === client.clientId },
      userinfo: { enabled: true },
      rpInitiatedLogout: {
        enabled: true,
        logoutSource: async (ctx, form) => {
          ctx.type = 'html';
          ctx.body = page('Sign out', `${form}
<button id="logout-yes" type="submit" form="op.logoutForm" name="logout" value="yes">Yes, sign me out</button>
<button id="logout-no" type="submit" form="op.logoutForm">No, stay signed in</button>`);
        },
        postLogoutSuccessSource: async (ctx) => {
          ctx.type = 'html';
          ctx.body = page('Signed out', '<p id="signed-out">You have been signed out.</p>');
        },
      },
      resourceIndicators: {
        enabled: true,
        // Only a single explicitly requested resource becomes the default;
        // without resource= tokens stay opaque (and usable at userinfo).
        defaultResource: async (ctx, client, oneOf) => oneOf,
        getResourceServerInfo: async (ctx, resource) => {
          if (resource !== cfg.jwtResource) {
            throw new errors.InvalidTarget(`unknown resource ${resource}`);
          }
          return {
            scope: 'openid email profile api',
            audience: resource,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
    findAccount: async (ctx, sub) => {
      const user = bySub.get(sub);
      if (!user) return undefined;
      return { accountId: sub, claims: async () => ({ ...user.claims }) };
    },
    renderError: async (ctx, out) => {
      ctx.type = 'html';
      ctx.body = page('Error', Object.entries(out)
        .map(([k, v]) => `<p><b>${esc(k)}</b>: <span id="${esc(k)}">${esc(v)}</span></p>`).join('\n'));
    },
  });
  provider.proxy = false;

  for (const ev of ['server_error', 'backchannel.error', 'grant.error', 'end_session.error']) {
    provider.on(ev, (ctx, err) => log(ev, err?.message ?? err, err?.error_description ?? ''));
  }
  provider.on('backchannel.success', (ctx, client) => log('backchannel logout delivered to', client.clientId));
  return provider;
}

// ------------------------------------------------------------ interactions --

async function readForm(req) {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 64 * 1024) throw new Error('form too large');
  }
  return Object.fromEntries(new URLSearchParams(body));
}

function send(res, status, html) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(html);
}

async function grantEverything(provider, details) {
  const { prompt, params, session, grantId } = details;
  const grant = grantId
    ? await provider.Grant.find(grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  const missing = prompt.details;
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [resource, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
    grant.addResourceScope(resource, scopes.join(' '));
  }
  return grant.save();
}

async function interactionRoute(provider, users, req, res, uid, action) {
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (err) {
    return send(res, 400, page('Error', `<p id="error">${esc(err.error_description ?? err.message)}</p>`));
  }
  if (details.uid !== uid) {
    return send(res, 400, page('Error', '<p id="error">interaction mismatch</p>'));
  }
  const { prompt, params } = details;

  if (action === undefined && req.method === 'GET') {
    if (prompt.name === 'login') return send(res, 200, loginPage(uid, params.client_id));
    if (prompt.name === 'consent') {
      const grantId = await grantEverything(provider, details);
      return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    }
    return send(res, 400, page('Error', `<p id="error">unsupported prompt ${esc(prompt.name)}</p>`));
  }

  if (action === 'login' && req.method === 'POST') {
    if (prompt.name !== 'login') return send(res, 400, page('Error', '<p id="error">not a login prompt</p>'));
    const form = await readForm(req);
    const user = users.get(form.login ?? '');
    const ok = user && crypto.timingSafeEqual(
      crypto.createHash('sha256').update(String(form.password ?? '')).digest(),
      crypto.createHash('sha256').update(user.password).digest(),
    );
    if (!ok) {
      log(`login failed for ${JSON.stringify(form.login)}`);
      return send(res, 401, loginPage(uid, params.client_id, 'Invalid username or password.', form.login ?? ''));
    }
    return provider.interactionFinished(req, res, { login: { accountId: user.claims.sub } }, { mergeWithLastSubmission: false });
  }

  res.writeHead(405, { allow: 'GET, POST' }).end();
}

// -------------------------------------------------------------------- main --

const cfg = loadConfig(process.argv[2]);
const jwks = await signingKeys();
let handler = (req, res) => res.writeHead(503).end();

const server = http.createServer((req, res) => handler(req, res));
server.keepAliveTimeout = 5000;
server.on('error', (err) => {
  log('server error:', err.message);
  process.exit(1);
});
await new Promise((resolve) => server.listen(cfg.port, HOST, resolve));

const { port } = server.address();
const issuer = `http://${HOST}:${port}`;
const provider = buildProvider(issuer, cfg, jwks);
// Static clients are only validated on first use; do it now so a bad client
// config fails at startup instead of in the middle of a test.
for (const { client_id: id } of cfg.clients) {
  try {
    await provider.Client.find(id);
  } catch (err) {
    log(`invalid client ${JSON.stringify(id)}: ${err.error_description ?? err.message}`);
    process.exit(1);
  }
}

// Test control: PUT /__test/users/<login> with a JSON object of claims changes
// that user's claims from the next token on (a null value removes a claim; `sub`
// cannot change). Lets tests see how a relying party follows changed attributes.
async function updateUser(req, res, login) {
  const user = cfg.users.get(login);
  if (req.method !== 'PUT' || !user) return res.writeHead(user ? 405 : 404).end();
  let body = '';
  for await (const chunk of req) body += chunk;
  let changes;
  try {
    changes = JSON.parse(body);
  } catch {
    return res.writeHead(400).end();
  }
  for (const [k, v] of Object.entries(changes)) {
    if (k === 'sub') continue;
    if (v === null) delete user.claims[k];
    else user.claims[k] = v;
  }
  log(`claims of ${login} changed: ${Object.keys(changes).join(', ')}`);
  res.writeHead(204).end();
}

// Test control: PUT /__test/clients with a client's metadata (the same JSON as an entry of
// `clients`) registers that client, or replaces one registered this way: a relying party
// whose own port is known only once it runs (it listens on port 0) starts the IdP first and
// tells it its redirect URIs afterwards. Answers 204, or 400 with the reason the metadata is
// refused. Clients from the config file cannot be replaced.
async function registerClient(req, res) {
  if (req.method !== 'PUT') return res.writeHead(405).end();
  let body = '';
  for await (const chunk of req) body += chunk;
  let metadata;
  try {
    metadata = JSON.parse(body);
  } catch {
    return res.writeHead(400).end('not JSON');
  }
  const id = metadata?.client_id;
  if (typeof id !== 'string' || !id || cfg.clients.some((c) => c.client_id === id)) {
    return res.writeHead(400).end('a new client_id is needed');
  }
  const key = `Client:${id}`;
  const before = store.items.get(key);
  store.items.set(key, { payload: metadata, expiresAt: Infinity });
  try {
    await provider.Client.find(id);
  } catch (err) {
    if (before) store.items.set(key, before);
    else store.items.delete(key);
    return res.writeHead(400).end(String(err.error_description ?? err.message));
  }
  log(`client ${JSON.stringify(id)} registered: ${JSON.stringify(metadata.redirect_uris ?? [])}`);
  res.writeHead(204).end();
}

// Test control: GET /__test/jwks-fetches answers {"count": n}, how many times the JWKS was
// fetched; POST /__test/sign with {"header": {...}, "claims": {...}} answers a compact JWT
// signed RS256 with the IdP's own key (kid rs256-1 unless the header names another), so
// tests can make tokens the IdP would never issue (sid-only logout tokens, ID tokens used
// as bearer tokens, odd typ headers).
let jwksFetches = 0;
const b64url = (buf) => Buffer.from(buf).toString('base64url');
async function signForTest(req, res) {
  if (req.method !== 'POST') return res.writeHead(405).end();
  let body = '';
  for await (const chunk of req) body += chunk;
  let input;
  try {
    input = JSON.parse(body);
  } catch {
    return res.writeHead(400).end();
  }
  const header = { alg: 'RS256', kid: 'rs256-1', ...(input.header ?? {}) };
  const signingInput = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(input.claims ?? {}))}`;
  const key = crypto.createPrivateKey({ key: jwks[0], format: 'jwk' });
  const signature = crypto.sign('sha256', Buffer.from(signingInput), key);
  res.writeHead(200, { 'content-type': 'text/plain' });
  res.end(`${signingInput}.${b64url(signature)}`);
}

const oidc = provider.callback();
handler = (req, res) => {
  if (req.url === '/__test/jwks-fetches') {
    res.writeHead(200, { 'content-type': 'application/json' });
    return res.end(JSON.stringify({ count: jwksFetches }));
  }
  if (req.url === '/__test/sign') {
    return signForTest(req, res).catch(() => res.writeHead(500).end());
  }
  if (req.url === '/__test/clients') {
    return registerClient(req, res).catch(() => res.writeHead(500).end());
  }
  if (req.url.split('?')[0] === '/jwks') jwksFetches += 1;
  const control = /^\/__test\/users\/([\w.@-]+)$/.exec(req.url);
  if (control) {
    return updateUser(req, res, control[1]).catch(() => res.writeHead(500).end());
  }
  const m = /^\/interaction\/([\w-]+)(?:\/(login))?\/?(?:\?.*)?$/.exec(req.url);
  if (!m) return oidc(req, res);
  interactionRoute(provider, cfg.users, req, res, m[1], m[2]).catch((err) => {
    log('interaction error', err);
    if (!res.headersSent) send(res, 500, page('Error', `<p id="error">${esc(err.message)}</p>`));
    else res.end();
  });
};

process.stdout.write(`${JSON.stringify({ issuer, port })}\n`);
log(`listening on ${issuer} with ${cfg.clients.length} client(s), ${cfg.users.size} user(s)`);

// Optional: die with the parent when it closes our stdin (orphan guard).
if (cfg.exitOnStdinEof) process.stdin.on('end', () => process.exit(0)).resume();

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    server.close();
    server.closeAllConnections();
    process.exit(0);
  });
}
