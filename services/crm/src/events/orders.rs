//! A run of a batch's consecutive order events (placed, paid, fulfilled, cancelled) and
//! returns, applied set-based.
//!
//! Filing an order event on its own takes some twenty-five round trips (resolve the customer,
//! file the order, each of its lines, its channel, the customer's aggregate; on fulfilment the
//! loyalty rules, the customer's whole history and three ledger writes), a return some ten, and
//! those round trips bound the consumer. A run takes a fixed number of statements instead,
//! however long:
//!
//! 1. its customers are created if new, then read `FOR SHARE` in id order to resolve merged
//!    ones to their survivor ([`store::resolve_locked`]);
//! 2. its orders (those its events file or refund) are held, filed or not yet
//!    ([`store::lock_orders`]), then read `FOR UPDATE` in id order (two replicas lock them in
//!    the same order, so they cannot deadlock); when it earns or takes back points, the
//!    loyalty rules, the rolling spend of the customers' other orders and the balances of the
//!    customers with a return (`FOR UPDATE`) are read once;
//! 3. its events are replayed in memory, in stream order, with the rules of applying one:
//!    - an order event about a cancelled order, or older than the one that set the stored
//!      status, leaves the order as it is (its lines and channel are filed all the same);
//!    - a fulfilment earns the order's points once, at the tier the customer's rolling spend
//!      reaches at that moment (the run's orders as replayed so far, plus the other orders read
//!      in step 2);
//!    - a return adds its refund to the order (up to its total), then takes back the points of
//!      the refund at the customer's tier of that moment, never more than the balance;
//! 4. the outcome is written with one statement per table: orders (the `ON CONFLICT` keeps the
//!    guard), refunds, lines, channels, the customers' purchase figures, then the earned
//!    flags, balances and ledger entries. The figures move by what each order counts for
//!    after the run less what it counted for before ([`purchases::Deltas`]): the stored
//!    lines of the run's stored orders are read for that, never a customer's history.
//!
//! What a run leaves is what applying its events one at a time leaves.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use omni_proto::events::{OrderFacts, ReturnCompleted};
use omni_runtime::Result;
use sqlx::PgConnection;

use crate::facts::CANCELLED;
use crate::purchases::{self, Deltas, Purchase};
use crate::store::{self, FiledLine, FiledOrder, KIND_EARN, KIND_RETURN_REVERSAL, Posting};
use crate::tiers::Rules;

/// One event of a run; the customer it names is not empty.
#[derive(Debug, Clone, Copy)]
pub(super) enum RunEvent<'a> {
    /// An order placed, paid, fulfilled (which earns its points) or cancelled, at `at`.
    Order {
        facts: &'a OrderFacts,
        at: DateTime<Utc>,
        fulfilled: bool,
    },
    /// A return completed: its refund, and the points it takes back.
    Return(&'a ReturnCompleted),
}

impl RunEvent<'_> {
    fn customer_id(&self) -> &str {
        match self {
            RunEvent::Order { facts, .. } => &facts.customer_id,
            RunEvent::Return(r) => &r.customer_id,
        }
    }

    fn order_id(&self) -> &str {
        match self {
            RunEvent::Order { facts, .. } => &facts.order_id,
            RunEvent::Return(r) => &r.order_id,
        }
    }

    /// Whether the event earns or takes back points.
    pub(super) fn moves_points(&self) -> bool {
        matches!(
            self,
            RunEvent::Order {
                fulfilled: true,
                ..
            } | RunEvent::Return(_)
        )
    }
}

