//! crm through its gRPC contract, on real Postgres and Redis: identity events from the real
//! identity service, order events through a real outbox into the same Redis namespace.

mod coupons;
mod loyalty;
mod support;
mod view;
