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
//! - No lock is held across an `.await` (the reload mutex only serialises reloads).
//! - Several replicas on one PostgreSQL database: every change made through one is announced
//!   with `NOTIFY` (`store::CHANGES_CHANNEL`, a [`Change`] encoded by `Change::encode`), and
//!   each replica follows the channel on a
//!   dedicated connection; after a reconnect it reloads everything and drops its cached
//!   values, since notifications may have been missed. The periodic reload is the safety net.

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
use crate::rules::snapshot::{Snapshot, TokenEntry, secret_key};
use crate::store::{Store, StoreError};

/// What a change through the admin API touched, announced to the other replicas and applied
/// here: the one type local writes and notifications go through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Rules, anywhere: the snapshot is rebuilt from the store.
    Rules,
    /// The rules of these runtimes (tenant id, runtime): only they are re-read, and the new
    /// snapshot shares every other runtime's rules.
    Runtimes(Vec<(String, String)>),
    /// Runtime tokens or tenants: only they are re-read; the rule index is kept as it is.
    Identities,
    /// A secret's value changed or it was deleted: its cached value is dropped.
    Secret { tenant_id: String, name: String },
}

impl Change {
    /// At most this many runtimes in one `Runtimes` change (a NOTIFY payload holds 8,000
    /// bytes); more become a `Rules` change.
    pub const MAX_RUNTIMES: usize = 64;

    /// The change of these runtimes' rules: `Runtimes`, or `Rules` past `MAX_RUNTIMES`.
    pub fn runtimes(mut runtimes: Vec<(String, String)>) -> Self {
        runtimes.sort();
        runtimes.dedup();
        if runtimes.len() > Self::MAX_RUNTIMES {
            Self::Rules
        } else {
            Self::Runtimes(runtimes)
        }
    }

    /// The notification payload: `<replica> rules`, `<replica> rules identities`, `<replica>
    /// rules runtimes <tenant id>/<runtime>...` (both read by replicas that predate them as a
    /// rules change, so a rolling upgrade misses nothing) or `<replica> secret <tenant
    /// id>/<name>`. Tenant ids and runtime names hold no space or `/`.
    pub fn encode(&self, replica: &str) -> String {
        match self {
            Self::Rules => format!("{replica} rules"),
            Self::Runtimes(runtimes) => {
                let mut payload = format!("{replica} rules runtimes");
                for (tenant_id, runtime) in runtimes {
                    payload.push(' ');
                    payload.push_str(tenant_id);
                    payload.push('/');
                    payload.push_str(runtime);
                }
                payload
            }
            Self::Identities => format!("{replica} rules identities"),
            Self::Secret { tenant_id, name } => format!("{replica} secret {tenant_id}/{name}"),
        }
    }

