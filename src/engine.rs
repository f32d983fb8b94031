//! The state the ext_proc hot path reads, kept in step with the store: the rule snapshot
//! (swapped atomically, whole) and the cache of decrypted secrets.
//!
//! Invariants:
//! - The snapshot is immutable; readers take an `Arc` of it without a lock and keep it for
//!   one request. Reloads build a new one off to the side and swap it in.
//! - A decrypted value stays in memory at most its secret's `cache_ttl_secs` (0: never cached,
//!   fetched and decrypted for every request): it is never served once expired, and the sweep
//!   task (`evict_expired_secrets`, spawned with the server) drops it at its expiry, whether or
//!   not it is asked for again. An update or delete through this process drops it at once.
//! - One read per key at a time: concurrent misses on one key share a single store read (a
//!   `Flight` in the key's slot). Invalidation removes the slot, flight included, and a flight
//!   caches its result only if its slot still holds it, both under the map's shard lock: a
//!   fetch that raced with an invalidation cannot put the old value back.
//! - A miss waits for the store at most `SECRET_FETCH_DEADLINE`, less than Envoy's message
//!   timeout, so the gateway hears a clear 503 rather than timing out.
//! - Values are `SecretString`s: zeroized when the last reference is dropped.
//! - No lock is held across an `.await` (the reload mutex only serialises reloads, and keeps
//!   the runtimes the periodic safety net deferred).
//! - Changes are deltas: a write answers the `Change` it made (`store::Committed`), and
//!   `applied` turns it into a new snapshot that shares everything the change did not touch,
//!   before the write's answer goes out. Changes announced by other replicas (PostgreSQL
//!   `NOTIFY`, sent in the write's transaction) go through the same `apply`. Concurrent
//!   changes coalesce into one swap. Deltas are idempotent and keyed by id, and deleted ids
//!   are remembered for a while (`Tombstones`), so a deletion that overtakes its creation
//!   never leaves the rule behind.
//! - The first load reads every rule in one consistent transaction and builds on a blocking
//!   thread; later reloads (after a lost notification connection or a failed change, and
//!   periodically as the safety net) compare a digest per runtime with the store's and repair
//!   the runtimes that differ by their ids. Deltas applied meanwhile are applied again to
//!   the result before the swap.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use secrecy::SecretString;
use tokio::sync::{Notify, OnceCell};

use crate::crypto::TokenHash;
use crate::crypto::{Keyring, SealContext};
use crate::metrics::Metrics;
use crate::rules::Rule;
use crate::rules::snapshot::{Snapshot, SnapshotBuilder, SnapshotEdit, TokenEntry, secret_key};
use crate::store::{Change, Committed, Created, Followed, Store, StoreError};

/// How long a secret miss may wait for the store, pool included: less than the 0.5 s message
/// timeout runta's Envoy configurations give ext_proc, so the gateway gets runta's fail-closed
/// 503 naming the rule rather than its own timeout.
pub const SECRET_FETCH_DEADLINE: Duration = Duration::from_millis(400);

/// How long a secret miss waits for a pooled connection (part of the deadline above).
const SECRET_POOL_WAIT: Duration = Duration::from_millis(250);

/// Why a rule's secret could not be had. Never holds the value. Cloned to every request that
/// shared the failed read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SecretError {
    #[error("the secret no longer exists")]
    Missing,
    #[error("the store is unavailable: {0}")]
    Store(Arc<StoreError>),
    #[error("the secret does not decrypt: {0}")]
    Decrypt(Arc<crate::crypto::CryptoError>),
}

/// A key's place in the cache: its value until `expires`, or the read in progress.
enum Slot {
    Ready {
        value: Arc<SecretString>,
        expires: tokio::time::Instant,
    },
    Loading(Arc<Flight>),
}

/// One store read that every concurrent miss on a key waits for. If the request running it is
/// dropped (Envoy gave up), the next waiter runs it (`OnceCell::get_or_init`).
#[derive(Default)]
struct Flight {
    result: OnceCell<Result<Loaded, SecretError>>,
}

struct Loaded {
    value: Arc<SecretString>,
    ttl: Duration,
}

/// The snapshot and the secret cache, shared by the ext_proc service and the admin API.
pub struct Engine {
    store: Store,
    keyring: Arc<Keyring>,
    metrics: Arc<Metrics>,
    /// The store with the ext_proc path's short pool wait, for secret reads.
    secret_store: Store,
    snapshot: ArcSwap<Snapshot>,
    secrets: DashMap<Arc<str>, Slot, foldhash::fast::RandomState>,
    /// The earliest expiry the sweep task will wake for (`None`: it sleeps until told).
    next_sweep: Mutex<Option<tokio::time::Instant>>,
    /// Wakes the sweep task for a value that expires before `next_sweep`.
    sweep_wake: Notify,
    /// Changes waiting to be applied; whoever applies takes them all (`apply`).
    queue: Mutex<Queue>,
    /// Held while changes are applied and while a full reload swaps its result in: every
    /// snapshot swap happens under it, one at a time.
    applying: tokio::sync::Mutex<Applying>,
    /// One full reload at a time; it keeps the runtimes the last ones deferred, and how many
    /// times in a row.
    full_reload: tokio::sync::Mutex<std::collections::HashMap<RuntimeKey, u32>>,
    /// Asks the periodic reload to run now: a change could not be applied, or the change feed
    /// (re)connected and must catch up.
    resync: Notify,
    /// Counts snapshot swaps: services that keep state derived from the rules (SDS) watch it.
    generation: tokio::sync::watch::Sender<u64>,
    /// Announces that a secret's value may have changed (`Some(key)`), or every secret's
    /// (`None`): the xDS streams that pushed a value to a sidecar read it again.
    secret_changes: tokio::sync::broadcast::Sender<Option<Arc<str>>>,
    /// Compiles batches and frees replaced snapshots (`SnapshotThread`).
    snapshot_thread: SnapshotThread,
}

/// Changes queued for the next application, and the ticket of the last one queued.
#[derive(Default)]
struct Queue {
    changes: Vec<Change>,
    queued: u64,
}

