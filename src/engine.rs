//! The state the ext_proc hot path reads, kept in step with the store: the rule snapshot
//! (swapped atomically, whole) and the cache of decrypted secrets.
//!
//! Invariants:
//! - The snapshot is immutable; readers take an `Arc` of it without a lock and keep it for
//!   one request. Reloads build a new one off to the side and swap it in.
//! - A decrypted value stays in memory at most its secret's `cache_ttl_secs` (0: never cached,
//!   fetched and decrypted for every request); an update or delete through this process drops
//!   it at once, and a fetch that raced with that invalidation does not put the old value back.
//! - Values are `SecretString`s: zeroized when the last reference is dropped.
//! - No lock is held across an `.await` (the reload mutex only serialises reloads).
//! - Several replicas on one PostgreSQL database: every change made through one is announced
//!   with `NOTIFY` (`store::CHANGES_CHANNEL`, payload `<replica> rules` or
//!   `<replica> secret <tenant id>/<name>`), and each replica follows the channel on a
//!   dedicated connection; after a reconnect it reloads everything and drops its cached
//!   values, since notifications may have been missed. The periodic reload is the safety net.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use secrecy::SecretString;

use crate::crypto::TokenHash;
use crate::crypto::{Keyring, SealContext};
use crate::metrics::Metrics;
use crate::rules::snapshot::{Snapshot, TokenEntry, secret_key};
use crate::store::{Store, StoreError};

/// Why a rule's secret could not be had. Never holds the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the secret no longer exists")]
    Missing,
    #[error("the store is unavailable: {0}")]
    Store(StoreError),
    #[error("the secret does not decrypt: {0}")]
    Decrypt(crate::crypto::CryptoError),
}

struct CachedSecret {
    value: Arc<SecretString>,
    expires: Instant,
}

/// The snapshot and the secret cache, shared by the ext_proc service and the admin API.
pub struct Engine {
    store: Store,
    keyring: Arc<Keyring>,
    metrics: Arc<Metrics>,
    snapshot: ArcSwap<Snapshot>,
    secrets: DashMap<Arc<str>, CachedSecret, foldhash::fast::RandomState>,
    /// Bumped by every invalidation; a fetch caches its result only if it did not move.
    generation: AtomicU64,
    reload_lock: tokio::sync::Mutex<()>,
    /// This process's id in change notifications (its own are ignored when they come back).
    replica: String,
}

