//! inventory through its gRPC contract, on real Postgres and Redis, started by the testkit.

mod availability;
mod reservations;
mod stock;
mod support;
mod transfers;
mod values;
