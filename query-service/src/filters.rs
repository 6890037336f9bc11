//! Request parsing and validation: the dashboard filters from a JSON body or a query string,
//! checked field by field, and the normalised cache key of each dashboard part. Pure: no
//! HTTP, no database.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

/// Default number of rows in the limited parts.
pub const DEFAULT_LIMIT: u32 = 20;
/// Most rows a request may ask for.
pub const MAX_LIMIT: u32 = 1000;
/// Default time window: one hour.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(3600);
/// Shortest time window: one minute.
pub const MIN_WINDOW: Duration = Duration::from_secs(60);
/// Longest time window: 30 days.
pub const MAX_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);
/// Longest host or pod name (a DNS subdomain).
pub const MAX_NAME_LENGTH: usize = 253;
/// Longest namespace name (a DNS label).
pub const MAX_NAMESPACE_LENGTH: usize = 63;
/// The steps a window is rounded to: the longest of them at most a twelfth of the window,
/// so that a window moves by at most 1/24 of itself and the windows between one minute and
/// 30 days are a few hundred cache keys, not millions.
pub const WINDOW_STEPS: [Duration; 8] = [
    Duration::from_secs(5),
    Duration::from_secs(15),
    Duration::from_secs(60),
    Duration::from_secs(300),
    Duration::from_secs(900),
    Duration::from_secs(3600),
    Duration::from_secs(6 * 3600),
    Duration::from_secs(86400),
];

/// The metric top processes are ranked by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TopMetric {
    /// Average CPU usage over the window.
    #[default]
    Cpu,
    /// Average resident memory over the window.
    Memory,
}

impl TopMetric {
    /// The name as the API and the SQL spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            TopMetric::Cpu => "cpu",
            TopMetric::Memory => "memory",
        }
    }
}

/// What the service answers from its cache: the four parts of the dashboard (its batch),
/// the process search and a pod's processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Part {
    /// Latest sample of each host process.
    HostProcessMetrics,
    /// Per-host summary of the node metrics.
    HostOverallMetrics,
    /// Processes ranked by average CPU or memory.
    TopProcesses,
    /// Per-pod CPU and memory.
    VmMetrics,
    /// Processes whose command line or name contains a text, at their latest sample.
    ProcessSearch,
    /// One pod's processes by container, over the window.
    PodProcesses,
    /// One process of a pod's container, followed by its command across restarts.
    ProcessHistory,
    /// Each node's metrics over the window, in buckets.
    HostHistory,
}

impl Part {
    /// The parts of the batch answer, in its order.
    pub const BATCH: [Part; 4] = [
        Part::HostProcessMetrics,
        Part::HostOverallMetrics,
        Part::TopProcesses,
        Part::VmMetrics,
    ];

    /// The part's name in the batch answer and in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Part::HostProcessMetrics => "host_process_metrics",
            Part::HostOverallMetrics => "host_overall_metrics",
            Part::TopProcesses => "top_processes",
            Part::VmMetrics => "vm_metrics",
            Part::ProcessSearch => "process_search",
            Part::PodProcesses => "pod_processes",
            Part::ProcessHistory => "process_history",
            Part::HostHistory => "host_history",
        }
    }
}

/// A request that does not pass validation: which field, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("{field}: {error}")]
pub struct InvalidInput {
    /// What is wrong.
    pub error: String,
    /// The offending field (`body` or `query` when the document as a whole is wrong).
    pub field: String,
}

impl InvalidInput {
    fn new(field: &str, error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            field: field.to_owned(),
        }
    }
}

/// A time window as given: whole seconds, or a duration string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowInput(String);

