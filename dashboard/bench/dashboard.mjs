// The dashboard benchmark's browser half (scripts/bench-dashboard starts the query service
// on a seeded database and runs this): headless Chromium through puppeteer-core measures
// this page beside the performance plan's approach (`?mode=baseline`: the four single
// routes on every refresh, no batch, no If-None-Match, no HTTP cache), in the same run, and
// prints a table with the ratios. It asserts nothing.
//
//   node bench/dashboard.mjs --url URL [--fast-url URL] [--chromium PATH] [--loads 20]
//                            [--minutes 3] [--points 1000] [--updates 100]
//                            [--heap-minutes 5] [--parts loads,polling,chart,heap]
//
// - Cold loads: each in a new browser context (no HTTP cache, no client cache, no
//   session): the time from navigation to the first real numbers on screen (the first
//   overview row, in the page's own clock: performance.now() from navigation start), p50
//   and p95; the JavaScript bytes transferred (encoded); the API requests. The modes
//   alternate, after one load of each not counted (it warms the service's cache, which
//   both modes share).
// - Requests: one page of each mode on the overview, side by side (each in a browser of its
//   own, so that both are visible tabs), for `minutes`: API requests per minute, the share
//   answered 304, and the long tasks (> 50 ms) meanwhile.
// - Chart updates, in each mode's page: the trends view's own code (its chunk, imported by
//   the page) fed `points` points per node series, then `updates` more, one per animation
//   frame; the long tasks (Long Tasks API, > 50 ms) during those updates and the time of
//   each.
// - Heap (this page only; the baseline refreshes on a fixed 5 s): the overview and the
//   trends view, each in a browser of its own, open on `fast-url`, a service whose answers
//   are fresh for 1 s, so that the page refreshes about four times as often as on the
//   operator's 4 s; the JavaScript heap in use after a forced garbage collection (DevTools
//   protocol: HeapProfiler.collectGarbage, then Performance.getMetrics) once 150 refreshes
//   (ten minutes at 4 s) are done, and at the end of `heap-minutes`: its growth per hour of
//   refreshes at 4 s. The trends view keeps a point per refresh up to 1,000 per series, so
//   part of its growth is those points.

import { parseArgs } from "node:util";
import puppeteer from "puppeteer-core";

const { values } = parseArgs({
  options: {
    url: { type: "string" },
    "fast-url": { type: "string" },
    chromium: { type: "string", default: "/usr/bin/chromium" },
    loads: { type: "string", default: "20" },
    minutes: { type: "string", default: "3" },
    points: { type: "string", default: "1000" },
    updates: { type: "string", default: "100" },
    "heap-minutes": { type: "string", default: "5" },
    parts: { type: "string", default: "loads,polling,chart,heap" },
  },
});
const base = values.url;
const loads = Number(values.loads);
const minutes = Number(values.minutes);
const points = Number(values.points);
const updates = Number(values.updates);
const heapMinutes = Number(values["heap-minutes"]);
const parts = new Set(values.parts.split(","));
if (parts.has("heap") && !values["fast-url"]) throw new Error("the heap part needs --fast-url");
const MODES = ["dashboard", "baseline"];
const address = (mode) => (mode === "baseline" ? `${base}/?mode=baseline` : `${base}/`);
const log = (text) => process.stderr.write(`${text}\n`);

const percentile = (values, p) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
};

/**
 * Network accounting of one page: requests as sent and script bytes as transferred
 * (DevTools protocol), API answers' statuses (puppeteer's responses; the protocol does not
 * report every 304 of a fetch).
 */
