//! catalog's integration tests: one binary, so the suite links once. Every test starts the
//! real service on a fresh database and Redis namespace and goes through the gRPC contract.

mod access;
mod pricing;
mod products;
mod quote;
mod support;
