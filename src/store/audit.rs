//! The audit trail: one event per admin change, written by the store function that makes the
//! change, inside its transaction (`audited_write!`), so a change is never stored without its
//! event nor an event without its change.
//!
//! Events are append-only and hash-chained: each has a `seq` (1, 2, 3, … with no gap: it is
//! the chain head's plus one, read in the same write transaction) and a `hash`, SHA-256 over a
//! canonical encoding of its fields and the previous event's hash (`prev_hash`). A one-row
//! `audit_chain` table holds the last seq and hash; every append reads it first (on PostgreSQL
//! `FOR UPDATE`, which serialises appends across replicas; SQLite's immediate transaction
//! already does) and moves it. `verify_audit_chain` recomputes the chain: an event edited,
//! removed from the middle or from the end is reported with the first seq that does not hold.
//!
//! An event names who (`actor`), what (`action`), on what (`target_*`), for which request, and
//! the outcome; it has no field for a secret value or a token, and none is ever put into one.
//! Only changes that commit are recorded (a refused or failed change leaves no event), and
//! once committed an event is also handed to the store's sink, if it has one (the JSON-lines
//! stream of `audit.stream`).

use std::sync::Arc;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use sha2::{Digest, Sha256};

use super::schema::{audit_chain, audit_events};
use super::{Paged, Store, StoreError, with_conn};

/// The version tag that starts every event's hashed encoding (then a byte 0).
const AUDIT_HASH_TAG: &str = "runta-audit-v1";

/// The `prev_hash` of the first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Who made a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A tenant's API key, by id (`key_…`).
    ApiKey(String),
    /// The operator token.
    Operator,
    /// A server-side command run against the database (`runta keys rotate`).
    Cli,
    /// The server itself: the embedded default's `default` tenant and its quickstart key.
    Server,
}

impl Actor {
    pub fn as_str(&self) -> &str {
        match self {
            Self::ApiKey(id) => id,
            Self::Operator => "operator",
            Self::Cli => "cli",
            Self::Server => "server",
        }
    }
}

