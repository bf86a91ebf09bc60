//! Reading a GRIP upstream's answer: `Grip-*` headers or an
//! `application/grip-instruct` body become an [`Instruct`]: whether and how
//! to hold the request, on which channels, and the response the client
//! gets (every `Grip-*` header stripped). Pure: no IO.
//!
//! Follows Pushpin's `handler/instruct.cpp`: `Grip-Hold: response|stream`,
//! `Grip-Channel: name; prev-id=X` (repeatable, comma lists), `Grip-Timeout`
//! (default 55 s, at least 5 s), `Grip-Keep-Alive: DATA; format=raw|cstring|
//! base64; timeout=N; mode=idle|interval`, `Grip-Status: CODE REASON`.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use serde_json::{Map, Value};

use super::item::{self, FieldError, HeadersError};
use crate::hub::message::ChannelName;

/// Pushpin's default hold timeout and keep-alive interval.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(55);
/// The shortest response hold Pushpin allows.
pub const MINIMUM_TIMEOUT: Duration = Duration::from_secs(5);
/// The instruct content type.
pub const INSTRUCT_TYPE: &str = "application/grip-instruct";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A long-poll: answered by the first `http-response` item, or the
    /// instruct's response at the timeout.
    Response,
    /// A stream: the response, then each `http-stream` item's content.
    Stream,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldChannel {
    pub name: ChannelName,
    pub prev_id: Option<Box<str>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeepAlive {
    pub data: Bytes,
    pub timeout: Duration,
    /// `mode=interval`: sent every `timeout`; otherwise only when the
    /// stream was idle that long.
    pub interval: bool,
}

#[derive(Clone, Debug)]
pub struct Hold {
    pub mode: Mode,
    pub channels: Vec<HoldChannel>,
    /// Response mode: when the instruct's response is sent.
    pub timeout: Duration,
    pub keep_alive: Option<KeepAlive>,
}

/// The client-facing response, and the hold if there is one.
#[derive(Debug)]
pub struct Instruct {
    pub hold: Option<Hold>,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The upstream asks for GRIP processing: a `Grip-Hold` header or an
/// instruct body. Other responses stream through unchanged (but for the
/// `Grip-*` headers, see [`strip`]).
pub fn wants_instruct(headers: &HeaderMap) -> bool {
    headers.contains_key("grip-hold") || mime(headers).as_deref() == Some(INSTRUCT_TYPE)
}

/// Removes every `Grip-*` header.
pub fn strip(headers: &mut HeaderMap) {
    let grip: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("grip-"))
        .cloned()
        .collect();
    for name in grip {
        headers.remove(name);
    }
}

fn mime(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(v.split(';').next()?.trim().to_ascii_lowercase())
}

/// Reads an upstream answer. An error is the upstream's fault (`502`).
pub fn parse(status: StatusCode, headers: &HeaderMap, body: Bytes) -> Result<Instruct, String> {
    let mut asked = Asked::from_headers(headers)?;
    // Grip-Status: "CODE REASON"; the reason phrase is not sent (hyper
    // writes the standard one).
    let mut status = status;
    if let Some(s) = header_str(headers, "grip-status")? {
        let code = s.split(' ').next().unwrap_or("");
        status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .ok_or("Grip-Status contains invalid status code")?;
    }
    let mut client_headers = headers.clone();
    strip(&mut client_headers);
    let mut body = body;

    if mime(headers).as_deref() == Some(INSTRUCT_TYPE) {
        if status != StatusCode::OK {
            return Err("response code for application/grip-instruct content must be 200".into());
        }
        let doc: Value = serde_json::from_slice(&body)
            .map_err(|e| format!("failed to parse application/grip-instruct content: {e}"))?;
        let Value::Object(doc) = doc else {
            return Err("instruct must be an object".into());
        };
        if let Some(hold) = doc.get("hold") {
            asked.read_json(hold)?;
        }
        client_headers.clear();
        body = Bytes::new();
        if let Some(response) = doc.get("response") {
            let Value::Object(response) = response else {
                return Err("instruct contains 'response' with wrong type".into());
            };
            (status, body) = instruct_response(response, &mut client_headers)?;
        }
    }

    // The body and framing are the proxy's to set now.
    client_headers.remove(header::CONTENT_LENGTH);
    client_headers.remove(header::TRANSFER_ENCODING);
    Ok(Instruct {
        hold: asked.into_hold()?,
        status,
        headers: client_headers,
        body,
    })
}

/// What the `Grip-*` headers, then an instruct's `hold`, ask for.
struct Asked {
    mode: Option<Mode>,
    channels: Vec<HoldChannel>,
    timeout: Option<Duration>,
    keep_alive: Option<KeepAlive>,
}

impl Asked {
    fn from_headers(headers: &HeaderMap) -> Result<Self, String> {
        let mode = match header_str(headers, "grip-hold")? {
            None => None,
            Some("response") => Some(Mode::Response),
            Some("stream") => Some(Mode::Stream),
            Some(_) => return Err("Grip-Hold must be set to either 'response' or 'stream'".into()),
        };
        let mut channels = Vec::new();
        for value in headers.get_all("grip-channel") {
            let value = value
                .to_str()
                .map_err(|_| "Grip-Channel is not ASCII".to_owned())?;
            for item in split_outside_quotes(value, ',') {
                let params = parameters(item);
                let Some((name, _)) = params.first() else {
                    return Err("failed to parse Grip-Channel".into());
                };
                let prev_id = params
                    .iter()
                    .skip(1)
                    .find(|(k, _)| k == "prev-id")
                    .and_then(|(_, v)| v.clone());
                channels.push(HoldChannel {
                    name: channel(name)?,
                    prev_id: prev_id.map(Box::from),
                });
            }
        }
        let timeout = match header_str(headers, "grip-timeout")? {
            None => None,
            Some(t) => Some(seconds(t).ok_or("failed to parse Grip-Timeout")?),
        };
        let keep_alive = match header_str(headers, "grip-keep-alive")? {
            None => None,
            Some(v) => Some(keep_alive_header(v)?),
        };
        Ok(Self {
            mode,
            channels,
            timeout,
            keep_alive,
        })
    }

    /// An instruct's `hold` object: its mode and channels replace the
    /// headers'; its timeout and keep-alive, when given, too.
    fn read_json(&mut self, hold: &Value) -> Result<(), String> {
        let Value::Object(hold) = hold else {
            return Err("instruct contains 'hold' with wrong type".into());
        };
        self.mode = Some(match hold.get("mode") {
            None => Mode::Response,
            Some(Value::String(m)) if m == "response" => Mode::Response,
            Some(Value::String(m)) if m == "stream" => Mode::Stream,
            Some(_) => {
                return Err("hold 'mode' must be set to either 'response' or 'stream'".into());
            }
        });
        self.channels.clear();
        let Some(Value::Array(list)) = hold.get("channels") else {
            return Err("hold must contain a 'channels' list".into());
        };
        for c in list {
            let name = c
                .get("name")
                .and_then(Value::as_str)
                .ok_or("channel must contain a string 'name'")?;
            let prev_id = match c.get("prev-id") {
                None | Some(Value::Null) => None,
                Some(Value::String(p)) => Some(Box::from(p.as_str())),
                Some(_) => return Err("channel contains 'prev-id' with wrong type".into()),
            };
            self.channels.push(HoldChannel {
                name: channel(name)?,
                prev_id,
            });
        }
        if let Some(t) = hold.get("timeout") {
            self.timeout = Some(Duration::from_secs(
                t.as_u64()
                    .ok_or("hold contains 'timeout' with wrong type")?,
            ));
        }
        if let Some(ka) = hold.get("keep-alive") {
            self.keep_alive = Some(keep_alive_json(ka)?);
        }
        Ok(())
    }

    /// The hold, if one was asked for; it needs a channel.
    fn into_hold(self) -> Result<Option<Hold>, String> {
        let Some(mode) = self.mode else {
            return Ok(None);
        };
        if self.channels.is_empty() {
            return Err("a hold needs at least one channel".into());
        }
        Ok(Some(Hold {
            mode,
            channels: self.channels,
            timeout: self.timeout.unwrap_or(DEFAULT_TIMEOUT).max(MINIMUM_TIMEOUT),
            keep_alive: self.keep_alive,
        }))
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, String> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| format!("{name} is not ASCII")),
    }
}