async function account(page) {
  const seen = new Map();
  const totals = { jsBytes: 0, api: 0, notModified: 0 };
  const cdp = await page.createCDPSession();
  await cdp.send("Network.enable");
  cdp.on("Network.requestWillBeSent", ({ requestId, type, request }) => {
    const path = new URL(request.url).pathname;
    seen.set(requestId, { type, path });
    if (path.startsWith("/api/")) totals.api += 1;
  });
  cdp.on("Network.loadingFinished", ({ requestId, encodedDataLength }) => {
    const request = seen.get(requestId);
    if (!request) return;
    if (request.type === "Script") totals.jsBytes += encodedDataLength;
  });
  page.on("response", (response) => {
    if (!new URL(response.url()).pathname.startsWith("/api/")) return;
    if (response.status() === 304) totals.notModified += 1;
  });
  return totals;
}

/** Records, in the page's clock, when the first overview row appears. */
function watchForNumbers() {
  new MutationObserver((_, observer) => {
    if (document.querySelector("#view-overview tbody tr[data-key] td[data-field]")) {
      window.__numbersAt = performance.now();
      observer.disconnect();
    }
  }).observe(document, { childList: true, subtree: true });
}

async function coldLoad(browser, mode) {
  const context = await browser.createBrowserContext();
  try {
    const page = await context.newPage();
    const totals = await account(page);
    await page.evaluateOnNewDocument(watchForNumbers);
    await page.goto(address(mode), { waitUntil: "domcontentloaded" });
    await page.waitForFunction(() => window.__numbersAt !== undefined, { timeout: 120_000 });
    const ms = await page.evaluate(() => window.__numbersAt);
    // Let the last loadingFinished events arrive.
    await page.evaluate(() => new Promise((resolve) => setTimeout(resolve, 100)));
    return { ms, jsBytes: totals.jsBytes, api: totals.api };
  } finally {
    await context.close();
  }
}

/** Counts the page's long tasks (> 50 ms) in `window.__longTasks`. */
function countLongTasks() {
  window.__longTasks = 0;
  new PerformanceObserver((list) => (window.__longTasks += list.getEntries().length)).observe({ type: "longtask" });
}

/** Each mode in a browser of its own (two tabs of one browser: one would be hidden). */
async function polling() {
  const pages = await Promise.all(
    MODES.map(async (mode) => {
      const context = await launch();
      const page = await context.newPage();
      await page.evaluateOnNewDocument(countLongTasks);
      await page.goto(address(mode), { waitUntil: "domcontentloaded" });
      await page.waitForSelector("#view-overview tbody tr[data-key]", { timeout: 120_000 });
      return { mode, context, page, totals: await account(page) };
    }),
  );
  const longTasks = () => Promise.all(pages.map((p) => p.page.evaluate(() => window.__longTasks)));
  const start = pages.map((p) => ({ ...p.totals }));
  const startLongTasks = await longTasks();
  await new Promise((resolve) => setTimeout(resolve, minutes * 60_000));
  const endLongTasks = await longTasks();
  const result = {};
  pages.forEach((p, i) => {
    result[p.mode] = {
      perMinute: (p.totals.api - start[i].api) / minutes,
      notModifiedShare: (p.totals.notModified - start[i].notModified) / Math.max(1, p.totals.api - start[i].api),
      longTasksPerMinute: (endLongTasks[i] - startLongTasks[i]) / minutes,
    };
  });
  await Promise.all(pages.map((p) => p.context.close()));
  return result;
}

