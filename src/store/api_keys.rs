//! A tenant's API keys (stored as hashes).

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::schema::api_keys;
use super::{ApiKeyRow, NewApiKey, Page, Paged, Store, StoreError, load_page, with_conn};

impl Store {
    pub async fn create_api_key(&self, key: &NewApiKey) -> Result<(), StoreError> {
        with_conn!(self, conn => {
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
    pub async fn delete_api_key(&self, tenant_id: &str, id: &str) -> Result<(), StoreError> {
        with_conn!(self, conn => {
            conn.transaction::<_, StoreError, _>(async |conn| {
                let keys: Vec<String> = api_keys::table
                    .filter(api_keys::tenant_id.eq(tenant_id))
                    .select(api_keys::id)
                    .load(conn)
                    .await?;
                if !keys.iter().any(|k| k == id) {
                    return Err(StoreError::NotFound);
                }
                if keys.len() == 1 {
                    return Err(StoreError::LastApiKey);
                }
                diesel::delete(api_keys::table.filter(api_keys::id.eq(id))).execute(conn).await?;
                Ok(())
            })
            .await
        })
    }
}
