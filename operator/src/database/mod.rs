//! The operator's side of the database: connecting with the spec's pool settings, and
//! (in the policy manager) converging schema and storage policies.

mod connection;

pub use connection::{DatabaseError, DatabaseInfo, MIGRATOR, connect, migrate, probe};