impl<'de> Deserialize<'de> for WindowInput {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct WindowVisitor;
        impl Visitor<'_> for WindowVisitor {
            type Value = WindowInput;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("whole seconds or a duration such as \"15m\", \"1h\" or \"7d\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<WindowInput, E> {
                Ok(WindowInput(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<WindowInput, E> {
                Ok(WindowInput(v.to_string()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<WindowInput, E> {
                Ok(WindowInput(v.to_owned()))
            }
        }
        deserializer.deserialize_any(WindowVisitor)
    }
}

/// The filters as the client sends them: the JSON body of the batch request, or the query
/// string of the individual endpoints. Unknown fields are rejected.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFilters {
    /// Rows per limited part, `1..=1000`.
    pub limit: Option<u32>,
    /// What top processes are ranked by.
    pub metric: Option<TopMetric>,
    /// The time window: whole seconds or `<n>s|m|h|d`.
    pub window: Option<WindowInput>,
    /// Only this host.
    pub host: Option<String>,
    /// Only pods in this namespace (VM metrics).
    pub namespace: Option<String>,
}

/// Validated filters.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Filters {
    /// Rows per limited part.
    pub limit: u32,
    /// What top processes are ranked by.
    pub metric: TopMetric,
    /// The time window, in whole seconds.
    pub window_seconds: u32,
    /// Only this host.
    pub host: Option<String>,
    /// Only pods in this namespace.
    pub namespace: Option<String>,
}

/// The normalised parameters of one part: only those that change its answer, so that equal
/// requests share a cache entry whatever the order or the irrelevant fields.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PartKey {
    /// Which part.
    pub part: Part,
    /// Rows, for the limited parts.
    pub limit: Option<u32>,
    /// Ranking metric, for top processes.
    pub metric: Option<TopMetric>,
    /// The time window, in whole seconds.
    pub window_seconds: u32,
    /// Only this host.
    pub host: Option<String>,
    /// Only pods in this namespace, for VM metrics and a pod's processes.
    pub namespace: Option<String>,
    /// The text searched for (trimmed, ASCII letters lower-cased), for the process search.
    pub search: Option<String>,
    /// The pod, for a pod's processes and a process's history.
    pub pod: Option<String>,
    /// The container's name, for a process's history.
    pub container: Option<String>,
    /// The command followed, for a process's history.
    pub command: Option<String>,
}

impl Filters {
    /// The cache key of `part` (one of [`Part::BATCH`]) under these filters. The process
    /// search and a pod's processes have parameters of their own ([`RawSearch`], [`RawPod`]).
    pub fn key(&self, part: Part) -> PartKey {
        let limited = part != Part::HostOverallMetrics;
        PartKey {
            part,
            limit: limited.then_some(self.limit),
            metric: (part == Part::TopProcesses).then_some(self.metric),
            window_seconds: self.window_seconds,
            host: self.host.clone(),
            namespace: (part == Part::VmMetrics)
                .then(|| self.namespace.clone())
                .flatten(),
            search: None,
            pod: None,
            container: None,
            command: None,
        }
    }
}

impl RawFilters {
    /// Checks every field and fills in the defaults.
    pub fn validate(self) -> Result<Filters, InvalidInput> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(InvalidInput::new(
                "limit",
                format!("must be between 1 and {MAX_LIMIT}"),
            ));
        }
        Ok(Filters {
            limit,
            metric: self.metric.unwrap_or_default(),
            window_seconds: bounded_window(self.window, DEFAULT_WINDOW, MAX_WINDOW)?,
            host: host(self.host)?,
            namespace: namespace(self.namespace)?,
        })
    }

    /// Parses a JSON document (the batch body).
    pub fn from_json(body: &[u8]) -> Result<Self, InvalidInput> {
        // Serde would also take a struct from an array of its fields, in order.
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(InvalidInput::new("body", "expected a JSON object"));
        }
        let mut deserializer = serde_json::Deserializer::from_slice(body);
        let filters: Self = serde_path_to_error::deserialize(&mut deserializer)
            .map_err(|e| field_error(e, "body"))?;
        deserializer
            .end()
            .map_err(|e| InvalidInput::new("body", e.to_string()))?;
        Ok(filters)
    }

    /// Parses a query string (without the `?`).
    pub fn from_query(query: &str) -> Result<Self, InvalidInput> {
        parse_query(query)
    }
}

/// Default rows of a process search.
pub const DEFAULT_SEARCH_LIMIT: u32 = 20;
/// Most rows a process search may ask for.
pub const MAX_SEARCH_LIMIT: u32 = 100;
/// Longest text a process search may look for, in characters.
pub const MAX_SEARCH_LENGTH: usize = 200;
/// Default window of a process search: the processes seen in the last 15 minutes.
pub const DEFAULT_SEARCH_WINDOW: Duration = Duration::from_secs(900);
/// Longest window of a pod's processes: one day, which bounds the rows it reads. A process
/// search reads one row per process whatever its window, and may look back [`MAX_WINDOW`].
pub const MAX_POD_WINDOW: Duration = Duration::from_secs(86400);

