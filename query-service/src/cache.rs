//! A bounded, single-flight, refresh-ahead cache of answers with HTTP-style freshness.
//!
//! An answer is fresh for `Policy::fresh`. A key whose answer is read again after it was
//! fetched (by another client, or by the same one within `fresh`) is refreshed in the
//! background ahead of its answer turning stale, by as long as its last fetch took plus a
//! tenth of `fresh` (at most half of `fresh`), as long as it keeps being read
//! and was read within the last `stale_while_revalidate`: so readers keep getting fresh
//! answers, and the source is asked about a key at most once a refresh period however many
//! callers read it, and never more often than the key is read (one client polling less often
//! than `fresh` costs one fetch a poll, as it would without the cache). A key not read again
//! turns stale and is then served at once while one refresh runs (for
//! `stale_while_revalidate`), or else waited for; once too old to be served at all, it is
//! dropped. Concurrent fetches of a key are one fetch. While the source fails, an answer is
//! served stale within `stale_if_error`.
//!
//! Memory and work are bounded: answers by number and bytes, fetches in flight by
//! `Policy::max_fetches` (a miss beyond it is shed with [`CacheError::Overloaded`] unless a
//! stale answer can stand in), and so the keys held. Eviction is segmented
//! least-recently-read, O(log n): answers read only once (a scan of one-off keys) are evicted
//! before answers read again, which a burst of one-off keys cannot push out. Generic over key,
//! value and error; it knows nothing of HTTP. Time is Tokio's clock, so tests drive it with
//! `tokio::time::pause()`.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
use tokio::time::Instant;

/// How long answers stay fresh, how long stale ones may still be served, how many are kept
/// and how many fetches may run at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// An answer younger than this is served without asking the source.
    pub fresh: Duration,
    /// After `fresh`, for this long, the stale answer is served at once and one refresh runs
    /// in the background. A key read again within this long is refreshed ahead (when both
    /// this and `fresh` are above zero).
    pub stale_while_revalidate: Duration,
    /// After `fresh`, for this long, the stale answer is served when the source fails.
    pub stale_if_error: Duration,
    /// Most answers kept.
    pub max_entries: usize,
    /// Most bytes of answers kept (as [`Weigh::weight`] counts them).
    pub max_bytes: u64,
    /// Most fetches running at once; a miss beyond them is shed.
    pub max_fetches: usize,
}

impl Policy {
    /// The age at which the answer of a key being read is refreshed, given how long its
    /// last fetch `took`: that long plus a tenth of `fresh` before `fresh` ends (at most
    /// half of `fresh` before), so that the new answer arrives a tenth of `fresh` before the
    /// old one turns stale, even from a slow source: a reader polling when `max-age` and
    /// `Age` say finds it, and the key is asked about once every nine tenths of `fresh`.
    fn refresh_after(&self, took: Duration) -> Duration {
        self.fresh - (took + self.fresh / 10).min(self.fresh / 2)
    }

    /// Whether keys being read are refreshed ahead of their answers turning stale.
    fn refreshes_ahead(&self) -> bool {
        !self.fresh.is_zero() && !self.stale_while_revalidate.is_zero()
    }

    /// The age from which an answer is never served again.
    fn expires_after(&self) -> Duration {
        self.fresh + self.stale_while_revalidate.max(self.stale_if_error)
    }

    /// Most answers in the protected segment (read again): four fifths of the entries, so
    /// that new keys always have room to prove themselves.
    fn max_protected(&self) -> usize {
        (self.max_entries - self.max_entries / 5).max(1)
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
    /// A stale answer from the cache (while revalidating, or because the source failed or
    /// too many fetches were running).
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
    /// `Policy::max_fetches` fetches were running, and no answer within `stale_if_error`
    /// was kept: the caller should come back shortly.
    #[error("too many fetches are running")]
    Overloaded,
}

/// Asks the source for the answer of a key.
pub type Fetch<K, V, E> = Arc<dyn Fn(&K) -> BoxFuture<'static, Result<V, E>> + Send + Sync>;

type Flight<V, E> = Shared<BoxFuture<'static, Result<V, CacheError<E>>>>;

struct Stored<V> {
    value: V,
    at: Instant,
    /// How long the fetch that gave it took.
    took: Duration,
    weight: u64,
    /// The tick it was stored at: its place in the expiry order.
    order: u64,
}

struct Entry<V, E> {
    stored: Option<Stored<V>>,
    flight: Option<Flight<V, E>>,
    /// When the key was last read.
    read: Instant,
    /// The tick of that read: the entry's place in its eviction segment.
    recency: u64,
    /// Read while it held an answer: in the protected segment, evicted after the others.
    proven: bool,
    /// Read since its answer was stored: a refresh ahead would be read.
    read_since_stored: bool,
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
            proven: false,
            read_since_stored: false,
            refresher: None,
        }
    }
}