fn channel(name: &str) -> Result<ChannelName, String> {
    ChannelName::parse(name).map_err(|e| format!("invalid channel {name:?}: {e}"))
}

fn seconds(s: &str) -> Option<Duration> {
    s.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// `value; k=v; k="v"` split into `(name, value)` pairs; the first pair is
/// the item itself (its value `None` unless it had `=`).
fn parameters(item: &str) -> Vec<(String, Option<String>)> {
    split_outside_quotes(item, ';')
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.trim().to_owned(), Some(unquote(v.trim()))),
            None => (unquote(p), None),
        })
        .collect()
}

fn unquote(v: &str) -> String {
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => v.to_owned(),
    }
}

fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

fn keep_alive_header(v: &str) -> Result<KeepAlive, String> {
    // The data is the first token as written (it may hold '=' in base64).
    let parts = split_outside_quotes(v, ';');
    let raw = parts.first().map(|d| unquote(d.trim())).unwrap_or_default();
    if raw.is_empty() {
        return Err("Grip-Keep-Alive cannot be empty".into());
    }
    let params = parameters(&parts[1..].join(";"));
    let get = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.clone())
    };
    let interval = match get("mode").as_deref() {
        None | Some("idle") => false,
        Some("interval") => true,
        Some(m) => return Err(format!("no such Grip-Keep-Alive mode '{m}'")),
    };
    let timeout = match get("timeout") {
        None => DEFAULT_TIMEOUT,
        Some(t) => seconds(&t).ok_or("failed to parse Grip-Keep-Alive timeout value")?,
    };
    let data = match get("format").as_deref() {
        None | Some("raw") => Bytes::from(raw.into_bytes()),
        Some("cstring") => {
            unescape(&raw).ok_or("failed to parse Grip-Keep-Alive cstring format")?
        }
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(raw.as_bytes())
            .map(Bytes::from)
            .map_err(|_| "failed to parse Grip-Keep-Alive base64 format")?,
        Some(f) => return Err(format!("no such Grip-Keep-Alive format '{f}'")),
    };
    Ok(KeepAlive {
        data,
        timeout: timeout.max(Duration::from_secs(1)),
        interval,
    })
}

