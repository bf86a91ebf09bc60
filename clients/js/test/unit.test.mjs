// Unit tests for the client's backoff, id tracking, SSE parsing and
// transport choice, in Node with faked timers and fake transports.
import { test, mock } from "node:test";
import assert from "node:assert/strict";
import { backoffDelay, chooseTransports, fromBase64, IdTracker, SseParser, subscribe } from "../pushgate.js";

test("backoff doubles from 1 s to 30 s with ±25 % jitter", () => {
  const mid = () => 0.5;
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 40].map((a) => backoffDelay(a, mid)), [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
  assert.equal(backoffDelay(0, () => 0), 750);
  assert.equal(backoffDelay(0, () => 1), 1250);
  assert.equal(backoffDelay(10, () => 0), 22500);
});

test("fromBase64 decodes every byte value", () => {
  const all = Uint8Array.from({ length: 256 }, (_, i) => i);
  assert.deepEqual(fromBase64(Buffer.from(all).toString("base64")), all);
  assert.deepEqual(fromBase64(""), new Uint8Array(0));
  assert.deepEqual(fromBase64("/wD+"), new Uint8Array([255, 0, 254]));
});

test("transport choice keeps the caller's order and the route's set", () => {
  assert.deepEqual(chooseTransports(undefined, ["sse", "longpoll", "websocket"]), ["websocket", "sse", "longpoll"]);
  assert.deepEqual(chooseTransports(["longpoll", "sse"], ["websocket", "sse", "longpoll"]), ["longpoll", "sse"]);
  assert.deepEqual(chooseTransports(undefined, ["longpoll"]), ["longpoll"]);
  assert.deepEqual(chooseTransports(["bogus", "sse"], undefined), ["sse"]);
});

test("ids: duplicates dropped, composite resume id in channel order", () => {
  const ids = new IdTracker("a-1");
  assert.equal(ids.since(), "a-1");
  assert.equal(ids.fresh("x-1"), true);
  assert.equal(ids.fresh("x-1"), false);
  ids.position("zeta", "z-5");
  ids.position("alpha", "a-7");
  assert.equal(ids.since(), "a-7.z-5");
  ids.connectionId("c-9");
  assert.equal(ids.since(), "c-9");
  const small = new IdTracker("", 2);
  small.fresh("1");
  small.fresh("2");
  small.fresh("3");
  assert.equal(small.fresh("1"), true, "the window is bounded");
});

test("SSE parser follows the WHATWG line rules", () => {
  const events = [];
  const p = new SseParser((e) => events.push(e));
  p.push("retry: 2000\n: comment\nid: 1-0\n\n");
  p.push("id: 1-1\r\nevent: greet\r\ndata: a\r\ndata: b\r");
  p.push("\n\rdata:no-space\n\n");
  assert.deepEqual(events, [
    { id: "1-0", event: "message", data: "", dispatch: false },
    { id: "1-1", event: "greet", data: "a\nb", dispatch: true },
    { id: null, event: "message", data: "no-space", dispatch: true },
  ]);
});

// --- subscribe() with fake transports and faked timers ---

function response(body) {
  return { ok: true, status: 200, json: async () => body, body: null };
}

function fakeEnv({ transports = ["websocket", "sse", "longpoll"], wsOpens = false, polls = [] } = {}) {
  const calls = [];
  const sockets = [];
  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      sockets.push(this);
      queueMicrotask(() => {
        if (wsOpens) {
          this.readyState = 1;
          this.onopen && this.onopen();
          this.onmessage && this.onmessage({ data: JSON.stringify({ type: "subscribed", channel: "c", id: "e-3" }) });
        } else {
          this.onerror && this.onerror(new Error("blocked"));
        }
      });
    }
    send(data) {
      this.sent.push(data);
    }
    close() {
      this.readyState = 3;
    }
  }
  const fetch = async (url, init = {}) => {
    const u = new URL(url);
    const t = u.searchParams.get("transport");
    calls.push({ transport: t, since: u.searchParams.get("since"), headers: init.headers });
    if (t === "info") return response({ transports, heartbeat_ms: 1000, longpoll_timeout_ms: 5000 });
    if (t === "sse") {
      // A buffering intermediary: nothing ever arrives.
      return new Promise((_, reject) => init.signal.addEventListener("abort", () => reject(new Error("aborted"))));
    }
    const next = polls.shift();
    if (next) return response(next);
    return new Promise((_, reject) => init.signal.addEventListener("abort", () => reject(new Error("aborted"))));
  };
  return { calls, sockets, env: { fetch, WebSocket: FakeWebSocket, setTimeout, clearTimeout } };
}

