//! Properties of the pure parts, over generated input (bounded case counts, so the suite stays
//! fast): the host and path pattern parsers, the path normaliser, the template renderer, the
//! query rewrite and `decide` never panic; normal forms are fixed points; a rule never matches
//! a host it does not cover; the rewrite keeps every other byte of the query.

use proptest::prelude::*;
use runta::config::Unidentified;
use runta::extproc::decide::{Outcome, RequestView, Sidecar, decide};
use runta::extproc::mutation::rewrite_query;
use runta::rules::request::normalise_path;
use runta::rules::snapshot::{RuntimeDigest, Snapshot, Template};
use runta::rules::{
    DraftFields, HostPattern, PathPattern, Rule, RuleDraft, RuleSpec, TargetFields,
};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Text that looks like what attackers send: URL punctuation, escapes, dots, case.
fn urlish() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-zA-Z0-9./:@%*?&=#\\[\\]_~+ -]{0,40}").unwrap()
}

fn label() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-z0-9]{1,6}").unwrap()
}

fn host_name() -> impl Strategy<Value = String> {
    proptest::collection::vec(label(), 1..5).prop_map(|labels| labels.join("."))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn host_patterns_parse_without_panic_and_normal_forms_are_fixed(input in urlish()) {
        if let Ok(pattern) = HostPattern::parse(&input) {
            let again = HostPattern::parse(&pattern.to_string()).expect("a normal form parses");
            prop_assert_eq!(again, pattern);
        }
    }

    #[test]
    fn path_patterns_parse_without_panic_and_normal_forms_are_fixed(input in urlish()) {
        if let Ok(pattern) = PathPattern::parse(&input) {
            let again = PathPattern::parse(pattern.as_str()).expect("a normal form parses");
            prop_assert_eq!(again.as_str(), pattern.as_str());
        }
    }

    #[test]
    fn path_normalisation_is_idempotent(input in urlish()) {
        let path = format!("/{input}");
        let (once, _) = normalise_path(&path);
        let (twice, _) = normalise_path(&once);
        prop_assert_eq!(&*twice, &*once);
    }

    #[test]
    fn templates_put_the_secret_in_every_placeholder(
        pieces in proptest::collection::vec("[ -~]{0,8}", 1..4),
        secret in "[ -~]{0,16}",
    ) {
        // Pieces without `$` cannot form another placeholder.
        let pieces: Vec<String> = pieces.iter().map(|p| p.replace('$', "")).collect();
        let template = pieces.join("${credential}");
        let rendered = Template::new(&template).render(&secret);
        let expected = pieces.join(&secret);
        prop_assert_eq!(rendered.as_slice(), expected.as_bytes());
    }

    #[test]
    fn the_query_rewrite_keeps_every_other_byte(
        path in "/[a-z/]{0,10}",
        pairs in proptest::collection::vec(("[a-z%0-9]{0,5}", "[a-zA-Z0-9%=+]{0,6}"), 0..5),
        value in "[ -~]{0,12}",
    ) {
        let query: Vec<String> = pairs
            .iter()
            .map(|(k, v)| if v.is_empty() { k.clone() } else { format!("{k}={v}") })
            .collect();
        let raw = if query.is_empty() { path.clone() } else { format!("{path}?{}", query.join("&")) };
        let rewritten = rewrite_query(&raw, &[("key", value.as_bytes())]);
        let text = std::str::from_utf8(&rewritten).unwrap();
        let (head, rest) = text.split_once('?').expect("the parameter is there");
        prop_assert_eq!(head, path.as_str());
        let mut kept = Vec::new();
        let mut set = 0;
        for pair in rest.split('&') {
            let key = pair.split('=').next().unwrap();
            if key == "key" || key == "k%65y" || key == "%6Bey" || key == "%6bey" {
                set += 1;
            } else {
                kept.push(pair);
            }
        }
        prop_assert!(set >= 1);
        // Every pair that was not the parameter is there, in order, byte for byte.
        // (An empty query, `/path?`, has no pair to keep: the parameter takes its place.)
        let joined = query.join("&");
        let original: Vec<&str> = joined
            .split('&')
            .filter(|_| !joined.is_empty())
            .filter(|pair| {
                let key = pair.split('=').next().unwrap();
                percent_decoded(key) != "key"
            })
            .collect();
        prop_assert_eq!(kept, original);
    }

    #[test]
    fn decide_never_panics(
        method in "[A-Z]{0,7}",
        authority in urlish(),
        path in urlish(),
        proxy in proptest::option::of(urlish()),
    ) {
        let snapshot = snapshot_with(&[("api.openai.com", Some("/v1/*")), ("*.example.com", None)]);
        let request = RequestView {
            method: &method,
            scheme: "http",
            authority: &authority,
            path: Some(&path),
            proxy_authorization: proxy.as_deref(),
            tunnel: None,
        };
        let sidecar = Some(Sidecar { tenant: "acme", runtime: "worker" });
        let _ = decide(&snapshot, sidecar, &request, Unidentified::Pass);
        let _ = decide(&snapshot, None, &request, Unidentified::Deny);
    }

    #[test]
    fn a_rule_never_matches_a_host_it_does_not_cover(
        pattern_host in host_name(),
        wildcard in any::<bool>(),
        request_host in host_name(),
        prefix in proptest::option::of(label()),
    ) {
        let pattern = if wildcard { format!("*.{pattern_host}") } else { pattern_host.clone() };
        let Ok(_) = HostPattern::parse(&pattern) else { return Ok(()); };
        // Sometimes a name below the pattern's, so matches happen too.
        let host = match prefix {
            Some(p) => format!("{p}.{pattern_host}"),
            None => request_host,
        };
        let snapshot = snapshot_with(&[(&pattern, None)]);
        let request = RequestView {
            method: "GET",
            scheme: "http",
            authority: &host,
            path: Some("/"),
            proxy_authorization: None,
            tunnel: None,
        };
        let decision = decide(&snapshot, Some(Sidecar { tenant: "acme", runtime: "worker" }), &request, Unidentified::Pass);
        let covered = if wildcard {
            host.ends_with(&format!(".{pattern_host}"))
        } else {
            host == pattern_host
        };
        prop_assert_eq!(decision.outcome == Outcome::Inject, covered, "{} vs {}", pattern, host);
    }
}

