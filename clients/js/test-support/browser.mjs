// Shared by the browser tests (admin.test.mjs, browser.test.mjs): headless
// Chromium (Debian's, driven by playwright-core) and the real pushgate
// binary started on 127.0.0.1:0. No tests here.
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { writeFileSync } from "node:fs";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
export const root = resolve(here, "../../..");
export const BIN = process.env.PUSHGATE_BIN || join(root, "target/debug/pushgate");
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
export const SHOTS = join(root, "target/screenshots");

/** Launches headless Chromium with no background traffic. */
export function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"],
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `f` until it returns something truthy (or throws the last error). */
export async function eventually(what, f, ms = 15000) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    try {
      last = await f();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await sleep(50);
  }
  throw new Error(`timed out waiting for ${what} (last: ${last})`);
}

/** Writes `yaml` to `dir`/pushgate.yaml, starts the binary on it and
 *  resolves with its child and addresses once both listeners listen. */
export async function spawnPushgate(dir, yaml) {
  const file = join(dir, "pushgate.yaml");
  writeFileSync(file, yaml);
  const child = spawn(BIN, ["--log-format", "json", "--config", file], { stdio: ["ignore", "ignore", "pipe"] });
  const addrs = {};
  const lines = createInterface({ input: child.stderr });
  await new Promise((resolveListen, reject) => {
    child.on("exit", (code) => reject(new Error(`pushgate exited with ${code}`)));
    lines.on("line", (line) => {
      try {
        const v = JSON.parse(line);
        if (v.fields?.message === "listening") addrs[v.fields.listener] = v.fields.addr;
        if (addrs.http && addrs.internal) resolveListen();
      } catch {}
    });
  });
  return { child, addrs };
}
