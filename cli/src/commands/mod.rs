//! One module per command group.

pub mod catalog;
pub mod crm;
pub mod customer;
pub mod demo;
pub mod events;
pub mod kpi;
pub mod login;
pub mod order;
pub mod seed;
pub mod setup;
pub mod stock;
