// The status page (GET /admin on the internal listener) in real headless
// Chromium against the real pushgate binary: it updates as connections
// open and messages flow. Writes target/screenshots/admin.png; with
// PUSHGATE_UPDATE_DOCS=1 also docs/admin.png (the README's screenshot).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { SHOTS, eventually, launchBrowser, root, sleep, spawnPushgate } from "../test-support/browser.mjs";

const DOCS = process.env.PUSHGATE_UPDATE_DOCS === "1";
// How long messages flow before the screenshot (longer for the docs one).
const FLOW_MS = DOCS ? 25000 : 3000;

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

async function startPushgate() {
  const dir = mkdtempSync(join(tmpdir(), "pushgate-admin-"));
  mkdirSync(join(dir, "public"), { recursive: true });
  writeFileSync(join(dir, "public/blank.html"), "<!doctype html><title>blank</title>");
  const { child, addrs } = await spawnPushgate(dir, `
listen: { http: ["127.0.0.1:0"] }
internal: { listen: "127.0.0.1:0" }
upstreams: { api: { targets: ["http://127.0.0.1:3000"] } }
realtime: { heartbeat: 2s }
routes:
  - { name: live, match: { path: "/live/{channel}" }, realtime: { channels: ["{channel}"], longpoll_timeout: 5s } }
  - { name: chat, match: { path: "/chat/{room}" }, realtime: { channels: ["chat:{room}"], client_publish: ["chat:{room}"] } }
  - { name: api, match: { path_prefix: "/api" }, upstream: api }
  - { name: files, match: { path_prefix: "/" }, static: { dir: public } }
`);
  return { child, base: `http://${addrs.http}`, internal: `http://${addrs.internal}` };
}

async function publish(pg, channel, data) {
  const r = await fetch(`${pg.internal}/publish`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ channel, data }),
  });
  assert.equal(r.status, 200);
}

const text = (page, id) => page.$eval(`#${id}`, (e) => e.textContent);
const number = async (page, id) => Number((await text(page, id)).replace(/,/g, ""));

test("the status page updates after connections open and messages flow", async () => {
  const pg = await startPushgate();
  try {
    const admin = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const errors = [];
    admin.on("pageerror", (e) => errors.push(e));
    admin.on("requestfailed", (r) => errors.push(new Error(`request failed: ${r.url()}`)));
    await admin.goto(`${pg.internal}/admin?interval=250`);
    await eventually("a first update", async () => Number(await admin.$eval("body", (b) => b.dataset.updates)) > 0);
    assert.equal(await text(admin, "conn-websocket"), "0");
    assert.equal(await text(admin, "conn-sse"), "0");
    assert.match(await admin.$eval("#routes", (t) => t.textContent), /live.*\/live\/\{channel\}.*realtime/s);
    assert.match(await admin.$eval("#backplane", (e) => e.textContent), /memory connected/);

    // Subscribers on every transport, opened by the browser client.
    const clients = await browser.newPage();
    await clients.goto(`${pg.base}/blank.html`);
    await clients.evaluate(async () => {
      const { subscribe } = await import("/_pushgate/client.js");
      window.subs = [
        ...["news", "news", "news", "chat:lobby"].map((c) =>
          subscribe(c.startsWith("chat:") ? "/chat/lobby" : `/live/${c}`, { transports: ["websocket"] }),
        ),
        subscribe("/live/news", { transports: ["sse"] }),
        subscribe("/live/news", { transports: ["sse"] }),
        subscribe("/live/scores", { transports: ["longpoll"] }),
      ];
    });
    await eventually("the page to count WebSockets", async () => (await number(admin, "conn-websocket")) === 4);
    await eventually("the page to count SSE streams", async () => (await number(admin, "conn-sse")) === 2);
    await eventually("the page to count long polls", async () => (await number(admin, "conn-longpoll")) === 1);

    // A steady flow of messages: rates, totals and latency appear.
    const end = Date.now() + FLOW_MS;
    let n = 0;
    while (Date.now() < end) {
      await publish(pg, "news", { n: n++ });
      if (n % 4 === 0) await publish(pg, "scores", { n });
      if (n % 3 === 0) await publish(pg, "chat:lobby", { text: `hi ${n}` });
      await sleep(DOCS ? 15 + 30 * Math.abs(Math.sin(n / 40)) : 20);
    }
    await eventually("the publish total", async () => (await number(admin, "publishes-total")) >= n);
    await eventually("deliveries", async () => (await number(admin, "deliveries-total")) >= n * 5);
    assert.ok((await number(admin, "publishes-rate")) >= 0);
    const p50 = await number(admin, "latency-p50");
    const p99 = await number(admin, "latency-p99");
    assert.ok(p50 > 0 && p50 <= p99, `latency p50 ${p50} ≤ p99 ${p99}`);
    const busiest = await admin.$$eval("#busiest tbody tr", (rows) => rows.map((r) => [...r.cells].map((c) => c.textContent)));
    assert.deepEqual(busiest[0].slice(0, 2), ["news", "5"], "busiest channel first, with its subscribers");
    assert.equal(errors.length, 0, `no page errors: ${errors}`);

    mkdirSync(SHOTS, { recursive: true });
    await admin.screenshot({ path: join(SHOTS, "admin.png"), fullPage: true });
    if (DOCS) await admin.screenshot({ path: join(root, "docs/admin.png"), fullPage: true });
  } finally {
    pg.child.kill("SIGKILL");
  }
});