/// The parameters of `GET /api/process-search` as given. Unknown fields are rejected.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSearch {
    /// The text a command line (or process name) must contain, case-insensitively.
    pub q: Option<String>,
    /// Rows, `1..=100`.
    pub limit: Option<u32>,
    /// Processes seen within this window: whole seconds or `<n>s|m|h|d`, at most 30 days.
    pub window: Option<WindowInput>,
    /// Only this host.
    pub host: Option<String>,
}

impl RawSearch {
    /// Parses a query string (without the `?`).
    pub fn from_query(query: &str) -> Result<Self, InvalidInput> {
        parse_query(query)
    }

    /// Checks every field and gives the cache key of the search: the text trimmed and its
    /// ASCII letters lower-cased (the match ignores case), so that equal searches share it.
    pub fn validate(self) -> Result<PartKey, InvalidInput> {
        let search = self.q.as_deref().map(str::trim).unwrap_or_default();
        if search.is_empty() || search.chars().count() > MAX_SEARCH_LENGTH {
            return Err(InvalidInput::new(
                "q",
                format!("give 1 to {MAX_SEARCH_LENGTH} characters to search for"),
            ));
        }
        if search.chars().any(char::is_control) {
            return Err(InvalidInput::new(
                "q",
                "must not contain control characters",
            ));
        }
        let limit = self.limit.unwrap_or(DEFAULT_SEARCH_LIMIT);
        if !(1..=MAX_SEARCH_LIMIT).contains(&limit) {
            return Err(InvalidInput::new(
                "limit",
                format!("must be between 1 and {MAX_SEARCH_LIMIT}"),
            ));
        }
        Ok(PartKey {
            part: Part::ProcessSearch,
            limit: Some(limit),
            metric: None,
            window_seconds: bounded_window(self.window, DEFAULT_SEARCH_WINDOW, MAX_WINDOW)?,
            host: host(self.host)?,
            namespace: None,
            search: Some(search.to_ascii_lowercase()),
            pod: None,
            container: None,
            command: None,
        })
    }
}

/// The parameters of `GET /api/pod-processes` as given. Unknown fields are rejected.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPod {
    /// The pod's namespace.
    pub namespace: Option<String>,
    /// The pod's name.
    pub pod: Option<String>,
    /// The window: whole seconds or `<n>s|m|h|d`, at most a day.
    pub window: Option<WindowInput>,
}

impl RawPod {
    /// Parses a query string (without the `?`).
    pub fn from_query(query: &str) -> Result<Self, InvalidInput> {
        parse_query(query)
    }

    /// Checks every field and gives the cache key of the pod's processes.
    pub fn validate(self) -> Result<PartKey, InvalidInput> {
        let required = |value: Option<String>, field: &str| {
            value.ok_or_else(|| InvalidInput::new(field, format!("required: the pod's {field}")))
        };
        let namespace = namespace(Some(required(self.namespace, "namespace")?))?;
        let pod = pod(Some(required(self.pod, "pod")?))?;
        Ok(PartKey {
            part: Part::PodProcesses,
            limit: None,
            metric: None,
            window_seconds: bounded_window(self.window, DEFAULT_WINDOW, MAX_POD_WINDOW)?,
            host: None,
            namespace,
            search: None,
            pod,
            container: None,
            command: None,
        })
    }
}

/// Longest command a process's history may follow, in characters (the collector's longest
/// stored command line).
pub const MAX_COMMAND_LENGTH: usize = 4096;

/// The parameters of `GET /api/process-history` as given. Unknown fields are rejected.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHistory {
    /// The pod's namespace.
    pub namespace: Option<String>,
    /// The pod's name.
    pub pod: Option<String>,
    /// The container's name.
    pub container: Option<String>,
    /// The process's command line as recorded (its name when no command line is).
    pub command: Option<String>,
    /// The window: whole seconds or `<n>s|m|h|d`, at most 30 days.
    pub window: Option<WindowInput>,
}

impl RawHistory {
    /// Parses a query string (without the `?`).
    pub fn from_query(query: &str) -> Result<Self, InvalidInput> {
        parse_query(query)
    }

