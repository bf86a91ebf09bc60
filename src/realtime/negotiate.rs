//! Chooses the transport of a realtime request (SPEC §3.2): `Upgrade:
//! websocket`, else `?transport=`, else `Accept: text/event-stream`, else
//! long polling. Pure.

use http::{HeaderMap, header};

use crate::error::{ErrorCode, HttpError};

pub use crate::config::Transport;

/// What the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Info,
    Transport(Transport),
}

pub fn choose(
    headers: &HeaderMap,
    transport_param: Option<&str>,
    allowed: &[Transport],
) -> Result<Choice, HttpError> {
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
        });
    let wanted = if upgrade {
        Transport::Websocket
    } else {
        match transport_param {
            Some("info") => return Ok(Choice::Info),
            Some("websocket") => {
                if allowed.contains(&Transport::Websocket) {
                    return Err(HttpError::new(
                        ErrorCode::UpgradeRequired,
                        "transport=websocket needs an Upgrade: websocket request",
                    ));
                }
                Transport::Websocket
            }
            Some("sse") => Transport::Sse,
            Some("longpoll") => Transport::Longpoll,
            Some(other) => {
                return Err(HttpError::new(
                    ErrorCode::InvalidTransport,
                    format!(
                        "unknown transport {other:?}: expected websocket, sse, longpoll or info"
                    ),
                ));
            }
            None => {
                let sse = headers
                    .get_all(header::ACCEPT)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .any(|v| v.contains("text/event-stream"));
                if sse {
                    Transport::Sse
                } else {
                    Transport::Longpoll
                }
            }
        }
    };
    if !allowed.contains(&wanted) {
        return Err(not_allowed(wanted, allowed));
    }
    Ok(Choice::Transport(wanted))
}

fn not_allowed(wanted: Transport, allowed: &[Transport]) -> HttpError {
    HttpError::new(
        ErrorCode::TransportNotAllowed,
        format!("transport {} is not enabled on this route", wanted.as_str()),
    )
    .with(
        "allowed",
        allowed
            .iter()
            .map(|t| t.as_str())
            .collect::<Vec<_>>()
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use http::StatusCode;

    const ALL: [Transport; 3] = [Transport::Websocket, Transport::Sse, Transport::Longpoll];

    fn headers(pairs: &[(header::HeaderName, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn follows_the_spec_order() {
        let ws = headers(&[
            (header::UPGRADE, "websocket"),
            (header::ACCEPT, "text/event-stream"),
        ]);
        assert_eq!(
            choose(&ws, Some("sse"), &ALL).unwrap(),
            Choice::Transport(Transport::Websocket)
        );
        let sse = headers(&[(header::ACCEPT, "text/event-stream")]);
        assert_eq!(
            choose(&sse, Some("longpoll"), &ALL).unwrap(),
            Choice::Transport(Transport::Longpoll)
        );
        assert_eq!(
            choose(&sse, None, &ALL).unwrap(),
            Choice::Transport(Transport::Sse)
        );
        assert_eq!(
            choose(&HeaderMap::new(), None, &ALL).unwrap(),
            Choice::Transport(Transport::Longpoll)
        );
        assert_eq!(
            choose(&HeaderMap::new(), Some("info"), &ALL).unwrap(),
            Choice::Info
        );
    }

    #[test]
    fn disabled_transport_is_406_and_missing_upgrade_426() {
        let e = choose(&HeaderMap::new(), Some("sse"), &[Transport::Longpoll]).unwrap_err();
        assert_eq!(e.status, StatusCode::NOT_ACCEPTABLE);
        assert_eq!(e.code.as_str(), "transport_not_allowed");
        let e = choose(&HeaderMap::new(), Some("websocket"), &ALL).unwrap_err();
        assert_eq!(e.status, StatusCode::UPGRADE_REQUIRED);
        let e = choose(&HeaderMap::new(), Some("bogus"), &ALL).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }
}
