//! Tenants, and API-key authentication (which answers with the key's tenant).

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::changes::{Change, Committed, changed_write};
use super::schema::{api_keys, tenants};
use super::{
    ApiKeyRow, AuditEntry, NewApiKey, Page, Paged, Resource, Store, StoreError, TenantRow,
    load_page, unique_names, with_conn,
};

impl Store {
    /// Creates a tenant and its first API key, both or neither.
    pub async fn create_tenant(
        &self,
        tenant: &TenantRow,
        key: &NewApiKey,
        audit: &AuditEntry,
    ) -> Result<Committed<()>, StoreError> {
        changed_write!(self, audit, conn => {
            diesel::insert_into(tenants::table)
                .values(tenant)
                .execute(conn)
                .await
                .map_err(unique_names(|| Resource::Tenant(tenant.name.clone())))?;
            diesel::insert_into(api_keys::table).values(key).execute(conn).await?;
            Ok(((), Change::Tenants))
        })
    }

    pub async fn list_tenants(&self, page: &Page) -> Result<Paged<TenantRow>, StoreError> {
        let rows = with_conn!(self, conn => {
            load_page!(tenants::table.select(TenantRow::as_select()).into_boxed(), tenants::id, page, conn)
        });
        Ok(Paged::from_rows(rows, page, |t| &t.id))
    }

    pub async fn find_tenant_by_name(&self, name: &str) -> Result<Option<TenantRow>, StoreError> {
        with_conn!(self, conn => {
            Ok(tenants::table
                .filter(tenants::name.eq(name))
                .select(TenantRow::as_select())
                .get_result(conn)
                .await
                .optional()?)
        })
    }

    /// The tenant and key a presented API key (by hash) belongs to, if any.
    pub async fn authenticate_api_key(
        &self,
        key_hash: &[u8],
    ) -> Result<Option<(TenantRow, ApiKeyRow)>, StoreError> {
        with_conn!(self, conn => {
            Ok(api_keys::table
                .inner_join(tenants::table)
                .filter(api_keys::key_hash.eq(key_hash))
                .select((TenantRow::as_select(), ApiKeyRow::as_select()))
                .get_result(conn)
                .await
                .optional()?)
        })
    }

    /// Every tenant.
    pub async fn all_tenants(&self) -> Result<Vec<TenantRow>, StoreError> {
        with_conn!(self, conn => {
            Ok(tenants::table.select(TenantRow::as_select()).order(tenants::id).load(conn).await?)
        })
    }
}
