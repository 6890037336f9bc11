// The page: header (views, window, theme, token), the notice that tells when data is stale
// or a refresh failed, and the view on screen. Every view but the overview is loaded on first
// use; a process's history is opened from a pod's drill-down.

import "./style.css";
import { DashboardData, type DataError, type EntryState } from "./data.js";
import { h, replace, time } from "./dom.js";
import { overview } from "./overview.js";
import type { HistoryTarget, View, ViewContext } from "./views.js";

const TOKEN_KEY = "metricsstack.token";
const THEME_KEY = "metricsstack.theme";
// Windows over 6 hours are answered from hourly buckets.
const WINDOWS = ["15m", "1h", "6h", "24h", "7d", "30d"];
/** The views with a tab of their own. */
const TABS = ["overview", "processes", "pods", "trends"] as const;
const VIEWS = [...TABS, "history"] as const;
type ViewName = (typeof VIEWS)[number];
/** The hash parameters that name a process's history. */
const HISTORY_FIELDS = ["namespace", "pod", "container", "command"] as const;

const data = new DashboardData({
  fetch: (url, init) => window.fetch(url, { ...init, credentials: "same-origin" }),
  clock: {
    now: () => Date.now(),
    setTimeout: (run, ms) => window.setTimeout(run, ms),
    clearTimeout: (handle) => window.clearTimeout(handle as number),
  },
  visibility: {
    hidden: () => document.hidden,
    onChange: (listener) => {
      document.addEventListener("visibilitychange", listener);
      return () => document.removeEventListener("visibilitychange", listener);
    },
  },
  tokens: {
    get: () => sessionStorage.getItem(TOKEN_KEY),
    set: (token) => (token ? sessionStorage.setItem(TOKEN_KEY, token) : sessionStorage.removeItem(TOKEN_KEY)),
  },
  // `?mode=baseline`: the performance plan's approach, which the benchmark
  // (scripts/bench-dashboard) measures beside this page's own.
}, { baseline: new URLSearchParams(location.search).get("mode") === "baseline" });

const state = {
  view: "overview" as ViewName,
  window: "15m",
  metric: "cpu" as "cpu" | "memory",
  host: "",
  namespace: "",
  history: undefined as HistoryTarget | undefined,
};
const context: ViewContext = { data, window: state.window, nodes: new Set(), report: (entry) => showNotice(entry) };
let current: View | undefined;
let opening = 0;
/** The lazily loaded views already fetched. */
const loaded = new Set<ViewName>();

const main = h("main", { id: "content" });
const notice = h("div", { id: "notice", role: "status", hidden: true });
const tokenForm = tokenDialog();

function readHash(): void {
  const params = new URLSearchParams(location.hash.slice(1));
  const view = params.get("view") as ViewName | null;
  state.view = view && VIEWS.includes(view) ? view : "overview";
  const window = params.get("window");
  state.window = window && WINDOWS.includes(window) ? window : "15m";
  state.metric = params.get("metric") === "memory" ? "memory" : "cpu";
  state.host = params.get("host") ?? "";
  state.namespace = params.get("namespace") ?? "";
  const [namespace, pod, container, command] = HISTORY_FIELDS.map((field) => params.get(field));
  state.history =
    state.view === "history" && namespace && pod && container && command ? { namespace, pod, container, command } : undefined;
}

function writeHash(): void {
  const params = new URLSearchParams({ view: state.view, window: state.window });
  if (state.view === "processes") {
    params.set("metric", state.metric);
    if (state.host) params.set("host", state.host);
  }
  if (state.view === "pods" && state.namespace) {
    params.set("namespace", state.namespace);
  }
  if (state.view === "history" && state.history) {
    for (const field of HISTORY_FIELDS) {
      params.set(field, state.history[field]);
    }
  }
  history.replaceState(null, "", `#${params}`);
}

/** Opens the view the state names, stopping the one on screen. */
async function show(): Promise<void> {
  writeHash();
  const ticket = ++opening;
  current?.stop();
  current = undefined;
  context.window = state.window;
  for (const tab of document.querySelectorAll<HTMLElement>("[data-view]")) {
    tab.setAttribute("aria-current", String(tab.dataset.view === state.view));
  }
  // Every view but the overview is a chunk of its own, fetched when first opened.
  const lazy = async <Module>(load: () => Promise<Module>): Promise<Module | undefined> => {
    if (!loaded.has(state.view)) {
      replace(main, h("p", { class: "loading" }, "Loading…"));
    }
    const module = await load();
    loaded.add(state.view);
    return ticket === opening ? module : undefined;
  };
  let view: View;
  switch (state.view) {
    case "processes": {
      const module = await lazy(() => import("./processes.js"));
      if (!module) return;
      view = module.processes(context, state.metric, state.host, (metric, host) => {
        Object.assign(state, { metric, host });
        void show();
      });
      break;
    }
    case "pods": {
      const module = await lazy(() => import("./pods.js"));
      if (!module) return;
      view = module.pods(
        context,
        state.namespace,
        (namespace) => {
          state.namespace = namespace;
          writeHash();
        },
        (target) => {
          state.view = "history";
          state.history = target;
          void show();
        },
      );
      break;
    }
    case "history": {
      const module = await lazy(() => import("./history.js"));
      if (!module) return;
      view = module.history(context, state.history);
      break;
    }
    case "trends": {
      const module = await lazy(() => import("./trends.js"));
      if (!module) return;
      view = module.trends(context);
      break;
    }
    default:
      view = overview(context);
  }
  current = view;
  replace(main, view.element);
}

