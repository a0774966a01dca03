//! crm through its gRPC contract, on real Postgres and Redis: identity events from the real
//! identity service, order events through a real outbox into the same Redis namespace.

mod batches;
mod campaigns;
mod coupons;
mod ledger;
mod loyalty;
mod recommend;
mod segments;
mod support;
mod tickets;
mod view;
