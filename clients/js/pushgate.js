// pushgate browser client: one subscription over WebSocket, SSE or long
// polling, with fallback, reconnect with backoff, resume from the last id,
// duplicate suppression, dead-connection detection and upgrade back to the
// preferred transport. An ES module without dependencies; served by
// pushgate at /_pushgate/client.js and also set as globalThis.pushgate.

const ALL = ["websocket", "sse", "longpoll"];

/** Reconnect delay for the given attempt: 1 s doubling to 30 s, ±25 %. */
export function backoffDelay(attempt, random = Math.random, base = 1000, max = 30000) {
  const d = Math.min(max, base * 2 ** Math.min(attempt, 20));
  return Math.round(d * (0.75 + random() * 0.5));
}

/** The transports to try, in the caller's order, that the route enables. */
export function chooseTransports(preferred, enabled) {
  const want = (preferred && preferred.length ? preferred : ALL).filter((t) => ALL.includes(t));
  return enabled ? want.filter((t) => enabled.includes(t)) : want;
}

/** Tracks resume positions and drops duplicates by id. */
export class IdTracker {
  constructor(since, window = 1024) {
    this.cursor = since || "";
    this.positions = new Map();
    this.seen = new Set();
    this.order = [];
    this.window = window;
  }
  /** The id to resume from (covers every channel). */
  since() {
    if (this.positions.size) {
      const keys = [...this.positions.keys()].sort();
      return keys.map((k) => this.positions.get(k)).join(".");
    }
    return this.cursor;
  }
  /** A per-channel position (WebSocket). */
  position(channel, id) {
    if (channel && id) this.positions.set(channel, id);
  }
  /** A connection-wide id (SSE, long polling). */
  connectionId(id) {
    if (id) {
      this.cursor = id;
      this.positions.clear();
    }
  }
  /** Whether a message id is new; remembers it. */
  fresh(id) {
    if (!id) return true;
    if (this.seen.has(id)) return false;
    this.seen.add(id);
    this.order.push(id);
    if (this.order.length > this.window) this.seen.delete(this.order.shift());
    return true;
  }
}

/** A JWT's `exp` (seconds), or 0 when it has none or is not a JWT. */
export function tokenExp(token) {
  try {
    const part = String(token).split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return Number(JSON.parse(atob(part)).exp) || 0;
  } catch {
    return 0;
  }
}

/** Bytes from standard base64 (a binary message's `data_base64`). */
export function fromBase64(text) {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

function withQuery(url, params) {
  const u = new URL(url, globalThis.location ? globalThis.location.href : "http://localhost/");
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== "") u.searchParams.set(k, v);
  return u;
}

/** Splits an SSE byte stream into events (WHATWG rules). */
export class SseParser {
  constructor(onEvent) {
    this.buf = "";
    this.data = [];
    this.event = "";
    this.id = null;
    this.onEvent = onEvent;
  }
  push(text) {
    this.buf += text;
    let m;
    while ((m = /\r\n|\r|\n/.exec(this.buf))) {
      if (m[0] === "\r" && m.index === this.buf.length - 1) break;
      const line = this.buf.slice(0, m.index);
      this.buf = this.buf.slice(m.index + m[0].length);
      this.line(line);
    }
  }
  line(line) {
    if (line === "") {
      if (this.id !== null || this.data.length) {
        this.onEvent({ id: this.id, event: this.event || "message", data: this.data.join("\n"), dispatch: this.data.length > 0 });
      }
      this.data = [];
      this.event = "";
      this.id = null;
      return;
    }
    if (line[0] === ":") return;
    const i = line.indexOf(":");
    const field = i < 0 ? line : line.slice(0, i);
    let value = i < 0 ? "" : line.slice(i + 1);
    if (value[0] === " ") value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.event = value;
    else if (field === "id" && !value.includes("\0")) this.id = value;
  }
}

/**
 * Subscribes to a realtime route.
 * options: transports, since, onMessage({channel, id, event, data, transport})
 * (data: a Uint8Array for a binary message, else the text or JSON value),
 * onGap(channels), onStatus({state, transport}), onJoin({channel, sub}) and
 * onLeave({channel, sub}) (routes with presence events), openTimeout (ms),
 * upgradeInterval (ms), publish (the channel binary publishes go to, as
 * ?publish=), token (a string, or an async function called
 * before each connect; over WebSocket it is also called to refresh the
 * token before its `exp`).
 */