/// What the applier keeps between applications.
#[derive(Default)]
struct Applying {
    /// The ticket of the last change applied.
    applied: u64,
    tombstones: Tombstones,
    /// While a full reload reads and builds: every delta applied meanwhile, to be applied
    /// again on the reloaded snapshot (deltas are idempotent).
    journal: Option<Vec<Delta>>,
}

/// How long a deleted rule's id is remembered: a creation applied later than this after the
/// deletion (a task starved for minutes) would bring the rule back until the next full reload.
const TOMBSTONE_TTL: Duration = Duration::from_secs(600);

/// Ids of rules deleted recently: a deletion can overtake its creation (the create's
/// application and the delete's race), and the creation must then not bring the rule back.
#[derive(Default)]
struct Tombstones(std::collections::HashMap<Box<str>, Instant>);

impl Tombstones {
    fn contains(&self, id: &str) -> bool {
        self.0.contains_key(id)
    }

    fn bury(&mut self, ids: &[String]) {
        let now = Instant::now();
        for id in ids {
            self.0.insert(id.as_str().into(), now);
        }
    }

    fn prune(&mut self) {
        self.0.retain(|_, at| at.elapsed() < TOMBSTONE_TTL);
    }
}

/// From how many rules a batch is compiled while the store writes it (`Engine::prepare_rules`),
/// and the snapshot a change of as many rules replaced is freed off the request's thread.
const PREPARE_FROM: usize = 64;

/// Work given to the snapshot thread.
type Job = Box<dyn FnOnce() + Send>;

/// One long-lived thread that compiles batches into snapshots and frees the snapshots changes
/// replaced. One thread, not the blocking pool: what it allocates it mostly frees itself, and
/// the allocator's per-thread heaps reuse that memory. Spread over the pool's threads (which
/// come and go), freed nodes stayed stranded in other threads' heaps: a 1M-rule batch load left
/// the server 50-100 MiB more resident. Started only by `Engine::start_snapshot_thread` (the
/// server calls it on a thread of its control plane, whose scheduling priority it inherits);
/// until then, and should it fail to start, its work runs in place. It ends with the engine.
#[derive(Default)]
struct SnapshotThread(std::sync::OnceLock<std::sync::mpsc::Sender<Job>>);

