use super::*;
use std::convert::Infallible;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SETTINGS: u8 = 0x4;
const DATA: u8 = 0x0;
const RST_STREAM: u8 = 0x3;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    FrameHead {
        len: payload.len(),
        kind,
        flags,
        stream,
    }
    .write(&mut out);
    out.extend_from_slice(payload);
    out
}

/// The preface, an empty SETTINGS and a connection WINDOW_UPDATE, as a
/// client opens with.
fn opening() -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out.extend(frame(WINDOW_UPDATE, 0, 0, &[0, 1, 0, 0]));
    out
}

/// A gRPC-like request header list.
fn request(authority: &str, path: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("user-agent", "grpc-go/1.26.0"),
        ("te", "trailers"),
    ]
    .iter()
    .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
    .collect()
}

fn encode(enc: &mut Encoder<'_>, fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    enc.encode(fields.iter().map(|(n, v)| (n.as_slice(), v.as_slice())))
}

/// A client-side HPACK encoder that, unlike loona's, indexes every field
/// (as grpc-go does for `:authority`): later blocks refer to the dynamic
/// table. Short raw strings only, and few enough entries that every index
/// fits in one byte.
#[derive(Default)]
struct IndexingClient {
    table: Vec<(Vec<u8>, Vec<u8>)>,
}

impl IndexingClient {
    fn encode(&mut self, fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for field in fields {
            if let Some(pos) = self.table.iter().position(|f| f == field) {
                out.push(0x80 | (62 + pos) as u8);
                continue;
            }
            out.push(0x40);
            for s in [&field.0, &field.1] {
                out.push(s.len() as u8);
                out.extend_from_slice(s);
            }
            self.table.insert(0, field.clone());
            let size = |t: &[(Vec<u8>, Vec<u8>)]| -> usize {
                t.iter().map(|(n, v)| n.len() + v.len() + 32).sum()
            };
            while size(&self.table) > HEADER_TABLE_SIZE {
                self.table.pop();
            }
        }
        out
    }
}

/// Runs `input` through a [`Rewriter`] in chunks of `chunk` bytes.
fn rewrite(input: &[u8], chunk: usize) -> Vec<u8> {
    let mut r = Rewriter::new();
    let mut out = Vec::new();
    for piece in input.chunks(chunk) {
        r.feed(piece, &mut out);
    }
    r.finish(&mut out);
    out
}

/// A frame as seen on the server side; header blocks are decoded.
#[derive(Debug, PartialEq)]
enum Seen {
    Block {
        stream: u32,
        end_stream: bool,
        fields: Vec<(Vec<u8>, Vec<u8>)>,
    },
    Other(Vec<u8>),
}

/// Splits the client-to-server bytes after the preface into frames,
/// decoding header blocks the way hyper would (one decoder for the
/// connection), and checks each output frame fits the default size.
fn server_view(bytes: &[u8]) -> Vec<Seen> {
    assert_eq!(&bytes[..PREFACE.len()], PREFACE);
    let mut rest = &bytes[PREFACE.len()..];
    let mut decoder = Decoder::new();
    let mut seen = Vec::new();
    let mut block: Option<(u32, bool, Vec<u8>)> = None;
    while !rest.is_empty() {
        let head = FrameHead::parse(rest[..FRAME_HEADER_LEN].try_into().unwrap());
        assert!(head.len <= MAX_FRAME_SIZE, "frame too large: {}", head.len);
        let whole = &rest[..FRAME_HEADER_LEN + head.len];
        let payload = &whole[FRAME_HEADER_LEN..];
        rest = &rest[whole.len()..];
        match head.kind {
            HEADERS => {
                let fragment = strip_headers_payload(head.flags, payload).unwrap();
                block = Some((head.stream, head.flags & END_STREAM != 0, fragment.to_vec()));
            }
            CONTINUATION => block.as_mut().unwrap().2.extend_from_slice(payload),
            _ => {
                assert!(block.is_none(), "frame inside a header block");
                seen.push(Seen::Other(whole.to_vec()));
                continue;
            }
        }
        if head.flags & END_HEADERS != 0 {
            let (stream, end_stream, fragment) = block.take().unwrap();
            seen.push(Seen::Block {
                stream,
                end_stream,
                fields: decoder.decode(&fragment).unwrap(),
            });
        }
    }
    assert!(block.is_none(), "unfinished header block");
    seen
}