export function subscribe(url, options = {}) {
  return new Subscription(url, options);
}

class Subscription {
  constructor(url, o) {
    this.url = url;
    this.o = o;
    this.env = o.env || globalThis;
    this.ids = new IdTracker(o.since);
    this.attempt = 0;
    this.state = "";
    this.transport = null;
    this.conn = null;
    this.timers = new Set();
    this.pending = [];
    this.closed = false;
    this.reconnects = 0;
    this.status("connecting");
    this.start();
  }

  status(state) {
    this.state = state;
    if (this.o.onStatus) this.o.onStatus({ state, transport: this.transport });
  }

  later(ms, f) {
    const t = this.env.setTimeout(() => {
      this.timers.delete(t);
      f();
    }, ms);
    this.timers.add(t);
    return t;
  }

  cancel(t) {
    if (t) {
      this.env.clearTimeout(t);
      this.timers.delete(t);
    }
  }

  async start() {
    let info;
    try {
      if (this.o.token) this.token = typeof this.o.token === "function" ? await this.o.token() : this.o.token;
      const r = await this.env.fetch(withQuery(this.url, { transport: "info" }), { cache: "no-store" });
      if (!r.ok) throw new Error(`info ${r.status}`);
      info = await r.json();
    } catch {
      return this.retry();
    }
    if (this.closed) return;
    this.info = info;
    this.heartbeat = info.heartbeat_ms || 15000;
    this.order = chooseTransports(this.o.transports, info.transports);
    if (!this.order.length) return this.retry();
    this.tryFrom(0);
  }

  // Opens order[i]; a transport that fails to open or to deliver anything
  // within the deadline is skipped for the next.
  tryFrom(i) {
    if (this.closed) return;
    if (i >= this.order.length) return this.retry();
    const name = this.order[i];
    const conn = this.open(name, {
      opened: () => {
        this.attempt = 0;
        this.transport = name;
        this.status("open");
        if (i > 0) this.scheduleUpgrade();
      },
      failed: () => {
        if (this.conn !== conn) return;
        this.conn = null;
        if (this.transport === name && this.state === "open") this.retry();
        else this.tryFrom(i + 1);
      },
    });
    this.conn = conn;
  }

  retry() {
    if (this.closed) return;
    this.cancel(this.upgradeTimer);
    this.reconnects++;
    this.status("reconnecting");
    const delay = backoffDelay(this.attempt++, this.o.random);
    this.later(delay, () => this.start());
  }

  // While on a fallback, try the preferred transport now and then; switch
  // when it opens (duplicates are dropped by id).
  scheduleUpgrade() {
    this.cancel(this.upgradeTimer);
    this.upgradeTimer = this.later(this.o.upgradeInterval || 60000, () => {
      if (this.closed || this.transport === this.order[0]) return;
      const old = this.conn;
      const probe = this.open(this.order[0], {
        opened: () => {
          if (this.closed) return probe.close();
          this.conn = probe;
          if (old) old.close();
          this.transport = this.order[0];
          this.status("open");
        },
        failed: () => {
          if (this.conn === probe) {
            this.conn = null;
            this.retry();
          } else this.scheduleUpgrade();
        },
      });
    });
  }

  deliver(m) {
    if (!this.ids.fresh(m.id)) return;
    const p = /^pushgate\.(join|leave)$/.exec(m.event || "");
    if (!p) return this.o.onMessage && this.o.onMessage(m);
    const d = typeof m.data === "string" ? JSON.parse(m.data) : m.data;
    const f = p[1] === "join" ? this.o.onJoin : this.o.onLeave;
    if (f) f({ channel: d.channel, sub: d.sub });
  }

  gap(channels) {
    if (this.o.onGap) this.o.onGap(channels);
  }