    /// Checks every field and gives the cache key of the history.
    pub fn validate(self) -> Result<PartKey, InvalidInput> {
        let required = |value: Option<String>, field: &str, what: &str| {
            value.ok_or_else(|| InvalidInput::new(field, format!("required: the {what}")))
        };
        let command = match self.command {
            Some(c) if c.is_empty() || c.chars().count() > MAX_COMMAND_LENGTH => {
                return Err(InvalidInput::new(
                    "command",
                    format!(
                        "give the command line as recorded, 1 to {MAX_COMMAND_LENGTH} characters"
                    ),
                ));
            }
            Some(c) if c.chars().any(char::is_control) => {
                return Err(InvalidInput::new(
                    "command",
                    "must not contain control characters",
                ));
            }
            Some(c) => c,
            None => {
                return Err(InvalidInput::new(
                    "command",
                    "required: the process's command line as recorded (its name when none is)",
                ));
            }
        };
        Ok(PartKey {
            part: Part::ProcessHistory,
            limit: None,
            metric: None,
            window_seconds: bounded_window(self.window, DEFAULT_WINDOW, MAX_WINDOW)?,
            host: None,
            namespace: namespace(Some(required(
                self.namespace,
                "namespace",
                "pod's namespace",
            )?))?,
            search: None,
            pod: pod(Some(required(self.pod, "pod", "pod's name")?))?,
            container: container(Some(required(
                self.container,
                "container",
                "container's name",
            )?))?,
            command: Some(command),
        })
    }
}

/// The parameters of `GET /api/host-history` as given. Unknown fields are rejected.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHostHistory {
    /// The window: whole seconds or `<n>s|m|h|d`, at most 30 days.
    pub window: Option<WindowInput>,
    /// Only this host.
    pub host: Option<String>,
}

impl RawHostHistory {
    /// Parses a query string (without the `?`).
    pub fn from_query(query: &str) -> Result<Self, InvalidInput> {
        parse_query(query)
    }

    /// Checks every field and gives the cache key of the nodes' history.
    pub fn validate(self) -> Result<PartKey, InvalidInput> {
        Ok(PartKey {
            part: Part::HostHistory,
            limit: None,
            metric: None,
            window_seconds: bounded_window(self.window, DEFAULT_WINDOW, MAX_WINDOW)?,
            host: host(self.host)?,
            namespace: None,
            search: None,
            pod: None,
            container: None,
            command: None,
        })
    }
}

/// A window of [`MIN_WINDOW`] to `max` (whole days: [`MAX_WINDOW`] or [`MAX_POD_WINDOW`]),
/// `default` when absent, [`aligned`], in whole seconds.
fn bounded_window(
    window: Option<WindowInput>,
    default: Duration,
    max: Duration,
) -> Result<u32, InvalidInput> {
    let window = match window {
        Some(WindowInput(text)) => parse_window(&text).ok_or_else(|| {
            InvalidInput::new(
                "window",
                "expected whole seconds or a duration such as 15m, 1h or 1d",
            )
        })?,
        None => default,
    };
    if window < MIN_WINDOW || window > max {
        let days = max.as_secs() / 86_400;
        let longest = match days {
            1 => "one day (1d)".to_owned(),
            days => format!("{days} days ({days}d)"),
        };
        return Err(InvalidInput::new(
            "window",
            format!("must be between 60 seconds (1m) and {longest}"),
        ));
    }
    Ok(u32::try_from(aligned(window).as_secs()).expect("at most MAX_WINDOW"))
}

/// `window` rounded to the nearest multiple of its step in [`WINDOW_STEPS`] (halves
/// upwards): equal dashboards asking for nearly equal windows share one cache key, and a
/// client sweeping windows second by second finds a few hundred keys. Windows from one
/// minute to 30 days stay within those bounds.
pub fn aligned(window: Duration) -> Duration {
    let step = WINDOW_STEPS
        .iter()
        .rev()
        .find(|step| **step * 12 <= window)
        .unwrap_or(&WINDOW_STEPS[0])
        .as_secs();
    let seconds = window.as_secs();
    Duration::from_secs((seconds + step / 2) / step * step)
}

