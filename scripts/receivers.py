"""Local receivers for the demo's Slack, Teams and webhook targets: one HTTP
server per name on a free loopback port, recording every request (path,
headers, body) as a JSON line in DIR/NAME.jsonl, answering Slack's `200 ok`,
the Teams workflow's `202` and the webhook's `204`. Prints `NAME PORT` per
line once listening. The function reaches them only through its test-only
allowance (NOTIFY_TEST_ONLY_LOCAL_TARGETS), which the stack never sets.

usage: receivers.py DIR NAME...
"""
import json
import pathlib
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

out = pathlib.Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
ANSWERS = {"slack": (200, b"ok"), "teams": (202, b""), "webhook": (204, b"")}


def handler(name):
    class H(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            with open(out / f"{name}.jsonl", "a") as f:
                f.write(json.dumps({"path": self.path, "headers": dict(self.headers), "body": body.decode()}) + "\n")
            status, text = ANSWERS.get(name, (200, b"ok"))
            self.send_response(status)
            self.send_header("content-length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

        def log_message(self, *args):
            pass

    return H


servers = []
for name in sys.argv[2:]:
    s = ThreadingHTTPServer(("127.0.0.1", 0), handler(name))
    servers.append(s)
    print(name, s.server_address[1], flush=True)
for s in servers[1:]:
    threading.Thread(target=s.serve_forever, daemon=True).start()
servers[0].serve_forever()
