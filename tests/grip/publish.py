"""Publishes with the ecosystem's publisher library, gripcontrol's
GripPubControl (on pubcontrol), exactly as a Pushpin user's backend does.

usage: publish.py CONTROL_URI KEY CHANNEL KIND [CONTENT] [ID] [PREV_ID]
KIND: stream | stream-bin | close | response | ws-text | ws-binary | ws-bytes (hex) | ws-close
KEY "-" means no key (no Authorization header).
"""

import sys

from gripcontrol import (
    GripPubControl,
    HttpResponseFormat,
    HttpStreamFormat,
    WebSocketMessageFormat,
)
from pubcontrol import Item

uri, key, channel, kind = sys.argv[1:5]
content = sys.argv[5] if len(sys.argv) > 5 else ""
id_ = sys.argv[6] if len(sys.argv) > 6 and sys.argv[6] else None
prev_id = sys.argv[7] if len(sys.argv) > 7 and sys.argv[7] else None

config = {"control_uri": uri}
if key != "-":
    config["key"] = key
pub = GripPubControl(config)

if kind == "stream":
    pub.publish_http_stream(channel, content, id=id_, prev_id=prev_id, blocking=True)
elif kind == "stream-bin":
    pub.publish_http_stream(
        channel, HttpStreamFormat(content.encode()), id=id_, prev_id=prev_id, blocking=True
    )
elif kind == "close":
    pub.publish_http_stream(channel, HttpStreamFormat(close=True), blocking=True)
elif kind == "response":
    pub.publish_http_response(
        channel,
        HttpResponseFormat(code=201, reason="Created", headers={"X-Lib": "gripcontrol"}, body=content),
        blocking=True,
    )
elif kind == "ws-text":
    pub.publish(channel, Item(WebSocketMessageFormat(content)), blocking=True)
elif kind == "ws-binary":
    pub.publish(channel, Item(WebSocketMessageFormat(content.encode(), binary=True)), blocking=True)
elif kind == "ws-bytes":
    # CONTENT in hex; gripcontrol exports binary as content-bin, no type.
    pub.publish(channel, Item(WebSocketMessageFormat(bytes.fromhex(content), binary=True)), blocking=True)
elif kind == "ws-close":
    pub.publish(
        channel,
        Item(WebSocketMessageFormat(action="close", code=4000, reason="done")),
        blocking=True,
    )
else:
    sys.exit("unknown kind " + kind)
print("published", flush=True)
