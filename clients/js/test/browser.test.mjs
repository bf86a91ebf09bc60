// The client in real headless Chromium (Debian's chromium, driven by
// playwright-core) against the real pushgate binary.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, writeFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import http from "node:http";
import { BIN, SHOTS, eventually, launchBrowser, root, sleep, spawnPushgate } from "../test-support/browser.mjs";

let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
});

function config(http, internal, dir) {
  mkdirSync(join(dir, "public"), { recursive: true });
  writeFileSync(join(dir, "public/blank.html"), "<!doctype html><title>blank</title><body>test page</body>");
  return `
listen: { http: ["${http}"] }
internal: { listen: "${internal}" }
realtime: { heartbeat: 1s, sse_retry: 500ms }
routes:
  - { name: live, match: { path: "/live/{channel}" }, realtime: { channels: ["{channel}"], longpoll_timeout: 2s } }
  - { name: demo, match: { path: "/live/demo" }, realtime: { channels: ["demo"] } }
  - { name: nows, match: { path: "/nows/{channel}" }, realtime: { channels: ["{channel}"], transports: [sse, longpoll] } }
  - { name: poll, match: { path: "/poll/{channel}" }, realtime: { channels: ["{channel}"], transports: [longpoll], longpoll_timeout: 2s } }
  - { name: chat, match: { path: "/chat/{room}" }, realtime: { channels: ["chat:{room}"], client_publish: ["chat:{room}"] } }
  - { name: forced, match: { path: "/forced/{channel}" }, realtime: { channels: ["{channel}"], longpoll_timeout: 2s } }
  - { name: files, match: { path_prefix: "/" }, static: { dir: public, index: index.html } }
`;
}

/** Starts the binary; resolves with its addresses once it listens. */
async function startPushgate({ dir, http = "127.0.0.1:0", internal = "127.0.0.1:0", yaml } = {}) {
  dir ??= mkdtempSync(join(tmpdir(), "pushgate-browser-"));
  const { child, addrs } = await spawnPushgate(dir, yaml ?? config(http, internal, dir));
  return { child, dir, base: `http://${addrs.http}`, http: addrs.http, internal: `http://${addrs.internal}` };
}

function stop(pg) {
  pg.child.kill("SIGKILL");
}

async function publish(pg, channel, data) {
  const r = await fetch(`${pg.internal}/publish`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ channel, data }),
  });
  assert.equal(r.status, 200);
  return (await r.json()).results[0].id;
}

/** A page on `origin` with a subscription whose events land in window.log. */
async function subscribedPage(origin, path, options = {}) {
  const page = await browser.newPage();
  page.on("pageerror", (e) => console.error("page error:", e));
  await page.goto(`${origin}/blank.html`);
  await page.evaluate(
    async ({ path, options }) => {
      const { subscribe } = await import("/_pushgate/client.js");
      window.log = { messages: [], gaps: [], statuses: [] };
      window.sub = subscribe(path, {
        ...options,
        onMessage: (m) => window.log.messages.push(m),
        onGap: (c) => window.log.gaps.push(c),
        onStatus: (s) => window.log.statuses.push(s),
      });
    },
    { path, options },
  );
  return page;
}

const log = (page) => page.evaluate(() => window.log);
const openOn = async (page) => {
  const l = await log(page);
  const s = l.statuses.at(-1);
  return s?.state === "open" ? s.transport : null;
};

test("uses WebSocket by default", async () => {
  const pg = await startPushgate();
  try {
    const page = await subscribedPage(pg.base, "/live/a");
    assert.equal(await eventually("open", () => openOn(page)), "websocket");
    await publish(pg, "a", { text: "over ws" });
    const m = await eventually("a message", async () => (await log(page)).messages[0]);
    assert.deepEqual([m.data, m.transport], [{ text: "over ws" }, "websocket"]);
    const globalSet = await page.evaluate(() => typeof globalThis.pushgate?.subscribe);
    assert.equal(globalSet, "function", "loading the module sets globalThis.pushgate");
    await page.close();
  } finally {
    stop(pg);
  }
});