/// The entries and their indexes. Every entry holding an answer is in exactly one segment
/// (`probation` if not `proven`, else `protected`) under its `recency`, and in `by_age`
/// under its answer's `order`; an entry holds an answer, or a fetch, or is removed.
struct State<K, V, E> {
    entries: HashMap<K, Entry<V, E>>,
    /// Answers not read since they were first stored, by recency.
    probation: BTreeMap<u64, K>,
    /// Answers read again, by recency.
    protected: BTreeMap<u64, K>,
    /// Answers by when they were stored, oldest first: the order they expire in.
    by_age: BTreeMap<u64, K>,
    stored: usize,
    bytes: u64,
    tick: u64,
    /// Fetches running.
    fetches: usize,
}

impl<K: Eq + Hash + Clone, V, E> State<K, V, E> {
    fn segment(&mut self, proven: bool) -> &mut BTreeMap<u64, K> {
        if proven {
            &mut self.protected
        } else {
            &mut self.probation
        }
    }

    /// Keeps `stored` as the answer of `key`, whose entry exists and holds none.
    fn store(&mut self, key: &K, stored: Stored<V>) {
        let entry = self.entries.get_mut(key).expect("the entry exists");
        let (recency, proven, order) = (entry.recency, entry.proven, stored.order);
        self.stored += 1;
        self.bytes += stored.weight;
        entry.stored = Some(stored);
        self.by_age.insert(order, key.clone());
        self.segment(proven).insert(recency, key.clone());
    }

    /// Takes the answer of `key` out of the cache, leaving its entry.
    fn unstore(&mut self, key: &K) -> Option<Stored<V>> {
        let entry = self.entries.get_mut(key)?;
        let stored = entry.stored.take()?;
        let (recency, proven) = (entry.recency, entry.proven);
        self.segment(proven).remove(&recency);
        self.by_age.remove(&stored.order);
        self.stored -= 1;
        self.bytes -= stored.weight;
        Some(stored)
    }

    /// Drops the answer of `key`, and its entry unless a fetch runs for it.
    fn drop_answer(&mut self, key: &K) {
        self.unstore(key);
        if self
            .entries
            .get(key)
            .is_some_and(|entry| entry.flight.is_none())
        {
            self.entries.remove(key);
        }
    }

    /// Records a read of `key` at `tick`: an entry holding an answer moves to the newest
    /// place of the protected segment, demoting the protected segment's oldest beyond its
    /// bound to probation.
    fn read(&mut self, key: &K, now: Instant, tick: u64, policy: &Policy) {
        let entry = self
            .entries
            .entry(key.clone())
            .or_insert_with(|| Entry::new(now, tick));
        entry.read = now;
        let previous = std::mem::replace(&mut entry.recency, tick);
        if entry.stored.is_none() {
            return;
        }
        let was_proven = std::mem::replace(&mut entry.proven, true);
        entry.read_since_stored = true;
        self.segment(was_proven).remove(&previous);
        self.protected.insert(tick, key.clone());
        while self.protected.len() > policy.max_protected() {
            let (recency, demoted) = self.protected.pop_first().expect("not empty");
            if let Some(entry) = self.entries.get_mut(&demoted) {
                entry.proven = false;
            }
            self.probation.insert(recency, demoted);
        }
    }

    /// Evicts answers beyond the bounds: the least recently read of probation first, then
    /// of the protected segment.
    fn evict(&mut self, policy: &Policy) {
        while self.stored > policy.max_entries || self.bytes > policy.max_bytes {
            let oldest = self
                .probation
                .first_key_value()
                .or_else(|| self.protected.first_key_value())
                .map(|(_, key)| key.clone());
            let Some(oldest) = oldest else {
                break;
            };
            self.drop_answer(&oldest);
        }
    }

