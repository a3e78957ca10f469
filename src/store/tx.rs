//! One write transaction, and the typed writes it offers: the only way the
//! rest of the server changes the database (the ledger writer aside, which
//! batches what the packet paths record).
//!
//! [`Store::begin`] opens it with `BEGIN IMMEDIATE` (a plain `BEGIN` fails
//! under concurrent read-then-write); nothing is visible until
//! [`Tx::commit`], and dropping a `Tx` rolls it back. Callers never see a
//! connection or SQL: the methods are the seam a second backend implements
//! (PostgreSQL, for several servers), each named for what it means to the
//! fleet, per table in `machines.rs`, `groups.rs`, `generations.rs`,
//! `boots.rs` and `rollouts.rs`.

use sqlx::{Sqlite, Transaction};

use super::{Store, StoreError};

/// A write transaction in progress.
pub struct Tx(pub(super) Transaction<'static, Sqlite>);

impl Store {
    /// Opens a write transaction.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(Tx(self.pool.begin_with("BEGIN IMMEDIATE").await?))
    }
}

impl Tx {
    /// Makes every write of this transaction durable and visible at once.
    pub async fn commit(self) -> Result<(), StoreError> {
        Ok(self.0.commit().await?)
    }
}
