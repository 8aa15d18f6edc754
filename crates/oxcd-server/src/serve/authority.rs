//! Accepting gRPC-Go clients that put a URL in `:authority`.
//!
//! etcd 3.4's clientv3, given an endpoint with a scheme
//! (`clientv3.New(Config{Endpoints: []string{"http://localhost:2379"}})`),
//! dials through grpc-go's `passthrough` resolver and sends the HTTP/2
//! pseudo-header `:authority: http://localhost:2379`. Go's gRPC server
//! takes it as it is; the `h2` crate under hyper finds it malformed and
//! resets the stream with `PROTOCOL_ERROR`, which such a client reports as
//! `stream terminated by RST_STREAM with error code: PROTOCOL_ERROR`.
//!
//! [`FixAuthority`] wraps an accepted byte stream (plain or TLS) before
//! hyper sees it and, on HTTP/2 connections only, rewrites a `:authority`
//! of the form `<scheme>://<host:port>[/...]` to `<host:port>`:
//!
//! 1. Anything that does not open with the HTTP/2 client preface (HTTP/1)
//!    is passed through untouched.
//! 2. Frames are forwarded as they arrive; only header blocks (HEADERS plus
//!    CONTINUATION up to END_HEADERS) are held back. The first block is
//!    decoded with HPACK. If its `:authority` has no `://`, the held bytes
//!    are released unchanged and the connection is passed through from then
//!    on without parsing (every other client).
//! 3. Otherwise the connection is rewritten for good: every block is decoded
//!    with the client's dynamic table, `:authority` is fixed, and the block
//!    is re-encoded with our own dynamic table (which is what hyper's decoder
//!    mirrors) into one HEADERS frame, split into CONTINUATION frames past the
//!    16 KiB default frame size. END_STREAM and the stream id are kept;
//!    padding and the (advisory) priority fields are dropped. A Go client
//!    uses one authority for the whole connection, so the first block
//!    decides.
//!
//! Malformed input is never fixed up: while still deciding, the bytes are
//! released as they came and hyper rejects them. Once rewriting, hyper's
//! HPACK state follows ours rather than the client's, so a block we cannot
//! make sense of is replaced by a frame hyper is sure to reject as a
//! connection error (HEADERS on stream 0), as it would have rejected the
//! original. The server-to-client direction is never touched.

use loona_hpack::{Decoder, Encoder};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Length of an HTTP/2 frame header: 24-bit length, type, flags, stream id.
const FRAME_HEADER_LEN: usize = 9;
/// Frame types that carry a header block from a client.
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
/// HEADERS flags (RFC 9113 §6.2).
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// SETTINGS_HEADER_TABLE_SIZE both ways: hyper advertises none, so its
/// decoder (which our encoder feeds) and the client's encoder (which our
/// decoder follows) both start from and stay within the default.
const HEADER_TABLE_SIZE: usize = 4096;
/// SETTINGS_MAX_FRAME_SIZE hyper advertises (its default, the protocol's
/// minimum): re-encoded blocks are split into frames no larger.
const MAX_FRAME_SIZE: usize = 16_384;
/// The most header-block bytes held back at once. Far above hyper's 16 KiB
/// header list limit, so a block this large is refused by hyper anyway.
const MAX_BLOCK: usize = 1 << 20;
/// The most decoded header-list bytes (RFC 7541 sizes: name, value and 32
/// per field) taken from one block; a larger list is given up on. HPACK
/// lets one byte name a 4 KiB table entry, so a 1 MiB block could decode
/// to 4 GiB; hyper refuses any list past 16 KiB anyway.
const MAX_HEADER_LIST: usize = 1 << 20;
/// A frame hyper rejects with a connection-level `PROTOCOL_ERROR`: HEADERS
/// with END_HEADERS on stream 0.
const POISON: [u8; FRAME_HEADER_LEN] = [0, 0, 0, HEADERS, END_HEADERS, 0, 0, 0, 0];
/// How much is read from the wrapped stream at a time while parsing.
const READ_CHUNK: usize = 8192;

