//! The `omni` command against the real suite: every test starts the services in-process
//! (`omni_testkit::Shop`, real Postgres and Redis) and runs commands through
//! `omni_cli::run_captured` with the shop's URLs, as a user would type them.

mod binary;
mod catalog;
mod crm;
mod customer;
mod demo;
mod events;
mod kpi;
mod login;
mod order;
mod seed;
mod stock;
mod support;