macro_rules! spelled {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in its stored spelling.
            pub const ALL: &[&str] = &[$($text),+];

            /// The stored (and JSON) spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }

            /// The value a stored spelling names.
            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $($text => Some(Self::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

spelled! {
    /// What a change did.
    AuditAction {
        TenantCreate => "tenant.create",
        ApiKeyCreate => "api_key.create",
        ApiKeyDelete => "api_key.delete",
        SecretCreate => "secret.create",
        /// A new value (and possibly new metadata with it).
        SecretUpdateValue => "secret.update_value",
        /// Display name or cache TTL only.
        SecretUpdateMetadata => "secret.update_metadata",
        SecretDelete => "secret.delete",
        RuleCreate => "rule.create",
        RuleBatchCreate => "rule.batch_create",
        RuleDelete => "rule.delete",
        RuntimeTokenCreate => "runtime_token.create",
        RuntimeTokenRevoke => "runtime_token.revoke",
        /// Every secret re-sealed under the active key (`runta keys rotate`).
        KeysRotate => "keys.rotate",
    }
}

spelled! {
    /// The kind of thing a change was made to.
    TargetKind {
        Tenant => "tenant",
        ApiKey => "api_key",
        Secret => "secret",
        Rule => "rule",
        RuntimeToken => "runtime_token",
        /// An encryption key of the keyring, by id.
        EncryptionKey => "encryption_key",
    }
}

spelled! {
    /// How a recorded change ended.
    Outcome {
        Ok => "ok",
        /// Part of it failed (a key rotation that could not re-seal some secrets).
        Failed => "failed",
    }
}

/// What a change was made to: its kind, id and name where it has them (a rule's name is its
/// runtime's; a batch's id lists its rules' ids, comma-separated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditTarget {
    pub kind: TargetKind,
    pub id: Option<String>,
    pub name: Option<String>,
}

impl AuditTarget {
    pub fn new(kind: TargetKind, id: Option<&str>, name: Option<&str>) -> Self {
        Self {
            kind,
            id: id.map(str::to_owned),
            name: name.map(str::to_owned),
        }
    }
}

/// The audit event a change is to be recorded with, built once by whoever asks for the change
/// (an admin handler, from its caller and request id) and passed to the store's write
/// function, which appends it in the change's transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// The tenant the change belongs to; `None` for changes of no tenant (key rotation).
    pub tenant_id: Option<String>,
    pub actor: Actor,
    pub request_id: Option<String>,
    pub action: AuditAction,
    pub target: AuditTarget,
    pub outcome: Outcome,
}

impl AuditEntry {
    /// An entry with outcome `ok` and no request id (a change no admin request made).
    pub fn new(
        tenant_id: Option<&str>,
        actor: Actor,
        action: AuditAction,
        target: AuditTarget,
    ) -> Self {
        Self {
            tenant_id: tenant_id.map(str::to_owned),
            actor,
            request_id: None,
            action,
            target,
            outcome: Outcome::Ok,
        }
    }
}

/// A stored audit event.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = audit_events)]
pub struct AuditEventRow {
    pub id: String,
    pub seq: i64,
    pub occurred_at: i64,
    pub tenant_id: Option<String>,
    pub actor: String,
    pub action: String,
    pub target_kind: String,
    pub target_id: Option<String>,
    pub target_name: Option<String>,
    pub request_id: Option<String>,
    pub outcome: String,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditEventRow {
    /// The event that records `entry` after the event (`seq`, `prev_hash`), hashed.
    fn after(entry: &AuditEntry, seq: i64, prev_hash: String) -> Self {
        let mut row = Self::unchained(entry);
        row.seq = seq + 1;
        row.prev_hash = prev_hash;
        row.hash = row.content_hash();
        row
    }

    /// The event that records `entry`, before its place in the chain is known: `seq` 0 and
    /// no hashes.
    fn unchained(entry: &AuditEntry) -> Self {
        Self {
            id: crate::crypto::new_id("aud"),
            seq: 0,
            occurred_at: super::now_millis(),
            tenant_id: entry.tenant_id.clone(),
            actor: entry.actor.as_str().to_owned(),
            action: entry.action.as_str().to_owned(),
            target_kind: entry.target.kind.as_str().to_owned(),
            target_id: entry.target.id.clone(),
            target_name: entry.target.name.clone(),
            request_id: entry.request_id.clone(),
            outcome: entry.outcome.as_str().to_owned(),
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    /// SHA-256 (lowercase hex) over the event's fields, `prev_hash` included, `hash` not.
    ///
    /// The encoding, version-tagged so that it can change one day: `runta-audit-v1\0`, then
    /// for each field in table order a byte 0 (null) or a byte 1, the length of its UTF-8 text
    /// as 8 bytes big-endian, and the text; numbers as decimal text. No two different events
    /// encode alike.
    pub fn content_hash(&self) -> String {
        let seq = self.seq.to_string();
        let occurred_at = self.occurred_at.to_string();
        let fields: [Option<&str>; 12] = [
            Some(&self.id),
            Some(&seq),
            Some(&occurred_at),
            self.tenant_id.as_deref(),
            Some(&self.actor),
            Some(&self.action),
            Some(&self.target_kind),
            self.target_id.as_deref(),
            self.target_name.as_deref(),
            self.request_id.as_deref(),
            Some(&self.outcome),
            Some(&self.prev_hash),
        ];
        let mut hasher = Sha256::new();
        hasher.update(AUDIT_HASH_TAG.as_bytes());
        hasher.update([0u8]);
        for field in fields {
            match field {
                None => hasher.update([0u8]),
                Some(text) => {
                    hasher.update([1u8]);
                    hasher.update((text.len() as u64).to_be_bytes());
                    hasher.update(text.as_bytes());
                }
            }
        }
        hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Which events a list shows. `tenant_id` `None` is every tenant's (the operator's view).
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub tenant_id: Option<String>,
    /// Unix milliseconds, inclusive.
    pub since: Option<i64>,
    /// Unix milliseconds, exclusive.
    pub until: Option<i64>,
    pub action: Option<AuditAction>,
    pub target_kind: Option<TargetKind>,
    pub target_id: Option<String>,
}

/// A page of events: at most `limit`, with seq above `after_seq`.
#[derive(Debug, Clone, Default)]
pub struct AuditPage {
    pub limit: i64,
    pub after_seq: Option<i64>,
}

/// What `verify_audit_chain` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainVerdict {
    /// Every event holds, and the head names the last one.
    Intact { events: i64 },
    /// The first seq that does not hold, and why.
    Broken { seq: i64, reason: String },
}

/// Receives every event once its change has committed (the JSON-lines stream).
pub type AuditSink = Arc<dyn Fn(&AuditEventRow) + Send + Sync>;

/// Runs `$body` (a write, returning `Result<T, StoreError>`) and appends `$entry`'s event, in
/// one transaction; an error anywhere rolls back both. Once committed, the event goes to the
/// store's sink. Evaluates to `Result<T, StoreError>`.
///
/// On SQLite the transaction begins `IMMEDIATE`: the write lock is taken before the first read,
/// so concurrent writers queue instead of the later one finding its read stale at its first
/// write, which SQLite answers with "database is locked" at once; the chain head is read
/// first, the event inserted and the head moved after the body. The whole transaction runs in
/// one hop to a blocking thread (`in_one_hop`), not one per statement, on the store's one
/// writer connection, for which this process's writers queue (`Backend::Sqlite::writer`).
///
/// On PostgreSQL the body runs first, unserialised (as any transaction at READ COMMITTED: its
/// own statements, row locks and constraints keep it right), and the chain is appended last,
/// in one statement that locks the head's row, inserts the event, moves the head and announces
/// the change (`finish_on_postgres`). The head's row lock is what orders appends across
/// replicas, and it is held only from that statement to the commit: one round trip, where
/// taking it first held it over the body's round trips too and capped every replica's writes
/// together. A body that reads, checks, then writes, and needs no other write to interleave
/// (`delete_api_key`: never a tenant's last key), says so: `audited_write!(@serialised ...)`
/// takes the head's lock before the body, as SQLite always does. (The caller has diesel's
/// prelude and diesel-async's `RunQueryDsl` in scope, as every store module does.)
///
/// `audited_write!(@announcing ...)`: the body answers `(value, payloads)`, and the payloads
/// are announced to the other replicas in the transaction (PostgreSQL's `pg_notify`; SQLite has
/// nobody to tell); evaluates to `Result<value, StoreError>`.
macro_rules! audited_write {
    ($store:expr, $entry:expr, $conn:ident => $body:expr) => {
        $crate::store::audit::audited_write!(@silent false, $store, $entry, $conn => $body)
    };
    (@serialised $store:expr, $entry:expr, $conn:ident => $body:expr) => {
        $crate::store::audit::audited_write!(@silent true, $store, $entry, $conn => $body)
    };
    (@announcing $store:expr, $entry:expr, $conn:ident => $body:expr) => {
        $crate::store::audit::audited_write!(@chained false, $store, $entry, $conn => $body)
    };
    // A body with nothing to announce.
    (@silent $serialised:expr, $store:expr, $entry:expr, $conn:ident => $body:expr) => {
        $crate::store::audit::audited_write!(@chained $serialised, $store, $entry, $conn => {
            let value: Result<_, $crate::store::StoreError> = async { $body }.await;
            value.map(|value| (value, Vec::new()))
        })
    };
    (@chained $serialised:expr, $store:expr, $entry:expr, $conn:ident => $body:expr) => {{
        use $crate::store::schema::audit_chain as chain;
        let entry: &$crate::store::AuditEntry = $entry;
        let committed: Result<(_, $crate::store::AuditEventRow), $crate::store::StoreError> =
            $crate::store::with_conn!(@write $store, conn => sqlite => {
                $crate::store::in_one_hop($crate::store::immediate_transaction::<_, $crate::store::StoreError, _>(conn, async |$conn| {
                    let head: (i64, String) = chain::table
                        .find(1)
                        .select((chain::last_seq, chain::last_hash))
                        .get_result(&mut *$conn)
                        .await?;
                    let made: Result<(_, Vec<String>), $crate::store::StoreError> =
                        async { $body }.await;
                    let (value, _nobody_to_tell) = made?;
                    let event = $crate::store::audit::append(entry, head);
                    ::diesel::insert_into($crate::store::schema::audit_events::table)
                        .values(&event)
                        .execute(&mut *$conn)
                        .await?;
                    ::diesel::update(chain::table.find(1))
                        .set((chain::last_seq.eq(event.seq), chain::last_hash.eq(&event.hash)))
                        .execute(&mut *$conn)
                        .await?;
                    Ok((value, event))
                }))
                .await
            } postgres => {
                ::diesel_async::AsyncConnection::transaction::<_, $crate::store::StoreError, _>(
                    conn,
                    async |$conn| {
                        if $serialised {
                            $crate::store::audit::lock_chain_on_postgres(&mut *$conn).await?;
                        }
                        let made: Result<(_, Vec<String>), $crate::store::StoreError> =
                            async { $body }.await;
                        let (value, payloads) = made?;
                        let event =
                            $crate::store::audit::finish_on_postgres(&mut *$conn, entry, &payloads)
                                .await?;
                        Ok((value, event))
                    },
                )
                .await
            });
        committed.map(|(value, event)| {
            $store.audit_committed(&event);
            value
        })
    }};
}
pub(crate) use audited_write;

/// PostgreSQL: locks the audit chain head's row until the transaction ends, so that the body
/// of an `audited_write!(@serialised ...)` runs alone among audited writes.
pub(crate) async fn lock_chain_on_postgres(
    conn: &mut diesel_async::AsyncPgConnection,
) -> Result<(), StoreError> {
    let locked: Vec<i32> = audit_chain::table
        .find(1)
        .select(audit_chain::id)
        .for_update()
        .load(conn)
        .await?;
    if locked.is_empty() {
        return Err(chain_head_missing());
    }
    Ok(())
}

fn chain_head_missing() -> StoreError {
    StoreError::Unavailable("the audit chain head (table audit_chain, id 1) is missing".into())
}

/// The statement of [`finish_on_postgres`]: the head's row locked (`FOR UPDATE`: a concurrent
/// append waits, then reads the head it left), the event inserted as its successor with its
/// hash computed by PostgreSQL over the encoding of [`AuditEventRow::content_hash`], the head
/// moved, and the payloads handed to `pg_notify` (delivered at commit, in commit order; the
/// data-modifying CTEs run whether or not the query reads them, `announced` is read so that
/// it runs). Each parameter appears once (`p` names them), and the statement is the same text
/// every time: diesel-async prepares it once per connection (a `sql_query` is parsed and
/// planned again on every call, which was a fifth of PostgreSQL's CPU under sustained writes).
struct FinishOnPostgres<'a> {
    event: &'a AuditEventRow,
    payloads: &'a [String],
}

/// [`FinishOnPostgres`] after its event's parameters, up to the changes channel's.
static FINISH_ON_POSTGRES: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    // One field of the encoding: a byte 0 for null; else a byte 1, the UTF-8 length as 8
    // bytes big-endian, the text.
    let field = |text: &str| {
        format!(
            "CASE WHEN {text} IS NULL THEN '\\x00'::bytea ELSE '\\x01'::bytea \
             || int8send(octet_length({text})::int8) || convert_to({text}, 'UTF8') END"
        )
    };
    let fields = [
        "p.id",
        "head.seq::text",
        "p.occurred_at::text",
        "p.tenant_id",
        "p.actor",
        "p.action",
        "p.target_kind",
        "p.target_id",
        "p.target_name",
        "p.request_id",
        "p.outcome",
        "head.prev_hash",
    ]
    .map(field)
    .join(" || ");
    format!(
        "), head AS (SELECT last_seq + 1 AS seq, last_hash AS prev_hash FROM audit_chain \
         WHERE id = 1 FOR UPDATE), \
         event AS (INSERT INTO audit_events (id, seq, occurred_at, tenant_id, actor, action, \
         target_kind, target_id, target_name, request_id, outcome, prev_hash, hash) \
         SELECT p.id, head.seq, p.occurred_at, p.tenant_id, p.actor, p.action, p.target_kind, \
         p.target_id, p.target_name, p.request_id, p.outcome, head.prev_hash, \
         encode(sha256(convert_to('{AUDIT_HASH_TAG}', 'UTF8') || '\\x00'::bytea || {fields}), 'hex') \
         FROM p, head RETURNING seq, prev_hash, hash), \
         moved AS (UPDATE audit_chain SET last_seq = event.seq, last_hash = event.hash \
         FROM event WHERE audit_chain.id = 1), \
         announced AS (SELECT pg_notify("
    )
});

