// The client data layer against a fake fetch, clock and visibility: requests counted, their
// headers read, time moved by the test alone.

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  DashboardData,
  type DataError,
  type Followed,
  type EntryState,
  type Filters,
  type Options,
  PARTS,
  filtersKey,
  freshForMs,
  historySeries,
  type HostHistoryRow,
  hostSeries,
  type ProcessHistoryRow,
  queryString,
  RefreshFailure,
} from "../src/data.js";
import { FakeClock, FakeFetch, FakeTokens, FakeVisibility, type Recorded, type Reply, settle } from "./fakes.js";

const DASHBOARD = {
  host_process_metrics: { source: "raw", window_seconds: 3600, rows: [] },
  host_overall_metrics: {
    source: "raw",
    window_seconds: 3600,
    rows: [{ host: "node-1", avg_cpu: 12.5, max_cpu: 40, avg_memory_mb: 900, max_memory_mb: 1000, avg_load_1: 0.5, samples: 10, last_seen: "2026-01-01T00:00:00Z" }],
  },
  top_processes: { source: "raw", window_seconds: 3600, rows: [] },
  vm_metrics: { source: "raw", window_seconds: 3600, rows: [] },
};

/** A 200 answer fresh for `maxAge` seconds, `age` of them gone. */
function ok(body: unknown, etag = '"e1"', maxAge = 5, age = 0): Reply {
  return {
    status: 200,
    headers: {
      ETag: etag,
      "Cache-Control": `max-age=${maxAge}, stale-while-revalidate=30, stale-if-error=300`,
      Age: String(age),
    },
    body,
  };
}

function notModified(etag = '"e1"', maxAge = 5, age = 0): Reply {
  return { status: 304, headers: { ETag: etag, "Cache-Control": `max-age=${maxAge}`, Age: String(age) } };
}

function setup(options: Partial<Options> = {}, token: string | null = null) {
  const clock = new FakeClock();
  const http = new FakeFetch();
  const visibility = new FakeVisibility();
  const tokens = new FakeTokens(token);
  const data = new DashboardData({ fetch: http.fetch, clock, visibility, tokens }, options);
  const states: EntryState[] = [];
  const listen = (filters: Filters = {}) => data.subscribe(filters, (state) => states.push(state));
  return { clock, http, visibility, tokens, data, states, listen, last: () => states[states.length - 1] };
}

/** A handler answering the batch with `DASHBOARD` and the single routes with their part. */
function server(http: FakeFetch, batch: (request: Recorded) => Reply = () => ok(DASHBOARD)) {
  const singles: Record<string, keyof typeof DASHBOARD> = {
    "/api/host-process-metrics": "host_process_metrics",
    "/api/host-overall-metrics": "host_overall_metrics",
    "/api/dashboard/top-processes": "top_processes",
    "/api/vm-metrics": "vm_metrics",
  };
  http.handler = (request) => {
    const path = request.url.split("?")[0];
    if (path === "/api/dashboard/batch") {
      return batch(request);
    }
    const part = singles[path];
    assert.ok(part, `unexpected request to ${request.url}`);
    return ok(DASHBOARD[part], `"${part}"`, 5, 0);
  };
}

test("the key of a set of filters holds only what is set, in a fixed order", () => {
  assert.equal(filtersKey({}), "");
  assert.equal(
    filtersKey({ namespace: "web", host: "a b", metric: "memory", limit: 5, window: "1h" }),
    "window=1h&limit=5&metric=memory&host=a%20b&namespace=web",
  );
  assert.equal(filtersKey({ host: "", namespace: undefined, window: "15m" }), "window=15m");
});

test("freshness is max-age minus Age, and unknown without max-age", () => {
  assert.equal(freshForMs("max-age=5, stale-while-revalidate=30", "2"), 3000);
  assert.equal(freshForMs("public, max-age=10", null), 10_000);
  assert.equal(freshForMs("max-age=5", "9"), 0);
  assert.equal(freshForMs("max-age=5", "soon"), 5000);
  assert.equal(freshForMs("no-store", "0"), undefined);
  assert.equal(freshForMs(null, null), undefined);
  assert.equal(freshForMs("s-maxage=4", "0"), undefined);
});

