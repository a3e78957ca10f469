//! API tokens (`api_tokens`): only their hashes are stored. One row type;
//! revocation runs in one transaction with the rule that the last live admin
//! token stays (a server nobody can administer is worse than a leaked token
//! an operator replaces first).

use super::{Store, StoreError};
use crate::domain::Role;

/// A row of `api_tokens`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenRow {
    pub id: i64,
    pub name: String,
    /// sha256 of the secret.
    pub hash: String,
    pub role: String,
    pub created_ms: i64,
    pub revoked_ms: Option<i64>,
}

impl TokenRow {
    /// Its role; anything stored but `admin` grants reading only.
    pub fn role(&self) -> Role {
        match self.role.parse() {
            Ok(Role::Admin) => Role::Admin,
            _ => Role::Read,
        }
    }
}

/// What revoking a token did.
#[derive(Debug)]
pub enum Revoked {
    /// Revoked now; the row as it is after.
    Now(TokenRow),
    /// No live token has this id.
    NoSuchToken,
    /// It is the last live admin token: refused.
    LastAdmin,
}

const COLUMNS: &str = "id, name, hash, role, created_ms, revoked_ms";

impl Store {
    /// Tokens not revoked.
    pub async fn live_tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM api_tokens WHERE revoked_ms IS NULL");
        Ok(on_pool!(&self.pool, db => sqlx::query_as(&sql).fetch_all(db).await)?)
    }

    /// Every token ever made, oldest first.
    pub async fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM api_tokens ORDER BY id");
        Ok(on_pool!(&self.pool, db => sqlx::query_as(&sql).fetch_all(db).await)?)
    }

    /// Records a token by its hash; returns its id.
    pub async fn insert_token(
        &self,
        name: &str,
        hash: &str,
        role: Role,
        now_ms: i64,
    ) -> Result<i64, StoreError> {
        let (id,): (i64,) = on_pool!(&self.pool, db => sqlx::query_as(
            "INSERT INTO api_tokens (name, hash, role, created_ms) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(name)
        .bind(hash)
        .bind(role.as_str())
        .bind(now_ms)
        .fetch_one(db)
        .await)?;
        Ok(id)
    }

    /// Revokes live token `id` unless it is the last live admin token.
    pub async fn revoke_token(&self, id: i64, now_ms: i64) -> Result<Revoked, StoreError> {
        let mut tx = self.begin().await?;
        let sql = format!("SELECT {COLUMNS} FROM api_tokens WHERE id = $1 AND revoked_ms IS NULL");
        let row: Option<TokenRow> = on_tx!(tx, db => sqlx::query_as(&sql)
            .bind(id)
            .fetch_optional(&mut *db)
            .await)?;
        let Some(mut row) = row else {
            return Ok(Revoked::NoSuchToken);
        };
        if row.role() == Role::Admin {
            let (admins,): (i64,) = on_tx!(tx, db => sqlx::query_as(
                "SELECT COUNT(*) FROM api_tokens WHERE role = $1 AND revoked_ms IS NULL",
            )
            .bind(Role::Admin.as_str())
            .fetch_one(&mut *db)
            .await)?;
            if admins <= 1 {
                return Ok(Revoked::LastAdmin);
            }
        }
        on_tx!(tx, db => sqlx::query("UPDATE api_tokens SET revoked_ms = $1 WHERE id = $2")
            .bind(now_ms)
            .bind(id)
            .execute(&mut *db)
            .await
            .map(|r| r.rows_affected()))?;
        tx.commit().await?;
        row.revoked_ms = Some(now_ms);
        Ok(Revoked::Now(row))
    }
}