/// Parses `3600`, `90s`, `15m`, `1h` or `7d`.
pub fn parse_window(text: &str) -> Option<Duration> {
    let (digits, unit) = match text.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&text[..i], c),
        _ => (text, 's'),
    };
    if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let unit = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86400,
        _ => return None,
    };
    Some(Duration::from_secs(n * unit))
}

/// A host filter: absent, or a host name (a Kubernetes node name or the collector's host
/// name): 1 to 253 ASCII letters, digits, `-`, `.` and `_`.
fn host(value: Option<String>) -> Result<Option<String>, InvalidInput> {
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
    checked(
        value,
        "host",
        MAX_NAME_LENGTH,
        valid,
        "ASCII letters, digits, '-', '.' and '_'",
    )
}

/// A namespace filter: absent, or a Kubernetes namespace name (a DNS label): 1 to 63
/// lower-case letters, digits and `-`.
fn namespace(value: Option<String>) -> Result<Option<String>, InvalidInput> {
    let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    checked(
        value,
        "namespace",
        MAX_NAMESPACE_LENGTH,
        valid,
        "lower-case letters, digits and '-'",
    )
}

/// A pod name (a DNS subdomain): 1 to 253 lower-case letters, digits, `-` and `.`.
fn pod(value: Option<String>) -> Result<Option<String>, InvalidInput> {
    let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.');
    checked(
        value,
        "pod",
        MAX_NAME_LENGTH,
        valid,
        "lower-case letters, digits, '-' and '.'",
    )
}

/// A container name (a DNS label): 1 to 63 lower-case letters, digits and `-`.
fn container(value: Option<String>) -> Result<Option<String>, InvalidInput> {
    let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    checked(
        value,
        "container",
        MAX_NAMESPACE_LENGTH,
        valid,
        "lower-case letters, digits and '-'",
    )
}

/// A name of at most `max` characters each `valid` (`allowed` says which, for the error):
/// names outside what Kubernetes and the collector write never reach the cache or the
/// database.
fn checked(
    value: Option<String>,
    field: &str,
    max: usize,
    valid: impl Fn(char) -> bool,
    allowed: &str,
) -> Result<Option<String>, InvalidInput> {
    match value {
        None => Ok(None),
        Some(v) if v.is_empty() || v.len() > max => Err(InvalidInput::new(
            field,
            format!("must be 1 to {max} characters"),
        )),
        Some(v) if !v.chars().all(valid) => {
            Err(InvalidInput::new(field, format!("may hold only {allowed}")))
        }
        Some(v) => Ok(Some(v)),
    }
}

/// Deserialises a query string (without the `?`) into a route's raw parameters, naming the
/// field an error is about.
fn parse_query<T: serde::de::DeserializeOwned>(query: &str) -> Result<T, InvalidInput> {
    let deserializer =
        serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(deserializer).map_err(|e| field_error(e, "query"))
}

