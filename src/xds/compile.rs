//! The rule compiler: one runtime's rules as the route table of its sidecar's egress listener,
//! so that Envoy injects the common case itself (`header_mutation` with `%SECRET(name)%`, the
//! secret pushed over SDS) and never calls ext_proc for it.
//!
//! The invariant: for every request, what a compiled route does equals what `decide()` and the
//! ext_proc path do. Everything the compiler cannot express exactly is left to ext_proc, route
//! by route, never dropped:
//! - every virtual host starts with the static configuration's guard and CONNECT routes, then
//!   sends requests whose matching runta does differently from Envoy (a `%`, `\` or `#` in the
//!   request target, a method that echoes the request back, a scheme other than plain HTTP)
//!   to ext_proc;
//! - a set of rules whose winners include a query parameter target (Envoy moves the parameter
//!   to the end of the query; runta leaves the rest of the query byte for byte), a secret with
//!   `cache_ttl_secs = 0` (it must not sit in Envoy's memory) or a secret the store could not
//!   answer for now stays on ext_proc;
//! - a host whose rules would need more than [`MAX_ROUTES_PER_HOST`] routes, or that is no DNS
//!   name, gets no virtual host of its own: the catch-all virtual host (ext_proc) serves it.
//!
//! A request that reaches the end of a compiled virtual host matches none of its rules: it
//! goes on unchanged without ext_proc (route `pass`).
//!
//! The sidecar's ext_proc filter is off by default ([`extproc_enabled`]): every route that needs
//! ext_proc turns it on, and native routes also say so explicitly (disabled), so they stay
//! native with a configuration whose filter is on.
//!
//! Envoy picks exactly one virtual host per request (exact name, then longest `*.suffix`, then
//! `*`) and never falls back to another, so every virtual host carries every rule that applies
//! to its names: an exact host gets the wildcard rules covering it, a wildcard the wider
//! wildcards. Within a host, the request's set of matching rules decides what is injected; the
//! compiler emits one route per set of rules that can match together (their ports agree and
//! their path globs intersect), larger sets first, so the first route that matches a request
//! is the route of exactly its matching set. The winners of a set (one per target, the most
//! specific) are chosen by the very function ext_proc uses ([`RuntimeRules::winners`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::common::mutation_rules::v3::{HeaderMutation, header_mutation};
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, DataSource, HeaderValue, HeaderValueOption,
    TypedExtensionConfig, config_source, data_source, header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, FilterConfig, HeaderMatcher, Route, RouteAction, RouteConfiguration,
    RouteMatch, VirtualHost, header_matcher, route, route_action, route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::RbacPerRoute;
use envoy_types::pb::envoy::extensions::formatter::generic_secret::v3::GenericSecret;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::SdsSecretConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::{Any, Duration};
use prost::{Message, Name};

use crate::envoy::{
    AUTHORITY_REGEX, BAD_AUTHORITY_BODY, BAD_CONNECT_TARGET_BODY, CONNECT_ROUTE_HEADER,
    CONNECT_TARGET_REGEX, FORWARDED_HEADERS_REMOVED,
};
use crate::extproc::refusal::Refusal;
use crate::rules::snapshot::{CompiledRule, PathGlob, RuntimeRules, SecretRef};
use crate::rules::target::CompiledTarget;

/// The type of the route tables served over ADS.
pub const ROUTE_TYPE_URL: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// A host whose rules need more routes than this is left to ext_proc (the number of routes
/// grows with the combinations of path patterns that can match together).
pub const MAX_ROUTES_PER_HOST: usize = 128;

/// The route table a sidecar of `runtime` asks for (`rds.route_config_name`).
pub fn route_table_name(runtime: &str) -> String {
    format!("runta/{runtime}")
}

/// The SDS name (and `%SECRET()%` key) of a tenant's secret in its sidecars.
pub fn secret_resource_name(credential: &str) -> String {
    format!("runta.secret.{credential}")
}

/// What the compiler may do with a secret a rule names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretUse {
    /// Envoy may hold it: the value is pushed over SDS and injected natively.
    Native,
    /// ext_proc injects it: `cache_ttl_secs = 0`, or the store could not answer now.
    ExtProc,
    /// It cannot be had (deleted, does not decrypt): a matching request gets 503 naming the
    /// rule, exactly as ext_proc answers.
    Unavailable,
}

/// A compiled route table: its virtual hosts, shared with the compilation before it where
/// their rules and secrets did not change.
#[derive(Debug, Clone)]
pub struct RouteTable {
    name: String,
    /// The compiled hosts, by domain; the catch-all comes after them.
    hosts: Vec<Arc<CompiledHost>>,
    /// SDS resource name → the secret, for every secret a native route injects.
    pub secrets: BTreeMap<String, Arc<SecretRef>>,
    /// Rules with at least one native route, and rules left to ext_proc entirely.
    pub native_rules: usize,
    pub extproc_rules: usize,
}

impl RouteTable {
    /// The table as Envoy takes it (for tests: runta sends [`RouteTable::encode`]).
    #[cfg(test)]
    pub fn config(&self) -> RouteConfiguration {
        let mut config = self.base();
        let catch_all = config.virtual_hosts.pop();
        config.virtual_hosts = self
            .hosts
            .iter()
            .map(|host| VirtualHost::decode(host.encoded.as_slice()).expect("encoded here"))
            .chain(catch_all)
            .collect();
        config
    }

