//! A bounded, single-flight, refresh-ahead cache of answers with HTTP-style freshness.
//!
//! An answer is fresh for `Policy::fresh`. While a key is being read (it was read within
//! the last `stale_while_revalidate`), the cache refreshes it in the background on its own
//! schedule, when the answer reaches nine tenths of `fresh`, so readers keep getting fresh
//! answers and the source is asked about a key at a rate that depends on the key alone, not
//! on how many callers read it or how often. A key nobody reads is no longer refreshed: its
//! answer turns stale and is then served at once while one refresh runs (for
//! `stale_while_revalidate`), or else waited for; once too old to be served at all, it is
//! dropped. Concurrent fetches of a key are one fetch. While the source fails, an answer is
//! served stale within `stale_if_error`. Entries and bytes are bounded, the least recently
//! read evicted first. Generic over key, value and error; it knows nothing of HTTP. Time is
//! Tokio's clock, so tests drive it with `tokio::time::pause()`.

use std::collections::HashMap;
use std::hash::Hash;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
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
    /// in the background. A key read within this long is refreshed ahead (when both this and
    /// `fresh` are above zero).
    pub stale_while_revalidate: Duration,
    /// After `fresh`, for this long, the stale answer is served when the source fails.
    pub stale_if_error: Duration,
    /// Most answers kept.
    pub max_entries: usize,
    /// Most bytes of answers kept (as [`Weigh::weight`] counts them).
    pub max_bytes: u64,
}

impl Policy {
    /// The age at which the answer of a key being read is refreshed: nine tenths of `fresh`,
    /// so that the new answer normally arrives before the old one turns stale.
    fn refresh_after(&self) -> Duration {
        self.fresh - self.fresh / 10
    }

    /// Whether keys being read are refreshed ahead of their answers turning stale.
    fn refreshes_ahead(&self) -> bool {
        !self.fresh.is_zero() && !self.stale_while_revalidate.is_zero()
    }

    /// The age from which an answer is never served again.
    fn expires_after(&self) -> Duration {
        self.fresh + self.stale_while_revalidate.max(self.stale_if_error)
    }
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
    /// How long ago the source gave it (zero for a miss).
    pub age: Duration,
    /// This caller waited for a fetch that another caller (or the refresher) had started.
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

/// Asks the source for the answer of a key.
pub type Fetch<K, V, E> = Arc<dyn Fn(&K) -> BoxFuture<'static, Result<V, E>> + Send + Sync>;

type Flight<V, E> = Shared<BoxFuture<'static, Result<V, CacheError<E>>>>;

struct Stored<V> {
    value: V,
    at: Instant,
    weight: u64,
}

struct Entry<V, E> {
    stored: Option<Stored<V>>,
    flight: Option<Flight<V, E>>,
    /// When the key was last read.
    read: Instant,
    /// The tick of that read, for least-recently-read eviction.
    recency: u64,
    /// The id of the task refreshing this key ahead, if one does.
    refresher: Option<u64>,
}

impl<V, E> Entry<V, E> {
    fn new(now: Instant, tick: u64) -> Self {
        Self {
            stored: None,
            flight: None,
            read: now,
            recency: tick,
            refresher: None,
        }
    }
}

struct State<K, V, E> {
    entries: HashMap<K, Entry<V, E>>,
    stored: usize,
    bytes: u64,
    tick: u64,
}

/// What a key's refresher does next.
enum Step<V, E> {
    /// The key is gone or another task refreshes it.
    Stop,
    /// Nothing until then.
    Wait(Instant),
    /// Wait for this fetch of the key.
    Refresh(Flight<V, E>),
    /// Nobody reads the key: drop its answer at this instant unless it is read again.
    Expire(Instant),
}

/// The cache. Cloning it gives another handle on the same entries.
pub struct Cache<K, V, E> {
    policy: Policy,
    fetch: Fetch<K, V, E>,
    state: Arc<Mutex<State<K, V, E>>>,
}

impl<K, V, E> Clone for Cache<K, V, E> {
    fn clone(&self) -> Self {
        Self {
            policy: self.policy,
            fetch: self.fetch.clone(),
            state: self.state.clone(),
        }
    }
}

/// A handle that does not keep the cache alive: a refresher's.
struct WeakCache<K, V, E> {
    policy: Policy,
    fetch: Fetch<K, V, E>,
    state: Weak<Mutex<State<K, V, E>>>,
}

impl<K, V, E> Cache<K, V, E>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Weigh + Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
{
    /// An empty cache with this policy, asking `fetch` for answers.
    pub fn new(
        policy: Policy,
        fetch: impl Fn(&K) -> BoxFuture<'static, Result<V, E>> + Send + Sync + 'static,
    ) -> Self {
        Self {
            policy,
            fetch: Arc::new(fetch),
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
    /// background fetch refreshes it; or from a fetch, shared with every concurrent caller
    /// of the same key. When the fetch fails, an answer within `stale_if_error` is served
    /// stale instead. Fetches run in their own tasks, so they complete (and fill the cache)
    /// even if the caller goes away.
    pub async fn get(&self, key: K) -> Result<Lookup<V>, CacheError<E>> {
        let policy = self.policy;
        let (flight, coalesced) = {
            let now = Instant::now();
            let mut state = self.lock();
            state.tick += 1;
            let tick = state.tick;
            let entry = state
                .entries
                .entry(key.clone())
                .or_insert_with(|| Entry::new(now, tick));
            entry.read = now;
            entry.recency = tick;
            let kept = entry.stored.as_ref().and_then(|stored| {
                let age = now.saturating_duration_since(stored.at);
                (age < policy.fresh + policy.stale_while_revalidate)
                    .then(|| (stored.value.clone(), age))
            });
            if let Some((value, age)) = kept {
                let status = if age < policy.fresh {
                    Status::Hit
                } else {
                    if entry.flight.is_none() {
                        entry.flight = Some(self.start(key));
                    }
                    Status::Stale
                };
                return Ok(Lookup {
                    value,
                    status,
                    age,
                    coalesced: false,
                });
            }
            match &entry.flight {
                Some(flight) => (flight.clone(), true),
                None => {
                    let flight = self.start(key.clone());
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
                        coalesced,
                    }),
                    None => Err(error),
                }
            }
        }
    }

