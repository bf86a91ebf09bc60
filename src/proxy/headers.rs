//! Header hygiene for proxied requests and responses: hop-by-hop removal
//! (including the headers `Connection` names), `X-Forwarded-*` and `Via`.

use std::io::Write;
use std::net::IpAddr;

use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one hop and are never forwarded (RFC 9110 §7.6.1),
/// and `Upgrade` (callers passing an upgrade through set it again).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, the ones listed in `Connection`, and
/// `Upgrade`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names (cheap compares of known headers) finds
    // which are present: most messages carry one or none, and each
    // remove of an absent name would still hash it.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        // Copied out (cheap: shared bytes) so the map can change; a
        // second `Connection` line is rare, and only it allocates.
        let mut values = headers.get_all(header::CONNECTION).iter();
        let first = values.next().cloned();
        let more: Vec<HeaderValue> = values.cloned().collect();
        for value in first.iter().chain(&more) {
            let Ok(value) = value.to_str() else { continue };
            // A name that is not a valid header name matches nothing.
            for name in value.split(',') {
                headers.remove(name.trim());
            }
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// The `Via` token for a protocol version.
pub fn via_value(version: Version) -> HeaderValue {
    HeaderValue::from_static(match version {
        Version::HTTP_09 => "0.9 pushgate",
        Version::HTTP_10 => "1.0 pushgate",
        Version::HTTP_2 => "2 pushgate",
        Version::HTTP_3 => "3 pushgate",
        _ => "1.1 pushgate",
    })
}

/// Appends `value` to a comma-separated header (X-Forwarded-For, Via):
/// `value` itself when the header is absent, so the common case copies
/// nothing.
pub fn append_list(headers: &mut HeaderMap, name: HeaderName, value: HeaderValue) {
    let joined = match headers.get(&name) {
        Some(existing) if !existing.is_empty() => {
            let mut joined = Vec::with_capacity(existing.len() + 2 + value.len());
            joined.extend_from_slice(existing.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(value.as_bytes());
            match HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)) {
                Ok(v) => v,
                Err(_) => return,
            }
        }
        _ => value,
    };
    headers.insert(name, joined);
}

/// `ip` as a header value, formatted on the stack (IPv4 by hand: `fmt`
/// costs more than the rest of the forwarding headers together).
fn ip_value(ip: IpAddr) -> HeaderValue {
    let mut buf = [0u8; 48];
    let n = match ip {
        IpAddr::V4(v4) => {
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    buf[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    buf[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                buf[n] = b'0' + octet % 10;
                n += 1;
            }
            n
        }
        IpAddr::V6(_) => {
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            // An IPv6 address is at most 45 characters: this cannot fail.
            let _ = write!(cursor, "{ip}");
            cursor.position() as usize
        }
    };
    HeaderValue::from_bytes(&buf[..n]).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Sets `X-Forwarded-For`, `-Proto`, `-Host` and `Via` on a request going
/// upstream.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client_ip: IpAddr,
    proto: &str,
    host: Option<&HeaderValue>,
    version: Version,
) {
    append_list(headers, X_FORWARDED_FOR, ip_value(client_ip));
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if proto == "https" { "https" } else { "http" }),
    );
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST, host.clone());
    }
    append_list(headers, header::VIA, via_value(version));
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("x-other, b@d name"),
        );
        h.insert("x-other", HeaderValue::from_static("1"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
        let mut untouched = HeaderMap::new();
        untouched.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut untouched);
        assert_eq!(untouched.len(), 1);
    }

    #[test]
    fn appends_forwarded_for_and_via() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        set_forwarded(
            &mut h,
            "127.0.0.1".parse().unwrap(),
            "https",
            Some(&HeaderValue::from_static("example.com")),
            Version::HTTP_2,
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "example.com");
        assert_eq!(h["via"], "2 pushgate");
        set_forwarded(
            &mut h,
            "::1".parse().unwrap(),
            "http",
            None,
            Version::HTTP_11,
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1, ::1");
        assert_eq!(h["via"], "2 pushgate, 1.1 pushgate");
        assert_eq!(h["x-forwarded-host"], "example.com");
    }

    #[test]
    fn client_addresses_are_written_as_std_formats_them() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "127.0.0.1",
            "::1",
            "2001:db8::8a2e:370:7334",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_value(ip), ip.to_string().as_str());
        }
    }
}