impl diesel::query_builder::QueryFragment<diesel::pg::Pg> for FinishOnPostgres<'_> {
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
    ) -> QueryResult<()> {
        use diesel::sql_types::{Array, BigInt, Nullable, Text};
        let event = self.event;
        out.push_sql("WITH p AS (SELECT ");
        out.push_bind_param::<Text, _>(&event.id)?;
        out.push_sql(" AS id, ");
        out.push_bind_param::<BigInt, _>(&event.occurred_at)?;
        out.push_sql(" AS occurred_at, ");
        out.push_bind_param::<Nullable<Text>, _>(&event.tenant_id)?;
        out.push_sql(" AS tenant_id, ");
        out.push_bind_param::<Text, _>(&event.actor)?;
        out.push_sql(" AS actor, ");
        out.push_bind_param::<Text, _>(&event.action)?;
        out.push_sql(" AS action, ");
        out.push_bind_param::<Text, _>(&event.target_kind)?;
        out.push_sql(" AS target_kind, ");
        out.push_bind_param::<Nullable<Text>, _>(&event.target_id)?;
        out.push_sql(" AS target_id, ");
        out.push_bind_param::<Nullable<Text>, _>(&event.target_name)?;
        out.push_sql(" AS target_name, ");
        out.push_bind_param::<Nullable<Text>, _>(&event.request_id)?;
        out.push_sql(" AS request_id, ");
        out.push_bind_param::<Text, _>(&event.outcome)?;
        out.push_sql(" AS outcome");
        out.push_sql(&FINISH_ON_POSTGRES);
        out.push_bind_param::<Text, _>(&super::CHANGES_CHANNEL)?;
        out.push_sql(", payload) FROM unnest(");
        out.push_bind_param::<Array<Text>, _>(&self.payloads)?;
        out.push_sql(
            ") AS payload) SELECT event.seq, event.prev_hash, event.hash, \
             (SELECT count(*) FROM announced) AS announced FROM event",
        );
        Ok(())
    }
}