    /// The table encoded: each host's virtual host was encoded when it was compiled, so a
    /// table of thousands of hosts costs a copy, not an encoding (protobuf concatenates the
    /// items of a repeated field; Envoy picks virtual hosts by domain, not by order).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.base().encode_to_vec();
        let size: usize = self.hosts.iter().map(|h| h.encoded.len() + 16).sum();
        out.reserve(size);
        for host in &self.hosts {
            prost::encoding::encode_key(
                VIRTUAL_HOSTS_FIELD,
                prost::encoding::WireType::LengthDelimited,
                &mut out,
            );
            prost::encoding::encode_varint(host.encoded.len() as u64, &mut out);
            out.extend_from_slice(&host.encoded);
        }
        out
    }

    /// Virtual hosts in the table, the catch-all included.
    pub fn virtual_hosts(&self) -> usize {
        self.hosts.len() + 1
    }

    /// The table without its compiled hosts: name, port handling and the catch-all (every
    /// other host, exactly as the static configuration routes it).
    fn base(&self) -> RouteConfiguration {
        let mut routes = guard_routes();
        routes.push(forward_route("forward", RouteKind::ExtProc));
        RouteConfiguration {
            name: self.name.clone(),
            virtual_hosts: vec![VirtualHost {
                name: "egress".into(),
                domains: vec!["*".into()],
                routes,
                ..Default::default()
            }],
            // Ports are matched by the routes (`:authority`), names by the virtual hosts.
            ignore_port_in_host_matching: true,
            ..Default::default()
        }
    }

    /// Whether the two tables are the same (compiled from the same rules and secrets).
    pub fn same_as(&self, other: &RouteTable) -> bool {
        self.name == other.name
            && self.hosts.len() == other.hosts.len()
            && self
                .hosts
                .iter()
                .zip(&other.hosts)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

/// Compiles one runtime's rules again and again, recompiling only the hosts whose rules or
/// secrets changed: a rule added or a secret rotated costs its host, not the runtime.
#[derive(Debug)]
pub struct Compiler {
    name: String,
    /// Domain → what its host was compiled from, and the result (`None`: left to ext_proc).
    cache: HashMap<String, Cached>,
}

#[derive(Debug)]
struct Cached {
    rules: Vec<Arc<CompiledRule>>,
    uses: Vec<SecretUse>,
    host: Option<Arc<CompiledHost>>,
}

impl Compiler {
    /// A compiler of the route table `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            cache: HashMap::new(),
        }
    }

    /// Compiles the runtime's rules (`None`: it has none). `secret_use` tells, for every
    /// secret the rules name, whether Envoy may hold it.
    pub fn compile(
        &mut self,
        rules: Option<&RuntimeRules>,
        secret_use: impl Fn(&SecretRef) -> SecretUse,
    ) -> RouteTable {
        let mut table = RouteTable {
            name: self.name.clone(),
            hosts: Vec::new(),
            secrets: BTreeMap::new(),
            native_rules: 0,
            extproc_rules: 0,
        };
        let mut native_ids = HashSet::new();
        let mut all_ids = HashSet::new();
        let mut cache = HashMap::with_capacity(self.cache.len());
        for (domain, host_rules) in rules.map(hosts).unwrap_or_default() {
            let uses: Vec<SecretUse> = host_rules.iter().map(|r| secret_use(&r.secret)).collect();
            let cached = match self.cache.remove(&domain) {
                Some(cached)
                    if cached.uses == uses
                        && cached.rules.len() == host_rules.len()
                        && cached
                            .rules
                            .iter()
                            .zip(&host_rules)
                            .all(|(a, b)| Arc::ptr_eq(a, b)) =>
                {
                    cached
                }
                _ => {
                    let host = compile_host(&domain, &host_rules, &secret_use).map(Arc::new);
                    Cached {
                        rules: host_rules.into_iter().cloned().collect(),
                        uses,
                        host,
                    }
                }
            };
            for rule in &cached.rules {
                all_ids.insert(&rule.id as *const _ as usize);
            }
            if let Some(host) = &cached.host {
                native_ids.extend(host.native_rules.iter().map(|r| Arc::as_ptr(r) as usize));
                for secret in &host.secrets {
                    table
                        .secrets
                        .insert(secret_resource_name(&secret.credential), secret.clone());
                }
                table.hosts.push(host.clone());
            }
            cache.insert(domain, cached);
        }
        self.cache = cache;
        table.native_rules = native_ids.len();
        table.extproc_rules = all_ids.len() - native_ids.len();
        table
    }
}

/// Compiles a runtime's rules once (see [`Compiler`]).
pub fn compile(
    name: &str,
    rules: Option<&RuntimeRules>,
    secret_use: impl Fn(&SecretRef) -> SecretUse,
) -> RouteTable {
    Compiler::new(name).compile(rules, secret_use)
}

/// Every virtual host the rules need: its domain and the rules that apply to its names,
/// in a stable order. An exact host gets the wildcards above it; a wildcard the wider ones.
fn hosts(rules: &RuntimeRules) -> BTreeMap<String, Vec<&Arc<CompiledRule>>> {
    let mut exact: BTreeMap<&str, Vec<&Arc<CompiledRule>>> = BTreeMap::new();
    let mut wildcard: HashMap<&str, Vec<&Arc<CompiledRule>>> = HashMap::new();
    for rule in rules.rules() {
        match rule.host() {
            (host, true) => exact.entry(host).or_default().push(rule),
            (suffix, false) => wildcard.entry(suffix).or_default().push(rule),
        }
    }
    // The wildcard rules whose suffix is one of the name's proper suffixes (`*.b.c` covers
    // `a.b.c`, whose suffixes are `b.c` and `c`).
    fn covering<'r>(
        wildcard: &HashMap<&str, Vec<&'r Arc<CompiledRule>>>,
        name: &str,
        out: &mut Vec<&'r Arc<CompiledRule>>,
    ) {
        let mut rest = name;
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            if let Some(rules) = wildcard.get(rest) {
                out.extend(rules.iter().copied());
            }
        }
    }
    let mut out = BTreeMap::new();
    for (host, rules) in &exact {
        let mut all = rules.clone();
        covering(&wildcard, host, &mut all);
        out.insert((*host).to_owned(), all);
    }
    for (suffix, rules) in &wildcard {
        let mut all = rules.clone();
        covering(&wildcard, suffix, &mut all);
        out.insert(format!("*.{suffix}"), all);
    }
    out
}

