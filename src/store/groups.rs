//! The `groups` and `group_generations` tables: a group's settings, the
//! pointer set last, and one pointer per slot.

use super::tx::Tx;
use super::{Store, StoreError};
use crate::domain::{GenerationId, Slot};

/// A row of `groups`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct GroupRow {
    pub name: String,
    pub stream: Option<String>,
    pub generation: Option<i64>,
    /// JSON object of template variables.
    pub variables: String,
    pub selector: Option<String>,
    pub description: String,
}

/// A row of `group_generations`: one pointer per slot.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SlotRow {
    pub group_name: String,
    pub slot: String,
    pub stream: String,
    pub generation: i64,
}

/// What a group edit sets; `None` leaves a field as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct GroupFields<'a> {
    pub description: Option<&'a str>,
    /// `Some(None)` removes the selector.
    pub selector: Option<Option<&'a str>>,
    /// JSON object, replaced whole.
    pub variables: Option<&'a str>,
}

impl Store {
    /// Every group and every slot pointer (the inventory's load).
    pub async fn group_rows(&self) -> Result<(Vec<GroupRow>, Vec<SlotRow>), StoreError> {
        let groups = on_pool!(&self.pool, db => sqlx::query_as(
            "SELECT name, stream, generation, variables, selector, description FROM groups",
        )
        .fetch_all(db)
        .await)?;
        let slots = on_pool!(&self.pool, db => sqlx::query_as("SELECT group_name, slot, stream, generation FROM group_generations")
                .fetch_all(db)
                .await)?;
        Ok((groups, slots))
    }
}

impl Tx {
    pub async fn group_exists(&mut self, name: &str) -> Result<bool, StoreError> {
        Ok(
            on_tx!(self, db => sqlx::query("SELECT 1 FROM groups WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *db)
            .await
            .map(|row| row.is_some()))?,
        )
    }

    /// A new group with default settings.
    pub async fn insert_group(&mut self, name: &str, now_ms: i64) -> Result<(), StoreError> {
        on_tx!(self, db => sqlx::query("INSERT INTO groups (name, updated_ms) VALUES ($1, $2)")
            .bind(name)
            .bind(now_ms)
            .execute(&mut *db)
            .await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    pub async fn update_group(
        &mut self,
        name: &str,
        fields: GroupFields<'_>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        on_tx!(self, db => sqlx::query(
            "UPDATE groups SET
                 description = CASE WHEN $1 THEN $2 ELSE description END,
                 selector = CASE WHEN $3 THEN $4 ELSE selector END,
                 variables = CASE WHEN $5 THEN $6 ELSE variables END,
                 updated_ms = $7
             WHERE name = $8",
        )
        .bind(fields.description.is_some())
        .bind(fields.description)
        .bind(fields.selector.is_some())
        .bind(fields.selector.flatten())
        .bind(fields.variables.is_some())
        .bind(fields.variables)
        .bind(now_ms)
        .bind(name)
        .execute(&mut *db)
        .await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Removes a group and its slot pointers.
    pub async fn delete_group(&mut self, name: &str) -> Result<(), StoreError> {
        on_tx!(self, db => sqlx::query("DELETE FROM group_generations WHERE group_name = $1")
            .bind(name)
            .execute(&mut *db)
            .await.map(|r| r.rows_affected()))?;
        on_tx!(self, db => sqlx::query("DELETE FROM groups WHERE name = $1")
            .bind(name)
            .execute(&mut *db)
            .await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Points `group` at `id` for `slot` (creating the group if missing):
    /// the group's row keeps the pointer set last, `group_generations` the
    /// one per slot. Every writer of a group pointer (the groups API,
    /// `set-generation`, a rollout's success, apply) goes through here.
    pub async fn set_group_pointer(
        &mut self,
        group: &str,
        slot: Slot,
        id: &GenerationId,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        Ok(set_group_pointer(&mut self.conn(), group, slot, id, now_ms).await?)
    }
}

/// [`Tx::set_group_pointer`] on a connection already in a transaction (the
/// ledger writer's, for rollouts that complete on the boot path).
pub(super) async fn set_group_pointer(
    conn: &mut super::Conn<'_>,
    group: &str,
    slot: Slot,
    id: &GenerationId,
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    on_conn!(conn, db => sqlx::query(
        "INSERT INTO groups (name, stream, generation, updated_ms) VALUES ($1, $2, $3, $4)
         ON CONFLICT (name) DO UPDATE SET stream = $2, generation = $3, updated_ms = $4",
    )
    .bind(group)
    .bind(&id.stream)
    .bind(id.number)
    .bind(now_ms)
    .execute(&mut *db)
    .await.map(|r| r.rows_affected()))?;
    on_conn!(conn, db => sqlx::query(
        "INSERT INTO group_generations (group_name, slot, stream, generation, updated_ms)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (group_name, slot) DO UPDATE SET stream = $3, generation = $4, updated_ms = $5",
    )
    .bind(group)
    .bind(slot.to_string())
    .bind(&id.stream)
    .bind(id.number)
    .bind(now_ms)
    .execute(&mut *db)
    .await.map(|r| r.rows_affected()))?;
    Ok(())
}