/** The trends view's code, in `mode`'s page, fed `points` points per series, then `updates` more. */
async function chartUpdates(browser, mode) {
  const context = await browser.createBrowserContext();
  try {
    const page = await context.newPage();
    await page.setViewport({ width: 1280, height: 800 });
    await page.goto(`${address(mode)}#view=trends`, { waitUntil: "domcontentloaded" });
    await page.waitForSelector("#view-trends");
    return await page.evaluate(
      async (points, updates) => {
        const chunk = performance.getEntriesByType("resource").find((entry) => /\/assets\/trends-[^/]+\.js$/.test(entry.name));
        const module = await import(chunk.name);
        const longTasks = [];
        new PerformanceObserver((list) => longTasks.push(...list.getEntries())).observe({ type: "longtask" });
        let push;
        const context = {
          data: { subscribe: (_, listener) => ((push = listener), () => {}) },
          window: "1h",
          nodes: new Set(),
          report: () => {},
        };
        const view = module.trends(context);
        document.querySelector("main").replaceChildren(view.element);
        const hosts = Array.from({ length: 20 }, (_, i) => `node-${i + 1}`);
        let t = Date.now() - (points + updates) * 5000;
        const state = () => {
          t += 5000;
          return {
            updatedAt: t,
            stale: false,
            outdated: false,
            fetching: false,
            fallback: false,
            data: { host_overall_metrics: { source: "raw", window_seconds: 3600, rows: hosts.map((host, i) => ({ host, avg_cpu: 50 + 40 * Math.sin(t / 60000 + i) })) } },
          };
        };
        for (let i = 0; i < points; i++) push(state());
        await new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 200)));
        const from = performance.now();
        const durations = [];
        for (let i = 0; i < updates; i++) {
          const started = performance.now();
          push(state());
          durations.push(performance.now() - started);
          await new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
        }
        await new Promise((resolve) => setTimeout(resolve, 200));
        const during = longTasks.filter((task) => task.startTime >= from);
        view.stop();
        return {
          series: hosts.length,
          pointsPerSeries: points,
          updates,
          longTasks: during.length,
          longTaskMs: during.reduce((sum, task) => sum + task.duration, 0),
          updateMsP50: durations.sort((a, b) => a - b)[Math.floor(durations.length / 2)],
          updateMsMax: durations[durations.length - 1],
        };
      },
      points,
      updates,
    );
  } finally {
    await context.close();
  }
}

/**
 * `view` open on the fast service for `heapMinutes`, in a browser of its own: the
 * JavaScript heap in use after a forced garbage collection, once 150 refreshes are done and
 * at the end.
 */
