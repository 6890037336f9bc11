// The dashboard's client data layer: what the page asks the query service, when, and what
// it keeps. No DOM and no framework: `fetch`, the clock and the page's visibility are given
// to it, so that the tests drive it with fakes.
//
// Behaviour (the performance plan's Task 1, measured by the tests in test/data.test.ts):
// - One entry per set of filters (its key). Every widget that subscribes with the same filters
//   shares the entry; while a request for it is in flight, nobody starts another.
// - One `POST /api/dashboard/batch` per refresh of an entry. The answer's ETag is sent back
//   in `If-None-Match`; a 304 keeps the cached body (and the same object, so the page need
//   not draw it again).
// - Stale-while-revalidate: a subscriber gets the cached answer at once, refreshed behind it
//   when it is due.
// - The next refresh is due when the server's answer stops being fresh (`max-age` minus
//   `Age` from `Cache-Control`/`Age`), and never sooner than one `max-age` after the last
//   request began: the server refreshes an answer that is being read a little before it
//   turns stale, so polling at each expiry would ask once per server refresh (every nine
//   tenths of its TTL); this way a tab asks at most once per TTL, and still gets an answer
//   younger than the TTL. Never sooner than `minIntervalMs` either.
// - Nothing is requested while the page is hidden; when it is shown again, every entry on
//   screen whose refresh is due is refreshed at once.
// - A failed refresh keeps the last answer, marks it stale, exposes the error, and is
//   retried with exponential backoff. So is an answer that arrives already stale (`Age` at
//   least `max-age`: the server did not refresh it in time); it is shown, and from the
//   second in a row marked `outdated` (the server cannot refresh it; its database is likely
//   away). One alone is no news: a slow refresh on the server gives one.
// - The plan's rollback rule: when the batch route fails (404 or 405: an older query service;
//   5xx or a network error), the same refresh asks the four single GET endpoints instead.
//   After a 404 or 405 the batch route is not asked again for `batchProbeMs`.
// - With a token, every request carries `Authorization: Bearer <token>`; a 401 or 403 stops
//   the polling and asks for a (different) token, which restarts it.
// - `get` asks a GET route once (the process search, a pod's processes, the nodes' history):
//   an answer still fresh is given from memory without a request, identical calls in flight
//   share one, and a kept answer is asked again with `If-None-Match` (a 304 gives the kept
//   body, the same object). `follow` asks it again on the dashboard's schedule (when the
//   answer stops being fresh, nothing while hidden, backoff after failures, stopped by a
//   401 or 403 until a token is given), telling its listener only of a changed answer.
//   `debounce` runs the last of a burst of calls (typing) once the calls pause.

/** The filters of one dashboard request (see the query service's openapi.yaml). */
export interface Filters {
  /** The time window ending now, e.g. `15m`, `1h`, `7d`. */
  window?: string;
  /** Rows of the limited parts. */
  limit?: number;
  /** What top processes are ranked by. */
  metric?: "cpu" | "memory";
  /** Only this host (node). */
  host?: string;
  /** Only pods in this namespace. */
  namespace?: string;
}

/** The four parts of the dashboard, as the batch answer names them. */
export const PARTS = [
  "host_process_metrics",
  "host_overall_metrics",
  "top_processes",
  "vm_metrics",
] as const;

/** The name of one part. */
export type PartName = (typeof PARTS)[number];

/** Where a part's rows came from. */
export type Source = "raw" | "hourly_from_raw" | "hourly_aggregate";

/** One part of the answer: its rows and how they were read. */
export interface Part<Row> {
  source: Source;
  window_seconds: number;
  rows: Row[];
}

/** The latest sample of one host process. */
export interface HostProcessRow {
  timestamp: string;
  host: string;
  pid: number;
  process_name: string;
  command_line: string | null;
  username: string | null;
  cpu_usage_percent: number;
  cpu_peak_percent: number;
  memory_usage_mb: number;
}

/** One node over the window. */
export interface HostOverallRow {
  host: string;
  last_seen: string;
  avg_cpu: number;
  max_cpu: number;
  avg_memory_mb: number;
  max_memory_mb: number;
  avg_load_1: number;
  samples: number;
  /** Bytes per second received at the node's latest sample; null without two recent samples. */
  network_rx_bytes_per_second: number | null;
  /** Bytes per second sent at the node's latest sample. */
  network_tx_bytes_per_second: number | null;
  /** Disk space in use at the node's latest sample. */
  disk_used_bytes: number | null;
  /** Disk space at the node's latest sample. */
  disk_total_bytes: number | null;
}

/** One process name on one host, over the window. */
export interface TopProcessRow {
  host: string;
  process_name: string;
  avg_cpu: number;
  max_cpu: number;
  avg_memory_mb: number;
  max_memory_mb: number;
  samples: number;
}

/** One pod at its latest sample. */
export interface PodRow {
  namespace: string;
  pod: string;
  host: string;
  last_seen: string;
  processes: number;
  cpu_usage_percent: number;
  memory_usage_mb: number;
}

