//! The inventory the boot path reads: machines, groups, generations and the
//! boots still waiting for their confirmation, held in memory.
//!
//! Architecture invariant: serving a script never waits on SQLite. It reads
//! this in-memory view, and what it creates (a machine seen for the first
//! time, a boot row) goes through the ledger queue. Operator changes (import,
//! group pointer, pin) and confirmations are written to SQLite first, in a
//! `BEGIN IMMEDIATE` transaction, and only then applied here, so memory never
//! shows what the database does not hold.

mod apply;
mod edit;
mod forget;
mod groups;
mod load;
mod rollouts;
mod shared;

pub use rollouts::RolloutCommandError;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, OnceLock, RwLock};

use crate::boot::identity::{IdentityMatch, SwitchPort};
use crate::boot::loader::{Loader, LoaderSettings};
use crate::boot::membership::DEFAULT_GROUP;
use crate::boot::{self, GenerationId, Target};
use crate::clients::Clients;
use crate::domain::{BootState, Cpu, MacAddr, MachineKind};
use crate::images::{Digest, Manifest};
use crate::ledger::{now_ms, BootRecord, Inherited, Ledger, MachineFacts, Record};
use crate::secret::{new_secret, token_hash};
use crate::store::{Store, StoreError};

use crate::fleet::{decide, empty_group, group_loader, Fleet as State};
pub use crate::fleet::{
    Boot, BootPlan, Decision, Generation, Group, GroupChange, Machine, MachineChange,
    ScriptRequest, Stage, StartRollout, DEFAULT_TOKEN_TTL, PREVIEW_TOKEN,
};
pub use edit::Deleted;

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0} does not exist")]
    NoSuchGeneration(GenerationId),
    #[error("machine {0} is not known")]
    NoSuchMachine(MacAddr),
    #[error("unknown boot token")]
    UnknownToken,
    #[error("boot {0}'s token has expired")]
    ExpiredToken(i64),
    #[error("boot {0} was already confirmed")]
    AlreadyConfirmed(i64),
    #[error("boot {0} had nothing to boot; there is nothing to confirm")]
    NothingToConfirm(i64),
    #[error("group {0} does not exist")]
    NoSuchGroup(String),
    #[error("group {0} already exists")]
    GroupExists(String),
    #[error("group {group} is in use: {}", reasons.join("; "))]
    GroupInUse { group: String, reasons: Vec<String> },
}

pub struct Inventory {
    store: Store,
    ledger: Ledger,
    state: RwLock<State>,
    /// Where boot ids come from (a counter, or ranges when shared).
    ids: shared::BootIds,
    /// This server's id (`servers`), on what it hands the leader.
    server: String,
    /// Hostnames of DHCP reservations (config, not the database): put back
    /// after a reload.
    reserved: std::sync::Mutex<Vec<(MacAddr, String)>>,
    /// Group pointer moves the boot path or the clock queued for the
    /// writer and a reload must apply again until they are committed
    /// (`shared::reload`).
    unsaved_pointers: std::sync::Mutex<Vec<crate::rollout::engine::PointerMove>>,
    /// What DHCP knows of each client: the switch port a boot came
    /// through (relay identity) and the firmware architecture a script
    /// request that does not name its own is taken to have.
    clients: Clients,
    /// Where machines a rollout moved (or rolled back) are sent to be
    /// rebooted (the reboot hook's queue); set once at start.
    reboots: OnceLock<tokio::sync::mpsc::Sender<crate::rollout::hook::Job>>,
    /// How long a boot's token works after its script was served.
    token_ttl_ms: i64,
    /// Operator commands on the fleet, one at a time (see
    /// `rollouts::fleet_command`).
    fleet_commands: tokio::sync::Mutex<()>,
}

impl Inventory {
    /// Loads the view from the database.
    pub async fn load(store: Store, ledger: Ledger) -> Result<Self, InventoryError> {
        let (mut state, max_boot) = load::state(&store).await?;
        state.rollouts = crate::rollout::restore::restore(
            store.fleet_rows().await?,
            crate::rollout::settings::RolloutSettings::default().watchdog,
        );
        let moved = state.regroup();
        load::save_groups(&store, &moved).await?;
        Ok(Self {
            store,
            ledger,
            state: RwLock::new(state),
            ids: shared::BootIds::Counter(AtomicI64::new(max_boot + 1)),
            server: String::new(),
            reserved: Default::default(),
            unsaved_pointers: Default::default(),
            clients: Clients::empty(),
            reboots: OnceLock::new(),
            token_ttl_ms: DEFAULT_TOKEN_TTL.as_millis() as i64,
            fleet_commands: tokio::sync::Mutex::new(()),
        })
    }