test("three widgets on one key make one request and all get its answer", async () => {
  const { http, data } = setup();
  server(http);
  const seen: EntryState[][] = [[], [], []];
  for (const states of seen) {
    data.subscribe({ window: "1h" }, (state) => states.push(state));
  }
  await settle();
  assert.equal(http.requests.length, 1);
  const [request] = http.requests;
  assert.equal(request.url, "/api/dashboard/batch");
  assert.equal(request.init.method, "POST");
  assert.equal(request.init.body, '{"window":"1h"}');
  assert.equal(request.init.headers["Content-Type"], "application/json");
  assert.equal(request.init.headers["If-None-Match"], undefined);
  assert.equal(request.init.headers["Authorization"], undefined);
  for (const states of seen) {
    const state = states[states.length - 1];
    assert.deepEqual(state.data, DASHBOARD);
    assert.equal(state.stale, false);
    assert.equal(state.fetching, false);
    assert.equal(state.fallback, false);
    assert.equal(state.error, undefined);
  }
  assert.deepEqual(data.peek({ window: "1h" })?.data, DASHBOARD);
  assert.equal(data.peek({ window: "6h" }), undefined);
});

test("different filters are different entries, each with its own request", async () => {
  const { http, listen } = setup();
  server(http);
  listen({ window: "1h" });
  listen({ window: "1h", host: "node-1" });
  listen({ host: "", window: "1h" }); // the same key as the first
  await settle();
  assert.deepEqual(
    http.requests.map((request) => request.init.body),
    ['{"window":"1h"}', '{"window":"1h","host":"node-1"}'],
  );
});

test("refreshes follow the server's freshness, at most once per max-age, with If-None-Match", async () => {
  const { clock, http, listen, last } = setup();
  // Every answer a second old, as from a server that refreshes ahead: due after max-age
  // minus Age (4 s), but asked once per max-age (5 s) all the same.
  server(http, () => (http.requests.length === 1 ? ok(DASHBOARD, '"e1"', 5, 2) : notModified('"e1"', 5, 1)));
  listen();
  await settle();
  const first = last().data;
  await clock.advance(4999);
  assert.equal(http.requests.length, 1, "not before one max-age after the last request");
  await clock.advance(1);
  assert.equal(http.requests.length, 2);
  assert.equal(http.requests[1].init.headers["If-None-Match"], '"e1"');
  assert.equal(last().data, first, "a 304 keeps the very same body");
  assert.equal(last().stale, false);
  await clock.advance(4999);
  assert.equal(http.requests.length, 2);
  await clock.advance(1);
  assert.equal(http.requests.length, 3);
  // Over 60 seconds at max-age 5: 12 requests, the first included (every 4 s, as max-age
  // minus Age would have it, made 15).
  await clock.advance(60_000 - 10_000);
  assert.equal(http.requests.length, 13);
});

test("answers that come already stale are shown, outdated from the second, and asked again with backoff", async () => {
  const { clock, http, listen, last, states } = setup({ minIntervalMs: 1000, retryBaseMs: 1000, defaultIntervalMs: 7000 });
  let reply: Reply = ok(DASHBOARD, '"e1"', 5, 8);
  server(http, () => reply);
  listen();
  await settle();
  assert.equal(last().stale, true, "Age beyond max-age: stale at once");
  assert.equal(last().outdated, false, "one alone is no news");
  assert.deepEqual(last().data, DASHBOARD, "and shown");
  await clock.advance(999);
  assert.equal(http.requests.length, 1);
  await clock.advance(1);
  assert.equal(http.requests.length, 2, "asked again after 1 s");
  assert.equal(last().outdated, true, "the second in a row");
  await clock.advance(1999);
  assert.equal(http.requests.length, 2);
  await clock.advance(1);
  assert.equal(http.requests.length, 3, "then after 2 s");
  const fetching = states.slice(states.findIndex((state) => state.outdated)).filter((state) => state.fetching);
  assert.ok(fetching.length > 0 && fetching.every((state) => state.outdated), "outdated while the next refresh runs");
  reply = { status: 200, body: DASHBOARD };
  await clock.advance(4000);
  assert.equal(http.requests.length, 4);
  assert.equal(last().outdated, false, "a fresh answer clears it");
  await clock.advance(6999);
  assert.equal(http.requests.length, 4, "without max-age, the default interval");
  await clock.advance(1);
  assert.equal(http.requests.length, 5);
  assert.equal(http.requests[4].init.headers["If-None-Match"], undefined, "no ETag was given");
});