/// A byte stream whose client-to-server HTTP/2 header blocks get their
/// `:authority` fixed (see the module docs). Writes, flushes and shutdown go
/// straight to the wrapped stream; once a connection is known not to need
/// the fix, reads do too.
///
/// Cancel-safe like the wrapped stream: bytes read from it are kept in
/// `self` until a later read hands them out.
pub struct FixAuthority<S> {
    inner: S,
    rewriter: Rewriter,
    /// Transformed bytes not yet handed to the reader, from `out_pos` on.
    out: Vec<u8>,
    out_pos: usize,
    /// Read buffer for the parsing phases; freed once passing through.
    scratch: Vec<u8>,
}

impl<S> FixAuthority<S> {
    /// Wraps `inner`; nothing is read until the first `poll_read`.
    pub fn new(inner: S) -> Self {
        FixAuthority {
            inner,
            rewriter: Rewriter::new(),
            out: Vec::new(),
            out_pos: 0,
            scratch: Vec::new(),
        }
    }

    /// Copies pending transformed bytes into `buf`; false if none are left.
    fn drain_into(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let pending = &self.out[self.out_pos..];
        if pending.is_empty() {
            return false;
        }
        let n = pending.len().min(buf.remaining());
        buf.put_slice(&pending[..n]);
        self.out_pos += n;
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        true
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FixAuthority<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.drain_into(buf) {
                return Poll::Ready(Ok(()));
            }
            if this.rewriter.is_passthrough() {
                if !this.scratch.is_empty() {
                    this.scratch = Vec::new();
                    this.out = Vec::new();
                }
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if this.scratch.is_empty() {
                this.scratch = vec![0; READ_CHUNK];
            }
            let mut chunk = ReadBuf::new(&mut this.scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk))?;
            let n = chunk.filled().len();
            if n == 0 {
                // End of stream: release whatever was held, then report EOF.
                this.rewriter.finish(&mut this.out);
                this.drain_into(buf);
                return Poll::Ready(Ok(()));
            }
            this.rewriter.feed(&this.scratch[..n], &mut this.out);
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FixAuthority<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The client-to-server transformation, free of I/O: bytes go in through
/// [`Rewriter::feed`] in chunks of any size, transformed bytes come out.
struct Rewriter {
    state: State,
}

enum State {
    /// Matching the client preface; `matched` bytes of it have been held.
    Preface { matched: usize },
    /// Parsing HTTP/2 frames.
    Frames(Box<Framer>),
    /// Copying bytes unchanged for the rest of the connection.
    Passthrough,
}

impl Rewriter {
    fn new() -> Self {
        Rewriter {
            state: State::Preface { matched: 0 },
        }
    }

    fn is_passthrough(&self) -> bool {
        matches!(self.state, State::Passthrough)
    }

    /// Transforms `input`, appending the result to `out`. Bytes that end
    /// in the middle of a held header block stay inside until it completes.
    fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        loop {
            match &mut self.state {
                State::Passthrough => {
                    out.extend_from_slice(input);
                    return;
                }
                State::Preface { matched } => {
                    let want = &PREFACE[*matched..];
                    let n = want.len().min(input.len());
                    if input[..n] != want[..n] {
                        out.extend_from_slice(&PREFACE[..*matched]);
                        self.state = State::Passthrough;
                        continue;
                    }
                    *matched += n;
                    input = &input[n..];
                    if *matched < PREFACE.len() {
                        return;
                    }
                    out.extend_from_slice(PREFACE);
                    self.state = State::Frames(Box::new(Framer::new()));
                }
                State::Frames(framer) => match framer.feed(input, out) {
                    None => return,
                    Some(consumed) => {
                        input = &input[consumed..];
                        self.state = State::Passthrough;
                    }
                },
            }
        }
    }

    /// The input has ended: releases everything still held, unchanged.
    fn finish(&mut self, out: &mut Vec<u8>) {
        match std::mem::replace(&mut self.state, State::Passthrough) {
            State::Preface { matched } => out.extend_from_slice(&PREFACE[..matched]),
            State::Frames(framer) => framer.release(out),
            State::Passthrough => {}
        }
    }
}

/// Whether the connection still waits for its first header block.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Deciding,
    Rewriting,
}

