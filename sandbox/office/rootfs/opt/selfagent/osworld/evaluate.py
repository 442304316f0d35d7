"""Runs OSWorld's own evaluator (the `desktop-env` package's getters and metrics) inside
the desktop, or inside an inspector container started from an episode's final-state
snapshot, and prints one JSON line: {"score": float, "details": [...]} or {"error": "..."}.

selfagent runs it with `python -I` (the agent can neither change nor shadow it), as root on
the live desktop, as the desktop's user in an inspector (where no agent process runs):
    evaluate.py < request.json
where the request is {"evaluator": <OSWorld's evaluator object>, "files": {name: base64}}:
the files are the expected files (`cloud_file`, `cache_file`) from the import cache.

OSWorld's getters talk to its VM over HTTP and through `env.controller`; here `env` is
local: files are read as the desktop's user (the agent's links cannot reach root's files),
commands run as that user, Chromium is reached on its debugging port, VLC on its HTTP
port. Metrics are loaded module by module from OSWorld's own export lists, so a module
whose dependency is left out (easyocr: torch) costs only its own functions.

    evaluate.py --self-test    import every module and print what loads (the image build)
    evaluate.py --list         the metric and getter names that load, as JSON
"""
import ast
import base64
import http.server
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import traceback
import types

USER = "user"
HOME = "/home/user"
# The most a getter reads of one file: an agent can make a sparse file of any size.
MAX_FILE = 256 << 20
STUBS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stubs")
A11Y = os.path.join(os.path.dirname(os.path.abspath(__file__)), "a11y.py")


def as_user(argv, **kw):
    # As root (the live desktop) through runuser; already the user in an inspector.
    prefix = ["runuser", "-u", USER, "--"] if os.geteuid() == 0 else []
    return subprocess.run(prefix + argv, capture_output=True, **kw)


def package_dir():
    spec = importlib.util.find_spec("desktop_env")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("OSWorld's desktop-env package is not installed")
    return list(spec.submodule_search_locations)[0]


def bare_packages():
    """desktop_env's __init__ files import the whole harness (gymnasium, cloud SDKs, every
    metric): register the packages without running them, so each module imports alone."""
    root = package_dir()
    sys.path.insert(0, STUBS)
    for name, sub in [("desktop_env", ""), ("desktop_env.evaluators", "evaluators"),
                      ("desktop_env.evaluators.metrics", "evaluators/metrics"),
                      ("desktop_env.evaluators.getters", "evaluators/getters")]:
        if name not in sys.modules:
            m = types.ModuleType(name)
            m.__path__ = [os.path.join(root, sub)]
            sys.modules[name] = m
    return root


def exports(root, package):
    """{function: module} from the package's `from .module import (...)` lines."""
    path = os.path.join(root, "evaluators", package, "__init__.py")
    tree = ast.parse(open(path).read())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            for alias in node.names:
                out[alias.name] = node.module
    return out


def load(root, package, name, errors):
    module = exports(root, package).get(name)
    if module is None:
        raise LookupError(f"OSWorld has no {package[:-1]} `{name}`")
    full = f"desktop_env.evaluators.{package}.{module}"
    try:
        return getattr(importlib.import_module(full), name)
    except Exception as e:  # an import that fails names its module and the cause
        errors.append(f"{full}: {type(e).__name__}: {e}")
        raise RuntimeError(f"`{name}` cannot be loaded here ({full}: {type(e).__name__}: {e})")


class Controller:
    """What OSWorld's getters ask of `env.controller`, answered inside the desktop."""

    def get_file(self, path):
        r = as_user(["head", "-c", str(MAX_FILE + 1), "--", path])
        if r.returncode != 0:
            return None
        if len(r.stdout) > MAX_FILE:
            raise RuntimeError(f"{path} is larger than {MAX_FILE} bytes")
        return r.stdout

    def execute_python_command(self, command):
        # OSWorld's server imports pyautogui first; only scripts that use it need it (an
        # inspector has no screen to import it against).
        prefix = "import pyautogui; import time; pyautogui.FAILSAFE = False; " \
            if "pyautogui" in command else "import time; "
        r = as_user([sys.executable, "-c", prefix + command], timeout=60)
        return {"status": "success" if r.returncode == 0 else "error",
                "output": r.stdout.decode(errors="replace"),
                "error": r.stderr.decode(errors="replace"), "returncode": r.returncode}

    def get_terminal_output(self):
        # The first terminal's text, read from the accessibility tree as OSWorld's server.
        return self._a11y("terminal")

    def get_accessibility_tree(self):
        # The tree as OSWorld's server serves it (a11y.py); None in an inspector, where no
        # session runs (its getters then fail, as on a VM whose tree cannot be read).
        return self._a11y("dump")

    def _a11y(self, mode):
        r = as_user(["/usr/bin/python3", "-I", A11Y, mode], timeout=60)
        if r.returncode != 0 or not r.stdout:
            return None
        return r.stdout.decode(errors="replace")

    def get_vm_platform(self):
        return "Linux"

    def get_vm_screen_size(self):
        out = as_user(["xdpyinfo"]).stdout.decode()
        for line in out.splitlines():
            if "dimensions:" in line:
                w, h = line.split()[1].split("x")
                return {"width": int(w), "height": int(h)}
        return None

    def get_vm_window_size(self, app_class_name):
        return None

    def get_vm_wallpaper(self):
        return None

    def get_vm_desktop_path(self):
        return f"{HOME}/Desktop"

    def get_vm_directory_tree(self, path):
        def walk(p):
            node = {"type": "directory" if os.path.isdir(p) else "file", "name": os.path.basename(p)}
            if node["type"] == "directory":
                node["children"] = [walk(os.path.join(p, c)) for c in sorted(os.listdir(p))]
            return node
        return walk(path) if os.path.exists(path) else None