test("a route without WebSocket ends on SSE", async () => {
  const pg = await startPushgate();
  try {
    const page = await subscribedPage(pg.base, "/nows/b");
    assert.equal(await eventually("open", () => openOn(page)), "sse");
    await publish(pg, "b", "line one\nline two");
    const m = await eventually("a message", async () => (await log(page)).messages[0]);
    assert.deepEqual([m.data, m.transport], ["line one\nline two", "sse"]);
    await page.close();
  } finally {
    stop(pg);
  }
});

test("a long-poll-only route ends on long polling", async () => {
  const pg = await startPushgate();
  try {
    const page = await subscribedPage(pg.base, "/poll/c");
    assert.equal(await eventually("open", () => openOn(page)), "longpoll");
    await sleep(200);
    await publish(pg, "c", 1);
    await publish(pg, "c", 2);
    const got = await eventually("two messages", async () => {
      const l = await log(page);
      return l.messages.length >= 2 && l.messages.map((m) => m.data);
    });
    assert.deepEqual(got, [1, 2]);
    await page.close();
  } finally {
    stop(pg);
  }
});

/** A proxy that buffers each whole response and refuses upgrades. */
function bufferingProxy(target) {
  const server = http.createServer((req, res) => {
    const upstream = http.request(`${target}${req.url}`, { method: req.method, headers: req.headers }, (up) => {
      const chunks = [];
      up.on("data", (c) => chunks.push(c));
      up.on("end", () => {
        const headers = { ...up.headers };
        delete headers["transfer-encoding"];
        res.writeHead(up.statusCode, headers);
        res.end(Buffer.concat(chunks));
      });
    });
    upstream.on("error", () => res.destroy());
    res.on("close", () => upstream.destroy());
    req.pipe(upstream);
  });
  server.on("upgrade", (_req, socket) => socket.destroy());
  return new Promise((r) => server.listen(0, "127.0.0.1", () => r(server)));
}

test("an SSE stream held back by a buffering intermediary falls back to long polling", async () => {
  const pg = await startPushgate();
  const proxy = await bufferingProxy(pg.base);
  try {
    const origin = `http://127.0.0.1:${proxy.address().port}`;
    const page = await subscribedPage(origin, "/live/d");
    assert.equal(await eventually("open", () => openOn(page)), "longpoll");
    const tried = (await log(page)).statuses.map((s) => s.transport);
    assert.ok(!tried.includes("sse"), "SSE never opened through the buffer");
    await sleep(200);
    await publish(pg, "d", "through the buffer");
    const m = await eventually("a message", async () => (await log(page)).messages[0]);
    assert.deepEqual([m.data, m.transport], ["through the buffer", "longpoll"]);
    await page.close();
  } finally {
    proxy.close();
    stop(pg);
  }
});

test("kill and restart pushgate mid-stream: the page reconnects and reports a gap, without duplicates", async () => {
  let pg = await startPushgate();
  const page = await subscribedPage(pg.base, "/live/k");
  try {
    assert.equal(await eventually("open", () => openOn(page)), "websocket");
    for (const n of [1, 2, 3]) await publish(pg, "k", n);
    await eventually("three messages", async () => (await log(page)).messages.length === 3);
    stop(pg);
    await eventually("reconnecting", async () => (await log(page)).statuses.at(-1).state === "reconnecting");
    // The same addresses, a new process: history and epoch are gone.
    pg = await startPushgate({ dir: pg.dir, http: pg.http, internal: pg.internal.replace("http://", "") });
    await eventually("open again", async () => (await openOn(page)) === "websocket", 40000);
    await eventually("the gap", async () => (await log(page)).gaps.length > 0);
    for (const n of [4, 5]) await publish(pg, "k", n);
    const got = await eventually("five messages", async () => {
      const l = await log(page);
      return l.messages.length >= 5 && l.messages.map((m) => m.data);
    });
    assert.deepEqual(got, [1, 2, 3, 4, 5], "every message once");
    const reconnects = (await log(page)).statuses.filter((s) => s.state === "reconnecting").length;
    assert.ok(reconnects >= 1);
  } finally {
    await page.close();
    stop(pg);
  }
});

async function publishBytes(pg, channel, bytes, event) {
  const r = await fetch(`${pg.internal}/publish`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ channel, data_base64: Buffer.from(bytes).toString("base64"), ...(event ? { event } : {}) }),
  });
  assert.equal(r.status, 200);
  return (await r.json()).results[0].id;
}

