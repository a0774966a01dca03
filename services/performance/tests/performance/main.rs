//! performance through its gRPC contract, on real Postgres and Redis, started by the testkit;
//! order, return, catalog and crm events arrive through a real outbox, relay and Redis stream.

mod attribution;
mod batches;
mod bench;
mod distinct;
mod experiments;
mod inputs;
mod inventory;
mod kpis;
mod scorecards;
mod support;
