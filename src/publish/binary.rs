//! `"data_base64"` (SPEC §12): the standard alphabet, padding optional, no
//! whitespace; a refusal says where the text went wrong.

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use bytes::Bytes;

/// Standard alphabet; decoding takes the text with or without its `=`
/// padding (encoding always pads).
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why `data_base64` was refused: at which byte of the text, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub position: usize,
    pub what: &'static str,
}

/// The bytes `text` encodes.
pub fn decode(text: &str) -> Result<Bytes, Refused> {
    let refused = |position, what| Err(Refused { position, what });
    // Checked here first, so each refusal has a position (base64's
    // decoder reports length and padding errors without one).
    let alphabet = |b: u8| b.is_ascii_alphanumeric() || b == b'+' || b == b'/';
    if let Some(at) = text.bytes().position(|b| !alphabet(b) && b != b'=') {
        return refused(at, "not a base64 character");
    }
    if let Some(at) = text.find('=') {
        let padding = &text[at..];
        if padding.bytes().any(|b| b != b'=') {
            let after = at + padding.bytes().position(|b| b != b'=').unwrap_or(0);
            return refused(after, "text after the \"=\" padding");
        }
        if !text.len().is_multiple_of(4) || padding.len() > 2 {
            return refused(at, "wrong \"=\" padding");
        }
    }
    let unpadded = text.trim_end_matches('=').len();
    if unpadded % 4 == 1 {
        return refused(unpadded, "length: a final group of one character");
    }
    match LENIENT.decode(text) {
        Ok(bytes) => Ok(Bytes::from(bytes)),
        Err(base64::DecodeError::InvalidByte(at, _)) => refused(at, "not a base64 character"),
        Err(base64::DecodeError::InvalidLastSymbol(at, _)) => {
            refused(at, "the last character has bits set beyond the data")
        }
        Err(base64::DecodeError::InvalidLength) => {
            refused(unpadded, "length: a final group of one character")
        }
        Err(base64::DecodeError::InvalidPadding) => {
            refused(text.find('=').unwrap_or(text.len()), "wrong \"=\" padding")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_is_optional_and_every_byte_value_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        let padded = base64::engine::general_purpose::STANDARD.encode(&all);
        assert_eq!(decode(&padded).unwrap(), all);
        assert_eq!(decode(padded.trim_end_matches('=')).unwrap(), all);
        assert_eq!(decode("").unwrap(), Bytes::new());
        assert_eq!(decode("AA").unwrap().as_ref(), [0]);
        assert_eq!(decode("AA==").unwrap().as_ref(), [0]);
        assert_eq!(decode("AAA").unwrap().as_ref(), [0, 0]);
    }

    #[test]
    fn refusals_say_where() {
        let at = |t: &str| decode(t).unwrap_err().position;
        assert_eq!(at("AAAA*AAA"), 4, "not in the alphabet");
        assert_eq!(at("AA AA"), 2, "whitespace is refused");
        assert_eq!(
            at("AAAA-_"),
            4,
            "the URL-safe alphabet is not the standard one"
        );
        assert_eq!(at("AAAAA"), 5, "one character in the last group");
        assert_eq!(at("AA=A"), 3, "text after padding");
        assert_eq!(at("AA="), 2, "half padding");
        assert_eq!(at("A==="), 1, "three = are too many");
        assert_eq!(at("AB=="), 1, "bits beyond the data");
        assert_eq!(
            decode("AB").unwrap_err().what,
            "the last character has bits set beyond the data"
        );
    }
}