impl Engine {
    /// An engine with an empty snapshot; call `reload` before serving.
    pub fn new(store: Store, keyring: Arc<Keyring>, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            keyring,
            metrics,
            snapshot: ArcSwap::from_pointee(Snapshot::empty()),
            secrets: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            generation: AtomicU64::new(0),
            reload_lock: tokio::sync::Mutex::new(()),
            replica: crate::crypto::new_id("replica"),
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
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
            Err(err) => {
                self.metrics.reloads.with_label_values(&["error"]).inc();
                self.metrics
                    .store_errors
                    .with_label_values(&["reload"])
                    .inc();
                return Err(err);
            }
        };
        let rules: Vec<_> = rules
            .iter()
            .filter_map(|row| {
                row.to_rule()
                    .map_err(|err| tracing::error!(rule = %row.id, error = %err, "a stored rule no longer validates; it is not applied"))
                    .ok()
            })
            .collect();
        let tokens = tokens.into_iter().filter_map(|(row, hash)| {
            let hash = TokenHash::try_from(hash.as_slice()).ok()?;
            Some((
                hash,
                TokenEntry {
                    tenant_id: row.tenant_id,
                    runtime: row.runtime,
                    revoked: row.revoked_at.is_some(),
                },
            ))
        });
        let snapshot = Snapshot::build(tenants.into_iter().map(|t| (t.id, t.name)), &rules, tokens);
        self.metrics.rules_loaded.set(snapshot.rule_count() as i64);
        self.metrics.reloads.with_label_values(&["ok"]).inc();
        self.metrics.mark_snapshot_built();
        tracing::debug!(
            rules = snapshot.rule_count(),
            micros = started.elapsed().as_micros() as u64,
            "rule snapshot rebuilt"
        );
        self.snapshot.store(Arc::new(snapshot));
        Ok(())
    }

    /// After a change of rules, tokens or tenants through the admin API: the next request
    /// must see it, here and (announced) on the other replicas. A failed reload is logged; the
    /// periodic reload retries.
    pub async fn changed(&self) {
        if let Err(err) = self.reload().await {
            tracing::error!(error = %err, "reloading rules after a change failed; the periodic reload will retry");
        }
        self.announce(&format!("{} rules", self.replica)).await;
    }

    /// After a secret's value changed or it was deleted: drop the cached value here and on
    /// the other replicas.
    pub async fn secret_changed(&self, tenant_id: &str, name: &str) {
        self.invalidate_secret(tenant_id, name);
        self.announce(&format!("{} secret {tenant_id}/{name}", self.replica))
            .await;
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

    /// Drops a cached secret value.
    pub fn invalidate_secret(&self, tenant_id: &str, name: &str) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.secrets.remove(secret_key(tenant_id, name).as_ref());
    }

    /// Applies a change another replica announced.
    async fn apply_announcement(&self, payload: &str) {
        let mut words = payload.splitn(3, ' ');
        let (Some(replica), Some(kind)) = (words.next(), words.next()) else {
            return;
        };
        if replica == self.replica {
            return;
        }
        match (kind, words.next()) {
            ("rules", _) => {
                if let Err(err) = self.reload().await {
                    tracing::warn!(error = %err, "reload after another replica's change failed");
                }
            }
            ("secret", Some(key)) => {
                self.generation.fetch_add(1, Ordering::SeqCst);
                self.secrets.remove(key);
            }
            _ => tracing::debug!(%payload, "ignoring an unknown change notification"),
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
                    () = &mut shutdown => return,
                }
            }
        }
    }

    /// Drops every cached value (after a key rotation, or on request).
    pub fn invalidate_all_secrets(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.secrets.clear();
    }

    /// The decrypted value of a tenant's secret: from the cache while fresh, else from the
    /// store (and cached for its TTL).
    pub async fn secret(
        &self,
        key: &Arc<str>,
        tenant_id: &str,
        name: &str,
    ) -> Result<Arc<SecretString>, SecretError> {
        if let Some(entry) = self.secrets.get(key.as_ref()) {
            if entry.expires > Instant::now() {
                self.metrics.hot.cache_hits.inc();
                return Ok(entry.value.clone());
            }
            drop(entry);
            self.secrets
                .remove_if(key.as_ref(), |_, e| e.expires <= Instant::now());
        }
        self.metrics.hot.cache_misses.inc();
        let generation = self.generation.load(Ordering::SeqCst);
        let row = match self.store.get_secret(tenant_id, name).await {
            Ok(Some(row)) => row,
            Ok(None) => return Err(SecretError::Missing),
            Err(err) => {
                self.metrics
                    .store_errors
                    .with_label_values(&["secret"])
                    .inc();
                return Err(SecretError::Store(err));
            }
        };
        let ctx = SealContext {
            tenant_id: &row.tenant_id,
            secret_id: &row.id,
            version: row.version,
        };
        let value = Arc::new(
            self.keyring
                .open_string(&row.sealed(), ctx)
                .map_err(SecretError::Decrypt)?,
        );
        if row.cache_ttl_secs > 0 && self.generation.load(Ordering::SeqCst) == generation {
            self.secrets.insert(
                key.clone(),
                CachedSecret {
                    value: value.clone(),
                    expires: Instant::now() + Duration::from_secs(row.cache_ttl_secs as u64),
                },
            );
        }
        Ok(value)
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
