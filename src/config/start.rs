//! Where a partition without a committed offset starts (`start_from`): at the log's start, at
//! its end, or at the first record at or after a time.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Where a partition the group has no committed offset for starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum StartFrom {
    /// At the first record still in the log.
    Earliest,
    /// At the log's end: only records produced after the partition was assigned.
    Latest,
    /// At the first record whose timestamp is at or after this time (milliseconds since the
    /// Unix epoch), found through the broker's time index; at the log's end when there is
    /// none.
    Time(i64),
}

/// A `start_from` that is neither `earliest`, `latest` nor an RFC 3339 time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}`: expected `earliest`, `latest` or an RFC 3339 time such as `2026-12-01T00:00:00Z`")]
pub struct StartFromError(String);

impl FromStr for StartFrom {
    type Err = StartFromError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "earliest" => Ok(StartFrom::Earliest),
            "latest" => Ok(StartFrom::Latest),
            other => {
                let at = OffsetDateTime::parse(other, &Rfc3339)
                    .map_err(|_| StartFromError(text.to_owned()))?;
                let ms = at.unix_timestamp_nanos() / 1_000_000;
                i64::try_from(ms)
                    .map(StartFrom::Time)
                    .map_err(|_| StartFromError(text.to_owned()))
            }
        }
    }
}

impl fmt::Display for StartFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartFrom::Earliest => f.write_str("earliest"),
            StartFrom::Latest => f.write_str("latest"),
            StartFrom::Time(ms) => {
                let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(*ms) * 1_000_000)
                    .ok()
                    .and_then(|t| t.format(&Rfc3339).ok());
                match at {
                    Some(text) => f.write_str(&text),
                    None => write!(f, "{ms} ms since the epoch"),
                }
            }
        }
    }
}

impl TryFrom<String> for StartFrom {
    type Error = StartFromError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<StartFrom> for String {
    fn from(start: StartFrom) -> String {
        start.to_string()
    }
}

impl StartFrom {
    /// librdkafka's `auto.offset.reset` for it: where a partition starts when the time
    /// lookup finds nothing to seek to (`latest` only for [`StartFrom::Latest`]).
    pub fn offset_reset(self) -> &'static str {
        match self {
            StartFrom::Latest => "latest",
            StartFrom::Earliest | StartFrom::Time(_) => "earliest",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_from_reads_and_writes_its_three_forms() {
        assert_eq!("earliest".parse(), Ok(StartFrom::Earliest));
        assert_eq!(" latest ".parse(), Ok(StartFrom::Latest));
        assert_eq!(
            "2026-12-01T00:00:00Z".parse(),
            Ok(StartFrom::Time(1_796_083_200_000))
        );
        assert_eq!(
            "2026-12-01T01:00:00.250+01:00".parse(),
            Ok(StartFrom::Time(1_796_083_200_250))
        );
        assert_eq!(
            StartFrom::Time(1_796_083_200_000).to_string(),
            "2026-12-01T00:00:00Z"
        );
        for bad in ["", "yesterday", "2026-12-01", "2026-13-01T00:00:00Z"] {
            let err = bad.parse::<StartFrom>().expect_err(bad);
            assert!(err.to_string().contains("RFC 3339"), "{err}");
        }
    }
}