/// `RouteConfiguration.virtual_hosts`.
const VIRTUAL_HOSTS_FIELD: u32 = 2;

/// One compiled virtual host.
#[derive(Debug)]
struct CompiledHost {
    /// The virtual host, encoded (kept only so).
    encoded: Vec<u8>,
    /// The secrets its native routes inject.
    secrets: Vec<Arc<SecretRef>>,
    /// The rules with a native route here.
    native_rules: Vec<Arc<CompiledRule>>,
}

/// How a route sends the request on.
enum RouteKind {
    /// Through ext_proc, as the static configuration does.
    ExtProc,
    /// Natively: ext_proc disabled, these header mutations (none: nothing to inject).
    Native(Vec<HeaderMutation>, GenericSecret),
}

/// The virtual host of `domain` with these rules; `None` when the host is left to the
/// catch-all (ext_proc).
fn compile_host(
    domain: &str,
    rules: &[&Arc<CompiledRule>],
    secret_use: &impl Fn(&SecretRef) -> SecretUse,
) -> Option<CompiledHost> {
    let name = domain.strip_prefix("*.").unwrap_or(domain);
    // Envoy's domain matching and runta's agree on DNS names; anything else (an IPv6
    // literal) stays with ext_proc.
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return None;
    }
    let plain: Vec<&CompiledRule> = rules.iter().map(|r| &***r).collect();
    let sets = matching_sets(&plain)?;
    let mut routes = guard_routes();
    routes.extend(diverted_routes());
    let mut secrets: Vec<Arc<SecretRef>> = Vec::new();
    let mut native_rules: Vec<Arc<CompiledRule>> = Vec::new();
    for set in &sets {
        let members: Vec<&CompiledRule> = set.iter().map(|&i| plain[i]).collect();
        let mut winners = RuntimeRules::winners(members.iter().copied());
        winners.sort_by(|a, b| a.id.cmp(&b.id));
        let ids = winners
            .iter()
            .map(|r| r.id.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut route = match native(&winners, secret_use) {
            Plan::ExtProc => forward_route(&format!("extproc:{ids}"), RouteKind::ExtProc),
            Plan::Unavailable(rule) => unavailable_route(&format!("rule:{ids}"), rule),
            Plan::Native(mutations, formatter) => {
                for rule in &winners {
                    if !secrets.iter().any(|s| Arc::ptr_eq(s, &rule.secret)) {
                        secrets.push(rule.secret.clone());
                    }
                    if let Some(shared) = rules.iter().find(|r| std::ptr::eq(Arc::as_ptr(r), *rule))
                        && !native_rules.iter().any(|r| Arc::ptr_eq(r, shared))
                    {
                        native_rules.push((*shared).clone());
                    }
                }
                forward_route(
                    &format!("rule:{ids}"),
                    RouteKind::Native(mutations, formatter),
                )
            }
        };
        route.r#match = Some(set_match(&members));
        routes.push(route);
    }
    // No rule matches, and the diverted routes took every request whose matching runta does
    // differently: ext_proc would let it pass unchanged, so Envoy does. (The catch-all keeps
    // ext_proc: hosts Envoy matches to no virtual host, such as a trailing dot, may still be
    // a rule's to runta.)
    routes.push(forward_route(
        "pass",
        RouteKind::Native(Vec::new(), GenericSecret::default()),
    ));
    let virtual_host = VirtualHost {
        name: domain.to_owned(),
        domains: vec![domain.to_owned()],
        routes,
        ..Default::default()
    };
    Some(CompiledHost {
        encoded: virtual_host.encode_to_vec(),
        secrets,
        native_rules,
    })
}

/// What a set of winners compiles to.
enum Plan<'r> {
    ExtProc,
    Unavailable(&'r CompiledRule),
    Native(Vec<HeaderMutation>, GenericSecret),
}

