//! A tenant's API keys (stored as hashes).

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::audit::audited_write;
use super::schema::api_keys;
use super::{
    ApiKeyRow, AuditEntry, NewApiKey, Page, Paged, Resource, Store, StoreError, load_page,
    with_conn,
};

impl Store {
    pub async fn create_api_key(
        &self,
        key: &NewApiKey,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        audited_write!(self, audit, conn => {
            diesel::insert_into(api_keys::table).values(key).execute(conn).await?;
            Ok(())
        })
    }

    pub async fn list_api_keys(
        &self,
        tenant_id: &str,
        page: &Page,
    ) -> Result<Paged<ApiKeyRow>, StoreError> {
        let rows = with_conn!(self, conn => {
            load_page!(api_keys::table
                .filter(api_keys::tenant_id.eq(tenant_id))
                .select(ApiKeyRow::as_select()).into_boxed(), api_keys::id, page, conn)
        });
        Ok(Paged::from_rows(rows, page, |k| &k.id))
    }

    /// Deletes one of the tenant's keys; never its last one (that would lock the tenant out).
    ///
    /// Read, check, delete: two concurrent deletes of a tenant's last two keys must not both
    /// pass the check. The write is serialised from its first read (SQLite's immediate
    /// transaction; on PostgreSQL `@serialised` takes the audit chain head's row lock before
    /// the body runs), so the second delete reads after the first committed.
    pub async fn delete_api_key(
        &self,
        tenant_id: &str,
        id: &str,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let keys = api_keys::table
            .filter(api_keys::tenant_id.eq(tenant_id))
            .select(api_keys::id);
        let delete = diesel::delete(api_keys::table.filter(api_keys::id.eq(id)));
        audited_write!(@serialised self, audit, conn => {
            check_not_last(&keys.load(conn).await?, id)?;
            delete.execute(conn).await?;
            Ok(())
        })
    }
}

/// Whether `id` is one of `keys` (the tenant's) and not the only one.
fn check_not_last(keys: &[String], id: &str) -> Result<(), StoreError> {
    if !keys.iter().any(|k| k == id) {
        return Err(StoreError::NotFound(Resource::ApiKey(id.to_owned())));
    }
    if keys.len() == 1 {
        return Err(StoreError::LastApiKey);
    }
    Ok(())
}