/** A process a search found, at its latest sample (`GET /api/process-search`). */
export interface ProcessMatchRow {
  timestamp: string;
  host: string;
  pid: number;
  start_time: string;
  process_name: string;
  command_line: string | null;
  username: string | null;
  cpu_usage_percent: number;
  cpu_peak_percent: number;
  memory_usage_mb: number;
}

/** One process of a pod over the window, with its container (`GET /api/pod-processes`). */
export interface PodProcessRow {
  container_id: string;
  container_name: string | null;
  host: string;
  pid: number;
  start_time: string;
  process_name: string;
  command_line: string | null;
  avg_cpu: number;
  max_cpu: number;
  /** Average CPU as a percentage of the container's CPU limit; null without a limit. */
  avg_cpu_limit_percent: number | null;
  /** Average CPU as a percentage of the container's CPU request; null without a request. */
  avg_cpu_request_percent: number | null;
  /** Average memory as a percentage of the container's memory limit; null without a limit. */
  avg_memory_limit_percent: number | null;
  /** Average memory as a percentage of the container's memory request; null without one. */
  avg_memory_request_percent: number | null;
  avg_memory_mb: number;
  max_memory_mb: number;
  last_seen: string;
  samples: number;
}

/**
 * One incarnation of a followed process over one bucket of its history
 * (`GET /api/process-history`).
 */
export interface ProcessHistoryRow {
  /** The bucket's start. */
  timestamp: string;
  host: string;
  container_id: string;
  pid: number;
  start_time: string;
  avg_cpu: number;
  max_cpu: number;
  avg_memory_mb: number;
  max_memory_mb: number;
  avg_cpu_limit_percent: number | null;
  avg_cpu_request_percent: number | null;
  avg_memory_limit_percent: number | null;
  avg_memory_request_percent: number | null;
  samples: number;
}

/** One incarnation of a followed process: a pid and start time in one container. */
export interface Incarnation {
  host: string;
  containerId: string;
  pid: number;
  startTime: string;
  /** Its first and last bucket (seconds since the epoch). */
  firstSeen: number;
  lastSeen: number;
  samples: number;
}

/** Where the followed process restarted: the incarnation that began, in which container. */
export interface Restart {
  /** The new incarnation's first bucket (seconds since the epoch). */
  at: number;
  pid: number;
  startTime: string;
  /** The container restarted too (a new container id). */
  containerRestarted: boolean;
}

/** A process's history as chart series, one point per bucket, and its restarts. */
export interface HistorySeries {
  /** Bucket starts, seconds since the epoch, ascending. */
  times: number[];
  /** CPU average per bucket, percent of one core (incarnations sharing a bucket weighted by samples). */
  avgCpu: number[];
  /** Highest CPU peak per bucket. */
  maxCpu: number[];
  /** Memory average per bucket, MB. */
  avgMemory: number[];
  /** The incarnations, in the order they first appear. */
  incarnations: Incarnation[];
  /** Every incarnation after the first. */
  restarts: Restart[];
}

/**
 * The chart series of a process's history (rows as the API orders them: by bucket, then
 * start time): one point per bucket, and a restart wherever an incarnation begins after
 * the first.
 */
export function historySeries(rows: ProcessHistoryRow[]): HistorySeries {
  const series: HistorySeries = { times: [], avgCpu: [], maxCpu: [], avgMemory: [], incarnations: [], restarts: [] };
  const byKey = new Map<string, Incarnation>();
  let samples = 0;
  for (const row of rows) {
    const at = Date.parse(row.timestamp) / 1000;
    const last = series.times.length - 1;
    if (last < 0 || series.times[last] !== at) {
      series.times.push(at);
      series.avgCpu.push(row.avg_cpu);
      series.maxCpu.push(row.max_cpu);
      series.avgMemory.push(row.avg_memory_mb);
      samples = row.samples;
    } else {
      // Two incarnations in one bucket: averages weighted by their samples.
      const total = samples + row.samples;
      series.avgCpu[last] = (series.avgCpu[last] * samples + row.avg_cpu * row.samples) / total;
      series.avgMemory[last] = (series.avgMemory[last] * samples + row.avg_memory_mb * row.samples) / total;
      series.maxCpu[last] = Math.max(series.maxCpu[last], row.max_cpu);
      samples = total;
    }
    const key = `${row.host}|${row.container_id}|${row.pid}|${row.start_time}`;
    const known = byKey.get(key);
    if (known) {
      known.lastSeen = at;
      known.samples += row.samples;
      continue;
    }
    const incarnation: Incarnation = {
      host: row.host,
      containerId: row.container_id,
      pid: row.pid,
      startTime: row.start_time,
      firstSeen: at,
      lastSeen: at,
      samples: row.samples,
    };
    const previous = series.incarnations[series.incarnations.length - 1];
    if (previous) {
      series.restarts.push({ at, pid: row.pid, startTime: row.start_time, containerRestarted: previous.containerId !== row.container_id });
    }
    byKey.set(key, incarnation);
    series.incarnations.push(incarnation);
  }
  return series;
}