const flush = async () => {
  for (let i = 0; i < 20; i++) await Promise.resolve();
};

test("falls back past a blocked WebSocket and a held SSE stream to long polling", async () => {
  mock.timers.enable({ apis: ["setTimeout"] });
  try {
    const { env, calls } = fakeEnv({ polls: [{ messages: [{ channel: "c", id: "e-4", data: "hi" }], last_id: "e-4" }] });
    const statuses = [];
    const messages = [];
    const sub = subscribe("http://pg.test/live/c", {
      env,
      openTimeout: 3000,
      onStatus: (s) => statuses.push(`${s.state}:${s.transport}`),
      onMessage: (m) => messages.push(m),
    });
    await flush();
    assert.ok(calls.some((c) => c.transport === "sse"), "SSE tried after the WebSocket failed");
    mock.timers.tick(3000);
    await flush();
    assert.deepEqual(messages.map((m) => [m.data, m.transport]), [["hi", "longpoll"]]);
    assert.ok(statuses.includes("open:longpoll"), statuses.join());
    assert.equal(calls.filter((c) => c.transport === "longpoll")[1].since, "e-4", "the next poll resumes from last_id");
    sub.close();
  } finally {
    mock.timers.reset();
  }
});

test("reconnects with backoff when nothing answers", async () => {
  mock.timers.enable({ apis: ["setTimeout"] });
  try {
    let infos = 0;
    const env = {
      fetch: async () => {
        infos++;
        throw new Error("offline");
      },
      setTimeout,
      clearTimeout,
    };
    const statuses = [];
    const sub = subscribe("http://pg.test/live/c", { env, random: () => 0.5, onStatus: (s) => statuses.push(s.state) });
    await flush();
    assert.equal(infos, 1);
    mock.timers.tick(999);
    await flush();
    assert.equal(infos, 1, "not before 1 s");
    mock.timers.tick(1);
    await flush();
    assert.equal(infos, 2);
    mock.timers.tick(2000);
    await flush();
    assert.equal(infos, 3, "then 2 s");
    assert.deepEqual(statuses.slice(0, 2), ["connecting", "reconnecting"]);
    sub.close();
    assert.equal(statuses.at(-1), "closed");
  } finally {
    mock.timers.reset();
  }
});

test("moves back to WebSocket when it works again", async () => {
  mock.timers.enable({ apis: ["setTimeout"] });
  try {
    const fake = fakeEnv({ transports: ["websocket", "longpoll"], polls: [{ messages: [], last_id: "e-2" }] });
    const statuses = [];
    const sub = subscribe("http://pg.test/live/c", {
      env: fake.env,
      upgradeInterval: 5000,
      onStatus: (s) => statuses.push(`${s.state}:${s.transport}`),
    });
    await flush();
    assert.ok(statuses.includes("open:longpoll"), statuses.join());
    // From now on WebSockets get through.
    fake.sockets.length = 0;
    const upgraded = fakeEnv({ wsOpens: true });
    fake.env.WebSocket = upgraded.env.WebSocket;
    mock.timers.tick(5000);
    await flush();
    assert.equal(statuses.at(-1), "open:websocket");
    assert.ok(upgraded.sockets[0].url.includes("since=e-2"), "the probe resumes from the current id");
    sub.close();
  } finally {
    mock.timers.reset();
  }
});