class Execute(http.server.BaseHTTPRequestHandler):
    """OSWorld's VM server's /execute (what `vm_command_line` posts to), as the user."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        command, shell = body.get("command"), body.get("shell", False)
        if self.path.rstrip("/") not in ("/execute", "/setup/execute"):
            self.send_error(404)
            return
        argv = ["bash", "-c", command] if shell or isinstance(command, str) else list(command)
        try:
            r = as_user(argv, timeout=60)
            reply = {"status": "success", "output": r.stdout.decode(errors="replace"),
                     "error": r.stderr.decode(errors="replace"), "returncode": r.returncode}
        except subprocess.TimeoutExpired:
            reply = {"status": "error", "output": "", "error": "timed out", "returncode": -1}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class Env:
    """The `env` OSWorld's getters take: this desktop."""

    def __init__(self, cache_dir, server_port):
        self.cache_dir = cache_dir
        self.vm_ip = "127.0.0.1"
        self.server_port = server_port
        self.chromium_port = 1337
        self.vlc_port = 8080
        self.vm_platform = "Linux"
        self.current_use_proxy = False
        self.controller = Controller()


def evaluate(request):
    root = bare_packages()
    errors = []
    ev = request["evaluator"]
    funcs = ev["func"] if isinstance(ev["func"], list) else [ev["func"]]
    n = len(funcs)
    results = ev.get("result") if isinstance(ev.get("result"), list) else [ev.get("result")]
    expected = ev.get("expected") if isinstance(ev.get("expected"), list) else [ev.get("expected")] * n
    options = ev.get("options") if isinstance(ev.get("options"), list) else [ev.get("options")] * n
    conj = ev.get("conj", "and")
    cache = tempfile.mkdtemp(prefix="osworld-cache-")
    os.chmod(cache, 0o700)
    for name, data in request.get("files", {}).items():
        if os.sep in name or name.startswith("."):
            raise ValueError(f"a cached file has a bad name: {name!r}")
        with open(os.path.join(cache, name), "wb") as f:
            f.write(base64.b64decode(data))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Execute)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = Env(cache, server.server_address[1])

    def getter(config):
        if not config:
            return None
        kind = config["type"]
        if kind == "cloud_file":
            dests = config["dest"] if config.get("multi") else [config.get("dest") or config.get("path")]
            for d in dests:
                if not os.path.exists(os.path.join(cache, os.path.basename(d))):
                    raise FileNotFoundError(
                        f"the expected file {d} is not in the import cache "
                        "(import the task with `selfagent tasks import-osworld --fetch`)")
        return load(root, "getters", f"get_{kind}", errors)(env, config)

    scores, details = [], []
    for i, func in enumerate(funcs):
        metric = load(root, "metrics", func, errors)
        try:
            got = getter(results[i] if i < len(results) else None)
        except FileNotFoundError as e:
            if "import cache" in str(e):
                raise
            got = None  # as OSWorld: the file is missing, the metric scores it
        want = expected[i] if i < len(expected) else None
        opts = (options[i] if i < len(options) else None) or {}
        score = float(metric(got, getter(want), **opts) if want else metric(got, **opts))
        details.append({"func": func, "score": score})
        if conj == "and" and score == 0.0:
            return {"score": 0.0, "details": details}
        if conj == "or" and score == 1.0:
            return {"score": 1.0, "details": details}
        scores.append(score)
    total = sum(scores) / len(scores) if conj == "and" else max(scores)
    server.shutdown()
    return {"score": total, "details": details}


def loadable():
    root = bare_packages()
    out = {"metrics": [], "getters": [], "failed": []}
    for package in ("metrics", "getters"):
        for name, module in sorted(exports(root, package).items()):
            try:
                importlib.import_module(f"desktop_env.evaluators.{package}.{module}")
                out[package].append(name)
            except Exception as e:
                entry = f"{package}.{module}: {type(e).__name__}: {e}"
                if entry not in out["failed"]:
                    out["failed"].append(entry)
    return out


def main():
    if "--list" in sys.argv or "--self-test" in sys.argv:
        out = loadable()
        print(json.dumps(out, indent=None if "--list" in sys.argv else 1))
        # The image build fails when a module it needs does not load.
        return 1 if "--self-test" in sys.argv and out["failed"] else 0
    out, sys.stdout = sys.stdout, sys.stderr  # what getters and metrics print is not the reply
    try:
        reply = evaluate(json.load(sys.stdin))
    except Exception as e:
        tb = traceback.extract_tb(e.__traceback__)
        where = f" (at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno})" if tb else ""
        reply = {"error": f"{type(e).__name__}: {e}{where}"}
    out.write(json.dumps(reply) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
