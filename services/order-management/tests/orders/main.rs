//! order-management through its published contract, on the real identity, catalog,
//! inventory, crm and performance services started by the testkit.

mod concurrency;
mod erasure;
mod events;
mod imports;
mod journeys;
mod metrics;
mod rejections;
mod scope;
mod slowness;
mod support;
mod tiers;