/// One generated rule: (runtime index, host, path, header index).
type GenRule = (usize, &'static str, Option<&'static str>, usize);

const RUNTIMES: [&str; 3] = ["worker", "batch", "agent"];
const HOSTS: [&str; 5] = [
    "api.example.com",
    "*.example.com",
    "api.example.com:8443",
    "*.api.example.com",
    "other.test",
];
const PATHS: [Option<&str>; 4] = [None, Some("/v1/*"), Some("/v1/chat/*"), Some("/v1")];
const HEADERS: [&str; 2] = ["authorization", "x-key"];

fn gen_rule() -> impl Strategy<Value = GenRule> {
    (
        0..RUNTIMES.len(),
        0..HOSTS.len(),
        0..PATHS.len(),
        0..HEADERS.len(),
    )
        .prop_map(|(r, h, p, t)| (r, HOSTS[h], PATHS[p], t))
}

/// A stored rule: tenant `ten_a` for runtimes but the last, which is tenant `ten_b`'s.
fn stored(id: usize, (runtime, host, path, header): GenRule) -> Rule {
    let draft = RuleDraft {
        runtime: RUNTIMES[runtime],
        host,
        path,
        credential: "key",
        target: TargetFields {
            header: Some(HEADERS[header].to_owned()),
            param: None,
        },
        value: None,
    };
    Rule {
        id: format!("rule_{id:04}"),
        tenant_id: if runtime == RUNTIMES.len() - 1 {
            "ten_b"
        } else {
            "ten_a"
        }
        .into(),
        spec: RuleSpec::from_draft(&draft, &DraftFields::SINGLE).unwrap(),
    }
}

