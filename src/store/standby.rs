//! A PostgreSQL database another server serves from: the connection a
//! standby waits on until that server's claim ([`super::ONE_SERVER_LOCK`])
//! is released, and then takes it.
//!
//! Invariant: a standby serves nothing from the database before it holds
//! the claim. While it waits, [`Standby::view`] reads (the servers' rows,
//! the generations whose artifacts it copies) and writes its own row in
//! `servers`, nothing else; migrations run only when it takes over (the
//! serving server's version owns the schema until then).

use sqlx::PgPool;

use super::{Pool, Store, StoreError};

pub struct Standby {
    pool: PgPool,
}

impl Standby {
    /// Connects to the PostgreSQL database at `url` without claiming it.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Ok(Self {
            pool: super::postgres_pool(url).await?,
        })
    }

    /// The database as a waiting standby may use it (see the module's
    /// invariant); it holds no claim, so nothing may serve from it.
    pub fn view(&self) -> Store {
        Store {
            pool: Pool::Postgres(self.pool.clone()),
            owner: None,
            leading: None,
        }
    }

    /// Claims the database if the server that held it is gone: the store
    /// to serve from, migrated; `None` while the other server holds it.
    pub async fn try_take(&self) -> Result<Option<Store>, StoreError> {
        Store::claim(self.pool.clone()).await
    }
}
