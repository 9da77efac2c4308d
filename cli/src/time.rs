//! Times as people type them on the command line: one parser for every option that takes a
//! time (`dlq --from/--until`, `offsets reset --to-time`).

use ::time::format_description::well_known::Rfc3339;
use ::time::OffsetDateTime;

/// Parses an RFC 3339 date-time (`2024-05-01T12:00:00Z`, `2024-05-01 12:00:00.250+02:00`)
/// into milliseconds since the Unix epoch (fractions below a millisecond are dropped).
pub(crate) fn parse_rfc3339_ms(text: &str) -> Result<i64, String> {
    // RFC 3339 allows a space (and lower case `t`/`z`) where ISO 8601 has `T`/`Z`.
    let mut normalized = text.trim().to_ascii_uppercase();
    if normalized.as_bytes().get(10) == Some(&b' ') {
        normalized.replace_range(10..11, "T");
    }
    let parsed = OffsetDateTime::parse(&normalized, &Rfc3339)
        .map_err(|_| format!("`{text}` is not an RFC 3339 time such as 2025-01-31T12:00:00Z"))?;
    Ok((parsed.unix_timestamp_nanos().div_euclid(1_000_000)) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_parses_utc_offsets_and_fractions() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(
            parse_rfc3339_ms("2024-05-01T12:00:00Z").unwrap(),
            1_714_564_800_000
        );
        assert_eq!(
            parse_rfc3339_ms("2024-05-01T14:00:00.250+02:00").unwrap(),
            1_714_564_800_250
        );
        assert_eq!(
            parse_rfc3339_ms("2024-05-01 11:30:00.1234567-00:30").unwrap(),
            1_714_564_800_123
        );
        assert_eq!(
            parse_rfc3339_ms("2000-02-29t00:00:00z").unwrap(),
            951_782_400_000
        );
        assert_eq!(parse_rfc3339_ms("1969-12-31T23:59:59.5Z").unwrap(), -500);
    }

    #[test]
    fn rfc3339_rejects_malformed_input() {
        for bad in [
            "",
            "2024-05-01",
            "2024-05-01T12:00:00",
            "2024-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T12:00:00.Z",
            "2024-05-01T12:00:00+0200",
            "2024-05-01T12:00:00Zjunk",
            "1714564800000",
        ] {
            assert!(parse_rfc3339_ms(bad).is_err(), "accepted {bad:?}");
        }
    }
}
