//! Injection rules. A rule names its secret (`credential`) within its tenant; creation checks
//! the secret exists in the same transaction (and the foreign key backs that up).

use std::collections::BTreeSet;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::changes::{Change, Committed, Created, changed_write};
use super::schema::{rules, secrets};
use crate::rules::snapshot::RuntimeDigest;

use super::{
    AuditEntry, Page, Paged, Resource, RuleRow, Store, StoreError, is_foreign_key_violation,
    load_page, with_conn,
};

/// Rules per INSERT statement (SQLite allows 32,766 parameters; a rule has ten).
const INSERT_CHUNK: usize = 1_000;

/// Inserting rules in as few round trips as the backend allows: many rows per statement, and
/// on SQLite every statement in one hop to the blocking thread the connection runs on (diesel's
/// SQLite multi-row insert is synchronous). A single rule is a single-row insert: diesel keeps
/// that statement prepared, while a multi-row insert is parsed and planned again each time.
/// Fails with the index of the first rule of the statement that failed.
pub(crate) trait InsertRules {
    async fn insert_rules(
        &mut self,
        rows: &[RuleRow],
    ) -> Result<(), (usize, diesel::result::Error)>;
}

impl InsertRules for super::SqliteConn {
    async fn insert_rules(
        &mut self,
        rows: &[RuleRow],
    ) -> Result<(), (usize, diesel::result::Error)> {
        let rows = rows.to_vec();
        // The task answers a statement's failure as its value: the hop itself can only fail
        // before any statement ran (index 0).
        self.spawn_blocking(move |conn| {
            for (i, chunk) in rows.chunks(INSERT_CHUNK).enumerate() {
                let inserted = match chunk {
                    [row] => diesel::RunQueryDsl::execute(
                        diesel::insert_into(rules::table).values(row),
                        conn,
                    ),
                    _ => diesel::RunQueryDsl::execute(
                        diesel::insert_into(rules::table).values(chunk),
                        conn,
                    ),
                };
                if let Err(err) = inserted {
                    return Ok(Err((i * INSERT_CHUNK, err)));
                }
            }
            Ok(Ok(()))
        })
        .await
        .map_err(|err| (0, err))?
    }
}

impl InsertRules for diesel_async::AsyncPgConnection {
    async fn insert_rules(
        &mut self,
        rows: &[RuleRow],
    ) -> Result<(), (usize, diesel::result::Error)> {
        for (i, chunk) in rows.chunks(INSERT_CHUNK).enumerate() {
            match chunk {
                [row] => {
                    diesel::insert_into(rules::table)
                        .values(row)
                        .execute(self)
                        .await
                }
                _ => {
                    diesel::insert_into(rules::table)
                        .values(chunk)
                        .execute(self)
                        .await
                }
            }
            .map_err(|e| (i * INSERT_CHUNK, e))?;
        }
        Ok(())
    }
}

fn unknown_credential(i: usize, rule: &RuleRow) -> StoreError {
    StoreError::UnknownCredential {
        name: rule.credential.clone(),
        rule: i,
    }
}

impl Store {
    /// Inserts rules of one tenant, all or none. `UnknownCredential` if any names a secret the
    /// tenant does not have.
    pub async fn insert_rules(
        &self,
        tenant_id: &str,
        new: &[RuleRow],
        audit: &AuditEntry,
    ) -> Result<Committed<()>, StoreError> {
        changed_write!(self, audit, conn => {
                // A single rule is left to the foreign key (one statement fewer; its refusal
                // names the same rule); a batch is checked first, so the error names the very
                // rule that is wrong, not the first of its statement.
                if new.len() > 1 {
                    let wanted: BTreeSet<&str> =
                        new.iter().map(|r| r.credential.as_str()).collect();
                    let found: BTreeSet<String> = secrets::table
                        .filter(secrets::tenant_id.eq(tenant_id))
                        .filter(secrets::name.eq_any(wanted))
                        .select(secrets::name)
                        .load::<String>(conn)
                        .await?
                        .into_iter()
                        .collect();
                    if let Some((i, missing)) =
                        new.iter().enumerate().find(|(_, r)| !found.contains(&r.credential))
                    {
                        return Err(unknown_credential(i, missing));
                    }
                }
                // The foreign key backs the check above up (on PostgreSQL a secret may be
                // deleted between the check and the insert); should it refuse, the first rule
                // of the refused statement is named.
                InsertRules::insert_rules(&mut *conn, new).await.map_err(|(at, e)| {
                    if is_foreign_key_violation(&e) {
                        unknown_credential(at, &new[at])
                    } else {
                        e.into()
                    }
                })?;
                let change = Change::RulesCreated {
                    tenant_id: tenant_id.to_owned(),
                    rules: Created::Rows(new.to_vec()),
                };
                Ok(((), change))
        })
    }