impl diesel::query_builder::QueryId for FinishOnPostgres<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl diesel::query_builder::Query for FinishOnPostgres<'_> {
    type SqlType = diesel::sql_types::Untyped;
}

/// PostgreSQL: appends `entry`'s event to the chain and announces `payloads` on the changes
/// channel, in one statement ([`FinishOnPostgres`]): the head's row stays locked from here to
/// the commit, one round trip. runta recomputes the hash PostgreSQL computed and refuses the
/// write (rolled back) should they ever differ, so a chain `verify` would find broken is
/// never written.
pub(crate) async fn finish_on_postgres(
    conn: &mut diesel_async::AsyncPgConnection,
    entry: &AuditEntry,
    payloads: &[String],
) -> Result<AuditEventRow, StoreError> {
    use diesel::sql_types::{BigInt, Text};

    #[derive(QueryableByName)]
    struct Chained {
        #[diesel(sql_type = BigInt)]
        seq: i64,
        #[diesel(sql_type = Text)]
        prev_hash: String,
        #[diesel(sql_type = Text)]
        hash: String,
    }

    let mut event = AuditEventRow::unchained(entry);
    let chained: Option<Chained> = FinishOnPostgres {
        event: &event,
        payloads,
    }
    .get_result(conn)
    .await
    .optional()?;
    let chained = chained.ok_or_else(chain_head_missing)?;
    event.seq = chained.seq;
    event.prev_hash = chained.prev_hash;
    event.hash = event.content_hash();
    if event.hash != chained.hash {
        return Err(StoreError::Unavailable(format!(
            "PostgreSQL hashed audit event seq {} otherwise than runta does; nothing was written",
            event.seq
        )));
    }
    Ok(event)
}

