// Opens the web UI on the leading master, says "ready" and waits for the
// test to kill that master; passes once the page has moved on its own to
// the new leader and shows the agent again. Usage:
// node ha-check.mjs URL HOSTNAME
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const [url, hostname] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  page.on("console", (m) => console.error(`page: ${m.text()}`));
  await page.goto(url);
  await page.locator("#agent-rows", { hasText: hostname }).waitFor({ timeout: 15000 });
  // Let it learn the other masters.
  await page.waitForFunction(() => typeof masters !== "undefined" && masters.length >= 3, null, { timeout: 15000 });
  console.log("ready");
  // The test answers once it has killed the leader.
  const lines = createInterface({ input: process.stdin });
  await new Promise((resolve) => lines.once("line", resolve));
  lines.close();
  const origin = new URL(url).origin;
  await page.waitForURL((u) => u.origin !== origin, { timeout: 20000 }).catch(async (e) => {
    const known = await page.evaluate(() => masters).catch(() => "?");
    throw new Error(`${e.message}; still on ${page.url()}, masters ${JSON.stringify(known)}`);
  });
  await page.locator("#agent-rows", { hasText: hostname }).waitFor({ timeout: 15000 });
  console.log(`ha-check: ok, now on ${new URL(page.url()).origin}`);
} finally {
  await browser.close();
}