/// Applies a run of events in stream order; `rules` are the loyalty rules, needed (and given)
/// when an event moves points. Returns the customer each event applied to: the one it names,
/// or its survivor.
pub(super) async fn apply(
    conn: &mut PgConnection,
    events: &[RunEvent<'_>],
    rules: Option<&Rules>,
) -> Result<Vec<String>> {
    let named: BTreeSet<&str> = events.iter().map(RunEvent::customer_id).collect();
    let named: Vec<&str> = named.into_iter().collect();
    let survivors = store::resolve_locked(conn, &named).await?;
    let customers: Vec<String> = events
        .iter()
        .map(|e| {
            let named = e.customer_id();
            survivors
                .get(named)
                .map_or_else(|| named.to_owned(), Clone::clone)
        })
        .collect();

    let order_ids: BTreeSet<&str> = events.iter().map(RunEvent::order_id).collect();
    let order_ids: Vec<&str> = order_ids.into_iter().collect();
    store::lock_orders(conn, &order_ids).await?;
    let mut orders: HashMap<String, Filed> = store::orders_for_update(conn, &order_ids)
        .await?
        .into_iter()
        .map(|row| (row.order_id.clone(), Filed::stored(row)))
        .collect();
    let mut points = match rules {
        Some(rules) => Some(Points::read(conn, rules, events, &customers, &orders).await?),
        None => None,
    };

    let mut lines: BTreeMap<(&str, &str), FiledLine> = BTreeMap::new();
    let mut channels: BTreeMap<&str, i32> = BTreeMap::new();
    let mut earned: Vec<&str> = Vec::new();
    let mut postings: Vec<Posting> = Vec::new();
    for (event, customer) in events.iter().zip(&customers) {
        match *event {
            RunEvent::Order {
                facts,
                at,
                fulfilled,
            } => {
                let filed = filed_order(facts, customer, at);
                match orders.entry(facts.order_id.clone()) {
                    Entry::Occupied(stored) => stored.into_mut().update(filed),
                    Entry::Vacant(new) => {
                        new.insert(Filed::inserted(filed));
                    }
                }
                for line in &facts.lines {
                    file_line(&mut lines, facts, line, customer);
                }
                // The last kind an event gives a channel stands; one without says nothing.
                if !facts.channel_id.is_empty() && facts.channel_kind != 0 {
                    channels.insert(&facts.channel_id, facts.channel_kind);
                }
                if fulfilled && let Some(points) = &mut points {
                    let total = facts.total.as_ref().map_or(0, |m| m.minor_units);
                    let earn = points.at_current_tier(&orders, customer, total);
                    // Whichever event says it, an order earns once.
                    if let Some(order) = orders.get_mut(&facts.order_id)
                        && !order.row.earned
                    {
                        order.row.earned = true;
                        earned.push(&facts.order_id);
                        if earn > 0 {
                            postings.push(points.post(Posting {
                                customer_id: customer.clone(),
                                kind: KIND_EARN,
                                points: earn,
                                channel_id: facts.channel_id.clone(),
                                order_id: facts.order_id.clone(),
                                return_id: String::new(),
                            }));
                        }
                    }
                }
            }
            RunEvent::Return(r) => {
                let refund = r.refund_total.as_ref().map_or(0, |m| m.minor_units);
                // Only an order crm has filed by then is refunded; the points go back anyway.
                if let Some(order) = orders.get_mut(&r.order_id) {
                    let row = &mut order.row;
                    row.refunded_minor = row.total_minor.min(row.refunded_minor + refund);
                    order.refunded = true;
                }
                if let Some(points) = &mut points {
                    let owed = points.at_current_tier(&orders, customer, refund);
                    // Already redeemed points stay redeemed.
                    let taken = owed.min(points.balance(customer));
                    if owed > 0 && taken > 0 {
                        postings.push(points.post(Posting {
                            customer_id: customer.clone(),
                            kind: KIND_RETURN_REVERSAL,
                            points: -taken,
                            channel_id: r.channel_id.clone(),
                            order_id: r.order_id.clone(),
                            return_id: r.return_id.clone(),
                        }));
                    }
                }
            }
        }
    }

    let mut filed: Vec<&FiledOrder> = orders
        .values()
        .filter(|o| o.changed)
        .map(|o| &o.row)
        .collect();
    filed.sort_by(|a, b| a.order_id.cmp(&b.order_id));
    store::file_orders(conn, &filed).await?;
    let mut refunds: Vec<(&str, i64)> = orders
        .values()
        .filter(|o| o.refunded)
        .map(|o| (o.row.order_id.as_str(), o.row.refunded_minor))
        .collect();
    refunds.sort_unstable();
    store::record_refunds(conn, &refunds).await?;
    let deltas = figures(conn, &orders, &lines).await?;
    let lines: Vec<&FiledLine> = lines.values().collect();
    store::file_lines(conn, &lines).await?;
    let channels: Vec<(&str, i32)> = channels.into_iter().collect();
    store::upsert_channels(conn, &channels).await?;
    deltas.write(conn).await?;
    store::post(conn, &earned, &postings).await?;
    Ok(customers)
}

/// What of an order its figures depend on and a run may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Standing {
    counted: bool,
    /// Total less refunds.
    net_minor: i64,
}

impl Standing {
    fn of(row: &FiledOrder) -> Self {
        Standing {
            counted: row.status != CANCELLED,
            net_minor: row.total_minor - row.refunded_minor,
        }
    }
}

/// An order of the run, as stored or filed so far.
struct Filed {
    row: FiledOrder,
    /// Its standing as stored before the run; `None` for an order the run files first. (Its
    /// owner, placement, channel and store never change once filed.)
    before: Option<Standing>,
    /// Whether the run inserted it or changed its status (and must file it).
    changed: bool,
    /// Whether a return of the run refunded it.
    refunded: bool,
}

