//! The W3C trace context format: the `traceparent` header parsed and written, `tracestate`
//! carried beside it, and the ids of new spans made (random, never all zero).

use std::fmt;

use crate::message::Headers;

/// The W3C trace context header: `00-<trace id>-<parent span id>-<flags>`.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C vendor-specific trace state header, carried unchanged beside [`TRACEPARENT`].
pub const TRACESTATE: &str = "tracestate";

/// The `sampled` bit of the trace flags.
const SAMPLED: u8 = 0x01;

/// A position in a trace: the trace, the span that is the parent of whatever comes next, its
/// flags and the vendors' trace state.
#[derive(Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace id (16 bytes, not all zero).
    pub trace_id: [u8; 16],
    /// The span id (8 bytes, not all zero).
    pub span_id: [u8; 8],
    /// The trace flags (bit 0: sampled).
    pub flags: u8,
    /// The `tracestate` header's value, if any.
    pub state: Option<String>,
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceContext")
            .field("traceparent", &self.traceparent())
            .field("state", &self.state)
            .finish()
    }
}

/// A `traceparent` value that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceParentError {
    /// Not four `-`-separated fields of 2, 32, 16 and 2 characters.
    #[error("`{0}` is not `version-traceid-parentid-flags`")]
    Shape(String),
    /// A field that is not lowercase hex.
    #[error("`{0}` has a field that is not lowercase hex")]
    Hex(String),
    /// Version `ff`, or version `00` with more after the flags.
    #[error("`{0}` has a version this format does not allow")]
    Version(String),
    /// An all-zero trace id or span id.
    #[error("`{0}` has an all-zero trace or span id")]
    ZeroId(String),
}

impl TraceContext {
    /// Parses a `traceparent` value (and a `tracestate` one to carry along). Versions above
    /// `00` are read as `00`, as the W3C recommendation asks, ignoring what follows the flags.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Result<Self, TraceParentError> {
        let text = traceparent.trim();
        let bad = |e: fn(String) -> TraceParentError| e(text.to_owned());
        let mut fields = text.splitn(5, '-');
        let (Some(version), Some(trace), Some(span), Some(flags)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(bad(TraceParentError::Shape));
        };
        let rest = fields.next();
        if version.len() != 2 || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
            return Err(bad(TraceParentError::Shape));
        }
        let version = hex::<1>(version).ok_or_else(|| bad(TraceParentError::Hex))?[0];
        if version == 0xff || (version == 0 && rest.is_some()) {
            return Err(bad(TraceParentError::Version));
        }
        let trace_id = hex::<16>(trace).ok_or_else(|| bad(TraceParentError::Hex))?;
        let span_id = hex::<8>(span).ok_or_else(|| bad(TraceParentError::Hex))?;
        let flags = hex::<1>(flags).ok_or_else(|| bad(TraceParentError::Hex))?[0];
        if trace_id == [0; 16] || span_id == [0; 8] {
            return Err(bad(TraceParentError::ZeroId));
        }
        Ok(TraceContext {
            trace_id,
            span_id,
            flags,
            state: tracestate
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        })
    }

    /// The context `headers` carry; `None` when there is no `traceparent` or it does not parse
    /// (a malformed one is ignored, as the W3C recommendation asks: the handling starts a trace).
    pub fn from_headers(headers: &Headers) -> Option<Self> {
        let parent = headers.get_str(TRACEPARENT)?;
        TraceContext::parse(parent, headers.get_str(TRACESTATE)).ok()
    }

    /// The `traceparent` value: `00-<trace id>-<span id>-<flags>`, lowercase hex.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            self.trace_id_hex(),
            self.span_id_hex(),
            self.flags
        )
    }

    /// Writes `traceparent` (and `tracestate`, or removes a stale one) into `headers`,
    /// replacing what was there.
    pub fn write_to(&self, headers: &mut Headers) {
        headers.set(TRACEPARENT, self.traceparent());
        match &self.state {
            Some(state) => headers.set(TRACESTATE, state.clone()),
            None => headers.remove(TRACESTATE),
        }
    }

    /// A new trace, sampled, with a random trace and span id.
    pub fn root() -> Self {
        TraceContext {
            trace_id: nonzero(rand::random),
            span_id: nonzero(rand::random),
            flags: SAMPLED,
            state: None,
        }
    }

    /// A span of the same trace, child of this one: a new random span id, the same flags and
    /// trace state.
    pub fn child(&self) -> Self {
        TraceContext {
            span_id: nonzero(rand::random),
            ..self.clone()
        }
    }

    /// Whether the sampled flag is set.
    pub fn is_sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        to_hex(&self.trace_id)
    }

    /// The span id as 16 lowercase hex digits.
    pub fn span_id_hex(&self) -> String {
        to_hex(&self.span_id)
    }
}

/// A random id that is not all zero (all zero is invalid in the format).
fn nonzero<const N: usize>(random: fn() -> [u8; N]) -> [u8; N] {
    loop {
        let id = random();
        if id != [0; N] {
            return id;
        }
    }
}

/// `N` bytes from `2 N` lowercase hex digits.
fn hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let bytes = text.as_bytes();
    if bytes.len() != 2 * N {
        return None;
    }
    let mut out = [0; N];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_w3c_example_round_trips() {
        let cx = TraceContext::parse(EXAMPLE, Some("congo=t61rcWkgMzE")).expect("parses");
        assert_eq!(cx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(cx.span_id_hex(), "00f067aa0ba902b7");
        assert!(cx.is_sampled());
        assert_eq!(cx.traceparent(), EXAMPLE);
        let mut h = Headers::new();
        cx.write_to(&mut h);
        assert_eq!(TraceContext::from_headers(&h), Some(cx));
    }

    #[test]
    fn malformed_values_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(TraceContext::parse(bad, None).is_err(), "{bad:?}");
        }
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what-comes";
        let cx = TraceContext::parse(later, None).expect("a later version reads as 00");
        assert_eq!(
            cx.traceparent(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        );
    }

    #[test]
    fn a_child_keeps_the_trace_and_gets_a_span_of_its_own() {
        let parent = TraceContext::parse(EXAMPLE, Some("a=b")).expect("parses");
        let child = parent.child();
        assert_eq!(child.trace_id, parent.trace_id);
        assert_ne!(child.span_id, parent.span_id);
        assert_eq!(child.state.as_deref(), Some("a=b"));
    }
}
