"""A small app behind Gatehouse that trusts no header it has not verified.

It checks X-Gatehouse-Identity (a JWT signed by Gatehouse) against the keys Gatehouse serves
at /.well-known/gatehouse/jwks.json: signature (ES256 or EdDSA, the key picked by `kid`, the
key set fetched again when an unknown `kid` shows up, so Gatehouse's key rotation needs no
restart), issuer, audience and expiry. A request without a valid assertion gets 401.

Run it (Python 3.9+, `pip install -r requirements.txt`):
    GATEHOUSE_JWKS_URL=http://127.0.0.1:4180/.well-known/gatehouse/jwks.json \
    GATEHOUSE_ISSUER=gatehouse GATEHOUSE_AUDIENCE=app PORT=8080 python3 app.py
then point an [[upstreams]] entry with id "app" (the default audience) at it, sign in through
Gatehouse and open any page:
    curl -b cookies.txt http://127.0.0.1:4180/     ->  Hello, alice!
"""

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt

JWKS_URL = os.environ["GATEHOUSE_JWKS_URL"]
ISSUER = os.environ.get("GATEHOUSE_ISSUER", "gatehouse")
AUDIENCE = os.environ["GATEHOUSE_AUDIENCE"]
PORT = int(os.environ.get("PORT", "8080"))
HEADER = "X-Gatehouse-Identity"

# Caches the key set; looks the keys up again when a token names a kid it does not know.
JWKS = jwt.PyJWKClient(JWKS_URL, cache_keys=True, lifespan=300)


def verify(token):
    """The claims of a valid assertion; raises jwt.PyJWTError otherwise."""
    key = JWKS.get_signing_key_from_jwt(token)
    return jwt.decode(
        token,
        key.key,
        algorithms=["ES256", "EdDSA"],
        audience=AUDIENCE,
        issuer=ISSUER,
        leeway=5,
        options={"require": ["exp", "iat", "iss", "aud", "sub"]},
    )


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        tokens = self.headers.get_all(HEADER) or []
        if len(tokens) != 1:
            return self.answer(401, {"error": f"exactly one {HEADER} header is needed"})
        try:
            claims = verify(tokens[0])
        except jwt.PyJWTError as e:
            return self.answer(401, {"error": f"invalid identity: {e.__class__.__name__}"})
        name = claims.get("preferred_username") or claims["sub"]
        self.answer(200, {"greeting": f"Hello, {name}!", "sub": claims["sub"], "app": "python"})

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
    print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()
