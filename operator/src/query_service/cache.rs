//! A bounded, single-flight cache of answers with HTTP-style freshness: an answer is fresh
//! for a while, then served stale while one background refresh runs, and served stale while
//! its source fails (within a limit). Generic over key, value and error; it knows nothing of
//! HTTP. Time is Tokio's clock, so tests drive it with `tokio::time::pause()`.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
use tokio::time::Instant;

/// How long answers stay fresh, how long stale ones may still be served, and how many are
/// kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// An answer younger than this is served without asking the source.
    pub fresh: Duration,
    /// After `fresh`, for this long, the stale answer is served at once and one refresh runs
    /// in the background.
    pub stale_while_revalidate: Duration,
    /// After `fresh`, for this long, the stale answer is served when the source fails.
    pub stale_if_error: Duration,
    /// Most answers kept.
    pub max_entries: usize,
    /// Most bytes of answers kept (as [`Weigh::weight`] counts them).
    pub max_bytes: u64,
}

/// A value that knows how many bytes it holds, for the cache's byte bound.
pub trait Weigh {
    /// The value's size in bytes.
    fn weight(&self) -> u64;
}

/// Where an answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// A fresh answer from the cache.
    Hit,
    /// A stale answer from the cache (while revalidating, or because the source failed).
    Stale,
    /// A new answer from the source.
    Miss,
}

impl Status {
    /// The status as the `X-Cache` header spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Hit => "HIT",
            Status::Stale => "STALE",
            Status::Miss => "MISS",
        }
    }
}

/// An answer and how it was found.
#[derive(Clone, Debug)]
pub struct Lookup<V> {
    /// The answer.
    pub value: V,
    /// Where it came from.
    pub status: Status,
    /// How old it is.
    pub age: Duration,
    /// How long it stays fresh from now (zero when stale).
    pub fresh_for: Duration,
    /// This caller waited for a fetch that another caller had started (single flight).
    pub coalesced: bool,
}

/// Why no answer could be given.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CacheError<E> {
    /// The source failed and no answer within `stale_if_error` was kept.
    #[error("{0}")]
    Fetch(E),
    /// The fetch panicked.
    #[error("the fetch panicked")]
    Panicked,
}

type Flight<V, E> = Shared<BoxFuture<'static, Result<V, CacheError<E>>>>;

struct Stored<V> {
    value: V,
    at: Instant,
    weight: u64,
    used: u64,
}

struct Entry<V, E> {
    stored: Option<Stored<V>>,
    flight: Option<Flight<V, E>>,
}

struct State<K, V, E> {
    entries: HashMap<K, Entry<V, E>>,
    stored: usize,
    bytes: u64,
    tick: u64,
}

/// The cache. Cloning it gives another handle on the same entries.
pub struct Cache<K, V, E> {
    policy: Policy,
    state: Arc<Mutex<State<K, V, E>>>,
}

impl<K, V, E> Clone for Cache<K, V, E> {
    fn clone(&self) -> Self {
        Self {
            policy: self.policy,
            state: self.state.clone(),
        }
    }
}