fn native<'r>(
    winners: &[&'r CompiledRule],
    secret_use: &impl Fn(&SecretRef) -> SecretUse,
) -> Plan<'r> {
    let mut unavailable = None;
    for rule in winners {
        if matches!(*rule.target, CompiledTarget::Param(_)) {
            return Plan::ExtProc;
        }
        match secret_use(&rule.secret) {
            SecretUse::ExtProc => return Plan::ExtProc,
            // ext_proc names the first rule (by id) whose secret it cannot have.
            SecretUse::Unavailable if unavailable.is_none() => unavailable = Some(*rule),
            SecretUse::Unavailable | SecretUse::Native => {}
        }
    }
    if let Some(rule) = unavailable {
        return Plan::Unavailable(rule);
    }
    let mut mutations = Vec::new();
    let mut formatter = GenericSecret::default();
    for rule in winners {
        let CompiledTarget::Header(header) = &*rule.target else {
            unreachable!("parameter targets return above");
        };
        let secret = secret_resource_name(&rule.secret.credential);
        formatter.secret_configs.insert(
            secret.clone(),
            SdsSecretConfig {
                name: secret.clone(),
                sds_config: Some(ads_config_source()),
            },
        );
        let value = rule
            .template
            .pieces()
            .iter()
            .map(|piece| piece.replace('%', "%%"))
            .collect::<Vec<_>>()
            .join(&format!("%SECRET({secret})%"));
        // Overwrite: whatever the runtime sent in this header goes, then the value.
        mutations.push(HeaderMutation {
            action: Some(header_mutation::Action::Remove(header.to_string())),
        });
        mutations.push(HeaderMutation {
            action: Some(header_mutation::Action::Append(HeaderValueOption {
                header: Some(HeaderValue {
                    key: header.to_string(),
                    value,
                    ..Default::default()
                }),
                append_action: HeaderAppendAction::AppendIfExistsOrAdd as i32,
                ..Default::default()
            })),
        });
    }
    Plan::Native(mutations, formatter)
}

/// Every set of rules (indexes into `rules`) that can match one request together, largest
/// first, the empty set left out; `None` when there are more than [`MAX_ROUTES_PER_HOST`].
/// Rules without port and path are in every set.
fn matching_sets(rules: &[&CompiledRule]) -> Option<Vec<Vec<usize>>> {
    let (always, conditional): (Vec<usize>, Vec<usize>) =
        (0..rules.len()).partition(|&i| rules[i].port().is_none() && rules[i].path().is_none());
    let mut sets = Vec::new();
    let mut chosen = Vec::new();
    if !extend_sets(rules, &conditional, 0, &mut chosen, None, &mut sets) {
        return None;
    }
    let mut sets: Vec<Vec<usize>> = sets
        .into_iter()
        .map(|mut set: Vec<usize>| {
            set.extend(&always);
            set.sort_unstable();
            set
        })
        .filter(|set| !set.is_empty())
        .collect();
    sets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    Some(sets)
}

/// Depth-first over the conditional rules from `at`: each leaf is one feasible set. `false`
/// when the sets exceed the bound.
fn extend_sets(
    rules: &[&CompiledRule],
    conditional: &[usize],
    at: usize,
    chosen: &mut Vec<usize>,
    port: Option<u16>,
    out: &mut Vec<Vec<usize>>,
) -> bool {
    if at == conditional.len() {
        out.push(chosen.clone());
        return out.len() <= MAX_ROUTES_PER_HOST;
    }
    if !extend_sets(rules, conditional, at + 1, chosen, port, out) {
        return false;
    }
    let rule = rules[conditional[at]];
    let port = match (port, rule.port()) {
        (Some(a), Some(b)) if a != b => return true,
        (a, b) => a.or(b),
    };
    let mut globs: Vec<&PathGlob> = chosen.iter().filter_map(|&i| rules[i].path()).collect();
    if let Some(glob) = rule.path() {
        globs.push(glob);
        if !globs_intersect(&globs) {
            return true;
        }
    }
    chosen.push(conditional[at]);
    let within = extend_sets(rules, conditional, at + 1, chosen, port, out);
    chosen.pop();
    within
}

/// Whether some path matches every glob. Explores the product of the globs' automata over
/// the bytes they name plus one byte none names; past a bound it answers `true` (a route for
/// a set no request can match is never taken: harmless).
fn globs_intersect(globs: &[&PathGlob]) -> bool {
    const BOUND: usize = 4096;
    if globs.len() < 2 {
        return true;
    }
    // A glob as tokens: `None` is a star.
    let tokens: Vec<Vec<Option<u8>>> = globs
        .iter()
        .map(|glob| {
            let mut out = Vec::new();
            for (i, piece) in glob.pieces().iter().enumerate() {
                if i > 0 {
                    out.push(None);
                }
                out.extend(piece.bytes().map(Some));
            }
            out
        })
        .collect();
    let mut alphabet: BTreeSet<u8> = tokens.iter().flatten().flatten().copied().collect();
    // A byte no glob names stands for every such byte.
    if let Some(other) = (1u8..=255).find(|b| !alphabet.contains(b)) {
        alphabet.insert(other);
    }
    // One glob's state: the set of token positions it may be at (positions past a star are
    // reachable without input).
    let close = |toks: &[Option<u8>], mut state: BTreeSet<usize>| {
        let mut stack: Vec<usize> = state.iter().copied().collect();
        while let Some(p) = stack.pop() {
            if toks.get(p) == Some(&None) && state.insert(p + 1) {
                stack.push(p + 1);
            }
        }
        state
    };
    let start: Vec<BTreeSet<usize>> = tokens
        .iter()
        .map(|toks| close(toks, BTreeSet::from([0])))
        .collect();
    let mut seen = HashSet::from([start.clone()]);
    let mut queue = vec![start];
    while let Some(states) = queue.pop() {
        if states
            .iter()
            .zip(&tokens)
            .all(|(state, toks)| state.contains(&toks.len()))
        {
            return true;
        }
        for &byte in &alphabet {
            let mut next = Vec::with_capacity(states.len());
            for (state, toks) in states.iter().zip(&tokens) {
                let mut moved = BTreeSet::new();
                for &p in state {
                    match toks.get(p) {
                        Some(None) => {
                            moved.insert(p);
                        }
                        Some(Some(b)) if *b == byte => {
                            moved.insert(p + 1);
                        }
                        _ => {}
                    }
                }
                if moved.is_empty() {
                    break;
                }
                next.push(close(toks, moved));
            }
            if next.len() == states.len() && seen.insert(next.clone()) {
                if seen.len() > BOUND {
                    return true;
                }
                queue.push(next);
            }
        }
    }
    false
}

