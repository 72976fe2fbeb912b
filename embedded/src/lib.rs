//! Servers that windi runs itself, from the machine's own binaries: nothing is downloaded.
//!
//! - [`postgres::EmbeddedPostgres`]: the cluster `windi` serves from when `DATABASE_URL` is
//!   unset. It belongs to the process that started it: any number of `windi` commands may use
//!   it at once, only its starter stops it, and a cluster left behind by a crash is adopted by
//!   the next start.
//! - [`test_services`]: one private Postgres cluster and one `nats-server -js` on free loopback
//!   ports, shared by every test process of a `cargo test` run and removed after the last one,
//!   so the test command needs no server set up by hand.
//!
//! The two share [`postgres::Cluster`] (find the binaries, `initdb`, `pg_ctl`), so the tests
//! run the same code a newcomer's `windi` does.
//!
//! Why not the `postgresql_embedded` crate: its value is downloading a PostgreSQL build, which
//! cannot happen here (no network but package registries), and pointed at installed binaries
//! it runs them as the current user, while `initdb` refuses root, which is what CI and
//! containers run as.

pub mod nats;
pub mod platform;
pub mod postgres;
pub mod test_services;