fn fields(seen: &Seen) -> &[(Vec<u8>, Vec<u8>)] {
    match seen {
        Seen::Block { fields, .. } => fields,
        Seen::Other(_) => panic!("not a header block: {seen:?}"),
    }
}

/// Three requests on one connection from a client whose encoder reuses its
/// dynamic table: the second and third blocks are mostly table indices.
fn three_requests(authority: &str) -> Vec<u8> {
    let mut enc = IndexingClient::default();
    let mut input = opening();
    for (i, stream) in [1u32, 3, 5].into_iter().enumerate() {
        let block = enc.encode(&request(authority, &format!("/etcdserverpb.KV/R{i}")));
        input.extend(frame(HEADERS, END_HEADERS, stream, &block));
        input.extend(frame(DATA, END_STREAM, stream, b"\0\0\0\0\x02\x0a\x00"));
    }
    input
}

#[test]
fn http1_passes_through() {
    for input in [
        &b"GET /health HTTP/1.1\r\nHost: localhost:2379\r\n\r\n"[..],
        b"PUT /v3/kv/put HTTP/1.1\r\nHost: x\r\n\r\n{}",
        b"PRI * HTTP/1.1\r\n\r\n",
        b"PR",
    ] {
        for chunk in [1, 3, input.len()] {
            assert_eq!(rewrite(input, chunk), input);
        }
    }
}

#[test]
fn normal_authority_passes_through_byte_for_byte() {
    let input = three_requests("localhost:2379");
    for chunk in [1, 7, input.len()] {
        assert_eq!(rewrite(&input, chunk), input);
    }
    // The first block decides: nothing is parsed after it.
    let mut r = Rewriter::new();
    let first_block_end = opening().len() + FRAME_HEADER_LEN + original_block_sizes(&input)[0];
    r.feed(&input[..first_block_end], &mut Vec::new());
    assert!(r.is_passthrough());
}

#[test]
fn url_authority_is_rewritten_on_every_request() {
    let input = three_requests("http://localhost:2379");
    let out = rewrite(&input, input.len());
    let seen = server_view(&out);
    let original = server_view(&input);
    assert_eq!(seen.len(), original.len());
    for (got, want) in seen.iter().zip(&original) {
        match (got, want) {
            (Seen::Other(_), Seen::Other(_)) => assert_eq!(got, want),
            (
                Seen::Block {
                    stream: s1,
                    end_stream: e1,
                    ..
                },
                Seen::Block {
                    stream: s2,
                    end_stream: e2,
                    ..
                },
            ) => {
                assert_eq!((s1, e1), (s2, e2));
                let mut expect = fields(want).to_vec();
                expect[3].1 = b"localhost:2379".to_vec();
                assert_eq!(fields(got), expect);
            }
            _ => panic!("frame order changed: {got:?} vs {want:?}"),
        }
    }
    // The client's later blocks lean on its dynamic table.
    let sizes: Vec<usize> = original_block_sizes(&input);
    assert!(sizes[1] < sizes[0] / 2, "{sizes:?}");
}

fn original_block_sizes(input: &[u8]) -> Vec<usize> {
    let mut rest = &input[PREFACE.len()..];
    let mut sizes = Vec::new();
    while !rest.is_empty() {
        let head = FrameHead::parse(rest[..FRAME_HEADER_LEN].try_into().unwrap());
        if head.kind == HEADERS {
            sizes.push(head.len);
        }
        rest = &rest[FRAME_HEADER_LEN + head.len..];
    }
    sizes
}

#[test]
fn reads_split_anywhere_give_the_same_bytes() {
    let input = three_requests("http://localhost:2379");
    let whole = rewrite(&input, input.len());
    for chunk in [1, 2, 5, 9, 10, 64] {
        assert_eq!(rewrite(&input, chunk), whole, "chunk {chunk}");
    }
}

