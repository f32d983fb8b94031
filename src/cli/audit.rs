//! `runta audit`: `list` reads the trail through the admin API (a tenant's key sees its
//! tenant, `--operator` every tenant); `verify` is a server-side command, like `migrate`: it
//! loads the configuration, reads the database directly (never writes it, never migrates it)
//! and recomputes the hash chain. Exit 0: intact; 1: broken (the first seq that does not hold,
//! and why) or the database cannot be read.

use secrecy::ExposeSecret;
use serde_json::json;

use super::client::{Caller, CliError, Client};
use super::output::{self, or_dash};
use super::server::{load_store_config, usage};
use super::{AuditListArgs, AuditVerifyArgs, Output};
use crate::admin::views::AuditEvent;
use crate::bootstrap;
use crate::store::{ChainVerdict, Store};

fn event_row(event: &AuditEvent) -> Vec<String> {
    let mut target = event.target_kind.clone();
    if let Some(id) = &event.target_id {
        target.push(' ');
        target.push_str(id);
    }
    if let Some(name) = &event.target_name {
        target.push_str(&format!(" ({name})"));
    }
    vec![
        event.seq.to_string(),
        event.time.clone(),
        or_dash(event.tenant_id.as_deref()),
        event.actor.clone(),
        event.action.clone(),
        target,
        event.outcome.clone(),
        or_dash(event.request_id.as_deref()),
    ]
}

/// `runta audit list`: every event the caller may see that passes the filters, in seq order.
pub async fn list(args: &AuditListArgs, client: &Client, out: Output) -> Result<(), CliError> {
    let mut query = Vec::new();
    for (key, value) in [
        ("since", &args.since),
        ("until", &args.until),
        ("action", &args.action),
        ("target_kind", &args.target_kind),
        ("target_id", &args.target_id),
    ] {
        if let Some(value) = value {
            query.push(format!("{key}={}", crate::percent::encode(value)));
        }
    }
    let path = if query.is_empty() {
        "/v1/audit-events".to_owned()
    } else {
        format!("/v1/audit-events?{}", query.join("&"))
    };
    let caller = if args.operator {
        Caller::Operator
    } else {
        Caller::Tenant
    };
    let events = client.list_all(caller, &path).await?;
    output::list(
        out,
        &events,
        &[
            "SEQ", "TIME", "TENANT", "ACTOR", "ACTION", "TARGET", "OUTCOME", "REQUEST",
        ],
        event_row,
    )
}

/// `runta audit verify`: recomputes the chain from the database.
pub async fn verify(args: &AuditVerifyArgs) -> Result<(), CliError> {
    let config = load_store_config(&args.store)?;
    let database = bootstrap::existing_database(&config).map_err(usage)?;
    let store = Store::connect(database.url.expose_secret(), 1)
        .await
        .map_err(usage)?;
    match store.verify_audit_chain().await.map_err(usage)? {
        ChainVerdict::Intact { events } => {
            output::done(
                args.output.output,
                &json!({"intact": true, "events": events}),
                || {
                    format!(
                        "The audit trail is intact: {events} event(s), each hash and link checked."
                    )
                },
            );
            Ok(())
        }
        ChainVerdict::Broken { seq, reason } => {
            if args.output.output == Output::Json {
                output::json(&json!({"intact": false, "seq": seq, "reason": reason}));
            }
            Err(CliError::Usage(format!(
                "the audit trail is broken at seq {seq}: {reason}"
            )))
        }
    }
}
