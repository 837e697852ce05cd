#!/usr/bin/python3
"""A real SMTP server for the Email OTP tests (Debian's python3-aiosmtpd).

Binds 127.0.0.1 on a free port, prints the port on stdout, and writes each message it
accepts as one file into --mailbox (written to a dot-file, then renamed, so a reader never
sees half a message). The first line of each file is `X-Test-Rcpt-To: <recipients>`.

Options: --auth USER:PASSWORD (AUTH PLAIN/LOGIN required), --tls CERT KEY (offers STARTTLS
and requires it), --delay SECONDS (waits before answering DATA: a slow server), --refuse
(answers every RCPT with 550).
"""

import argparse
import asyncio
import os
import socket
import ssl
import sys
import time
import uuid

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class Handler:
    def __init__(self, mailbox, delay, refuse):
        self.mailbox = mailbox
        self.delay = delay
        self.refuse = refuse

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.refuse:
            return "550 5.1.1 mailbox unavailable (test refusal)"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.delay:
            await asyncio.sleep(self.delay)
        name = f"{time.time_ns()}-{uuid.uuid4().hex}.eml"
        tmp = os.path.join(self.mailbox, "." + name)
        with open(tmp, "wb") as f:
            f.write(b"X-Test-Rcpt-To: " + ",".join(envelope.rcpt_tos).encode() + b"\r\n")
            f.write(envelope.original_content or envelope.content)
        os.rename(tmp, os.path.join(self.mailbox, name))
        return "250 OK queued"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mailbox", required=True)
    ap.add_argument("--auth")
    ap.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--refuse", action="store_true")
    args = ap.parse_args()

    handler = Handler(args.mailbox, args.delay, args.refuse)
    kwargs = {}
    if args.tls:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(args.tls[0], args.tls[1])
        kwargs.update(tls_context=ctx, require_starttls=True)
    if args.auth:
        user, password = args.auth.split(":", 1)

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = (
                isinstance(auth_data, LoginPassword)
                and auth_data.login == user.encode()
                and auth_data.password == password.encode()
            )
            return AuthResult(success=ok, handled=False)

        kwargs.update(
            authenticator=authenticator,
            auth_required=True,
            auth_require_tls=bool(args.tls),
        )

    async def serve():
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(handler, hostname="smtp.test", **kwargs), sock=sock
        )
        print(sock.getsockname()[1], flush=True)
        await server.serve_forever()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