test("nothing is requested while hidden; shown again, what is due is refreshed at once", async () => {
  const { clock, http, visibility, listen } = setup();
  server(http);
  visibility.set(true);
  listen();
  await clock.advance(30_000);
  assert.equal(http.requests.length, 0, "hidden from the start: no request");
  visibility.set(false);
  await settle();
  assert.equal(http.requests.length, 1, "shown: at once");
  visibility.set(true);
  await clock.advance(30_000);
  assert.equal(http.requests.length, 1, "hidden for 30 s: none");
  assert.equal(clock.pending(), 0, "no timer runs while hidden");
  visibility.set(false);
  await settle();
  assert.equal(http.requests.length, 2, "shown again after its freshness ran out: at once");
  await clock.advance(2000);
  visibility.set(true);
  visibility.set(false);
  await settle();
  assert.equal(http.requests.length, 2, "shown while still fresh: no request");
  await clock.advance(2999);
  assert.equal(http.requests.length, 2);
  await clock.advance(1);
  assert.equal(http.requests.length, 3, "the refresh comes when it is due");
});

test("a request in flight when the page is hidden is not followed by another until shown", async () => {
  const { clock, http, visibility, listen } = setup();
  let answer!: () => void;
  http.handler = () => new Promise<Reply>((resolve) => (answer = () => resolve(ok(DASHBOARD))));
  listen();
  await settle();
  visibility.set(true);
  answer();
  await clock.advance(60_000);
  assert.equal(http.requests.length, 1);
  visibility.set(false);
  await settle();
  assert.equal(http.requests.length, 2);
});

test("a failed refresh keeps the data, shows the error and stale, and retries with backoff", async () => {
  const { clock, http, listen, last } = setup({ retryBaseMs: 1000, retryMaxMs: 4000 });
  let failing = false;
  http.handler = (request) => {
    if (!failing) {
      return ok(DASHBOARD);
    }
    if (request.url === "/api/dashboard/batch") {
      return { status: 503, body: { code: "database_unavailable", error: "the database did not answer" } };
    }
    return { status: 503, text: "not json" };
  };
  listen();
  await settle();
  const before = last().data;
  failing = true;
  await clock.advance(5000);
  assert.equal(http.to("/api/dashboard/batch").length, 2);
  assert.equal(http.to("/api/vm-metrics").length, 1, "the batch failing, the single routes were asked");
  assert.equal(last().data, before, "the last data is kept");
  assert.equal(last().stale, true);
  assert.equal(last().fetching, false);
  assert.deepEqual(last().error, { kind: "http", status: 503, message: "the query service answered 503" });
  const batches = () => http.to("/api/dashboard/batch").length;
  await clock.advance(999);
  assert.equal(batches(), 2);
  await clock.advance(1);
  assert.equal(batches(), 3, "first retry after 1 s");
  await clock.advance(1999);
  assert.equal(batches(), 3);
  await clock.advance(1);
  assert.equal(batches(), 4, "then after 2 s");
  await clock.advance(4000);
  assert.equal(batches(), 5, "then after 4 s");
  await clock.advance(3999);
  assert.equal(batches(), 5);
  await clock.advance(1);
  assert.equal(batches(), 6, "at most 4 s apart");
  failing = false;
  await clock.advance(4000);
  assert.equal(batches(), 7);
  assert.equal(last().error, undefined, "recovered");
  assert.equal(last().stale, false);
  await clock.advance(4999);
  assert.equal(batches(), 7, "back to the server's interval");
  await clock.advance(1);
  assert.equal(batches(), 8);
});

test("the error message of a JSON error body is shown", async () => {
  const { http, listen, last } = setup();
  http.handler = () => ({ status: 400, body: { code: "invalid_parameter", error: "window: too long" } });
  listen({ window: "99d" });
  await settle();
  assert.deepEqual(last().error, { kind: "http", status: 400, message: "window: too long" });
  assert.equal(last().data, undefined);
  assert.equal(http.requests.length, 1, "a 400 is not a reason to fall back");
});

test("a missing batch route sends the page to the four single routes, and is probed again later", async () => {
  const { clock, http, listen, last } = setup({ batchProbeMs: 60_000 });
  server(http, () => ({ status: 404, body: { code: "not_found", error: "not found" } }));
  listen({ window: "15m", host: "node-1", limit: 5 });
  await settle();
  assert.equal(http.requests.length, 5);
  assert.deepEqual(
    http.requests.slice(1).map((request) => [request.init.method, request.url]),
    [
      ["GET", "/api/host-process-metrics?window=15m&limit=5&host=node-1"],
      ["GET", "/api/host-overall-metrics?window=15m&limit=5&host=node-1"],
      ["GET", "/api/dashboard/top-processes?window=15m&limit=5&host=node-1"],
      ["GET", "/api/vm-metrics?window=15m&limit=5&host=node-1"],
    ],
  );
  assert.deepEqual(last().data, DASHBOARD);
  assert.equal(last().fallback, true);
  assert.equal(last().error, undefined);
  await clock.advance(5000);
  assert.equal(http.to("/api/dashboard/batch").length, 1, "no batch while it is known missing");
  assert.equal(http.requests.length, 9);
  assert.equal(http.requests[5].init.headers["If-None-Match"], '"host_process_metrics"', "each part its own ETag");
  await clock.advance(55_000);
  assert.equal(http.to("/api/dashboard/batch").length, 2, "probed again after batchProbeMs");
});