/// A parsed frame header.
#[derive(Clone, Copy)]
struct FrameHead {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

impl FrameHead {
    fn parse(b: &[u8; FRAME_HEADER_LEN]) -> Self {
        FrameHead {
            len: usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        // `len` is at most MAX_FRAME_SIZE here, so it fits in 24 bits.
        let len = (self.len as u32).to_be_bytes();
        out.extend_from_slice(&[len[1], len[2], len[3], self.kind, self.flags]);
        out.extend_from_slice(&self.stream.to_be_bytes());
    }
}

/// A header block being gathered from HEADERS and CONTINUATION frames.
struct Block {
    stream: u32,
    end_stream: bool,
    /// The HPACK bytes, without padding or priority fields.
    fragment: Vec<u8>,
}

/// What to do after a step of frame parsing.
enum Step {
    Continue,
    /// Stop parsing: copy the rest of the connection unchanged.
    Passthrough,
}

/// Frame-level state once the preface has been seen.
struct Framer {
    mode: Mode,
    /// Follows the client's HPACK dynamic table.
    decoder: Decoder<'static>,
    /// Our dynamic table, which hyper's decoder mirrors once rewriting.
    encoder: Encoder<'static>,
    /// A frame header being read.
    head: [u8; FRAME_HEADER_LEN],
    head_len: usize,
    /// Payload bytes of a forwarded frame still to copy.
    forward: usize,
    /// The header-block frame whose payload is being read.
    frame: Option<FrameHead>,
    payload: Vec<u8>,
    block: Option<Block>,
    /// Every byte of the held frames as received, to release unchanged.
    held: Vec<u8>,
}

impl Framer {
    fn new() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        Framer {
            mode: Mode::Deciding,
            decoder,
            encoder: Encoder::new(),
            head: [0; FRAME_HEADER_LEN],
            head_len: 0,
            forward: 0,
            frame: None,
            payload: Vec::new(),
            block: None,
            held: Vec::new(),
        }
    }

    /// Consumes `input`, appending the transformed bytes to `out`. Returns
    /// `Some(consumed)` when the rest of the connection, from
    /// `input[consumed..]` on, is to be copied unchanged.
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        let mut i = 0;
        while i < input.len() {
            let rest = &input[i..];
            if self.forward > 0 {
                let n = self.forward.min(rest.len());
                out.extend_from_slice(&rest[..n]);
                self.forward -= n;
                i += n;
                continue;
            }
            if let Some(frame) = self.frame {
                let n = (frame.len - self.payload.len()).min(rest.len());
                self.payload.extend_from_slice(&rest[..n]);
                self.held.extend_from_slice(&rest[..n]);
                i += n;
                if let Step::Passthrough = self.payload_progress(out) {
                    return Some(i);
                }
                continue;
            }
            let n = (FRAME_HEADER_LEN - self.head_len).min(rest.len());
            self.head[self.head_len..self.head_len + n].copy_from_slice(&rest[..n]);
            self.head_len += n;
            i += n;
            if self.head_len == FRAME_HEADER_LEN {
                self.head_len = 0;
                if let Step::Passthrough = self.on_frame_head(out) {
                    return Some(i);
                }
            }
        }
        None
    }

    /// A whole frame header is in `self.head`: forward the frame or start
    /// holding it.
    fn on_frame_head(&mut self, out: &mut Vec<u8>) -> Step {
        let head = FrameHead::parse(&self.head);
        let carries_block = matches!(head.kind, HEADERS | CONTINUATION);
        if self.block.is_none() && !carries_block {
            out.extend_from_slice(&self.head);
            self.forward = head.len;
            return Step::Continue;
        }
        self.held.extend_from_slice(&self.head);
        let so_far = self.block.as_ref().map_or(0, |b| b.fragment.len());
        // A block interrupted by another frame, or too big to hold: hyper
        // refuses either; let it see the original bytes.
        let interrupted = self.block.is_some() && head.kind != CONTINUATION;
        if interrupted || so_far + head.len > MAX_BLOCK {
            return self.give_up(out);
        }
        self.frame = Some(head);
        self.payload.clear();
        self.payload_progress(out)
    }

    /// Handles the held frame once its payload is complete.
    fn payload_progress(&mut self, out: &mut Vec<u8>) -> Step {
        let Some(head) = self.frame else {
            return Step::Continue;
        };
        if self.payload.len() < head.len {
            return Step::Continue;
        }
        self.frame = None;
        let payload = std::mem::take(&mut self.payload);
        match (head.kind, self.block.as_mut()) {
            (HEADERS, None) if head.stream != 0 => {
                let Some(fragment) = strip_headers_payload(head.flags, &payload) else {
                    return self.give_up(out);
                };
                self.block = Some(Block {
                    stream: head.stream,
                    end_stream: head.flags & END_STREAM != 0,
                    fragment: fragment.to_vec(),
                });
            }
            (CONTINUATION, Some(block)) if block.stream == head.stream => {
                block.fragment.extend_from_slice(&payload);
            }
            _ => return self.give_up(out),
        }
        self.payload = payload;
        if head.flags & END_HEADERS == 0 {
            return Step::Continue;
        }
        match self.block.take() {
            Some(block) => self.on_block(block, out),
            None => Step::Continue,
        }
    }

