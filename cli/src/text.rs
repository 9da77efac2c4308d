//! Record data as the commands print it: safe on a terminal, bytes that are not UTF-8 as hex.

/// `text` made safe to print on a terminal: control characters (ESC, CR, BEL, …) and the
/// characters that reorder text on screen (bidirectional overrides) are written as escapes
/// (`\x1b`, `\r`, `\u{202e}`), so record data can neither move the cursor, retitle the
/// terminal nor forge a row. JSON output needs none of this: it escapes them itself.
pub(crate) fn safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let reorders = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x100 && c.is_control() => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() || reorders => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Record bytes as text: the text made [`safe`] when UTF-8, else `hex:` and the bytes in
/// hex (as `steadfast dlq` shows them).
pub(crate) fn shown(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => safe(text),
        Err(_) => steadfast::dlq::Shown::of(bytes).display(),
    }
}

/// `text` cut to `max` characters, with `…` in place of the rest when cut.
pub(crate) fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A value, or `-` without one.
pub(crate) fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_reordering_characters_are_escaped() {
        assert_eq!(
            safe("a\x1b[2K\r\n\t\x07\u{9b}b\u{202e}c"),
            "a\\x1b[2K\\r\\n\\t\\x07\\x9bb\\u{202e}c"
        );
        assert_eq!(safe("plain text, ünïcode"), "plain text, ünïcode");
    }

    #[test]
    fn long_text_is_cut_by_characters() {
        assert_eq!(cut("ünïcode", 7), "ünïcode");
        assert_eq!(cut("ünïcode", 4), "ünï…");
        assert_eq!(or_dash(None::<i32>), "-");
        assert_eq!(or_dash(Some(3)), "3");
    }

    #[test]
    fn bytes_that_are_not_utf8_are_hex() {
        assert_eq!(shown(&[0xff, 0x1b]), "hex:ff1b");
        assert_eq!(shown(b"k\x1b"), "k\\x1b");
    }
}
