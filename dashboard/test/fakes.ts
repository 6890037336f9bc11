// Fakes of what the data layer is given: a clock whose timers fire only when the test moves
// it on, a fetch that records every request and answers from the test's handler, a page
// visibility the test flips, and an in-memory token store.

import type { Clock, Fetch, HttpRequest, HttpResponse, TokenStore, Visibility } from "../src/data.js";

interface Timer {
  at: number;
  run: () => void;
  id: number;
}

/** A clock that moves only when `advance` is called. */
export class FakeClock implements Clock {
  private time = 0;
  private timers: Timer[] = [];
  private nextId = 1;

  now(): number {
    return this.time;
  }

  setTimeout(run: () => void, ms: number): unknown {
    const timer = { at: this.time + ms, run, id: this.nextId++ };
    this.timers.push(timer);
    return timer.id;
  }

  clearTimeout(handle: unknown): void {
    this.timers = this.timers.filter((timer) => timer.id !== handle);
  }

  /** Timers pending. */
  pending(): number {
    return this.timers.length;
  }

  /** Moves the clock on by `ms`, firing due timers in order and settling promises between. */
  async advance(ms: number): Promise<void> {
    const until = this.time + ms;
    await settle();
    for (;;) {
      const due = this.timers
        .filter((timer) => timer.at <= until)
        .sort((a, b) => a.at - b.at || a.id - b.id)[0];
      if (!due) {
        break;
      }
      this.timers = this.timers.filter((timer) => timer !== due);
      this.time = due.at;
      due.run();
      await settle();
    }
    this.time = until;
    await settle();
  }
}

/** Lets every pending promise chain run. */
export async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) {
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
}

/** One recorded request. */
export interface Recorded {
  url: string;
  init: HttpRequest;
}

/** What a handler answers: a response description, or a thrown error for a network failure. */
export interface Reply {
  status: number;
  headers?: Record<string, string>;
  body?: unknown;
  /** A body that is not JSON. */
  text?: string;
}

/** A fetch answering from `handler`, recording every request. */
export class FakeFetch {
  readonly requests: Recorded[] = [];
  handler: (request: Recorded) => Reply | Promise<Reply> = () => ({ status: 500 });

  readonly fetch: Fetch = async (url, init) => {
    const request = { url, init };
    this.requests.push(request);
    const reply = await this.handler(request);
    return response(reply);
  };

  /** Requests whose URL ends with `path` (and whose query follows it). */
  to(path: string): Recorded[] {
    return this.requests.filter((request) => request.url.split("?")[0].endsWith(path));
  }
}

function response(reply: Reply): HttpResponse {
  const headers = new Map(
    Object.entries(reply.headers ?? {}).map(([name, value]) => [name.toLowerCase(), value]),
  );
  return {
    status: reply.status,
    headers: { get: (name) => headers.get(name.toLowerCase()) ?? null },
    json: async () => {
      if (reply.text !== undefined) {
        return JSON.parse(reply.text);
      }
      return reply.body;
    },
  };
}

/** A page visibility the test sets. */
export class FakeVisibility implements Visibility {
  private isHidden = false;
  private listeners = new Set<() => void>();

  hidden(): boolean {
    return this.isHidden;
  }

  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Hides or shows the page, telling the listeners. */
  set(hidden: boolean): void {
    this.isHidden = hidden;
    for (const listener of this.listeners) {
      listener();
    }
  }

  /** Listeners registered. */
  watchers(): number {
    return this.listeners.size;
  }
}

/** A token store in memory. */
export class FakeTokens implements TokenStore {
  constructor(public token: string | null = null) {}

  get(): string | null {
    return this.token;
  }

  set(token: string | null): void {
    this.token = token;
  }
}