/// The match of a set's route: every member's port and path hold.
fn set_match(members: &[&CompiledRule]) -> RouteMatch {
    let mut headers = Vec::new();
    let port = members.iter().find_map(|r| r.port());
    if let Some(port) = port {
        // Ports are digits; leading zeros read as the same port (runta parses them so).
        let regex = if port == 80 {
            // Plain HTTP (the diverted routes sent every other scheme to ext_proc): no port
            // means 80.
            "^[^:]*(:0*80)?$".to_owned()
        } else {
            format!("^[^:]*:0*{port}$")
        };
        headers.push(regex_header(":authority", &regex, false));
    }
    let globs: Vec<&PathGlob> = members.iter().filter_map(|r| r.path()).collect();
    let path_specifier = match globs.split_first() {
        None => route_match::PathSpecifier::Prefix("/".into()),
        Some((first, rest)) => {
            for glob in rest {
                // `:path` holds the query: a star stops at `?`, and a query may follow.
                let regex = format!("^{}(\\?.*)?$", glob_regex(glob, "[^?]*"));
                headers.push(regex_header(":path", &regex, false));
            }
            match first.pieces()[..] {
                [exact] => route_match::PathSpecifier::Path(exact.to_owned()),
                [prefix, ""] => route_match::PathSpecifier::Prefix(prefix.to_owned()),
                // Envoy matches these against the path without its query.
                _ => route_match::PathSpecifier::SafeRegex(RegexMatcher {
                    regex: format!("^{}$", glob_regex(first, ".*")),
                    ..Default::default()
                }),
            }
        }
    };
    RouteMatch {
        headers,
        path_specifier: Some(path_specifier),
        ..Default::default()
    }
}

/// A glob as an RE2 expression (unanchored), `star` standing for `*`.
fn glob_regex(glob: &PathGlob, star: &str) -> String {
    glob.pieces()
        .iter()
        .map(|piece| {
            // RE2 reads a backslash before any punctuation as that character.
            let mut out = String::with_capacity(piece.len());
            for c in piece.chars() {
                if c.is_ascii_punctuation() && c != '/' {
                    out.push('\\');
                }
                out.push(c);
            }
            out
        })
        .collect::<Vec<_>>()
        .join(star)
}

fn regex_header(name: &str, regex: &str, invert: bool) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_owned(),
        invert_match: invert,
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
            StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
                    regex: regex.to_owned(),
                    ..Default::default()
                })),
                ignore_case: false,
            },
        )),
        ..Default::default()
    }
}

fn exact_header(name: &str, value: &str, invert: bool) -> HeaderMatcher {
    string_header(
        name,
        string_matcher::MatchPattern::Exact(value.to_owned()),
        invert,
    )
}

fn string_header(name: &str, pattern: string_matcher::MatchPattern, invert: bool) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_owned(),
        invert_match: invert,
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
            StringMatcher {
                match_pattern: Some(pattern),
                ignore_case: false,
            },
        )),
        ..Default::default()
    }
}

/// The routes every virtual host starts with, as the static configuration has them: a
/// CONNECT must name `host:port`; runta's answer to a CONNECT routes it (interception or a
/// plain tunnel); any other request must name `host[:port]`.
fn guard_routes() -> Vec<Route> {
    let connect = |headers: Vec<HeaderMatcher>| RouteMatch {
        headers,
        path_specifier: Some(route_match::PathSpecifier::ConnectMatcher(
            route_match::ConnectMatcher {},
        )),
        ..Default::default()
    };
    // A CONNECT's route is chosen before ext_proc answers it, and again after: ext_proc must
    // run on both.
    let tunnel = |cluster: &str, rbac_off: bool| {
        let mut filters = HashMap::from([
            (
                "envoy.filters.http.set_filter_state".to_owned(),
                any(&FilterConfig {
                    config: Some(Any::default()),
                    ..Default::default()
                }),
            ),
            (EXTPROC_FILTER.to_owned(), extproc_enabled()),
        ]);
        if rbac_off {
            filters.insert(
                "envoy.filters.http.rbac".to_owned(),
                any(&RbacPerRoute::default()),
            );
        }
        (
            Some(route::Action::Route(RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.into())),
                timeout: Some(Duration::default()),
                upgrade_configs: vec![route_action::UpgradeConfig {
                    upgrade_type: "CONNECT".into(),
                    connect_config: Some(Default::default()),
                    ..Default::default()
                }],
                ..Default::default()
            })),
            filters,
        )
    };
    let (intercept, intercept_filters) = tunnel("intercept", true);
    let (through, through_filters) = tunnel("upstream_tunnel", false);
    vec![
        Route {
            name: "connect-target".into(),
            r#match: Some(connect(vec![regex_header(
                ":authority",
                CONNECT_TARGET_REGEX,
                true,
            )])),
            action: Some(direct(400, BAD_CONNECT_TARGET_BODY)),
            ..Default::default()
        },
        Route {
            name: "connect-intercept".into(),
            r#match: Some(connect(vec![exact_header(
                CONNECT_ROUTE_HEADER,
                "intercept",
                false,
            )])),
            action: intercept,
            typed_per_filter_config: intercept_filters,
            ..Default::default()
        },
        Route {
            name: "connect-tunnel".into(),
            r#match: Some(connect(Vec::new())),
            action: through,
            typed_per_filter_config: through_filters,
            ..Default::default()
        },
        Route {
            name: "destination".into(),
            r#match: Some(RouteMatch {
                headers: vec![regex_header(":authority", AUTHORITY_REGEX, true)],
                path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            action: Some(direct(400, BAD_AUTHORITY_BODY)),
            ..Default::default()
        },
    ]
}

