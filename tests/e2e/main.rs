//! End-to-end tests against a real in-process server on an ephemeral
//! loopback port, with a client built only from `proto/`.

#![allow(clippy::unwrap_used, reason = "test helpers panic on setup failure")]

mod client;
mod controls;
mod helpers;
mod metrics;
mod outputs;
mod reload;
mod stream;
mod tls;
