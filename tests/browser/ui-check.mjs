// Opens the Agora web UI in Debian's chromium, checks that the agent and the
// task are shown (with the cluster's counts, and the task filter answered by
// the master), opens the task's log and waits for its output, checks the
// batch job is listed as succeeded and its log opens, checks the apps view
// (a healthy app, and a waiting one with its reason), and writes a
// screenshot. It also checks what the UI asked the master for: never the
// whole state, and every read with `Cache-Control: max-age=1`. Usage:
// With AGORA_UI_TOKEN set, it first checks the sign-in form, then signs in
// through a `#token=` link.
// node ui-check.mjs URL HOSTNAME TASK_ID EXPECTED_LOG SCREENSHOT JOB_ID JOB_LOG APP_ID WAITING_APP_ID WAITING_REASON
import { chromium } from "playwright-core";

const [url, hostname, taskId, expected, screenshot, jobId, jobLog, appId, waitingApp, waitingReason] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  // What the UI asks the master for: never the whole state, and its reads
  // accept a snapshot a second old.
  const apiReads = [];
  page.on("request", (r) => {
    const path = new URL(r.url()).pathname;
    if (r.method() === "GET" && path.startsWith("/api/v1/") && path !== "/api/v1/events") {
      apiReads.push({ path, search: new URL(r.url()).search, cacheControl: r.headers()["cache-control"] });
    }
  });
  const token = process.env.AGORA_UI_TOKEN;
  if (token) {
    // Without the token the master refuses the API and the page asks for one.
    await page.goto(url);
    await page.locator("#login:not([hidden])").waitFor({ timeout: 15000 });
    await page.goto(`${url}/#token=${encodeURIComponent(token)}`);
    await page.reload();
    if (page.url().includes("token=")) throw new Error("the token stayed in the address bar");
  } else {
    await page.goto(url);
  }
  await page.locator("#agent-rows", { hasText: hostname }).waitFor({ timeout: 15000 });
  await page.locator("#counts", { hasText: "1 agent (1 active)" }).waitFor({ timeout: 15000 });
  await page.locator("#agents-pager", { hasText: "1–1 of 1" }).waitFor({ timeout: 15000 });
  const row = page.locator(`#task-rows tr[data-task="${taskId}"]`);
  await row.waitFor({ timeout: 15000 });
  await page.locator("#task-rows", { hasText: hostname }).waitFor({ timeout: 15000 });
  // The filter asks the master: nothing matches, then the task again.
  await page.fill("#task-filter", "no-such-task-anywhere");
  await page.locator("#tasks-pager", { hasText: "0–0 of 0" }).waitFor({ timeout: 15000 });
  if (await row.count()) throw new Error("the filter left the task listed");
  await page.fill("#task-filter", taskId.toUpperCase());
  await row.waitFor({ timeout: 15000 });
  await page.fill("#task-filter", "");
  await row.click();
  await page.locator("#log-text", { hasText: expected }).waitFor({ timeout: 15000 });
  await page.locator("#live.on").waitFor({ timeout: 15000 });
  const job = page.locator(`#job-rows tr[data-job="${jobId}"]`, { hasText: "SUCCEEDED" });
  await job.waitFor({ timeout: 15000 });
  await job.click();
  await page.locator("#log-text", { hasText: jobLog }).waitFor({ timeout: 15000 });
  await page.locator(`#app-rows tr[data-app="${appId}"]`, { hasText: "HEALTHY" }).waitFor({ timeout: 15000 });
  await page.locator(`#app-rows tr[data-app="${waitingApp}"] .waiting`, { hasText: waitingReason }).waitFor({ timeout: 15000 });
  if (!apiReads.length) throw new Error("the UI read nothing from the API");
  const whole = apiReads.filter((r) => r.path === "/api/v1/state"
    || (["/api/v1/agents", "/api/v1/tasks"].includes(r.path) && !r.search.includes("limit=")));
  if (whole.length) throw new Error(`the UI read everything: ${JSON.stringify(whole.slice(0, 5))}`);
  const fresh = apiReads.filter((r) => r.cacheControl !== "max-age=1");
  if (fresh.length) throw new Error(`reads without max-age=1: ${JSON.stringify(fresh.slice(0, 5))}`);
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log("ui-check: ok");
} finally {
  await browser.close();
}