#[test]
fn continuation_frames_and_end_stream_are_handled() {
    let mut enc = Encoder::new();
    let block = encode(&mut enc, &request("http://127.0.0.1:2379", "/x"));
    let (a, rest) = block.split_at(5);
    let (b, c) = rest.split_at(7);
    let mut input = opening();
    input.extend(frame(HEADERS, END_STREAM, 1, a));
    input.extend(frame(CONTINUATION, 0, 1, b));
    input.extend(frame(CONTINUATION, END_HEADERS, 1, c));
    input.extend(frame(SETTINGS, 0x1, 0, &[]));
    for chunk in [1, input.len()] {
        let seen = server_view(&rewrite(&input, chunk));
        let Seen::Block {
            stream, end_stream, ..
        } = &seen[2]
        else {
            panic!("{seen:?}");
        };
        assert_eq!((*stream, *end_stream), (1, true));
        assert_eq!(fields(&seen[2])[3].1, b"127.0.0.1:2379");
        assert_eq!(seen[3], Seen::Other(frame(SETTINGS, 0x1, 0, &[])));
    }
}

#[test]
fn padding_and_priority_are_dropped() {
    let mut enc = Encoder::new();
    let block = encode(&mut enc, &request("https://example.com:2379", "/x"));
    let mut payload = vec![3]; // pad length
    payload.extend([0x80, 0, 0, 0, 16]); // exclusive dependency on 0, weight 16
    payload.extend(&block);
    payload.extend([0, 0, 0]);
    let mut input = opening();
    input.extend(frame(HEADERS, PADDED | PRIORITY | END_HEADERS, 1, &payload));
    let out = rewrite(&input, 1);
    let seen = server_view(&out);
    assert_eq!(fields(&seen[2])[3].1, b"example.com:2379");
    let head_at = opening().len();
    let head = FrameHead::parse(out[head_at..head_at + 9].try_into().unwrap());
    assert_eq!(head.flags, END_HEADERS);
}

#[test]
fn large_blocks_are_split_into_continuations() {
    let mut enc = Encoder::new();
    let mut fields_in = request("http://localhost:2379", "/x");
    fields_in.push((b"x-big".to_vec(), vec![b'a'; 40_000]));
    let block = encode(&mut enc, &fields_in);
    let pieces: Vec<&[u8]> = block.chunks(MAX_FRAME_SIZE).collect();
    let mut input = opening();
    for (i, piece) in pieces.iter().enumerate() {
        let kind = if i == 0 { HEADERS } else { CONTINUATION };
        let flags = if i + 1 == pieces.len() {
            END_HEADERS
        } else {
            0
        };
        input.extend(frame(kind, flags, 1, piece));
    }
    let out = rewrite(&input, 1000);
    let seen = server_view(&out);
    assert_eq!(fields(&seen[2])[3].1, b"localhost:2379");
    assert_eq!(fields(&seen[2])[7].1.len(), 40_000);
    let kinds: Vec<u8> = frames_after_opening(&out).iter().map(|h| h.kind).collect();
    assert_eq!(kinds, [HEADERS, CONTINUATION, CONTINUATION]);
}

fn frames_after_opening(out: &[u8]) -> Vec<FrameHead> {
    let mut rest = &out[opening().len()..];
    let mut heads = Vec::new();
    while !rest.is_empty() {
        let head = FrameHead::parse(rest[..FRAME_HEADER_LEN].try_into().unwrap());
        rest = &rest[FRAME_HEADER_LEN + head.len..];
        heads.push(head);
    }
    heads
}

#[test]
fn malformed_input_before_deciding_passes_through() {
    let mut enc = Encoder::new();
    let block = encode(&mut enc, &request("http://localhost:2379", "/x"));
    let cases: Vec<Vec<u8>> = vec![
        // A block interrupted by a DATA frame.
        [frame(HEADERS, 0, 1, &block), frame(DATA, 0, 1, b"x")].concat(),
        // CONTINUATION on another stream.
        [
            frame(HEADERS, 0, 1, &block),
            frame(CONTINUATION, END_HEADERS, 3, &[]),
        ]
        .concat(),
        // CONTINUATION without HEADERS.
        frame(CONTINUATION, END_HEADERS, 1, &block),
        // HEADERS on stream 0.
        frame(HEADERS, END_HEADERS, 0, &block),
        // Padding longer than the payload.
        frame(HEADERS, END_HEADERS | PADDED, 1, &[200, 0x82]),
        // Not HPACK: index 0.
        frame(HEADERS, END_HEADERS, 1, &[0x80]),
        // Cut off in the middle of a header block.
        frame(HEADERS, END_HEADERS, 1, &block)[..20].to_vec(),
    ];
    for case in cases {
        let input = [opening(), case].concat();
        for chunk in [1, input.len()] {
            assert_eq!(rewrite(&input, chunk), input);
        }
    }
}

