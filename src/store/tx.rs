//! One write transaction, and the typed writes it offers: the only way the
//! rest of the server changes the database (the ledger writer aside, which
//! batches what the packet paths record).
//!
//! [`Store::begin`] opens it, one writer at a time on both backends (SQLite:
//! `BEGIN IMMEDIATE`, as a plain `BEGIN` fails under concurrent
//! read-then-write; PostgreSQL: [`super::POSTGRES_WRITE_LOCK`], so that a
//! read-then-write such as numbering a generation never races); nothing is
//! visible until
//! [`Tx::commit`], and dropping a `Tx` rolls it back. Callers never see a
//! connection or SQL: the methods are named for what they mean to the
//! fleet, per table in `machines.rs`, `groups.rs`, `generations.rs`,
//! `boots.rs` and `rollouts.rs`.

use sqlx::{Postgres, Sqlite, Transaction};

use super::{Pool, Store, StoreError};

/// A write transaction in progress.
pub struct Tx(pub(super) Inner);

pub(super) enum Inner {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

impl Store {
    /// Opens a write transaction.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(Tx(match &self.pool {
            Pool::Sqlite(p) => Inner::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?),
            Pool::Postgres(p) => {
                let mut t = p.begin().await?;
                sqlx::query(super::POSTGRES_WRITE_LOCK)
                    .execute(&mut *t)
                    .await?;
                Inner::Postgres(t)
            }
        }))
    }
}

impl Tx {
    /// Its connection, for statements shared with the ledger writer.
    pub(super) fn conn(&mut self) -> super::Conn<'_> {
        match &mut self.0 {
            Inner::Sqlite(t) => super::Conn::Sqlite(t),
            Inner::Postgres(t) => super::Conn::Postgres(t),
        }
    }

    /// Makes every write of this transaction durable and visible at once.
    pub async fn commit(self) -> Result<(), StoreError> {
        match self.0 {
            Inner::Sqlite(t) => t.commit().await?,
            Inner::Postgres(t) => t.commit().await?,
        }
        Ok(())
    }
}