/** window.log's messages with binary data as {bytes: [...]} (a Uint8Array
 * does not survive page.evaluate's serialisation as one). */
const messagesOf = (page) =>
  page.evaluate(() =>
    window.log.messages.map((m) => ({ ...m, data: m.data instanceof Uint8Array ? { bytes: Array.from(m.data) } : m.data })),
  );

const ALL_BYTES = Array.from({ length: 256 }, (_, i) => i);

for (const transport of ["websocket", "sse", "longpoll"]) {
  test(`binary messages arrive as a Uint8Array over ${transport}, text as before`, async () => {
    const pg = await startPushgate();
    try {
      const page = await subscribedPage(pg.base, `/forced/bin-${transport}`, { transports: [transport] });
      assert.equal(await eventually("open", () => openOn(page)), transport);
      await sleep(300);
      const channel = `bin-${transport}`;
      await publishBytes(pg, channel, ALL_BYTES);
      await publish(pg, channel, { text: "between" });
      await publishBytes(pg, channel, [], "empty");
      const got = await eventually("three messages", async () => {
        const m = await messagesOf(page);
        return m.length >= 3 && m;
      });
      // SSE carries text as text (and names the default event "message").
      const sse = transport === "sse";
      assert.deepEqual(
        got.map((m) => [m.event ?? null, m.data, m.transport]),
        [
          [null, { bytes: ALL_BYTES }, transport],
          [sse ? "message" : null, sse ? '{"text":"between"}' : { text: "between" }, transport],
          ["empty", { bytes: [] }, transport],
        ],
      );
      await page.close();
    } finally {
      stop(pg);
    }
  });
}

test("sub.publish sends bytes as a binary WebSocket message", async () => {
  const pg = await startPushgate();
  try {
    const alice = await subscribedPage(pg.base, "/chat/bytes");
    const bob = await subscribedPage(pg.base, "/chat/bytes");
    await eventually("both open", async () => (await openOn(alice)) && (await openOn(bob)));
    await sleep(200);
    const receipt = await alice.evaluate(() => window.sub.publish("chat:bytes", new Uint8Array([0, 255, 1, 254]).buffer));
    assert.equal(receipt.type, "published");
    assert.equal(receipt.channel, "chat:bytes");
    const m = await eventually("bob gets the bytes", async () => (await messagesOf(bob))[0]);
    assert.deepEqual(m.data, { bytes: [0, 255, 1, 254] });
    const view = await alice.evaluate(() => window.sub.publish("chat:bytes", new Uint8Array([9, 8, 7, 6]).subarray(1, 3)));
    assert.equal(view.type, "published");
    const second = await eventually("bob gets the view's bytes", async () => (await messagesOf(bob))[1]);
    assert.deepEqual(second.data, { bytes: [8, 7] });
    // Another channel: refused in the client, nothing sent.
    const refused = await alice.evaluate(() => window.sub.publish("chat:other", new Uint8Array([1])).then(() => "sent", (e) => e.message));
    assert.match(refused, /binary publish goes to/);
    await alice.close();
    await bob.close();
  } finally {
    stop(pg);
  }
});

test("chat between two pages over WebSocket", async () => {
  const pg = await startPushgate();
  try {
    const alice = await subscribedPage(pg.base, "/chat/room1");
    const bob = await subscribedPage(pg.base, "/chat/room1");
    await eventually("both open", async () => (await openOn(alice)) && (await openOn(bob)));
    const receipt = await alice.evaluate(() => window.sub.publish("chat:room1", { from: "alice", text: "hi bob" }));
    assert.equal(receipt.type, "published");
    const m = await eventually("bob hears alice", async () => (await log(bob)).messages[0]);
    assert.deepEqual(m.data, { from: "alice", text: "hi bob" });
    const denied = await bob.evaluate(() => window.sub.publish("chat:other", 1).then(() => "sent", (e) => e.code));
    assert.equal(denied, "forbidden");
    await alice.close();
    await bob.close();
  } finally {
    stop(pg);
  }
});