    /// Drops the answers too old to be served.
    fn purge(&mut self, now: Instant, expires_after: Duration) {
        while let Some((_, key)) = self.by_age.first_key_value() {
            let key = key.clone();
            let at = self.entries[&key]
                .stored
                .as_ref()
                .expect("an indexed entry holds an answer")
                .at;
            if now.saturating_duration_since(at) < expires_after {
                break;
            }
            self.drop_answer(&key);
        }
    }
}

/// What a key's refresher does next.
enum Step<V, E> {
    /// The key is gone, no longer read, or another task refreshes it.
    Stop,
    /// Nothing until then.
    Wait(Instant),
    /// Wait for this fetch of the key.
    Refresh(Flight<V, E>),
    /// Too many fetches run: count this as an attempt and try again a period later.
    Skip,
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
                probation: BTreeMap::new(),
                protected: BTreeMap::new(),
                by_age: BTreeMap::new(),
                stored: 0,
                bytes: 0,
                tick: 0,
                fetches: 0,
            })),
        }
    }

    /// The cache's policy.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Number of answers kept that may still be served, and their bytes.
    pub fn usage(&self) -> (usize, u64) {
        let mut state = self.lock();
        state.purge(Instant::now(), self.policy.expires_after());
        (state.stored, state.bytes)
    }

    /// The answer for `key`: fresh from the cache; or stale from the cache while one
    /// background fetch refreshes it; or from a fetch, shared with every concurrent caller
    /// of the same key. When the fetch fails, or `max_fetches` run already, an answer within
    /// `stale_if_error` is served stale instead. Fetches run in their own tasks, so they
    /// complete (and fill the cache) even if the caller goes away.
    pub async fn get(&self, key: K) -> Result<Lookup<V>, CacheError<E>> {
        let policy = self.policy;
        let (flight, coalesced) = {
            let now = Instant::now();
            let mut guard = self.lock();
            let state = &mut *guard;
            state.purge(now, policy.expires_after());
            state.tick += 1;
            let tick = state.tick;
            state.read(&key, now, tick, &policy);
            let room = state.fetches < policy.max_fetches;
            let entry = state.entries.get_mut(&key).expect("just read");
            let kept = entry.stored.as_ref().map(|stored| {
                (
                    stored.value.clone(),
                    now.saturating_duration_since(stored.at),
                )
            });
            let running = entry.flight.clone();
            let servable = kept
                .as_ref()
                .is_some_and(|(_, age)| *age < policy.fresh + policy.stale_while_revalidate);
            if servable && policy.refreshes_ahead() && entry.refresher.is_none() {
                entry.refresher = Some(tick);
                tokio::spawn(self.downgrade().refresh_ahead(key.clone(), tick));
            }
            match (kept, running, room) {
                (Some((value, age)), running, room) if servable => {
                    let status = if age < policy.fresh {
                        Status::Hit
                    } else {
                        if running.is_none() && room {
                            // It runs in its own task; this reader does not wait for it.
                            drop(self.launch(state, &key));
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
                (_, Some(flight), _) => (flight, true),
                (_, None, true) => (self.launch(state, &key), false),
                (kept, None, false) => {
                    // Shed: an answer within stale-if-error stands in, or the caller is
                    // told to come back.
                    let Some((value, age)) =
                        kept.filter(|(_, age)| *age < policy.fresh + policy.stale_if_error)
                    else {
                        if state.entries.get(&key).is_some_and(|e| e.stored.is_none()) {
                            state.entries.remove(&key);
                        }
                        return Err(CacheError::Overloaded);
                    };
                    return Ok(Lookup {
                        value,
                        status: Status::Stale,
                        age,
                        coalesced: false,
                    });
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

    /// Starts a fetch of `key` (whose entry exists and has none running), counted among the
    /// fetches running until it ends.
    fn launch(&self, state: &mut State<K, V, E>, key: &K) -> Flight<V, E> {
        let flight = self.start(key.clone());
        state.fetches += 1;
        state.entries.get_mut(key).expect("the entry exists").flight = Some(flight.clone());
        flight
    }

    /// Starts a fetch of `key` in its own task, which stores its answer when it succeeds.
    fn start(&self, key: K) -> Flight<V, E> {
        let cache = self.clone();
        let task = tokio::spawn(async move {
            let began = Instant::now();
            let fetch = AssertUnwindSafe(async { (cache.fetch)(&key).await });
            let result = match fetch.catch_unwind().await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(error)) => Err(CacheError::Fetch(error)),
                Err(_) => Err(CacheError::Panicked),
            };
            cache.finish(key, &result, began.elapsed());
            result
        });
        async move { task.await.unwrap_or(Err(CacheError::Panicked)) }
            .boxed()
            .shared()
    }

    /// Ends the fetch of `key`, which `took` so long: keeps its answer (if any) and evicts
    /// the least recently read answers beyond the bounds.
    fn finish(&self, key: K, result: &Result<V, CacheError<E>>, took: Duration) {
        let policy = self.policy;
        let now = Instant::now();
        let mut guard = self.lock();
        let state = &mut *guard;
        state.fetches -= 1;
        state.tick += 1;
        let tick = state.tick;
        let entry = state
            .entries
            .entry(key.clone())
            .or_insert_with(|| Entry::new(now, tick));
        entry.flight = None;
        match result {
            Ok(value) => {
                entry.read_since_stored = false;
                state.unstore(&key);
                let weight = value.weight();
                if weight <= policy.max_bytes && policy.max_entries > 0 {
                    let stored = Stored {
                        value: value.clone(),
                        at: now,
                        took,
                        weight,
                        order: tick,
                    };
                    state.store(&key, stored);
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
        state.evict(&policy);
    }

    /// What the refresher `id` of `key` does next, given when it last asked for a refresh:
    /// waits until the answer is due for a refresh ([`Policy::refresh_after`] it was
    /// fetched, or after the last attempt when that failed); then refreshes it if the key
    /// was read since the answer was stored and within `stale_while_revalidate`, or else
    /// stops refreshing it.
    fn next_step(&self, key: &K, id: u64, attempted: Option<Instant>) -> Step<V, E> {
        let policy = self.policy;
        let now = Instant::now();
        let mut guard = self.lock();
        let state = &mut *guard;
        let room = state.fetches < policy.max_fetches;
        let Some(entry) = state.entries.get_mut(key) else {
            return Step::Stop;
        };
        if entry.refresher != Some(id) {
            return Step::Stop;
        }
        let Some((at, took)) = entry.stored.as_ref().map(|stored| (stored.at, stored.took)) else {
            entry.refresher = None;
            return Step::Stop;
        };
        let due = attempted.map_or(at, |attempted| attempted.max(at)) + policy.refresh_after(took);
        if now < due {
            return Step::Wait(due);
        }
        let read_recently =
            now.saturating_duration_since(entry.read) < policy.stale_while_revalidate;
        if !entry.read_since_stored || !read_recently {
            entry.refresher = None;
            return Step::Stop;
        }
        match (entry.flight.clone(), room) {
            (Some(flight), _) => Step::Refresh(flight),
            (None, true) => Step::Refresh(self.launch(state, key)),
            (None, false) => Step::Skip,
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

    /// Keeps `key` fresh while it is read again. Ends when it is not, or when the cache is
    /// dropped.
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
                Step::Skip => attempted = Some(Instant::now()),
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

    impl TestCache {
        /// Keys held (with an answer or a fetch running) and fetches running.
        fn held(&self) -> (usize, usize) {
            let state = self.lock();
            (state.entries.len(), state.fetches)
        }
    }

    /// Fresh 4 s (refreshed at 3.6 s), stale-while-revalidate 10 s, stale-if-error 60 s.
    fn policy() -> Policy {
        Policy {
            fresh: Duration::from_secs(4),
            stale_while_revalidate: Duration::from_secs(10),
            stale_if_error: Duration::from_secs(60),
            max_entries: 100,
            max_bytes: 1 << 20,
            max_fetches: 100,
        }
    }

    const FETCH_TIME: Duration = Duration::from_millis(10);

    /// A source counting its calls, answering `"<key> <n>"` after 10 ms (plus `slowness`),
    /// or failing when told, or panicking for the key `"boom"`.
    #[derive(Clone, Default)]
    struct Source {
        calls: Arc<AtomicUsize>,
        failing: Arc<AtomicBool>,
        slowness: Duration,
    }

    impl Source {
        fn cache(&self, policy: Policy) -> TestCache {
            let source = self.clone();
            TestCache::new(policy, move |key: &&'static str| {
                let key = *key;
                let calls = source.calls.clone();
                let failing = source.failing.clone();
                let slowness = source.slowness;
                async move {
                    let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                    tokio::time::sleep(FETCH_TIME + slowness).await;
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
    async fn a_lone_poller_costs_one_fetch_a_poll_and_many_readers_no_more_than_ten() {
        let minute = Duration::from_secs(60);
        let mut calls = Vec::new();
        for readers in [1, 10, 100] {
            let source = Source::default();
            let cache = source.cache(policy());
            let statuses = poll(&cache, readers, Duration::from_secs(5), minute).await;
            assert_eq!(statuses[0], Status::Miss);
            // Alone, every poll finds the answer past its freshness (4 s) and revalidates
            // it: refreshing ahead would ask the source about 17 times a minute for its 12
            // polls. Read by several, it is refreshed ahead and always fresh.
            let expected = if readers == 1 {
                Status::Stale
            } else {
                Status::Hit
            };
            assert!(
                statuses[1..].iter().all(|s| *s == expected),
                "{readers} readers: {statuses:?}"
            );
            calls.push(source.calls());
        }
        // One a poll; or a miss, then a refresh every 3.6 s (0.41 s ahead, 10 ms long): 1 + 16.
        assert_eq!(calls, [12, 17, 17]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_poller_following_max_age_and_age_finds_a_slow_sources_answer_fresh() {
        // The dashboard's schedule: the next poll when the answer stops being fresh
        // (`max-age` minus `Age`, whole seconds as the header carries it), or a second
        // after a stale one. The source takes 1.5 s: refreshed 0.4 s ahead whatever the
        // fetch takes, the answer turned stale before its refresh arrived and every other
        // poll needed a second one (25 polls a minute).
        let source = Source {
            slowness: Duration::from_millis(1500),
            ..Source::default()
        };
        let cache = source.cache(policy());
        let started = Instant::now();
        let mut statuses = Vec::new();
        while started.elapsed() < Duration::from_secs(60) {
            let lookup = get(&cache, "a").await;
            statuses.push(lookup.status);
            let next = match lookup.status {
                Status::Stale => Duration::from_secs(1),
                Status::Hit | Status::Miss => policy()
                    .fresh
                    .saturating_sub(Duration::from_secs(lookup.age.as_secs())),
            };
            tokio::time::sleep(next.max(Duration::from_secs(1))).await;
        }
        // The first answer is a miss; the polls at its end find it stale until its first
        // refresh arrives (this reader had read it only once); from then on the key is
        // refreshed ahead and every poll finds it fresh.
        let first_hit = statuses.iter().position(|s| *s == Status::Hit);
        assert!(first_hit.is_some_and(|i| i <= 3), "{statuses:?}");
        assert!(
            statuses[first_hit.unwrap_or_default()..]
                .iter()
                .all(|s| *s == Status::Hit),
            "{statuses:?}"
        );
        // At most one poll per refresh (one every 3.6 s), plus the follow-ups of the first
        // stale answers.
        let most = 60_000_usize.div_ceil(3_600) + 2;
        assert!(
            statuses.len() <= most,
            "{} polls: {statuses:?}",
            statuses.len()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn keys_nobody_reads_stop_being_refreshed_and_are_dropped_when_expired() {
        let source = Source::default();
        let cache = source.cache(policy());
        get(&cache, "a").await;
        get(&cache, "a").await;
        // Read again at 0 s: refreshed at about 3.6 s; not read since, not refreshed again.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(source.calls(), 2);
        // Kept while it may still be served (stale-if-error: 4 + 60 s after 3.6 s) ...
        assert_eq!(cache.usage(), (1, 3));
        assert_eq!(cache.held(), (1, 0));
        // ... and dropped after.
        tokio::time::sleep(Duration::from_secs(38)).await;
        assert_eq!(cache.usage(), (0, 0));
        assert_eq!(cache.held(), (0, 0));
        assert_eq!(source.calls(), 2);
        assert_eq!(seen(&get(&cache, "a").await), (Status::Miss, "a 3"));
    }

    #[tokio::test(start_paused = true)]
    async fn read_again_within_the_stale_window_it_is_served_stale_and_refreshed() {
        let source = Source::default();
        let cache = source.cache(policy());
        get(&cache, "a").await;
        // Not read again, not refreshed: its answer (from 0 s) is stale from 4 s.
        tokio::time::sleep(Duration::from_secs(12)).await;
        for _ in 0..5 {
            let stale = get(&cache, "a").await;
            assert_eq!(seen(&stale), (Status::Stale, "a 1"));
            assert_eq!(stale.age.as_secs(), 12, "{stale:?}");
        }
        settle().await;
        assert_eq!(source.calls(), 2, "one refresh for five stale reads");
        assert_eq!(seen(&get(&cache, "a").await), (Status::Hit, "a 2"));
        // Being read again, it is refreshed ahead again.
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(seen(&get(&cache, "a").await), (Status::Hit, "a 3"));
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_stale_window_the_caller_waits_for_a_new_answer() {
        let source = Source::default();
        let cache = source.cache(policy());
        get(&cache, "a").await;
        get(&cache, "a").await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        let again = get(&cache, "a").await;
        assert_eq!(seen(&again), (Status::Miss, "a 3"));
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
        get(&cache, "a").await;
        source.fail(true);
        // The refreshes at 3.6 s and 7.2 s (read within 10 s) fail; the answer is kept.
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
        tokio::time::sleep(Duration::from_secs(1)).await;
        get(&cache, "a").await;
        tokio::time::sleep(Duration::from_secs(4)).await;
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
        // Four answers read again are protected; a fifth demotes the least recently read.
        let cache = source.cache(Policy {
            max_entries: 5,
            ..policy()
        });
        let twice = |key| {
            let cache = cache.clone();
            async move {
                get(&cache, key).await;
                get(&cache, key).await;
            }
        };
        twice("a").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        twice("b").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        get(&cache, "a").await;
        // a is refreshed at 3.6 s and b at 4.6 s, but a was read last.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(source.calls(), 4);
        for key in ["c", "d", "e"] {
            twice(key).await;
        }
        get(&cache, "f").await;
        assert_eq!(cache.usage().0, 5);
        assert_eq!(get(&cache, "a").await.status, Status::Hit);
        assert_eq!(get(&cache, "b").await.status, Status::Miss);
    }

    /// A key of its own that lives as long as the test, for many distinct keys.
    fn key(i: usize) -> &'static str {
        Box::leak(format!("k{i}").into_boxed_str())
    }

    #[tokio::test(start_paused = true)]
    async fn ten_thousand_one_off_keys_stay_within_the_bounds_and_do_not_push_out_keys_read_again()
    {
        let source = Source::default();
        let cache = source.cache(Policy {
            fresh: Duration::from_secs(3600),
            max_entries: 100,
            ..policy()
        });
        for key in ["a", "b"] {
            get(&cache, key).await;
            get(&cache, key).await;
        }
        let mut most = 0;
        for i in 0..10_000 {
            assert_eq!(get(&cache, key(i)).await.status, Status::Miss);
            most = most.max(cache.held().0);
        }
        assert_eq!(source.calls(), 10_002);
        assert_eq!(most, 100, "keys held at most");
        assert_eq!(cache.usage().0, 100);
        assert_eq!(get(&cache, "a").await.status, Status::Hit);
        assert_eq!(get(&cache, "b").await.status, Status::Hit);
        // One-off keys start no refreshes ahead (nor do a and b, not read within 10 s of
        // their refresh being due).
        tokio::time::sleep(Duration::from_secs(7200)).await;
        assert_eq!(source.calls(), 10_002);
    }

    #[tokio::test(start_paused = true)]
    async fn beyond_max_fetches_a_miss_is_shed_unless_a_stale_answer_stands_in() {
        let source = Source::default();
        let cache = source.cache(Policy {
            max_fetches: 2,
            ..policy()
        });
        get(&cache, "kept").await;
        // Past fresh and stale-while-revalidate (14 s), within stale-if-error (64 s).
        tokio::time::sleep(Duration::from_secs(20)).await;
        let (a, b, again, c, kept) = futures::join!(
            cache.get("a"),
            cache.get("b"),
            cache.get("a"),
            cache.get("c"),
            async {
                assert_eq!(cache.held(), (3, 2), "a, b and kept; two fetches");
                cache.get("kept").await
            },
        );
        assert_eq!(seen(&a.expect("fetched")), (Status::Miss, "a 2"));
        assert_eq!(seen(&b.expect("fetched")), (Status::Miss, "b 3"));
        let again = again.expect("waited for the running fetch");
        assert!(again.coalesced, "{again:?}");
        assert!(matches!(c, Err(CacheError::Overloaded)), "{c:?}");
        let kept = kept.expect("the stale answer stands in");
        assert_eq!(seen(&kept), (Status::Stale, "kept 1"));
        assert_eq!(source.calls(), 3);
        // Nothing is held for the shed key; once the fetches end, it is fetched.
        assert_eq!(cache.held(), (3, 0));
        assert_eq!(seen(&get(&cache, "c").await), (Status::Miss, "c 4"));
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