impl<K, V, E> Cache<K, V, E>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Weigh + Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
{
    /// An empty cache with this policy.
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            state: Arc::new(Mutex::new(State {
                entries: HashMap::new(),
                stored: 0,
                bytes: 0,
                tick: 0,
            })),
        }
    }

    /// The cache's policy.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Number of answers kept and their bytes.
    pub fn usage(&self) -> (usize, u64) {
        let state = self.lock();
        (state.stored, state.bytes)
    }

    /// The answer for `key`: fresh from the cache; or stale from the cache while one
    /// background `fetch` refreshes it; or from `fetch`, shared with every concurrent caller
    /// of the same key. When the fetch fails, an answer within `stale_if_error` is served
    /// stale instead. `fetch` is called only when this caller starts a fetch; the fetch runs
    /// in its own task, so it completes (and fills the cache) even if the caller goes away.
    pub async fn get<F, Fut>(&self, key: K, fetch: F) -> Result<Lookup<V>, CacheError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        let policy = self.policy;
        let (flight, coalesced) = {
            let now = Instant::now();
            let mut state = self.lock();
            state.tick += 1;
            let tick = state.tick;
            let entry = state.entries.entry(key.clone()).or_insert(Entry {
                stored: None,
                flight: None,
            });
            if let Some(stored) = &mut entry.stored {
                let age = now.saturating_duration_since(stored.at);
                if age < policy.fresh {
                    stored.used = tick;
                    return Ok(Lookup {
                        value: stored.value.clone(),
                        status: Status::Hit,
                        age,
                        fresh_for: policy.fresh - age,
                        coalesced: false,
                    });
                }
                if age < policy.fresh + policy.stale_while_revalidate {
                    stored.used = tick;
                    let value = stored.value.clone();
                    if entry.flight.is_none() {
                        entry.flight = Some(self.start(key, fetch()));
                    }
                    return Ok(Lookup {
                        value,
                        status: Status::Stale,
                        age,
                        fresh_for: Duration::ZERO,
                        coalesced: false,
                    });
                }
            }
            match &entry.flight {
                Some(flight) => (flight.clone(), true),
                None => {
                    let flight = self.start(key.clone(), fetch());
                    entry.flight = Some(flight.clone());
                    (flight, false)
                }
            }
        };
        match flight.await {
            Ok(value) => Ok(Lookup {
                value,
                status: Status::Miss,
                age: Duration::ZERO,
                fresh_for: policy.fresh,
                coalesced,
            }),
            Err(error) => {
                let now = Instant::now();
                let state = self.lock();
                let kept = state
                    .entries
                    .get(&key)
                    .and_then(|entry| entry.stored.as_ref())
                    .filter(|stored| {
                        now.saturating_duration_since(stored.at)
                            < policy.fresh + policy.stale_if_error
                    });
                match kept {
                    Some(stored) => Ok(Lookup {
                        value: stored.value.clone(),
                        status: Status::Stale,
                        age: now.saturating_duration_since(stored.at),
                        fresh_for: Duration::ZERO,
                        coalesced,
                    }),
                    None => Err(error),
                }
            }
        }
    }

    /// Starts a fetch in its own task, which stores its answer when it succeeds.
    fn start<Fut>(&self, key: K, fetch: Fut) -> Flight<V, E>
    where
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        let cache = self.clone();
        let task = tokio::spawn(async move {
            let result = match AssertUnwindSafe(fetch).catch_unwind().await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(error)) => Err(CacheError::Fetch(error)),
                Err(_) => Err(CacheError::Panicked),
            };
            cache.finish(key, &result);
            result
        });
        async move { task.await.unwrap_or(Err(CacheError::Panicked)) }
            .boxed()
            .shared()
    }

    /// Ends the fetch of `key`: keeps its answer (if any) and evicts the least recently used
    /// answers beyond the bounds.
    fn finish(&self, key: K, result: &Result<V, CacheError<E>>) {
        let policy = self.policy;
        let mut guard = self.lock();
        let state = &mut *guard;
        state.tick += 1;
        let tick = state.tick;
        let entry = state.entries.entry(key.clone()).or_insert(Entry {
            stored: None,
            flight: None,
        });
        entry.flight = None;
        match result {
            Ok(value) => {
                let weight = value.weight();
                if let Some(old) = entry.stored.take() {
                    state.stored -= 1;
                    state.bytes -= old.weight;
                }
                if weight <= policy.max_bytes && policy.max_entries > 0 {
                    entry.stored = Some(Stored {
                        value: value.clone(),
                        at: Instant::now(),
                        weight,
                        used: tick,
                    });
                    state.stored += 1;
                    state.bytes += weight;
                } else {
                    state.entries.remove(&key);
                }
            }
            Err(_) => {
                if entry.stored.is_none() {
                    state.entries.remove(&key);
                }
            }
        }
        while state.stored > policy.max_entries || state.bytes > policy.max_bytes {
            let Some(oldest) = state
                .entries
                .iter()
                .filter_map(|(key, entry)| entry.stored.as_ref().map(|s| (s.used, key)))
                .min_by_key(|(used, _)| *used)
                .map(|(_, key)| key.clone())
            else {
                break;
            };
            let entry = state
                .entries
                .get_mut(&oldest)
                .expect("the oldest entry exists");
            let stored = entry
                .stored
                .take()
                .expect("the oldest entry holds an answer");
            state.stored -= 1;
            state.bytes -= stored.weight;
            if entry.flight.is_none() {
                state.entries.remove(&oldest);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<K, V, E>> {
        // A panic never happens while the lock is held (no user code runs under it), but
        // should one, the state is still consistent: recover it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    struct Text(String);

    impl Weigh for Text {
        fn weight(&self) -> u64 {
            self.0.len() as u64
        }
    }

    type TestCache = Cache<&'static str, Text, String>;

    fn policy() -> Policy {
        Policy {
            fresh: Duration::from_secs(4),
            stale_while_revalidate: Duration::from_secs(10),
            stale_if_error: Duration::from_secs(60),
            max_entries: 100,
            max_bytes: 1 << 20,
        }
    }

    /// A source counting its calls, answering `"<name> <n>"` or failing when told.
    #[derive(Clone, Default)]
    struct Source {
        calls: Arc<AtomicUsize>,
        failing: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Source {
        fn fetch(
            &self,
            name: &'static str,
            delay: Duration,
        ) -> impl Future<Output = Result<Text, String>> + Send + 'static {
            let calls = self.calls.clone();
            let failing = self.failing.clone();
            async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(delay).await;
                if failing.load(Ordering::SeqCst) {
                    Err("source down".to_owned())
                } else {
                    Ok(Text(format!("{name} {n}")))
                }
            }
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    async fn get(cache: &TestCache, source: &Source, key: &'static str) -> Lookup<Text> {
        cache
            .get(key, || source.fetch(key, Duration::from_millis(10)))
            .await
            .expect("an answer")
    }

    /// Lets spawned background tasks run to completion under paused time.
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn miss_then_hit_then_stale_with_one_background_refresh() {
        let cache = TestCache::new(policy());
        let source = Source::default();
        let first = get(&cache, &source, "a").await;
        assert_eq!(
            (first.status, first.value.0.as_str()),
            (Status::Miss, "a 1")
        );
        assert_eq!(first.fresh_for, Duration::from_secs(4));

        tokio::time::advance(Duration::from_secs(3)).await;
        let hit = get(&cache, &source, "a").await;
        assert_eq!((hit.status, hit.value.0.as_str()), (Status::Hit, "a 1"));
        assert_eq!(hit.age.as_secs(), 3);
        assert!(hit.fresh_for <= Duration::from_secs(1) && hit.fresh_for > Duration::ZERO);

        tokio::time::advance(Duration::from_secs(2)).await;
        // Stale: served at once, and however many callers, one refresh.
        for _ in 0..5 {
            let stale = get(&cache, &source, "a").await;
            assert_eq!(
                (stale.status, stale.value.0.as_str()),
                (Status::Stale, "a 1")
            );
            assert_eq!(stale.fresh_for, Duration::ZERO);
        }
        settle().await;
        assert_eq!(source.calls(), 2);
        let refreshed = get(&cache, &source, "a").await;
        assert_eq!(
            (refreshed.status, refreshed.value.0.as_str()),
            (Status::Hit, "a 2")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_stale_window_the_caller_waits_for_a_new_answer() {
        let cache = TestCache::new(policy());
        let source = Source::default();
        get(&cache, &source, "a").await;
        tokio::time::advance(Duration::from_secs(14)).await;
        let again = get(&cache, &source, "a").await;
        assert_eq!(
            (again.status, again.value.0.as_str()),
            (Status::Miss, "a 2")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_misses_share_one_fetch() {
        let cache = TestCache::new(policy());
        let source = Source::default();
        let lookups = futures::future::join_all(
            (0..100).map(|_| cache.get("a", || source.fetch("a", Duration::from_millis(100)))),
        )
        .await;
        assert_eq!(source.calls(), 1);
        let coalesced = lookups
            .iter()
            .map(|l| l.as_ref().expect("an answer"))
            .inspect(|l| assert_eq!((l.status, l.value.0.as_str()), (Status::Miss, "a 1")))
            .filter(|l| l.coalesced)
            .count();
        assert_eq!(coalesced, 99);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_source_gets_stale_answers_within_stale_if_error_then_the_error() {
        let cache = TestCache::new(policy());
        let source = Source::default();
        get(&cache, &source, "a").await;
        source.failing.store(true, Ordering::SeqCst);
        tokio::time::advance(Duration::from_secs(20)).await;
        let stale = get(&cache, &source, "a").await;
        assert_eq!(
            (stale.status, stale.value.0.as_str()),
            (Status::Stale, "a 1")
        );
        assert_eq!(stale.age.as_secs(), 20);

        tokio::time::advance(Duration::from_secs(50)).await;
        let failed = cache
            .get("a", || source.fetch("a", Duration::from_millis(10)))
            .await;
        assert!(matches!(failed, Err(CacheError::Fetch(ref e)) if e == "source down"));
        let never_cached = cache
            .get("b", || source.fetch("b", Duration::from_millis(10)))
            .await;
        assert!(never_cached.is_err());
        // A failed fetch of an unknown key leaves nothing behind: only a's old answer is kept.
        assert_eq!(cache.usage(), (1, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_background_refresh_keeps_the_stale_answer() {
        let cache = TestCache::new(policy());
        let source = Source::default();
        get(&cache, &source, "a").await;
        source.failing.store(true, Ordering::SeqCst);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(get(&cache, &source, "a").await.status, Status::Stale);
        settle().await;
        let still = get(&cache, &source, "a").await;
        assert_eq!(
            (still.status, still.value.0.as_str()),
            (Status::Stale, "a 1")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_fetch_is_an_error_and_does_not_block_the_key() {
        let cache = TestCache::new(policy());
        let panicked = cache
            .get("a", || async { panic!("boom") as Result<Text, String> })
            .await;
        assert!(matches!(panicked, Err(CacheError::Panicked)));
        let source = Source::default();
        assert_eq!(get(&cache, &source, "a").await.status, Status::Miss);
    }

    #[tokio::test(start_paused = true)]
    async fn evicts_the_least_recently_used_beyond_the_entry_bound() {
        let cache = TestCache::new(Policy {
            max_entries: 2,
            ..policy()
        });
        let source = Source::default();
        get(&cache, &source, "a").await;
        get(&cache, &source, "b").await;
        assert_eq!(get(&cache, &source, "a").await.status, Status::Hit);
        get(&cache, &source, "c").await;
        assert_eq!(cache.usage().0, 2);
        assert_eq!(get(&cache, &source, "a").await.status, Status::Hit);
        assert_eq!(get(&cache, &source, "c").await.status, Status::Hit);
        assert_eq!(get(&cache, &source, "b").await.status, Status::Miss);
    }

    #[tokio::test(start_paused = true)]
    async fn evicts_beyond_the_byte_bound_and_skips_oversized_answers() {
        // Answers are "x n": 3 bytes each.
        let cache = TestCache::new(Policy {
            max_bytes: 7,
            ..policy()
        });
        let source = Source::default();
        get(&cache, &source, "a").await;
        get(&cache, &source, "b").await;
        assert_eq!(cache.usage(), (2, 6));
        get(&cache, &source, "c").await;
        assert_eq!(cache.usage(), (2, 6));
        assert_eq!(get(&cache, &source, "a").await.status, Status::Miss);

        let tiny = TestCache::new(Policy {
            max_bytes: 2,
            ..policy()
        });
        assert_eq!(get(&tiny, &source, "a").await.status, Status::Miss);
        assert_eq!(tiny.usage(), (0, 0));
        assert_eq!(get(&tiny, &source, "a").await.status, Status::Miss);
    }
}
