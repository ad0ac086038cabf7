//! Scale-out against real services: the state-store conformance suite on
//! Redis, the PostgreSQL audit, and two replicas sharing both. Each test
//! starts its own Redis and PostgreSQL on free loopback ports
//! (`gatehouse_tests::services`) and stops them.

mod replicas;
mod store;