    /// Boot tokens work for `ttl` after their script (`[boot] token_ttl`).
    pub fn with_token_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.token_ttl_ms = ttl.as_millis().min(i64::MAX as u128) as i64;
        self
    }

    fn reserved_names(&self) -> Vec<(MacAddr, String)> {
        self.reserved.lock().expect("reservations lock").clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().expect("inventory lock")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().expect("inventory lock")
    }

    /// A DHCP reservation's hostname is the machine's name: templates see
    /// it (meta-data `local-hostname`) before the machine ever booted.
    pub fn apply_reservations(&self, reservations: &[crate::config::Reservation]) {
        *self.reserved.lock().expect("reservations lock") = reservations
            .iter()
            .filter_map(|r| Some((r.mac, r.hostname.clone()?)))
            .collect();
        let mut state = self.write();
        for r in reservations {
            if let Some(name) = &r.hostname {
                state
                    .machines
                    .entry(r.mac)
                    .or_insert_with(|| Machine::new(r.mac))
                    .hostname = Some(name.clone());
            }
        }
        state.regroup();
    }

    pub fn generation(&self, id: &GenerationId) -> Option<Arc<Generation>> {
        self.read().generations.get(id).cloned()
    }

    pub fn generations(&self) -> Vec<Arc<Generation>> {
        let mut all: Vec<_> = self.read().generations.values().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    pub fn group(&self, name: &str) -> Option<Group> {
        self.read().groups.get(name).cloned()
    }

    pub fn groups(&self) -> Vec<Group> {
        let mut all: Vec<_> = self.read().groups.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    pub fn machine(&self, mac: MacAddr) -> Option<Machine> {
        self.read().machines.get(&mac).cloned()
    }

    /// The clients DHCP knows (see [`crate::clients`]); without them a
    /// boot knows only what its own request says.
    pub fn with_clients(mut self, clients: Clients) -> Self {
        self.clients = clients;
        self
    }

    /// What DHCP last saw of `mac` that a boot request may not say: the
    /// switch port it came through, and its architecture when `req` names
    /// none (a script request without `buildarch` from a machine DHCP
    /// knows as BIOS is an x86 loader, never an installer's slot).
    fn with_dhcp_facts(
        &self,
        mac: MacAddr,
        req: &ScriptRequest,
    ) -> (Option<SwitchPort>, Option<ScriptRequest>) {
        let Some(seen) = self.clients.seen(mac) else {
            return (None, None);
        };
        let port = SwitchPort::new(seen.circuit_id, seen.remote_id);
        let req = match (&req.buildarch, seen.arch.and_then(Cpu::of_firmware)) {
            (None, Some(cpu)) => Some(ScriptRequest {
                buildarch: Some(cpu),
                ..req.clone()
            }),
            _ => None,
        };
        (port, req)
    }

    /// The operator's loader settings for `mac`: the machine's label
    /// `loader` and its group's variable `loader` (`ipxe` or `grub`;
    /// anything else counts as unset).
    pub fn loader_settings(&self, mac: MacAddr) -> LoaderSettings {
        let state = self.read();
        let Some(m) = state.machines.get(&mac) else {
            // A machine not seen yet: the group selectors give it.
            let membership = state.membership_of(&Machine::new(mac));
            return LoaderSettings {
                machine: None,
                group: state.groups.get(membership.group()).and_then(group_loader),
            };
        };
        LoaderSettings {
            machine: m
                .labels
                .get("loader")
                .and_then(|l| l.parse::<Loader>().ok()),
            group: state.groups.get(&m.group).and_then(group_loader),
        }
    }

    /// Serves a script request: registers an unknown machine, decides its
    /// target, and opens a boot. Never waits on SQLite.
    pub fn begin_boot(&self, mac: MacAddr, req: &ScriptRequest) -> BootPlan {
        self.begin_boot_as(mac, req, "ipxe", None, Stage::Netboot)
    }

    /// [`Inventory::begin_boot`] for another loader or client: `firmware`
    /// is recorded for a machine seen for the first time (`grub`, `onie`,
    /// `ztp`); `kind` (a switch, for ONIE and ZTP) is recorded when given;
    /// `stage` says whether an unconfirmed boot before it failed.
    pub fn begin_boot_as(
        &self,
        mac: MacAddr,
        req: &ScriptRequest,
        firmware: &str,
        kind: Option<MachineKind>,
        stage: Stage,
    ) -> BootPlan {
        let now = now_ms();
        let token = new_secret();
        let hash = token_hash(&token);
        let id = self.ids.take(&self.store);
        let (port, with_arch) = self.with_dhcp_facts(mac, req);
        let req = with_arch.as_ref().unwrap_or(req);
        let mut state = self.write();
        let Decision {
            identity,
            fresh,
            machine,
            group,
            target,
            generation: _,
            notes: _,
        } = decide(&state, mac, req, port.as_ref(), kind);
        let inherited = state.admit(&identity, &machine);
        if stage == Stage::CarriesOn {
            state.rollouts.carry_on(mac);
        }
        // Rollouts and the watchdog have their say; the previous boot, if
        // it never confirmed (and this request does not carry it on), is
        // counted as failed first. A member of a shared database only asks
        // (see `shared`): the leader is told and decides.
        let leads = self.leads();
        let (target, fleet) = state.rollouts.boot(
            mac,
            &machine.group,
            machine.last_good.as_ref(),
            target,
            id,
            now,
        );
        if leads {
            self.apply_pointers(&mut state, &fleet.persist.pointers);
        }
        let seen = (!leads).then(|| shared::Seen::Boot {
            mac,
            served: target.clone(),
            id,
            carries_on: stage == Stage::CarriesOn,
        });
        let generation = state.generation_for(&target);
        let boot = Boot {
            id,
            mac,
            generation: generation.as_ref().map(|g| g.id.clone()),
            confirmed: false,
            started_ms: now,
        };
        state.open_boot(hash.clone(), boot, req.ip, now - self.token_ttl_ms);
        drop(state);

        self.record_registration(Registration {
            mac,
            req,
            firmware,
            kind,
            fresh,
            inherited: inherited.as_ref(),
            machine: &machine,
            identity: &identity,
            at_ms: now,
        });
        self.ledger.record(Record::BootStarted(boot_record(
            id,
            mac,
            hash,
            &target,
            generation.as_deref(),
            now,
        )));
        match seen {
            None => self.after_fleet(fleet, false),
            Some(seen) => {
                // The decision's notes are this server's to tell; its
                // rows are the leader's to write.
                for n in fleet.notes {
                    self.ledger.event(n.mac, None, n.step, n.detail, None);
                }
                self.hand_over(seen, now);
            }
        }
        BootPlan {
            boot_id: id,
            token,
            group: group.unwrap_or_else(|| empty_group(&machine.group)),
            machine,
            target,
            generation,
            platform: req.platform.clone(),
            identity,
        }
    }

    /// What a boot request says of its machine, for the ledger: its facts,
    /// what it inherited from the machine it replaces (relay identity), and
    /// the group a selector gave a new machine.
    fn record_registration(&self, r: Registration<'_>) {
        let Registration {
            mac,
            req,
            firmware,
            kind,
            fresh,
            inherited,
            machine,
            identity,
            at_ms,
        } = r;
        self.ledger.record(Record::MachineSeen(MachineFacts {
            mac: Some(mac),
            uuid: req.uuid.clone(),
            serial: req.serial.clone(),
            ip: req.ip,
            firmware: fresh.then(|| firmware.to_string()),
            kind,
            inherited: inherited.map(|m| {
                Box::new(Inherited {
                    group: m.assigned.clone().unwrap_or_else(|| m.group.clone()),
                    assigned: m.assigned.is_some(),
                    labels: serde_json::to_string(&m.labels).expect("labels serialize"),
                    hostname: m.hostname.clone(),
                    pin: m.pin.as_ref().map(|p| (p.stream.clone(), p.number)),
                    operator_kind: m.kind_by_operator.then_some(m.kind),
                })
            }),
            // A new machine a selector claims at once: the database says so
            // too (memory regrouped everything else already).
            computed_group: (fresh && inherited.is_none() && machine.group != DEFAULT_GROUP)
                .then(|| machine.group.clone()),
            at_ms,
            ..MachineFacts::default()
        }));
        if let IdentityMatch::Port { port, replaces } = identity {
            tracing::info!(%mac, %replaces, ?port, "new machine in a known switch port: it replaces the old one");
            self.ledger.event(
                Some(mac),
                req.ip,
                "machine.replaced",
                serde_json::json!({ "replaces": replaces, "port": port, "group": machine.group, "pin": machine.pin }),
                None,
            );
        }
    }

    /// What [`Inventory::begin_boot_as`] would decide for this request,
    /// with nothing registered, opened or recorded (`explain`). `port`: the
    /// relay's switch port; `None`: what DHCP last saw, as a boot uses.
    pub fn preview(
        &self,
        mac: MacAddr,
        req: &ScriptRequest,
        kind: Option<MachineKind>,
        port: Option<SwitchPort>,
        stage: Stage,
    ) -> Decision {
        let (seen_port, with_arch) = self.with_dhcp_facts(mac, req);
        let port = port.or(seen_port);
        let req = with_arch.as_ref().unwrap_or(req);
        let state = self.read();
        let mut d = decide(&state, mac, req, port.as_ref(), kind);
        // Rollouts and the watchdog have their say as at a boot: the same
        // call, on a copy, so nothing they would record happens.
        let mut fleet = state.rollouts.clone();
        if stage == Stage::CarriesOn {
            fleet.carry_on(mac);
        }
        let (target, outcome) = fleet.boot(
            mac,
            &d.machine.group,
            d.machine.last_good.as_ref(),
            d.target.clone(),
            0,
            now_ms(),
        );
        d.generation = state.generation_for(&target);
        d.target = target;
        d.notes = outcome.notes;
        d
    }

    /// The open boot a token belongs to, unless it expired.
    pub fn boot_for_token(&self, token: &str) -> Option<Boot> {
        let state = self.read();
        let boot = state.boots.get(&token_hash(token))?;
        (!self.expired(boot)).then(|| boot.clone())
    }

    /// Whether a boot's token has outlived `[boot] token_ttl`.
    fn expired(&self, boot: &Boot) -> bool {
        now_ms() >= boot.started_ms.saturating_add(self.token_ttl_ms)
    }

    /// The plan of an open boot, by its token (for config fetches): the
    /// machine's facts as they are now, the generation the boot was served.
    /// `None` for an unknown or expired token.
    pub fn plan_for_token(&self, token: &str) -> Option<BootPlan> {
        let state = self.read();
        let boot = state.boots.get(&token_hash(token))?.clone();
        if self.expired(&boot) {
            return None;
        }
        let machine = state
            .machines
            .get(&boot.mac)
            .cloned()
            .unwrap_or_else(|| Machine::new(boot.mac));
        let group = state
            .group_of(&machine)
            .cloned()
            .unwrap_or_else(|| empty_group(&machine.group));
        let generation = boot
            .generation
            .as_ref()
            .and_then(|g| state.generations.get(g).cloned());
        let target = match &generation {
            Some(g) => Target::Boot {
                generation: g.id.clone(),
                source: boot::Source::Group,
            },
            None => Target::Nothing {
                reason: "this boot was served nothing".into(),
            },
        };
        Some(BootPlan {
            boot_id: boot.id,
            token: token.to_string(),
            machine,
            group,
            target,
            generation,
            platform: None,
            identity: IdentityMatch::Mac,
        })
    }

    /// The latest boot opened from `ip`, and the name of the artifact with
    /// this digest in the generation it was served (`vmlinuz`, …).
    pub fn boot_by_ip(
        &self,
        ip: IpAddr,
        digest: &Digest,
    ) -> Option<(i64, MacAddr, Option<String>)> {
        let state = self.read();
        let boot = state.boots.get(state.by_ip.get(&ip)?)?;
        let name = boot
            .generation
            .as_ref()
            .and_then(|g| state.generations.get(g))
            .and_then(|g| {
                g.manifest
                    .artifacts()
                    .find(|a| &a.digest == digest)
                    .map(|a| a.name.clone())
            });
        Some((boot.id, boot.mac, name))
    }

    /// The boot a read of `digest` over NBD from `ip` is for, when
    /// `digest` is its image's root (`true`) or the root's hash tree
    /// (`false`): the latest boot opened from `ip`, else the newest boot of
    /// `mac` (the machine bound to `ip`), in memory or, after a restart of
    /// this server, in the store.
    pub async fn root_reader(
        &self,
        ip: IpAddr,
        mac: Option<MacAddr>,
        digest: &Digest,
    ) -> Option<(i64, MacAddr, bool)> {
        let role = |state: &State, generation: &GenerationId| {
            let m = &state.generations.get(generation)?.manifest;
            if m.rootfs.as_ref().is_some_and(|r| &r.digest == digest) {
                Some(true)
            } else if m
                .rootfs_verity
                .as_ref()
                .is_some_and(|v| &v.hash_tree.digest == digest)
            {
                Some(false)
            } else {
                None
            }
        };
        {
            let state = self.read();
            let by_mac = mac
                .and_then(|m| state.open_by_mac.get(&m))
                .and_then(|open| open.back());
            let found = state
                .by_ip
                .get(&ip)
                .into_iter()
                .chain(by_mac)
                .filter_map(|h| state.boots.get(h))
                .find_map(|b| Some((b.id, b.mac, role(&state, b.generation.as_ref()?)?)));
            if found.is_some() {
                return found;
            }
        }
        let mac = mac?;
        let (id, generation) = self.store.latest_boot_of(mac).await.ok()??;
        let is_root = role(&self.read(), &generation)?;
        Some((id, mac, is_root))
    }

    /// A new token for `mac`'s newest open boot, if that boot serves a
    /// generation `wanted` accepts, committed before it is returned: for a
    /// machine that was handed no token (a unified kernel image's sealed
    /// command line) and whose token this server no longer holds in memory
    /// (it restarted since). The old token was never sent, so replacing it
    /// breaks no promise; a boot row not committed yet is flushed first.
    pub async fn reissue_token(
        &self,
        mac: MacAddr,
        wanted: impl Fn(&crate::images::Manifest) -> bool,
    ) -> Result<Option<String>, InventoryError> {
        let (old, boot) = {
            let state = self.read();
            let newest = state
                .open_by_mac
                .get(&mac)
                .and_then(|open| open.back())
                .and_then(|h| Some((h.clone(), state.boots.get(h)?.clone())));
            let Some((old, boot)) = newest else {
                return Ok(None);
            };
            let serves = boot
                .generation
                .as_ref()
                .and_then(|g| state.generations.get(g))
                .is_some_and(|g| wanted(&g.manifest));
            if boot.confirmed || self.expired(&boot) || !serves {
                return Ok(None);
            }
            (old, boot)
        };
        self.ledger.flush().await;
        let token = new_secret();
        let hash = token_hash(&token);
        let mut tx = self.store.begin().await?;
        if !tx.reissue_token(boot.id, &old, &hash).await? {
            return Ok(None);
        }
        tx.commit().await?;
        self.write().rekey_boot(&old, hash);
        Ok(Some(token))
    }

    /// The booted OS confirms: the generation becomes the machine's current
    /// and last good. Written to SQLite before memory changes.
    pub async fn confirm(&self, token: &str) -> Result<(Boot, GenerationId), InventoryError> {
        self.confirm_with(token, &BTreeMap::new()).await
    }

    /// [`Inventory::confirm`] with the phone-home payload's fields, which a
    /// rollout's health gate may require (`checks=passed`). A late
    /// confirmation of a boot the watchdog already counted as failed still
    /// counts: the machine is up.
    pub async fn confirm_with(
        &self,
        token: &str,
        fields: &BTreeMap<String, String>,
    ) -> Result<(Boot, GenerationId), InventoryError> {
        let hash = token_hash(token);
        let boot = self
            .read()
            .boots
            .get(&hash)
            .cloned()
            .ok_or(InventoryError::UnknownToken)?;
        if boot.confirmed {
            return Err(InventoryError::AlreadyConfirmed(boot.id));
        }
        if self.expired(&boot) {
            return Err(InventoryError::ExpiredToken(boot.id));
        }
        let generation = boot
            .generation
            .clone()
            .ok_or(InventoryError::NothingToConfirm(boot.id))?;
        // The boot row was queued when its script was served: make sure it
        // is committed before updating it.
        self.ledger.flush().await;
        let now = now_ms();
        let mut tx = self.store.begin().await?;
        let secure_boot = fields
            .get("secureboot")
            .and_then(|v| boot::claims::secure_boot(v));
        if !tx
            .confirm_boot(boot.id, boot.mac, &generation, now, secure_boot)
            .await?
        {
            return Err(InventoryError::AlreadyConfirmed(boot.id));
        }
        if !self.leads() {
            // A member: the leader's engine sees it, from the inbox row
            // committed with the confirmation.
            let seen = shared::Seen::Confirmed {
                mac: boot.mac,
                generation: generation.clone(),
                fields: fields.clone(),
            };
            tx.push_fleet_event(&seen.inboxed(&self.server, now))
                .await?;
            tx.commit().await?;
            self.write().confirmed(&hash, boot.mac, &generation);
            return Ok((boot, generation));
        }
        // The watchdog and any rollout that moved the machine see it, in
        // the same transaction, on a copy of the fleet shown only once
        // committed (as `rollouts::fleet_command` does, and for the same
        // reason: if the fleet moved meanwhile, the confirmation is applied
        // to it again and those rows follow through the ledger).
        let (mut next, base) = {
            let state = self.read();
            (state.rollouts.clone(), state.rollouts.rev())
        };
        let fleet = next.confirmed(boot.mac, &generation, fields, now);
        tx.write_fleet_rows(&fleet.persist).await?;
        tx.commit().await?;
        let late = {
            let mut state = self.write();
            let late = self.show_fleet(&mut state, base, next, &[&fleet.persist], |live| {
                vec![live.confirmed(boot.mac, &generation, fields, now).persist]
            });
            state.confirmed(&hash, boot.mac, &generation);
            late
        };
        self.after_fleet(fleet, true);
        self.queue_rows(late);
        Ok((boot, generation))
    }

    /// Records an import: the image (once per digest) and the stream's next
    /// generation number, in one transaction.
    pub async fn add_generation(
        &self,
        stream: &str,
        digest: Digest,
        manifest: Manifest,
        by: Option<String>,
    ) -> Result<Arc<Generation>, InventoryError> {
        let now = now_ms();
        let json = String::from_utf8(manifest.canonical_json()).expect("JSON is UTF-8");
        let mut tx = self.store.begin().await?;
        let digest_text = digest.to_string();
        let next = tx
            .add_generation(
                stream,
                &digest_text,
                manifest.arch,
                &json,
                by.as_deref(),
                now,
            )
            .await?;
        tx.commit().await?;
        let generation = Arc::new(Generation {
            id: GenerationId::new(stream, next),
            digest,
            manifest,
            imported_ms: now,
            imported_by: by,
        });
        self.write()
            .generations
            .insert(generation.id.clone(), generation.clone());
        Ok(generation)
    }

    /// Moves a group's pointer (creating the group if needed), and its
    /// pointer for the generation's architecture, atomically.
    pub async fn set_group_generation(
        &self,
        group: &str,
        id: &GenerationId,
    ) -> Result<Group, InventoryError> {
        let Some(generation) = self.generation(id) else {
            return Err(InventoryError::NoSuchGeneration(id.clone()));
        };
        let arch = generation.manifest.slot();
        let now = now_ms();
        let mut tx = self.store.begin().await?;
        tx.set_group_pointer(group, arch, id, now).await?;
        tx.commit().await?;
        let mut state = self.write();
        let entry = state
            .groups
            .entry(group.to_string())
            .or_insert_with(|| empty_group(group));
        entry.pointer = Some(id.clone());
        entry.by_arch.insert(arch, id.clone());
        Ok(entry.clone())
    }

    /// Waits until everything the boot path has queued is in SQLite, so an
    /// operator reads (and updates) what machines just did. Never called on
    /// the boot path itself.
    pub async fn settle(&self) {
        self.ledger.flush().await;
    }

    /// Pins a machine to a generation (or removes the pin).
    pub async fn set_pin(
        &self,
        mac: MacAddr,
        pin: Option<GenerationId>,
    ) -> Result<(), InventoryError> {
        self.settle().await;
        if let Some(id) = &pin {
            if self.generation(id).is_none() {
                return Err(InventoryError::NoSuchGeneration(id.clone()));
            }
        }
        let mut tx = self.store.begin().await?;
        if !tx.set_machine_pin(mac, pin.as_ref()).await? {
            return Err(InventoryError::NoSuchMachine(mac));
        }
        tx.commit().await?;
        // A machine seen only by DHCP so far is not in memory yet.
        let known = self.read().machines.contains_key(&mac);
        let loaded = if known {
            None
        } else {
            load::machine(&self.store, mac).await?
        };
        let mut state = self.write();
        if let Some(m) = loaded {
            state.machines.entry(mac).or_insert(m);
        }
        state
            .machines
            .entry(mac)
            .or_insert_with(|| Machine::new(mac))
            .pin = pin;
        state.regroup();
        Ok(())
    }

    /// Generations still needed by a group pointer, a pin, or a machine's
    /// current or last good generation: garbage collection keeps these.
    pub fn in_use(&self) -> HashMap<GenerationId, Vec<String>> {
        let state = self.read();
        let mut used: HashMap<GenerationId, Vec<String>> = HashMap::new();
        for g in state.groups.values() {
            let mut held: Vec<&GenerationId> = g.by_arch.values().collect();
            held.extend(&g.pointer);
            held.sort();
            held.dedup();
            for p in held {
                used.entry(p.clone())
                    .or_default()
                    .push(format!("group {}", g.name));
            }
        }
        for m in state.machines.values() {
            for (what, id) in [
                ("pinned by", &m.pin),
                ("current on", &m.current),
                ("last good on", &m.last_good),
            ] {
                if let Some(id) = id {
                    used.entry(id.clone())
                        .or_default()
                        .push(format!("{what} {}", m.mac));
                }
            }
        }
        for (id, rollout) in state.rollouts.held_generations() {
            used.entry(id)
                .or_default()
                .push(format!("rollout {rollout}"));
        }
        used
    }

    /// How many machines run each generation (their current one).
    pub fn running(&self) -> HashMap<GenerationId, usize> {
        let state = self.read();
        let mut running: HashMap<GenerationId, usize> = HashMap::new();
        for id in state.machines.values().filter_map(|m| m.current.as_ref()) {
            *running.entry(id.clone()).or_default() += 1;
        }
        running
    }

    /// Deletes generation rows (garbage collection decided which) and the
    /// images no generation refers to any more; returns the images left.
    pub async fn delete_generations(
        &self,
        ids: &[GenerationId],
    ) -> Result<Vec<Digest>, InventoryError> {
        let mut tx = self.store.begin().await?;
        tx.delete_generations(ids).await?;
        tx.commit().await?;
        let mut state = self.write();
        for id in ids {
            state.generations.remove(id);
        }
        Ok(state.generations.values().map(|g| g.digest).collect())
    }
}

/// A boot request's machine, as [`Inventory::record_registration`] writes it.
struct Registration<'a> {
    mac: MacAddr,
    req: &'a ScriptRequest,
    firmware: &'a str,
    kind: Option<MachineKind>,
    /// Its first boot request.
    fresh: bool,
    /// The machine it replaces in the same switch port, as inherited.
    inherited: Option<&'a Machine>,
    machine: &'a Machine,
    identity: &'a IdentityMatch,
    at_ms: i64,
}

impl crate::boot::loader::SettingsSource for Inventory {
    fn loader_settings(&self, mac: MacAddr) -> LoaderSettings {
        Inventory::loader_settings(self, mac)
    }
}

/// The ledger's record of a boot just opened: what it serves, or why
/// nothing.
fn boot_record(
    id: i64,
    mac: MacAddr,
    token_hash: String,
    target: &Target,
    generation: Option<&crate::fleet::Generation>,
    started_ms: i64,
) -> BootRecord {
    let (state, reason) = match target {
        Target::Boot { .. } => (BootState::Served, None),
        Target::Nothing { reason } => (BootState::Nothing, Some(reason.clone())),
    };
    BootRecord {
        id,
        mac,
        token_hash,
        stream: generation.map(|g| g.id.stream.clone()),
        generation: generation.map(|g| g.id.number),
        image: generation.map(|g| g.digest.to_string()),
        state,
        reason,
        started_ms,
    }
}