/// Requests whose matching runta does differently from Envoy's routes: ext_proc decides.
/// Cheap matchers first: these routes are tried by every request of a compiled host.
fn diverted_routes() -> Vec<Route> {
    let divert = |name: &str, headers: Vec<HeaderMatcher>| {
        let mut route = forward_route(name, RouteKind::ExtProc);
        route.r#match = Some(RouteMatch {
            headers,
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        });
        route
    };
    let mut routes = Vec::new();
    // runta decodes escapes and cuts the path at `#`; `\\` is no separator to Envoy. Anywhere
    // in `:path`, query included: a regex to look at the path alone would cost Envoy a
    // compilation per host on every update, and such requests are still served exactly.
    for (name, c) in [("percent", "%"), ("backslash", "\\"), ("hash", "#")] {
        routes.push(divert(
            &format!("extproc:path-{name}"),
            vec![string_header(
                ":path",
                string_matcher::MatchPattern::Contains(c.into()),
                false,
            )],
        ));
    }
    // Never a credential on a request that is echoed back (any case, as runta compares).
    for method in ["TRACE", "TRACK"] {
        let mut matcher = string_header(
            ":method",
            string_matcher::MatchPattern::Exact(method.into()),
            false,
        );
        if let Some(header_matcher::HeaderMatchSpecifier::StringMatch(m)) =
            &mut matcher.header_match_specifier
        {
            m.ignore_case = true;
        }
        routes.push(divert("extproc:method", vec![matcher]));
    }
    // Ports default by scheme: the compiled routes assume plain HTTP.
    routes.push(divert(
        "extproc:scheme",
        vec![exact_header(":scheme", "http", true)],
    ));
    routes
}

/// A route to the upstream, unconditional (the caller sets the match).
fn forward_route(name: &str, kind: RouteKind) -> Route {
    let mut filters = HashMap::new();
    if let RouteKind::ExtProc = kind {
        filters.insert(EXTPROC_FILTER.to_owned(), extproc_enabled());
    }
    if let RouteKind::Native(mutations, formatter) = kind {
        filters.insert(EXTPROC_FILTER.to_owned(), extproc_disabled());
        if !mutations.is_empty() {
            let config = HeaderMutationPerRoute {
                mutations: Some(Mutations {
                    request_mutations: mutations,
                    formatters: vec![TypedExtensionConfig {
                        name: "envoy.formatter.generic_secret".into(),
                        typed_config: Some(any(&formatter)),
                    }],
                }),
            };
            filters.insert(
                HEADER_MUTATION_FILTER.to_owned(),
                Any {
                    type_url: HEADER_MUTATION_PER_ROUTE_TYPE_URL.into(),
                    value: config.encode_to_vec(),
                },
            );
        }
    }
    Route {
        name: name.to_owned(),
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster("upstream".into())),
            timeout: Some(Duration::default()),
            ..Default::default()
        })),
        request_headers_to_remove: FORWARDED_HEADERS_REMOVED
            .iter()
            .map(|h| (*h).to_owned())
            .collect(),
        typed_per_filter_config: filters,
        ..Default::default()
    }
}

/// A matching rule whose secret cannot be had: 503 naming the rule, as ext_proc answers.
fn unavailable_route(name: &str, rule: &CompiledRule) -> Route {
    Route {
        name: name.to_owned(),
        action: Some(direct(
            503,
            &Refusal::SecretUnavailable {
                rule: Some(&rule.id),
            }
            .body(),
        )),
        typed_per_filter_config: HashMap::from([(EXTPROC_FILTER.to_owned(), extproc_disabled())]),
        ..Default::default()
    }
}

fn direct(status: u32, body: &str) -> route::Action {
    route::Action::DirectResponse(DirectResponseAction {
        status,
        body: Some(DataSource {
            specifier: Some(data_source::Specifier::InlineString(body.to_owned())),
            ..Default::default()
        }),
        ..Default::default()
    })
}

const EXTPROC_FILTER: &str = "envoy.filters.http.ext_proc";
const HEADER_MUTATION_FILTER: &str = "envoy.filters.http.header_mutation";
const HEADER_MUTATION_PER_ROUTE_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute";

/// ext_proc on this route. In a native sidecar the filter is off unless a route turns it on:
/// a filter that Envoy creates costs it CPU per request even where it then does nothing
/// (measured: 12 % of the throughput of a direct response), so native routes never create it.
fn extproc_enabled() -> Any {
    any(&FilterConfig {
        config: Some(Any::default()),
        ..Default::default()
    })
}

/// ext_proc off on this route, by the generic `FilterConfig`: Envoy then does not create the
/// filter at all. (`ExtProcPerRoute { disabled }` also turns it off, but Envoy creates the
/// filter first to let it read that: measured, that alone was a fifth of a native route's
/// Envoy CPU per request.)
fn extproc_disabled() -> Any {
    any(&FilterConfig {
        disabled: true,
        ..Default::default()
    })
}

fn ads_config_source() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

fn any<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

/// `HeaderMutationPerRoute` as Envoy 1.40 has it: its `Mutations` gained `formatters` (field
/// 6), which the generated types predate. Only the fields runta sets.
#[derive(Clone, PartialEq, Message)]
struct HeaderMutationPerRoute {
    #[prost(message, optional, tag = "1")]
    mutations: Option<Mutations>,
}