test("the demo page shows a message sent with `pushgate publish`", async () => {
  const dir = mkdtempSync(join(tmpdir(), "pushgate-demo-"));
  // The shipped example config and demo page, on free ports.
  const example = (await import("node:fs")).readFileSync(join(root, "config/example.yaml"), "utf8");
  mkdirSync(join(dir, "public"), { recursive: true });
  writeFileSync(join(dir, "public/index.html"), (await import("node:fs")).readFileSync(join(root, "config/public/index.html")));
  const yaml = example
    .replace("${PUSHGATE_HTTP:-127.0.0.1:8080}", "127.0.0.1:0")
    .replace("${PUSHGATE_INTERNAL:-127.0.0.1:5561}", "127.0.0.1:0");
  const pg = await startPushgate({ dir, yaml });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    await page.goto(`${pg.base}/`);
    await eventually("the demo connected", async () => (await page.textContent("#state-text")) === "open");
    assert.equal(await page.textContent("#transport"), "websocket");
    const out = await new Promise((resolveRun, reject) =>
      execFile(BIN, ["publish", "--url", pg.internal, "demo", "Hello from pushgate publish"], (err, stdout, stderr) =>
        err ? reject(new Error(stderr)) : resolveRun(stdout),
      ),
    );
    assert.equal(JSON.parse(out).results[0].channel, "demo");
    await eventually("the message in the DOM", async () => (await page.textContent("#messages")).includes("Hello from pushgate publish"));
    await page.fill("#text", "hello chat");
    await page.click("#chat-form button");
    await eventually("the chat message", async () => (await page.textContent("#chat")).includes("hello chat"));
    await eventually("who is online", async () => (await page.textContent("#online")) === "1");
    const other = await browser.newPage();
    await other.goto(`${pg.base}/`);
    await eventually("a second tab online", async () => (await page.textContent("#online")) === "2", 10000);
    await other.close();
    mkdirSync(SHOTS, { recursive: true });
    await page.screenshot({ path: join(SHOTS, "demo.png") });
    await page.click('#force button[data-t="sse"]');
    await eventually("forced SSE", async () => (await page.textContent("#transport")) === "sse" && (await page.textContent("#state-text")) === "open");
    await page.close();
  } finally {
    stop(pg);
  }
});

// === subscriber auth ===

const SECRET = "browser-secret-0123456789abcdef";

/** An HS256 JWT for `channels`, valid for `seconds`. */
async function mint(seconds, channels = ["**"], sub = "alice") {
  const { createHmac } = await import("node:crypto");
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, exp: Math.floor(Date.now() / 1000) + seconds, channels })}`;
  return `${body}.${createHmac("sha256", SECRET).update(body).digest("base64url")}`;
}

function authConfig(dir) {
  mkdirSync(join(dir, "public"), { recursive: true });
  writeFileSync(join(dir, "public/blank.html"), "<!doctype html><title>blank</title><body>test page</body>");
  return `
listen: { http: ["127.0.0.1:0"] }
internal: { listen: "127.0.0.1:0" }
realtime: { heartbeat: 1s, sse_retry: 500ms }
routes:
  - name: secure
    match: { path: "/secure/{channel}" }
    realtime: { channels: ["{channel}"], longpoll_timeout: 2s }
    auth:
      jwt: { hs256_secret: "${SECRET}" }
      on_expiry: refresh
  - name: room
    match: { path: "/room/{channel}" }
    realtime: { channels: ["{channel}"], presence: { events: true } }
    auth:
      jwt: { hs256_secret: "${SECRET}" }
  - { name: files, match: { path_prefix: "/" }, static: { dir: public, index: index.html } }