impl SnapshotThread {
    /// Starts the thread from the calling one (once; later calls do nothing).
    fn start(&self) {
        if self.0.get().is_some() {
            return;
        }
        let (sender, jobs) = std::sync::mpsc::channel::<Job>();
        let started = std::thread::Builder::new()
            .name("runta-snapshots".into())
            .spawn(move || {
                for job in jobs {
                    // A job that panics (a bug) is logged by the panic hook; the thread goes
                    // on with the next.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            });
        match started {
            Ok(_) => {
                // A caller that lost a race to another drops its sender here: its thread
                // ends at once.
                let _ = self.0.set(sender);
            }
            Err(err) => {
                tracing::error!(error = %err, "starting the snapshot thread failed; its work runs in place")
            }
        }
    }

    fn sender(&self) -> Option<&std::sync::mpsc::Sender<Job>> {
        self.0.get()
    }

    /// Runs `job` on the snapshot thread (here, while that thread is not there).
    fn run(&self, job: impl FnOnce() + Send + 'static) {
        run_on(self.sender(), Box::new(job));
    }
}

fn run_on(sender: Option<&std::sync::mpsc::Sender<Job>>, job: Job) {
    match sender {
        Some(sender) => {
            if let Err(returned) = sender.send(job) {
                (returned.0)();
            }
        }
        None => job(),
    }
}

/// A batch of rules being compiled into the snapshot of its time (`Engine::prepare_rules`).
/// Dropped unused (the write failed, or the change was applied otherwise), the compiled
/// snapshot is freed on the snapshot thread: it may hold many nodes.
pub struct PreparedRules {
    compiled: Option<tokio::sync::oneshot::Receiver<Prepared>>,
    frees: Option<std::sync::mpsc::Sender<Job>>,
}

impl PreparedRules {
    /// The compiled snapshot (`None`: compiling it failed). Dropped while it waits, `self`
    /// still hands what is compiled to the snapshot thread.
    async fn take(&mut self) -> Option<Prepared> {
        let compiled = self.compiled.as_mut()?;
        let prepared = compiled
            .await
            .map_err(|_| tracing::error!("compiling a batch of rules failed"))
            .ok();
        self.compiled = None;
        prepared
    }
}

impl Drop for PreparedRules {
    fn drop(&mut self) {
        if let Some(mut compiled) = self.compiled.take() {
            // Not compiled yet: the snapshot thread drops it when it cannot hand it over.
            compiled.close();
            if let Ok(prepared) = compiled.try_recv() {
                run_on(self.frees.as_ref(), Box::new(move || drop(prepared)));
            }
        }
    }
}

struct Prepared {
    /// The snapshot the rules were added to.
    base: Arc<Snapshot>,
    rules: Vec<Rule>,
    /// `base` with `rules` added.
    snapshot: Snapshot,
}

/// A change resolved into what it does to the snapshot, with the store reads it needed done:
/// idempotent, so applying one twice (a full reload's journal) changes nothing more.
#[derive(Debug)]
enum Delta {
    Add(Vec<Rule>),
    Remove {
        tenant_id: String,
        runtime: String,
        ids: Vec<String>,
    },
    Replace {
        tenant_id: String,
        runtime: String,
        rules: Vec<Rule>,
    },
    Tokens(Vec<(TokenHash, TokenEntry)>),
    AllTokens(Vec<(TokenHash, TokenEntry)>),
    Tenants(Vec<(String, String)>),
}

impl Delta {
    /// The runtimes whose rules this delta changes.
    fn runtimes(&self) -> Vec<(&str, &str)> {
        match self {
            Self::Add(rules) => rules
                .iter()
                .map(|rule| (rule.tenant_id.as_str(), rule.spec.runtime.as_str()))
                .collect(),
            Self::Remove {
                tenant_id, runtime, ..
            }
            | Self::Replace {
                tenant_id, runtime, ..
            } => vec![(tenant_id.as_str(), runtime.as_str())],
            Self::Tokens(_) | Self::AllTokens(_) | Self::Tenants(_) => Vec::new(),
        }
    }

    /// How many rules this delta adds, removes or puts in place.
    fn rules(&self) -> usize {
        match self {
            Self::Add(rules) | Self::Replace { rules, .. } => rules.len(),
            Self::Remove { ids, .. } => ids.len(),
            Self::Tokens(_) | Self::AllTokens(_) | Self::Tenants(_) => 0,
        }
    }

    fn apply(&self, edit: &mut SnapshotEdit, tombstones: &Tombstones) {
        match self {
            Self::Add(rules) => {
                if rules.iter().any(|r| tombstones.contains(&r.id)) {
                    let alive: Vec<Rule> = rules
                        .iter()
                        .filter(|r| !tombstones.contains(&r.id))
                        .cloned()
                        .collect();
                    edit.add_rules(&alive);
                } else {
                    edit.add_rules(rules);
                }
            }
            Self::Remove {
                tenant_id,
                runtime,
                ids,
            } => edit.remove_rules(tenant_id, runtime, ids),
            Self::Replace {
                tenant_id,
                runtime,
                rules,
            } => edit.replace_runtime(tenant_id, runtime, rules),
            Self::Tokens(tokens) => edit.upsert_tokens(tokens.iter().cloned()),
            Self::AllTokens(tokens) => edit.set_tokens(tokens.iter().cloned()),
            Self::Tenants(tenants) => edit.set_tenants(tenants.iter().cloned()),
        }
    }
}

/// What a full reload read: a new snapshot (the first load), or the runtimes whose rules
/// differ from the store's, with the identities.
enum Read {
    Built(Snapshot),
    Compared(Compared),
}

/// What the safety net found and read: the identities, and what the differing runtimes
/// lacked or held too many of (`repaired`: those runtimes).
struct Compared {
    deltas: Vec<Delta>,
    differing: usize,
    deferred: usize,
    repaired: Vec<RuntimeKey>,
}

/// A runtime, by tenant id and name.
type RuntimeKey = (String, String);

/// How many safety nets in a row may leave a differing runtime alone because changes to it
/// were being applied meanwhile (the difference is then most likely those changes in flight):
/// the next one repairs it whatever happens, so a runtime that changes all the time is still
/// checked within four intervals (what the store lost behind runta's back, a deleted rule
/// included, waits at most that long), and a bulk load over every runtime is compared id by
/// id every fourth time, not every time. With one deferral, a side-by-side run of the 1M
/// bulk load compared every runtime by id during the load: its reloads then ran for seconds
/// while the journal held every batch applied meanwhile (626 MiB resident after the load,
/// 396 MiB with three).
const MAX_DEFERRALS: u32 = 3;

fn blocking_failed(err: tokio::task::JoinError) -> StoreError {
    StoreError::Unavailable(format!("reading the rules into the snapshot failed: {err}"))
}

/// Rules per page of a full reload's read.
const RELOAD_PAGE: i64 = 10_000;

impl Engine {
    /// An engine with an empty snapshot; call `reload` before serving.
    pub fn new(store: Store, keyring: Arc<Keyring>, metrics: Arc<Metrics>) -> Self {
        Self {
            secret_store: store.with_pool_wait(SECRET_POOL_WAIT),
            store,
            keyring,
            metrics,
            snapshot: ArcSwap::from_pointee(Snapshot::empty()),
            secrets: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            next_sweep: Mutex::new(None),
            sweep_wake: Notify::new(),
            queue: Mutex::default(),
            applying: tokio::sync::Mutex::default(),
            full_reload: tokio::sync::Mutex::default(),
            resync: Notify::new(),
            generation: tokio::sync::watch::Sender::new(0),
            secret_changes: tokio::sync::broadcast::Sender::new(1024),
            snapshot_thread: SnapshotThread::default(),
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Changes whenever a new snapshot is swapped in.
    pub fn watch_snapshots(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Hears every secret invalidation: `Some(key)` for one secret (`tenant_id/name`), `None`
    /// for all. A receiver that lags behind must treat every secret as changed.
    pub fn watch_secrets(&self) -> tokio::sync::broadcast::Receiver<Option<Arc<str>>> {
        self.secret_changes.subscribe()
    }

    /// Applies a write's change and answers its result: when it returns, the next decision
    /// on this replica sees the change. The only way to a write's result.
    pub async fn applied<T>(&self, committed: Committed<T>) -> T {
        self.applied_with(committed, None).await
    }

    /// The same, for a write whose rules were compiled while it was written
    /// (`prepare_rules`): the compiled snapshot is swapped in if nothing changed meanwhile,
    /// else the change is applied as any other.
    pub async fn applied_with<T>(
        &self,
        committed: Committed<T>,
        prepared: Option<PreparedRules>,
    ) -> T {
        let (value, change) = committed.into_parts();
        self.apply_with(change, prepared).await;
        value
    }

    /// Starts compiling rules about to be created into the current snapshot, on the snapshot
    /// thread, so that this work overlaps the store's write of them (a batch spends about as
    /// long in each). `None` for fewer than `PREPARE_FROM` rules: compiling a few costs
    /// less than handing them to another thread.
    pub fn prepare_rules(&self, rows: &[crate::store::RuleRow]) -> Option<PreparedRules> {
        if rows.len() < PREPARE_FROM {
            return None;
        }
        let base = self.snapshot();
        let rows = rows.to_vec();
        let (compiled, receiver) = tokio::sync::oneshot::channel();
        self.snapshot_thread.run(move || {
            let rules = valid_rules(&rows);
            let mut edit = base.edit();
            edit.add_rules(&rules);
            // Not wanted any more (the write failed): dropped here, on this thread.
            let _ = compiled.send(Prepared {
                snapshot: edit.finish(),
                base,
                rules,
            });
        });
        Some(PreparedRules {
            compiled: Some(receiver),
            frees: self.snapshot_thread.sender().cloned(),
        })
    }

    /// Starts the snapshot thread (`SnapshotThread`) from the calling thread, whose scheduling
    /// priority it inherits: the server calls it on its control plane before anything else
    /// runs there. Until then, its work runs in place.
    pub fn start_snapshot_thread(&self) {
        self.snapshot_thread.start();
    }

    /// Applies a change, made here or announced by another replica. Concurrent changes
    /// coalesce: whoever gets to apply takes every change queued by then and swaps in one
    /// snapshot for all of them; the others find theirs applied. A change that cannot be
    /// applied (the store failed a read it needs) is logged and makes the periodic reload run
    /// now.
    pub async fn apply(&self, change: Change) {
        self.apply_with(change, None).await;
    }

    async fn apply_with(&self, change: Change, prepared: Option<PreparedRules>) {
        match change {
            Change::Rules => {
                if let Err(err) = self.reload().await {
                    tracing::error!(error = %err, "reloading every rule failed; the periodic reload will retry");
                }
                return;
            }
            Change::Secret { tenant_id, name } => {
                self.invalidate_secret(&tenant_id, &name);
                return;
            }
            _ => {}
        }
        let ticket = {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.changes.push(change);
            queue.queued += 1;
            queue.queued
        };
        // A batch's compiled snapshot is awaited here, queued but before the applier's lock,
        // so that no other change waits for it (should this future be dropped meanwhile, the
        // change is queued: the next applier applies it).
        let mut prepared = prepared;
        let compiled = match &mut prepared {
            Some(prepared) => prepared.take().await,
            None => None,
        };
        let mut applying = self.applying.lock().await;
        if applying.applied >= ticket {
            self.discard(compiled);
            return;
        }
        let (changes, last) = {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            (std::mem::take(&mut queue.changes), queue.queued)
        };
        // Should this future be dropped halfway (its request gone), the changes it took would
        // be lost: the periodic reload then runs at once.
        let unfinished = Unfinished(Some(&self.resync));
        // The one change taken must be this one: an applier that took changes and was dropped
        // before applying them leaves a queue that may hold one change of another.
        let only_this = last == ticket && changes.len() == 1;
        match compiled {
            Some(compiled) if only_this => {
                self.apply_prepared(&mut applying, changes, compiled).await
            }
            compiled => {
                self.discard(compiled);
                self.apply_all(&mut applying, changes).await
            }
        }
        applying.applied = last;
        unfinished.done();
    }

    /// Lets an unused compiled snapshot go, on the snapshot thread.
    fn discard(&self, compiled: Option<Prepared>) {
        if let Some(compiled) = compiled {
            self.snapshot_thread.run(move || drop(compiled));
        }
    }

    /// Swaps in a snapshot compiled for the one change taken (`changes`) when it is exactly
    /// what applying that change makes: it was compiled on the very snapshot in place now,
    /// and none of its rules was deleted meanwhile. Else applies the change as usual.
    async fn apply_prepared(
        &self,
        applying: &mut Applying,
        changes: Vec<Change>,
        prepared: Prepared,
    ) {
        let usable = Arc::ptr_eq(&self.snapshot.load(), &prepared.base)
            && !prepared
                .rules
                .iter()
                .any(|rule| applying.tombstones.contains(&rule.id));
        if !usable {
            self.discard(Some(prepared));
            return self.apply_all(applying, changes).await;
        }
        let Prepared {
            snapshot,
            base,
            rules,
        } = prepared;
        drop(base);
        self.install(applying, snapshot, vec![Delta::Add(rules)], changes.len());
    }

    async fn apply_all(&self, applying: &mut Applying, changes: Vec<Change>) {
        let started = Instant::now();
        let count = changes.len();
        let mut deltas = Vec::with_capacity(count);
        for change in changes {
            if let Err(err) = self.resolve(&change, &mut deltas).await {
                self.reload_failed();
                tracing::error!(error = %err, ?change, "applying a change failed; reloading everything");
                self.resync.notify_one();
            }
        }
        if deltas.is_empty() {
            return;
        }
        let mut edit = self.snapshot().edit();
        for delta in &deltas {
            if let Delta::Remove { ids, .. } = delta {
                applying.tombstones.bury(ids);
            }
            delta.apply(&mut edit, &applying.tombstones);
        }
        self.install(applying, edit.finish(), deltas, count);
        tracing::debug!(
            changes = count,
            micros = started.elapsed().as_micros() as u64,
            "changes applied"
        );
    }

    /// Puts the snapshot that `deltas` made in place (and the deltas in the journal of a full
    /// reload under way), counting `changes` applied.
    fn install(
        &self,
        applying: &mut Applying,
        snapshot: Snapshot,
        deltas: Vec<Delta>,
        changes: usize,
    ) {
        let rules: usize = deltas.iter().map(Delta::rules).sum();
        let deltas = match &mut applying.journal {
            Some(journal) => {
                journal.extend(deltas);
                Vec::new()
            }
            None => deltas,
        };
        let old = self.swap(Arc::new(snapshot));
        // A change of many rules (a batch) leaves the old snapshot the last owner of as many
        // replaced map nodes, and its rows to free: that is done on the snapshot thread, not
        // before the writer has its answer. A small change frees its few nodes here.
        if rules >= PREPARE_FROM {
            self.snapshot_thread.run(move || drop((old, deltas)));
        } else {
            drop((old, deltas));
        }
        self.metrics.changes_applied.inc_by(changes as u64);
    }

    /// What a change does to the snapshot, read from the store where the change does not
    /// carry it. Reads happen under `applying`, after the change committed: whatever order
    /// changes arrive in, a read answers the store's state from then on.
    async fn resolve(&self, change: &Change, deltas: &mut Vec<Delta>) -> Result<(), StoreError> {
        match change {
            Change::RulesCreated { tenant_id, rules } => {
                let rows = match rules {
                    Created::Rows(rows) => valid_rules(rows),
                    Created::Ids(ids) => {
                        valid_rules(&self.store.rules_by_ids(tenant_id, ids).await?)
                    }
                };
                deltas.push(Delta::Add(rows));
            }
            Change::RulesDeleted {
                tenant_id,
                runtime,
                ids,
            } => deltas.push(Delta::Remove {
                tenant_id: tenant_id.clone(),
                runtime: runtime.clone(),
                ids: ids.clone(),
            }),
            Change::Runtimes(runtimes) => {
                for (tenant_id, runtime) in runtimes {
                    let rows = self.store.runtime_rules(tenant_id, runtime).await?;
                    deltas.push(Delta::Replace {
                        tenant_id: tenant_id.clone(),
                        runtime: runtime.clone(),
                        rules: valid_rules(&rows),
                    });
                }
            }
            Change::Tokens(ids) => {
                let rows = self.store.runtime_tokens_by_ids(ids).await?;
                deltas.push(Delta::Tokens(token_entries(rows).collect()));
            }
            Change::Tenants => deltas.push(Delta::Tenants(self.tenants().await?)),
            Change::Identities => {
                deltas.push(Delta::Tenants(self.tenants().await?));
                let tokens = self.store.all_runtime_tokens().await?;
                deltas.push(Delta::AllTokens(token_entries(tokens).collect()));
            }
            // Applied before queueing.
            Change::Rules | Change::Secret { .. } => {}
        }
        Ok(())
    }

    async fn tenants(&self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(self
            .store
            .all_tenants()
            .await?
            .into_iter()
            .map(|t| (t.id, t.name))
            .collect())
    }

    /// Brings the snapshot in line with everything in the store: the start-up load, and the
    /// safety net after a lost notification connection, a change that could not be applied
    /// or a request to reload everything (the periodic one is `reload_periodic`). The first
    /// load reads every rule in one consistent transaction, page by page, and builds the
    /// snapshot on a blocking thread. Later ones read, in one consistent transaction, the
    /// tenants, the runtime tokens and a digest per runtime of its rules
    /// (`Store::read_digests`: one row per runtime, not every rule), and repair the runtimes
    /// whose digest differs from the snapshot's (rules missing, rules the store no longer
    /// has). Changes go on being applied meanwhile; deltas applied since the reload began are
    /// applied again on top of what it read before the swap (deltas are idempotent), so
    /// nothing it read is older than a change applied, no change is lost, and no decision
    /// ever sees a half-made snapshot.
    pub async fn reload(&self) -> Result<(), StoreError> {
        self.reload_deferring(false).await
    }

    /// The periodic safety net: `reload`, except that a differing runtime that changes were
    /// being applied to while it compared is left to the next one (`MAX_DEFERRALS`).
    async fn reload_periodic(&self) -> Result<(), StoreError> {
        self.reload_deferring(true).await
    }

    async fn reload_deferring(&self, defer_busy: bool) -> Result<(), StoreError> {
        let mut deferrals = self.full_reload.lock().await;
        let started = Instant::now();
        self.applying.lock().await.journal = Some(Vec::new());
        let first_load = self.snapshot().rule_count() == 0;
        let read = if first_load {
            self.build_from_store().await.map(Read::Built)
        } else {
            self.compare_with_store(defer_busy.then_some(&mut *deferrals))
                .await
                .map(Read::Compared)
        };
        let mut applying = self.applying.lock().await;
        let journal = applying.journal.take().unwrap_or_default();
        let read = match read {
            Ok(read) => read,
            Err(err) => {
                self.reload_failed();
                return Err(err);
            }
        };
        let (mut edit, differing, deferred, healed) = match read {
            Read::Built(snapshot) => (snapshot.edit(), 0, 0, 0),
            Read::Compared(compared) => {
                let current = self.snapshot();
                // A runtime changed while it was compared or read differs too: only one that
                // nothing changed meanwhile was missed.
                let busy = touched_runtimes(&journal);
                let healed = compared
                    .repaired
                    .iter()
                    .filter(|(tenant_id, runtime)| {
                        !busy.contains(&(tenant_id.as_str(), runtime.as_str()))
                    })
                    .count();
                let mut edit = current.edit();
                for delta in &compared.deltas {
                    // What the store no longer has stays gone: the journal replayed below may
                    // hold its creation.
                    if let Delta::Remove { ids, .. } = delta {
                        applying.tombstones.bury(ids);
                    }
                    delta.apply(&mut edit, &applying.tombstones);
                }
                (edit, compared.differing, compared.deferred, healed)
            }
        };
        for delta in &journal {
            delta.apply(&mut edit, &applying.tombstones);
        }
        applying.tombstones.prune();
        let snapshot = Arc::new(edit.finish());
        self.metrics.mark_snapshot_built();
        self.metrics.reloads.with_label_values(&["ok"]).inc();
        if healed > 0 {
            tracing::warn!(
                runtimes = healed,
                "the reload found runtimes whose rules no notification had brought; repaired them"
            );
        }
        tracing::debug!(
            rules = snapshot.rule_count(),
            differing,
            deferred,
            replayed = journal.len(),
            micros = started.elapsed().as_micros() as u64,
            "rule snapshot reloaded"
        );
        let old = self.swap(snapshot);
        drop(applying);
        // The old snapshot may be the last reference to many rules: freed off the async
        // workers too.
        self.snapshot_thread.run(move || drop(old));
        Ok(())
    }

    /// Reads the store (one consistent read) into a new snapshot, built on a blocking thread
    /// as the pages arrive.
    async fn build_from_store(&self) -> Result<Snapshot, StoreError> {
        let (pages, mut arriving) = tokio::sync::mpsc::channel::<Vec<crate::store::RuleRow>>(2);
        let building = tokio::task::spawn_blocking(move || {
            let mut builder = SnapshotBuilder::default();
            while let Some(rows) = arriving.blocking_recv() {
                builder.add(&valid_rules(&rows));
            }
            builder
        });
        let read = self.store.read_everything(RELOAD_PAGE, pages).await;
        let builder = building.await.map_err(blocking_failed)?;
        let (tenants, tokens) = read?;
        tokio::task::spawn_blocking(move || {
            builder.finish(
                tenants.into_iter().map(|t| (t.id, t.name)),
                token_entries(tokens),
            )
        })
        .await
        .map_err(blocking_failed)
    }

    /// Reads the store's digests (one consistent read), compares them with the current
    /// snapshot on a blocking thread (it hashes every rule id the snapshot holds), and repairs
    /// the runtimes that differ. With `deferrals` (the periodic safety net), a differing
    /// runtime that a change was applied to since the reload began is left for the next one,
    /// `MAX_DEFERRALS` times in a row at most; `deferrals` is left holding those.
    async fn compare_with_store(
        &self,
        deferrals: Option<&mut std::collections::HashMap<RuntimeKey, u32>>,
    ) -> Result<Compared, StoreError> {
        let ((tenants, tokens), digests) = self.store.read_digests().await?;
        let snapshot = self.snapshot();
        let mut differing =
            tokio::task::spawn_blocking(move || snapshot.runtimes_differing(&digests))
                .await
                .map_err(blocking_failed)?;
        let found = differing.len();
        if let Some(deferrals) = deferrals {
            let busy: std::collections::HashSet<RuntimeKey> = {
                let applying = self.applying.lock().await;
                let journal = applying.journal.as_deref().unwrap_or_default();
                touched_runtimes(journal)
                    .into_iter()
                    .map(|(tenant_id, runtime)| (tenant_id.to_owned(), runtime.to_owned()))
                    .collect()
            };
            defer_busy(&mut differing, &busy, deferrals);
        }
        let deferred = found - differing.len();
        let mut deltas = vec![
            Delta::Tenants(tenants.into_iter().map(|t| (t.id, t.name)).collect()),
            Delta::AllTokens(token_entries(tokens).collect()),
        ];
        // Each differing runtime's ids, then the rules it lacks by id: never a second copy of
        // a runtime's rules (during a bulk load every runtime differs). Read after the reload
        // began: the deltas applied since are applied again on top. Each runtime's ids are
        // compared with the snapshot in place just before they were read: older than the ids
        // (changes are applied after they commit), so an id it holds that they lack was
        // deleted; and recent, so that during a bulk load the rules it lacks are the few
        // committed meanwhile, not every batch since the first runtime was read.
        let mut repaired = Vec::new();
        for (tenant_id, runtime) in differing {
            let snapshot = self.snapshot();
            let ids = self.store.runtime_rule_ids(&tenant_id, &runtime).await?;
            let (lacking, extra) = snapshot.runtime_difference(&tenant_id, &runtime, &ids);
            let lacking = if lacking.is_empty() {
                Vec::new()
            } else {
                valid_rules(&self.store.rules_by_ids(&tenant_id, &lacking).await?)
            };
            if lacking.is_empty() && extra.is_empty() {
                continue;
            }
            if !extra.is_empty() {
                deltas.push(Delta::Remove {
                    tenant_id: tenant_id.clone(),
                    runtime: runtime.clone(),
                    ids: extra,
                });
            }
            if !lacking.is_empty() {
                deltas.push(Delta::Add(lacking));
            }
            repaired.push((tenant_id, runtime));
        }
        Ok(Compared {
            deltas,
            differing: found,
            deferred,
            repaired,
        })
    }

    /// Swaps a new snapshot in (every change and reload ends here, under `applying`), counts
    /// it, tells those who watch snapshots, and hands the old one back.
    fn swap(&self, snapshot: Arc<Snapshot>) -> Arc<Snapshot> {
        self.metrics.rules_loaded.set(snapshot.rule_count() as i64);
        let old = self.snapshot.swap(snapshot);
        self.generation.send_modify(|g| *g += 1);
        old
    }

    /// Counts a reload or change that the store failed.
    fn reload_failed(&self) {
        self.metrics.reloads.with_label_values(&["error"]).inc();
        self.metrics
            .store_errors
            .with_label_values(&["reload"])
            .inc();
    }

    /// Drops a cached secret value, or the read in progress (its result will not be cached).
    pub fn invalidate_secret(&self, tenant_id: &str, name: &str) {
        let key = secret_key(tenant_id, name);
        self.secrets.remove(key.as_ref());
        // Nobody listening is fine.
        let _ = self.secret_changes.send(Some(key));
    }

    /// Follows other replicas' announcements (PostgreSQL) until `shutdown`; after every
    /// (re)connection it drops its cached values and has the periodic reload catch up at once,
    /// since announcements may have been missed. The catch-up runs beside the feed, not in
    /// it (on `reload_periodically`'s task, which must run): at a million rules it reads for
    /// seconds, and announcements arriving meanwhile are applied as they come (a reload
    /// replays what was applied during its read).
    pub async fn follow_changes(
        self: Arc<Self>,
        database_url: SecretString,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let mut feed = self.store.change_feed(database_url);
        tokio::pin!(shutdown);
        loop {
            let followed = tokio::select! {
                followed = feed.next() => followed,
                () = &mut shutdown => break,
            };
            match followed {
                Followed::Connected => {
                    self.invalidate_all_secrets();
                    // Its read starts after LISTEN: what it misses, the feed brings.
                    self.resync.notify_one();
                    tracing::debug!("following change notifications");
                    self.metrics.change_listener_connected.set(1);
                }
                Followed::Lost(err) => {
                    tracing::warn!(error = %err, "change notification connection failed; reconnecting");
                    self.metrics.change_listener_connected.set(0);
                }
                Followed::Change(change) => self.apply(change).await,
            }
        }
        self.metrics.change_listener_connected.set(0);
    }

    /// Drops every cached value (after a key rotation, or on request), and every read in
    /// progress.
    pub fn invalidate_all_secrets(&self) {
        self.secrets.clear();
        let _ = self.secret_changes.send(None);
    }

    /// How many decrypted values are in memory now.
    pub fn cached_secrets(&self) -> usize {
        self.secrets
            .iter()
            .filter(|slot| matches!(slot.value(), Slot::Ready { .. }))
            .count()
    }

    /// The decrypted value of a tenant's secret: from the cache while fresh, else from the
    /// store (and cached for its TTL). Concurrent misses on one key share one store read.
    pub async fn secret(
        &self,
        key: &Arc<str>,
        tenant_id: &str,
        name: &str,
    ) -> Result<Arc<SecretString>, SecretError> {
        self.secret_and_caching(key, tenant_id, name)
            .await
            .map(|(value, _)| value)
    }

    /// The same, and whether the value may be kept (`cache_ttl_secs` > 0): a value that may
    /// not be kept in runta's memory may not be pushed into a sidecar's either.
    pub async fn secret_and_caching(
        &self,
        key: &Arc<str>,
        tenant_id: &str,
        name: &str,
    ) -> Result<(Arc<SecretString>, bool), SecretError> {
        // The hot path: a shared lock on one shard.
        if let Some(slot) = self.secrets.get(key.as_ref())
            && let Slot::Ready { value, expires } = slot.value()
            && *expires > tokio::time::Instant::now()
        {
            self.metrics.hot.cache_hits.inc();
            // Only values with a TTL are cached.
            return Ok((value.clone(), true));
        }
        let flight = match self.secrets.entry(key.clone()) {
            Entry::Occupied(mut slot) => match slot.get() {
                Slot::Ready { value, expires } if *expires > tokio::time::Instant::now() => {
                    self.metrics.hot.cache_hits.inc();
                    return Ok((value.clone(), true));
                }
                Slot::Loading(flight) => {
                    self.metrics.hot.cache_coalesced.inc();
                    flight.clone()
                }
                Slot::Ready { .. } => {
                    let flight = Arc::new(Flight::default());
                    slot.insert(Slot::Loading(flight.clone()));
                    flight
                }
            },
            Entry::Vacant(slot) => {
                let flight = Arc::new(Flight::default());
                slot.insert(Slot::Loading(flight.clone()));
                flight
            }
        };
        let read = flight.result.get_or_init(|| self.load(tenant_id, name));
        let result = match tokio::time::timeout(SECRET_FETCH_DEADLINE, read).await {
            Ok(result) => result
                .as_ref()
                .map(|l| (l.value.clone(), l.ttl))
                .map_err(Clone::clone),
            Err(_) => {
                self.metrics
                    .store_errors
                    .with_label_values(&["secret"])
                    .inc();
                Err(SecretError::Store(Arc::new(StoreError::Unavailable(
                    format!("no answer within {} ms", SECRET_FETCH_DEADLINE.as_millis()),
                ))))
            }
        };
        // Settle the slot, if it still holds this flight (an invalidation may have removed it,
        // or another waiter settled it): the value for its TTL, or nothing.
        if let Entry::Occupied(mut slot) = self.secrets.entry(key.clone())
            && matches!(slot.get(), Slot::Loading(f) if Arc::ptr_eq(f, &flight))
        {
            match &result {
                Ok((value, ttl)) if !ttl.is_zero() => {
                    let expires = tokio::time::Instant::now() + *ttl;
                    slot.insert(Slot::Ready {
                        value: value.clone(),
                        expires,
                    });
                    self.schedule_sweep(expires);
                }
                _ => {
                    slot.remove();
                }
            }
        }
        result.map(|(value, ttl)| (value, !ttl.is_zero()))
    }

    /// Reads and decrypts one secret: the store read that a flight shares.
    async fn load(&self, tenant_id: &str, name: &str) -> Result<Loaded, SecretError> {
        self.metrics.hot.cache_misses.inc();
        let row = match self.secret_store.get_secret(tenant_id, name).await {
            Ok(Some(row)) => row,
            Ok(None) => return Err(SecretError::Missing),
            Err(err) => {
                self.metrics
                    .store_errors
                    .with_label_values(&["secret"])
                    .inc();
                return Err(SecretError::Store(Arc::new(err)));
            }
        };
        let ctx = SealContext {
            tenant_id: &row.tenant_id,
            secret_id: &row.id,
            version: row.version,
        };
        let value = self
            .keyring
            .open_string(&row.sealed(), ctx)
            .map_err(|e| SecretError::Decrypt(Arc::new(e)))?;
        Ok(Loaded {
            value: Arc::new(value),
            ttl: Duration::from_secs(row.cache_ttl_secs.max(0) as u64),
        })
    }

    /// Makes sure the sweep task wakes by `expires`.
    fn schedule_sweep(&self, expires: tokio::time::Instant) {
        let mut next = self.next_sweep.lock().unwrap_or_else(|e| e.into_inner());
        if next.is_none_or(|next| expires < next) {
            *next = Some(expires);
            self.sweep_wake.notify_one();
        }
    }

    /// Drops every expired value; answers the earliest expiry left.
    fn sweep(&self) -> Option<tokio::time::Instant> {
        // Values cached from here on wake the task again (`schedule_sweep`).
        *self.next_sweep.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let now = tokio::time::Instant::now();
        let mut earliest: Option<tokio::time::Instant> = None;
        self.secrets.retain(|_, slot| match slot {
            Slot::Ready { expires, .. } if *expires <= now => false,
            Slot::Ready { expires, .. } => {
                earliest = Some(earliest.map_or(*expires, |e| e.min(*expires)));
                true
            }
            Slot::Loading(_) => true,
        });
        let mut next = self.next_sweep.lock().unwrap_or_else(|e| e.into_inner());
        *next = match (*next, earliest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        *next
    }

    /// Drops each cached value when it expires, asked for again or not, until `shutdown`:
    /// sleeps until the earliest expiry (or until a value that expires earlier is cached).
    pub async fn evict_expired_secrets(
        self: Arc<Self>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            let next = self.sweep();
            let until_next = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = until_next => {}
                () = self.sweep_wake.notified() => {}
                () = &mut shutdown => return,
            }
        }
    }

    /// Keeps the snapshot fresh: a full reload every `interval` (the safety net behind
    /// change notifications), and at once when a change could not be applied or the change
    /// feed (re)connected, until `shutdown` resolves.
    pub async fn reload_periodically(
        self: Arc<Self>,
        interval: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    if let Err(err) = self.reload_periodic().await {
                        tracing::warn!(error = %err, "periodic rule reload failed; serving the previous snapshot");
                    }
                }
                () = self.resync.notified() => {
                    if let Err(err) = self.reload().await {
                        tracing::warn!(error = %err, "rule reload asked for at once (a failed change, a reconnected change feed) failed; serving the previous snapshot");
                    }
                    ticker.reset();
                }
                () = &mut shutdown => return,
            }
        }
    }
}

/// Leaves out of `differing` the runtimes changes were applied to meanwhile (`busy`), unless
/// they were left out `MAX_DEFERRALS` times in a row already; `deferrals` ends up holding the
/// runtimes left out now, with how many times in a row (a runtime repaired, or no longer
/// differing, starts again from none).
fn defer_busy(
    differing: &mut Vec<RuntimeKey>,
    busy: &std::collections::HashSet<RuntimeKey>,
    deferrals: &mut std::collections::HashMap<RuntimeKey, u32>,
) {
    let mut still = std::collections::HashMap::new();
    differing.retain(|key| {
        if !busy.contains(key) {
            return true;
        }
        let times = deferrals.get(key).copied().unwrap_or(0) + 1;
        if times > MAX_DEFERRALS {
            return true;
        }
        still.insert(key.clone(), times);
        false
    });
    *deferrals = still;
}

/// The runtimes these deltas change.
fn touched_runtimes(deltas: &[Delta]) -> std::collections::HashSet<(&str, &str)> {
    deltas.iter().flat_map(Delta::runtimes).collect()
}

/// The stored rules that still validate (one that does not is logged and not applied).
fn valid_rules(rows: &[crate::store::RuleRow]) -> Vec<crate::rules::Rule> {
    rows.iter()
        .filter_map(|row| {
            row.to_rule()
                .map_err(|err| tracing::error!(rule = %row.id, error = %err, "a stored rule no longer validates; it is not applied"))
                .ok()
        })
        .collect()
}

/// The snapshot's token entries from the stored rows.
fn token_entries(
    tokens: Vec<(crate::store::RuntimeTokenRow, Vec<u8>)>,
) -> impl Iterator<Item = (TokenHash, TokenEntry)> {
    tokens.into_iter().filter_map(|(row, hash)| {
        let hash = TokenHash::try_from(hash.as_slice()).ok()?;
        Some((
            hash,
            TokenEntry {
                tenant_id: row.tenant_id,
                runtime: row.runtime,
                revoked: row.revoked_at.is_some(),
            },
        ))
    })
}

/// Wakes the periodic reload unless `done` was called: a change application that did not
/// finish (its future dropped) is made up for by a full reload.
struct Unfinished<'a>(Option<&'a Notify>);

impl Unfinished<'_> {
    fn done(mut self) {
        self.0 = None;
    }
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if let Some(resync) = self.0 {
            resync.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{Delta, MAX_DEFERRALS, Tombstones, defer_busy};
    use crate::rules::snapshot::Snapshot;
    use crate::rules::{DraftFields, Rule, RuleDraft, RuleSpec, TargetFields};

    #[test]
    fn tombstones_remember_deleted_ids() {
        let mut tombstones = Tombstones::default();
        tombstones.bury(&["rule_a".to_owned()]);
        assert!(tombstones.contains("rule_a"));
        assert!(!tombstones.contains("rule_b"));
        tombstones.prune();
        assert!(
            tombstones.contains("rule_a"),
            "pruned only after TOMBSTONE_TTL"
        );
    }

    fn rule(n: usize, runtime: usize) -> Rule {
        let host = format!("h{}.example.com", n % 3);
        let draft = RuleDraft {
            runtime: ["a", "b"][runtime],
            host: &host,
            path: None,
            credential: "key",
            target: TargetFields {
                header: Some("x-key".into()),
                param: None,
            },
            value: None,
        };
        Rule {
            id: format!("rule_{n:04}"),
            tenant_id: "ten_a".into(),
            spec: RuleSpec::from_draft(&draft, &DraftFields::SINGLE).unwrap(),
        }
    }

    fn ids(snapshot: &Snapshot) -> Vec<String> {
        let mut ids: Vec<String> = ["a", "b"]
            .iter()
            .filter_map(|rt| snapshot.runtime_rules("ten_a", rt))
            .flat_map(|r| r.rules().map(|r| r.id.to_string()))
            .collect();
        ids.sort();
        ids
    }

    proptest! {
        /// Creations and deletions applied in any order (a deletion may be applied before the
        /// creation it deletes, as when the create's application is slower than the delete's
        /// whole request), in any grouping: the rules left are exactly those not deleted.
        #[test]
        fn any_application_order_leaves_exactly_the_live_rules(
            rules in proptest::collection::vec((0..2usize, any::<bool>()), 1..30),
            order in any::<proptest::sample::Index>(),
            groups in proptest::collection::vec(1..4usize, 1..10),
        ) {
            let mut deltas = Vec::new();
            let mut live = Vec::new();
            for (n, (runtime, deleted)) in rules.into_iter().enumerate() {
                let created = rule(n, runtime);
                if deleted {
                    deltas.push(Delta::Remove {
                        tenant_id: "ten_a".into(),
                        runtime: created.spec.runtime.clone(),
                        ids: vec![created.id.clone()],
                    });
                } else {
                    live.push(created.id.clone());
                }
                deltas.push(Delta::Add(vec![created]));
            }
            // A rotation of the application order, so deletions land before and after.
            let len = deltas.len();
            deltas.rotate_left(order.index(len));
            let mut tombstones = Tombstones::default();
            let mut snapshot = Snapshot::empty();
            let mut pending = deltas.into_iter().peekable();
            let mut sizes = groups.into_iter().cycle();
            while pending.peek().is_some() {
                let mut edit = snapshot.edit();
                for delta in pending.by_ref().take(sizes.next().unwrap()) {
                    if let Delta::Remove { ids, .. } = &delta {
                        tombstones.bury(ids);
                    }
                    delta.apply(&mut edit, &tombstones);
                }
                snapshot = edit.finish();
            }
            live.sort();
            prop_assert_eq!(ids(&snapshot), live.clone());
            prop_assert_eq!(snapshot.rule_count(), live.len());
        }
    }

    /// The periodic safety net leaves a differing runtime that is being changed to the next
    /// one, at most `MAX_DEFERRALS` times in a row, and re-reads the quiet ones at once.
    #[test]
    fn busy_runtimes_are_deferred_a_bounded_number_of_times() {
        let key = |runtime: &str| ("ten_a".to_owned(), runtime.to_owned());
        let busy: std::collections::HashSet<_> = [key("busy"), key("calm-later")].into();
        let mut deferrals = std::collections::HashMap::new();
        for round in 1..=MAX_DEFERRALS {
            let mut differing = vec![key("quiet"), key("busy")];
            defer_busy(&mut differing, &busy, &mut deferrals);
            assert_eq!(
                differing,
                [key("quiet")],
                "round {round}: busy left for later"
            );
            assert_eq!(deferrals.get(&key("busy")), Some(&round));
        }
        let mut differing = vec![key("quiet"), key("busy")];
        defer_busy(&mut differing, &busy, &mut deferrals);
        assert_eq!(
            differing,
            [key("quiet"), key("busy")],
            "re-read after {MAX_DEFERRALS} deferrals"
        );
        assert!(deferrals.is_empty(), "and counted from none again");
        // A deferred runtime that no longer differs is forgotten.
        let mut differing = vec![key("calm-later")];
        defer_busy(&mut differing, &busy, &mut deferrals);
        assert!(differing.is_empty());
        let mut differing = vec![];
        defer_busy(&mut differing, &busy, &mut deferrals);
        assert!(deferrals.is_empty());
    }
}