#[derive(Clone, PartialEq, Message)]
struct Mutations {
    #[prost(message, repeated, tag = "1")]
    request_mutations: Vec<HeaderMutation>,
    #[prost(message, repeated, tag = "6")]
    formatters: Vec<TypedExtensionConfig>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::pattern::PathPattern;
    use crate::rules::snapshot::Snapshot;
    use crate::rules::{DraftFields, Rule, RuleDraft, RuleSpec, TargetFields};

    /// Compiles rules `(host, path, header, template)` of runtime `w`, every secret native.
    fn compiled(rules: &[(&str, Option<&str>, &str, &str)]) -> RouteTable {
        let snapshot = Snapshot::build([("ten_a".into(), "acme".into())], &drafts(rules), []);
        compile("runta/w", snapshot.runtime_rules("ten_a", "w"), |_| {
            SecretUse::Native
        })
    }

    fn drafts(rules: &[(&str, Option<&str>, &str, &str)]) -> Vec<Rule> {
        rules
            .iter()
            .enumerate()
            .map(|(i, (host, path, header, template))| {
                let draft = RuleDraft {
                    runtime: "w",
                    host,
                    path: *path,
                    credential: "key",
                    target: TargetFields {
                        header: Some((*header).to_owned()),
                        param: None,
                    },
                    value: Some(template),
                };
                Rule {
                    id: format!("rule_{i:02}"),
                    tenant_id: "ten_a".into(),
                    spec: RuleSpec::from_draft(&draft, &DraftFields::BATCH).unwrap(),
                }
            })
            .collect()
    }

    #[test]
    fn a_recompilation_reuses_every_host_whose_rules_and_secrets_did_not_change() {
        let rules = drafts(&[
            ("a.example.com", None, "x-a", "${credential}"),
            ("b.example.com", Some("/v1/*"), "x-b", "${credential}"),
            ("c.example.com", None, "x-c", "${credential}"),
        ]);
        let snapshot = Snapshot::build([("ten_a".into(), "acme".into())], &rules[..2], []);
        let mut compiler = Compiler::new("runta/w");
        let native = |_: &SecretRef| SecretUse::Native;
        let first = compiler.compile(snapshot.runtime_rules("ten_a", "w"), native);
        let mut edit = snapshot.edit();
        edit.add_rules(&rules[2..]);
        let added = edit.finish();
        let second = compiler.compile(added.runtime_rules("ten_a", "w"), native);
        assert_eq!(second.hosts.len(), 3);
        assert!(Arc::ptr_eq(&first.hosts[0], &second.hosts[0]));
        assert!(Arc::ptr_eq(&first.hosts[1], &second.hosts[1]));
        assert!(!first.same_as(&second));
        // Nothing changed: the same table.
        let again = compiler.compile(added.runtime_rules("ten_a", "w"), native);
        assert!(again.same_as(&second));
        // A secret that may no longer be held recompiles the hosts that use it.
        let uncached = compiler.compile(added.runtime_rules("ten_a", "w"), |_| SecretUse::ExtProc);
        assert!(!Arc::ptr_eq(&uncached.hosts[0], &second.hosts[0]));
        assert_eq!((uncached.native_rules, uncached.extproc_rules), (0, 3));
    }

    fn host(table: &RouteTable, domain: &str) -> Option<VirtualHost> {
        table
            .config()
            .virtual_hosts
            .into_iter()
            .find(|vh| vh.domains == [domain])
    }

    fn rule_routes(vh: &VirtualHost) -> Vec<&str> {
        vh.routes
            .iter()
            .map(|r| r.name.as_str())
            .filter(|n| n.starts_with("rule:"))
            .collect()
    }

    #[test]
    fn an_exact_host_carries_the_wildcards_that_cover_it_and_larger_sets_come_first() {
        let table = compiled(&[
            ("api.example.com", Some("/v1/*"), "x-a", "${credential}"),
            ("*.example.com", None, "x-b", "${credential}"),
            ("*.api.example.com", None, "x-c", "${credential}"),
        ]);
        let exact = host(&table, "api.example.com").unwrap();
        // Both sets of the exact host: with its path rule, and the wildcard alone.
        assert_eq!(
            rule_routes(&exact),
            ["rule:rule_00,rule_01", "rule:rule_01"]
        );
        // A narrower wildcard carries the wider one; the wider one only itself.
        let narrow = host(&table, "*.api.example.com").unwrap();
        assert_eq!(rule_routes(&narrow), ["rule:rule_01,rule_02"]);
        let wide = host(&table, "*.example.com").unwrap();
        assert_eq!(rule_routes(&wide), ["rule:rule_01"]);
        assert_eq!(table.native_rules, 3);
        assert_eq!(
            table.config().virtual_hosts.last().unwrap().domains,
            ["*"],
            "the catch-all comes last"
        );
    }

    #[test]
    fn the_table_encoded_from_its_parts_decodes_to_the_table() {
        let table = compiled(&[
            ("api.example.com", Some("/v1/*"), "x-a", "${credential}"),
            ("*.example.com", None, "x-b", "${credential}"),
        ]);
        let decoded = RouteConfiguration::decode(table.encode().as_slice()).unwrap();
        let mut want = table.config();
        let mut got = decoded;
        let by_name = |a: &VirtualHost, b: &VirtualHost| a.name.cmp(&b.name);
        want.virtual_hosts.sort_by(by_name);
        got.virtual_hosts.sort_by(by_name);
        assert_eq!(got, want);
        assert_eq!(table.virtual_hosts(), 3);
    }

