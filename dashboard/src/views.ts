// What every view shares: the context the page gives it, what it gives back, and how it
// watches its data. Each view (overview.ts in the initial bundle; processes.ts, pods.ts,
// history.ts and trends.ts loaded when first opened) subscribes to the data layer for what it shows, and
// draws again only when its answer changed (a 304 keeps the same object: nothing is drawn).

import type { DashboardData, EntryState, Filters } from "./data.js";

/** What every view is given: the data layer, the page's filters, and the nodes seen. */
export interface ViewContext {
  data: DashboardData;
  window: string;
  /** Nodes seen in any answer so far, for the node filter. */
  nodes: Set<string>;
  /** Told every state of the view's data, for the page's notice. */
  report(state: EntryState): void;
}

/** A process followed across restarts: its pod, its container's name and its command. */
export interface HistoryTarget {
  namespace: string;
  pod: string;
  container: string;
  /** The command line as recorded, or the process name where none is. */
  command: string;
}

/** A view on screen: its element and what removes it (unsubscribing). */
export interface View {
  element: HTMLElement;
  stop(): void;
}

/** Subscribes `draw` to `filters`, drawing only when the data object changes. */
export function watch(context: ViewContext, filters: Filters, draw: (state: EntryState) => void): () => void {
  let drawn: unknown;
  return context.data.subscribe(filters, (state) => {
    context.report(state);
    for (const row of state.data?.host_overall_metrics?.rows ?? []) {
      context.nodes.add(row.host);
    }
    if (state.data !== drawn) {
      drawn = state.data;
      draw(state);
    }
  });
}