impl Filed {
    fn stored(row: FiledOrder) -> Self {
        Filed {
            before: Some(Standing::of(&row)),
            row,
            changed: false,
            refunded: false,
        }
    }

    fn inserted(row: FiledOrder) -> Self {
        Filed {
            before: None,
            row,
            changed: true,
            refunded: false,
        }
    }

    /// Applies a later event's facts: its status, total, item count and time, unless the
    /// order is cancelled or the status was set by a newer event.
    fn update(&mut self, filed: FiledOrder) {
        if self.row.status != CANCELLED && self.row.status_at <= filed.status_at {
            self.row.status = filed.status;
            self.row.total_minor = filed.total_minor;
            self.row.item_count = filed.item_count;
            self.row.status_at = filed.status_at;
            self.changed = true;
        }
    }
}

/// What the run changes in its customers' purchase figures: for each order counted before or
/// after the run, what it counts for after less what it counted for before (nothing, when
/// neither its standing, its net nor its lines changed). The lines of a stored order are its
/// stored ones (a line keeps its SKU, product and category as first filed) and the run's new
/// ones; the stored ones are read in one statement.
async fn figures(
    conn: &mut PgConnection,
    orders: &HashMap<String, Filed>,
    run_lines: &BTreeMap<(&str, &str), FiledLine>,
) -> Result<Deltas> {
    // Counted before or after: its standing, its net or its lines may have changed.
    let mut changed: Vec<&Filed> = orders
        .values()
        .filter(|o| Standing::of(&o.row).counted || o.before.is_some_and(|b| b.counted))
        .collect();
    changed.sort_by(|a, b| a.row.order_id.cmp(&b.row.order_id));
    let stored: Vec<&str> = changed
        .iter()
        .filter(|o| o.before.is_some())
        .map(|o| o.row.order_id.as_str())
        .collect();
    let stored_lines = if stored.is_empty() {
        Vec::new()
    } else {
        store::line_keys(conn, &stored).await?
    };
    // (order, line) -> (category, product, SKU), stored lines first.
    let mut keys: BTreeMap<(&str, &str), (&str, &str, &str)> = BTreeMap::new();
    for (order, line, category, product, sku) in &stored_lines {
        keys.insert((order, line), (category, product, sku));
    }
    let mut deltas = Deltas::default();
    for o in changed {
        let id = o.row.order_id.as_str();
        let stored_keys: BTreeSet<(&str, &str, &str)> = keys
            .range((id, "")..)
            .take_while(|((order, _), _)| *order == id)
            .map(|(_, k)| *k)
            .collect();
        let new_keys: BTreeSet<(&str, &str, &str)> = run_lines
            .range((id, "")..)
            .take_while(|((order, _), _)| *order == id)
            .filter(|((order, line), _)| !keys.contains_key(&(*order, *line)))
            .map(|(_, l)| {
                (
                    l.category_id.as_str(),
                    l.product_id.as_str(),
                    l.sku_id.as_str(),
                )
            })
            .filter(|k| !stored_keys.contains(k))
            .collect();
        let now = Standing::of(&o.row);
        // Most events of a filed order (a payment, a fulfilment) leave its figures alone.
        if o.before == Some(now) && new_keys.is_empty() {
            continue;
        }
        let mut after_keys = stored_keys.clone();
        after_keys.extend(new_keys);
        let before = o
            .before
            .filter(|b| b.counted)
            .map(|b| purchase(&o.row, b, stored_keys));
        let after = now.counted.then(|| purchase(&o.row, now, after_keys));
        deltas.order(before.as_ref(), after.as_ref());
    }
    Ok(deltas)
}

/// A counted order as its figures see it: filed as `order`, with the net of `standing` (as
/// stored, or as the run leaves it) and these lines.
fn purchase<'a>(
    order: &'a FiledOrder,
    standing: Standing,
    lines: BTreeSet<(&'a str, &'a str, &'a str)>,
) -> Purchase<'a> {
    Purchase {
        customer_id: &order.customer_id,
        placed_at: order.placed_at,
        channel_id: &order.channel_id,
        channel_kind: order.channel_kind,
        store_id: &order.store_id,
        net_minor: standing.net_minor,
        lines,
    }
}