test("single routes answering 304 keep the same data", async () => {
  const { clock, http, listen, last } = setup();
  http.handler = (request) => {
    if (request.url.startsWith("/api/dashboard/batch")) {
      return { status: 405 };
    }
    const part = PARTS.find((name) => request.url.includes(name.split("_")[0])) ?? "vm_metrics";
    return request.init.headers["If-None-Match"] ? notModified(`"${part}"`, 5, 1) : ok(DASHBOARD.vm_metrics, `"${part}"`, 5, 1);
  };
  listen();
  await settle();
  assert.equal(http.requests[1].url, "/api/host-process-metrics", "no query without filters");
  const first = last().data;
  await clock.advance(4999);
  assert.equal(http.requests.length, 5, "not before one max-age after the last request");
  await clock.advance(1);
  assert.equal(http.requests.length, 9, "refreshed");
  assert.equal(last().data, first);
});

test("a network error on the batch falls back; on the single routes too, it is an error", async () => {
  const { clock, http, listen, last } = setup();
  let singlesDown = false;
  http.handler = (request) => {
    if (request.url === "/api/dashboard/batch" || singlesDown) {
      throw new TypeError("Failed to fetch");
    }
    return ok(DASHBOARD.vm_metrics);
  };
  listen();
  await settle();
  assert.equal(last().fallback, true);
  assert.equal(last().error, undefined);
  singlesDown = true;
  await clock.advance(5000);
  assert.equal(last().error?.kind, "network");
  assert.match(last().error?.message ?? "", /Failed to fetch/);
  assert.ok(last().data, "the last data is kept");
  const before = http.to("/api/dashboard/batch").length;
  await clock.advance(1000);
  assert.equal(http.to("/api/dashboard/batch").length, before + 1, "the batch is tried again after a 5xx-like failure");
});

test("the token goes in Authorization; a 401 stops polling and asks for a token, which restarts it", async () => {
  const { clock, http, data, tokens, listen, last } = setup({}, "old");
  const asked: DataError[] = [];
  data.onAuthRequired((error) => asked.push(error));
  server(http, (request) =>
    request.init.headers["Authorization"] === "Bearer new"
      ? ok(DASHBOARD)
      : { status: 401, body: { code: "unauthenticated", error: "a bearer token is needed" } },
  );
  listen();
  await settle();
  assert.equal(http.requests[0].init.headers["Authorization"], "Bearer old");
  assert.deepEqual(asked, [{ kind: "unauthenticated", status: 401, message: "a bearer token is needed" }]);
  assert.equal(last().error?.kind, "unauthenticated");
  await clock.advance(120_000);
  assert.equal(http.requests.length, 1, "no polling without a token that works");
  listen({ window: "6h" });
  await settle();
  assert.equal(http.requests.length, 1, "nor for a new widget");
  await data.setToken("new");
  assert.equal(tokens.token, "new");
  assert.equal(http.requests.length, 3, "both entries on screen refreshed");
  assert.equal(last().error, undefined);
  assert.deepEqual(last().data, DASHBOARD);
});

test("a 403 asks for a different token", async () => {
  const { http, data, listen } = setup({}, "weak");
  const asked: DataError[] = [];
  const stop = data.onAuthRequired((error) => asked.push(error));
  http.handler = () => ({ status: 403, body: { code: "forbidden", error: "user x may not get metricsstacks/data" } });
  listen();
  await settle();
  assert.equal(asked[0].kind, "forbidden");
  stop();
  await data.setToken(null);
  assert.equal(asked.length, 1, "an unsubscribed listener hears nothing");
  assert.equal(http.requests[1].init.headers["Authorization"], undefined, "no token, no header");
});