/** One node over one bucket of the window (`GET /api/host-history`). */
export interface HostHistoryRow {
  /** The bucket's start. */
  timestamp: string;
  host: string;
  avg_cpu: number;
  max_cpu: number;
  avg_memory_mb: number;
  max_memory_mb: number;
  avg_load_1: number;
  /** Null from hourly buckets (the rollup keeps no network) and without a previous sample. */
  network_rx_bytes_per_second: number | null;
  network_tx_bytes_per_second: number | null;
  /** Null from hourly buckets. */
  disk_used_bytes: number | null;
  samples: number;
}

/** The nodes' history: its rows and the buckets' length. */
export interface HostHistory extends Part<HostHistoryRow> {
  bucket_seconds: number;
}

/** The nodes' history as chart series: one column per bucket, one line per node. */
export interface HostSeries {
  /** Bucket starts, seconds since the epoch, ascending. */
  times: number[];
  /** The nodes, sorted. */
  hosts: string[];
  /** Per node (in `hosts`' order), its value per bucket; null where it has no sample. */
  avgCpu: (number | null)[][];
  maxCpu: (number | null)[][];
  avgMemory: (number | null)[][];
  avgLoad: (number | null)[][];
  networkIn: (number | null)[][];
  networkOut: (number | null)[][];
  /** Some bucket has network rates (hourly buckets have none). */
  hasNetwork: boolean;
}

/** The chart series of the nodes' history: every node's values aligned on every bucket. */
export function hostSeries(rows: HostHistoryRow[]): HostSeries {
  const times = [...new Set(rows.map((row) => Date.parse(row.timestamp) / 1000))].sort((a, b) => a - b);
  const hosts = [...new Set(rows.map((row) => row.host))].sort();
  const column = new Map(times.map((at, i) => [at, i]));
  const line = new Map(hosts.map((host, i) => [host, i]));
  const empty = () => hosts.map(() => times.map((): number | null => null));
  const series: HostSeries = {
    times,
    hosts,
    avgCpu: empty(),
    maxCpu: empty(),
    avgMemory: empty(),
    avgLoad: empty(),
    networkIn: empty(),
    networkOut: empty(),
    hasNetwork: false,
  };
  for (const row of rows) {
    const i = line.get(row.host) as number;
    const j = column.get(Date.parse(row.timestamp) / 1000) as number;
    series.avgCpu[i][j] = row.avg_cpu;
    series.maxCpu[i][j] = row.max_cpu;
    series.avgMemory[i][j] = row.avg_memory_mb;
    series.avgLoad[i][j] = row.avg_load_1;
    series.networkIn[i][j] = row.network_rx_bytes_per_second;
    series.networkOut[i][j] = row.network_tx_bytes_per_second;
    series.hasNetwork ||= row.network_rx_bytes_per_second !== null || row.network_tx_bytes_per_second !== null;
  }
  return series;
}

/** The whole dashboard, as the batch endpoint answers it. */
export interface Dashboard {
  host_process_metrics: Part<HostProcessRow>;
  host_overall_metrics: Part<HostOverallRow>;
  top_processes: Part<TopProcessRow>;
  vm_metrics: Part<PodRow>;
}

/** What went wrong with the last refresh. */
export interface DataError {
  /** `unauthenticated` (401), `forbidden` (403), `http` (another status) or `network`. */
  kind: "unauthenticated" | "forbidden" | "http" | "network";
  /** The HTTP status, when there was an answer. */
  status?: number;
  /** A short message for a person. */
  message: string;
}

/** What a subscriber sees of one entry. */
export interface EntryState {
  /** The last answer (possibly only some parts, after a partial fallback), kept through errors. */
  data?: Partial<Dashboard>;
  /** The last refresh failed; `data` is what was known before. */
  error?: DataError;
  /** `data` is older than the server said it stays fresh (or the last refresh failed). */
  stale: boolean;
  /**
   * The server's last answers (two or more in a row, or one after a failed refresh) were
   * already stale when they came (`Age` at least `max-age`): it cannot refresh them. Unlike
   * `stale`, this stays set while the next refresh is in flight.
   */
  outdated: boolean;
  /** A request for this entry is in flight. */
  fetching: boolean;
  /** When `data` was last confirmed by the server (clock milliseconds). */
  updatedAt?: number;
  /** The last answer came from the single endpoints, not the batch. */
  fallback: boolean;
}

/** The parts of an HTTP answer the data layer reads (a subset of `Response`). */
export interface HttpResponse {
  status: number;
  headers: { get(name: string): string | null };
  json(): Promise<unknown>;
}

/** The request options the data layer sets (a subset of `RequestInit`). */
export interface HttpRequest {
  method: "GET" | "POST";
  headers: Record<string, string>;
  body?: string;
  /** `no-store` in the baseline mode: the browser's HTTP cache is not used either. */
  cache?: "no-store";
}

/** `fetch`, or a fake of it. */
export type Fetch = (url: string, init: HttpRequest) => Promise<HttpResponse>;

