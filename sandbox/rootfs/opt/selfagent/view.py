"""The live view of a selfagent desktop: noVNC served by websockify, behind a token.

It runs as the desktop's service user (not the agent's), on port 80, and reads its tokens
from files only that user can read. Every HTTP request and every WebSocket upgrade must
carry a token, either as the `token` query parameter (the view URLs have it, in the page's
and in the WebSocket's path) or as the cookie this server sets when it first sees a valid
one. Anything else gets 403. Each connection runs in its own process, so several viewers can
watch at once.

Two tokens: the view token gives control; the watch token (the view-only URL) does not.
A watch connection's messages to the VNC server pass through `InputFilter`, which drops
every key, pointer, clipboard, resize and power message and lets only what a viewer needs
through (pixel format, encodings, update requests, fences); anything it does not know
closes the connection. Xvnc ignores input from the view-only password as well, so either
alone would hold.
"""

import hashlib
import hmac
import http.cookies
import os
import sys
import urllib.parse

from websockify import websocketproxy

TOKEN_FILE = "/run/selfagent/view-token"
WATCH_FILE = "/run/selfagent/watch-token"
try:
    with open(TOKEN_FILE) as f:
        TOKEN = f.read().strip()
except OSError as e:
    sys.exit(f"view.py: cannot read the token: {e}")
if len(TOKEN) < 16:
    sys.exit("view.py: the view token must be at least 16 characters")
try:
    with open(WATCH_FILE) as f:
        WATCH = f.read().strip()
except OSError:
    WATCH = ""
if WATCH and len(WATCH) < 16:
    sys.exit("view.py: the watch token must be at least 16 characters")


# Cookies are per host, not per port: name each cookie after its token so that views of
# several desktops on 127.0.0.1 do not overwrite each other's cookies.
def _cookie_name(token, kind):
    return f"selfagent_{kind}_" + hashlib.sha256(token.encode()).hexdigest()[:12]


COOKIE = _cookie_name(TOKEN, "view")
WATCH_COOKIE = _cookie_name(WATCH, "watch") if WATCH else None


def _matches(candidate, token=TOKEN):
    return (
        candidate is not None
        and bool(token)
        and hmac.compare_digest(candidate.encode(), token.encode())
    )


def _ours_listening(port):
    """Whether a socket of this process's user listens on 127.0.0.1:port."""
    want = "0100007F:%04X" % port
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[1] == want and fields[3] == "0A":
                    return int(fields[7]) == os.getuid()
    except (OSError, StopIteration, IndexError, ValueError):
        pass
    return False


class Refused(Exception):
    """A watch connection sent what a viewer has no business sending."""