  // Each transport: calls opened() once data arrives, failed() once.
  open(name, cb) {
    const deadline = this.o.openTimeout || Math.min(10000, Math.max(2000, this.heartbeat));
    const silence = 2 * this.heartbeat + 1000;
    let done = false;
    let isOpen = false;
    let watchdog = null;
    const self = this;
    const conn = { name, close: () => {} };
    const fail = () => {
      if (done) return;
      done = true;
      self.cancel(watchdog);
      conn.close();
      cb.failed();
    };
    // Any bytes from the server prove the connection alive.
    const alive = (limit = silence) => {
      if (done) return;
      if (!isOpen) {
        isOpen = true;
        cb.opened();
      }
      self.cancel(watchdog);
      watchdog = self.later(limit, fail);
    };
    watchdog = this.later(deadline, fail);
    try {
      if (name === "websocket") this.openWs(conn, alive, fail);
      else if (name === "sse") this.openSse(conn, alive, fail);
      else this.openPoll(conn, alive, fail);
    } catch {
      // Report asynchronously, after the caller holds `conn`.
      this.later(0, fail);
    }
    const close = conn.close;
    conn.close = () => {
      done = true;
      self.cancel(watchdog);
      close();
    };
    return conn;
  }

  // Bearer header for fetch-based transports.
  authHeaders(headers) {
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    return headers;
  }

  // Over WebSocket, asks for a new token ahead of `exp` and sends it.
  scheduleRefresh(conn, ws) {
    this.cancel(conn.refresh);
    const exp = tokenExp(this.token);
    if (!exp || typeof this.o.token !== "function") return;
    const left = exp * 1000 - Date.now();
    const margin = Math.min(30000, Math.max(500, left / 3));
    conn.refresh = this.later(Math.max(0, left - margin), async () => {
      try {
        const token = await this.o.token();
        if (!token || ws.readyState !== 1) return;
        this.token = token;
        ws.send(JSON.stringify({ type: "refresh", token }));
      } catch {}
    });
  }

  openWs(conn, alive, fail) {
    const u = withQuery(this.url, { since: this.ids.since(), binary: "frames", publish: this.o.publish });
    u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    const ws = new this.env.WebSocket(u.href);
    ws.binaryType = "arraybuffer";
    // A binary message: its header frame, then its bytes.
    let header = null;
    let ping = null;
    conn.ws = ws;
    conn.close = () => {
      this.cancel(ping);
      this.cancel(conn.refresh);
      ws.onclose = ws.onmessage = ws.onerror = null;
      try {
        ws.close(1000);
      } catch {}
    };
    // Browsers hide protocol pings, so ask for JSON pongs to see the link.
    const keepalive = () => {
      ping = this.later(this.heartbeat, () => {
        try {
          ws.send('{"type":"ping"}');
        } catch {}
        keepalive();
      });
    };
    ws.onmessage = (e) => {
      alive();
      let f;
      if (typeof e.data !== "string") {
        f = header;
        header = null;
        if (f) f.data = new Uint8Array(e.data);
      } else {
        try {
          f = JSON.parse(e.data);
        } catch {
          return;
        }
        if (f.type === "message" && typeof f.binary === "number") return void (header = f);
        if ("data_base64" in f) f.data = fromBase64(f.data_base64);
      }
      if (!f) return;
      if (f.type === "message" || f.type === "join" || f.type === "leave") {
        this.ids.position(f.channel, f.id);
        const join = f.type === "message" ? f.event : "pushgate." + f.type;
        this.deliver({ channel: f.channel, id: f.id, event: join, data: f.type === "message" ? f.data : f, transport: "websocket" });
      } else if (f.type === "subscribed") this.ids.position(f.channel, f.id);
      else if (f.type === "gap") this.gap([f.channel]);
      else if (f.type === "published" || f.type === "presence") this.settle(true, f);
      else if (f.type === "refreshed") this.scheduleRefresh(conn, ws);
      else if (f.type === "error" && this.pending.length) this.settle(false, f);
    };
    ws.onopen = () => {
      // The token goes in the first frame, not the URL (which gets logged).
      if (this.token) {
        ws.send(JSON.stringify({ type: "auth", token: this.token }));
        this.scheduleRefresh(conn, ws);
      }
      keepalive();
    };
    ws.onerror = ws.onclose = () => {
      this.cancel(ping);
      this.cancel(conn.refresh);
      for (const p of this.pending.splice(0)) p.reject(new Error("connection closed"));
      fail();
    };
  }

  settle(ok, frame) {
    const p = this.pending.shift();
    if (!p) return;
    if (ok) p.resolve(frame);
    else p.reject(Object.assign(new Error(frame.message || frame.code), { code: frame.code }));
  }