/** The clock and its timers: the window's, or a fake. */
export interface Clock {
  now(): number;
  setTimeout(run: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

/** Whether the page is hidden, and news of when that changes. */
export interface Visibility {
  hidden(): boolean;
  /** Calls `listener` on every change; returns what stops it. */
  onChange(listener: () => void): () => void;
}

/** Where the bearer token is kept (the page uses sessionStorage). */
export interface TokenStore {
  get(): string | null;
  set(token: string | null): void;
}

/** What the data layer needs from its surroundings. */
export interface Dependencies {
  fetch: Fetch;
  clock: Clock;
  visibility: Visibility;
  tokens: TokenStore;
  /** The base URL of the API; empty for the page's own origin. */
  baseUrl?: string;
}

/** Tuning; the defaults suit the page. */
export interface Options {
  /** Interval when the server sends no freshness (ms). */
  defaultIntervalMs: number;
  /** Shortest interval between refreshes of one entry (ms). */
  minIntervalMs: number;
  /** First retry delay after a failure (ms); doubled on each further failure. */
  retryBaseMs: number;
  /** Longest retry delay (ms). */
  retryMaxMs: number;
  /** How long the batch route is not asked again after a 404 or 405 (ms). */
  batchProbeMs: number;
  /** Most entries kept; those without subscribers are dropped first, oldest first. */
  maxEntries: number;
  /** Most answers of `get` kept, the least recently asked dropped first. */
  maxAnswers: number;
  /**
   * The benchmark's baseline, the performance plan's approach: the four single routes on
   * every refresh (no batch), no `If-None-Match` and no HTTP cache, a refresh every
   * `defaultIntervalMs` whatever the server's freshness.
   */
  baseline: boolean;
}

/** The defaults of [`Options`]. */
export const DEFAULT_OPTIONS: Options = {
  defaultIntervalMs: 5_000,
  minIntervalMs: 1_000,
  retryBaseMs: 1_000,
  retryMaxMs: 30_000,
  batchProbeMs: 300_000,
  maxEntries: 20,
  maxAnswers: 50,
  baseline: false,
};

/** Called with an entry's state whenever it changes. */
export type Listener = (state: EntryState) => void;

/** The normalised key of a set of filters: only the fields set, in a fixed order. */
export function filtersKey(filters: Filters): string {
  const fields: [string, string | number | undefined][] = [
    ["window", filters.window],
    ["limit", filters.limit],
    ["metric", filters.metric],
    ["host", filters.host || undefined],
    ["namespace", filters.namespace || undefined],
  ];
  return fields
    .filter(([, value]) => value !== undefined)
    .map(([name, value]) => `${name}=${encodeURIComponent(String(value))}`)
    .join("&");
}

/**
 * How long an answer stays fresh after it arrived, in milliseconds: `max-age` minus `Age`
 * (RFC 9111), or undefined when `Cache-Control` has no `max-age`.
 */
export function freshForMs(cacheControl: string | null, age: string | null): number | undefined {
  const lifetime = maxAgeMs(cacheControl);
  if (lifetime === undefined) {
    return undefined;
  }
  const ageSeconds = Number.parseInt(age ?? "0", 10);
  return Math.max(0, lifetime - (Number.isFinite(ageSeconds) ? ageSeconds : 0) * 1000);
}

/** How long a response stays fresh ([`freshForMs`]) and its whole lifetime ([`maxAgeMs`]). */
function freshness(response: HttpResponse): { freshFor: number | undefined; lifetime: number | undefined } {
  const cacheControl = response.headers.get("cache-control");
  return { freshFor: freshForMs(cacheControl, response.headers.get("age")), lifetime: maxAgeMs(cacheControl) };
}

/** An answer's whole freshness lifetime, `max-age`, in milliseconds; undefined without one. */
export function maxAgeMs(cacheControl: string | null): number | undefined {
  const maxAge = /(?:^|[,\s])max-age=(\d+)/i.exec(cacheControl ?? "");
  return maxAge ? Number(maxAge[1]) * 1000 : undefined;
}

const SINGLE_PATHS: Record<PartName, string> = {
  host_process_metrics: "/api/host-process-metrics",
  host_overall_metrics: "/api/host-overall-metrics",
  top_processes: "/api/dashboard/top-processes",
  vm_metrics: "/api/vm-metrics",
};

/** A request that failed, with what the state (or the caller of `get`) should say. */
export class RefreshFailure extends Error {
  constructor(readonly detail: DataError) {
    super(detail.message);
  }
}

/** What one refresh learnt. */
interface Refreshed {
  data: Partial<Dashboard>;
  freshForMs: number | undefined;
  /** The answer's `max-age` (the least of the parts'), in milliseconds. */
  maxAgeMs: number | undefined;
  fallback: boolean;
}

interface Entry {
  key: string;
  filters: Filters;
  listeners: Set<Listener>;
  state: EntryState;
  batchEtag?: string;
  partEtags: Partial<Record<PartName, string>>;
  inFlight?: Promise<void>;
  timer?: unknown;
  /** When the next refresh is due (clock ms). */
  dueAt: number;
  /** When the last refresh began (clock ms). */
  requestedAt: number;
  /** When `data` stops being fresh (clock ms). */
  freshUntil: number;
  failures: number;
  lastUsed: number;
}

/** One answer kept by `get`. */
interface Kept {
  body: unknown;
  etag?: string;
  /** When it stops being fresh (clock ms). */
  freshUntil: number;
  /** Its `max-age`, in milliseconds (0 without one). */
  lifetime: number;
}

/** A call that runs once the calls pause; `cancel` drops the one waiting. */
export interface Debounced<T> {
  call(value: T): void;
  cancel(): void;
}

/** What a `follow` listener is told: a changed answer, or why asking failed. */
export type Followed<T> = { answer: T; error?: undefined } | { answer?: undefined; error: DataError };

/** The query string of `params`: only the fields set, in the order given. */
export function queryString(params: Record<string, string | number | undefined>): string {
  return Object.entries(params)
    .filter(([, value]) => value !== undefined && value !== "")
    .map(([name, value]) => `${name}=${encodeURIComponent(String(value))}`)
    .join("&");
}

/** The client data layer: a cache of dashboard answers shared by the page's widgets. */
export class DashboardData {
  private readonly entries = new Map<string, Entry>();
  private readonly answers = new Map<string, Kept>();
  private readonly asking = new Map<string, Promise<unknown>>();
  private readonly options: Options;
  private readonly stopWatchingVisibility: () => void;
  private readonly authListeners = new Set<(error: DataError) => void>();
  private batchMissingUntil = -Infinity;
  private authBlocked = false;
  /** Each `follow` running: what restarts it (a token was given) and what stops it. */
  private readonly followers = new Set<{ restart(): void; stop(): void }>();

  constructor(
    private readonly deps: Dependencies,
    options: Partial<Options> = {},
  ) {
    this.options = { ...DEFAULT_OPTIONS, ...options };
    this.stopWatchingVisibility = deps.visibility.onChange(() => this.visibilityChanged());
  }

  /**
   * Subscribes `listener` to the answer for `filters`: it is called at once when an answer
   * is cached, and on every change. Returns what unsubscribes it; an entry without
   * subscribers is no longer refreshed.
   */
  subscribe(filters: Filters, listener: Listener): () => void {
    const entry = this.entry(filters);
    entry.listeners.add(listener);
    entry.lastUsed = this.deps.clock.now();
    if (entry.state.data || entry.state.error) {
      listener(this.snapshot(entry));
    }
    this.ensureFresh(entry);
    return () => {
      entry.listeners.delete(listener);
      if (entry.listeners.size === 0) {
        this.cancelTimer(entry);
      }
    };
  }

  /** The current state for `filters`, if anything is cached. */
  peek(filters: Filters): EntryState | undefined {
    const entry = this.entries.get(filtersKey(filters));
    return entry && this.snapshot(entry);
  }

  /** Refreshes every entry on screen now (a person asked), unless already in flight. */
  refreshAll(): Promise<void> {
    const refreshes = [...this.entries.values()]
      .filter((entry) => entry.listeners.size > 0)
      .map((entry) => this.refresh(entry));
    return Promise.all(refreshes).then(() => undefined);
  }

  /** Called with the error when the API asks for a (different) token. */
  onAuthRequired(listener: (error: DataError) => void): () => void {
    this.authListeners.add(listener);
    return () => this.authListeners.delete(listener);
  }

  /** Keeps `token` (or forgets it, when null) and refreshes what is on screen with it. */
  setToken(token: string | null): Promise<void> {
    this.deps.tokens.set(token);
    this.authBlocked = false;
    for (const follower of [...this.followers]) {
      follower.restart();
    }
    return this.refreshAll();
  }

  /**
   * The answer of `GET path?params`: from memory while fresh (the server's `max-age` minus
   * `Age`), else asked (with `If-None-Match` when an answer is kept; a 304 gives it), one
   * request for identical calls in flight. Throws a `RefreshFailure`; a 401 or 403 also
   * asks for a token, as the dashboard's refreshes do.
   */
  get<T>(path: string, params: Record<string, string | number | undefined>): Promise<T> {
    const url = this.url(path, params);
    const kept = this.answers.get(url);
    if (kept && this.deps.clock.now() < kept.freshUntil) {
      this.answers.delete(url);
      this.answers.set(url, kept);
      return Promise.resolve(kept.body as T);
    }
    const asking = this.asking.get(url);
    if (asking) {
      return asking as Promise<T>;
    }
    const request = this.ask(url, kept).finally(() => this.asking.delete(url));
    this.asking.set(url, request);
    return request as Promise<T>;
  }

  /**
   * Follows the answer of `GET path?params` (through `get`) on the dashboard's schedule:
   * asked at once, then again when it stops being fresh and one `max-age` after it was
   * asked (never sooner than `minIntervalMs`), as the dashboard's entries; nothing while the page is hidden, at once when it is shown and due;
   * a failure retried with exponential backoff, a 401 or 403 not until a token is given.
   * `listener` hears of each answer that changed (a 304 keeps the same object, which it
   * does not hear of again unless a failure came between) and of each failure. Returns what
   * stops it.
   */
  follow<T>(path: string, params: Record<string, string | number | undefined>, listener: (update: Followed<T>) => void): () => void {
    const url = this.url(path, params);
    let stopped = false;
    let asking = false;
    let blocked = false;
    let failures = 0;
    let dueAt = -Infinity;
    let timer: unknown;
    let heard: unknown;
    const cancel = () => {
      if (timer !== undefined) {
        this.deps.clock.clearTimeout(timer);
        timer = undefined;
      }
    };
    const run = () => {
      cancel();
      if (stopped || asking || blocked || this.deps.visibility.hidden()) {
        return;
      }
      const wait = dueAt - this.deps.clock.now();
      if (wait > 0) {
        timer = this.deps.clock.setTimeout(run, wait);
        return;
      }
      asking = true;
      const askedAt = this.deps.clock.now();
      this.get<T>(path, params)
        .then(
          (answer) => {
            failures = 0;
            const kept = this.answers.get(url);
            dueAt = this.nextDue(kept?.freshUntil ?? -Infinity, askedAt + (kept?.lifetime ?? 0));
            if (!stopped && answer !== heard) {
              heard = answer;
              listener({ answer });
            }
          },
          (error: unknown) => {
            const detail: DataError =
              error instanceof RefreshFailure ? error.detail : { kind: "network", message: String(error) };
            blocked = detail.kind === "unauthenticated" || detail.kind === "forbidden";
            heard = undefined;
            dueAt = this.deps.clock.now() + this.retryDelay(failures);
            failures += 1;
            if (!stopped) {
              listener({ error: detail });
            }
          },
        )
        .finally(() => {
          asking = false;
          run();
        });
    };
    const stopWatching = this.deps.visibility.onChange(run);
    const follower = {
      restart: () => {
        blocked = false;
        dueAt = -Infinity;
        run();
      },
      stop: () => {
        stopped = true;
        cancel();
        stopWatching();
        this.followers.delete(follower);
      },
    };
    this.followers.add(follower);
    run();
    return follower.stop;
  }

  /** The URL of `GET path?params`. */
  private url(path: string, params: Record<string, string | number | undefined>): string {
    const query = queryString(params);
    return `${this.deps.baseUrl ?? ""}${path}${query ? `?${query}` : ""}`;
  }

  private async ask(url: string, kept: Kept | undefined): Promise<unknown> {
    let response: HttpResponse;
    try {
      response = await this.deps.fetch(url, { method: "GET", headers: this.headers(kept?.etag) });
    } catch (error) {
      throw new RefreshFailure({ kind: "network", message: `the query service did not answer (${String(error)})` });
    }
    const fresh = freshness(response);
    const freshFor = fresh.freshFor ?? 0;
    const lifetime = fresh.lifetime ?? 0;
    let answer: Kept;
    if (response.status === 304 && kept) {
      answer = { ...kept, freshUntil: this.deps.clock.now() + freshFor, lifetime };
    } else if (response.status === 200) {
      const body = await response.json();
      answer = { body, etag: response.headers.get("etag") ?? undefined, freshUntil: this.deps.clock.now() + freshFor, lifetime };
    } else {
      const refused = await failure(response);
      if (refused.detail.kind === "unauthenticated" || refused.detail.kind === "forbidden") {
        for (const listener of [...this.authListeners]) {
          listener(refused.detail);
        }
      }
      throw refused;
    }
    this.answers.delete(url);
    this.answers.set(url, answer);
    for (const oldest of this.answers.keys()) {
      if (this.answers.size <= this.options.maxAnswers) break;
      this.answers.delete(oldest);
    }
    return answer.body;
  }

  /** `run` with the value of the last call, once `ms` pass without another call. */
  debounce<T>(ms: number, run: (value: T) => void): Debounced<T> {
    let timer: unknown;
    const cancel = () => {
      if (timer !== undefined) {
        this.deps.clock.clearTimeout(timer);
        timer = undefined;
      }
    };
    return {
      call: (value) => {
        cancel();
        timer = this.deps.clock.setTimeout(() => {
          timer = undefined;
          run(value);
        }, ms);
      },
      cancel,
    };
  }

  /** Stops every timer, every `follow` and the visibility watch; the cache is dropped. */
  dispose(): void {
    this.stopWatchingVisibility();
    for (const follower of [...this.followers]) {
      follower.stop();
    }
    for (const entry of this.entries.values()) {
      this.cancelTimer(entry);
    }
    this.entries.clear();
    this.answers.clear();
  }

  private entry(filters: Filters): Entry {
    const key = filtersKey(filters);
    let entry = this.entries.get(key);
    if (!entry) {
      entry = {
        key,
        filters: { ...filters },
        listeners: new Set(),
        state: { stale: true, outdated: false, fetching: false, fallback: false },
        partEtags: {},
        dueAt: -Infinity,
        requestedAt: -Infinity,
        freshUntil: -Infinity,
        failures: 0,
        lastUsed: this.deps.clock.now(),
      };
      this.evict();
      this.entries.set(key, entry);
    }
    return entry;
  }

  /** Makes room for one more entry: drops the least recently used without subscribers. */
  private evict(): void {
    const idle = [...this.entries.values()]
      .filter((entry) => entry.listeners.size === 0 && !entry.inFlight)
      .sort((a, b) => a.lastUsed - b.lastUsed);
    while (this.entries.size >= this.options.maxEntries && idle.length > 0) {
      const dropped = idle.shift() as Entry;
      this.cancelTimer(dropped);
      this.entries.delete(dropped.key);
    }
  }

  private snapshot(entry: Entry): EntryState {
    return {
      ...entry.state,
      stale: entry.state.error !== undefined || this.deps.clock.now() >= entry.freshUntil,
    };
  }

  private notify(entry: Entry): void {
    const state = this.snapshot(entry);
    for (const listener of [...entry.listeners]) {
      listener(state);
    }
  }

  /** Refreshes `entry` if it is due and may be asked for, else waits for when it is due. */
  private ensureFresh(entry: Entry): void {
    if (entry.listeners.size === 0 || entry.inFlight || this.deps.visibility.hidden()) {
      return;
    }
    if (this.authBlocked) {
      return;
    }
    const wait = entry.dueAt - this.deps.clock.now();
    if (wait <= 0) {
      void this.refresh(entry);
    } else {
      this.schedule(entry, wait);
    }
  }

  private schedule(entry: Entry, ms: number): void {
    this.cancelTimer(entry);
    entry.timer = this.deps.clock.setTimeout(() => {
      entry.timer = undefined;
      this.ensureFresh(entry);
    }, ms);
  }

  private cancelTimer(entry: Entry): void {
    if (entry.timer !== undefined) {
      this.deps.clock.clearTimeout(entry.timer);
      entry.timer = undefined;
    }
  }

  private visibilityChanged(): void {
    for (const entry of this.entries.values()) {
      if (this.deps.visibility.hidden()) {
        this.cancelTimer(entry);
      } else {
        this.ensureFresh(entry);
      }
    }
  }

  /** One refresh of `entry`, shared by everyone who asks while it is in flight. */
  private refresh(entry: Entry): Promise<void> {
    if (entry.inFlight) {
      return entry.inFlight;
    }
    this.cancelTimer(entry);
    entry.requestedAt = this.deps.clock.now();
    entry.state = { ...entry.state, fetching: true };
    this.notify(entry);
    entry.inFlight = this.load(entry)
      .then(
        (refreshed) => this.succeeded(entry, refreshed),
        (error: unknown) => this.failed(entry, error),
      )
      .finally(() => {
        entry.inFlight = undefined;
        this.notify(entry);
        this.ensureFresh(entry);
      });
    return entry.inFlight;
  }

  private succeeded(entry: Entry, refreshed: Refreshed): void {
    const now = this.deps.clock.now();
    const freshFor = (this.options.baseline ? undefined : refreshed.freshForMs) ?? this.options.defaultIntervalMs;
    const arrivedStale = freshFor === 0;
    entry.freshUntil = now + freshFor;
    if (arrivedStale) {
      entry.dueAt = now + Math.max(this.backoff(entry), this.options.minIntervalMs);
    } else {
      entry.failures = 0;
      const lifetime = this.options.baseline ? 0 : (refreshed.maxAgeMs ?? 0);
      entry.dueAt = this.nextDue(entry.freshUntil, entry.requestedAt + lifetime);
    }
    entry.state = {
      data: refreshed.data,
      stale: arrivedStale,
      outdated: arrivedStale && entry.failures >= 2,
      fetching: false,
      updatedAt: now,
      fallback: refreshed.fallback,
    };
  }

  private failed(entry: Entry, error: unknown): void {
    const detail: DataError =
      error instanceof RefreshFailure
        ? error.detail
        : { kind: "network", message: `the query service did not answer (${String(error)})` };
    entry.state = { ...entry.state, error: detail, fetching: false };
    if (detail.kind === "unauthenticated" || detail.kind === "forbidden") {
      // Polling stops until a token is given; asking again would be refused again.
      this.authBlocked = true;
      entry.dueAt = -Infinity;
      for (const listener of [...this.authListeners]) {
        listener(detail);
      }
      return;
    }
    entry.dueAt = this.deps.clock.now() + this.backoff(entry);
  }

  /** The next retry delay of `entry`, counting one more failure. */
  private backoff(entry: Entry): number {
    const delay = this.retryDelay(entry.failures);
    entry.failures += 1;
    return delay;
  }

  /** The retry delay after `failures` failures in a row: exponential, bounded. */
  private retryDelay(failures: number): number {
    return Math.min(this.options.retryBaseMs * 2 ** failures, this.options.retryMaxMs);
  }

  /**
   * When an answer fresh until `freshUntil` is asked again: once it stops being fresh, no
   * sooner than one `max-age` after the last request (`lifetimeEnds`) nor than
   * `minIntervalMs` from now.
   */
  private nextDue(freshUntil: number, lifetimeEnds: number): number {
    return Math.max(freshUntil, lifetimeEnds, this.deps.clock.now() + this.options.minIntervalMs);
  }

  private headers(etag: string | undefined): Record<string, string> {
    const headers: Record<string, string> = {};
    const token = this.deps.tokens.get();
    if (token) {
      headers["Authorization"] = `Bearer ${token}`;
    }
    if (etag) {
      headers["If-None-Match"] = etag;
    }
    return headers;
  }

  /** Asks the batch route, or the single routes when it fails or is missing. */
  private async load(entry: Entry): Promise<Refreshed> {
    if (!this.options.baseline && this.deps.clock.now() >= this.batchMissingUntil) {
      let response: HttpResponse | undefined;
      try {
        response = await this.deps.fetch(`${this.deps.baseUrl ?? ""}/api/dashboard/batch`, {
          method: "POST",
          headers: {
            ...this.headers(entry.state.data ? entry.batchEtag : undefined),
            "Content-Type": "application/json",
          },
          body: JSON.stringify(entry.filters),
        });
      } catch {
        response = undefined; // A network error: the single routes may still answer.
      }
      if (response && !fallsBack(response.status)) {
        return this.batchAnswer(entry, response);
      }
      if (response && (response.status === 404 || response.status === 405)) {
        this.batchMissingUntil = this.deps.clock.now() + this.options.batchProbeMs;
      }
    }
    return this.singles(entry);
  }

  private async batchAnswer(entry: Entry, response: HttpResponse): Promise<Refreshed> {
    const { freshFor, lifetime } = freshness(response);
    if (response.status === 304 && entry.state.data) {
      return { data: entry.state.data, freshForMs: freshFor, maxAgeMs: lifetime, fallback: false };
    }
    if (response.status !== 200) {
      throw await failure(response);
    }
    const body = (await response.json()) as Dashboard;
    entry.batchEtag = response.headers.get("etag") ?? undefined;
    entry.partEtags = {};
    return { data: body, freshForMs: freshFor, maxAgeMs: lifetime, fallback: false };
  }

  /** The four single routes, each with its own ETag. */
  private async singles(entry: Entry): Promise<Refreshed> {
    const query = filtersKey(entry.filters);
    const previous = entry.state.data ?? {};
    const answers = await Promise.all(
      PARTS.map(async (part) => {
        const etag = previous[part] && !this.options.baseline ? entry.partEtags[part] : undefined;
        const response = await this.deps.fetch(
          `${this.deps.baseUrl ?? ""}${SINGLE_PATHS[part]}${query ? `?${query}` : ""}`,
          this.options.baseline ? { method: "GET", headers: this.headers(etag), cache: "no-store" } : { method: "GET", headers: this.headers(etag) },
        );
        const { freshFor, lifetime } = freshness(response);
        if (response.status === 304 && previous[part]) {
          return { part, body: previous[part], etag, freshFor, lifetime };
        }
        if (response.status !== 200) {
          throw await failure(response);
        }
        const body = (await response.json()) as Dashboard[PartName];
        return { part, body, etag: response.headers.get("etag") ?? undefined, freshFor, lifetime };
      }),
    );
    // Only now, all parts answered: an ETag kept for a body that is not would get a 304 for
    // the body the page does not have.
    const data: Partial<Dashboard> = {};
    let freshFor: number | undefined;
    let lifetime: number | undefined;
    for (const answer of answers) {
      (data as Record<PartName, unknown>)[answer.part] = answer.body;
      entry.partEtags[answer.part] = answer.etag;
      if (answer.freshFor !== undefined) {
        freshFor = Math.min(freshFor ?? Infinity, answer.freshFor);
      }
      if (answer.lifetime !== undefined) {
        lifetime = Math.min(lifetime ?? Infinity, answer.lifetime);
      }
    }
    entry.batchEtag = undefined;
    const unchanged = PARTS.every((part) => data[part] === previous[part]);
    return { data: unchanged ? previous : data, freshForMs: freshFor, maxAgeMs: lifetime, fallback: !this.options.baseline };
  }
}

/** Whether a batch answer with `status` sends the page to the single routes. */
function fallsBack(status: number): boolean {
  return status === 404 || status === 405 || status >= 500;
}

/** The failure an answer that is neither 200 nor 304 stands for. */
async function failure(response: HttpResponse): Promise<RefreshFailure> {
  let message = `the query service answered ${response.status}`;
  try {
    const body = (await response.json()) as { error?: unknown };
    if (typeof body?.error === "string") {
      message = body.error;
    }
  } catch {
    // A body that is not JSON: the status says enough.
  }
  const kind =
    response.status === 401 ? "unauthenticated" : response.status === 403 ? "forbidden" : "http";
  return new RefreshFailure({ kind, status: response.status, message });
}
