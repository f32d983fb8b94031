//! Secrets: metadata and sealed values. Values change only by optimistic update (the caller
//! says which version it sealed against), so two concurrent writers cannot both win; the update
//! answers the new row itself (`RETURNING`).

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::audit::audited_write;
use super::changes::{Change, Committed, changed_write};
use super::schema::{rules, secrets};
use super::{
    AuditEntry, Page, Paged, Resource, SecretChanges, SecretRow, Store, StoreError,
    is_foreign_key_violation, load_page, unique_names, with_conn,
};

impl Store {
    pub async fn insert_secret(
        &self,
        secret: &SecretRow,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        audited_write!(self, audit, conn => {
            diesel::insert_into(secrets::table)
                .values(secret)
                .execute(conn)
                .await
                .map_err(unique_names(|| Resource::Secret(secret.name.clone())))?;
            Ok(())
        })
    }

    pub async fn list_secrets(
        &self,
        tenant_id: &str,
        page: &Page,
    ) -> Result<Paged<SecretRow>, StoreError> {
        let rows = with_conn!(self, conn => {
            load_page!(secrets::table
                .filter(secrets::tenant_id.eq(tenant_id))
                .select(SecretRow::as_select()).into_boxed(), secrets::id, page, conn)
        });
        Ok(Paged::from_rows(rows, page, |s| &s.id))
    }

    pub async fn get_secret(
        &self,
        tenant_id: &str,
        name: &str,
    ) -> Result<Option<SecretRow>, StoreError> {
        with_conn!(self, conn => {
            Ok(secrets::table
                .filter(secrets::tenant_id.eq(tenant_id))
                .filter(secrets::name.eq(name))
                .select(SecretRow::as_select())
                .get_result(conn)
                .await
                .optional()?)
        })
    }

    /// Applies `changes` if the secret is still at `expected_version`; `Stale` if it moved on,
    /// `NotFound` if it is gone.
    pub async fn update_secret(
        &self,
        tenant_id: &str,
        name: &str,
        expected_version: i64,
        changes: &SecretChanges,
        audit: &AuditEntry,
    ) -> Result<Committed<SecretRow>, StoreError> {
        let secret = secrets::table
            .filter(secrets::tenant_id.eq(tenant_id))
            .filter(secrets::name.eq(name));
        let change = Change::Secret {
            tenant_id: tenant_id.to_owned(),
            name: name.to_owned(),
        };
        changed_write!(self, audit, conn => {
            let updated = diesel::update(secret.filter(secrets::version.eq(expected_version)))
                .set(changes)
                .returning(SecretRow::as_returning())
                .get_result(conn)
                .await
                .optional()?;
            match updated {
                Some(row) => Ok((row, change.clone())),
                None => {
                    // Why nothing matched, for the caller's message only: nothing was written.
                    let exists: Option<String> =
                        secret.select(secrets::id).get_result(conn).await.optional()?;
                    Err(match exists {
                        Some(_) => StoreError::Stale(Resource::Secret(name.to_owned())),
                        None => StoreError::NotFound(Resource::Secret(name.to_owned())),
                    })
                }
            }
        })
    }

    /// Deletes a secret no rule uses; otherwise `SecretInUse` with the rules' ids.
    ///
    /// A rule created concurrently (after the check, before the delete) makes the foreign key
    /// refuse the delete; its rules are then read again to name them.
    pub async fn delete_secret(
        &self,
        tenant_id: &str,
        name: &str,
        audit: &AuditEntry,
    ) -> Result<Committed<()>, StoreError> {
        let users = rules::table
            .filter(rules::tenant_id.eq(tenant_id))
            .filter(rules::credential.eq(name))
            .select(rules::id)
            .order(rules::id);
        let in_use = |rules: Vec<String>| StoreError::SecretInUse {
            secret: name.to_owned(),
            rules,
        };
        let change = Change::Secret {
            tenant_id: tenant_id.to_owned(),
            name: name.to_owned(),
        };
        let deleted = changed_write!(self, audit, conn => {
            let users: Vec<String> = users.load(conn).await?;
            if !users.is_empty() {
                return Err(in_use(users));
            }
            let deleted = diesel::delete(
                secrets::table
                    .filter(secrets::tenant_id.eq(tenant_id))
                    .filter(secrets::name.eq(name)),
            )
            .execute(conn)
            .await
            .map_err(|e| if is_foreign_key_violation(&e) { in_use(Vec::new()) } else { e.into() })?;
            if deleted == 0 {
                return Err(StoreError::NotFound(Resource::Secret(name.to_owned())));
            }
            Ok(((), change.clone()))
        });
        match deleted {
            Err(StoreError::SecretInUse { rules, .. }) if rules.is_empty() => {
                let users: Vec<String> = with_conn!(self, conn => users.load(conn).await?);
                Err(if users.is_empty() {
                    // The rule that stopped the delete is gone again: the secret changed
                    // under the request.
                    StoreError::Stale(Resource::Secret(name.to_owned()))
                } else {
                    in_use(users)
                })
            }
            other => other,
        }
    }

    /// Up to `limit` secrets (of every tenant) not sealed under `key_id`, ids after `after`:
    /// the work list of a key rotation.
    pub async fn secrets_not_under_key(
        &self,
        key_id: &str,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<SecretRow>, StoreError> {
        with_conn!(self, conn => {
            let mut query = secrets::table
                .filter(secrets::key_id.ne(key_id))
                .select(SecretRow::as_select())
                .order(secrets::id)
                .limit(limit)
                .into_boxed();
            if let Some(after) = after {
                query = query.filter(secrets::id.gt(after));
            }
            Ok(query.load(conn).await?)
        })
    }

    /// Replaces a secret's sealed value with one sealed under another key, if the row is
    /// unchanged since it was read. Returns whether it was.
    pub async fn reseal_secret(
        &self,
        old: &SecretRow,
        key_id: &str,
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> Result<bool, StoreError> {
        with_conn!(self, conn => {
            let updated = diesel::update(
                secrets::table
                    .filter(secrets::id.eq(&old.id))
                    .filter(secrets::version.eq(old.version))
                    .filter(secrets::key_id.eq(&old.key_id)),
            )
            .set((
                secrets::key_id.eq(key_id),
                secrets::nonce.eq(nonce),
                secrets::ciphertext.eq(ciphertext),
            ))
            .execute(conn)
            .await?;
            Ok(updated == 1)
        })
    }

    /// How many secrets are sealed under each key id.
    pub async fn count_secrets_by_key(&self) -> Result<Vec<(String, i64)>, StoreError> {
        with_conn!(self, conn => {
            Ok(secrets::table
                .group_by(secrets::key_id)
                .select((secrets::key_id, diesel::dsl::count_star()))
                .order(secrets::key_id)
                .load(conn)
                .await?)
        })
    }
}
