//! The suite's small retailer around Lyon, shared with the other suites' tests.

pub use omni_testkit::world::*;
