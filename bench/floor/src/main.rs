//! `pushgate-floor`: the least work the kernel allows for pushgate's bench
//! scenarios, so a figure can be read as "pushgate ÷ floor".
//!
//! One thread, one epoll loop (mio), no runtime, no framework, no history,
//! no heartbeats, no auth. It speaks exactly what `compare.sh pushgate`
//! sends, on the same ports, so the same rtload command line measures it:
//!
//! * `GET /sub/{ch}` on the subscriber address: SSE (pushgate's own raw
//!   response head, close-delimited body) or, with `Upgrade: websocket`, a
//!   WebSocket. Each message is one `id: N\ndata: D\n\n` event or one text
//!   frame, encoded once per publish and written to every member with one
//!   `write(2)` each. Unsent bytes wait in a per-connection buffer (dropped
//!   past 4 MiB) until the socket is writable.
//! * `POST /publish` on the publisher address, keep-alive:
//!   `{"channel":"C","data":D}` answers pushgate's receipt shape
//!   `{"results":[{"channel","id","subscribers"}]}`. `GET /healthz`: `ok`.
//! * `GET /` on the subscriber address: 404 (compare.sh's liveness probe).
//!
//! `--config FILE` is accepted and ignored, so `compare.sh` can start it as
//! `PUSHGATE_BIN`. It exits after `--exit-after` seconds (default 3600).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const SUB: Token = Token(usize::MAX - 1);
const PUB: Token = Token(usize::MAX - 2);
const MAX_HEAD: usize = 16 << 10;
const MAX_BODY: usize = 1 << 20;
/// Unsent bytes a subscriber may hold before it is dropped.
const MAX_PENDING: usize = 4 << 20;
/// pushgate's raw SSE response head, byte for byte.
const SSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nx-accel-buffering: no\r\nconnection: close\r\n\r\n";
const NOT_FOUND: &[u8] =
    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
const HEALTHY: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";
const BAD: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// A request on the subscriber address, head not yet complete.
    SubRequest,
    /// Keep-alive requests on the publisher address.
    Publisher,
    Sse,
    Ws,
}

struct Conn {
    stream: TcpStream,
    kind: Kind,
    inbuf: Vec<u8>,
    /// Bytes the socket has not taken yet.
    out: Vec<u8>,
    /// (channel, index in its member list)
    member: Option<(usize, usize)>,
    writable: bool,
    /// Close once `out` is flushed.
    closing: bool,
}

#[derive(Default)]
struct Channel {
    members: Vec<usize>,
    last_id: u64,
}

struct Floor {
    poll: Poll,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    channel_ids: HashMap<Vec<u8>, usize>,
    channels: Vec<Channel>,
    doomed: Vec<usize>,
}

fn main() {
    let mut sub: SocketAddr = "127.0.0.1:7080".parse().expect("literal");
    let mut publ: SocketAddr = "127.0.0.1:5571".parse().expect("literal");
    let mut exit_after = 3600u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        let parsed = match (arg.as_str(), value.as_deref()) {
            ("--sub", Some(v)) => v.parse().map(|a| sub = a).is_ok(),
            ("--pub", Some(v)) => v.parse().map(|a| publ = a).is_ok(),
            ("--exit-after", Some(v)) => v.parse().map(|s| exit_after = s).is_ok(),
            ("--config", Some(_)) => true,
            _ => false,
        };
        if !parsed {
            eprintln!(
                "usage: pushgate-floor [--sub ADDR] [--pub ADDR] [--exit-after SECS] [--config IGNORED]"
            );
            std::process::exit(2);
        }
    }
    if !sub.ip().is_loopback() || !publ.ip().is_loopback() {
        eprintln!("pushgate-floor: loopback addresses only");
        std::process::exit(2);
    }
    if let Err(error) = run(sub, publ, Duration::from_secs(exit_after)) {
        eprintln!("pushgate-floor: {error}");
        std::process::exit(1);
    }
}