#[test]
fn malformed_block_while_rewriting_is_poisoned() {
    let mut input = three_requests("http://localhost:2379");
    let bad = frame(HEADERS, END_HEADERS, 7, &[0x80]);
    input.extend(&bad);
    let out = rewrite(&input, input.len());
    let tail = [&POISON[..], &bad].concat();
    assert!(out.ends_with(&tail));
    // Everything before it is still well formed.
    server_view(&out[..out.len() - tail.len()]);
}

#[test]
fn strip_scheme_cases() {
    let cases: [(&[u8], Option<&[u8]>); 5] = [
        (b"http://localhost:2379", Some(b"localhost:2379")),
        (b"https://[::1]:2379/", Some(b"[::1]:2379")),
        (b"unix://localhost:1234", Some(b"localhost:1234")),
        (b"localhost:2379", None),
        (b"", None),
    ];
    for (input, want) in cases {
        assert_eq!(strip_scheme(input), want);
    }
}

/// An `AsyncRead` that yields one byte per read and is pending in between.
struct Trickle {
    bytes: Vec<u8>,
    at: usize,
    ready: bool,
}

impl AsyncRead for Trickle {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.ready = !this.ready;
        if !this.ready {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if let Some(&b) = this.bytes.get(this.at) {
            buf.put_slice(&[b]);
            this.at += 1;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Trickle {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn async_reads_one_byte_at_a_time() {
    for input in [
        three_requests("http://localhost:2379"),
        three_requests("localhost:2379"),
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
    ] {
        let mut s = FixAuthority::new(Trickle {
            bytes: input.clone(),
            at: 0,
            ready: false,
        });
        let mut got = Vec::new();
        let mut small = [0u8; 3];
        loop {
            let n = s.read(&mut small).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, rewrite(&input, input.len()));
    }
}

/// What a raw HTTP/2 client saw for one stream.
#[derive(Debug, Default)]
struct Answer {
    status: Option<Vec<u8>>,
    body: Vec<u8>,
    reset: Option<u32>,
    done: bool,
}

/// Serves `service` with hyper's auto builder over an in-memory pipe, sends
/// the raw client bytes `input` and collects the answers for `streams`.
async fn exchange(input: Vec<u8>, streams: &[u32], fix: bool) -> Vec<Answer> {
    let (client, server) = tokio::io::duplex(1 << 20);
    let service =
        hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
            let uri = req.uri();
            let te = req.headers().get("te").map_or(&b"-"[..], |v| v.as_bytes());
            let body = format!(
                "{} {} {}",
                uri.authority().map_or("", |a| a.as_str()),
                uri.path(),
                String::from_utf8_lossy(te)
            );
            Ok::<_, Infallible>(http::Response::new(axum::body::Body::from(body)))
        });
    tokio::spawn(async move {
        let builder =
            hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
        let _ = if fix {
            let io = hyper_util::rt::TokioIo::new(FixAuthority::new(server));
            builder.serve_connection(io, service).await
        } else {
            let io = hyper_util::rt::TokioIo::new(server);
            builder.serve_connection(io, service).await
        };
    });
    let (mut rd, mut wr) = tokio::io::split(client);
    wr.write_all(&input).await.unwrap();
    let mut answers: Vec<Answer> = streams.iter().map(|_| Answer::default()).collect();
    let mut decoder = Decoder::new();
    let read = async {
        while !answers.iter().all(|a| a.done) {
            let mut head = [0u8; FRAME_HEADER_LEN];
            rd.read_exact(&mut head).await.unwrap();
            let head = FrameHead::parse(&head);
            let mut payload = vec![0; head.len];
            rd.read_exact(&mut payload).await.unwrap();
            assert_ne!(head.kind, GOAWAY, "connection refused: {payload:?}");
            if head.kind == SETTINGS && head.flags & 0x1 == 0 {
                wr.write_all(&frame(SETTINGS, 0x1, 0, &[])).await.unwrap();
            }
            let Some(i) = streams.iter().position(|&s| s == head.stream) else {
                continue;
            };
            let answer = &mut answers[i];
            match head.kind {
                HEADERS => {
                    assert_ne!(head.flags & END_HEADERS, 0);
                    let block = strip_headers_payload(head.flags, &payload).unwrap();
                    for (n, v) in decoder.decode(block).unwrap() {
                        if n == b":status" {
                            answer.status = Some(v);
                        }
                    }
                }
                DATA => answer.body.extend_from_slice(&payload),
                RST_STREAM => {
                    answer.reset = Some(u32::from_be_bytes(payload[..4].try_into().unwrap()));
                    answer.done = true;
                }
                _ => {}
            }
            answer.done |= head.flags & END_STREAM != 0 && matches!(head.kind, HEADERS | DATA);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("no answer from hyper");
    answers
}

#[tokio::test]
async fn hyper_answers_a_url_authority_through_the_shim() {
    let mut enc = IndexingClient::default();
    let mut input = opening();
    for (stream, path) in [(1, "/a"), (3, "/b"), (5, "/c")] {
        let mut fields_in = request("http://127.0.0.1:2379", path);
        fields_in[0].1 = b"GET".to_vec();
        let block = enc.encode(&fields_in);
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, stream, &block));
    }
    let answers = exchange(input, &[1, 3, 5], true).await;
    for (answer, path) in answers.iter().zip(["/a", "/b", "/c"]) {
        assert_eq!(answer.reset, None, "{answer:?}");
        assert_eq!(answer.status.as_deref(), Some(&b"200"[..]));
        assert_eq!(
            answer.body,
            format!("127.0.0.1:2379 {path} trailers").as_bytes()
        );
    }
}

#[tokio::test]
async fn without_the_shim_hyper_resets_the_stream() {
    let mut enc = Encoder::new();
    let mut fields_in = request("http://127.0.0.1:2379", "/a");
    fields_in[0].1 = b"GET".to_vec();
    let mut input = opening();
    input.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &encode(&mut enc, &fields_in),
    ));
    let answers = exchange(input, &[1], false).await;
    assert_eq!(answers[0].reset, Some(0x1), "{:?}", answers[0]); // PROTOCOL_ERROR
}