test("an entry nobody watches is not refreshed; watched again, its cached data comes at once", async () => {
  const { clock, http, data } = setup();
  server(http);
  const first: EntryState[] = [];
  const stop = data.subscribe({ window: "1h" }, (state) => first.push(state));
  await settle();
  stop();
  await clock.advance(60_000);
  assert.equal(http.requests.length, 1);
  const again: EntryState[] = [];
  data.subscribe({ window: "1h" }, (state) => again.push(state));
  assert.deepEqual(again[0].data, DASHBOARD, "the cached answer, before any request");
  assert.equal(again[0].stale, true);
  await settle();
  assert.equal(http.requests.length, 2, "and refreshed behind it");
  assert.equal(again[again.length - 1].stale, false);
});

test("a refresh asked while one is in flight joins it", async () => {
  const { http, data, listen } = setup();
  let answer!: () => void;
  http.handler = () => new Promise<Reply>((resolve) => (answer = () => resolve(ok(DASHBOARD))));
  listen();
  await settle();
  const joined = data.refreshAll();
  await settle();
  assert.equal(http.requests.length, 1);
  answer();
  await joined;
  assert.equal(http.requests.length, 1);
});

test("entries without subscribers beyond the limit are dropped, oldest first", async () => {
  const { clock, http, data } = setup({ maxEntries: 2 });
  server(http);
  const stops = [];
  for (const window of ["1h", "6h", "24h"]) {
    stops.push(data.subscribe({ window }, () => {}));
    await settle();
    await clock.advance(1);
  }
  assert.ok(data.peek({ window: "1h" }), "watched entries are kept");
  stops[0]();
  stops[1]();
  data.subscribe({ window: "7d" }, () => {});
  await settle();
  assert.equal(data.peek({ window: "1h" }), undefined);
  assert.equal(data.peek({ window: "6h" }), undefined);
  assert.ok(data.peek({ window: "24h" }));
  assert.ok(data.peek({ window: "7d" }));
});

test("dispose stops every timer and the visibility watch", async () => {
  const { clock, http, visibility, data, listen } = setup();
  server(http);
  listen();
  await settle();
  assert.equal(clock.pending(), 1);
  assert.equal(visibility.watchers(), 1);
  data.dispose();
  assert.equal(clock.pending(), 0);
  assert.equal(visibility.watchers(), 0);
  await clock.advance(60_000);
  assert.equal(http.requests.length, 1);
});

test("a 304 without cached data is an error, not an empty dashboard", async () => {
  const { http, listen, last } = setup();
  http.handler = () => notModified();
  listen();
  await settle();
  assert.equal(last().error?.status, 304);
  assert.equal(last().data, undefined);
});

test("an ETag is kept only with its body: a part answered in a refresh that failed is asked again in full", async () => {
  const { clock, http, listen, last } = setup();
  let round = 1;
  http.handler = (request) => {
    const path = request.url.split("?")[0];
    if (path === "/api/dashboard/batch") {
      return { status: 404 };
    }
    if (path === "/api/vm-metrics" && round === 2) {
      return { status: 500 };
    }
    const inm = request.init.headers["If-None-Match"];
    const etag = `"${path}-${round}"`;
    return inm === etag ? notModified(etag) : ok({ ...DASHBOARD.vm_metrics, round }, etag);
  };
  listen();
  await settle();
  assert.equal(last().error, undefined);
  round = 2;
  await clock.advance(5000);
  assert.equal(last().error?.status, 500);
  const overallRequests = () => http.to("/api/host-overall-metrics");
  round = 3;
  await clock.advance(1000);
  const third = overallRequests()[2];
  assert.equal(third.init.headers["If-None-Match"], '"/api/host-overall-metrics-1"', "the ETag of the body kept");
  assert.equal(last().error, undefined);
  assert.equal((last().data?.host_overall_metrics as unknown as { round: number }).round, 3);
});

test("get: one request for identical calls, the answer from memory while fresh, then If-None-Match", async () => {
  const { http, data, clock } = setup();
  let version = 1;
  http.handler = () => ok({ rows: [version] }, `"v${version}"`, 5, 1);
  const [a, b] = await Promise.all([
    data.get("/api/process-search", { q: "java", window: "15m", host: undefined }),
    data.get("/api/process-search", { q: "java", window: "15m" }),
  ]);
  assert.equal(http.requests.length, 1);
  assert.equal(http.requests[0].url, "/api/process-search?q=java&window=15m");
  assert.equal(a, b);
  // Fresh for max-age minus Age: 4 s.
  await clock.advance(3_999);
  assert.equal(await data.get("/api/process-search", { q: "java", window: "15m" }), a);
  assert.equal(http.requests.length, 1);
  await clock.advance(1);
  http.handler = () => notModified('"v1"', 5, 0);
  assert.equal(await data.get("/api/process-search", { q: "java", window: "15m" }), a);
  assert.equal(http.requests[1].init.headers["If-None-Match"], '"v1"');
  // A 304 renews the freshness.
  await clock.advance(4_000);
  assert.equal(await data.get("/api/process-search", { q: "java", window: "15m" }), a);
  assert.equal(http.requests.length, 2);
  await clock.advance(1_000);
  version = 2;
  http.handler = () => ok({ rows: [version] }, '"v2"');
  assert.deepEqual(await data.get("/api/process-search", { q: "java", window: "15m" }), { rows: [2] });
});

