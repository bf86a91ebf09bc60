//! The WebSocket close handshake (RFC 6455 §7.1.1) for closes the server
//! starts: the close frame reaches a peer that still has frames in flight,
//! and TCP is closed only after the peer's Close (or 2 s).
//!
//! A raw TCP client, so the test controls exactly what is in flight and
//! sees the TCP close itself.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::Pushgate;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const CONFIG: &str = r#"
listen: { http: ["127.0.0.1:0"] }
internal: { listen: "127.0.0.1:0" }
realtime:
  max_message: 1KiB
routes:
  - name: any
    match: { path: "/any" }
    realtime:
      query_channels: true
"#;

/// Opens a WebSocket on `/any` by hand; returns the split socket.
async fn open(pg: &Pushgate) -> (OwnedReadHalf, OwnedWriteHalf) {
    let mut tcp = TcpStream::connect(pg.http).await.unwrap();
    support::ws_handshake(&mut tcp, "/any").await;
    tcp.into_split()
}

/// A masked client frame.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    let mask = [0x12, 0x34, 0x56, 0x78];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// A server frame: (opcode, payload), or the read error / EOF.
async fn read_frame(read: &mut OwnedReadHalf) -> std::io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    read.read_exact(&mut h).await?;
    let len = match h[1] & 0x7f {
        126 => usize::from(read.read_u16().await?),
        127 => read.read_u64().await? as usize,
        n => usize::from(n),
    };
    let mut payload = vec![0u8; len];
    read.read_exact(&mut payload).await?;
    Ok((h[0] & 0x0f, payload))
}

/// Reads server frames until a Close; returns its code. Any read error
/// before it means the close frame was lost.
async fn close_code(read: &mut OwnedReadHalf) -> u16 {
    support::within("the close frame", async {
        loop {
            match read_frame(read).await {
                Ok((0x8, payload)) => {
                    assert!(payload.len() >= 2, "close frame carries a code");
                    return u16::from_be_bytes([payload[0], payload[1]]);
                }
                Ok(_) => continue,
                Err(e) => panic!("no close frame received: {e}"),
            }
        }
    })
    .await
}

/// Waits for the server to close TCP; returns how long it took.
async fn tcp_closed(read: &mut OwnedReadHalf) -> Duration {
    let started = Instant::now();
    support::within("the TCP close", async {
        let mut buf = [0u8; 4096];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    started.elapsed()
}

/// A fragmented message over `max_message` with 120 KB more fragments
/// written behind it, all before the client reads anything.
async fn oversize_with_fragments_in_flight(write: &mut OwnedWriteHalf) {
    let chunk = vec![b' '; 600];
    let mut bytes = frame(false, 0x1, &chunk);
    for _ in 0..200 {
        bytes.extend(frame(false, 0x0, &chunk));
    }
    // Errors are fine: the server may be done reading by then.
    let _ = write.write_all(&bytes).await;
}

#[tokio::test]
async fn close_1009_reaches_a_client_with_fragments_in_flight() {
    let pg = Pushgate::start(CONFIG).await;
    let (mut read, mut write) = open(&pg).await;
    oversize_with_fragments_in_flight(&mut write).await;
    // The server discards what is in flight instead of resetting the
    // connection, so the close frame is still there to read.
    assert_eq!(close_code(&mut read).await, 1009);
    write
        .write_all(&frame(true, 0x8, &1009u16.to_be_bytes()))
        .await
        .expect("the connection is still open for our Close, not reset");
    let took = tcp_closed(&mut read).await;
    assert!(
        took < Duration::from_millis(1500),
        "TCP closed right after our Close, not at the 2 s timeout ({took:?})"
    );
}

/// `pushgate_sessions_ended_total{transport="websocket",reason}`: after
/// the session ends, the value of that series (waits for the count).
async fn ended(pg: &Pushgate, reason: &str, at_least: u64) -> u64 {
    let series =
        format!("pushgate_sessions_ended_total{{transport=\"websocket\",reason=\"{reason}\"}} ");
    support::within(&format!("{series}>= {at_least}"), async {
        loop {
            let text = pg.metrics().await;
            let value = text
                .lines()
                .find_map(|l| l.strip_prefix(&series))
                .map(|v| v.trim().parse::<u64>().unwrap());
            if let Some(v) = value
                && v >= at_least
            {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test]
async fn each_ended_session_is_counted_under_its_reason() {
    let pg = Pushgate::start(CONFIG).await;
    // Every reason is exported from the start, at 0.
    assert_eq!(ended(&pg, "too_big", 0).await, 0);
    assert_eq!(ended(&pg, "client", 0).await, 0);
    let (mut read, mut write) = open(&pg).await;
    oversize_with_fragments_in_flight(&mut write).await;
    assert_eq!(close_code(&mut read).await, 1009);
    assert_eq!(ended(&pg, "too_big", 1).await, 1);
    let (mut read, mut write) = open(&pg).await;
    write
        .write_all(&frame(true, 0x8, &1000u16.to_be_bytes()))
        .await
        .unwrap();
    assert_eq!(close_code(&mut read).await, 1000);
    assert_eq!(ended(&pg, "client", 1).await, 1);
    assert_eq!(ended(&pg, "too_big", 0).await, 1, "counted once");
}

#[tokio::test]
async fn a_peer_that_never_answers_the_close_is_cut_off_after_two_seconds() {
    let pg = Pushgate::start(CONFIG).await;
    let (mut read, mut write) = open(&pg).await;
    oversize_with_fragments_in_flight(&mut write).await;
    assert_eq!(close_code(&mut read).await, 1009);
    // No Close from us: the server waits for it, then closes TCP anyway.
    let took = tcp_closed(&mut read).await;
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(6),
        "TCP closed by the 2 s close-handshake timeout ({took:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_1001_on_shutdown_reaches_a_client_that_keeps_sending() {
    let mut pg = Pushgate::start(CONFIG).await;
    let (mut read, mut write) = open(&pg).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            // Unsolicited pongs (the server answers none), without pause,
            // until told to stop.
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) && n < 1_000_000 {
                if write
                    .write_all(&frame(true, 0xA, b"in flight"))
                    .await
                    .is_err()
                {
                    break;
                }
                n += 1;
                if n.is_multiple_of(64) {
                    tokio::task::yield_now().await;
                }
            }
            write
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let drain = tokio::spawn(async move { pg.drain(Duration::from_secs(8)).await });
    assert_eq!(close_code(&mut read).await, 1001);
    stop.store(true, Ordering::Relaxed);
    let mut write = writer.await.unwrap();
    let _ = write
        .write_all(&frame(true, 0x8, &1001u16.to_be_bytes()))
        .await;
    tcp_closed(&mut read).await;
    assert!(
        support::within("the drain", drain).await.unwrap(),
        "drained in time"
    );
}