    /// The sidecar's ext_proc filter is off by default: a forwarding route that does not turn
    /// it on would forward without a decision. Every one either turns it on or is a native
    /// route that says it is off.
    #[test]
    fn every_forwarding_route_says_whether_extproc_runs() {
        let table = compiled(&[
            ("api.example.com", Some("/v1/*"), "x-a", "${credential}"),
            ("*.example.com", None, "x-b", "${credential}"),
        ]);
        let enabled = extproc_enabled();
        let disabled = extproc_disabled();
        let mut forwarding = 0;
        for route in table
            .config()
            .virtual_hosts
            .iter()
            .flat_map(|vh| &vh.routes)
        {
            if !matches!(route.action, Some(route::Action::Route(_))) {
                continue;
            }
            forwarding += 1;
            let extproc = route.typed_per_filter_config.get(EXTPROC_FILTER);
            let native = route.name.starts_with("rule:") || route.name == "pass";
            match extproc {
                Some(config) if *config == enabled => assert!(!native, "{}", route.name),
                Some(config) if *config == disabled => assert!(native, "{}", route.name),
                _ => panic!("route {} does not say whether ext_proc runs", route.name),
            }
        }
        assert!(forwarding > 10);
    }

    #[test]
    fn a_literal_percent_is_escaped_and_the_header_is_replaced() {
        let table = compiled(&[(
            "api.example.com",
            None,
            "Authorization",
            "100% ${credential}",
        )]);
        let vh = host(&table, "api.example.com").unwrap();
        let route = vh
            .routes
            .iter()
            .find(|r| r.name.starts_with("rule:"))
            .unwrap();
        let config = &route.typed_per_filter_config[HEADER_MUTATION_FILTER];
        let mutations = HeaderMutationPerRoute::decode(config.value.as_slice())
            .unwrap()
            .mutations
            .unwrap();
        let actions: Vec<_> = mutations
            .request_mutations
            .iter()
            .map(|m| m.action.clone().unwrap())
            .collect();
        assert_eq!(
            actions[0],
            header_mutation::Action::Remove("authorization".into())
        );
        let header_mutation::Action::Append(option) = &actions[1] else {
            panic!("append second");
        };
        assert_eq!(
            option.header.as_ref().unwrap().value,
            "100%% %SECRET(runta.secret.key)%"
        );
        assert!(route.typed_per_filter_config.contains_key(EXTPROC_FILTER));
    }

    #[test]
    fn a_host_needing_too_many_routes_is_left_to_extproc() {
        // Every pair of these globs intersects: 2^8 sets.
        let rules: Vec<(String, &str)> = (0..8).map(|i| (format!("/*{i}*"), "x-a")).collect();
        let rules: Vec<(&str, Option<&str>, &str, &str)> = rules
            .iter()
            .map(|(path, header)| {
                (
                    "api.example.com",
                    Some(path.as_str()),
                    *header,
                    "${credential}",
                )
            })
            .collect();
        let table = compiled(&rules);
        assert!(host(&table, "api.example.com").is_none());
        assert_eq!((table.native_rules, table.extproc_rules), (0, 8));
    }

    fn glob(text: &str) -> PathGlob {
        PathGlob::new(&PathPattern::parse(text).unwrap())
    }

    #[test]
    fn globs_intersect_exactly_when_a_path_matches_both() {
        let cases = [
            ("/v1/*", "/v1/chat", true),
            ("/v1/*", "/v2/*", false),
            ("/v1/*/x", "/*/y/*", true),
            ("/a*b", "/*c", false),
            ("/a*b", "/a*", true),
            ("/a", "/a*", true),
            ("/a", "/b*", false),
            ("/*.json", "/*/x", false),
            ("/*.json", "/x/*", true),
            ("/a*a", "/aa", true),
            ("/a*a", "/a", false),
        ];
        for (a, b, want) in cases {
            assert_eq!(globs_intersect(&[&glob(a), &glob(b)]), want, "{a} ∩ {b}");
            // A witness agrees where one exists among a few candidates.
        }
        assert!(!globs_intersect(&[
            &glob("/v1/*"),
            &glob("/*/x"),
            &glob("/*/y")
        ]));
    }

    /// Every string `/` + up to `len` of `a`, `b`, `c`.
    fn paths(len: usize) -> Vec<String> {
        let mut all = vec!["/".to_owned()];
        let mut frontier = all.clone();
        for _ in 0..len {
            frontier = frontier
                .iter()
                .flat_map(|p| ["a", "b", "c"].map(|c| format!("{p}{c}")))
                .collect();
            all.extend(frontier.iter().cloned());
        }
        all
    }

    proptest::proptest! {
        /// Small globs (at most three tokens each, so a shortest common path has at most six
        /// characters after `/`): the automaton agrees with trying every such path.
        #[test]
        fn glob_intersection_agrees_with_brute_force(
            a in "/[ab*]{0,3}",
            b in "/[ab*]{0,3}",
        ) {
            let (ga, gb) = (glob(&a), glob(&b));
            let witness = paths(6).into_iter().any(|p| ga.matches(&p) && gb.matches(&p));
            proptest::prop_assert_eq!(globs_intersect(&[&ga, &gb]), witness, "{} and {}", a, b);
        }
    }

    #[test]
    fn glob_regexes_escape_literals() {
        assert_eq!(glob_regex(&glob("/v1.0/*+x"), "[^?]*"), "/v1\\.0/[^?]*\\+x");
    }
}