test("get: failures throw what went wrong; 401 asks for a token; answers beyond the limit are dropped", async () => {
  const { http, data } = setup({ maxAnswers: 2 }, "secret");
  const asked: DataError[] = [];
  data.onAuthRequired((error) => asked.push(error));
  http.handler = () => ({ status: 400, body: { error: "q: give 1 to 200 characters", field: "q" } });
  await assert.rejects(data.get("/api/process-search", { q: "" }), (error: unknown) => {
    assert.ok(error instanceof RefreshFailure);
    assert.deepEqual(error.detail, { kind: "http", status: 400, message: "q: give 1 to 200 characters" });
    return true;
  });
  assert.equal(http.requests[0].init.headers["Authorization"], "Bearer secret");
  http.handler = () => ({ status: 401, body: {} });
  await assert.rejects(data.get("/api/pod-processes", { pod: "a" }));
  assert.equal(asked[0]?.kind, "unauthenticated");
  http.handler = () => {
    throw new Error("connection refused");
  };
  await assert.rejects(data.get("/api/pod-processes", { pod: "a" }), (error: unknown) => (error as RefreshFailure).detail.kind === "network");
  // Kept answers: at most two; without max-age an answer is not fresh, but kept for If-None-Match.
  http.handler = (request) => ({ status: 200, headers: { ETag: `"${request.url}"` }, body: request.url });
  for (const q of ["a", "b", "c"]) {
    await data.get("/s", { q });
  }
  const before = http.requests.length;
  await data.get("/s", { q: "a" });
  assert.equal(http.requests[before].init.headers["If-None-Match"], undefined, "dropped: asked in full");
  await data.get("/s", { q: "c" });
  assert.equal(http.requests[before + 1].init.headers["If-None-Match"], '"/s?q=c"');
  data.dispose();
});

test("debounce runs the last call once the calls pause", async () => {
  const { data, clock } = setup();
  const ran: string[] = [];
  const search = data.debounce<string>(300, (value) => ran.push(value));
  for (const value of ["j", "ja", "jav", "java"]) {
    search.call(value);
    await clock.advance(50);
  }
  assert.deepEqual(ran, []);
  await clock.advance(300);
  assert.deepEqual(ran, ["java"]);
  search.call("x");
  search.cancel();
  search.cancel();
  await clock.advance(1_000);
  assert.deepEqual(ran, ["java"]);
  assert.equal(queryString({ a: "x y", b: undefined, c: "", d: 3 }), "a=x%20y&d=3");
});

test("the baseline asks the four single routes every interval, without If-None-Match or the HTTP cache", async () => {
  const { http, clock, listen, last } = setup({ baseline: true, defaultIntervalMs: 5_000 });
  server(http);
  listen({ window: "15m" });
  await clock.advance(0);
  assert.equal(http.to("/api/dashboard/batch").length, 0);
  assert.equal(http.requests.length, 4);
  assert.ok(http.requests.every((request) => request.init.cache === "no-store" && request.init.headers["If-None-Match"] === undefined));
  assert.equal(last().fallback, false);
  // The server says fresh for 5 s; the baseline asks every 5 s regardless, in full.
  await clock.advance(5_000);
  assert.equal(http.requests.length, 8);
  assert.ok(http.requests.every((request) => request.init.headers["If-None-Match"] === undefined));
});

/** A bucket of a process's history. */
function bucket(timestamp: string, pid: number, startTime: string, cpu: number, memory: number, samples = 1, containerId = "cid-1"): ProcessHistoryRow {
  return {
    timestamp,
    host: "node-1",
    container_id: containerId,
    pid,
    start_time: startTime,
    avg_cpu: cpu,
    max_cpu: cpu + 10,
    avg_memory_mb: memory,
    max_memory_mb: memory,
    avg_cpu_limit_percent: null,
    avg_cpu_request_percent: null,
    avg_memory_limit_percent: null,
    avg_memory_request_percent: null,
    samples,
  };
}

