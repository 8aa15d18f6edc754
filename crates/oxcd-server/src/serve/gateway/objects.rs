//! Splitting a stream's request body into its JSON objects as the bytes
//! arrive. The scanner keeps its place (depth, inside a string, after a
//! backslash), so every byte is looked at once however the body is cut
//! into chunks; the objects it finds are then decoded whole. [`Splitter`]
//! holds the bytes: only the object being read, bounded, and the chunk
//! that just arrived.

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

    /// How many leading bytes of the buffer are done with: objects found
    /// and whitespace skipped, everything before the object being scanned.
    fn settled(&self) -> usize {
        self.start.unwrap_or(self.scanned)
    }
}

/// A stream body's bytes as they arrive, cut into its objects.
#[derive(Debug)]
pub(super) struct Splitter {
    buf: Vec<u8>,
    scan: Objects,
    /// The largest object taken.
    max: usize,
}

/// What [`Splitter::next`] found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next<'a> {
    /// The next whole object.
    Object(&'a [u8]),
    /// More bytes are needed.
    Incomplete,
    /// Something other than an object at the top level.
    NotAnObject,
    /// The object being read is already larger than the limit.
    TooLarge,
}

impl Splitter {
    /// A splitter that takes objects of up to `max` bytes.
    pub(super) fn new(max: usize) -> Self {
        Splitter {
            buf: Vec::new(),
            scan: Objects::default(),
            max,
        }
    }

    /// Appends the next chunk of the body, first dropping the bytes done
    /// with, so that what is held is the object being read (at most `max`
    /// bytes once [`Splitter::next`] has said [`Next::Incomplete`]) and
    /// `data`, however much whitespace or how many objects came before.
    pub(super) fn push(&mut self, data: &[u8]) {
        let done = self.scan.settled();
        self.buf.drain(..done);
        self.scan.consumed(done);
        self.buf.extend_from_slice(data);
    }

    /// The next object of what was pushed.
    pub(super) fn next(&mut self) -> Next<'_> {
        match self.scan.next(&self.buf) {
            Found::Object { start, end } => Next::Object(&self.buf[start..end]),
            Found::Incomplete if self.scan.pending(self.buf.len()) > self.max => Next::TooLarge,
            Found::Incomplete => Next::Incomplete,
            Found::NotAnObject => Next::NotAnObject,
        }
    }

    /// Bytes held.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.buf.len()
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

    /// Feeds `chunks` to a splitter taking objects of up to `max` bytes;
    /// returns the objects and how it stopped, checking after every chunk
    /// that it holds no more than the object being read and that chunk.
    fn feed(chunks: &[Vec<u8>], max: usize) -> (Vec<Vec<u8>>, Option<String>) {
        let mut s = Splitter::new(max);
        let mut out = Vec::new();
        for c in chunks {
            s.push(c);
            loop {
                match s.next() {
                    Next::Object(o) => out.push(o.to_vec()),
                    Next::Incomplete => break,
                    other => return (out, Some(format!("{other:?}"))),
                }
            }
            assert!(
                s.held() <= max.saturating_add(c.len()),
                "holds {} bytes, limit {max}, chunk {}",
                s.held(),
                c.len()
            );
        }
        (out, None)
    }

    /// Minimized from `held_bytes_stay_bounded`: whitespace between (or
    /// before) objects was kept forever, so a client sending spaces to a
    /// streaming route (watch, keep-alive) grew the buffer without limit.
    #[test]
    fn whitespace_is_not_kept() {
        let spaces = vec![b' '; 1000];
        let chunks: Vec<Vec<u8>> = std::iter::repeat_n(spaces, 100).collect();
        let (objects, stop) = feed(&chunks, 64);
        assert!(objects.is_empty() && stop.is_none());
    }

    use proptest::prelude::*;

    /// Bytes that are mostly JSON punctuation, so that objects, strings
    /// and escapes come up.
    fn body() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop_oneof![
                4 => prop::sample::select(b"{}[]\" \\\n\tab:,1".to_vec()),
                1 => any::<u8>(),
            ],
            0..400,
        )
    }

    /// The body cut at the given points.
    fn cut(body: &[u8], at: &[prop::sample::Index]) -> Vec<Vec<u8>> {
        let mut points: Vec<usize> = at.iter().map(|i| i.index(body.len() + 1)).collect();
        points.push(0);
        points.push(body.len());
        points.sort_unstable();
        points
            .windows(2)
            .map(|w| body[w[0]..w[1]].to_vec())
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        /// However a body is cut, the splitter holds at most the object
        /// being read and the last chunk, and finds the same objects.
        #[test]
        fn held_bytes_stay_bounded(
            body in body(),
            at in prop::collection::vec(any::<prop::sample::Index>(), 0..40),
            max in 1usize..64,
        ) {
            let chunks = cut(&body, &at);
            let (small, _) = feed(&chunks, max);
            let (whole, stop) = feed(std::slice::from_ref(&body), usize::MAX);
            let (pieces, pieces_stop) = feed(&chunks, usize::MAX);
            prop_assert_eq!(&pieces, &whole);
            prop_assert_eq!(pieces_stop, stop);
            prop_assert!(whole.starts_with(&small));
        }
    }
}
