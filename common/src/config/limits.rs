//! The bounds of every bounded setting the operator passes from a MetricsStack to a
//! component. The collector's and the query service's validation and the operator's CRD
//! schema all read them from here, so that whatever the API server admits the components
//! accept (a value the CRD allows and a component refuses would crash-loop a whole fleet).

use super::ConfigError;
use crate::database::PoolSettings;

/// An inclusive range of whole numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// The smallest value allowed.
    pub min: u32,
    /// The largest value allowed.
    pub max: u32,
}

impl Bounds {
    const fn new(min: u32, max: u32) -> Self {
        Self { min, max }
    }

    /// Whether `value` is within the bounds.
    pub fn contains(self, value: u64) -> bool {
        (u64::from(self.min)..=u64::from(self.max)).contains(&value)
    }

    /// `Ok` when `value` (of the setting `setting`, counted in `unit`) is within the
    /// bounds, else the error naming the setting and the range.
    pub fn check(self, setting: &str, unit: &str, value: u64) -> Result<(), ConfigError> {
        if self.contains(value) {
            return Ok(());
        }
        Err(ConfigError::Invalid {
            setting: setting.into(),
            expected: format!("{unit} from {} to {}", self.min, self.max),
            got: value.to_string(),
        })
    }
}

/// Seconds between two samples of a collector.
pub const COLLECTOR_INTERVAL_SECONDS: Bounds = Bounds::new(1, 3_600);
/// How many of the busiest processes (by CPU, by memory) a collector records.
pub const TOP_PROCESSES: Bounds = Bounds::new(0, 1_000);
/// Longest command line stored, in characters.
pub const COMMAND_LINE_LENGTH: Bounds = Bounds::new(16, 8_192);
/// Most rows in one batch insert.
pub const BATCH_ROWS: Bounds = Bounds::new(1, 50_000);
/// Most megabytes of unsent batches a collector keeps on its node's disk.
pub const SPOOL_MEGABYTES: Bounds = Bounds::new(1, 102_400);
/// The size limit of a sidecar collector's spool (its `emptyDir`), in megabytes: room for a
/// few batches at least, and no more than a pod's scratch space should hold.
pub const SIDECAR_SPOOL_MEGABYTES: Bounds = Bounds::new(2, 10_240);
/// A connection pool's most connections.
pub const POOL_MAX_CONNECTIONS: Bounds = Bounds::new(1, 100);
/// A connection pool's connections kept open when idle (also at most its maximum).
pub const POOL_MIN_CONNECTIONS: Bounds = Bounds::new(0, 100);
/// Most answers in the query service's cache: each costs bookkeeping beyond its bytes (its
/// key in the map and the eviction and expiry indexes, up to about 1 KiB with the longest
/// names), which `maxBytes` does not count, so a million would cost up to a gigabyte more.
pub const CACHE_ENTRIES: Bounds = Bounds::new(1, 100_000);
/// Most megabytes of answers in the query service's cache.
pub const CACHE_MEGABYTES: Bounds = Bounds::new(1, 16_384);

/// Bytes in a megabyte, as the spool and cache sizes count them.
pub const MEGABYTE: u64 = 1024 * 1024;

/// Checks the connection counts of the pool set as `setting` (`pool`).
pub fn check_pool(setting: &str, pool: &PoolSettings) -> Result<(), ConfigError> {
    POOL_MAX_CONNECTIONS.check(
        &format!("{setting}.maxConnections"),
        "a count",
        pool.max_connections.into(),
    )?;
    POOL_MIN_CONNECTIONS.check(
        &format!("{setting}.minConnections"),
        "a count",
        pool.min_connections.into(),
    )?;
    if pool.min_connections > pool.max_connections {
        return Err(ConfigError::Invalid {
            setting: format!("{setting}.minConnections"),
            expected: format!("at most {setting}.maxConnections"),
            got: pool.min_connections.to_string(),
        });
    }
    Ok(())
}

/// Checks a size in bytes (of the setting `setting`) against bounds in megabytes.
pub fn check_megabytes(setting: &str, bounds: Bounds, bytes: u64) -> Result<(), ConfigError> {
    let (min, max) = (
        u64::from(bounds.min) * MEGABYTE,
        u64::from(bounds.max) * MEGABYTE,
    );
    if (min..=max).contains(&bytes) {
        return Ok(());
    }
    Err(ConfigError::Invalid {
        setting: setting.into(),
        expected: format!(
            "a size from {min} to {max} bytes ({} to {} MiB)",
            bounds.min, bounds.max
        ),
        got: bytes.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_outside_the_bounds_is_refused_naming_the_setting_and_the_range() {
        assert_eq!(BATCH_ROWS.check("batchSize", "a row count", 50_000), Ok(()));
        let error = BATCH_ROWS
            .check("batchSize", "a row count", 50_001)
            .expect_err("beyond the maximum");
        assert_eq!(
            error.to_string(),
            "invalid setting batchSize: expected a row count from 1 to 50000, got 50001"
        );
    }
}
