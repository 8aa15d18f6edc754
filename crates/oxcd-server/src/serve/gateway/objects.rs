//! Splitting a stream's request body into its JSON objects as the bytes
//! arrive. The scanner keeps its place (depth, inside a string, after a
//! backslash), so every byte is looked at once however the body is cut
//! into chunks; the objects it finds are then decoded whole.

/// Finds where top-level JSON objects end in a growing buffer.
#[derive(Debug, Default)]
pub(super) struct Objects {
    /// Bytes of the buffer already looked at.
    scanned: usize,
    /// Where the object being scanned starts, if one has started.
    start: Option<usize>,
    depth: usize,
    in_string: bool,
    escaped: bool,
}

/// What the scanner found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Found {
    /// An object spans `buf[start..end]`.
    Object { start: usize, end: usize },
    /// More bytes are needed.
    Incomplete,
    /// Something other than an object at the top level.
    NotAnObject,
}

impl Objects {
    /// Scans `buf` (the same buffer, grown since the last call) for the
    /// next complete object.
    pub(super) fn next(&mut self, buf: &[u8]) -> Found {
        while self.scanned < buf.len() {
            let b = buf[self.scanned];
            let at = self.scanned;
            self.scanned += 1;
            if self.start.is_none() {
                match b {
                    b' ' | b'\t' | b'\r' | b'\n' => continue,
                    b'{' => {
                        self.start = Some(at);
                        self.depth = 1;
                        continue;
                    }
                    _ => return Found::NotAnObject,
                }
            }
            if self.in_string {
                match (self.escaped, b) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        let start = self.start.take().unwrap_or(0);
                        return Found::Object { start, end: at + 1 };
                    }
                }
                _ => {}
            }
        }
        Found::Incomplete
    }

    /// Forgets the first `n` bytes of the buffer (the caller drained them).
    pub(super) fn consumed(&mut self, n: usize) {
        self.scanned = self.scanned.saturating_sub(n);
        self.start = self.start.map(|s| s.saturating_sub(n));
    }

    /// Bytes of the object being scanned that are already buffered.
    pub(super) fn pending(&self, buf_len: usize) -> usize {
        self.start.map_or(0, |s| buf_len - s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&str]) -> Vec<String> {
        let mut buf = Vec::new();
        let mut o = Objects::default();
        let mut out = Vec::new();
        for c in chunks {
            buf.extend_from_slice(c.as_bytes());
            while let Found::Object { start, end } = o.next(&buf) {
                out.push(String::from_utf8(buf[start..end].to_vec()).unwrap());
                buf.drain(..end);
                o.consumed(end);
            }
        }
        out
    }

    #[test]
    fn objects_are_found_however_the_body_is_cut() {
        let body = r#"{"a":"}{\"x","b":[{"c":1}]} {"d":2}"#;
        let whole = split(&[body]);
        assert_eq!(whole, [r#"{"a":"}{\"x","b":[{"c":1}]}"#, r#"{"d":2}"#]);
        let bytes: Vec<String> = body.chars().map(String::from).collect();
        let refs: Vec<&str> = bytes.iter().map(String::as_str).collect();
        assert_eq!(split(&refs), whole);
    }

    #[test]
    fn a_top_level_value_that_is_not_an_object_is_refused() {
        let mut o = Objects::default();
        assert_eq!(o.next(b"  [1]"), Found::NotAnObject);
        let mut o = Objects::default();
        assert_eq!(o.next(br#"{"a":"#), Found::Incomplete);
        assert_eq!(o.pending(5), 5);
    }
}
