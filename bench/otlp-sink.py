#!/usr/bin/env python3
"""otlp-sink.py [PORT]: an OTLP/HTTP trace receiver that only counts.

For bench/otel-cost.sh: accepts POST /v1/traces (protobuf or JSON), answers
200 with an empty ExportTraceServiceResponse (zero bytes is a valid
protobuf message), and on SIGTERM or SIGINT prints how many exports and
bytes it took. Loopback only; the standard library only.
"""
import http.server
import signal
import sys

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 4318
counts = {"exports": 0, "bytes": 0}


class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 16))
            if not chunk:
                break
            remaining -= len(chunk)
        if self.path == "/v1/traces":
            counts["exports"] += 1
            counts["bytes"] += length
            status = 200
        else:
            status = 404
        ctype = self.headers.get("Content-Type") or "application/x-protobuf"
        body = b"{}" if "json" in ctype else b""
        self.send_response(status)
        self.send_header("Content-Type", ctype if status == 200 else "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def stop(*_):
    print(f"otlp-sink: {counts['exports']} exports, {counts['bytes']} bytes", flush=True)
    sys.exit(0)


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
server = http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Sink)
server.serve_forever()