/// What every runtime's requests to a set of destinations get: (rule ids, outcome) each.
fn decisions(snapshot: &Snapshot) -> Vec<(Vec<String>, Outcome)> {
    let mut out = Vec::new();
    for (i, runtime) in RUNTIMES.iter().enumerate() {
        let tenant = if i == RUNTIMES.len() - 1 {
            "umbrella"
        } else {
            "acme"
        };
        for authority in [
            "api.example.com",
            "api.example.com:8443",
            "a.api.example.com",
            "x.example.com",
            "other.test",
        ] {
            for path in ["/", "/v1", "/v1/chat/x", "/v2"] {
                let request = RequestView {
                    method: "GET",
                    scheme: "http",
                    authority,
                    path: Some(path),
                    proxy_authorization: None,
                    tunnel: None,
                };
                let d = decide(
                    snapshot,
                    Some(Sidecar { tenant, runtime }),
                    &request,
                    Unidentified::Pass,
                );
                out.push((
                    d.rules.iter().map(|r| r.id.to_string()).collect(),
                    d.outcome,
                ));
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(config())]

    /// Creates (single and batches over several runtimes), deletes and runtime re-reads,
    /// applied as deltas (`Snapshot::edit`, several per edit as concurrent changes coalesce)
    /// give exactly the decisions of a snapshot rebuilt from the rules that remain, and the
    /// same rule count and leaf-certificate coverage.
    #[test]
    fn deltas_equal_a_full_rebuild(
        ops in proptest::collection::vec(
            (0..4u8, proptest::collection::vec(gen_rule(), 1..4), any::<proptest::sample::Index>(), any::<bool>()),
            1..40,
        ),
    ) {
        let tenants = || [("ten_a".to_owned(), "acme".to_owned()), ("ten_b".to_owned(), "umbrella".to_owned())];
        let mut live: Vec<Rule> = Vec::new();
        let mut snapshot = Snapshot::build(tenants(), &[], Vec::new());
        let mut edit = snapshot.edit();
        let mut next_id = 0;
        for (kind, generated, pick, swap_after) in ops {
            match kind {
                // A create: one rule, or a batch spread over runtimes.
                0 | 1 => {
                    let batch: Vec<Rule> = generated
                        .into_iter()
                        .take(if kind == 0 { 1 } else { 3 })
                        .map(|g| {
                            next_id += 1;
                            stored(next_id, g)
                        })
                        .collect();
                    live.extend(batch.iter().cloned());
                    edit.add_rules(&batch);
                }
                // A delete of one live rule.
                2 if !live.is_empty() => {
                    let gone = live.remove(pick.index(live.len()));
                    edit.remove_rules(&gone.tenant_id, &gone.spec.runtime, std::slice::from_ref(&gone.id));
                }
                // A runtime re-read from the store (the previous version's announcement).
                _ if !live.is_empty() => {
                    let of = live[pick.index(live.len())].clone();
                    let rules: Vec<Rule> = live
                        .iter()
                        .filter(|r| r.tenant_id == of.tenant_id && r.spec.runtime == of.spec.runtime)
                        .cloned()
                        .collect();
                    edit.replace_runtime(&of.tenant_id, &of.spec.runtime, &rules);
                }
                _ => {}
            }
            if swap_after {
                let done = std::mem::replace(&mut edit, Snapshot::empty().edit());
                snapshot = done.finish();
                edit = snapshot.edit();
            }
        }
        snapshot = edit.finish();
        live.sort_by(|a, b| a.id.cmp(&b.id));
        let rebuilt = Snapshot::build(tenants(), &live, Vec::new());
        prop_assert_eq!(snapshot.rule_count(), rebuilt.rule_count());
        prop_assert_eq!(decisions(&snapshot), decisions(&rebuilt));
        for name in ["api.example.com", "a.example.com", "b.api.example.com", "other.test", "example.com"] {
            prop_assert_eq!(snapshot.any_rule_covers(name), rebuilt.any_rule_covers(name), "{}", name);
        }
    }
}

proptest! {
    #![proptest_config(config())]

    /// The periodic safety net compares digests instead of rebuilding: whatever the snapshot
    /// holds and whatever the store holds (rules the snapshot never heard of, rules deleted
    /// behind its back), re-reading the runtimes whose digests differ gives exactly the
    /// decisions of a snapshot built from the store.
    #[test]
    fn reconciling_equals_a_rebuild_from_the_store(
        held in proptest::collection::vec((gen_rule(), any::<bool>()), 0..30),
        unheard in proptest::collection::vec(gen_rule(), 0..10),
    ) {
        let tenants = || [("ten_a".to_owned(), "acme".to_owned()), ("ten_b".to_owned(), "umbrella".to_owned())];
        let mut in_snapshot = Vec::new();
        let mut in_store = Vec::new();
        for (n, (generated, kept)) in held.into_iter().enumerate() {
            let rule = stored(n, generated);
            in_snapshot.push(rule.clone());
            if kept {
                in_store.push(rule);
            }
        }
        for (n, generated) in unheard.into_iter().enumerate() {
            in_store.push(stored(1000 + n, generated));
        }
        let snapshot = Snapshot::build(tenants(), &in_snapshot, Vec::new());
        let differing = snapshot.runtimes_differing(&RuntimeDigest::of(&in_store));
        let mut edit = snapshot.edit();
        // As the safety net repairs them: the runtime's ids from the store, then what it
        // lacks added and what it holds too many of removed.
        for (tenant_id, runtime) in &differing {
            let rules: Vec<&Rule> = in_store
                .iter()
                .filter(|r| &r.tenant_id == tenant_id && &r.spec.runtime == runtime)
                .collect();
            let ids: Vec<String> = rules.iter().map(|r| r.id.clone()).collect();
            let (lacking, extra) = snapshot.runtime_difference(tenant_id, runtime, &ids);
            prop_assert!(!lacking.is_empty() || !extra.is_empty(), "{}/{} differs", tenant_id, runtime);
            edit.remove_rules(tenant_id, runtime, &extra);
            let lacking: Vec<Rule> = rules
                .into_iter()
                .filter(|r| lacking.contains(&r.id))
                .cloned()
                .collect();
            edit.add_rules(&lacking);
        }
        let reconciled = edit.finish();
        let rebuilt = Snapshot::build(tenants(), &in_store, Vec::new());
        prop_assert_eq!(reconciled.rule_count(), rebuilt.rule_count());
        prop_assert_eq!(decisions(&reconciled), decisions(&rebuilt));
    }
}

fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(v) = u8::from_str_radix(
                std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                16,
            )
        {
            out.push(v);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A snapshot of tenant `acme`, runtime `worker`, one header rule per (host, path).
fn snapshot_with(rules: &[(&str, Option<&str>)]) -> Snapshot {
    let rules: Vec<Rule> = rules
        .iter()
        .enumerate()
        .map(|(i, (host, path))| {
            let draft = RuleDraft {
                runtime: "worker",
                host,
                path: *path,
                credential: "key",
                target: TargetFields {
                    header: Some(format!("x-key-{i}")),
                    param: None,
                },
                value: None,
            };
            Rule {
                id: format!("rule_{i:03}"),
                tenant_id: "ten_a".into(),
                spec: RuleSpec::from_draft(&draft, &DraftFields::SINGLE).unwrap(),
            }
        })
        .collect();
    Snapshot::build(
        [("ten_a".to_owned(), "acme".to_owned())],
        &rules,
        Vec::new(),
    )
}