test("silence longer than two heartbeats counts as dead", async () => {
  mock.timers.enable({ apis: ["setTimeout"] });
  try {
    const fake = fakeEnv({ transports: ["websocket"], wsOpens: true });
    const statuses = [];
    const sub = subscribe("http://pg.test/live/c", { env: fake.env, onStatus: (s) => statuses.push(s.state) });
    await flush();
    assert.equal(statuses.at(-1), "open");
    // JSON pings are sent every heartbeat; no frame comes back.
    mock.timers.tick(1000);
    assert.deepEqual(fake.sockets[0].sent, ['{"type":"ping"}']);
    mock.timers.tick(2000);
    await flush();
    assert.equal(statuses.at(-1), "reconnecting");
    sub.close();
  } finally {
    mock.timers.reset();
  }
});

test("tokenExp reads a JWT's exp and tolerates anything else", async () => {
  const { tokenExp } = await import("../pushgate.js");
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  assert.equal(tokenExp(`${b64({ alg: "HS256" })}.${b64({ exp: 1234567890, sub: "ü" })}.sig`), 1234567890);
  assert.equal(tokenExp("opaque-token"), 0);
  assert.equal(tokenExp(undefined), 0);
});

test("join and leave go to onJoin / onLeave; presence() asks over the WebSocket", async () => {
  const fake = fakeEnv({ wsOpens: true, transports: ["websocket"] });
  const joins = [];
  const leaves = [];
  const messages = [];
  const sub = subscribe("http://pg.test/room/c", {
    env: fake.env,
    onJoin: (j) => joins.push(j),
    onLeave: (l) => leaves.push(l),
    onMessage: (m) => messages.push(m),
  });
  await flush();
  const ws = fake.sockets[0];
  const frame = (f) => ws.onmessage({ data: JSON.stringify(f) });
  frame({ type: "join", channel: "c", sub: "alice", id: "e-4" });
  frame({ type: "join", channel: "c", sub: "alice", id: "e-4" }); // a duplicate by id
  frame({ type: "message", channel: "c", id: "e-5", data: 1 });
  frame({ type: "leave", channel: "c", sub: "alice", id: "e-6" });
  assert.deepEqual(joins, [{ channel: "c", sub: "alice" }]);
  assert.deepEqual(leaves, [{ channel: "c", sub: "alice" }]);
  assert.deepEqual(messages.map((m) => m.data), [1]);
  const asked = sub.presence("c");
  await flush();
  assert.deepEqual(JSON.parse(ws.sent.at(-1)), { type: "presence", channel: "c" });
  const answer = { type: "presence", channel: "c", clients: [{ sub: "alice", connections: 2, since: 1 }], anonymous: 0 };
  frame(answer);
  assert.deepEqual(await asked, answer);
  const refused = sub.presence("other");
  frame({ type: "error", code: "forbidden", message: "no" });
  await assert.rejects(refused, (e) => e.code === "forbidden");
  sub.close();
});

test("SSE and long-poll presence events reach the same callbacks", async () => {
  const joins = [];
  const messages = [];
  const sub = subscribe("http://pg.test/room/c", {
    env: { fetch: async () => response({ transports: [] }), setTimeout, clearTimeout },
    onJoin: (j) => joins.push(j),
    onMessage: (m) => messages.push(m),
  });
  sub.close();
  // The delivery step every transport shares.
  sub.deliver({ id: "e-1", event: "pushgate.join", data: '{"type":"join","channel":"c","sub":"bob"}', transport: "sse" });
  sub.deliver({ id: "e-2", event: "pushgate.join", data: { type: "join", channel: "c", sub: "eve" }, transport: "longpoll" });
  sub.deliver({ id: "e-3", event: "pushgate.leave", data: { type: "leave", channel: "c", sub: "eve" }, transport: "longpoll" });
  sub.deliver({ id: "e-4", event: "update", data: "x", transport: "sse" });
  assert.deepEqual(joins.map((j) => j.sub), ["bob", "eve"]);
  assert.deepEqual(messages.map((m) => m.event), ["update"]);
});