test("a history has one point per bucket and a restart where a new incarnation begins", () => {
  const first = "2026-01-01T00:00:00Z";
  const second = "2026-01-01T00:05:00Z";
  const third = "2026-01-01T00:09:00Z";
  const series = historySeries([
    bucket("2026-01-01T00:01:00Z", 100, first, 10, 200),
    bucket("2026-01-01T00:02:00Z", 100, first, 20, 210, 3),
    // The restart falls inside a bucket: the two incarnations' averages are weighted.
    bucket("2026-01-01T00:05:00Z", 100, first, 30, 220, 1),
    bucket("2026-01-01T00:05:00Z", 7, second, 60, 100, 2),
    bucket("2026-01-01T00:06:00Z", 7, second, 50, 110),
    // The container restarts as well.
    bucket("2026-01-01T00:09:00Z", 8, third, 5, 90, 1, "cid-2"),
  ]);
  const seconds = (iso: string) => Date.parse(iso) / 1000;
  assert.deepEqual(series.times, ["00:01", "00:02", "00:05", "00:06", "00:09"].map((t) => seconds(`2026-01-01T${t}:00Z`)));
  assert.deepEqual(series.avgCpu, [10, 20, 50, 50, 5]);
  assert.deepEqual(series.maxCpu, [20, 30, 70, 60, 15]);
  assert.deepEqual(series.avgMemory, [200, 210, (220 + 200) / 3, 110, 90]);
  assert.deepEqual(
    series.incarnations.map((i) => [i.pid, i.startTime, i.containerId, i.samples, i.firstSeen, i.lastSeen]),
    [
      [100, first, "cid-1", 5, seconds("2026-01-01T00:01:00Z"), seconds("2026-01-01T00:05:00Z")],
      [7, second, "cid-1", 3, seconds("2026-01-01T00:05:00Z"), seconds("2026-01-01T00:06:00Z")],
      [8, third, "cid-2", 1, seconds(third), seconds(third)],
    ],
  );
  assert.deepEqual(series.restarts, [
    { at: seconds(second), pid: 7, startTime: second, containerRestarted: false },
    { at: seconds(third), pid: 8, startTime: third, containerRestarted: true },
  ]);
  assert.deepEqual(historySeries([]), { times: [], avgCpu: [], maxCpu: [], avgMemory: [], incarnations: [], restarts: [] });
});

test("the nodes' history is one column per bucket and one line per node, null where a node has no sample", () => {
  const row = (timestamp: string, host: string, cpu: number, rx: number | null): HostHistoryRow => ({
    timestamp,
    host,
    avg_cpu: cpu,
    max_cpu: cpu + 10,
    avg_memory_mb: cpu * 100,
    max_memory_mb: cpu * 100 + 1,
    avg_load_1: cpu / 10,
    network_rx_bytes_per_second: rx,
    network_tx_bytes_per_second: rx === null ? null : rx / 2,
    disk_used_bytes: null,
    samples: 1,
  });
  // As the API orders them: by host, then time; node-1 has no sample in the middle bucket.
  const series = hostSeries([
    row("2026-01-01T00:00:00Z", "node-2", 5, null),
    row("2026-01-01T00:00:10Z", "node-2", 6, 600),
    row("2026-01-01T00:00:20Z", "node-2", 7, 700),
    row("2026-01-01T00:00:00Z", "node-1", 1, null),
    row("2026-01-01T00:00:20Z", "node-1", 3, 300),
  ]);
  const start = Date.parse("2026-01-01T00:00:00Z") / 1000;
  assert.deepEqual(series.times, [start, start + 10, start + 20]);
  assert.deepEqual(series.hosts, ["node-1", "node-2"]);
  assert.deepEqual(series.avgCpu, [[1, null, 3], [5, 6, 7]]);
  assert.deepEqual(series.maxCpu, [[11, null, 13], [15, 16, 17]]);
  assert.deepEqual(series.avgMemory, [[100, null, 300], [500, 600, 700]]);
  assert.deepEqual(series.avgLoad, [[0.1, null, 0.3], [0.5, 0.6, 0.7]]);
  assert.deepEqual(series.networkIn, [[null, null, 300], [null, 600, 700]]);
  assert.deepEqual(series.networkOut, [[null, null, 150], [null, 300, 350]]);
  assert.equal(series.hasNetwork, true);
  // Hourly buckets carry no network.
  assert.equal(hostSeries([row("2026-01-01T00:00:00Z", "node-1", 1, null)]).hasNetwork, false);
  assert.deepEqual(hostSeries([]).times, []);
});