fn run(sub: SocketAddr, publ: SocketAddr, exit_after: Duration) -> io::Result<()> {
    let poll = Poll::new()?;
    let mut sub_listener = TcpListener::bind(sub)?;
    let mut pub_listener = TcpListener::bind(publ)?;
    poll.registry()
        .register(&mut sub_listener, SUB, Interest::READABLE)?;
    poll.registry()
        .register(&mut pub_listener, PUB, Interest::READABLE)?;
    eprintln!(
        "pushgate-floor: pid {} subscribers on {sub}, publish on {publ}",
        std::process::id()
    );
    let mut floor = Floor {
        poll,
        conns: Vec::new(),
        free: Vec::new(),
        channel_ids: HashMap::new(),
        channels: Vec::new(),
        doomed: Vec::new(),
    };
    let mut events = Events::with_capacity(1024);
    let deadline = Instant::now() + exit_after;
    while Instant::now() < deadline {
        match floor.poll.poll(&mut events, Some(Duration::from_secs(1))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for event in &events {
            match event.token() {
                SUB => floor.accept(&sub_listener, Kind::SubRequest),
                PUB => floor.accept(&pub_listener, Kind::Publisher),
                Token(i) => {
                    if event.is_writable() {
                        floor.flush(i);
                    }
                    if event.is_readable() || event.is_read_closed() {
                        floor.readable(i);
                    }
                }
            }
            floor.close_doomed();
        }
    }
    Ok(())
}

impl Floor {
    fn accept(&mut self, listener: &TcpListener, kind: Kind) {
        loop {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let index = self.free.pop().unwrap_or_else(|| {
                        self.conns.push(None);
                        self.conns.len() - 1
                    });
                    if self
                        .poll
                        .registry()
                        .register(&mut stream, Token(index), Interest::READABLE)
                        .is_err()
                    {
                        self.free.push(index);
                        continue;
                    }
                    self.conns[index] = Some(Conn {
                        stream,
                        kind,
                        inbuf: Vec::new(),
                        out: Vec::new(),
                        member: None,
                        writable: false,
                        closing: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // EMFILE and the like: leave the rest in the backlog.
                Err(_) => return,
            }
        }
    }

    fn readable(&mut self, i: usize) {
        let Some(conn) = self.conns.get_mut(i).and_then(Option::as_mut) else {
            return;
        };
        let mut chunk = [0u8; 16 << 10];
        loop {
            match conn.stream.read(&mut chunk) {
                Ok(0) => return self.doomed.push(i),
                Ok(n) => match conn.kind {
                    // Subscribers' own bytes (WebSocket pongs, closes) are
                    // read and dropped: the floor keeps no client protocol.
                    Kind::Sse | Kind::Ws => {}
                    Kind::SubRequest | Kind::Publisher => {
                        if conn.inbuf.len() + n > MAX_HEAD + MAX_BODY {
                            return self.doomed.push(i);
                        }
                        conn.inbuf.extend_from_slice(&chunk[..n]);
                    }
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.doomed.push(i),
            }
        }
        match conn.kind {
            Kind::SubRequest => self.subscribe_request(i),
            Kind::Publisher => self.publish_requests(i),
            Kind::Sse | Kind::Ws => {}
        }
    }

    fn subscribe_request(&mut self, i: usize) {
        let Some(conn) = self.conns[i].as_mut() else {
            return;
        };
        let Some(head) = parse_head(&conn.inbuf) else {
            if conn.inbuf.len() > MAX_HEAD {
                self.doomed.push(i);
            }
            return;
        };
        let Some(channel) = head.path.strip_prefix(b"/sub/") else {
            return self.answer_and_close(i, NOT_FOUND);
        };
        let channel = channel.split(|&b| b == b'?').next().unwrap_or_default();
        if channel.is_empty() {
            return self.answer_and_close(i, NOT_FOUND);
        }
        let reply = match head.ws_key {
            Some(key) => {
                conn.kind = Kind::Ws;
                let mut sha = sha1_smol::Sha1::new();
                sha.update(key);
                sha.update(WS_GUID);
                let mut reply = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: ".to_vec();
                base64(&sha.digest().bytes(), &mut reply);
                reply.extend_from_slice(b"\r\n\r\n");
                reply
            }
            None => {
                conn.kind = Kind::Sse;
                SSE_HEAD.to_vec()
            }
        };
        let channel = channel.to_vec();
        conn.inbuf = Vec::new();
        let id = self.channel(&channel);
        let members = &mut self.channels[id].members;
        let at = members.len();
        members.push(i);
        if let Some(conn) = self.conns[i].as_mut() {
            conn.member = Some((id, at));
        }
        self.send(i, &reply);
    }

    fn publish_requests(&mut self, i: usize) {
        loop {
            let Some(conn) = self.conns[i].as_mut() else {
                return;
            };
            let Some(head) = parse_head(&conn.inbuf) else {
                if conn.inbuf.len() > MAX_HEAD {
                    self.doomed.push(i);
                }
                return;
            };
            if head.content_length > MAX_BODY {
                return self.answer_and_close(i, BAD);
            }
            let end = head.len + head.content_length;
            if conn.inbuf.len() < end {
                return;
            }
            let (publish, health) = (
                head.method == b"POST" && head.path == b"/publish",
                head.method == b"GET" && head.path == b"/healthz",
            );
            let head_len = head.len;
            let request: Vec<u8> = conn.inbuf.drain(..end).collect();
            let body = &request[head_len..];
            let reply = match (publish, health) {
                (true, _) => match parse_publish(body) {
                    Some((channel, data)) => {
                        let (id, subscribers) = self.publish(channel, data);
                        let json = format!(
                            r#"{{"results":[{{"channel":"{}","id":"{id}","subscribers":{subscribers}}}]}}"#,
                            String::from_utf8_lossy(channel)
                        );
                        let mut reply = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                            json.len()
                        )
                        .into_bytes();
                        reply.extend_from_slice(json.as_bytes());
                        reply
                    }
                    None => return self.answer_and_close(i, BAD),
                },
                (false, true) => HEALTHY.to_vec(),
                _ => return self.answer_and_close(i, NOT_FOUND),
            };
            self.send(i, &reply);
        }
    }

    /// Encodes the message once per transport and writes it to every member.
    fn publish(&mut self, channel: &[u8], data: &[u8]) -> (u64, usize) {
        let id = self.channel(channel);
        let ch = &mut self.channels[id];
        ch.last_id += 1;
        let seq = ch.last_id;
        let mut sse = Vec::with_capacity(data.len() + 32);
        sse.extend_from_slice(b"id: ");
        sse.extend_from_slice(seq.to_string().as_bytes());
        sse.extend_from_slice(b"\ndata: ");
        sse.extend_from_slice(data);
        sse.extend_from_slice(b"\n\n");
        let mut ws = Vec::with_capacity(data.len() + 4);
        ws.push(0x81);
        match data.len() {
            n @ 0..=125 => ws.push(n as u8),
            n @ 126..=65535 => {
                ws.push(126);
                ws.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                ws.push(127);
                ws.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        ws.extend_from_slice(data);
        let members = std::mem::take(&mut self.channels[id].members);
        for &m in &members {
            let frame = match self.conns[m].as_ref().map(|c| c.kind) {
                Some(Kind::Ws) => &ws,
                _ => &sse,
            };
            self.send(m, frame);
        }
        let count = members.len();
        self.channels[id].members = members;
        (seq, count)
    }

    fn channel(&mut self, name: &[u8]) -> usize {
        if let Some(&id) = self.channel_ids.get(name) {
            return id;
        }
        self.channels.push(Channel::default());
        let id = self.channels.len() - 1;
        self.channel_ids.insert(name.to_vec(), id);
        id
    }

    /// One `write(2)` when nothing is waiting; otherwise queue behind it.
    fn send(&mut self, i: usize, bytes: &[u8]) {
        let Some(conn) = self.conns[i].as_mut() else {
            return;
        };
        if !conn.out.is_empty() {
            if conn.out.len() + bytes.len() > MAX_PENDING {
                return self.doomed.push(i);
            }
            conn.out.extend_from_slice(bytes);
            return;
        }
        let mut written = 0;
        while written < bytes.len() {
            match conn.stream.write(&bytes[written..]) {
                Ok(0) => return self.doomed.push(i),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.doomed.push(i),
            }
        }
        if written < bytes.len() {
            conn.out.extend_from_slice(&bytes[written..]);
            self.arm(i, true);
        }
    }

    fn flush(&mut self, i: usize) {
        let Some(conn) = self.conns[i].as_mut() else {
            return;
        };
        let mut written = 0;
        while written < conn.out.len() {
            match conn.stream.write(&conn.out[written..]) {
                Ok(0) => return self.doomed.push(i),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.doomed.push(i),
            }
        }
        conn.out.drain(..written);
        if conn.out.is_empty() {
            if conn.closing {
                return self.doomed.push(i);
            }
            self.arm(i, false);
        }
    }

    fn arm(&mut self, i: usize, writable: bool) {
        let Some(conn) = self.conns[i].as_mut() else {
            return;
        };
        if conn.writable == writable {
            return;
        }
        conn.writable = writable;
        let interest = if writable {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        if self
            .poll
            .registry()
            .reregister(&mut conn.stream, Token(i), interest)
            .is_err()
        {
            self.doomed.push(i);
        }
    }

    fn answer_and_close(&mut self, i: usize, bytes: &[u8]) {
        self.send(i, bytes);
        let Some(conn) = self.conns[i].as_mut() else {
            return;
        };
        if conn.out.is_empty() {
            self.doomed.push(i);
        } else {
            conn.closing = true;
        }
    }

    fn close_doomed(&mut self) {
        while let Some(i) = self.doomed.pop() {
            let Some(mut conn) = self.conns[i].take() else {
                continue;
            };
            if let Some((channel, at)) = conn.member {
                let members = &mut self.channels[channel].members;
                members.swap_remove(at);
                if let Some(&moved) = members.get(at)
                    && let Some(c) = self.conns[moved].as_mut()
                {
                    c.member = Some((channel, at));
                }
            }
            let _ = self.poll.registry().deregister(&mut conn.stream);
            self.free.push(i);
        }
    }
}

struct Head<'a> {
    method: &'a [u8],
    path: &'a [u8],
    len: usize,
    content_length: usize,
    ws_key: Option<&'a [u8]>,
}

/// The request head at the start of `buf`, once it is complete.
fn parse_head(buf: &[u8]) -> Option<Head<'_>> {
    let len = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let mut lines = buf[..len - 4].split(|&b| b == b'\n');
    let mut request = lines.next()?.split(|&b| b == b' ');
    let method = request.next()?;
    let path = request.next()?;
    let mut head = Head {
        method,
        path,
        len,
        content_length: 0,
        ws_key: None,
    };
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            head.content_length = std::str::from_utf8(value).ok()?.parse().ok()?;
        } else if name.eq_ignore_ascii_case(b"sec-websocket-key") {
            head.ws_key = Some(value);
        }
    }
    Some(head)
}

/// `{"channel":"C","data":D}` → (C, D), by position: the floor trusts its
/// load generator and validates nothing.
fn parse_publish(body: &[u8]) -> Option<(&[u8], &[u8])> {
    const CHANNEL: &[u8] = b"\"channel\":\"";
    const DATA: &[u8] = b"\"data\":";
    let at = find(body, CHANNEL)? + CHANNEL.len();
    let len = body[at..].iter().position(|&b| b == b'"')?;
    let channel = &body[at..at + len];
    let data_at = find(body, DATA)? + DATA.len();
    let end = body.iter().rposition(|&b| b == b'}')?;
    (data_at < end).then(|| (channel, body[data_at..end].trim_ascii()))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn base64(input: &[u8], out: &mut Vec<u8>) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * k) & 63) as usize]);
            } else {
                out.push(b'=');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_accept_key_is_rfc_6455s_example() {
        let mut sha = sha1_smol::Sha1::new();
        sha.update(b"dGhlIHNhbXBsZSBub25jZQ==");
        sha.update(WS_GUID);
        let mut out = Vec::new();
        base64(&sha.digest().bytes(), &mut out);
        assert_eq!(out, b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn publish_body_by_position() {
        let body = br#"{"channel":"fan20_0","data":{"seq":7,"ts_ns":123}}"#;
        let (channel, data) = parse_publish(body).unwrap();
        assert_eq!(channel, b"fan20_0");
        assert_eq!(data, br#"{"seq":7,"ts_ns":123}"#);
    }

    #[test]
    fn head_with_length_and_key() {
        let req =
            b"POST /publish HTTP/1.1\r\nContent-Length: 12\r\nSec-WebSocket-Key: abc\r\n\r\nbody";
        let head = parse_head(req).unwrap();
        assert_eq!(head.method, b"POST");
        assert_eq!(head.path, b"/publish");
        assert_eq!(head.content_length, 12);
        assert_eq!(head.ws_key, Some(&b"abc"[..]));
        assert_eq!(head.len, req.len() - 4);
    }
}
