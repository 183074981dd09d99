//! JSON text written by hand where serde's writer costs too much per
//! request: the log line and the Vipps receipt.

use std::io::Write as _;

/// Whether a byte must be escaped in a JSON string.
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Whether any byte of `bytes` must be escaped: whole 16-byte blocks are
/// checked without branching on each byte, so the compiler can vectorise the
/// common case of a value with nothing to escape.
fn any_escape(bytes: &[u8]) -> bool {
    let mut blocks = bytes.chunks_exact(16);
    let found = blocks
        .by_ref()
        .any(|block| block.iter().fold(false, |any, &b| any | needs_escape(b)));
    found || blocks.remainder().iter().any(|&b| needs_escape(b))
}

/// Writes `s` as a JSON string, escaped as serde_json escapes it.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    if !any_escape(bytes) {
        out.reserve(bytes.len() + 2);
        out.push(b'"');
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    out.push(b'"');
    let Some(first) = bytes.iter().position(|&b| needs_escape(b)) else {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    };
    out.extend_from_slice(&bytes[..first]);
    let mut start = first;
    for (i, &b) in bytes.iter().enumerate().skip(first) {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// A JSON object written field by field, for an answer that embeds JSON
/// the gateway already holds (the receipt sent to Vipps) next to values
/// serde writes.
pub(crate) struct Object(Vec<u8>);

impl Object {
    pub(crate) fn with_capacity(bytes: usize) -> Self {
        let mut out = Vec::with_capacity(bytes);
        out.push(b'{');
        Self(out)
    }

    fn key(&mut self, key: &str) {
        if self.0.len() > 1 {
            self.0.push(b',');
        }
        write_str(&mut self.0, key);
        self.0.push(b':');
    }

    /// A field whose value is JSON text already.
    pub(crate) fn raw(mut self, key: &str, json: &[u8]) -> Self {
        self.key(key);
        self.0.extend_from_slice(json);
        self
    }

    /// A field whose value serde writes.
    pub(crate) fn value(
        mut self,
        key: &str,
        value: &impl serde::Serialize,
    ) -> serde_json::Result<Self> {
        self.key(key);
        serde_json::to_writer(&mut self.0, value)?;
        Ok(self)
    }

    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.0.push(b'}');
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_needing_escape_is_found_wherever_it_is() {
        for len in [0, 1, 15, 16, 17, 31, 32, 40] {
            for at in 0..len {
                for b in 0u8..0x80 {
                    let mut text = vec![b'a'; len];
                    text[at] = b;
                    let text = String::from_utf8(text).unwrap();
                    assert_eq!(
                        any_escape(text.as_bytes()),
                        needs_escape(b),
                        "{b:#x} at {at}/{len}"
                    );
                    let mut out = Vec::new();
                    write_str(&mut out, &text);
                    let back: String = serde_json::from_slice(&out).unwrap();
                    assert_eq!(back, text);
                }
            }
        }
    }

    #[test]
    fn objects_are_written_as_serde_writes_them() {
        let empty = Object::with_capacity(0).finish();
        assert_eq!(empty, b"{}");
        let obj = Object::with_capacity(64)
            .raw("raw", br#"{"a":[1,2]}"#)
            .value("n", &None::<u8>)
            .unwrap()
            .value("s\"q", &"x\ny")
            .unwrap()
            .finish();
        assert_eq!(
            String::from_utf8(obj).unwrap(),
            r#"{"raw":{"a":[1,2]},"n":null,"s\"q":"x\ny"}"#
        );
    }

    #[test]
    fn escapes_match_serde_json() {
        for b in 0u8..0x80 {
            let text = format!("a{}z", char::from(b));
            let mut out = Vec::new();
            write_str(&mut out, &text);
            assert_eq!(out, serde_json::to_vec(&text).unwrap(), "{b:#x}");
        }
    }

    #[test]
    fn control_characters_are_escaped() {
        let mut out = Vec::new();
        write_str(&mut out, "a\u{0}b\u{1f}\t\\");
        write_str(&mut out, "plain \u{f8}");
        write_str(&mut out, "");
        write_str(&mut out, "end\"");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"a\\u0000b\\u001f\\t\\\\\"\"plain \u{f8}\"\"\"\"end\\\"\""
        );
    }
}