    /// The tenant's rules, of one runtime or of all.
    pub async fn list_rules(
        &self,
        tenant_id: &str,
        runtime: Option<&str>,
        page: &Page,
    ) -> Result<Paged<RuleRow>, StoreError> {
        let rows = with_conn!(self, conn => {
            let mut query = rules::table
                .filter(rules::tenant_id.eq(tenant_id))
                .select(RuleRow::as_select())
                .into_boxed();
            if let Some(runtime) = runtime {
                query = query.filter(rules::runtime.eq(runtime));
            }
            load_page!(query, rules::id, page, conn)
        });
        Ok(Paged::from_rows(rows, page, |r| &r.id))
    }

    pub async fn get_rule(&self, tenant_id: &str, id: &str) -> Result<Option<RuleRow>, StoreError> {
        with_conn!(self, conn => {
            Ok(rules::table
                .filter(rules::tenant_id.eq(tenant_id))
                .filter(rules::id.eq(id))
                .select(RuleRow::as_select())
                .get_result(conn)
                .await
                .optional()?)
        })
    }

    /// Deletes a rule; answers the runtime it was for.
    pub async fn delete_rule(
        &self,
        tenant_id: &str,
        id: &str,
        audit: &AuditEntry,
    ) -> Result<Committed<String>, StoreError> {
        changed_write!(self, audit, conn => {
            let runtimes: Vec<String> = diesel::delete(
                rules::table.filter(rules::tenant_id.eq(tenant_id)).filter(rules::id.eq(id)),
            )
            .returning(rules::runtime)
            .get_results(conn)
            .await?;
            let runtime = runtimes
                .into_iter()
                .next()
                .ok_or_else(|| StoreError::NotFound(Resource::Rule(id.to_owned())))?;
            let change = Change::RulesDeleted {
                tenant_id: tenant_id.to_owned(),
                runtime: runtime.clone(),
                ids: vec![id.to_owned()],
            };
            Ok((runtime, change))
        })
    }

    /// Every rule of one runtime, in id order: what an incremental snapshot update reads.
    pub async fn runtime_rules(
        &self,
        tenant_id: &str,
        runtime: &str,
    ) -> Result<Vec<RuleRow>, StoreError> {
        with_conn!(self, conn => {
            Ok(rules::table
                .filter(rules::tenant_id.eq(tenant_id))
                .filter(rules::runtime.eq(runtime))
                .select(RuleRow::as_select())
                .order(rules::id)
                .load(conn)
                .await?)
        })
    }

    /// The ids of a runtime's rules, in id order: what the safety net compares a differing
    /// runtime with (the ids only; the rules it lacks are then read by id).
    pub async fn runtime_rule_ids(
        &self,
        tenant_id: &str,
        runtime: &str,
    ) -> Result<Vec<String>, StoreError> {
        with_conn!(self, conn => {
            Ok(rules::table
                .filter(rules::tenant_id.eq(tenant_id))
                .filter(rules::runtime.eq(runtime))
                .select(rules::id)
                .order(rules::id)
                .load(conn)
                .await?)
        })
    }

