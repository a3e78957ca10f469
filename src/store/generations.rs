//! The `images` and `generations` tables: an image once per digest, and
//! each stream's numbered generations pointing at one.

use super::tx::Tx;
use super::{Store, StoreError};
use crate::domain::{Cpu, GenerationId};

/// A generation with its image's manifest (JSON, as stored).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct GenerationRow {
    pub stream: String,
    pub number: i64,
    /// The image's digest (hex).
    pub image: String,
    pub manifest: String,
    pub imported_ms: i64,
    pub imported_by: Option<String>,
}

impl Store {
    /// Every generation with its manifest (the inventory's load).
    pub async fn generation_rows(&self) -> Result<Vec<GenerationRow>, StoreError> {
        Ok(on_pool!(&self.pool, db => sqlx::query_as(
            "SELECT g.stream, g.number, g.image, i.manifest, g.imported_ms, g.imported_by
             FROM generations g JOIN images i ON i.digest = g.image",
        )
        .fetch_all(db)
        .await)?)
    }
}

impl Tx {
    /// Records an import: the image (once per digest) and the stream's next
    /// generation number, which it returns.
    pub async fn add_generation(
        &mut self,
        stream: &str,
        digest: &str,
        arch: Cpu,
        manifest_json: &str,
        by: Option<&str>,
        now_ms: i64,
    ) -> Result<i64, StoreError> {
        on_tx!(self, db => sqlx::query(
            "INSERT INTO images (digest, arch, manifest, created_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT (digest) DO NOTHING",
        )
        .bind(digest)
        .bind(arch.as_str())
        .bind(manifest_json)
        .bind(now_ms)
        .execute(&mut *db)
        .await.map(|r| r.rows_affected()))?;
        let (next,): (i64,) = on_tx!(self, db => sqlx::query_as("SELECT COALESCE(MAX(number), 0) + 1 FROM generations WHERE stream = $1")
                .bind(stream)
                .fetch_one(&mut *db)
                .await)?;
        on_tx!(self, db => sqlx::query(
            "INSERT INTO generations (stream, number, image, imported_ms, imported_by)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(stream)
        .bind(next)
        .bind(digest)
        .bind(now_ms)
        .bind(by)
        .execute(&mut *db)
        .await.map(|r| r.rows_affected()))?;
        Ok(next)
    }

    /// Deletes generation rows, then every image no generation refers to.
    pub async fn delete_generations(&mut self, ids: &[GenerationId]) -> Result<(), StoreError> {
        for id in ids {
            on_tx!(self, db => sqlx::query("DELETE FROM generations WHERE stream = $1 AND number = $2")
                .bind(&id.stream)
                .bind(id.number)
                .execute(&mut *db)
                .await.map(|r| r.rows_affected()))?;
        }
        on_tx!(self, db => sqlx::query("DELETE FROM images WHERE digest NOT IN (SELECT image FROM generations)")
            .execute(&mut *db)
            .await.map(|r| r.rows_affected()))?;
        Ok(())
    }
}
