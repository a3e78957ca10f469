//! A server that waits as the standby of the one serving a PostgreSQL
//! database (`[store] standby = true`), and takes over when that server's
//! claim on the database is released: it stopped, was killed, or its host
//! vanished (the database notices after about 9 s of silence).
//!
//! While it waits it serves nothing. It tries the claim every
//! [`TRY_EVERY`], writes its row in `servers` (role `standby`, its peer the
//! primary) with the usual heartbeat, and keeps its own image store a copy
//! of the primary's: every artifact the database's generations name is
//! fetched from the primary's HTTP address by digest and verified before it
//! is stored ([`crate::images::mirror`]), so a takeover serves every
//! generation at once. When it holds the claim it starts exactly as a
//! server does after a crash: leases, boots, tokens and rollouts come back
//! from the database, which is where every promise was written before it
//! was made.
//!
//! Invariant: nothing here serves, and the only row written is this
//! server's own (see [`crate::store::standby`]).
//!
//! The copying also serves servers sharing a database (`[store] shared`,
//! [`copy_from_peers`]): each keeps a copy of what the others imported.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::images::manifest::{ArtifactRef, Manifest};
use crate::images::mirror::Mirror;
use crate::images::ImageStore;
use crate::ledger::now_ms;
use crate::store::servers::{ServerRole, ServerStart, HEARTBEAT_EVERY};
use crate::store::standby::Standby;
use crate::store::{Store, StoreError};

/// How often a standby tries the claim: with the primary's connection
/// closed (a stop, a crash, SIGKILL), the takeover starts within this.
pub const TRY_EVERY: Duration = Duration::from_millis(500);

/// How long a standby that took the claim waits before it loads the
/// fleet and serves: longer than a running primary takes to notice its
/// claim is gone (its check runs every second, see `app`).
pub const TAKEOVER_GRACE: Duration = Duration::from_millis(1500);

/// How often a standby copies what the primary's image store gained.
pub const MIRROR_EVERY: Duration = Duration::from_secs(5);

/// One artifact download from the primary, at most.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Who this server is, as its row says.
pub struct Me {
    pub id: String,
    /// The HTTP base URL it will tell machines.
    pub http: String,
}

/// Waits until this server holds the claim: the store to serve from, or
/// `None` when `shutdown` came first (its row then says it stopped).
pub async fn wait(
    standby: Standby,
    me: Me,
    images: Arc<ImageStore>,
    shutdown: &CancellationToken,
) -> Result<Option<Store>, StoreError> {
    let view = standby.view();
    let mut registered = false;
    let mut beat = tokio::time::interval(HEARTBEAT_EVERY);
    let mut attempt = tokio::time::interval(TRY_EVERY);
    let mut mirror = tokio::time::interval(MIRROR_EVERY);
    for tick in [&mut beat, &mut attempt, &mut mirror] {
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    // One copying round at a time, polled beside the claim: dropped (and
    // with it any download cut short, temporary file and all) when the
    // claim is taken or the server stops.
    let mut copying: Option<Pin<Box<dyn Future<Output = ()> + Send>>> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                if registered {
                    view.server_stopped(&me.id, now_ms()).await?;
                }
                return Ok(None);
            }
            _ = attempt.tick() => {
                if let Some(store) = standby.try_take().await? {
                    info!(id = %me.id, "the primary's claim was released: taking over");
                    // A primary whose claim connection was cut while it
                    // still runs stops at its next claim check: only then
                    // are its last leases all in the database to load.
                    tokio::time::sleep(TAKEOVER_GRACE).await;
                    return Ok(Some(store));
                }
            }
            _ = beat.tick() => {
                registered = beat_once(&view, &me, registered).await;
            }
            _ = mirror.tick(), if copying.is_none() => {
                copying = Some(Box::pin(copy_round(view.clone(), me.id.clone(), images.clone())));
            }
            _ = async { copying.as_mut().expect("guarded").await }, if copying.is_some() => {
                copying = None;
            }
        }
    }
}