test("follow asks when the answer stops being fresh, tells only of changes, and waits while hidden", async () => {
  const { clock, http, data, visibility } = setup({ minIntervalMs: 1_000 });
  let version = 1;
  http.handler = (request) =>
    request.init.headers["If-None-Match"] === `"v${version}"` ? notModified(`"v${version}"`, 5, 1) : ok({ rows: [version] }, `"v${version}"`, 5, 1);
  const heard: Followed<{ rows: number[] }>[] = [];
  const stop = data.follow<{ rows: number[] }>("/api/host-history", { window: "15m" }, (update) => heard.push(update));
  await settle();
  assert.equal(http.requests[0].url, "/api/host-history?window=15m");
  assert.deepEqual(heard, [{ answer: { rows: [1] } }]);
  // Fresh for max-age minus Age (4 s), asked again one max-age after it was asked (5 s),
  // with If-None-Match; a 304 is no news.
  await clock.advance(4_999);
  assert.equal(http.requests.length, 1);
  await clock.advance(1);
  assert.equal(http.requests.length, 2);
  assert.equal(http.requests[1].init.headers["If-None-Match"], '"v1"');
  assert.equal(heard.length, 1);
  version = 2;
  await clock.advance(5_000);
  assert.equal(http.requests.length, 3);
  assert.deepEqual(heard[1], { answer: { rows: [2] } });
  // Hidden: nothing; shown again once due: at once.
  visibility.set(true);
  await clock.advance(20_000);
  assert.equal(http.requests.length, 3);
  assert.equal(clock.pending(), 0);
  visibility.set(false);
  await settle();
  assert.equal(http.requests.length, 4);
  // An answer without freshness is asked again after minIntervalMs.
  http.handler = () => ({ status: 200, body: { rows: [3] } });
  await clock.advance(5_000);
  assert.equal(http.requests.length, 5);
  await clock.advance(1_000);
  assert.equal(http.requests.length, 6);
  stop();
  await clock.advance(60_000);
  assert.equal(http.requests.length, 6, "stopped");
  assert.equal(visibility.watchers(), 1, "only the data layer's own watch is left");
});

test("follow tells of failures, retries with backoff, and waits for a token after a 401", async () => {
  const { clock, http, data } = setup({ retryBaseMs: 1_000, retryMaxMs: 4_000 }, "old");
  http.handler = () => ({ status: 503, body: { code: "database_unavailable", error: "the database is unavailable" } });
  const heard: Followed<unknown>[] = [];
  data.follow("/api/host-history", { window: "1h" }, (update) => heard.push(update));
  await settle();
  assert.deepEqual(heard, [{ error: { kind: "http", status: 503, message: "the database is unavailable" } }]);
  // Retried after 1 s, then 2 s, 4 s, 4 s.
  await clock.advance(1_000);
  assert.equal(http.requests.length, 2);
  await clock.advance(2_000);
  assert.equal(http.requests.length, 3);
  await clock.advance(4_000);
  await clock.advance(4_000);
  assert.equal(http.requests.length, 5);
  // The same answer as before a failure is told again: the failure is over.
  http.handler = () => ok({ rows: [] }, '"e"', 5);
  await clock.advance(4_000);
  assert.deepEqual(heard.at(-1), { answer: { rows: [] } });
  http.handler = () => ({ status: 503, body: {} });
  await clock.advance(5_000);
  http.handler = (request) => (request.init.headers["If-None-Match"] === '"e"' ? notModified('"e"') : ok({ rows: [] }, '"e"'));
  await clock.advance(1_000);
  assert.deepEqual(heard.slice(-2).map((update) => update.error === undefined), [false, true]);
  // A 401: no more requests until a token is given.
  http.handler = (request) =>
    request.init.headers["Authorization"] === "Bearer new" ? ok({ rows: [1] }, '"f"') : { status: 401, body: { error: "a bearer token is needed" } };
  await clock.advance(5_000);
  const refused = http.requests.length;
  assert.equal(heard.at(-1)?.error?.kind, "unauthenticated");
  await clock.advance(60_000);
  assert.equal(http.requests.length, refused);
  await data.setToken("new");
  await settle();
  assert.equal(http.requests.length, refused + 1);
  assert.deepEqual(heard.at(-1), { answer: { rows: [1] } });
  data.dispose();
  assert.equal(clock.pending(), 0, "dispose stops the follow");
});
