//! `runta secret rule`: add rules one at a time or from a YAML rule file (all or none), list
//! them per runtime or tenant-wide, show and delete them.

use reqwest::Method;
use serde::Serialize;
use serde_json::{Value, json};

use super::client::{Caller, CliError, Client, segment};
use super::output::{self, or_dash};
use super::{Output, RuleAddArgs, RuleCommand};
use crate::admin::views::{Injection, List, Rule};

const RULE_HEADERS: &[&str] = &[
    "ID",
    "RUNTIME",
    "HOST",
    "PATH",
    "CREDENTIAL",
    "INJECT",
    "VALUE",
];

fn rule_row(rule: &Rule) -> Vec<String> {
    vec![
        rule.id.clone(),
        rule.runtime.clone(),
        rule.host_pattern.clone(),
        or_dash(rule.path_pattern.as_deref()),
        rule.injection.credential.clone(),
        target(&rule.injection),
        rule.injection.value.clone(),
    ]
}

/// Where a rule's value goes, for people: `header NAME` or `param NAME`.
fn target(injection: &Injection) -> String {
    match (&injection.target.header, &injection.target.param) {
        (Some(header), _) => format!("header {header}"),
        (_, Some(param)) => format!("param {param}"),
        (None, None) => "-".to_owned(),
    }
}

/// The body of `POST /v1/runtimes/{runtime}/rules`; unset fields are left out.
#[derive(Serialize)]
struct NewRule<'a> {
    host: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
    injection: NewInjection<'a>,
}

#[derive(Serialize)]
struct NewInjection<'a> {
    credential: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    header: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    param: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a str>,
}

/// Runs one `runta secret rule` command.
pub async fn run(command: RuleCommand, client: &Client, out: Output) -> Result<(), CliError> {
    match command {
        RuleCommand::Add(args) => add_rules(args, client, out).await,
        RuleCommand::List { runtime } => {
            let path = match &runtime {
                Some(runtime) => format!("/v1/runtimes/{}/rules", segment(runtime)),
                None => "/v1/rules".to_owned(),
            };
            let rules = client.list_all(Caller::Tenant, &path).await?;
            output::list(out, &rules, RULE_HEADERS, rule_row)
        }
        RuleCommand::Get { rule_id } => {
            let rule = client
                .call(
                    Caller::Tenant,
                    Method::GET,
                    &format!("/v1/rules/{}", segment(&rule_id)),
                    None::<&()>,
                )
                .await?;
            output::item(out, &rule, RULE_HEADERS, rule_row)
        }
        RuleCommand::Delete { rule_id } => {
            client
                .call(
                    Caller::Tenant,
                    Method::DELETE,
                    &format!("/v1/rules/{}", segment(&rule_id)),
                    None::<&()>,
                )
                .await?;
            output::done(out, &json!({"deleted": rule_id}), || {
                format!("Deleted rule {rule_id}.")
            });
            Ok(())
        }
    }
}

/// `runta secret rule add`: one rule from the flags, or a rule file through the batch call.
async fn add_rules(args: RuleAddArgs, client: &Client, out: Output) -> Result<(), CliError> {
    if let Some(file) = &args.file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", file.display())))?;
        let body: Value = serde_saphyr::from_str(&text).map_err(|e| {
            CliError::Usage(format!(
                "{}: not a valid YAML rule file: {e}",
                file.display()
            ))
        })?;
        if body.get("rules").is_none() {
            return Err(CliError::Usage(format!(
                "{}: a rule file holds a top-level 'rules:' list",
                file.display()
            )));
        }
        let created = client
            .call(Caller::Tenant, Method::POST, "/v1/rules/batch", Some(&body))
            .await?;
        match out {
            Output::Json => output::json(&created),
            Output::Table => {
                let rules: List<Rule> = output::view(&created)?;
                println!(
                    "Created {} rule(s) from {}.",
                    rules.data.len(),
                    file.display()
                );
                output::table(
                    RULE_HEADERS,
                    &rules.data.iter().map(rule_row).collect::<Vec<_>>(),
                );
            }
        }
        return Ok(());
    }
    let (Some(runtime), Some(host), Some(credential)) =
        (&args.runtime, &args.host, &args.credential)
    else {
        return Err(CliError::Usage(
            "give RUNTIME, --host and --credential, or -f FILE".into(),
        ));
    };
    if args.inject_header.is_none() && args.inject_param.is_none() {
        return Err(CliError::Usage(
            "give --inject-header NAME or --inject-param NAME".into(),
        ));
    }
    let body = NewRule {
        host,
        path: args.path.as_deref(),
        injection: NewInjection {
            credential,
            header: args.inject_header.as_deref(),
            param: args.inject_param.as_deref(),
            value: args.inject_value.as_deref(),
        },
    };
    let created = client
        .call(
            Caller::Tenant,
            Method::POST,
            &format!("/v1/runtimes/{}/rules", segment(runtime)),
            Some(&body),
        )
        .await?;
    output::one(out, &created, |rule: Rule| {
        format!(
            "Created rule {} for runtime {}: {}{} gets {}.",
            rule.id,
            rule.runtime,
            rule.host_pattern,
            rule.path_pattern.as_deref().unwrap_or(""),
            target(&rule.injection),
        )
    })
}
