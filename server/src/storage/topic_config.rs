//! Per-topic configuration overrides (`retention.ms`, `retention.bytes`, `segment.bytes`,
//! `max.message.bytes`) as accepted by CreateTopics, applied over the server defaults.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::LogConfig;

/// The topic configs the server understands.
pub(crate) const SUPPORTED: &[&str] = &[
    "retention.ms",
    "retention.bytes",
    "segment.bytes",
    "max.message.bytes",
    "cleanup.policy",
];

fn parse_i64(key: &str, value: &str) -> Result<i64, String> {
    value
        .parse::<i64>()
        .map_err(|_| format!("config {key}={value}: expected an integer"))
}

/// The effective log config of a topic: `defaults` with `overrides` applied.
pub(crate) fn apply(
    defaults: &LogConfig,
    overrides: &BTreeMap<String, String>,
) -> Result<LogConfig, String> {
    let mut config = defaults.clone();
    for (key, value) in overrides {
        match key.as_str() {
            "retention.ms" => {
                let ms = parse_i64(key, value)?;
                config.retention = if ms < 0 {
                    None
                } else {
                    Some(Duration::from_millis(ms as u64))
                };
            }
            "retention.bytes" => {
                let bytes = parse_i64(key, value)?;
                config.retention_bytes = if bytes < 0 { None } else { Some(bytes as u64) };
            }
            "segment.bytes" => {
                let bytes = parse_i64(key, value)?;
                if !(1024..=i32::MAX as i64).contains(&bytes) {
                    return Err(format!(
                        "config segment.bytes={value}: must be between 1024 and {}",
                        i32::MAX
                    ));
                }
                config.segment_bytes = bytes as u64;
            }
            "max.message.bytes" => {
                let bytes = parse_i64(key, value)?;
                if bytes < 64 {
                    return Err(format!(
                        "config max.message.bytes={value}: must be at least 64"
                    ));
                }
                config.max_message_bytes = bytes as usize;
            }
            "cleanup.policy" if value == "delete" => {}
            "cleanup.policy" => {
                return Err(format!(
                    "config cleanup.policy={value}: only `delete` is supported"
                ))
            }
            other => {
                return Err(format!(
                    "unknown topic config `{other}`; supported: {}",
                    SUPPORTED.join(", ")
                ))
            }
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_defaults_and_unknown_keys_are_refused() {
        let mut o = BTreeMap::new();
        o.insert("retention.ms".to_owned(), "-1".to_owned());
        o.insert("segment.bytes".to_owned(), "4096".to_owned());
        let c = apply(&LogConfig::default(), &o).expect("valid");
        assert_eq!(c.retention, None);
        assert_eq!(c.segment_bytes, 4096);
        o.insert("compression.typo".to_owned(), "x".to_owned());
        assert!(apply(&LogConfig::default(), &o).is_err());
    }
}