class InputFilter:
    """The client-to-server half of RFB (RFC 6143) for a view-only connection: the
    handshake passes (with the shared flag forced on, so a watcher cannot disconnect the
    others), then each message is read whole and forwarded or dropped by its type."""

    # type -> (fixed length, forward?) ; variable lengths are worked out in _length
    PASS = {0: 20, 3: 10, 150: 10}  # SetPixelFormat, FramebufferUpdateRequest, EnableContinuousUpdates
    DROP = {4: 8, 5: 6, 252: 4}  # KeyEvent, PointerEvent, xvp (shutdown, reboot)

    def __init__(self):
        self.buf = b""
        self.phase = "version"
        self.dropped = 0

    def feed(self, data):
        self.buf += data
        out = []
        while True:
            n = self._next(self.buf)
            if n is None:
                break
            length, forward = n
            chunk, self.buf = self.buf[:length], self.buf[length:]
            if forward:
                out.append(chunk)
            else:
                self.dropped += 1
        return b"".join(out)

    def _next(self, b):
        """The length of the next whole unit in `b` and whether it passes; None: wait."""
        if self.phase == "version":
            if len(b) < 12:
                return None
            self.phase = "security"
            return 12, True
        if self.phase == "security":
            if len(b) < 1:
                return None
            if b[0] == 2:  # VNC authentication
                self.phase = "auth"
            elif b[0] == 1:  # none
                self.phase = "init"
            else:
                raise Refused(f"security type {b[0]}")
            return 1, True
        if self.phase == "auth":
            if len(b) < 16:
                return None
            self.phase = "init"
            return 16, True
        if self.phase == "init":
            if len(b) < 1:
                return None
            self.phase = "messages"
            self.buf = b"\x01" + b[1:]  # ClientInit: shared
            return 1, True
        if not b:
            return None
        kind = b[0]
        if kind in self.PASS:
            n = self.PASS[kind]
            return (n, True) if len(b) >= n else None
        if kind in self.DROP:
            n = self.DROP[kind]
            return (n, False) if len(b) >= n else None
        if kind == 2:  # SetEncodings: 4 + 4 * count
            if len(b) < 4:
                return None
            n = 4 + 4 * int.from_bytes(b[2:4], "big")
            return (n, True) if len(b) >= n else None
        if kind == 6:  # ClientCutText: 8 + length (negative: extended clipboard)
            if len(b) < 8:
                return None
            n = 8 + abs(int.from_bytes(b[4:8], "big", signed=True))
            return (n, False) if len(b) >= n else None
        if kind == 248:  # QEMU: subtype 0 is an extended key event
            if len(b) < 2:
                return None
            if b[1] != 0:
                raise Refused(f"QEMU message subtype {b[1]}")
            return (12, False) if len(b) >= 12 else None
        if kind == 250:  # Fence: 9 + payload
            if len(b) < 9:
                return None
            n = 9 + b[8]
            return (n, True) if len(b) >= n else None
        if kind == 251:  # SetDesktopSize: 8 + 16 * screens
            if len(b) < 8:
                return None
            n = 8 + 16 * b[6]
            return (n, False) if len(b) >= n else None
        raise Refused(f"message type {kind}")


class TokenHandler(websocketproxy.ProxyRequestHandler):
    def _token_from_query(self):
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        values = query.get("token")
        return values[0] if values else None

    def _token_from_cookie(self, name):
        jar = http.cookies.SimpleCookie()
        try:
            jar.load(self.headers.get("Cookie", ""))
        except http.cookies.CookieError:
            return None
        morsel = jar.get(name) if name else None
        return morsel.value if morsel else None

    def _authorized(self):
        """Sets self._watch (view-only) and whether to set a cookie; False: refuse. A
        token in the query decides; else the cookies, the view-only one first (a browser
        holding both is treated as the lesser)."""
        self._set_cookie = None
        self._watch = False
        query = self._token_from_query()
        if _matches(query, TOKEN):
            self._set_cookie = (COOKIE, TOKEN)
            return True
        if _matches(query, WATCH):
            self._set_cookie = (WATCH_COOKIE, WATCH)
            self._watch = True
            return True
        if _matches(self._token_from_cookie(WATCH_COOKIE), WATCH):
            self._watch = True
            return True
        return _matches(self._token_from_cookie(COOKIE), TOKEN)

    def end_headers(self):
        if getattr(self, "_set_cookie", None):
            name, value = self._set_cookie
            self.send_header(
                "Set-Cookie", f"{name}={value}; Path=/; HttpOnly; SameSite=Strict"
            )
            self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def recv_frames(self):
        bufs, closed = super().recv_frames()
        if getattr(self, "_watch", False):
            if not hasattr(self, "_filter"):
                self._filter = InputFilter()
            try:
                bufs = [self._filter.feed(b) for b in bufs]
            except Refused as e:
                self.log_message("view-only connection closed: %s", e)
                raise self.CClose(1008, "view-only")
        return bufs, closed

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
        # A window stream (`stream=N`, served by selfagent-stream on 5900+N) instead of the
        # whole screen. Each connection is a process of its own: changing the target here
        # changes it for this connection only.
        values = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("stream")
        if values:
            try:
                n = int(values[0])
            except ValueError:
                n = 0
            if not 1 <= n <= 99:
                return self.send_error(400, "selfagent view: stream must be 1 to 99")
            # Ports above 1024 are the agent's to listen on as well: only a listener of
            # our own user (x11vnc, started by selfagent-stream) is a stream.
            if not _ours_listening(5900 + n):
                return self.send_error(404, "selfagent view: no such stream")
            self.server.target_port = 5900 + n
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