/// The event after the chain head `(seq, hash)`.
pub(crate) fn append(entry: &AuditEntry, (seq, hash): (i64, String)) -> AuditEventRow {
    AuditEventRow::after(entry, seq, hash)
}

/// Events read per query while verifying.
const VERIFY_BATCH: i64 = 1000;

impl Store {
    /// The same store, handing every committed audit event to `sink`.
    pub fn with_audit_sink(mut self, sink: AuditSink) -> Self {
        self.audit_sink = Some(sink);
        self
    }

    /// Hands a committed event to the sink, if there is one.
    pub(crate) fn audit_committed(&self, event: &AuditEventRow) {
        if let Some(sink) = &self.audit_sink {
            sink(event);
        }
    }

    /// Records an event that goes with no single write of the store (a key rotation, made of
    /// many independent re-seals, is recorded once, when it has run).
    pub async fn record_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        audited_write!(self, entry, conn => {
            let _ = &conn;
            Ok(())
        })
    }

    /// One page of events in seq order.
    pub async fn list_audit_events(
        &self,
        filter: &AuditFilter,
        page: &AuditPage,
    ) -> Result<Paged<AuditEventRow>, StoreError> {
        let limit = page.limit.max(0);
        let mut rows: Vec<AuditEventRow> = with_conn!(self, conn => {
            let mut query = audit_events::table
                .select(AuditEventRow::as_select())
                .order(audit_events::seq)
                .into_boxed();
            if let Some(tenant_id) = &filter.tenant_id {
                query = query.filter(audit_events::tenant_id.eq(tenant_id));
            }
            if let Some(since) = filter.since {
                query = query.filter(audit_events::occurred_at.ge(since));
            }
            if let Some(until) = filter.until {
                query = query.filter(audit_events::occurred_at.lt(until));
            }
            if let Some(action) = filter.action {
                query = query.filter(audit_events::action.eq(action.as_str()));
            }
            if let Some(kind) = filter.target_kind {
                query = query.filter(audit_events::target_kind.eq(kind.as_str()));
            }
            if let Some(target_id) = &filter.target_id {
                query = query.filter(audit_events::target_id.eq(target_id));
            }
            if let Some(after) = page.after_seq {
                query = query.filter(audit_events::seq.gt(after));
            }
            query.limit(limit + 1).load(conn).await?
        });
        let next_cursor = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            rows.last().map(|r| r.seq.to_string())
        } else {
            None
        };
        Ok(Paged {
            items: rows,
            next_cursor,
        })
    }

    /// Recomputes the whole chain: every seq present from 1 on, every event's hash over its
    /// content, every `prev_hash` the previous event's hash, and the head naming the last
    /// event. Reads only.
    pub async fn verify_audit_chain(&self) -> Result<ChainVerdict, StoreError> {
        let head: Option<(i64, String)> = with_conn!(self, conn => {
            audit_chain::table
                .find(1)
                .select((audit_chain::last_seq, audit_chain::last_hash))
                .get_result(conn)
                .await
                .optional()?
        });
        let mut expected = 1_i64;
        let mut prev_hash = GENESIS_HASH.to_owned();
        loop {
            let batch: Vec<AuditEventRow> = with_conn!(self, conn => {
                audit_events::table
                    .select(AuditEventRow::as_select())
                    .filter(audit_events::seq.ge(expected))
                    .order(audit_events::seq)
                    .limit(VERIFY_BATCH)
                    .load(conn)
                    .await?
            });
            let done = (batch.len() as i64) < VERIFY_BATCH;
            for event in batch {
                if event.seq != expected {
                    return Ok(broken(
                        expected,
                        format!(
                            "the event is missing (the next stored event is seq {})",
                            event.seq
                        ),
                    ));
                }
                if event.prev_hash != prev_hash {
                    return Ok(broken(
                        expected,
                        format!(
                            "prev_hash does not match the hash of seq {} (an event was removed or replaced)",
                            expected - 1
                        ),
                    ));
                }
                if event.content_hash() != event.hash {
                    return Ok(broken(
                        expected,
                        "the stored hash does not match the event's content (it was edited)",
                    ));
                }
                prev_hash = event.hash;
                expected += 1;
            }
            if done {
                break;
            }
        }
        let last = expected - 1;
        Ok(match head {
            None => broken(expected, "the chain head (table audit_chain) is missing"),
            Some((seq, hash)) if seq == last && hash == prev_hash => {
                ChainVerdict::Intact { events: last }
            }
            Some((seq, _)) if seq > last => broken(
                expected,
                format!(
                    "the event is missing: the chain head names seq {seq}, the last stored event is seq {last} (events were removed from the end)"
                ),
            ),
            Some((seq, _)) if seq < last => broken(
                seq + 1,
                format!(
                    "the chain head names seq {seq}, but stored events go on to seq {last} (events were added outside the store)"
                ),
            ),
            Some((seq, _)) => broken(
                seq,
                "the chain head holds another hash than the event's (the head or the event was changed)",
            ),
        })
    }
}

fn broken(seq: i64, reason: impl Into<String>) -> ChainVerdict {
    ChainVerdict::Broken {
        seq,
        reason: reason.into(),
    }
}