/// Registers the row (once) or beats: whether the row is registered. A
/// database whose schema the primary has not created yet has no
/// `servers` table: tried again at the next beat.
async fn beat_once(view: &Store, me: &Me, registered: bool) -> bool {
    let now = now_ms();
    let result = if registered {
        view.server_heartbeat(&me.id, ServerRole::Standby, None, now)
            .await
    } else {
        let start = ServerStart {
            id: &me.id,
            role: ServerRole::Standby,
            peer: None,
            version: env!("CARGO_PKG_VERSION"),
            http: &me.http,
            pid: std::process::id(),
        };
        match view.register_server(&start, now).await {
            Ok(()) => {
                view.server_heartbeat(&me.id, ServerRole::Standby, None, now)
                    .await
            }
            Err(e) => Err(e),
        }
    };
    match result {
        Ok(()) => true,
        Err(e) => {
            debug!(error = %e, "standby row not written; trying at the next beat");
            registered
        }
    }
}

/// One round of copying for a standby: from the live primary.
async fn copy_round(view: Store, me: String, images: Arc<ImageStore>) {
    let Some(primary) = view.live_primary(&me, now_ms()).await.ok().flatten() else {
        debug!("no live primary to copy artifacts from");
        return;
    };
    copy_from(&view, &[primary], &images).await;
}

/// With `[store] shared`: keeps this server's image store a copy of its
/// peers' (every live server sharing the database), every
/// [`MIRROR_EVERY`] and at once when `nudge` says generations changed,
/// so each server serves the artifacts of a generation imported through
/// another within seconds.
pub async fn copy_from_peers(
    store: Store,
    me: String,
    images: Arc<ImageStore>,
    nudge: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut tick = tokio::time::interval(MIRROR_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
            _ = nudge.notified() => {}
        }
        let peers = match store.live_peers(&me, now_ms()).await {
            Ok(p) => p,
            Err(e) => {
                debug!(error = %e, "peers not read; copying later");
                continue;
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = copy_from(&store, &peers, &images) => {}
        }
    }
}

/// Copies every artifact of every generation the database holds that
/// this server lacks, trying `sources` (id, HTTP base) in turn for what
/// the one before could not give, then stores the manifests whose
/// artifacts are all here.
async fn copy_from(view: &Store, sources: &[(String, String)], images: &Arc<ImageStore>) {
    let manifests = match wanted(view).await {
        Ok(m) => m,
        Err(e) => {
            debug!(error = %e, "generations not read; copying later");
            return;
        }
    };
    let mut artifacts: Vec<ArtifactRef> = manifests
        .iter()
        .flat_map(|m| m.artifacts().cloned())
        .collect();
    for (source, http) in sources {
        if artifacts.is_empty() {
            break;
        }
        let mirror = match Mirror::new(http, images.clone(), MIRROR_TIMEOUT) {
            Ok(m) => m,
            Err(e) => {
                warn!(%source, %http, error = %e, "this server's HTTP address cannot be copied from");
                continue;
            }
        };
        let report = mirror.fill(&artifacts).await;
        if report.fetched > 0 || !report.failed.is_empty() {
            info!(%source, fetched = report.fetched, bytes = report.bytes,
                  present = report.present, failed = report.failed.len(),
                  "copied artifacts from another server");
        }
        artifacts.retain(|a| report.failed.iter().any(|(d, _)| *d == a.digest));
    }
    for m in &manifests {
        if let Err(e) = images.put_manifest(m).await {
            debug!(error = %e, "manifest not stored yet");
        }
    }
}

/// The manifests of every generation in the database (unreadable ones
/// skipped: the primary refused to store such a manifest in the first
/// place).
async fn wanted(view: &Store) -> Result<Vec<Manifest>, StoreError> {
    let rows = view.generation_rows().await?;
    let mut seen = std::collections::HashSet::new();
    Ok(rows
        .into_iter()
        .filter(|r| seen.insert(r.image.clone()))
        .filter_map(|r| serde_json::from_str::<Manifest>(&r.manifest).ok())
        .collect())
}
