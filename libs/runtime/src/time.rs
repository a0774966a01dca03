//! Times on the wire: `google.protobuf.Timestamp` (UTC) to and from `chrono`.

use chrono::{DateTime, Utc};
use prost_types::Timestamp;

/// The contract's form of a time.
pub fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        // Below 10^9 by definition, so it always fits.
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// A contract time as `chrono`; `None` when out of range or with negative nanoseconds.
pub fn from_timestamp(t: &Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        let now = Utc::now();
        assert_eq!(from_timestamp(&timestamp(now)), Some(now));
        assert_eq!(
            from_timestamp(&Timestamp {
                seconds: 0,
                nanos: -1
            }),
            None
        );
    }
}
