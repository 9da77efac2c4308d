//! The error classes of failed messages: one enum for routing, the `steadfast-error-class`
//! header, metrics and the dead-letter tools.

use std::fmt;
use std::str::FromStr;

/// Why a message failed, as a class: what the route layer writes in the
/// `steadfast-error-class` header, metrics label and the DLQ tools filter on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Transient failures (also `RetryAfter`) that used up their retries.
    Transient,
    /// The handler said the message can never succeed.
    Permanent,
    /// A dependency did not answer (never routed: retried until it answers).
    Unavailable,
    /// The payload did not decode.
    Decode,
    /// The handler panicked.
    Panic,
    /// The handler ran past its timeout.
    Timeout,
    /// A retry-tier record overtaken by a newer version of its key.
    Overtaken,
    /// A store kept refusing a call the message needed before its handler could run (only
    /// with `stores.dead_letter_after_refusals`; by default the message waits).
    Store,
    /// A class this version does not know (read from a header), kept as written.
    Other(String),
}

impl ErrorClass {
    /// The class as written in the header.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Unavailable => "unavailable",
            ErrorClass::Decode => "decode",
            ErrorClass::Panic => "panic",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Overtaken => "overtaken",
            ErrorClass::Store => "store",
            ErrorClass::Other(s) => s,
        }
    }
}

impl FromStr for ErrorClass {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim() {
            "transient" => ErrorClass::Transient,
            "permanent" => ErrorClass::Permanent,
            "unavailable" => ErrorClass::Unavailable,
            "decode" => ErrorClass::Decode,
            "panic" => ErrorClass::Panic,
            "timeout" => ErrorClass::Timeout,
            "overtaken" => ErrorClass::Overtaken,
            "store" => ErrorClass::Store,
            other => ErrorClass::Other(other.to_owned()),
        })
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_reads_back_as_written() {
        for class in [
            ErrorClass::Transient,
            ErrorClass::Permanent,
            ErrorClass::Unavailable,
            ErrorClass::Decode,
            ErrorClass::Panic,
            ErrorClass::Timeout,
            ErrorClass::Overtaken,
            ErrorClass::Store,
            ErrorClass::Other("custom".to_owned()),
        ] {
            assert_eq!(class.as_str().parse::<ErrorClass>(), Ok(class.clone()));
        }
    }
}