#[tokio::test]
async fn hyper_follows_our_dynamic_table_through_evictions() {
    // Each request adds a ~140-byte entry to our table, so the 4096-byte
    // table evicts continually; `te` is re-added and re-indexed as it goes.
    let mut client = IndexingClient::default();
    let streams: Vec<u32> = (0..60).map(|i| 2 * i + 1).collect();
    let mut input = opening();
    for &stream in &streams {
        let mut fields_in = request("http://127.0.0.1:2379", &format!("/p{stream}"));
        fields_in[0].1 = b"GET".to_vec();
        fields_in.push((format!("x-n{stream}").into_bytes(), vec![b'v'; 100]));
        let block = client.encode(&fields_in);
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, stream, &block));
    }
    let answers = exchange(input, &streams, true).await;
    for (answer, stream) in answers.iter().zip(&streams) {
        assert_eq!(answer.status.as_deref(), Some(&b"200"[..]), "{answer:?}");
        let want = format!("127.0.0.1:2379 /p{stream} trailers");
        assert_eq!(String::from_utf8_lossy(&answer.body), want);
    }
}

/// An HPACK integer with an `n`-bit prefix under `flags` (RFC 7541 §5.1).
fn hpack_int(flags: u8, n: u32, mut value: usize, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 0x80 {
        out.push(0x80 | (value & 0x7f) as u8);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A literal field with incremental indexing and a new name.
fn indexed_literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0x40);
    for s in [name, value] {
        hpack_int(0, 7, s.len(), out);
        out.extend_from_slice(s);
    }
}

/// A header block that adds a `size`-byte header to the dynamic table and
/// then names it `copies` times, one byte each (index 62 is the newest
/// entry): a block of `size + copies` bytes decoding to
/// `copies × (size + 33)`.
fn hpack_bomb(authority: &str, size: usize, copies: usize) -> Vec<u8> {
    let mut block = Vec::new();
    indexed_literal(b":authority", authority.as_bytes(), &mut block);
    indexed_literal(b"x", &vec![b'a'; size], &mut block);
    block.extend(std::iter::repeat_n(0x80 | 62, copies));
    block
}

