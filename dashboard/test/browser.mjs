// Drives the dashboard in headless Chromium (Debian's, through puppeteer-core) against a
// running query service, and prints what it saw as one JSON document on stdout: the numbers
// on screen, every request the page made (from the browser's network events), and console
// errors. It asserts nothing: the Rust test that starts the service (query-service/tests/
// dashboard.rs) compares what it prints with the database.
//
//   node test/browser.mjs --url URL --screenshots DIR --ttl SECONDS [--chromium PATH]
//                         [--scenario main|outage]
//
// `main` goes through every view, the polling, hiding the page, typing (a namespace and a
// process search), a pod's drill-down, a process's history across restarts, the lazy
// chunks, a 30-day window (the overview and the trends), both themes, the batch route
// failing and the token prompt, with a screenshot of each; `outage` (run once the test has
// cut the service off its database) loads the page and reads the notice.

import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import puppeteer from "puppeteer-core";

const { values } = parseArgs({
  options: {
    url: { type: "string" },
    screenshots: { type: "string" },
    ttl: { type: "string" },
    chromium: { type: "string", default: "/usr/bin/chromium" },
    scenario: { type: "string", default: "main" },
  },
});
const base = values.url;
const ttlMs = Number(values.ttl) * 1000;
mkdirSync(values.screenshots, { recursive: true });
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const browser = await puppeteer.launch({
  executablePath: values.chromium,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const result = { console: [], phases: {} };
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 800 });
  const requests = [];
  page.on("request", (request) => {
    const url = new URL(request.url());
    requests.push({ method: request.method(), path: url.pathname, query: url.search, body: request.postData() ?? null, at: Date.now() });
  });
  page.on("console", (message) => {
    if (message.type() === "error" || message.type() === "warn") {
      result.console.push(`${message.type()}: ${message.text()}`);
    }
  });
  page.on("pageerror", (error) => result.console.push(`pageerror: ${error.message}`));
  // The page's visibility, settable by this script: document.hidden and visibilitychange
  // as the browser would report them when the tab is hidden.
  await page.evaluateOnNewDocument(() => {
    let hidden = false;
    Object.defineProperty(document, "hidden", { configurable: true, get: () => hidden });
    Object.defineProperty(document, "visibilityState", { configurable: true, get: () => (hidden ? "hidden" : "visible") });
    window.__setHidden = (value) => {
      hidden = value;
      document.dispatchEvent(new Event("visibilitychange"));
    };
  });
  const since = (start) => requests.slice(start);
  // The points each node has in each trends chart (the chart's `data-points`).
  const trendPoints = () =>
    page.$$eval("#view-trends [data-points]", (boxes) => Object.fromEntries(boxes.map((box) => [box.id, JSON.parse(box.getAttribute("data-points"))])));
  const batches = (list) => list.filter((request) => request.path === "/api/dashboard/batch");
  const overviewCells = () =>
    page.$$eval("#view-overview tbody tr[data-key]", (rows) =>
      Object.fromEntries(
        rows.map((row) => [
          row.getAttribute("data-key"),
          Object.fromEntries([...row.querySelectorAll("td[data-field]")].map((cell) => [cell.getAttribute("data-field"), cell.textContent])),
        ]),
      ),
    );

  if (values.scenario === "outage") {
    await page.goto(`${base}/`, { waitUntil: "domcontentloaded" });
    await page.waitForSelector("#view-overview tbody tr[data-key]", { timeout: 60_000 });
    await page.waitForSelector("#notice:not([hidden])", { timeout: 60_000 });
    result.phases.outage = {
      overview: await overviewCells(),
      notice: await page.$eval("#notice", (notice) => notice.textContent),
    };
    await page.screenshot({ path: join(values.screenshots, "database-away.png"), fullPage: true });
    process.stdout.write(`${JSON.stringify(result)}\n`);
    process.exit(0);
  }

  // Load: the overview's three widgets share one key.
  let mark = requests.length;
  const navigated = Date.now();
  await page.goto(`${base}/`, { waitUntil: "domcontentloaded" });
  await page.waitForSelector("#view-overview tbody tr[data-key]", { timeout: 60_000 });
  result.phases.load = {
    msToNumbers: Date.now() - navigated,
    requests: since(mark),
    overview: await overviewCells(),
    cards: await page.$$eval("[data-card]", (cards) => Object.fromEntries(cards.map((card) => [card.getAttribute("data-card"), card.querySelector(".card-value")?.textContent]))),
  };
  await page.screenshot({ path: join(values.screenshots, "overview.png"), fullPage: true });

  // Polling: a visible tab over a few TTLs.
  mark = requests.length;
  const pollMs = 5 * ttlMs;
  await sleep(pollMs);
  result.phases.polling = { ms: pollMs, ttlMs, requests: since(mark) };

  // Hidden: no requests at all; shown again: one at once.
  await page.evaluate(() => window.__setHidden(true));
  mark = requests.length;
  await sleep(3 * ttlMs);
  result.phases.hidden = { ms: 3 * ttlMs, requests: since(mark) };
  mark = requests.length;
  await page.evaluate(() => window.__setHidden(false));
  // No timer is pending while hidden: only the visibility change can bring this request.
  for (let waited = 0; batches(since(mark)).length === 0 && waited < 30_000; waited += 50) {
    await sleep(50);
  }
  result.phases.shown = { requests: since(mark) };

  // Top processes by memory on one node.
  await page.click('[data-view="processes"]');
  await page.waitForSelector("#view-processes tbody tr[data-key]");
  // Searching command lines: ten characters at 50 ms a key, one request once typing pauses.
  mark = requests.length;
  await page.type("#process-search", "bin/proc-5", { delay: 50 });
  await page.waitForFunction(() => document.querySelector("#search-results h2")?.textContent?.includes("bin/proc-5"));
  result.phases.search = {
    requests: since(mark).filter((request) => request.path === "/api/process-search"),
    rows: await page.$$eval("#search-results tbody tr[data-key]", (rows) =>
      rows.map((row) => Object.fromEntries([...row.querySelectorAll("td[data-field]")].map((cell) => [cell.getAttribute("data-field"), cell.textContent]))),
    ),
  };
  await page.screenshot({ path: join(values.screenshots, "processes.png"), fullPage: true });
  // Pods.
  await page.click('[data-view="pods"]');
  await page.waitForSelector("#view-pods [data-namespace]");
  result.phases.pods = {
    namespaces: await page.$$eval("#view-pods [data-namespace]", (sections) =>
      sections.map((section) => ({ namespace: section.getAttribute("data-namespace"), pods: section.querySelectorAll("tbody tr[data-key]").length })),
    ),
  };
  await page.screenshot({ path: join(values.screenshots, "pods.png"), fullPage: true });
  // Typing a namespace: debounced, one request once typing pauses.
  mark = requests.length;
  await page.type("#namespace-filter", "web", { delay: 50 });
  await page.waitForSelector('#view-pods [data-namespace="web"]');
  await page.waitForFunction(() => !document.querySelector('#view-pods [data-namespace="db"]'));
  result.phases.typing = {
    requests: since(mark),
    focused: await page.evaluate(() => document.activeElement?.id ?? null),
  };
  // A pod's drill-down: its containers and their processes.
  const pod = await page.$eval('#view-pods [data-namespace="web"] tbody tr[data-key]', (row) => row.getAttribute("data-key"));
  mark = requests.length;
  await page.click('#view-pods [data-namespace="web"] tbody tr[data-key] .row-action');
  await page.waitForSelector("#pod-detail [data-container] tbody tr[data-key]");
  result.phases.drilldown = {
    pod,
    requests: since(mark).filter((request) => request.path === "/api/pod-processes"),
    containers: await page.$$eval("#pod-detail [data-container]", (sections) =>
      sections.map((section) => ({
        container: section.getAttribute("data-container"),
        rows: [...section.querySelectorAll("tbody tr[data-key]")].map((row) =>
          Object.fromEntries([...row.querySelectorAll("td[data-field]")].map((cell) => [cell.getAttribute("data-field"), cell.textContent])),
        ),
      })),
    ),
  };
  await page.screenshot({ path: join(values.screenshots, "pod-drilldown.png"), fullPage: true });

  // A process's history across restarts, opened from the drill-down's first process.
  const followed = await page.$eval("#pod-detail [data-container] tbody tr[data-key]", (row) => ({
    key: row.getAttribute("data-key"),
    ...Object.fromEntries([...row.querySelectorAll("td[data-field]")].map((cell) => [cell.getAttribute("data-field"), cell.textContent])),
  }));
  const historyBefore = requests.filter((request) => /\/assets\/history-/.test(request.path)).length;
  mark = requests.length;
  await page.click("#pod-detail [data-container] tbody tr[data-key] .row-action");
  await page.waitForSelector("#history-chart .uplot", { timeout: 60_000 });
  result.phases.history = {
    followed,
    chunkBefore: historyBefore,
    requests: since(mark),
    hash: await page.evaluate(() => location.hash),
    incarnations: await page.$$eval("#history tbody tr[data-key]", (rows) =>
      rows.map((row) => ({
        key: row.getAttribute("data-key"),
        ...Object.fromEntries([...row.querySelectorAll("td[data-field]")].map((cell) => [cell.getAttribute("data-field"), cell.textContent])),
      })),
    ),
    restarts: await page.$$eval("#restarts [data-restart]", (items) => items.map((item) => item.getAttribute("data-restart"))),
  };
  await page.screenshot({ path: join(values.screenshots, "history.png"), fullPage: true });

  // The trends chunk is fetched only when the view is opened.
  const trendsBefore = requests.filter((request) => /\/assets\/trends-/.test(request.path)).length;
  mark = requests.length;
  const trendsOpened = Date.now();
  await page.click('[data-view="trends"]');
  await page.waitForSelector("#view-trends .uplot");
  await sleep(2 * ttlMs + 500);
  result.phases.trends = { chunkBefore: trendsBefore, ms: Date.now() - trendsOpened, ttlMs, requests: since(mark), points: await trendPoints() };
  await page.screenshot({ path: join(values.screenshots, "trends.png"), fullPage: true });

  // A long window: 30 days, answered from hourly buckets and charted per node (the chart's
  // chunk fetched only then).
  await page.click('[data-view="overview"]');
  await page.waitForSelector("#view-overview tbody tr[data-key]");
  const hourlyBefore = requests.filter((request) => /\/assets\/hourly-/.test(request.path)).length;
  mark = requests.length;
  await page.select("#window", "30d");
  await page.waitForSelector("#overview-chart:not([hidden]) .uplot", { timeout: 60_000 });
  await page.waitForFunction(() => document.querySelector("#freshness")?.textContent?.includes("hourly"));
  result.phases.longWindow = {
    windows: await page.$$eval("#window option", (options) => options.map((option) => option.value)),
    chunkBefore: hourlyBefore,
    requests: since(mark),
    overview: await overviewCells(),
    freshness: await page.$eval("#freshness", (element) => element.textContent),
  };
  await page.screenshot({ path: join(values.screenshots, "overview-30d.png"), fullPage: true });
  // The trends over 30 days, by the overview's link: from hourly buckets, which keep no
  // network.
  await page.click("#overview-trends");
  await page.waitForFunction(() => document.querySelector("#view-trends")?.textContent?.includes("hourly buckets"), { timeout: 60_000 });
  await page.waitForSelector("#trends-cpu .uplot");
  result.phases.trendsMonth = {
    hash: await page.evaluate(() => location.hash),
    points: await trendPoints(),
    network: await page.$eval("#trends-network", (element) => element.textContent),
  };
  await page.screenshot({ path: join(values.screenshots, "trends-30d.png"), fullPage: true });
  await page.click('[data-view="overview"]');
  await page.waitForSelector("#overview-chart:not([hidden]) .uplot", { timeout: 60_000 });

  // Dark theme: the 30-day overview, then the pods' drill-down and the history again.
  await page.click("#theme");
  result.phases.dark = { theme: await page.evaluate(() => document.documentElement.dataset.theme) };
  await page.screenshot({ path: join(values.screenshots, "overview-30d-dark.png"), fullPage: true });
  await page.select("#window", "15m");
  await page.waitForFunction(() => document.querySelector("#freshness")?.textContent?.includes("raw"));
  await page.screenshot({ path: join(values.screenshots, "overview-dark.png"), fullPage: true });
  await page.click('[data-view="pods"]');
  await page.waitForSelector('#view-pods [data-namespace="web"] tbody tr[data-key] .row-action');
  await page.click('#view-pods [data-namespace="web"] tbody tr[data-key] .row-action');
  await page.waitForSelector("#pod-detail [data-container] tbody tr[data-key]");
  await page.screenshot({ path: join(values.screenshots, "pod-drilldown-dark.png"), fullPage: true });
  await page.click("#pod-detail [data-container] tbody tr[data-key] .row-action");
  await page.waitForSelector("#history-chart .uplot", { timeout: 60_000 });
  await page.screenshot({ path: join(values.screenshots, "history-dark.png"), fullPage: true });
  await page.click('[data-view="processes"]');
  await page.waitForSelector("#view-processes tbody tr[data-key]");
  await page.screenshot({ path: join(values.screenshots, "processes-dark.png"), fullPage: true });
  await page.click('[data-view="trends"]');
  await page.waitForSelector("#view-trends .uplot");
  await page.screenshot({ path: join(values.screenshots, "trends-dark.png"), fullPage: true });
  await page.click("#theme");

  // The batch route failing: the page falls back to the four single routes.
  const fallbackPage = await browser.newPage();
  const fallbackRequests = [];
  await fallbackPage.setRequestInterception(true);
  fallbackPage.on("request", (request) => {
    const url = new URL(request.url());
    fallbackRequests.push({ method: request.method(), path: url.pathname, query: url.search });
    if (url.pathname === "/api/dashboard/batch") {
      void request.respond({ status: 404, contentType: "application/json", body: '{"code":"not_found","error":"not found"}' });
    } else {
      void request.continue();
    }
  });
  await fallbackPage.goto(`${base}/`, { waitUntil: "domcontentloaded" });
  await fallbackPage.waitForSelector("#view-overview tbody tr[data-key]", { timeout: 60_000 });
  result.phases.fallback = {
    requests: fallbackRequests,
    overview: await fallbackPage.$$eval("#view-overview tbody tr[data-key]", (rows) => rows.map((row) => row.getAttribute("data-key"))),
    notice: await fallbackPage.$eval("#notice", (notice) => (notice.hidden ? "" : notice.textContent)),
  };
  await fallbackPage.screenshot({ path: join(values.screenshots, "fallback.png"), fullPage: true });
  await fallbackPage.close();

  // A query service that wants a token: the page asks for one, keeps it in session storage
  // and sends it. (The service here is open; this page's API answers 401 without the token.)
  const tokenPage = await browser.newPage();
  const tokenRequests = [];
  await tokenPage.setRequestInterception(true);
  tokenPage.on("request", (request) => {
    const url = new URL(request.url());
    const authorization = request.headers()["authorization"] ?? null;
    if (url.pathname.startsWith("/api/")) {
      tokenRequests.push({ path: url.pathname, authorization });
    }
    if (url.pathname.startsWith("/api/") && authorization !== "Bearer test-token") {
      void request.respond({
        status: 401,
        contentType: "application/json",
        headers: { "WWW-Authenticate": 'Bearer realm="metricsstack"' },
        body: '{"code":"unauthenticated","error":"a bearer token is needed"}',
      });
    } else {
      void request.continue();
    }
  });
  await tokenPage.goto(`${base}/`, { waitUntil: "domcontentloaded" });
  await tokenPage.waitForSelector("#token-form:not([hidden])", { timeout: 60_000 });
  await tokenPage.screenshot({ path: join(values.screenshots, "token.png"), fullPage: true });
  const asked = [...tokenRequests];
  await tokenPage.type("#token", "test-token");
  await tokenPage.click('#token-form button[type="submit"]');
  await tokenPage.waitForSelector("#view-overview tbody tr[data-key]", { timeout: 60_000 });
  result.phases.token = {
    before: asked,
    after: tokenRequests.slice(asked.length),
    stored: await tokenPage.evaluate(() => sessionStorage.getItem("metricsstack.token")),
    formHidden: await tokenPage.$eval("#token-form", (form) => form.hidden),
  };
} finally {
  await browser.close();
}
process.stdout.write(`${JSON.stringify(result)}\n`);
