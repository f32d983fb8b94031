//! Runtime (egress) tokens, stored as hashes; revocation keeps the row for the record.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::changes::{Change, Committed, changed_write};
use super::schema::runtime_tokens;
use super::{
    AuditEntry, NewRuntimeToken, Page, Paged, Resource, RuntimeTokenRow, Store, StoreError,
    load_page, now_millis, with_conn,
};

impl Store {
    pub async fn create_runtime_token(
        &self,
        token: &NewRuntimeToken,
        audit: &AuditEntry,
    ) -> Result<Committed<()>, StoreError> {
        changed_write!(self, audit, conn => {
            diesel::insert_into(runtime_tokens::table).values(token).execute(conn).await?;
            Ok(((), Change::Tokens(vec![token.id.clone()])))
        })
    }

    pub async fn list_runtime_tokens(
        &self,
        tenant_id: &str,
        runtime: &str,
        page: &Page,
    ) -> Result<Paged<RuntimeTokenRow>, StoreError> {
        let rows = with_conn!(self, conn => {
            load_page!(runtime_tokens::table
                .filter(runtime_tokens::tenant_id.eq(tenant_id))
                .filter(runtime_tokens::runtime.eq(runtime))
                .select(RuntimeTokenRow::as_select()).into_boxed(), runtime_tokens::id, page, conn)
        });
        Ok(Paged::from_rows(rows, page, |t| &t.id))
    }

    /// Revokes a token of the tenant and answers it. Revoking a revoked token changes nothing.
    pub async fn revoke_runtime_token(
        &self,
        tenant_id: &str,
        id: &str,
        audit: &AuditEntry,
    ) -> Result<Committed<RuntimeTokenRow>, StoreError> {
        let token = runtime_tokens::table
            .filter(runtime_tokens::tenant_id.eq(tenant_id))
            .filter(runtime_tokens::id.eq(id));
        changed_write!(self, audit, conn => {
            let unrevoked = token.filter(runtime_tokens::revoked_at.is_null());
            let revoked = diesel::update(unrevoked)
                .set(runtime_tokens::revoked_at.eq(now_millis()))
                .returning(RuntimeTokenRow::as_returning())
                .get_result(conn)
                .await
                .optional()?;
            let found = match revoked {
                Some(row) => Some(row),
                // Revoked before (or not the tenant's): as it is.
                None => token.select(RuntimeTokenRow::as_select()).get_result(conn).await.optional()?,
            };
            let row = found.ok_or_else(|| StoreError::NotFound(Resource::RuntimeToken(id.to_owned())))?;
            Ok((row, Change::Tokens(vec![id.to_owned()])))
        })
    }

    /// The runtime tokens with these ids, with their hashes.
    pub async fn runtime_tokens_by_ids(
        &self,
        ids: &[String],
    ) -> Result<Vec<(RuntimeTokenRow, Vec<u8>)>, StoreError> {
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(1_000) {
            let rows: Vec<(RuntimeTokenRow, Vec<u8>)> = with_conn!(self, conn => {
                runtime_tokens::table
                    .filter(runtime_tokens::id.eq_any(chunk))
                    .select((RuntimeTokenRow::as_select(), runtime_tokens::token_hash))
                    .load(conn)
                    .await?
            });
            found.extend(rows);
        }
        Ok(found)
    }

    /// Every runtime token of every tenant with its hash: what identity is resolved from.
    pub async fn all_runtime_tokens(&self) -> Result<Vec<(RuntimeTokenRow, Vec<u8>)>, StoreError> {
        with_conn!(self, conn => {
            Ok(runtime_tokens::table
                .select((RuntimeTokenRow::as_select(), runtime_tokens::token_hash))
                .order(runtime_tokens::id)
                .load(conn)
                .await?)
        })
    }
}