/// Minimized by `oversized_header_lists_are_given_up_on`: a 2.6 KB block
/// whose header list decodes to just over 1 MiB was decoded whole into
/// owned fields (a 1 MiB block of one-byte references: over 4 GiB, and the
/// process aborts on the failed allocation).
#[test]
fn hpack_bombs_are_given_up_on() {
    let bomb = frame(
        HEADERS,
        END_HEADERS,
        1,
        &hpack_bomb("http://x:1", 2036, 506),
    );
    // As the first block: released unchanged, for hyper to refuse.
    let input = [opening(), bomb.clone()].concat();
    assert_eq!(rewrite(&input, input.len()), input);
    // Once rewriting: poisoned.
    let mut input = three_requests("http://localhost:2379");
    input.extend(&bomb);
    let out = rewrite(&input, input.len());
    assert!(out.ends_with(&[&POISON[..], &bomb].concat()));
    assert!(out.len() < input.len() + 1000);
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// Bytes out for bytes in: at most the input plus, per header block,
    /// a re-encoded list (literals: each field at most its RFC size) and
    /// its frame headers.
    fn bound(input: &[u8], blocks: usize) -> usize {
        let per_block = MAX_HEADER_LIST + FRAME_HEADER_LEN * (MAX_HEADER_LIST / MAX_FRAME_SIZE + 2);
        input.len() + blocks * per_block + POISON.len()
    }

    /// A frame: a request's header block (URL authority or not), a piece
    /// of one, or anything.
    fn frame_bytes() -> impl Strategy<Value = Vec<u8>> {
        let kind = prop_oneof![
            Just(HEADERS),
            Just(CONTINUATION),
            Just(DATA),
            Just(SETTINGS),
            any::<u8>()
        ];
        let payload = prop_oneof![
            (any::<bool>(), 0usize..3).prop_map(|(url, i)| {
                let authority = if url {
                    "http://localhost:2379"
                } else {
                    "localhost:2379"
                };
                encode(&mut Encoder::new(), &request(authority, &format!("/p{i}")))
            }),
            prop::collection::vec(any::<u8>(), 0..40),
        ];
        (kind, any::<u8>(), 0u32..4, payload)
            .prop_map(|(kind, flags, stream, payload)| frame(kind, flags, stream, &payload))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        /// Any frames after the preface: the same bytes out however the
        /// input is cut, within the bound.
        #[test]
        fn arbitrary_frames_are_passed_or_rewritten(
            frames in prop::collection::vec(frame_bytes(), 0..6),
            tail in prop::collection::vec(any::<u8>(), 0..20),
            chunk in 1usize..64,
        ) {
            let input = [opening(), frames.concat(), tail].concat();
            let whole = rewrite(&input, input.len());
            prop_assert_eq!(rewrite(&input, chunk), whole.clone());
            prop_assert!(whole.len() <= bound(&input, frames.len()));
        }

        /// Blocks that name one big table entry many times: a list past
        /// the limit is given up on (released unchanged as the first
        /// block, poisoned once rewriting), one within it handled as any.
        #[test]
        fn oversized_header_lists_are_given_up_on(
            url in any::<bool>(),
            size in 1usize..4000,
            copies in 0usize..1000,
            after_requests in any::<bool>(),
        ) {
            let authority = if url { "http://x:1" } else { "x:1" };
            let block = hpack_bomb(authority, size, copies);
            let listed = (10 + authority.len() + 32) + (copies + 1) * (1 + size + 32);
            let mut bomb = Vec::new();
            for (i, bytes) in block.chunks(MAX_FRAME_SIZE).enumerate() {
                let last = (i + 1) * MAX_FRAME_SIZE >= block.len();
                let kind = if i == 0 { HEADERS } else { CONTINUATION };
                bomb.extend(frame(kind, if last { END_HEADERS } else { 0 }, 9, bytes));
            }
            let before = if after_requests {
                three_requests("http://localhost:2379")
            } else {
                opening()
            };
            let input = [before.clone(), bomb.clone()].concat();
            let out = rewrite(&input, input.len());
            let poisoned = out.ends_with(&[&POISON[..], &bomb].concat());
            match (listed > MAX_HEADER_LIST, after_requests) {
                (true, false) => prop_assert!(out == input, "{} bytes out of {}", out.len(), input.len()),
                (true, true) => prop_assert!(poisoned),
                (false, false) => prop_assert_eq!(out == input, !url, "{} bytes out of {}", out.len(), input.len()),
                (false, true) => prop_assert!(!poisoned),
            }
        }
    }
}
