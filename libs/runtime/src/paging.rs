//! Page sizes and opaque page tokens for list RPCs.
//!
//! A token carries the sort key of the last row returned (keyset paging: stable under inserts,
//! no deep OFFSET scans), hex-encoded so callers treat it as opaque.

use crate::error::{Error, Result};

pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 500;

/// `page_size` as asked: 0 means the default; negative is refused; above the maximum is capped.
pub fn page_size(raw: i32) -> Result<i64> {
    match raw {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n < 0 => Err(Error::invalid("page_size", "must not be negative")),
        n => Ok(i64::from(n).min(MAX_PAGE_SIZE)),
    }
}

/// A token for resuming after the row whose sort key is `key`.
pub fn encode_token(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The sort key a token carries; empty token: from the start.
pub fn decode_token(token: &str) -> Result<Option<String>> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || Error::invalid("page_token", "is not a token this service issued");
    // Slicing below is by byte: a multi-byte character would split inside itself.
    if !token.is_ascii() || !token.len().is_multiple_of(2) {
        return Err(invalid());
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&token[i..i + 2], 16))
        .collect::<std::result::Result<Vec<u8>, _>>()
        .map_err(|_| invalid())?;
    String::from_utf8(bytes).map(Some).map_err(|_| invalid())
}

/// The next page's token: set when the page came back full.
pub fn next_token(rows: usize, size: i64, last_key: Option<String>) -> String {
    if i64::try_from(rows).unwrap_or(i64::MAX) >= size {
        last_key.map(|k| encode_token(&k)).unwrap_or_default()
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let token = encode_token("sku-1/0193");
        assert_eq!(decode_token(&token).unwrap().as_deref(), Some("sku-1/0193"));
        assert!(decode_token("zz").is_err());
        assert!(decode_token("abc").is_err());
        // Multi-byte characters are refused, not sliced through.
        assert!(decode_token("é1").is_err());
        assert!(decode_token("0é").is_err());
        assert_eq!(decode_token("").unwrap(), None);
    }

    #[test]
    fn sizes_default_and_cap() {
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(10_000).unwrap(), MAX_PAGE_SIZE);
        assert!(page_size(-1).is_err());
    }
}
