// A small app behind Gatehouse that trusts no header it has not verified.
//
// It checks X-Gatehouse-Identity (a JWT signed by Gatehouse) against the keys Gatehouse serves
// at /.well-known/gatehouse/jwks.json with `jose`: signature (ES256 or EdDSA, the key picked by
// `kid`; createRemoteJWKSet fetches the set again when an unknown `kid` shows up, so
// Gatehouse's key rotation needs no restart), issuer, audience and expiry. A request without a
// valid assertion gets 401.
//
// Run it (Node.js 20+, `npm ci` in this folder):
//   GATEHOUSE_JWKS_URL=http://127.0.0.1:4180/.well-known/gatehouse/jwks.json \
//   GATEHOUSE_ISSUER=gatehouse GATEHOUSE_AUDIENCE=app PORT=8080 node app.mjs
// then point an [[upstreams]] entry with id "app" (the default audience) at it, sign in
// through Gatehouse and open any page:
//   curl -b cookies.txt http://127.0.0.1:4180/     ->  Hello, alice!

import http from 'node:http';
import { createRemoteJWKSet, jwtVerify } from 'jose';

const JWKS_URL = new URL(process.env.GATEHOUSE_JWKS_URL);
const ISSUER = process.env.GATEHOUSE_ISSUER ?? 'gatehouse';
const AUDIENCE = process.env.GATEHOUSE_AUDIENCE;
const PORT = Number(process.env.PORT ?? 8080);
const HEADER = 'x-gatehouse-identity';

const jwks = createRemoteJWKSet(JWKS_URL, { cacheMaxAge: 300_000, cooldownDuration: 1_000 });

function answer(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(data),
  });
  res.end(data);
}

const server = http.createServer(async (req, res) => {
  // Every copy of the header, so that two are refused rather than one picked.
  const tokens = [];
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    if (req.rawHeaders[i].toLowerCase() === HEADER) tokens.push(req.rawHeaders[i + 1]);
  }
  if (tokens.length !== 1) {
    return answer(res, 401, { error: 'exactly one X-Gatehouse-Identity header is needed' });
  }
  try {
    const { payload } = await jwtVerify(tokens[0], jwks, {
      issuer: ISSUER,
      audience: AUDIENCE,
      algorithms: ['ES256', 'EdDSA'],
      requiredClaims: ['exp', 'iat', 'sub'],
      clockTolerance: 5,
    });
    const name = payload.preferred_username ?? payload.sub;
    answer(res, 200, { greeting: `Hello, ${name}!`, sub: payload.sub, app: 'node' });
  } catch (e) {
    answer(res, 401, { error: `invalid identity: ${e.code ?? e.name}` });
  }
});

server.listen(PORT, '127.0.0.1', () => {
  console.log(`listening on 127.0.0.1:${server.address().port}`);
});