fn keep_alive_json(v: &Value) -> Result<KeepAlive, String> {
    let Value::Object(ka) = v else {
        return Err("hold contains 'keep-alive' with wrong type".into());
    };
    let data = item::bytes_field(ka, "content", "content-bin")
        .map_err(|e| match e {
            FieldError::BinNotString => "keep-alive contains 'content-bin' with wrong type",
            FieldError::NotBase64(_) => "keep-alive 'content-bin' is not base64",
            FieldError::TextNotString => "keep-alive contains 'content' with wrong type",
        })?
        .unwrap_or_default();
    let timeout = match ka.get("timeout") {
        None => DEFAULT_TIMEOUT,
        Some(t) => Duration::from_secs(
            t.as_u64()
                .ok_or("keep-alive contains 'timeout' with wrong type")?,
        ),
    };
    let interval = ka.get("mode").and_then(Value::as_str) == Some("interval");
    Ok(KeepAlive {
        data,
        timeout: timeout.max(Duration::from_secs(1)),
        interval,
    })
}

fn instruct_response(
    response: &Map<String, Value>,
    headers: &mut HeaderMap,
) -> Result<(StatusCode, Bytes), String> {
    let status = match response.get("code") {
        None => StatusCode::OK,
        Some(c) => c
            .as_u64()
            .and_then(|c| u16::try_from(c).ok())
            .and_then(|c| StatusCode::from_u16(c).ok())
            .ok_or("response contains 'code' with invalid value")?,
    };
    let mut add = |k: &str, v: &Value| -> Result<(), String> {
        let v = v
            .as_str()
            .ok_or(format!("headers contains '{k}' with wrong type"))?;
        let name =
            HeaderName::from_bytes(k.as_bytes()).map_err(|_| format!("invalid header {k:?}"))?;
        let value =
            HeaderValue::from_str(v).map_err(|_| format!("invalid header value for {k:?}"))?;
        if !name.as_str().starts_with("grip-") {
            headers.append(name, value);
        }
        Ok(())
    };
    if let Some(h) = response.get("headers") {
        item::each_header(h, &mut add).map_err(|e| match e {
            HeadersError::Entry => "headers contains element with wrong type".into(),
            HeadersError::Shape => "response contains 'headers' with wrong type".into(),
            HeadersError::Header(e) => e,
        })?;
    }
    let body = item::bytes_field(response, "body", "body-bin")
        .map_err(|e| match e {
            FieldError::BinNotString => "response contains 'body-bin' with wrong type",
            FieldError::NotBase64(_) => "response 'body-bin' is not base64",
            FieldError::TextNotString => "response contains 'body' with wrong type",
        })?
        .unwrap_or_default();
    Ok((status, body))
}