function showNotice(entry: EntryState): void {
  let text = "";
  if (entry.error && entry.error.kind !== "unauthenticated" && entry.error.kind !== "forbidden") {
    text = entry.data
      ? `Could not refresh (${entry.error.message}). Showing data from ${entry.updatedAt ? time(entry.updatedAt) : "earlier"}; retrying.`
      : `Could not load the data (${entry.error.message}); retrying.`;
  } else if (entry.data && entry.outdated) {
    text = `The query service could not refresh this data (its database may be away); showing what it last had, from ${entry.updatedAt ? time(entry.updatedAt) : "earlier"}.`;
  }
  if (!text && entry.fallback) {
    text = "The batch endpoint is not answering; using the single endpoints.";
  }
  notice.hidden = !text;
  notice.className = entry.error ? "error" : "warning";
  notice.textContent = text;
}

function tokenDialog(): HTMLFormElement {
  const input = h("input", { id: "token", type: "password", autocomplete: "off", required: true, "aria-label": "Bearer token", placeholder: "Bearer token" });
  const message = h("p", { id: "token-message" });
  const form = h(
    "form",
    {
      id: "token-form",
      hidden: true,
      onSubmit: (event) => {
        event.preventDefault();
        form.hidden = true;
        void data.setToken(input.value.trim());
        input.value = "";
      },
    },
    h("h2", {}, "Sign in"),
    message,
    h(
      "p",
      { class: "muted" },
      "Paste a Kubernetes token allowed to get this stack's metricsstacks/data, for example from kubectl create token. It is kept in this tab's session storage only.",
    ),
    input,
    h("button", { type: "submit" }, "Sign in"),
  );
  return form;
}

function askForToken(error: DataError): void {
  const message = tokenForm.querySelector("#token-message");
  if (message) {
    message.textContent = error.kind === "forbidden" ? `This token may not read this stack: ${error.message}` : "The query service needs a token.";
  }
  tokenForm.hidden = false;
  tokenForm.querySelector("input")?.focus();
}

function applyTheme(theme: string | null): void {
  if (theme === "light" || theme === "dark") {
    document.documentElement.dataset.theme = theme;
  } else {
    delete document.documentElement.dataset.theme;
  }
}

function currentTheme(): "light" | "dark" {
  const chosen = document.documentElement.dataset.theme;
  if (chosen === "light" || chosen === "dark") return chosen;
  return window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
}

function header(): HTMLElement {
  const windowSelect = h(
    "select",
    {
      id: "window",
      "aria-label": "Time window",
      onChange: (event) => {
        state.window = (event.target as HTMLSelectElement).value;
        void show();
      },
    },
    ...WINDOWS.map((window) => h("option", { value: window, selected: window === state.window }, `Last ${window}`)),
  );
  return h(
    "header",
    {},
    h("h1", {}, "MetricsStack"),
    h(
      "nav",
      { "aria-label": "Views" },
      ...TABS.map((view) =>
        h(
          "button",
          {
            type: "button",
            class: "tab",
            "data-view": view,
            onClick: () => {
              state.view = view;
              void show();
            },
          },
          view[0].toUpperCase() + view.slice(1),
        ),
      ),
    ),
    h("span", { class: "spacer" }),
    windowSelect,
    h("button", { type: "button", id: "refresh", onClick: () => void data.refreshAll() }, "Refresh"),
    h(
      "button",
      {
        type: "button",
        id: "theme",
        "aria-label": "Switch between light and dark",
        onClick: () => {
          const next = currentTheme() === "dark" ? "light" : "dark";
          localStorage.setItem(THEME_KEY, next);
          applyTheme(next);
        },
      },
      "◐",
    ),
  );
}

applyTheme(localStorage.getItem(THEME_KEY));
readHash();
// A link to another view (the overview's long-window chart links to the trends) changes the
// hash; the page's own changes replace it without this event.
window.addEventListener("hashchange", () => {
  readHash();
  const select = document.querySelector<HTMLSelectElement>("#window");
  if (select) select.value = state.window;
  void show();
});
data.onAuthRequired(askForToken);
document.body.append(header(), notice, tokenForm, main);
void show();