async function heap(view) {
  const own = await launch();
  try {
    const page = await own.newPage();
    await page.setViewport({ width: 1280, height: 800 });
    let refreshes = 0;
    page.on("response", (response) => {
      if (new URL(response.url()).pathname.startsWith("/api/")) refreshes += 1;
    });
    const cdp = await page.createCDPSession();
    await cdp.send("Performance.enable");
    const used = async () => {
      await cdp.send("HeapProfiler.collectGarbage");
      const { metrics } = await cdp.send("Performance.getMetrics");
      return metrics.find((metric) => metric.name === "JSHeapUsedSize").value;
    };
    const started = Date.now();
    await page.goto(`${values["fast-url"]}/#view=${view}`, { waitUntil: "domcontentloaded" });
    await page.waitForSelector(view === "trends" ? "#view-trends canvas" : "#view-overview tbody tr[data-key]", { timeout: 120_000 });
    const atStart = await used();
    while (refreshes < 150 && Date.now() - started < heapMinutes * 60_000) {
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
    const mark = { refreshes, seconds: (Date.now() - started) / 1000, bytes: await used() };
    const remaining = heapMinutes * 60_000 - (Date.now() - started);
    if (remaining > 0) await new Promise((resolve) => setTimeout(resolve, remaining));
    const end = { refreshes, seconds: (Date.now() - started) / 1000, bytes: await used() };
    // Refreshes at the operator's 4 s freshness: 900 an hour.
    const perHour = ((end.bytes - mark.bytes) / Math.max(1, end.refreshes - mark.refreshes)) * 900;
    return { atStart, mark, end, perHour };
  } finally {
    await own.close();
  }
}

const launch = () =>
  puppeteer.launch({
    executablePath: values.chromium,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
const browser = await launch();
const result = { loads: {}, polling: {}, chart: {} };
try {
  if (parts.has("loads")) {
    for (const mode of MODES) {
      const first = await coldLoad(browser, mode);
      log(`${mode}: first load (not counted) ${first.ms.toFixed(0)} ms`);
      result.loads[mode] = { first: first.ms, runs: [] };
    }
    for (let i = 0; i < loads; i++) {
      for (const mode of MODES) {
        result.loads[mode].runs.push(await coldLoad(browser, mode));
      }
    }
    log(`${loads} cold loads per mode done`);
  }
  if (parts.has("polling")) {
    log(`polling for ${minutes} min`);
    result.polling = await polling();
  }
  if (parts.has("chart")) {
    log("chart updates");
    for (const mode of MODES) result.chart[mode] = await chartUpdates(browser, mode);
  }
  if (parts.has("heap")) {
    log(`heap over ${heapMinutes} min of refreshes every second`);
    const [overview, trends] = await Promise.all([heap("overview"), heap("trends")]);
    result.heap = { overview, trends };
  }
} finally {
  await browser.close();
}

const row = (name, ours, theirs, unit, digits = 0) =>
  `| ${name} | ${ours.toFixed(digits)} ${unit} | ${theirs.toFixed(digits)} ${unit} | ${theirs === 0 ? "–" : (ours / theirs).toFixed(2)} |`;
const ms = (mode, p) => percentile(result.loads[mode].runs.map((run) => run.ms), p);
const mean = (mode, field) => result.loads[mode].runs.reduce((sum, run) => sum + run[field], 0) / loads;
const lines = ["| measure | dashboard | plan's approach | ratio |", "| --- | --- | --- | --- |"];
if (parts.has("loads")) {
  lines.push(
    row(`first numbers, p50 of ${loads} cold loads`, ms("dashboard", 50), ms("baseline", 50), "ms"),
    row(`first numbers, p95 of ${loads} cold loads`, ms("dashboard", 95), ms("baseline", 95), "ms"),
    row("JS transferred per cold load", mean("dashboard", "jsBytes"), mean("baseline", "jsBytes"), "B"),
    row("API requests per cold load", mean("dashboard", "api"), mean("baseline", "api"), "", 1),
  );
}
if (parts.has("polling")) {
  const { dashboard, baseline } = result.polling;
  lines.push(
    row("API requests per minute (one tab)", dashboard.perMinute, baseline.perMinute, "", 1),
    row("share of API answers 304", dashboard.notModifiedShare * 100, baseline.notModifiedShare * 100, "%", 1),
    row("long tasks per minute while polling", dashboard.longTasksPerMinute, baseline.longTasksPerMinute, "", 1),
  );
}
if (parts.has("chart")) {
  const { dashboard, baseline } = result.chart;
  const shape = `${dashboard.series} series x ${dashboard.pointsPerSeries} points, ${dashboard.updates} updates`;
  lines.push(
    row(`long tasks during chart updates (${shape})`, dashboard.longTasks, baseline.longTasks, ""),
    row("time in those long tasks", dashboard.longTaskMs, baseline.longTaskMs, "ms"),
    row("chart update, p50", dashboard.updateMsP50, baseline.updateMsP50, "ms", 2),
  );
}
console.log(JSON.stringify(result));
console.log(lines.join("\n"));
if (parts.has("heap")) {
  const kb = (bytes) => `${(bytes / 1024).toFixed(0)} KB`;
  for (const [view, { atStart, mark, end, perHour }] of Object.entries(result.heap)) {
    console.log(
      `heap, ${view} refreshed every ~1 s: ${kb(atStart)} at first; ${kb(mark.bytes)} after ${mark.refreshes} refreshes (${mark.seconds.toFixed(0)} s); ` +
        `${kb(end.bytes)} after ${end.refreshes} (${end.seconds.toFixed(0)} s; ${((end.refreshes * 4) / 60).toFixed(0)} min at 4 s): ` +
        `${kb(end.bytes - mark.bytes)} since the 10-minute mark, ${kb(perHour)} per hour at 4 s`,
    );
  }
}
