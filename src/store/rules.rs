//! Injection rules. A rule names its secret (`credential`) within its tenant; creation checks
//! the secret exists in the same transaction (and the foreign key backs that up).

use std::collections::BTreeSet;

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::schema::{rules, secrets};
use super::{Page, Paged, RuleRow, Store, StoreError, load_page, with_conn};

impl Store {
    /// Inserts rules of one tenant, all or none. `UnknownCredential` if any names a secret the
    /// tenant does not have.
    pub async fn insert_rules(&self, tenant_id: &str, new: &[RuleRow]) -> Result<(), StoreError> {
        let wanted: BTreeSet<&str> = new.iter().map(|r| r.credential.as_str()).collect();
        with_conn!(self, conn => {
            conn.transaction::<_, StoreError, _>(async |conn| {
                let found: BTreeSet<String> = secrets::table
                    .filter(secrets::tenant_id.eq(tenant_id))
                    .filter(secrets::name.eq_any(wanted.iter().copied()))
                    .select(secrets::name)
                    .load::<String>(conn)
                    .await?
                    .into_iter()
                    .collect();
                if let Some(missing) = wanted.iter().find(|c| !found.contains(**c)) {
                    return Err(StoreError::UnknownCredential((*missing).to_owned()));
                }
                for rule in new {
                    diesel::insert_into(rules::table).values(rule).execute(conn).await?;
                }
                Ok(())
            })
            .await
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
                .first(conn)
                .await
                .optional()?)
        })
    }

    pub async fn delete_rule(&self, tenant_id: &str, id: &str) -> Result<(), StoreError> {
        let deleted = with_conn!(self, conn => {
            diesel::delete(rules::table.filter(rules::tenant_id.eq(tenant_id)).filter(rules::id.eq(id)))
                .execute(conn)
                .await?
        });
        if deleted == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Every rule of every tenant: what the ext_proc snapshot is built from.
    pub async fn all_rules(&self) -> Result<Vec<RuleRow>, StoreError> {
        with_conn!(self, conn => {
            Ok(rules::table.select(RuleRow::as_select()).order(rules::id).load(conn).await?)
        })
    }
}
