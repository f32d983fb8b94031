//! Key rotation: re-seals every secret that is not under the active key.
//!
//! Each secret is opened with the key that sealed it and sealed again under the active key,
//! bound to the same (tenant, secret, version); the write only lands if the row is unchanged
//! since it was read, so a concurrent update (which seals under the active key anyway) wins.
//!
//! A rotation is recorded as one audit event (`keys.rotate`, actor `cli`, target the active
//! key) once it has run: it is made of many independent re-seals, each safe on its own, not of
//! one transaction. Its outcome is `failed` when some secret could not be re-sealed.

use crate::crypto::{Keyring, SealContext, Sealed};
use crate::store::{
    Actor, AuditAction, AuditEntry, AuditTarget, Outcome, Store, StoreError, TargetKind,
};

/// What a rotation did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RotationReport {
    /// Secrets now sealed under the active key.
    pub resealed: usize,
    /// Secrets that changed while being rotated (already under the active key by then).
    pub skipped: usize,
    /// Secrets that could not be opened: (secret id, reason). Nothing about their values.
    pub failed: Vec<(String, String)>,
}

/// Re-seals everything under `keyring`'s active key.
pub async fn rotate(store: &Store, keyring: &Keyring) -> Result<RotationReport, StoreError> {
    let active = keyring.active_key_id().to_owned();
    let mut report = RotationReport::default();
    let mut after: Option<String> = None;
    loop {
        let batch = store
            .secrets_not_under_key(&active, after.as_deref(), 100)
            .await?;
        let Some(last) = batch.last() else { break };
        after = Some(last.id.clone());
        for row in batch {
            let ctx = SealContext {
                tenant_id: &row.tenant_id,
                secret_id: &row.id,
                version: row.version,
            };
            let resealed = keyring
                .open(&row.sealed(), ctx)
                .and_then(|plain| keyring.seal(&plain, ctx));
            match resealed {
                Ok(Sealed {
                    key_id,
                    nonce,
                    ciphertext,
                }) => {
                    if store
                        .reseal_secret(&row, &key_id, &nonce, &ciphertext)
                        .await?
                    {
                        report.resealed += 1;
                    } else {
                        report.skipped += 1;
                    }
                }
                Err(err) => report.failed.push((row.id.clone(), err.to_string())),
            }
        }
    }
    let mut audit = AuditEntry::new(
        None,
        Actor::Cli,
        AuditAction::KeysRotate,
        AuditTarget::new(TargetKind::EncryptionKey, Some(&active), None),
    );
    if !report.failed.is_empty() {
        audit.outcome = Outcome::Failed;
    }
    store.record_audit(&audit).await?;
    Ok(report)
}