`;
}

/** A blank page on `origin`. */
async function tokenPage(origin) {
  const page = await browser.newPage();
  page.on("pageerror", (e) => console.error("page error:", e));
  await page.goto(`${origin}/blank.html`);
  return page;
}

/** Subscribes with a token function that returns window.nextToken. */
async function subscribeWithTokens(page, path, transports) {
  await page.evaluate(
    async ({ path, transports }) => {
      const { subscribe } = await import("/_pushgate/client.js");
      window.log = { messages: [], statuses: [], tokenCalls: 0 };
      window.sub = subscribe(path, {
        transports,
        token: async () => {
          window.log.tokenCalls++;
          return window.nextToken;
        },
        onMessage: (m) => window.log.messages.push(m),
        onStatus: (s) => window.log.statuses.push(s),
      });
    },
    { path, transports },
  );
}

for (const transport of ["websocket", "sse", "longpoll"]) {
  test(`a token function authenticates ${transport}`, async () => {
    const dir = mkdtempSync(join(tmpdir(), "pushgate-browser-auth-"));
    const pg = await startPushgate({ dir, yaml: authConfig(dir) });
    try {
      const page = await tokenPage(pg.base);
      await page.evaluate((t) => (window.nextToken = t), await mint(300, ["news"]));
      await subscribeWithTokens(page, "/secure/news", [transport]);
      assert.equal(await eventually("open", () => openOn(page)), transport);
      await sleep(300);
      await publish(pg, "news", `hello ${transport}`);
      const m = await eventually("a message", async () => (await log(page)).messages[0]);
      assert.equal(m.data, `hello ${transport}`);
      await page.close();
    } finally {
      stop(pg);
    }
  });
}

test("the client refreshes its token over WebSocket before exp", async () => {
  const dir = mkdtempSync(join(tmpdir(), "pushgate-browser-auth-"));
  const pg = await startPushgate({ dir, yaml: authConfig(dir) });
  try {
    const page = await tokenPage(pg.base);
    // First token: 3 s. The refresh (at ~2 s) fetches the next one: 60 s.
    await page.evaluate((t) => (window.nextToken = t), await mint(3, ["news"]));
    await subscribeWithTokens(page, "/secure/news", ["websocket"]);
    assert.equal(await eventually("open", () => openOn(page)), "websocket");
    await page.evaluate((t) => (window.nextToken = t), await mint(60, ["news"]));
    await eventually("a refresh", async () => (await log(page)).tokenCalls >= 2, 10000);
    await sleep(3000);
    await publish(pg, "news", "after the first exp");
    const m = await eventually("a message", async () => (await log(page)).messages[0]);
    assert.equal(m.data, "after the first exp");
    const l = await log(page);
    assert.ok(!l.statuses.some((s) => s.state === "reconnecting"), "refreshed in place, no reconnect");
    await page.close();
  } finally {
    stop(pg);
  }
});

test("presence: onJoin / onLeave once per user, and sub.presence() lists who is here", async () => {
  const dir = mkdtempSync(join(tmpdir(), "pushgate-browser-presence-"));
  const pg = await startPushgate({ dir, yaml: authConfig(dir) });
  const pageFor = async (sub, transports) => {
    const page = await tokenPage(pg.base);
    await page.evaluate(
      async ({ token, transports }) => {
        const { subscribe } = await import("/_pushgate/client.js");
        window.log = { joins: [], leaves: [], statuses: [] };
        window.sub = subscribe("/room/lobby", {
          transports,
          token,
          onJoin: (j) => window.log.joins.push(j.sub),
          onLeave: (l) => window.log.leaves.push(l.sub),
          onStatus: (s) => window.log.statuses.push(s),
        });
      },
      { token: await mint(300, ["lobby"], sub), transports },
    );
    await eventually(`${sub} open`, () => openOn(page));
    return page;
  };
  try {
    const bob = await pageFor("bob", ["websocket"]);
    const alice1 = await pageFor("alice", ["websocket"]);
    const alice2 = await pageFor("alice", ["sse"]);
    await eventually("bob sees alice join", async () => (await log(bob)).joins.includes("alice"));
    const who = await eventually("both listed", async () => {
      const p = await bob.evaluate(() => window.sub.presence("lobby"));
      return p.clients.length === 2 && p;
    });
    assert.deepEqual(who.clients.map((c) => [c.sub, c.connections]), [["alice", 2], ["bob", 1]]);
    await alice1.close();
    await sleep(500);
    assert.deepEqual((await log(bob)).leaves, [], "one of alice's tabs closing is no leave");
    await alice2.close();
    await eventually("bob sees alice leave", async () => (await log(bob)).leaves.includes("alice"));
    assert.deepEqual((await log(bob)).joins, ["alice"], "one join for two tabs");
    await bob.close();
  } finally {
    stop(pg);
  }
});
