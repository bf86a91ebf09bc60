//! Resume ids. One channel's id is `EPOCH-SEQ` (base 36); an SSE or
//! long-poll id covers every channel of the connection, in the session's
//! channel order, joined by `.`. Ids are URL-safe and opaque to clients.

use crate::hub::message::Position;

/// Longest id accepted from a client (SPEC §1).
pub const MAX_ID_LEN: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadId {
    #[error("id is longer than {MAX_ID_LEN} bytes")]
    TooLong,
    #[error("id is not a pushgate id")]
    Malformed,
    #[error("id covers {found} channels but this connection has {expected}")]
    WrongChannels { found: usize, expected: usize },
}

/// Appends one channel's id for `position` to `out`.
pub fn push_one(out: &mut String, position: Position) {
    push_base36(out, position.epoch);
    out.push('-');
    push_base36(out, position.seq);
}

/// One channel's id.
pub fn encode_one(position: Position) -> String {
    let mut s = String::with_capacity(16);
    push_one(&mut s, position);
    s
}

/// The id covering every channel, in order.
pub fn encode(positions: &[Position]) -> String {
    let mut s = String::with_capacity(positions.len() * 16);
    for (i, p) in positions.iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        push_one(&mut s, *p);
    }
    s
}

/// Parses an id that must cover `channels` channels.
pub fn decode(id: &str, channels: usize) -> Result<Vec<Position>, BadId> {
    if id.len() > MAX_ID_LEN {
        return Err(BadId::TooLong);
    }
    let positions = id
        .split('.')
        .map(decode_one)
        .collect::<Result<Vec<_>, _>>()?;
    if positions.len() != channels {
        return Err(BadId::WrongChannels {
            found: positions.len(),
            expected: channels,
        });
    }
    Ok(positions)
}

/// Parses one channel's id.
pub fn decode_one(id: &str) -> Result<Position, BadId> {
    let (epoch, seq) = id.split_once('-').ok_or(BadId::Malformed)?;
    Ok(Position {
        epoch: parse_base36(epoch)?,
        seq: parse_base36(seq)?,
    })
}

fn push_base36(out: &mut String, mut n: u64) {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut buf = [0u8; 13];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = DIGITS[(n % 36) as usize];
        n /= 36;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    out.push_str(std::str::from_utf8(&buf[i..]).unwrap_or("0"));
}

fn parse_base36(s: &str) -> Result<u64, BadId> {
    if s.is_empty()
        || s.len() > 13
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    {
        return Err(BadId::Malformed);
    }
    u64::from_str_radix(s, 36).map_err(|_| BadId::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let ps = vec![
            Position {
                epoch: 0xffff_ffff_ffff,
                seq: 0,
            },
            Position {
                epoch: 1,
                seq: 12345,
            },
        ];
        let id = encode(&ps);
        assert_eq!(decode(&id, 2).unwrap(), ps);
        assert_eq!(
            decode(&id, 1),
            Err(BadId::WrongChannels {
                found: 2,
                expected: 1
            })
        );
        for bad in [
            "",
            "x",
            "1-",
            "-1",
            "1-2-3",
            "A-1",
            "1-2..3-4",
            "1-zzzzzzzzzzzzzz",
            "💥",
        ] {
            assert!(decode(bad, 1).is_err(), "{bad:?}");
        }
        assert_eq!(decode(&"1-1.".repeat(200), 200), Err(BadId::TooLong));
    }

    proptest! {
        #[test]
        fn any_position_round_trips(epoch in any::<u64>(), seq in any::<u64>()) {
            let p = Position { epoch, seq };
            prop_assert_eq!(decode_one(&encode_one(p)), Ok(p));
        }

        #[test]
        fn decoding_never_panics(s in "\\PC*") {
            let _ = decode(&s, 3);
        }
    }
}
