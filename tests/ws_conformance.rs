//! WebSocket conformance (RFC 6455) with a raw-frame client over a plain
//! `TcpStream`: the cases of the Autobahn testsuite's core sections that
//! apply to a server, driven as a table (docs/ws-conformance.md maps the
//! sections to these cases). No WebSocket library is involved on the
//! client side, so the client can send what a library would refuse to.

mod support;

use std::time::Duration;

use support::{Pushgate, WAIT, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONFIG: &str = r#"
listen: { http: ["127.0.0.1:0"] }
internal: { listen: "127.0.0.1:0" }
realtime:
  max_message: 128KiB
routes:
  - name: live
    match: { path: "/live/{channel}" }
    realtime:
      channels: ["{channel}"]
"#;

const MAX_MESSAGE: usize = 128 * 1024;

// Opcodes.
const CONT: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// One client frame, as raw as the case needs.
#[derive(Clone)]
struct F {
    fin: bool,
    rsv: u8,
    opcode: u8,
    masked: bool,
    payload: Vec<u8>,
}

fn f(opcode: u8, payload: impl Into<Vec<u8>>) -> F {
    F {
        fin: true,
        rsv: 0,
        opcode,
        masked: true,
        payload: payload.into(),
    }
}

impl F {
    fn fin(mut self, fin: bool) -> Self {
        self.fin = fin;
        self
    }
    fn rsv(mut self, rsv: u8) -> Self {
        self.rsv = rsv;
        self
    }
    fn unmasked(mut self) -> Self {
        self.masked = false;
        self
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = vec![(u8::from(self.fin) << 7) | (self.rsv << 4) | self.opcode];
        let mask_bit = if self.masked { 0x80 } else { 0 };
        let len = self.payload.len();
        if len < 126 {
            out.push(mask_bit | len as u8);
        } else if len <= 0xFFFF {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        if self.masked {
            let key = [0x37, 0xfa, 0x21, 0x3d];
            out.extend_from_slice(&key);
            out.extend(self.payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            out.extend_from_slice(&self.payload);
        }
        out
    }
}

fn close_body(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(reason);
    body
}

/// `{"type":"ping"}` padded with JSON whitespace to `len` bytes.
fn json_ping(len: usize) -> Vec<u8> {
    let mut v = br#"{"type":"ping""#.to_vec();
    v.resize(len - 1, b' ');
    v.push(b'}');
    v
}

/// What the server must do after the case's frames.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    /// Pongs with these payloads (in order), then stays open.
    Pongs(Vec<Vec<u8>>),
    /// Text replies of these JSON `type`s (and error `code`s), in order,
    /// pongs allowed in between; then stays open.
    Replies(Vec<&'static str>),
    /// A Close frame with this code, then the connection ends.
    Close(u16),
}

struct Case {
    /// Autobahn section (docs/ws-conformance.md).
    section: &'static str,
    name: &'static str,
    frames: Vec<F>,
    expect: Expect,
}

fn case(section: &'static str, name: &'static str, frames: Vec<F>, expect: Expect) -> Case {
    Case {
        section,
        name,
        frames,
        expect,
    }
}

fn pongs(p: &[&[u8]]) -> Expect {
    Expect::Pongs(p.iter().map(|p| p.to_vec()).collect())
}

fn cases() -> Vec<Case> {
    use Expect::*;
    let ping = || json_ping(15);
    let mut cases = vec![
        // 1 Framing: text and binary frames of each length encoding.
        case("1", "text, 0 bytes", vec![f(TEXT, "")], Replies(vec!["invalid_json"])),
        case("1", "text, 125 bytes", vec![f(TEXT, json_ping(125))], Replies(vec!["pong"])),
        case("1", "text, 126 bytes (16-bit length)", vec![f(TEXT, json_ping(126))], Replies(vec!["pong"])),
        case("1", "text, 65535 bytes", vec![f(TEXT, json_ping(65535))], Replies(vec!["pong"])),
        case("1", "text, 65536 bytes (64-bit length)", vec![f(TEXT, json_ping(65536))], Replies(vec!["pong"])),
        case("1", "binary frame", vec![f(BINARY, vec![0xfe; 16])], Replies(vec!["binary_not_allowed"])),
        case("1", "binary frame, empty", vec![f(BINARY, "")], Replies(vec!["binary_not_allowed"])),
        case("1", "unmasked client frame (RFC 6455 §5.1)", vec![f(TEXT, ping()).unmasked()], Close(1002)),
        case("1", "unmasked client ping", vec![f(PING, "x").unmasked()], Close(1002)),
        case("1", "text of exactly max_message", vec![f(TEXT, json_ping(MAX_MESSAGE))], Replies(vec!["pong"])),
        case("1", "text over max_message", vec![f(TEXT, vec![b' '; MAX_MESSAGE + 1])], Close(1009)),
        // 2 Pings and pongs.
        case("2", "ping, empty", vec![f(PING, "")], pongs(&[b""])),
        case("2", "ping, text payload", vec![f(PING, "Hello, world!")], pongs(&[b"Hello, world!"])),
        case("2", "ping, binary payload", vec![f(PING, vec![0x00, 0xff, 0xfe, 0xfd])], pongs(&[&[0x00, 0xff, 0xfe, 0xfd]])),
        case("2", "ping, 125 bytes", vec![f(PING, vec![b'p'; 125])], pongs(&[&[b'p'; 125]])),
        case("2", "ping, 126 bytes", vec![f(PING, vec![b'p'; 126])], Close(1002)),
        case("2", "unsolicited pong, then ping", vec![f(PONG, "unsolicited"), f(PING, "after")], pongs(&[b"after"])),
        case("2", "ten pings", (0..10).map(|i| f(PING, format!("ping {i}"))).collect(),
            Pongs((0..10).map(|i| format!("ping {i}").into_bytes()).collect())),
        case("2", "pong, 126 bytes", vec![f(PONG, vec![b'p'; 126])], Close(1002)),
        // 3 Reserved bits (no extension negotiated).
        case("3", "text with RSV1", vec![f(TEXT, ping()).rsv(4)], Close(1002)),
        case("3", "text with RSV2", vec![f(TEXT, ping()).rsv(2)], Close(1002)),
        case("3", "text with RSV3", vec![f(TEXT, ping()).rsv(1)], Close(1002)),
        case("3", "valid text, then RSV1|RSV2", vec![f(TEXT, ping()), f(TEXT, ping()).rsv(6)], Close(1002)),
        case("3", "ping with RSV1|RSV2|RSV3", vec![f(PING, "x").rsv(7)], Close(1002)),
        case("3", "binary with RSV2|RSV3", vec![f(BINARY, "x").rsv(3)], Close(1002)),
        case("3", "close with RSV1", vec![f(CLOSE, close_body(1000, b"")).rsv(4)], Close(1002)),
        // 6 UTF-8 handling.
        case("6", "valid UTF-8 text", vec![f(TEXT, r#"{"type":"ping","x":"κόσμε 𝄞"}"#)], Replies(vec!["pong"])),
        case("6", "invalid UTF-8, single frame", vec![f(TEXT, b"{\"type\":\"ping\",\"x\":\"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\"}".to_vec())], Close(1007)),
        case("6", "overlong encoding, single frame", vec![f(TEXT, b"\xc0\xaf".to_vec())], Close(1007)),
        case("6", "invalid UTF-8 across fragments", vec![f(TEXT, "{\"x\":\"").fin(false), f(CONT, b"\xff\xfe\"}".to_vec())], Close(1007)),
        case("6", "truncated code point at the end", vec![f(TEXT, b"\xe1\xbd".to_vec())], Close(1007)),
    ];
    // 4 Opcodes: reserved non-control and control opcodes.
    for opcode in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        cases.push(case(
            "4",
            "reserved opcode",
            vec![f(opcode, "x")],
            Close(1002),
        ));
    }
    cases.push(case(
        "4",
        "reserved opcode after a valid text",
        vec![f(TEXT, ping()), f(5, "")],
        Close(1002),
    ));
    // 5 Fragmentation.
    let text = r#"{"type":"ping","x":"fragmented κόσμε"}"#.as_bytes().to_vec();
    let (a, rest) = text.split_at(10);
    let (b, c) = rest.split_at(15);
    cases.extend([
        case(
            "5",
            "fragmented ping",
            vec![f(PING, "a").fin(false), f(CONT, "b")],
            Close(1002),
        ),
        case(
            "5",
            "fragmented pong",
            vec![f(PONG, "a").fin(false), f(CONT, "b")],
            Close(1002),
        ),
        case(
            "5",
            "fragmented close",
            vec![f(CLOSE, close_body(1000, b"")).fin(false)],
            Close(1002),
        ),
        case(
            "5",
            "text in three fragments",
            vec![f(TEXT, a).fin(false), f(CONT, b).fin(false), f(CONT, c)],
            Replies(vec!["pong"]),
        ),
        case(
            "5",
            "ping between fragments",
            vec![
                f(TEXT, a).fin(false),
                f(PING, "mid"),
                f(CONT, b).fin(false),
                f(CONT, c),
            ],
            Replies(vec!["pong"]),
        ),
        case(
            "5",
            "empty fragments",
            vec![
                f(TEXT, "").fin(false),
                f(CONT, "").fin(false),
                f(CONT, ping()),
            ],
            Replies(vec!["pong"]),
        ),
        case(
            "5",
            "continuation without a message",
            vec![f(CONT, ping())],
            Close(1002),
        ),
        case(
            "5",
            "final continuation without a message",
            vec![f(CONT, "x").fin(false)],
            Close(1002),
        ),
        case(
            "5",
            "new text inside a fragmented text",
            vec![f(TEXT, a).fin(false), f(TEXT, ping())],
            Close(1002),
        ),
        case(
            "5",
            "fragmented message over max_message",
            vec![
                f(TEXT, vec![b' '; MAX_MESSAGE / 2 + 1]).fin(false),
                f(CONT, vec![b' '; MAX_MESSAGE / 2 + 1]),
            ],
            Close(1009),
        ),
    ]);
    // Split in the middle of a code point: valid once joined.
    let mut split = Vec::new();
    for piece in text.chunks(1) {
        split.push(f(CONT, piece).fin(false));
    }
    split[0].opcode = TEXT;
    split.last_mut().unwrap().fin = true;
    cases.push(case(
        "6",
        "valid UTF-8 in 1-byte fragments",
        split,
        Replies(vec!["pong"]),
    ));
    // 7 Close handling.
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
        4000, 4999,
    ] {
        cases.push(case(
            "7",
            "valid close code",
            vec![f(CLOSE, close_body(code, b""))],
            Close(1000),
        ));
    }
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        cases.push(case(
            "7",
            "invalid close code",
            vec![f(CLOSE, close_body(code, b""))],
            Close(1002),
        ));
    }
    cases.extend([
        case("7", "close, empty body", vec![f(CLOSE, "")], Close(1000)),
        case(
            "7",
            "close, 1-byte body",
            vec![f(CLOSE, "\x03")],
            Close(1002),
        ),
        case(
            "7",
            "close with a UTF-8 reason",
            vec![f(CLOSE, close_body(1000, "κόσμε".as_bytes()))],
            Close(1000),
        ),
        case(
            "7",
            "close with a 123-byte reason",
            vec![f(CLOSE, close_body(1000, &[b'r'; 123]))],
            Close(1000),
        ),
        case(
            "7",
            "close with a 124-byte reason (126-byte frame)",
            vec![f(CLOSE, close_body(1000, &[b'r'; 124]))],
            Close(1002),
        ),
        case(
            "7",
            "close reason not UTF-8",
            vec![f(
                CLOSE,
                close_body(
                    1000,
                    b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80",
                ),
            )],
            Close(1007),
        ),
        case(
            "7",
            "close, then a ping (ignored)",
            vec![f(CLOSE, close_body(1000, b"")), f(PING, "late")],
            Close(1000),
        ),
        case(
            "7",
            "close inside a fragmented text",
            vec![f(TEXT, a).fin(false), f(CLOSE, close_body(1000, b""))],
            Close(1000),
        ),
    ]);
    cases
}

/// A frame from the server.
#[derive(Debug)]
struct ServerFrame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

struct RawClient {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    async fn connect(pg: &Pushgate, channel: &str) -> Self {
        let mut tcp = TcpStream::connect(pg.http).await.unwrap();
        support::ws_handshake(&mut tcp, &format!("/live/{channel}")).await;
        let mut client = Self {
            tcp,
            buf: Vec::new(),
        };
        let subscribed = within("subscribed", client.frame())
            .await
            .expect("a subscribed frame");
        assert_eq!(subscribed.opcode, TEXT);
        assert!(String::from_utf8_lossy(&subscribed.payload).contains("subscribed"));
        client
    }

    /// Reads more bytes; false at EOF (or a reset).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16384];
        match self.tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next server frame, or `None` if the connection ended.
    async fn frame(&mut self) -> Option<ServerFrame> {
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            if !self.fill().await {
                // Ended (maybe inside a frame): no frame.
                return None;
            }
        }
    }

    async fn send(&mut self, frames: &[F]) {
        let bytes: Vec<u8> = frames.iter().flat_map(F::encode).collect();
        // The server may close (and reset) before it has read everything.
        let _ = self.tcp.write_all(&bytes).await;
    }
}

/// Parses one server frame; server frames must be unmasked and use no
/// reserved bits.
fn parse_server_frame(buf: &[u8]) -> Option<(ServerFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    assert_eq!(buf[0] & 0x70, 0, "server frame with reserved bits");
    assert_eq!(buf[1] & 0x80, 0, "server frames are not masked");
    let (len, start) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => (
            usize::try_from(u64::from_be_bytes(buf[2..10].try_into().unwrap())).unwrap(),
            10,
        ),
        126 | 127 => return None,
        n => (usize::from(n), 2),
    };
    if buf.len() < start + len {
        return None;
    }
    Some((
        ServerFrame {
            fin: buf[0] & 0x80 != 0,
            opcode: buf[0] & 0x0f,
            payload: buf[start..start + len].to_vec(),
        },
        start + len,
    ))
}

/// The `type` of a text reply, or its error `code`.
fn reply_kind(payload: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(payload).expect("JSON reply");
    match v["type"].as_str() {
        Some("error") => v["code"].as_str().unwrap_or("?").to_owned(),
        Some(t) => t.to_owned(),
        None => panic!("reply without a type: {v}"),
    }
}

/// Runs one case; `Err` describes how the server's behaviour differed.
async fn run(pg: &Pushgate, n: usize, case: &Case) -> Result<(), String> {
    let mut client = RawClient::connect(pg, &format!("c{n}")).await;
    client.send(&case.frames).await;
    let mut got = Vec::new();
    let done = match &case.expect {
        Expect::Close(code) => loop {
            match client.frame().await {
                None => return Err(format!("ended without a Close after {got:?}")),
                Some(fr) if fr.opcode == CLOSE => {
                    if fr.payload.len() < 2 {
                        return Err(format!("Close without a code: {:?}", fr.payload));
                    }
                    let got_code = u16::from_be_bytes([fr.payload[0], fr.payload[1]]);
                    if got_code != *code {
                        return Err(format!("closed with {got_code}, wanted {code}"));
                    }
                    if std::str::from_utf8(&fr.payload[2..]).is_err() {
                        return Err("Close reason not UTF-8".into());
                    }
                    break true;
                }
                // Pongs, replies to earlier valid frames.
                Some(fr) => got.push(fr.opcode),
            }
        },
        Expect::Pongs(want) => {
            for payload in want {
                match client.frame().await {
                    Some(fr) if fr.opcode == PONG && fr.fin && &fr.payload == payload => {}
                    other => return Err(format!("wanted pong {payload:?}, got {other:?}")),
                }
            }
            false
        }
        Expect::Replies(want) => {
            for kind in want {
                loop {
                    match client.frame().await {
                        Some(fr) if fr.opcode == PONG => continue,
                        Some(fr) if fr.opcode == TEXT && fr.fin => {
                            let got = reply_kind(&fr.payload);
                            if got != *kind {
                                return Err(format!("wanted reply {kind}, got {got}"));
                            }
                            break;
                        }
                        other => return Err(format!("wanted reply {kind}, got {other:?}")),
                    }
                }
            }
            false
        }
    };
    if done {
        // The server ends the connection after its Close (answering ours
        // first, if it waits for one).
        client.send(&[f(CLOSE, close_body(1000, b""))]).await;
        loop {
            match tokio::time::timeout(Duration::from_secs(5), client.frame()).await {
                Err(_) => return Err("connection still open 5 s after the Close".into()),
                Ok(None) => return Ok(()),
                Ok(Some(fr)) if fr.opcode == CLOSE => {}
                Ok(Some(fr)) => return Err(format!("frame after Close: {fr:?}")),
            }
        }
    }
    // Still open and in sync: a ping is answered.
    client.send(&[f(PING, "still open?")]).await;
    match client.frame().await {
        Some(fr) if fr.opcode == PONG && fr.payload == b"still open?" => Ok(()),
        other => Err(format!("not open after the case: {other:?}")),
    }
}

#[tokio::test]
async fn autobahn_core_cases_against_the_server() {
    let pg = Pushgate::start(CONFIG).await;
    let cases = cases();
    let mut failures = Vec::new();
    let started = std::time::Instant::now();
    for (n, case) in cases.iter().enumerate() {
        let result = match tokio::time::timeout(WAIT, run(&pg, n, case)).await {
            Ok(result) => result,
            Err(_) => Err("timed out: the server neither answered nor closed".into()),
        };
        if let Err(why) = result {
            failures.push(format!(
                "  [{}] {} ({:?}): {why}",
                case.section, case.name, case.expect
            ));
        }
    }
    assert!(
        started.elapsed() < WAIT * 6,
        "cases took {:?}",
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn the_raw_client_encodes_frames_like_rfc_6455_examples() {
    // RFC 6455 §5.7: a masked "Hello" from a client.
    let mut hello = f(TEXT, "Hello");
    let encoded = hello.encode();
    assert_eq!(&encoded[..2], &[0x81, 0x85]);
    let key = &encoded[2..6];
    let unmasked: Vec<u8> = encoded[6..]
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ key[i % 4])
        .collect();
    assert_eq!(unmasked, b"Hello");
    hello = hello.unmasked();
    assert_eq!(hello.encode(), [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
    assert_eq!(json_ping(126).len(), 126);
    let (frame, used) = parse_server_frame(&[0x89, 0x05, b'H', b'e', b'l', b'l', b'o']).unwrap();
    assert_eq!(
        (frame.opcode, used, &frame.payload[..]),
        (PING, 7, &b"Hello"[..])
    );
}
