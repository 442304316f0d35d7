"""The live view of a selfagent desktop: noVNC served by websockify, behind a token.

It runs as the desktop's service user (not the agent's), on port 80, and reads its token
from a file only that user can read. Every HTTP request and every WebSocket upgrade must carry the view token, either as the
`token` query parameter (the view URL has it) or as the cookie this server sets when it
first sees a valid one (so the page's scripts and its WebSocket carry it too). Anything else
gets 403. Each connection runs in its own process, so several viewers can watch at once.
"""

import hashlib
import hmac
import http.cookies
import os
import sys
import urllib.parse

from websockify import websocketproxy

TOKEN_FILE = "/run/selfagent/view-token"
try:
    with open(TOKEN_FILE) as f:
        TOKEN = f.read().strip()
except OSError as e:
    sys.exit(f"view.py: cannot read the token: {e}")
if len(TOKEN) < 16:
    sys.exit("view.py: the view token must be at least 16 characters")
# Cookies are per host, not per port: name the cookie after the token so that views of
# several desktops on 127.0.0.1 do not overwrite each other's cookie.
COOKIE = "selfagent_view_" + hashlib.sha256(TOKEN.encode()).hexdigest()[:12]


def _matches(candidate):
    return candidate is not None and hmac.compare_digest(candidate.encode(), TOKEN.encode())


class TokenHandler(websocketproxy.ProxyRequestHandler):
    def _token_from_query(self):
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        values = query.get("token")
        return values[0] if values else None

    def _token_from_cookie(self):
        jar = http.cookies.SimpleCookie()
        try:
            jar.load(self.headers.get("Cookie", ""))
        except http.cookies.CookieError:
            return None
        morsel = jar.get(COOKIE)
        return morsel.value if morsel else None

    def _authorized(self):
        self._set_cookie = False
        if _matches(self._token_from_query()):
            self._set_cookie = True
            return True
        return _matches(self._token_from_cookie())

    def end_headers(self):
        if getattr(self, "_set_cookie", False):
            self.send_header(
                "Set-Cookie", f"{COOKIE}={TOKEN}; Path=/; HttpOnly; SameSite=Strict"
            )
            self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def _refuse(self):
        self.send_error(403, "selfagent view: missing or wrong token")

    def do_GET(self):
        if not self._authorized():
            return self._refuse()
        super().do_GET()

    def do_HEAD(self):
        if not self._authorized():
            return self._refuse()
        super().do_HEAD()

    def handle_upgrade(self):
        # WebSocket upgrades bypass do_GET in websockify: check them here too.
        if not self._authorized():
            return self._refuse()
        super().handle_upgrade()

    def do_POST(self):
        self._refuse()

    def list_directory(self, path):
        self.send_error(404, "not found")
        return None


def main():
    server = websocketproxy.WebSocketProxy(
        RequestHandlerClass=TokenHandler,
        listen_host="0.0.0.0",
        listen_port=80,
        target_host="127.0.0.1",
        target_port=5900,
        web="/usr/share/novnc",
        verbose=False,
    )
    server.start_server()


if __name__ == "__main__":
    main()
