//! Durations as users write them in a `MetricsStack`: a whole number and one unit, such as
//! `30s`, `5m`, `1h`, `7d`, `2w` or `1y` (365 days).

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// The pattern every duration matches, checked by the API server at admission.
pub const DURATION_PATTERN: &str = "^[1-9][0-9]{0,6}(s|m|h|d|w|y)$";

/// A positive duration written as a whole number and one unit: `30s`, `5m`, `1h`, `7d`,
/// `2w`, `1y` (a year is 365 days).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Duration(String);

/// A duration that does not match [`DURATION_PATTERN`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {0:?}: expected a whole number and one unit (s, m, h, d, w, y), like 30s, 1h or 90d"
)]
pub struct InvalidDuration(pub String);

impl Duration {
    /// Parses and validates a duration.
    pub fn parse(text: &str) -> Result<Self, InvalidDuration> {
        let duration = Self(text.to_owned());
        duration.seconds()?;
        Ok(duration)
    }

    /// The duration in whole seconds.
    pub fn seconds(&self) -> Result<u64, InvalidDuration> {
        let invalid = || InvalidDuration(self.0.clone());
        let unit_at = self.0.len().checked_sub(1).ok_or_else(invalid)?;
        let (number, unit) = self.0.split_at(unit_at);
        let multiplier = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            "w" => 604_800,
            "y" => 31_536_000,
            _ => return Err(invalid()),
        };
        if number.is_empty()
            || number.len() > 7
            || number.starts_with('0')
            || !number.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(invalid());
        }
        let value: u64 = number.parse().map_err(|_| invalid())?;
        Ok(value * multiplier)
    }

    /// The duration as a `std::time::Duration`.
    pub fn to_std(&self) -> Result<std::time::Duration, InvalidDuration> {
        self.seconds().map(std::time::Duration::from_secs)
    }

    /// The text the user wrote.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": 8,
        })
    }
}

/// A CEL expression giving, in seconds, the duration at `path` (a field that matches
/// [`DURATION_PATTERN`]), so that validation rules can compare durations across fields.
pub fn cel_seconds(path: &str) -> String {
    format!(
        "(int({path}.substring(0, size({path}) - 1)) * \
         {{'s': 1, 'm': 60, 'h': 3600, 'd': 86400, 'w': 604800, 'y': 31536000}}\
         [{path}.substring(size({path}) - 1)])"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit() {
        let cases = [
            ("30s", 30),
            ("5m", 300),
            ("1h", 3_600),
            ("7d", 604_800),
            ("2w", 1_209_600),
            ("1y", 31_536_000),
        ];
        for (text, seconds) in cases {
            assert_eq!(
                Duration::parse(text).map(|d| d.seconds()),
                Ok(Ok(seconds)),
                "{text}"
            );
        }
    }

    #[test]
    fn parser_and_admission_pattern_agree() {
        let pattern = regex::Regex::new(DURATION_PATTERN).expect("the pattern compiles");
        let accepted = ["1s", "30s", "90d", "9999999y"];
        let rejected = [
            "",
            "d",
            "0d",
            "07d",
            "1.5h",
            "1h30m",
            "-1d",
            "7 days",
            "1D",
            "12345678s",
        ];
        for text in accepted {
            assert!(Duration::parse(text).is_ok(), "{text:?} should parse");
            assert!(pattern.is_match(text), "{text:?} should match the pattern");
        }
        for text in rejected {
            assert!(
                Duration::parse(text).is_err(),
                "{text:?} should be rejected"
            );
            assert!(
                !pattern.is_match(text),
                "{text:?} should not match the pattern"
            );
        }
    }
}