  openSse(conn, alive, fail) {
    const ctrl = new AbortController();
    conn.close = () => ctrl.abort();
    const headers = this.authHeaders({ Accept: "text/event-stream" });
    const since = this.ids.since();
    if (since) headers["Last-Event-ID"] = since;
    const parser = new SseParser((ev) => {
      if (ev.id !== null) this.ids.connectionId(ev.id);
      if (!ev.dispatch) return;
      if (ev.event === "pushgate.gap") {
        try {
          this.gap(JSON.parse(ev.data).channels);
        } catch {}
      } else if (ev.event === "pushgate.close") {
        conn.close();
        fail();
      } else {
        try {
          // A binary message: `pushgate.binary[.EVENT]`, base64 data.
          const b = /^pushgate\.binary(?:\.(.+))?$/.exec(ev.event);
          this.deliver({ id: ev.id, event: b ? b[1] : ev.event, data: b ? fromBase64(ev.data) : ev.data, transport: "sse" });
        } catch {}
      }
    });
    (async () => {
      const r = await this.env.fetch(withQuery(this.url, { transport: "sse" }), { headers, signal: ctrl.signal, cache: "no-store" });
      if (!r.ok || !r.body) throw new Error(`sse ${r.status}`);
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        alive();
        parser.push(decoder.decode(value, { stream: true }));
      }
      throw new Error("sse ended");
    })().catch(() => fail());
  }

  openPoll(conn, alive, fail) {
    let ctrl = null;
    let stopped = false;
    conn.close = () => {
      stopped = true;
      if (ctrl) ctrl.abort();
    };
    const wait = (this.info.longpoll_timeout_ms || 30000) + 2 * this.heartbeat + 1000;
    const loop = async () => {
      // The poll itself is the proof of life: held polls end by the timeout.
      alive(wait);
      while (!stopped) {
        ctrl = new AbortController();
        const r = await this.env.fetch(withQuery(this.url, { transport: "longpoll", since: this.ids.since() }), { headers: this.authHeaders({}), signal: ctrl.signal, cache: "no-store" });
        if (!r.ok) throw new Error(`poll ${r.status}`);
        const body = await r.json();
        if (stopped) return;
        alive(wait);
        if (body.gap) this.gap(body.gap);
        for (const m of body.messages || []) {
          this.deliver({ channel: m.channel, id: m.id, event: m.event, data: "data_base64" in m ? fromBase64(m.data_base64) : m.data, transport: "longpoll" });
        }
        this.ids.connectionId(body.last_id);
      }
    };
    loop().catch(() => stopped || fail());
  }

  // Sends a request frame (or a binary message) over the WebSocket; its
  // answer settles it.
  ask(frame, what) {
    const ws = this.conn && this.conn.ws;
    if (!ws || ws.readyState !== 1) return Promise.reject(new Error(`${what} needs an open websocket transport`));
    return new Promise((resolve, reject) => {
      this.pending.push({ resolve, reject });
      ws.send(frame instanceof Uint8Array ? frame : JSON.stringify(frame));
    });
  }

  /**
   * Publishes over the WebSocket (routes with client_publish). Bytes
   * (Uint8Array or ArrayBuffer) go as a binary message, to options.publish
   * or else the connection's one channel, which `channel` must name.
   */
  publish(channel, data, event) {
    if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) {
      // The channels this subscription has positions on (WebSocket).
      const on = [...this.ids.positions.keys()];
      if (channel !== (this.o.publish || (on.length === 1 && on[0])) || event) return Promise.reject(new Error("binary publish goes to options.publish or the one channel, without an event"));
      return this.ask(new Uint8Array(data.buffer || data, data.byteOffset, data.byteLength), "publish");
    }
    return this.ask(event ? { type: "publish", channel, data, event } : { type: "publish", channel, data }, "publish");
  }

  /** Who is on `channel`: {channel, clients: [{sub, connections, since}], anonymous} (WebSocket, presence routes). */
  presence(channel) {
    return this.ask({ type: "presence", channel }, "presence");
  }

  /** Stops for good. */
  close() {
    this.closed = true;
    for (const t of this.timers) this.env.clearTimeout(t);
    this.timers.clear();
    if (this.conn) this.conn.close();
    this.conn = null;
    this.status("closed");
  }
}

const api = { subscribe, backoffDelay, chooseTransports, IdTracker, SseParser, tokenExp };
globalThis.pushgate = api;
export default api;