/// Pushpin's cstring escapes: `\\`, `\r`, `\n`, `\xHH`.
fn unescape(s: &str) -> Option<Bytes> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        match b.get(i + 1)? {
            b'\\' => out.push(b'\\'),
            b'r' => out.push(b'\r'),
            b'n' => out.push(b'\n'),
            b'x' => {
                let hex = std::str::from_utf8(b.get(i + 2..i + 4)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            _ => return None,
        }
        i += 2;
    }
    Some(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn headers_give_a_stream_hold_and_are_stripped() {
        let h = headers(&[
            ("Grip-Hold", "stream"),
            ("Grip-Channel", "a; prev-id=1, b"),
            ("Grip-Channel", "c"),
            ("Grip-Keep-Alive", "\\n; format=cstring; timeout=20"),
            ("Grip-Status", "201 Made"),
            ("Content-Type", "text/plain"),
            ("Content-Length", "5"),
        ]);
        let i = parse(StatusCode::OK, &h, Bytes::from_static(b"hello")).unwrap();
        let hold = i.hold.unwrap();
        assert_eq!(hold.mode, Mode::Stream);
        let names: Vec<_> = hold.channels.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(hold.channels[0].prev_id.as_deref(), Some("1"));
        let ka = hold.keep_alive.unwrap();
        assert_eq!(
            (ka.data.as_ref(), ka.timeout),
            (&b"\n"[..], Duration::from_secs(20))
        );
        assert_eq!(i.status, StatusCode::CREATED);
        assert!(i.headers.keys().all(|k| !k.as_str().starts_with("grip-")));
        assert!(!i.headers.contains_key(header::CONTENT_LENGTH));
        assert_eq!(i.body.as_ref(), b"hello");
    }

    #[test]
    fn timeout_defaults_and_minimum() {
        let h = headers(&[("Grip-Hold", "response"), ("Grip-Channel", "a")]);
        let hold = parse(StatusCode::OK, &h, Bytes::new())
            .unwrap()
            .hold
            .unwrap();
        assert_eq!(hold.timeout, DEFAULT_TIMEOUT);
        let h = headers(&[
            ("Grip-Hold", "response"),
            ("Grip-Channel", "a"),
            ("Grip-Timeout", "1"),
        ]);
        let hold = parse(StatusCode::OK, &h, Bytes::new())
            .unwrap()
            .hold
            .unwrap();
        assert_eq!(hold.timeout, MINIMUM_TIMEOUT);
    }

    #[test]
    fn keep_alive_formats() {
        let ka = keep_alive_header("aGk=; format=base64").unwrap();
        assert_eq!(
            (ka.data.as_ref(), ka.timeout),
            (&b"hi"[..], DEFAULT_TIMEOUT)
        );
        assert!(keep_alive_header("x; mode=interval").unwrap().interval);
        assert!(keep_alive_header("x; format=nope").is_err());
        assert_eq!(unescape("a\\x41\\r").unwrap().as_ref(), b"aA\r");
    }

    #[test]
    fn instruct_body() {
        let h = headers(&[("Content-Type", "application/grip-instruct")]);
        let body = br#"{"hold":{"mode":"stream","channels":[{"name":"x","prev-id":"7"}],
            "keep-alive":{"content":"ka","timeout":10}},
            "response":{"code":200,"headers":{"Content-Type":"text/plain"},"body":"start\n"}}"#;
        let i = parse(StatusCode::OK, &h, Bytes::from_static(body)).unwrap();
        let hold = i.hold.unwrap();
        assert_eq!(hold.mode, Mode::Stream);
        assert_eq!(hold.channels[0].prev_id.as_deref(), Some("7"));
        assert_eq!(hold.keep_alive.unwrap().data.as_ref(), b"ka");
        assert_eq!(i.headers[header::CONTENT_TYPE], "text/plain");
        assert_eq!(i.body.as_ref(), b"start\n");
    }

    #[test]
    fn bad_instructions_are_errors() {
        for h in [
            headers(&[("Grip-Hold", "forever"), ("Grip-Channel", "a")]),
            headers(&[("Grip-Hold", "stream")]),
            headers(&[("Grip-Hold", "stream"), ("Grip-Channel", "bad channel")]),
            headers(&[
                ("Grip-Hold", "response"),
                ("Grip-Channel", "a"),
                ("Grip-Timeout", "x"),
            ]),
        ] {
            assert!(parse(StatusCode::OK, &h, Bytes::new()).is_err(), "{h:?}");
        }
    }
}