/// Names the field a deserialisation error is about: the field at its path, or for an
/// unknown or duplicate field (reported at the document level) the name in the message, or
/// else the document itself.
fn field_error<E: fmt::Display>(
    error: serde_path_to_error::Error<E>,
    document: &str,
) -> InvalidInput {
    const FIELDS: [&str; 9] = [
        "limit",
        "metric",
        "window",
        "host",
        "namespace",
        "q",
        "pod",
        "container",
        "command",
    ];
    let message = error.inner().to_string();
    let path = error.path().to_string();
    let field = if FIELDS.contains(&path.as_str()) {
        path
    } else {
        ["unknown field `", "duplicate field `"]
            .iter()
            .find_map(|prefix| {
                let rest = message.strip_prefix(prefix)?;
                Some(rest[..rest.find('`')?].to_owned())
            })
            .unwrap_or_else(|| document.to_owned())
    };
    InvalidInput {
        error: message,
        field,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(q: &str) -> Result<Filters, InvalidInput> {
        RawFilters::from_query(q)?.validate()
    }

    fn json(body: &str) -> Result<Filters, InvalidInput> {
        RawFilters::from_json(body.as_bytes())?.validate()
    }

    fn field(result: Result<Filters, InvalidInput>) -> String {
        result.expect_err("rejected").field
    }

    #[test]
    fn defaults_fill_an_empty_request() {
        let expected = Filters {
            limit: DEFAULT_LIMIT,
            metric: TopMetric::Cpu,
            window_seconds: 3600,
            host: None,
            namespace: None,
        };
        assert_eq!(query("").unwrap(), expected);
        assert_eq!(json("{}").unwrap(), expected);
    }

    #[test]
    fn query_string_and_json_give_the_same_filters() {
        let from_query = query("window=15m&limit=5&metric=memory&host=node-1&namespace=web");
        let from_json =
            json(r#"{"namespace":"web","host":"node-1","metric":"memory","limit":5,"window":900}"#);
        assert_eq!(from_query.clone().unwrap(), from_json.unwrap());
        assert_eq!(from_query.unwrap().window_seconds, 900);
    }

    #[test]
    fn windows_are_seconds_or_durations() {
        assert_eq!(parse_window("3600"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_window("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_window("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_window("6h"), Some(Duration::from_secs(21600)));
        assert_eq!(parse_window("7d"), Some(Duration::from_secs(604_800)));
        for bad in ["", "h", "1.5h", "-1h", "1w", "1hh", " 1h", "9999999999d"] {
            assert_eq!(parse_window(bad), None, "{bad}");
        }
        assert_eq!(
            json(r#"{"window":"30d"}"#).unwrap().window_seconds,
            2_592_000
        );
    }

    #[test]
    fn a_window_past_its_parts_longest_says_that_longest() {
        let error = |result: Result<u32, InvalidInput>| result.expect_err("rejected").error;
        assert_eq!(
            error(query("window=31d").map(|f| f.window_seconds)),
            "must be between 60 seconds (1m) and 30 days (30d)"
        );
        let history =
            RawHistory::from_query("namespace=web&pod=api-0&container=api&command=x&window=31d")
                .and_then(RawHistory::validate);
        assert_eq!(
            error(history.map(|key| key.window_seconds)),
            "must be between 60 seconds (1m) and 30 days (30d)"
        );
        let search = RawSearch::from_query("q=x&window=31d").and_then(RawSearch::validate);
        assert_eq!(
            error(search.map(|key| key.window_seconds)),
            "must be between 60 seconds (1m) and 30 days (30d)"
        );
        let pod =
            RawPod::from_query("namespace=web&pod=api-0&window=2d").and_then(RawPod::validate);
        assert_eq!(
            error(pod.map(|key| key.window_seconds)),
            "must be between 60 seconds (1m) and one day (1d)"
        );
    }

    #[test]
    fn every_bad_field_is_named() {
        assert_eq!(field(query("limit=0")), "limit");
        assert_eq!(field(query("limit=1001")), "limit");
        assert_eq!(field(query("limit=ten")), "limit");
        assert_eq!(field(json(r#"{"limit":-1}"#)), "limit");
        assert_eq!(field(json(r#"{"limit":"5"}"#)), "limit");
        assert_eq!(field(query("metric=disk")), "metric");
        assert_eq!(field(json(r#"{"metric":"CPU"}"#)), "metric");
        assert_eq!(field(query("window=31d")), "window");
        assert_eq!(field(query("window=59")), "window");
        assert_eq!(field(query("window=1w")), "window");
        assert_eq!(field(json(r#"{"window":true}"#)), "window");
        assert_eq!(field(query("host=")), "host");
        assert_eq!(field(query(&format!("host={}", "a".repeat(254)))), "host");
        assert_eq!(field(json(r#"{"namespace":"a\u0000b"}"#)), "namespace");
        assert_eq!(field(query("colour=red")), "colour");
        assert_eq!(field(json(r#"{"limit":5,"colour":"red"}"#)), "colour");
        assert_eq!(field(query("limit=1&limit=2")), "limit");
        assert_eq!(field(json("[1,2]")), "body");
        assert_eq!(field(json("{\"limit\":5")), "body");
        assert_eq!(field(json("{} {}")), "body");
    }

    #[test]
    fn a_search_is_checked_field_by_field_and_its_key_normalised() {
        let search = |q: &str| RawSearch::from_query(q).and_then(RawSearch::validate);
        let a = search("q=%20Postgres%20&window=1h&limit=5").unwrap();
        let b = search("limit=5&window=3600&q=postgres").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.search.as_deref(), Some("postgres"));
        assert_eq!(search("q=x").unwrap().window_seconds, 900);
        assert_eq!(search("q=x&window=30d").unwrap().window_seconds, 30 * 86400);
        assert_eq!(search("q=x").unwrap().limit, Some(DEFAULT_SEARCH_LIMIT));
        for (query, field) in [
            ("", "q"),
            ("q=%20%20", "q"),
            (&format!("q={}", "a".repeat(201)), "q"),
            ("q=a%00b", "q"),
            ("q=x&limit=0", "limit"),
            ("q=x&limit=101", "limit"),
            ("q=x&window=31d", "window"),
            ("q=x&window=soon", "window"),
            ("q=x&host=", "host"),
            ("q=x&metric=cpu", "metric"),
            ("q=x&q=y", "q"),
        ] {
            assert_eq!(search(query).expect_err(query).field, field, "{query}");
        }
    }

    #[test]
    fn a_pod_needs_its_namespace_and_name() {
        let pod = |q: &str| RawPod::from_query(q).and_then(RawPod::validate);
        let key = pod("namespace=web&pod=api-1").unwrap();
        assert_eq!(
            (
                key.namespace.as_deref(),
                key.pod.as_deref(),
                key.window_seconds
            ),
            (Some("web"), Some("api-1"), 3600)
        );
        for (query, field) in [
            ("pod=api-1", "namespace"),
            ("namespace=web", "pod"),
            ("namespace=web&pod=", "pod"),
            ("namespace=web&pod=a&window=7d", "window"),
            ("namespace=web&pod=a&limit=5", "limit"),
        ] {
            assert_eq!(pod(query).expect_err(query).field, field, "{query}");
        }
    }

    #[test]
    fn a_history_needs_the_pod_the_container_and_the_command() {
        let history = |q: &str| RawHistory::from_query(q).and_then(RawHistory::validate);
        let key = history(
            "namespace=web&pod=api-1&container=app&command=java%20-jar%20app.jar&window=30d",
        )
        .unwrap();
        assert_eq!(
            (
                key.part,
                key.namespace.as_deref(),
                key.pod.as_deref(),
                key.container.as_deref(),
                key.command.as_deref(),
                key.window_seconds
            ),
            (
                Part::ProcessHistory,
                Some("web"),
                Some("api-1"),
                Some("app"),
                Some("java -jar app.jar"),
                2_592_000
            )
        );
        let base = "namespace=web&pod=api-1&container=app";
        assert_eq!(
            history(&format!("{base}&command=x"))
                .unwrap()
                .window_seconds,
            3600
        );
        for (query, field) in [
            ("pod=a&container=app&command=x", "namespace"),
            ("namespace=web&container=app&command=x", "pod"),
            ("namespace=web&pod=a&command=x", "container"),
            ("namespace=web&pod=a&container=&command=x", "container"),
            (base, "command"),
            (&format!("{base}&command="), "command"),
            (&format!("{base}&command=a%0Ab"), "command"),
            (&format!("{base}&command={}", "a".repeat(4097)), "command"),
            (&format!("{base}&command=x&window=31d"), "window"),
            (&format!("{base}&command=x&window=soon"), "window"),
            (&format!("{base}&command=x&pid=5"), "pid"),
            (&format!("{base}&command=x&command=y"), "command"),
        ] {
            assert_eq!(history(query).expect_err(query).field, field, "{query}");
        }
    }

    #[test]
    fn a_nodes_history_takes_a_window_of_up_to_30_days_and_a_host() {
        let history = |q: &str| RawHostHistory::from_query(q).and_then(RawHostHistory::validate);
        let key = history("window=30d&host=node-1").unwrap();
        assert_eq!(
            (key.part, key.window_seconds, key.host.as_deref()),
            (Part::HostHistory, 2_592_000, Some("node-1"))
        );
        assert_eq!(history("").unwrap().window_seconds, 3600);
        assert_eq!(history("host=a&window=1h"), history("window=3600&host=a"));
        for (query, field) in [
            ("window=31d", "window"),
            ("window=59", "window"),
            ("window=soon", "window"),
            ("host=", "host"),
            ("host=a%20b", "host"),
            ("limit=5", "limit"),
            ("window=1h&window=2h", "window"),
        ] {
            assert_eq!(history(query).expect_err(query).field, field, "{query}");
        }
    }

    #[test]
    fn windows_are_rounded_to_a_step_of_at_most_a_twelfth_of_them() {
        let window = |q: &str| query(q).unwrap().window_seconds;
        assert_eq!(window("window=60"), 60);
        assert_eq!(window("window=62"), 60);
        assert_eq!(window("window=63"), 65);
        assert_eq!(window("window=90s"), 90);
        assert_eq!(window("window=3599"), 3600);
        assert_eq!(window("window=3751"), 3900);
        assert_eq!(window("window=1h"), 3600);
        assert_eq!(window("window=7h"), 25_200);
        assert_eq!(window("window=100000"), 100_800);
        assert_eq!(window("window=30d"), 2_592_000);
        let search = |q: &str| RawSearch::from_query(q).and_then(RawSearch::validate);
        assert_eq!(search("q=x&window=86399").unwrap().window_seconds, 86400);
        for seconds in MIN_WINDOW.as_secs()..=MAX_WINDOW.as_secs() {
            let rounded = aligned(Duration::from_secs(seconds)).as_secs();
            assert!((MIN_WINDOW.as_secs()..=MAX_WINDOW.as_secs()).contains(&rounded));
            assert!(
                rounded.abs_diff(seconds) * 24 <= seconds,
                "{seconds} to {rounded}"
            );
        }
    }

    #[test]
    fn ten_thousand_distinct_windows_are_a_few_hundred_keys() {
        // Ten thousand distinct windows spread over the whole range.
        let keys: std::collections::HashSet<_> = (0..10_000u64)
            .map(|i| {
                let filters = query(&format!("window={}", 60 + i * 259)).unwrap();
                filters.key(Part::TopProcesses)
            })
            .collect();
        let all: std::collections::HashSet<_> = (MIN_WINDOW.as_secs()..=MAX_WINDOW.as_secs())
            .map(|s| aligned(Duration::from_secs(s)))
            .collect();
        assert!(keys.len() <= all.len(), "{} keys", keys.len());
        assert!(all.len() < 300, "{} windows in all", all.len());
    }

    #[test]
    fn names_are_what_kubernetes_and_the_collector_write() {
        let host = |h: &str| query(&format!("host={h}")).map(|f| f.host);
        assert_eq!(
            host("node-1.example_A").unwrap().as_deref(),
            Some("node-1.example_A")
        );
        for bad in ["a%20b", "a/b", "%C3%A9t%C3%A9", "a%27--"] {
            assert_eq!(host(bad).expect_err(bad).field, "host", "{bad}");
        }
        let namespace = |n: &str| query(&format!("namespace={n}")).map(|f| f.namespace);
        assert_eq!(
            namespace("kube-system").unwrap().as_deref(),
            Some("kube-system")
        );
        for bad in ["Web", "a.b", "a_b", &"a".repeat(64)] {
            assert_eq!(namespace(bad).expect_err(bad).field, "namespace", "{bad}");
        }
        let pod = |q: &str| RawPod::from_query(q).and_then(RawPod::validate);
        assert!(pod("namespace=web&pod=api-1.x").is_ok());
        assert_eq!(
            pod("namespace=web&pod=API").expect_err("upper").field,
            "pod"
        );
        assert_eq!(
            pod("namespace=Web&pod=api").expect_err("upper").field,
            "namespace"
        );
    }

    #[test]
    fn keys_hold_only_what_changes_a_part() {
        let a = query("limit=5&metric=memory&namespace=web&window=1h").unwrap();
        let b = query("window=3600&namespace=db&limit=5").unwrap();
        assert_eq!(
            a.key(Part::HostProcessMetrics),
            b.key(Part::HostProcessMetrics)
        );
        assert_eq!(
            a.key(Part::HostOverallMetrics),
            b.key(Part::HostOverallMetrics)
        );
        assert_ne!(a.key(Part::TopProcesses), b.key(Part::TopProcesses));
        assert_ne!(a.key(Part::VmMetrics), b.key(Part::VmMetrics));
        let c = query("limit=6").unwrap();
        assert_eq!(
            a.key(Part::HostOverallMetrics),
            c.key(Part::HostOverallMetrics)
        );
        assert_ne!(
            a.key(Part::HostProcessMetrics),
            c.key(Part::HostProcessMetrics)
        );
    }
}