    /// Starts a fetch of `key` in its own task, which stores its answer when it succeeds.
    fn start(&self, key: K) -> Flight<V, E> {
        let cache = self.clone();
        let task = tokio::spawn(async move {
            let fetch = AssertUnwindSafe(async { (cache.fetch)(&key).await });
            let result = match fetch.catch_unwind().await {
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

    /// Ends the fetch of `key`: keeps its answer (if any), starts refreshing the key ahead
    /// if nothing does yet, and evicts the least recently read answers beyond the bounds.
    fn finish(&self, key: K, result: &Result<V, CacheError<E>>) {
        let policy = self.policy;
        let now = Instant::now();
        let mut guard = self.lock();
        let state = &mut *guard;
        state.tick += 1;
        let tick = state.tick;
        let entry = state
            .entries
            .entry(key.clone())
            .or_insert_with(|| Entry::new(now, tick));
        entry.flight = None;
        let mut refresher = None;
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
                        at: now,
                        weight,
                    });
                    state.stored += 1;
                    state.bytes += weight;
                    if policy.refreshes_ahead() && entry.refresher.is_none() {
                        entry.refresher = Some(tick);
                        refresher = Some(tick);
                    }
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
                .filter(|(_, entry)| entry.stored.is_some())
                .min_by_key(|(_, entry)| entry.recency)
                .map(|(key, _)| key.clone())
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
        drop(guard);
        if let Some(id) = refresher {
            tokio::spawn(self.downgrade().refresh_ahead(key, id));
        }
    }

    /// What the refresher `id` of `key` does next, given when it last asked for a refresh:
    /// waits until the answer is due for a refresh (nine tenths of `fresh` after it was
    /// fetched, or after the last attempt when that failed); then refreshes it if the key
    /// was read within `stale_while_revalidate`, or else stops refreshing it.
    fn next_step(&self, key: &K, id: u64, attempted: Option<Instant>) -> Step<V, E> {
        let policy = self.policy;
        let now = Instant::now();
        let mut state = self.lock();
        let Some(entry) = state.entries.get_mut(key) else {
            return Step::Stop;
        };
        if entry.refresher != Some(id) {
            return Step::Stop;
        }
        let Some(at) = entry.stored.as_ref().map(|stored| stored.at) else {
            entry.refresher = None;
            return Step::Stop;
        };
        let due = attempted.map_or(at, |attempted| attempted.max(at)) + policy.refresh_after();
        if now < due {
            return Step::Wait(due);
        }
        if now.saturating_duration_since(entry.read) >= policy.stale_while_revalidate {
            entry.refresher = None;
            return Step::Expire(at + policy.expires_after());
        }
        let flight = match &entry.flight {
            Some(flight) => flight.clone(),
            None => {
                let flight = self.start(key.clone());
                entry.flight = Some(flight.clone());
                flight
            }
        };
        Step::Refresh(flight)
    }

    /// Drops the answer of `key` if it is too old to be served and nothing refreshes it.
    fn expire(&self, key: &K) {
        let now = Instant::now();
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(entry) = state.entries.get(key) else {
            return;
        };
        let expired = entry.stored.as_ref().is_some_and(|stored| {
            now.saturating_duration_since(stored.at) >= self.policy.expires_after()
        });
        if expired && entry.flight.is_none() && entry.refresher.is_none() {
            let stored = state
                .entries
                .remove(key)
                .and_then(|entry| entry.stored)
                .expect("the expired entry holds an answer");
            state.stored -= 1;
            state.bytes -= stored.weight;
        }
    }

    fn downgrade(&self) -> WeakCache<K, V, E> {
        WeakCache {
            policy: self.policy,
            fetch: self.fetch.clone(),
            state: Arc::downgrade(&self.state),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<K, V, E>> {
        // No code that can panic runs while the lock is held (fetches run in their own
        // tasks), but should one, the state is still consistent: recover it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<K, V, E> WeakCache<K, V, E>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Weigh + Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
{
    fn upgrade(&self) -> Option<Cache<K, V, E>> {
        Some(Cache {
            policy: self.policy,
            fetch: self.fetch.clone(),
            state: self.state.upgrade()?,
        })
    }

    /// Keeps `key` fresh while it is read, then drops its answer once it expires unless it
    /// is read again. Ends early when the cache is dropped.
    async fn refresh_ahead(self, key: K, id: u64) {
        let mut attempted = None;
        loop {
            let Some(cache) = self.upgrade() else {
                return;
            };
            let step = cache.next_step(&key, id, attempted);
            drop(cache);
            match step {
                Step::Stop => return,
                Step::Wait(until) => tokio::time::sleep_until(until).await,
                Step::Refresh(flight) => {
                    attempted = Some(Instant::now());
                    // Its outcome is in the cache; a failure is retried on the schedule.
                    let _ = flight.await;
                }
                Step::Expire(at) => {
                    tokio::time::sleep_until(at).await;
                    if let Some(cache) = self.upgrade() {
                        cache.expire(&key);
                    }
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    struct Text(String);

    impl Weigh for Text {
        fn weight(&self) -> u64 {
            self.0.len() as u64
        }
    }

    type TestCache = Cache<&'static str, Text, String>;

    /// Fresh 4 s (refreshed at 3.6 s), stale-while-revalidate 10 s, stale-if-error 60 s.
    fn policy() -> Policy {
        Policy {
            fresh: Duration::from_secs(4),
            stale_while_revalidate: Duration::from_secs(10),
            stale_if_error: Duration::from_secs(60),
            max_entries: 100,
            max_bytes: 1 << 20,
        }
    }

    const FETCH_TIME: Duration = Duration::from_millis(10);

    /// A source counting its calls, answering `"<key> <n>"` after 10 ms, or failing when
    /// told, or panicking for the key `"boom"`.
    #[derive(Clone, Default)]
    struct Source {
        calls: Arc<AtomicUsize>,
        failing: Arc<AtomicBool>,
    }

    impl Source {
        fn cache(&self, policy: Policy) -> TestCache {
            let source = self.clone();
            TestCache::new(policy, move |key: &&'static str| {
                let key = *key;
                let calls = source.calls.clone();
                let failing = source.failing.clone();
                async move {
                    let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                    tokio::time::sleep(FETCH_TIME).await;
                    assert_ne!(key, "boom", "the source panics");
                    if failing.load(Ordering::SeqCst) {
                        Err("source down".to_owned())
                    } else {
                        Ok(Text(format!("{key} {n}")))
                    }
                }
                .boxed()
            })
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }

        fn fail(&self, failing: bool) {
            self.failing.store(failing, Ordering::SeqCst);
        }
    }

    async fn get(cache: &TestCache, key: &'static str) -> Lookup<Text> {
        cache.get(key).await.expect("an answer")
    }

    fn seen(lookup: &Lookup<Text>) -> (Status, &str) {
        (lookup.status, lookup.value.0.as_str())
    }

    /// Lets spawned background tasks run to completion under paused time.
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_being_read_is_refreshed_before_its_answer_turns_stale() {
        let source = Source::default();
        let cache = source.cache(policy());
        let first = get(&cache, "a").await;
        assert_eq!(seen(&first), (Status::Miss, "a 1"));
        assert_eq!(first.age, Duration::ZERO);

        tokio::time::sleep(Duration::from_secs(3)).await;
        let hit = get(&cache, "a").await;
        assert_eq!(seen(&hit), (Status::Hit, "a 1"));
        assert_eq!(hit.age.as_secs(), 3);

        // The refresh started at 3.6 s of age and took 10 ms: at 4 s the answer is new.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let refreshed = get(&cache, "a").await;
        assert_eq!(seen(&refreshed), (Status::Hit, "a 2"));
        assert!(refreshed.age < Duration::from_secs(1), "{refreshed:?}");
        assert_eq!(source.calls(), 2);
    }

    /// Readers polling every `every` (the i-th of `readers` at `i * every / readers`) for
    /// `duration`: the statuses they saw.
    async fn poll(
        cache: &TestCache,
        readers: u32,
        every: Duration,
        duration: Duration,
    ) -> Vec<Status> {
        let step = every / readers;
        let mut statuses = Vec::new();
        let started = Instant::now();
        while started.elapsed() < duration {
            statuses.push(get(cache, "a").await.status);
            tokio::time::sleep_until(started + step * u32::try_from(statuses.len()).unwrap()).await;
        }
        statuses
    }

    #[tokio::test(start_paused = true)]
    async fn the_source_is_asked_as_often_for_one_reader_as_for_a_hundred() {
        let minute = Duration::from_secs(60);
        let mut calls = Vec::new();
        for readers in [1, 10, 100] {
            let source = Source::default();
            let cache = source.cache(policy());
            let statuses = poll(&cache, readers, Duration::from_secs(5), minute).await;
            assert_eq!(statuses[0], Status::Miss);
            assert!(
                statuses[1..].iter().all(|s| *s == Status::Hit),
                "{readers} readers: {statuses:?}"
            );
            calls.push(source.calls());
        }
        // A miss, then a refresh every 3.6 s + 10 ms: 1 + 16.
        assert_eq!(calls, [17, 17, 17]);
    }

    #[tokio::test(start_paused = true)]
    async fn keys_nobody_reads_stop_being_refreshed_and_are_dropped_when_expired() {
        let source = Source::default();
        let cache = source.cache(policy());
        get(&cache, "a").await;
        // Refreshed at about 3.6 s and 7.2 s (read within 10 s), not at 10.8 s.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(source.calls(), 3);
        // Kept while it may still be served (stale-if-error: 4 + 60 s after 7.2 s) ...
        assert_eq!(cache.usage(), (1, 3));
        // ... and dropped after.
        tokio::time::sleep(Duration::from_secs(42)).await;
        assert_eq!(cache.usage(), (0, 0));
        assert_eq!(source.calls(), 3);
        assert_eq!(seen(&get(&cache, "a").await), (Status::Miss, "a 4"));
    }

    #[tokio::test(start_paused = true)]
    async fn read_again_within_the_stale_window_it_is_served_stale_and_refreshed() {
        let source = Source::default();
        let cache = source.cache(policy());
        get(&cache, "a").await;
        // No longer refreshed after 10.8 s; its answer (from 7.2 s) stale from 11.2 s.
        tokio::time::sleep(Duration::from_secs(12)).await;
        for _ in 0..5 {
            let stale = get(&cache, "a").await;
            assert_eq!(seen(&stale), (Status::Stale, "a 3"));
            assert_eq!(stale.age.as_millis() / 100, 47, "{stale:?}");
        }
        settle().await;
        assert_eq!(source.calls(), 4, "one refresh for five stale reads");
        assert_eq!(seen(&get(&cache, "a").await), (Status::Hit, "a 4"));
        // Being read again, it is refreshed ahead again.
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(seen(&get(&cache, "a").await), (Status::Hit, "a 5"));
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_stale_window_the_caller_waits_for_a_new_answer() {
        let source = Source::default();
        let cache = source.cache(policy());
        get(&cache, "a").await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        let again = get(&cache, "a").await;
        assert_eq!(seen(&again), (Status::Miss, "a 4"));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_stale_window_nothing_is_refreshed_ahead() {
        for policy in [
            Policy {
                stale_while_revalidate: Duration::ZERO,
                ..policy()
            },
            Policy {
                fresh: Duration::ZERO,
                ..policy()
            },
        ] {
            let source = Source::default();
            let cache = source.cache(policy);
            get(&cache, "a").await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            get(&cache, "a").await;
            tokio::time::sleep(Duration::from_secs(30)).await;
            let expected = if policy.fresh.is_zero() { 2 } else { 1 };
            assert_eq!(source.calls(), expected, "{policy:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_misses_share_one_fetch() {
        let source = Source::default();
        let cache = source.cache(policy());
        let lookups = futures::future::join_all((0..100).map(|_| cache.get("a"))).await;
        assert_eq!(source.calls(), 1);
        let coalesced = lookups
            .iter()
            .map(|l| l.as_ref().expect("an answer"))
            .inspect(|l| assert_eq!(seen(l), (Status::Miss, "a 1")))
            .filter(|l| l.coalesced)
            .count();
        assert_eq!(coalesced, 99);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_source_gets_stale_answers_within_stale_if_error_then_the_error() {
        let source = Source::default();
        let cache = source.cache(policy());
        get(&cache, "a").await;
        source.fail(true);
        // The refreshes at 3.6 s and 7.2 s fail; the answer is kept.
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(source.calls(), 3);
        let stale = get(&cache, "a").await;
        assert_eq!(seen(&stale), (Status::Stale, "a 1"));
        assert_eq!(stale.age.as_secs(), 20);

        tokio::time::sleep(Duration::from_secs(50)).await;
        let failed = cache.get("a").await;
        assert!(matches!(failed, Err(CacheError::Fetch(ref e)) if e == "source down"));
        let never_cached = cache.get("b").await;
        assert!(never_cached.is_err());
        // Failed fetches leave nothing behind, and a's answer has expired.
        assert_eq!(cache.usage(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_refresh_keeps_the_stale_answer_and_is_retried_on_schedule() {
        let source = Source::default();
        let cache = source.cache(policy());
        get(&cache, "a").await;
        source.fail(true);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(source.calls(), 2, "the refresh at 3.6 s failed");
        assert_eq!(seen(&get(&cache, "a").await), (Status::Stale, "a 1"));
        settle().await;
        assert_eq!(
            source.calls(),
            3,
            "the stale read revalidated, and failed too"
        );
        source.fail(false);
        // The refresher retries 3.6 s after its failed attempt, at 7.2 s.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(seen(&get(&cache, "a").await), (Status::Hit, "a 4"));
        assert_eq!(source.calls(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_fetch_is_an_error_and_does_not_block_the_key() {
        let source = Source::default();
        let cache = source.cache(policy());
        let panicked = cache.get("boom").await;
        assert!(matches!(panicked, Err(CacheError::Panicked)));
        let again = cache.get("boom").await;
        assert!(matches!(again, Err(CacheError::Panicked)));
        assert_eq!(source.calls(), 2);
        assert_eq!(cache.usage(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn evicts_the_least_recently_read_beyond_the_entry_bound() {
        let source = Source::default();
        let cache = source.cache(Policy {
            max_entries: 2,
            ..policy()
        });
        get(&cache, "a").await;
        get(&cache, "b").await;
        assert_eq!(get(&cache, "a").await.status, Status::Hit);
        get(&cache, "c").await;
        assert_eq!(cache.usage().0, 2);
        assert_eq!(get(&cache, "a").await.status, Status::Hit);
        assert_eq!(get(&cache, "c").await.status, Status::Hit);
        assert_eq!(get(&cache, "b").await.status, Status::Miss);
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_ahead_do_not_count_as_reads_for_eviction() {
        let source = Source::default();
        let cache = source.cache(Policy {
            max_entries: 2,
            ..policy()
        });
        get(&cache, "a").await;
        get(&cache, "b").await;
        // b is refreshed at 3.6 s, after a's refresh, but a was read last.
        tokio::time::sleep(Duration::from_secs(1)).await;
        get(&cache, "a").await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        get(&cache, "c").await;
        assert_eq!(get(&cache, "a").await.status, Status::Hit);
        assert_eq!(get(&cache, "b").await.status, Status::Miss);
    }

    #[tokio::test(start_paused = true)]
    async fn evicts_beyond_the_byte_bound_and_skips_oversized_answers() {
        // Answers are "x n": 3 bytes each.
        let source = Source::default();
        let cache = source.cache(Policy {
            max_bytes: 7,
            ..policy()
        });
        get(&cache, "a").await;
        get(&cache, "b").await;
        assert_eq!(cache.usage(), (2, 6));
        get(&cache, "c").await;
        assert_eq!(cache.usage(), (2, 6));
        assert_eq!(get(&cache, "a").await.status, Status::Miss);

        let tiny = source.cache(Policy {
            max_bytes: 2,
            ..policy()
        });
        assert_eq!(get(&tiny, "a").await.status, Status::Miss);
        assert_eq!(tiny.usage(), (0, 0));
        assert_eq!(get(&tiny, "a").await.status, Status::Miss);
    }

    #[tokio::test(start_paused = true)]
    async fn refreshers_end_with_the_cache() {
        let source = Source::default();
        let cache = source.cache(policy());
        get(&cache, "a").await;
        drop(cache);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(source.calls(), 1);
    }
}
