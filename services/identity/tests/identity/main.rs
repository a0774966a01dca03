//! identity's integration tests: one binary, so the suite links once.

mod api;
mod platform;