    /// The tenant's rules with these ids (those that still exist), in id order: what another
    /// replica's `rules created` announcement is read with, and the rules the safety net
    /// found a runtime lacking.
    pub async fn rules_by_ids(
        &self,
        tenant_id: &str,
        ids: &[String],
    ) -> Result<Vec<RuleRow>, StoreError> {
        let mut found = Vec::with_capacity(ids.len());
        // Bounded statements: SQLite allows 32,766 parameters, PostgreSQL 65,535.
        for chunk in ids.chunks(1_000) {
            let rows: Vec<RuleRow> = with_conn!(self, conn => {
                rules::table
                    .filter(rules::tenant_id.eq(tenant_id))
                    .filter(rules::id.eq_any(chunk))
                    .select(RuleRow::as_select())
                    .order(rules::id)
                    .load(conn)
                    .await?
            });
            found.extend(rows);
        }
        Ok(found)
    }
}

/// Every runtime's rules summarised as the periodic safety net compares them with the
/// snapshot (`Snapshot::runtimes_differing`): per (tenant, runtime) the count and the wrapping
/// sum of `rule_id_digest` over the ids. PostgreSQL computes a share with `sha256` and sums
/// the shares as `numeric` (exact; reduced modulo 2^64 here); SQLite has no hash function, so
/// the sum is an aggregate of ours (`runta_rule_digest`, registered on every connection).
/// A million rules take PostgreSQL a few hundred milliseconds and answer one row per runtime,
/// where reading them took seconds of runta's CPU.
pub(super) const DIGESTS_POSTGRES: &str = "SELECT tenant_id, runtime, count(*) AS rules, \
     sum(('x' || left(encode(sha256(convert_to(id, 'UTF8')), 'hex'), 16))::bit(64)::bigint)::text \
     AS digest FROM rules GROUP BY tenant_id, runtime";
pub(super) const DIGESTS_SQLITE: &str = "SELECT tenant_id, runtime, count(*) AS rules, \
     CAST(runta_rule_digest(id) AS TEXT) AS digest FROM rules GROUP BY tenant_id, runtime";

#[derive(QueryableByName)]
pub(super) struct DigestRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    tenant_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    runtime: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    rules: i64,
    /// A decimal integer: the exact sum (PostgreSQL) or the wrapped one (SQLite).
    #[diesel(sql_type = diesel::sql_types::Text)]
    digest: String,
}

impl DigestRow {
    pub(super) fn parse(self) -> Result<RuntimeDigest, StoreError> {
        let digest: i128 = self.digest.parse().map_err(|_| {
            StoreError::Unavailable(format!(
                "the store answered a rule digest that is not a number: {:?}",
                self.digest
            ))
        })?;
        Ok(RuntimeDigest {
            tenant_id: self.tenant_id,
            runtime: self.runtime,
            rules: self.rules as u64,
            // Modulo 2^64: the wrapping sum of the shares as unsigned numbers.
            digest: digest.rem_euclid(1 << 64) as u64,
        })
    }
}

diesel::define_sql_function! {
    /// The wrapping sum of `rule_id_digest` over a group's ids (SQLite only).
    #[aggregate]
    fn runta_rule_digest(id: diesel::sql_types::Text) -> diesel::sql_types::BigInt;
}

#[derive(Default)]
struct RuleDigestSum(u64);

impl diesel::sqlite::SqliteAggregateFunction<String> for RuleDigestSum {
    type Output = i64;

    fn step(&mut self, id: String) {
        self.0 = self.0.wrapping_add(crate::rules::rule_id_digest(&id));
    }

    fn finalize(sum: Option<Self>) -> i64 {
        sum.map_or(0, |sum| sum.0 as i64)
    }
}

/// Registers `runta_rule_digest` on a new SQLite connection.
pub(super) fn register_sqlite_functions(
    conn: &mut diesel::SqliteConnection,
) -> diesel::QueryResult<()> {
    runta_rule_digest_utils::register_impl::<RuleDigestSum, _>(conn)
}
