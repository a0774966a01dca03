//! Erasure: when identity erases a customer (`identity.customer_erased`, applied by
//! [`crate::events`]), their orders and returns keep what the business must keep (lines,
//! amounts, dates, where they were fulfilled) and lose what identifies the person: the delivery
//! address's recipient, phone and street lines, and the free-text notes of their history. The
//! stored requests and replies of idempotent calls about those orders go too
//! ([`omni_runtime::idempotency::forget`]); a retry after the erasure runs afresh and is refused
//! for the erased customer.

use omni_proto::common::Address;
use omni_proto::omni::orders::v1::{Order, Return};
use omni_runtime::Result;
use prost::Message as _;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::app::steps::{Effect, Pending};

/// Removes the personal data of `customers` from their orders and returns.
pub(crate) async fn erase(conn: &mut PgConnection, customers: &[String]) -> Result<()> {
    let orders: Vec<(Uuid, Vec<u8>, Option<Vec<u8>>)> = sqlx::query_as(
        "SELECT id, doc, pending FROM orders WHERE customer_id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(customers)
    .fetch_all(&mut *conn)
    .await?;
    let mut subjects = Vec::with_capacity(orders.len());
    for (id, doc, pending) in orders {
        subjects.push(id.to_string());
        let mut order = decode::<Order>(&doc)?;
        if scrub_order(&mut order) {
            sqlx::query("UPDATE orders SET doc = $2 WHERE id = $1")
                .bind(id)
                .bind(order.encode_to_vec())
                .execute(&mut *conn)
                .await?;
        }
        // A step in progress carries its request, and an address change its new address.
        if let Some(pending) = pending {
            let mut step = Pending::decode_stored(&pending)?;
            if scrub_step(&mut step) {
                sqlx::query("UPDATE orders SET pending = $2 WHERE id = $1")
                    .bind(id)
                    .bind(step.encode_to_vec())
                    .execute(&mut *conn)
                    .await?;
            }
        }
    }
    let returns: Vec<(Uuid, Vec<u8>)> = sqlx::query_as(
        "SELECT id, doc FROM returns WHERE customer_id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(customers)
    .fetch_all(&mut *conn)
    .await?;
    for (id, doc) in returns {
        let mut r = decode::<Return>(&doc)?;
        if !r.note.is_empty() {
            r.note.clear();
            sqlx::query("UPDATE returns SET doc = $2 WHERE id = $1")
                .bind(id)
                .bind(r.encode_to_vec())
                .execute(&mut *conn)
                .await?;
        }
    }
    let forgotten = omni_runtime::idempotency::forget(conn, &subjects).await?;
    tracing::info!(
        orders = subjects.len(),
        forgotten,
        "customer's personal data erased from orders"
    );
    Ok(())
}

fn decode<M: prost::Message + Default>(doc: &[u8]) -> Result<M> {
    M::decode(doc).map_err(|e| omni_runtime::Error::internal(format!("stored document: {e}")))
}

/// Clears what identifies the person in a step in progress: the request it was asked with
/// (a retry with the same key is then refused), an address change's street and recipient, a
/// cancellation's note; whether anything changed.
fn scrub_step(step: &mut Pending) -> bool {
    let mut changed = !step.request.is_empty();
    step.request.clear();
    match &mut step.effect {
        Some(Effect::Move(m)) => {
            changed |= m.address.as_mut().is_some_and(scrub_address);
        }
        Some(Effect::Cancel(c)) if !c.note.is_empty() => {
            c.note.clear();
            changed = true;
        }
        _ => {}
    }
    changed
}

/// Clears what identifies the person in `order`; whether anything changed.
fn scrub_order(order: &mut Order) -> bool {
    let changed_address = order
        .delivery
        .as_mut()
        .and_then(|d| d.address.as_mut())
        .is_some_and(scrub_address);
    let mut changed_notes = false;
    for change in &mut order.history {
        if !change.note.is_empty() {
            change.note.clear();
            changed_notes = true;
        }
    }
    changed_address || changed_notes
}

/// Keeps the city, region, postal code, country and geo point (where the order went, for
/// sourcing and reporting); clears the recipient, phone and street lines.
fn scrub_address(address: &mut Address) -> bool {
    let had = !address.recipient_name.is_empty()
        || !address.phone.is_empty()
        || !address.lines.is_empty();
    address.recipient_name.clear();
    address.phone.clear();
    address.lines.clear();
    had
}

#[cfg(test)]
mod tests {
    use omni_proto::omni::orders::v1::{Delivery, StatusChange};

    use super::*;

    #[test]
    fn scrubbing_keeps_where_the_order_went_and_drops_who_and_notes() {
        let mut order = Order {
            delivery: Some(Delivery {
                address: Some(Address {
                    recipient_name: "Zoé Martin".into(),
                    lines: vec!["12 rue des Lilas".into()],
                    city: "Lyon".into(),
                    postal_code: "69003".into(),
                    country_code: "FR".into(),
                    phone: "+33612345678".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            history: vec![StatusChange {
                note: "Zoé asked for the side door".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(scrub_order(&mut order));
        let address = order
            .delivery
            .as_ref()
            .and_then(|d| d.address.clone())
            .unwrap_or_default();
        assert_eq!(address.recipient_name, "");
        assert_eq!(address.phone, "");
        assert!(address.lines.is_empty());
        assert_eq!(
            (address.city.as_str(), address.postal_code.as_str()),
            ("Lyon", "69003")
        );
        assert_eq!(order.history[0].note, "");
        // Nothing left to clear: a second pass changes nothing.
        assert!(!scrub_order(&mut order));
    }

    #[test]
    fn a_pending_address_change_loses_its_request_and_street() {
        let mut step = Pending {
            request: b"the request, with the address".to_vec(),
            effect: Some(Effect::Move(crate::app::steps::Move {
                address: Some(Address {
                    recipient_name: "Zoé Martin".into(),
                    lines: vec!["12 rue des Lilas".into()],
                    city: "Lyon".into(),
                    phone: "+33612345678".into(),
                    ..Default::default()
                }),
                locations: vec!["a location".into()],
                decision: None,
            })),
            ..Default::default()
        };
        assert!(scrub_step(&mut step));
        assert!(step.request.is_empty());
        let Some(Effect::Move(m)) = &step.effect else {
            panic!("still a move");
        };
        let address = m.address.clone().unwrap_or_default();
        assert_eq!(
            (address.recipient_name.as_str(), address.phone.as_str()),
            ("", "")
        );
        assert!(address.lines.is_empty());
        assert_eq!(address.city, "Lyon");
        assert_eq!(m.locations, vec!["a location".to_owned()]);
        assert!(!scrub_step(&mut step));
    }
}