    /// Decides on or rewrites one complete header block.
    fn on_block(&mut self, block: Block, out: &mut Vec<u8>) -> Step {
        let mut fields = Vec::new();
        let mut size = 0usize;
        let decoded = self.decoder.decode_with_cb(&block.fragment, |name, value| {
            // Decoding goes on to the end of the block (the client's table
            // follows it), but nothing more is kept past the limit.
            size = size.saturating_add(name.len() + value.len() + 32);
            if size <= MAX_HEADER_LIST {
                fields.push((name.into_owned(), value.into_owned()));
            }
        });
        if decoded.is_err() || size > MAX_HEADER_LIST {
            return self.give_up(out);
        }
        let mut fixed = false;
        for (name, value) in &mut fields {
            if name.as_slice() == b":authority" {
                if let Some(host) = strip_scheme(value) {
                    *value = host.to_vec();
                    fixed = true;
                }
            }
        }
        if self.mode == Mode::Deciding {
            if !fixed {
                out.append(&mut self.held);
                return Step::Passthrough;
            }
            tracing::debug!("rewriting URL-shaped :authority on this connection");
            self.mode = Mode::Rewriting;
        }
        self.held.clear();
        let encoded = self
            .encoder
            .encode(fields.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        write_block(block.stream, block.end_stream, &encoded, out);
        Step::Continue
    }

    /// Stops parsing and releases the held bytes unchanged. Once rewriting,
    /// hyper's HPACK state no longer matches the client's, so a frame it
    /// must reject goes first (see the module docs).
    fn give_up(&mut self, out: &mut Vec<u8>) -> Step {
        if self.mode == Mode::Rewriting && !self.held.is_empty() {
            out.extend_from_slice(&POISON);
        }
        out.append(&mut self.held);
        Step::Passthrough
    }

    /// The input ended: releases the held bytes, including a partial frame
    /// header, unchanged (after [`POISON`] once rewriting, as in
    /// [`Framer::give_up`]).
    fn release(mut self, out: &mut Vec<u8>) {
        self.give_up(out);
        out.extend_from_slice(&self.head[..self.head_len]);
    }
}

/// The header block fragment of a HEADERS payload, without padding and
/// priority fields; `None` if they do not fit.
fn strip_headers_payload(flags: u8, payload: &[u8]) -> Option<&[u8]> {
    let (pad, rest) = if flags & PADDED != 0 {
        let (&pad, rest) = payload.split_first()?;
        (usize::from(pad), rest)
    } else {
        (0, payload)
    };
    let rest = if flags & PRIORITY != 0 {
        rest.get(5..)?
    } else {
        rest
    };
    rest.get(..rest.len().checked_sub(pad)?)
}

/// `host:port` from `scheme://host:port[/path]`; `None` if there is no
/// `://`.
fn strip_scheme(value: &[u8]) -> Option<&[u8]> {
    let at = value.windows(3).position(|w| w == b"://")?;
    let rest = &value[at + 3..];
    let end = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Writes `block` as HEADERS (END_HEADERS, and END_STREAM if asked) or, if
/// larger than a frame, HEADERS followed by CONTINUATION frames.
fn write_block(stream: u32, end_stream: bool, block: &[u8], out: &mut Vec<u8>) {
    let mut rest = block;
    let mut kind = HEADERS;
    let mut flags = if end_stream { END_STREAM } else { 0 };
    loop {
        let n = rest.len().min(MAX_FRAME_SIZE);
        let last = n == rest.len();
        if last {
            flags |= END_HEADERS;
        }
        FrameHead {
            len: n,
            kind,
            flags,
            stream,
        }
        .write(out);
        out.extend_from_slice(&rest[..n]);
        if last {
            return;
        }
        rest = &rest[n..];
        kind = CONTINUATION;
        flags = 0;
    }
}

#[cfg(test)]
mod tests;
