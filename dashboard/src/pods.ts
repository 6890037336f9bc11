// Pods per namespace (loaded when first opened), filtered by namespace as one types; and a
// pod's drill-down: its containers and their processes, with CPU average and peak, memory,
// and CPU and memory as shares of the container's requests and limits. Each process opens
// its history across restarts.

import { type EntryState, type Filters, type Part, type PodProcessRow, type PodRow, RefreshFailure } from "./data.js";
import { h, megabytes, percent, replace, table, time } from "./dom.js";
import { type HistoryTarget, type View, type ViewContext, watch } from "./views.js";

/** The drill-down's window: the page's, at most the day the API allows. */
function podWindow(window: string): string {
  return window.endsWith("d") ? "24h" : window;
}

/** A share of a request or limit, or a dash when the container sets none. */
function share(value: number | null): string {
  return value === null ? "–" : percent(value);
}

/** The sum of a share over a container's processes, or null when none of them has it. */
function total(processes: PodProcessRow[], pick: (row: PodProcessRow) => number | null): number | null {
  const shares = processes.map(pick).filter((value): value is number => value !== null);
  return shares.length === 0 ? null : shares.reduce((sum, value) => sum + value, 0);
}

/** What a container's processes take of its requests and limits, in words. */
function shares(processes: PodProcessRow[]): string {
  const parts = [
    ["CPU request", total(processes, (row) => row.avg_cpu_request_percent)],
    ["CPU limit", total(processes, (row) => row.avg_cpu_limit_percent)],
    ["memory request", total(processes, (row) => row.avg_memory_request_percent)],
    ["memory limit", total(processes, (row) => row.avg_memory_limit_percent)],
  ] as const;
  const set = parts.filter(([, value]) => value !== null).map(([name, value]) => `${percent(value ?? 0)} of its ${name}`);
  return set.length === 0 ? ", no requests or limits" : ` (${set.join(", ")})`;
}

/** A pod's containers and their processes, drawn into `panel`. */
function drawPod(panel: HTMLElement, pod: PodRow, window: string, rows: PodProcessRow[], history: (target: HistoryTarget) => void): void {
  const containers = new Map<string, PodProcessRow[]>();
  for (const row of rows) {
    containers.set(row.container_id, [...(containers.get(row.container_id) ?? []), row]);
  }
  replace(
    panel,
    h("h2", {}, `${pod.namespace}/${pod.pod}`, h("span", { class: "muted" }, ` on ${pod.host}, last ${window}`)),
    h(
      "p",
      { class: "muted" },
      "CPU (percent of one core) and memory, averaged over the window, also as shares of the container's requests and limits where it sets them.",
    ),
    ...(rows.length === 0 ? [h("p", { class: "empty" }, "No processes of this pod in this window.")] : []),
    ...[...containers.values()].map((processes) => {
      const first = processes[0];
      const container = first.container_name ?? first.container_id;
      // The container's totals are those of the processes at its latest sample: a process
      // that ended (before a restart) no longer takes any of its requests or limits.
      const latest = processes.reduce((last, row) => (row.last_seen > last ? row.last_seen : last), first.last_seen);
      const running = processes.filter((row) => row.last_seen === latest);
      const sum = (pick: (row: PodProcessRow) => number) => running.reduce((total, row) => total + pick(row), 0);
      return h(
        "section",
        { class: "container", "data-container": first.container_name ?? first.container_id },
        h(
          "h3",
          {},
          container,
          h(
            "span",
            { class: "muted" },
            ` ${processes.length} processes in the window; the ${running.length} at its latest sample average CPU ${percent(sum((row) => row.avg_cpu))}, memory ${megabytes(sum((row) => row.avg_memory_mb))}${shares(running)}`,
          ),
        ),
        table<PodProcessRow>(
          `Processes of ${first.container_name ?? first.container_id}`,
          [
            { label: "PID", field: "pid", cell: (row) => String(row.pid), numeric: true },
            { label: "Process", field: "process_name", cell: (row) => row.process_name },
            { label: "Command line", field: "command_line", cell: (row) => row.command_line ?? "–" },
            { label: "CPU avg", field: "avg_cpu", cell: (row) => percent(row.avg_cpu), numeric: true },
            { label: "CPU peak", field: "max_cpu", cell: (row) => percent(row.max_cpu), numeric: true },
            { label: "CPU of request", field: "avg_cpu_request_percent", cell: (row) => share(row.avg_cpu_request_percent), numeric: true },
            { label: "CPU of limit", field: "avg_cpu_limit_percent", cell: (row) => share(row.avg_cpu_limit_percent), numeric: true },
            { label: "Memory avg", field: "avg_memory_mb", cell: (row) => megabytes(row.avg_memory_mb), numeric: true },
            { label: "Memory peak", field: "max_memory_mb", cell: (row) => megabytes(row.max_memory_mb), numeric: true },
            { label: "Memory of request", field: "avg_memory_request_percent", cell: (row) => share(row.avg_memory_request_percent), numeric: true },
            { label: "Memory of limit", field: "avg_memory_limit_percent", cell: (row) => share(row.avg_memory_limit_percent), numeric: true },
          ],
          processes,
          (row) => `${row.pid}/${row.start_time}`,
          // Only a named container can be followed across restarts (its id changes).
          first.container_name === null
            ? undefined
            : {
                label: "History",
                run: (row) => history({ namespace: pod.namespace, pod: pod.pod, container: container, command: row.command_line ?? row.process_name }),
              },
        ),
      );
    }),
  );
}