    /// A payload's replica and change; `None` for a payload this version does not know.
    pub fn decode(payload: &str) -> Option<(&str, Self)> {
        let mut words = payload.splitn(3, ' ');
        let replica = words.next()?;
        let change = match (words.next()?, words.next()) {
            ("rules", None) => Self::Rules,
            ("rules", Some("identities")) => Self::Identities,
            ("rules", Some(rest)) if rest.starts_with("runtimes") => {
                let runtimes = rest
                    .split(' ')
                    .skip(1)
                    .map(|pair| {
                        let (tenant_id, runtime) = pair.split_once('/')?;
                        Some((tenant_id.to_owned(), runtime.to_owned()))
                    })
                    .collect::<Option<Vec<_>>>()?;
                Self::Runtimes(runtimes)
            }
            ("secret", Some(key)) => {
                let (tenant_id, name) = key.split_once('/')?;
                Self::Secret {
                    tenant_id: tenant_id.to_owned(),
                    name: name.to_owned(),
                }
            }
            _ => return None,
        };
        Some((replica, change))
    }
}

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
    reload_lock: tokio::sync::Mutex<()>,
    /// Counts snapshot swaps: services that keep state derived from the rules (SDS) watch it.
    generation: tokio::sync::watch::Sender<u64>,
    /// This process's id in change notifications (its own are ignored when they come back).
    replica: String,
}

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
            reload_lock: tokio::sync::Mutex::new(()),
            generation: tokio::sync::watch::Sender::new(0),
            replica: crate::crypto::new_id("replica"),
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

    /// Rebuilds the snapshot from the store and swaps it in.
    pub async fn reload(&self) -> Result<(), StoreError> {
        let _serialised = self.reload_lock.lock().await;
        let started = Instant::now();
        let loaded = async {
            let tenants = self.store.all_tenants().await?;
            let rules = self.store.all_rules().await?;
            let tokens = self.store.all_runtime_tokens().await?;
            Ok::<_, StoreError>((tenants, rules, tokens))
        }
        .await;
        let (tenants, rules, tokens) = match loaded {
            Ok(loaded) => loaded,
            Err(err) => return Err(self.reload_failed(err)),
        };
        let rules = valid_rules(&rules);
        let snapshot = Snapshot::build(
            tenants.into_iter().map(|t| (t.id, t.name)),
            &rules,
            token_entries(tokens),
        );
        self.metrics.mark_snapshot_built();
        tracing::debug!(
            rules = snapshot.rule_count(),
            micros = started.elapsed().as_micros() as u64,
            "rule snapshot rebuilt"
        );
        self.swap(Arc::new(snapshot));
        Ok(())
    }

    /// Re-reads tenants and runtime tokens and swaps in a snapshot that keeps the current
    /// rule index: what a token or tenant change costs, whatever the number of rules.
    pub async fn reload_identities(&self) -> Result<(), StoreError> {
        let _serialised = self.reload_lock.lock().await;
        let started = Instant::now();
        let loaded = async {
            let tenants = self.store.all_tenants().await?;
            let tokens = self.store.all_runtime_tokens().await?;
            Ok::<_, StoreError>((tenants, tokens))
        }
        .await;
        let (tenants, tokens) = match loaded {
            Ok(loaded) => loaded,
            Err(err) => return Err(self.reload_failed(err)),
        };
        let snapshot = self.snapshot().with_identities(
            tenants.into_iter().map(|t| (t.id, t.name)),
            token_entries(tokens),
        );
        tracing::debug!(
            micros = started.elapsed().as_micros() as u64,
            "identities reloaded (rules kept)"
        );
        self.swap(Arc::new(snapshot));
        Ok(())
    }

    /// Re-reads these runtimes' rules and swaps in a snapshot in which only they changed: what
    /// a rule change costs is what its runtime's rules cost. Reading the store after the
    /// change committed, under the reload lock every snapshot swap takes, makes the result the
    /// store's latest state for these runtimes, whatever order changes and notifications
    /// arrive in.
    pub async fn reload_runtimes(&self, runtimes: &[(String, String)]) -> Result<(), StoreError> {
        let _serialised = self.reload_lock.lock().await;
        let started = Instant::now();
        let mut snapshot = self.snapshot();
        for (tenant_id, runtime) in runtimes {
            let rows = match self.store.runtime_rules(tenant_id, runtime).await {
                Ok(rows) => rows,
                Err(err) => return Err(self.reload_failed(err)),
            };
            let rules = valid_rules(&rows);
            snapshot = Arc::new(snapshot.with_runtime(tenant_id, runtime, &rules));
        }
        tracing::debug!(
            runtimes = runtimes.len(),
            micros = started.elapsed().as_micros() as u64,
            "runtime rules reloaded"
        );
        self.swap(snapshot);
        Ok(())
    }

    /// Swaps a new snapshot in (every kind of reload ends here, under the reload lock),
    /// counts it, and tells those who watch snapshots.
    fn swap(&self, snapshot: Arc<Snapshot>) {
        self.metrics.rules_loaded.set(snapshot.rule_count() as i64);
        self.metrics.reloads.with_label_values(&["ok"]).inc();
        self.snapshot.store(snapshot);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Counts a reload (of any kind) that the store failed, and hands its error back.
    fn reload_failed(&self, err: StoreError) -> StoreError {
        self.metrics.reloads.with_label_values(&["error"]).inc();
        self.metrics
            .store_errors
            .with_label_values(&["reload"])
            .inc();
        err
    }

    /// After a change through the admin API: applied here so that the next request sees it,
    /// and announced to the other replicas. A failed reload is logged; the periodic reload
    /// retries.
    pub async fn changed(&self, change: Change) {
        self.apply(&change).await;
        self.announce(&change.encode(&self.replica)).await;
    }

    /// Applies a change, made here or announced by another replica.
    async fn apply(&self, change: &Change) {
        let reloaded = match change {
            Change::Rules => self.reload().await,
            Change::Runtimes(runtimes) => self.reload_runtimes(runtimes).await,
            Change::Identities => self.reload_identities().await,
            Change::Secret { tenant_id, name } => {
                self.invalidate_secret(tenant_id, name);
                Ok(())
            }
        };
        if let Err(err) = reloaded {
            tracing::error!(error = %err, ?change, "applying a change failed; the periodic reload will retry");
        }
    }

    async fn announce(&self, payload: &str) {
        if let Err(err) = self.store.notify_change(payload).await {
            self.metrics
                .store_errors
                .with_label_values(&["notify"])
                .inc();
            tracing::warn!(error = %err, "could not announce a change to other replicas; they catch up at their periodic reload");
        }
    }

    /// Drops a cached secret value, or the read in progress (its result will not be cached).
    pub fn invalidate_secret(&self, tenant_id: &str, name: &str) {
        self.secrets.remove(secret_key(tenant_id, name).as_ref());
    }

    /// Applies a change another replica announced.
    async fn apply_announcement(&self, payload: &str) {
        match Change::decode(payload) {
            Some((replica, _)) if replica == self.replica => {}
            Some((_, change)) => self.apply(&change).await,
            None => tracing::debug!(%payload, "ignoring an unknown change notification"),
        }
    }

    /// Follows other replicas' announcements on a dedicated PostgreSQL connection until
    /// `shutdown`, reconnecting (and catching up) after failures.
    pub async fn follow_changes(
        self: Arc<Self>,
        database_url: SecretString,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        use diesel_async::RunQueryDsl;
        use futures_util::StreamExt;
        use secrecy::ExposeSecret;
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_millis(250);
        loop {
            let connected = async {
                let mut conn = crate::store::tls::establish(database_url.expose_secret())
                    .await
                    .map_err(|e| e.to_string())?;
                diesel::sql_query(format!("LISTEN {}", crate::store::CHANGES_CHANNEL))
                    .execute(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(conn)
            };
            let mut conn = tokio::select! {
                result = connected => match result {
                    Ok(conn) => conn,
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot follow change notifications; retrying");
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            () = &mut shutdown => return,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                        continue;
                    }
                },
                () = &mut shutdown => return,
            };
            backoff = Duration::from_millis(250);
            // Whatever was announced while not listening is lost: catch up.
            self.invalidate_all_secrets();
            if let Err(err) = self.reload().await {
                tracing::warn!(error = %err, "reload after (re)connecting to change notifications failed");
            }
            tracing::debug!("following change notifications");
            self.metrics.change_listener_connected.set(1);
            let mut notifications = std::pin::pin!(conn.notifications_stream());
            loop {
                tokio::select! {
                    next = notifications.next() => match next {
                        Some(Ok(notification)) => self.apply_announcement(&notification.payload).await,
                        Some(Err(err)) => {
                            tracing::warn!(error = %err, "change notification connection failed; reconnecting");
                            break;
                        }
                        None => break,
                    },
                    () = &mut shutdown => {
                        self.metrics.change_listener_connected.set(0);
                        return;
                    }
                }
            }
            self.metrics.change_listener_connected.set(0);
        }
    }

    /// Drops every cached value (after a key rotation, or on request), and every read in
    /// progress.
    pub fn invalidate_all_secrets(&self) {
        self.secrets.clear();
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
        // The hot path: a shared lock on one shard.
        if let Some(slot) = self.secrets.get(key.as_ref())
            && let Slot::Ready { value, expires } = slot.value()
            && *expires > tokio::time::Instant::now()
        {
            self.metrics.hot.cache_hits.inc();
            return Ok(value.clone());
        }
        let flight = match self.secrets.entry(key.clone()) {
            Entry::Occupied(mut slot) => match slot.get() {
                Slot::Ready { value, expires } if *expires > tokio::time::Instant::now() => {
                    self.metrics.hot.cache_hits.inc();
                    return Ok(value.clone());
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
        result.map(|(value, _)| value)
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
    /// change notifications), until `shutdown` resolves.
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
                    if let Err(err) = self.reload().await {
                        tracing::warn!(error = %err, "periodic rule reload failed; serving the previous snapshot");
                    }
                }
                () = &mut shutdown => return,
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::Change;

    #[test]
    fn changes_encode_and_decode_in_one_place() {
        for change in [
            Change::Rules,
            Change::Runtimes(vec![
                ("ten_1".into(), "worker".into()),
                ("ten_2".into(), "a.b-c_d".into()),
            ]),
            Change::Identities,
            Change::Secret {
                tenant_id: "ten_1".into(),
                name: "openai-api-key".into(),
            },
        ] {
            let payload = change.encode("replica_a");
            assert_eq!(Change::decode(&payload), Some(("replica_a", change)));
        }
        // Identities and runtimes changes read as rules changes to a replica that predates them.
        assert!(Change::Identities.encode("r").starts_with("r rules "));
        assert!(
            Change::runtimes(vec![("t".into(), "w".into())])
                .encode("r")
                .starts_with("r rules ")
        );
        // Too many runtimes for one notification: a rules change.
        let many = (0..=Change::MAX_RUNTIMES)
            .map(|i| ("t".to_owned(), format!("w{i}")))
            .collect();
        assert_eq!(Change::runtimes(many), Change::Rules);
        for unknown in ["", "r", "r tokens", "r secret no-slash"] {
            assert_eq!(Change::decode(unknown), None, "{unknown:?}");
        }
    }
}
