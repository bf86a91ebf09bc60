"""A GRIP origin written the way Pushpin users write theirs: gripcontrol
builds the hold instructions and checks Grip-Sig. Started by
tests/grip_ecosystem.rs; prints its port, then serves until killed.

Paths (CHANNEL is the last segment):
  /stream/CHANNEL        Grip-Hold: stream headers (gripcontrol's channel header)
  /response/CHANNEL      application/grip-instruct response hold (timeout 5 s)
  /instruct/CHANNEL      application/grip-instruct stream hold with a start body
  /ws/CHANNEL            WebSocket-over-HTTP: subscribes on OPEN, echoes TEXT
  /wsgrip/CHANNEL        the same through gripcontrol's WebSocketContext, which
                         negotiates the grip extension (Sec-WebSocket-Extensions:
                         grip) and prefixes its messages with m:; `?prefix=P`
                         sets message-prefix="P" and also answers P+"own:"+TEXT
Every request must carry a valid Grip-Sig (key in GRIP_KEY), else 403.
"""

import json
import os
import struct
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from gripcontrol import (
    Channel,
    WebSocketContext,
    WebSocketEvent,
    create_grip_channel_header,
    create_hold_response,
    create_hold_stream,
    decode_websocket_events,
    encode_websocket_events,
    validate_sig,
    websocket_control_message,
)
from gripcontrol.response import Response

KEY = os.environ["GRIP_KEY"]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, code, headers, body):
        body = body.encode() if isinstance(body, str) else body
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def signed(self):
        if validate_sig(self.headers.get("Grip-Sig", ""), KEY, iss="pushgate"):
            return True
        self.answer(403, [], "bad Grip-Sig\n")
        return False

    def do_GET(self):
        if not self.signed():
            return
        kind, _, channel = self.path.strip("/").partition("/")
        prev = None
        if "?prev=" in channel:
            channel, _, prev = channel.partition("?prev=")
        if kind == "stream":
            header = create_grip_channel_header(Channel(channel, prev_id=prev))
            self.answer(
                200,
                [("Content-Type", "text/plain"), ("Grip-Hold", "stream"),
                 ("Grip-Channel", header), ("Grip-Keep-Alive", "\\n; format=cstring; timeout=30")],
                "stream open\n",
            )
        elif kind == "response":
            instruct = create_hold_response(
                channel, Response(code=200, body="nothing yet\n"), timeout=5
            )
            self.answer(200, [("Content-Type", "application/grip-instruct")], instruct)
        elif kind == "instruct":
            instruct = create_hold_stream(
                Channel(channel, prev_id=prev),
                Response(headers={"Content-Type": "text/plain"}, body="instruct open\n"),
            )
            self.answer(200, [("Content-Type", "application/grip-instruct")], instruct)
        else:
            self.answer(404, [], "no such path\n")

    def do_POST(self):
        if not self.signed():
            return
        length = int(self.headers.get("Content-Length", "0"))
        events = decode_websocket_events(self.rfile.read(length))
        path, _, query = self.path.partition("?")
        channel = path.strip("/").partition("/")[2]
        if path.startswith("/wsgrip/"):
            self.grip_context(events, channel, query)
            return
        out = []
        headers = [("Content-Type", "application/websocket-events")]
        for e in events:
            if e.type == "OPEN":
                out.append(WebSocketEvent("OPEN"))
                out.append(WebSocketEvent(
                    "TEXT", "c:" + websocket_control_message("subscribe", {"channel": channel})))
                headers.append(("Set-Meta-User", "alice"))
                headers.append(("Keep-Alive-Interval", "1"))
            elif e.type == "TEXT":
                text = e.content.decode() if isinstance(e.content, bytes) else e.content
                if text == "whoami":
                    out.append(WebSocketEvent("TEXT", "user=" + self.headers.get("Meta-User", "")))
                elif text == "leave":
                    out.append(WebSocketEvent(
                        "TEXT", "c:" + websocket_control_message("unsubscribe", {"channel": channel})))
                    out.append(WebSocketEvent("TEXT", "left"))
                elif text == "bye":
                    out.append(WebSocketEvent("CLOSE", b"\x03\xe8"))
                else:
                    out.append(WebSocketEvent("TEXT", "echo:" + text))
            elif e.type == "CLOSE":
                out.append(WebSocketEvent("CLOSE", e.content))
        self.answer(200, headers, encode_websocket_events(out))

    def grip_context(self, events, channel, query):
        ctx = WebSocketContext(self.headers.get("Connection-Id"), {}, events)
        extension = "grip"
        prefix = None
        if query.startswith("prefix="):
            prefix = query[len("prefix="):]
            extension = 'grip; message-prefix="%s"' % prefix
        if ctx.is_opening():
            ctx.accept()
            ctx.subscribe(channel)
        while ctx.can_recv():
            message = ctx.recv()
            if message is None:
                ctx.close(ctx.close_code)
                break
            if isinstance(message, bytes):
                ctx.send_binary(b"echo:" + message)
            elif message == "raw":
                # Neither the message prefix nor c: -- Pushpin drops it.
                ctx.out_events.append(WebSocketEvent("TEXT", "unprefixed"))
                ctx.send("after")
            else:
                ctx.send("echo:" + message)
                if prefix is not None:
                    ctx.out_events.append(WebSocketEvent("TEXT", prefix + "own:" + message))
        out = [WebSocketEvent("OPEN")] if ctx.accepted else []
        out += ctx.out_events
        if ctx.closed:
            out.append(WebSocketEvent("CLOSE", struct.pack(">H", ctx.out_close_code or 1000)))
        headers = [
            ("Content-Type", "application/websocket-events"),
            ("Sec-WebSocket-Extensions", extension),
        ]
        self.answer(200, headers, encode_websocket_events(out))


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
