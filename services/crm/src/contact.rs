//! Whether and through which channel crm may contact a customer: shared by campaigns and
//! triggered offers, so both respect the same consent and the same weekly frequency cap.
//!
//! [`decide`] is the pure rule; [`check`] gathers its inputs inside the caller's transaction,
//! after locking the customer row so two sends cannot both take the last slot of the cap.

use std::collections::HashSet;

use omni_runtime::Error;
use sqlx::PgConnection;

/// Suppression reasons, numbered as the contract's `SuppressionReason`.
pub const NO_CONSENT: i32 = 1;
pub const FREQUENCY_CAP: i32 = 2;
pub const DUPLICATE: i32 = 3;
pub const UNREACHABLE: i32 = 4;
pub const ERASED: i32 = 5;

/// Everything [`decide`] needs to know about one customer.
#[derive(Debug, Clone, Default)]
pub struct Situation {
    pub erased: bool,
    /// Channel kinds the customer has an account or a purchase in.
    pub reachable: HashSet<i32>,
    /// Channel kinds the customer accepts marketing through.
    pub opted_in: HashSet<i32>,
    /// Deliveries to the customer in the last seven days, across everything.
    pub deliveries_this_week: i64,
}

/// The allowed channel (index into `channels`, given with their kinds when known) to use, or
/// why not. The first reachable, consenting channel in preference order wins.
pub fn decide(s: &Situation, channels: &[Option<i32>], weekly_cap: i32) -> Result<usize, i32> {
    if s.erased {
        return Err(ERASED);
    }
    let reachable: Vec<(usize, i32)> = channels
        .iter()
        .enumerate()
        .filter_map(|(i, k)| k.filter(|k| s.reachable.contains(k)).map(|k| (i, k)))
        .collect();
    if reachable.is_empty() {
        return Err(UNREACHABLE);
    }
    let Some((chosen, _)) = reachable.iter().find(|(_, k)| s.opted_in.contains(k)) else {
        return Err(NO_CONSENT);
    };
    if weekly_cap > 0 && s.deliveries_this_week >= i64::from(weekly_cap) {
        return Err(FREQUENCY_CAP);
    }
    Ok(*chosen)
}

/// The weekly cap of the contact policy (0: none).
pub async fn weekly_cap(conn: &mut PgConnection) -> Result<i32, Error> {
    let cap: Option<i32> = sqlx::query_scalar("SELECT max_deliveries_per_week FROM contact_policy")
        .fetch_optional(conn)
        .await?;
    Ok(cap.unwrap_or(0))
}

/// The channel to contact `customer_id` through among `channel_ids` (with its kind), or the
/// suppression reason. Locks the customer row until the transaction ends.
pub async fn check(
    conn: &mut PgConnection,
    customer_id: &str,
    channel_ids: &[String],
    weekly_cap: i32,
) -> Result<Result<(String, i32), i32>, Error> {
    let row: Option<(bool, i32)> = sqlx::query_as(
        "SELECT erased, registered_channel_kind FROM customers WHERE customer_id = $1 FOR UPDATE",
    )
    .bind(customer_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((erased, registered_kind)) = row else {
        return Ok(Err(UNREACHABLE));
    };
    let mut reachable: HashSet<i32> = sqlx::query_scalar(
        "SELECT DISTINCT channel_kind FROM customer_orders WHERE customer_id = $1
         UNION SELECT channel_kind FROM consents WHERE customer_id = $1",
    )
    .bind(customer_id)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();
    if registered_kind != 0 {
        reachable.insert(registered_kind);
    }
    let opted_in: HashSet<i32> = crate::store::opt_ins(conn, customer_id)
        .await?
        .into_iter()
        .collect();
    let deliveries_this_week: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM deliveries
         WHERE customer_id = $1 AND created_at > now() - interval '7 days'",
    )
    .bind(customer_id)
    .fetch_one(&mut *conn)
    .await?;
    let kinds: Vec<(String, i32)> =
        sqlx::query_as("SELECT channel_id, kind FROM channels WHERE channel_id = ANY($1)")
            .bind(channel_ids)
            .fetch_all(&mut *conn)
            .await?;
    let channels: Vec<Option<i32>> = channel_ids
        .iter()
        .map(|id| kinds.iter().find(|(c, _)| c == id).map(|(_, k)| *k))
        .collect();
    let situation = Situation {
        erased,
        reachable,
        opted_in,
        deliveries_this_week,
    };
    Ok(decide(&situation, &channels, weekly_cap)
        .map(|i| (channel_ids[i].clone(), channels[i].unwrap_or_default())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn situation(reachable: &[i32], opted_in: &[i32], sent: i64) -> Situation {
        Situation {
            erased: false,
            reachable: reachable.iter().copied().collect(),
            opted_in: opted_in.iter().copied().collect(),
            deliveries_this_week: sent,
        }
    }

    #[test]
    fn the_first_reachable_consenting_channel_wins() {
        let channels = [Some(1), Some(2), Some(3)];
        assert_eq!(
            decide(&situation(&[1, 2, 3], &[1, 2, 3], 0), &channels, 3),
            Ok(0)
        );
        assert_eq!(decide(&situation(&[1, 2, 3], &[3], 0), &channels, 3), Ok(2));
        assert_eq!(decide(&situation(&[2], &[1, 2], 0), &channels, 3), Ok(1));
    }

    #[test]
    fn suppressions_say_why() {
        let channels = [Some(1), None];
        assert_eq!(
            decide(&situation(&[4], &[4], 0), &channels, 3),
            Err(UNREACHABLE)
        );
        assert_eq!(
            decide(&situation(&[1], &[], 0), &channels, 3),
            Err(NO_CONSENT)
        );
        assert_eq!(
            decide(&situation(&[1], &[1], 3), &channels, 3),
            Err(FREQUENCY_CAP)
        );
        assert_eq!(decide(&situation(&[1], &[1], 3), &channels, 0), Ok(0));
        let erased = Situation {
            erased: true,
            ..situation(&[1], &[1], 0)
        };
        assert_eq!(decide(&erased, &channels, 3), Err(ERASED));
    }
}