/**
 * Pods and their processes' CPU and memory, optionally in one namespace. A new namespace is
 * watched in place (the input keeps its focus); `change` is told it.
 */
export function pods(context: ViewContext, namespace: string, change: (namespace: string) => void, history: (target: HistoryTarget) => void): View {
  const filters = (namespace: string): Filters => ({ window: context.window, namespace: namespace || undefined, limit: 100 });
  const body = h("section", { "aria-label": "Pods" }, h("p", { class: "loading" }, "Loading…"));
  let typing: number | undefined;
  const input = h("input", {
    id: "namespace-filter",
    type: "search",
    placeholder: "Namespace",
    "aria-label": "Namespace",
    value: namespace,
    onInput: (event) => {
      // Debounced: one request once typing pauses, not one per key.
      window.clearTimeout(typing);
      const value = (event.target as HTMLInputElement).value.trim();
      typing = window.setTimeout(() => {
        if (value !== namespace) {
          namespace = value;
          change(value);
          stop();
          stop = watch(context, filters(value), draw);
        }
      }, 300);
    },
  });
  const detail = h("section", { id: "pod-detail", "aria-label": "Pod processes", hidden: true });
  let opened: PodRow | undefined;
  let asked = 0;
  // Asked again whenever the pods are drawn (each refresh): from memory while the answer is
  // fresh, else with If-None-Match.
  const showPod = () => {
    const pod = opened;
    if (!pod) return;
    const mine = ++asked;
    const window = podWindow(context.window);
    context.data.get<Part<PodProcessRow>>("/api/pod-processes", { namespace: pod.namespace, pod: pod.pod, window }).then(
      (answer) => mine === asked && drawPod(detail, pod, window, answer.rows, history),
      (error: unknown) => {
        if (mine !== asked) return;
        replace(detail, h("p", { class: "failed" }, `The pod's processes could not be loaded: ${error instanceof RefreshFailure ? error.detail.message : String(error)}`));
      },
    );
  };
  const open = (pod: PodRow) => {
    opened = pod;
    detail.hidden = false;
    replace(detail, h("p", { class: "loading" }, "Loading…"));
    showPod();
  };
  const draw = (state: EntryState) => {
    showPod();
    const rows = state.data?.vm_metrics?.rows ?? [];
    const namespaces = new Map<string, PodRow[]>();
    for (const row of rows) {
      namespaces.set(row.namespace, [...(namespaces.get(row.namespace) ?? []), row]);
    }
    replace(
      body,
      ...(rows.length === 0 ? [h("p", { class: "empty" }, "No pods in this window.")] : []),
      ...[...namespaces.entries()]
        .sort(([a], [b]) => a.localeCompare(b))
        .map(([name, pods]) =>
          h(
            "section",
            { class: "namespace", "data-namespace": name },
            h("h2", {}, name, h("span", { class: "muted" }, ` ${pods.length} pods, ${percent(pods.reduce((sum, pod) => sum + pod.cpu_usage_percent, 0))} CPU`)),
            table<PodRow>(
              `Pods in ${name}`,
              [
                { label: "Pod", field: "pod", cell: (row) => row.pod },
                { label: "Node", field: "host", cell: (row) => row.host },
                { label: "Processes", field: "processes", cell: (row) => String(row.processes), numeric: true },
                { label: "CPU", field: "cpu_usage_percent", cell: (row) => percent(row.cpu_usage_percent), numeric: true },
                { label: "Memory", field: "memory_usage_mb", cell: (row) => megabytes(row.memory_usage_mb), numeric: true },
                { label: "Last seen", field: "last_seen", cell: (row) => time(row.last_seen) },
              ],
              pods,
              (row) => `${row.namespace}/${row.pod}`,
              { label: "Show processes", run: open },
            ),
          ),
        ),
    );
  };
  let stop = watch(context, filters(namespace), draw);
  return {
    element: h("div", { class: "view", id: "view-pods" }, h("div", { class: "controls" }, input), detail, body),
    stop: () => {
      window.clearTimeout(typing);
      asked += 1;
      stop();
    },
  };
}