/// The order an event files, under `customer`, as inserted when crm has no row for it yet.
fn filed_order(facts: &OrderFacts, customer: &str, at: DateTime<Utc>) -> FiledOrder {
    let total = facts.total.clone().unwrap_or_default();
    let placed_at = facts
        .placed_at
        .as_ref()
        .and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .unwrap_or_else(Utc::now);
    FiledOrder {
        order_id: facts.order_id.clone(),
        customer_id: customer.to_owned(),
        order_number: facts.order_number.clone(),
        channel_id: facts.channel_id.clone(),
        channel_kind: facts.channel_kind,
        store_id: if facts.store_id.is_empty() {
            facts.handover_store_id.clone()
        } else {
            facts.store_id.clone()
        },
        status: facts.status,
        total_minor: total.minor_units,
        currency: total.currency,
        item_count: facts.lines.iter().map(|l| l.quantity).sum(),
        placed_at,
        status_at: Some(at),
        refunded_minor: 0,
        earned: false,
    }
}

/// Files a line an event describes: a line first seen is taken whole (its customer, SKU,
/// product and category stay as first filed); the last event sets its quantity and amount.
fn file_line<'a>(
    lines: &mut BTreeMap<(&'a str, &'a str), FiledLine>,
    facts: &'a OrderFacts,
    line: &'a omni_proto::events::OrderLineFacts,
    customer: &str,
) {
    let quantity = line.quantity;
    let net_minor = line.net_amount.as_ref().map_or(0, |m| m.minor_units);
    lines
        .entry((&facts.order_id, &line.line_id))
        .and_modify(|l| {
            l.quantity = quantity;
            l.net_minor = net_minor;
        })
        .or_insert_with(|| FiledLine {
            order_id: facts.order_id.clone(),
            line_id: line.line_id.clone(),
            customer_id: customer.to_owned(),
            sku_id: line.sku_id.clone(),
            product_id: line.product_id.clone(),
            category_id: line.category_id.clone(),
            quantity,
            net_minor,
        });
}

/// What moving points during a run needs, read once.
struct Points<'r> {
    rules: &'r Rules,
    /// The start of the rolling window.
    since: DateTime<Utc>,
    /// The rolling spend of each customer that earns or returns, on orders outside the run.
    others: HashMap<String, i64>,
    /// The balance of each customer with a return (0 without an account), as stored, then
    /// moved by the run so far.
    balances: HashMap<String, i64>,
}

impl<'r> Points<'r> {
    async fn read(
        conn: &mut PgConnection,
        rules: &'r Rules,
        events: &[RunEvent<'_>],
        customers: &[String],
        orders: &HashMap<String, Filed>,
    ) -> Result<Points<'r>> {
        let set = |keep: fn(&RunEvent<'_>) -> bool| {
            let ids: BTreeSet<&str> = events
                .iter()
                .zip(customers)
                .filter(|(e, _)| keep(e))
                .map(|(_, c)| c.as_str())
                .collect();
            ids.into_iter().collect::<Vec<&str>>()
        };
        let since = rules.window_start(Utc::now());
        // The customers' rolling spend less what the run's stored orders counted for in it.
        let mut others =
            purchases::rolling_spends(conn, Some(&set(|e| e.moves_points())), since).await?;
        for o in orders.values() {
            if let Some(before) = o.before
                && before.counted
                && o.row.placed_at >= since
                && let Some(spend) = others.get_mut(&o.row.customer_id)
            {
                *spend -= before.net_minor;
            }
        }
        let returning = set(|e| matches!(e, RunEvent::Return(_)));
        let mut balances: HashMap<String, i64> = if returning.is_empty() {
            HashMap::new()
        } else {
            store::balances_for_update(conn, &returning).await?
        };
        for customer in returning {
            balances.entry(customer.to_owned()).or_insert(0);
        }
        Ok(Points {
            rules,
            since,
            others,
            balances,
        })
    }

    /// Points for `net_minor` of spend at `customer`'s tier now: its rolling spend over the
    /// orders outside the run and the run's orders as replayed so far.
    fn at_current_tier(
        &self,
        orders: &HashMap<String, Filed>,
        customer: &str,
        net_minor: i64,
    ) -> i64 {
        let in_run: i64 = orders
            .values()
            .map(|o| &o.row)
            .filter(|o| {
                o.customer_id == customer && o.status != CANCELLED && o.placed_at >= self.since
            })
            .map(|o| o.total_minor - o.refunded_minor)
            .sum();
        let spend = self.others.get(customer).copied().unwrap_or(0) + in_run;
        self.rules
            .points_for(net_minor, self.rules.tier_for(spend).0)
    }

    /// The balance of a customer with a return, now.
    fn balance(&self, customer: &str) -> i64 {
        self.balances.get(customer).copied().unwrap_or(0)
    }

    /// Moves the balance a posting concerns, if followed; returns the posting.
    fn post(&mut self, posting: Posting) -> Posting {
        if let Some(balance) = self.balances.get_mut(&posting.customer_id) {
            *balance += posting.points;
        }
        posting
    }
}
