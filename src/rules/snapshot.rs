//! The in-memory rule snapshot the ext_proc hot path reads: immutable, indexed, swapped whole.
//!
//! Index: tenant id → runtime → host. Within a runtime, exact hosts are a hash map and wildcard
//! suffixes another, probed once per label of the request host, so the cost of a lookup depends
//! on the rules of that runtime for that host, never on other runtimes' or tenants' rules.
//! The snapshot also holds what identity needs without the database: tenant names and the
//! hashes of runtime tokens.

use std::sync::Arc;

use super::request::Destination;
use super::{CompiledTarget, HostName, HostPattern, PathPattern, Rule};
use crate::crypto::TokenHash;

/// The snapshot's maps hash with foldhash (seeded per process, so keys a tenant chooses cannot
/// be aimed at collisions): std's SipHash was a third of `decide`'s instructions in a profile.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A path glob, split at its `*`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathGlob {
    /// Literal pieces between stars; `first` must start the path, `last` end it (unless the
    /// pattern ends with `*`).
    pieces: Vec<String>,
    ends_with_star: bool,
}

impl PathGlob {
    pub fn new(pattern: &PathPattern) -> Self {
        let text = pattern.as_str();
        Self {
            pieces: text.split('*').map(str::to_owned).collect(),
            ends_with_star: text.ends_with('*'),
        }
    }

    /// Length of the literal text before the first `*`: the specificity of a path pattern.
    pub fn literal_prefix_len(&self) -> usize {
        self.pieces[0].len()
    }

    pub fn matches(&self, path: &str) -> bool {
        let first = &self.pieces[0];
        if self.pieces.len() == 1 {
            return path == first;
        }
        let Some(mut rest) = path.strip_prefix(first.as_str()) else {
            return false;
        };
        let last_index = self.pieces.len() - 1;
        for piece in &self.pieces[1..last_index] {
            match rest.find(piece.as_str()) {
                Some(at) => rest = &rest[at + piece.len()..],
                None => return false,
            }
        }
        if self.ends_with_star {
            true
        } else {
            rest.ends_with(self.pieces[last_index].as_str())
        }
    }
}

/// A value template split at its placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// Literal pieces; the secret goes between each two.
    pieces: Vec<String>,
}

impl Template {
    pub fn new(template: &str) -> Self {
        Self {
            pieces: template
                .split(super::PLACEHOLDER)
                .map(str::to_owned)
                .collect(),
        }
    }

    /// The template with the secret in place of every placeholder, zeroized when dropped.
    pub fn render(&self, secret: &str) -> zeroize::Zeroizing<Vec<u8>> {
        zeroize::Zeroizing::new(self.render_plain(secret))
    }

    /// The same, for a value that goes straight into a message sent on (not kept).
    pub fn render_plain(&self, secret: &str) -> Vec<u8> {
        let literal: usize = self.pieces.iter().map(String::len).sum();
        let mut out = Vec::with_capacity(literal + secret.len() * (self.pieces.len() - 1));
        for (i, piece) in self.pieces.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(secret.as_bytes());
            }
            out.extend_from_slice(piece.as_bytes());
        }
        out
    }
}

/// A rule ready for matching.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    pub id: String,
    /// Shared by all rules of the tenant.
    pub tenant_id: Arc<str>,
    pub host: HostPattern,
    pub path: Option<PathGlob>,
    pub credential: String,
    /// Where the value goes; rules with equal targets conflict (the most specific wins).
    pub target: CompiledTarget,
    /// Shared by all rules with the same template.
    pub template: Arc<Template>,
    /// `tenant_id/credential`: the secret cache's key, kept here so lookups do not allocate.
    pub secret_key: Arc<str>,
    /// Orders rules of the same target: the greatest wins.
    pub specificity: Specificity,
}

/// The precedence of the matching rules (README, "How injection works"), as an ordered key: exact host over wildcard (longer suffix first),
/// a port over none, a longer literal path prefix, then the older rule (smaller id).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Specificity {
    exact_host: bool,
    suffix_len: usize,
    has_port: bool,
    path_prefix_len: usize,
    /// Reversed load order (rules are loaded in id order, ids sort by creation): the older
    /// rule compares greater. An ordinal rather than the id: one string less per rule.
    older: std::cmp::Reverse<u32>,
}

impl CompiledRule {
    /// Compiles a rule (the `ordinal`-th in id order). `interner` shares strings and
    /// templates between rules.
    fn new(rule: &Rule, ordinal: u32, interner: &mut Interner) -> Self {
        let spec = &rule.spec;
        let host = spec.host.clone();
        let path = spec.path.as_ref().map(PathGlob::new);
        let specificity = Specificity {
            exact_host: matches!(host.name, HostName::Exact(_)),
            suffix_len: match &host.name {
                HostName::Exact(name) => name.len(),
                HostName::Wildcard(suffix) => suffix.len(),
            },
            has_port: host.port.is_some(),
            path_prefix_len: path.as_ref().map_or(0, PathGlob::literal_prefix_len),
            older: std::cmp::Reverse(ordinal),
        };
        Self {
            id: rule.id.clone(),
            tenant_id: interner.text(&rule.tenant_id),
            host,
            path,
            credential: spec.credential.clone(),
            target: CompiledTarget::from(&spec.target),
            template: interner.template(&spec.template),
            secret_key: interner.secret_key(&rule.tenant_id, &spec.credential),
            specificity,
        }
    }

    /// Whether the rule applies to this destination (host already matched by the index).
    fn matches_port_and_path(&self, dest: &Destination<'_>) -> bool {
        if let Some(port) = self.host.port
            && dest.port != Some(port)
        {
            return false;
        }
        match &self.path {
            None => true,
            Some(_) if dest.encoded_separator => false,
            Some(glob) => glob.matches(&dest.path),
        }
    }
}

/// Shares equal strings, templates and secret keys between the rules of one snapshot: at a
/// million rules, per-rule copies were most of the memory.
#[derive(Default)]
struct Interner {
    texts: HashMap<String, Arc<str>>,
    templates: HashMap<String, Arc<Template>>,
    secret_keys: HashMap<(String, String), Arc<str>>,
}

impl Interner {
    fn text(&mut self, text: &str) -> Arc<str> {
        if let Some(shared) = self.texts.get(text) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(text);
        self.texts.insert(text.to_owned(), shared.clone());
        shared
    }

    fn template(&mut self, text: &str) -> Arc<Template> {
        if let Some(shared) = self.templates.get(text) {
            return shared.clone();
        }
        let shared = Arc::new(Template::new(text));
        self.templates.insert(text.to_owned(), shared.clone());
        shared
    }

    fn secret_key(&mut self, tenant_id: &str, name: &str) -> Arc<str> {
        self.secret_keys
            .entry((tenant_id.to_owned(), name.to_owned()))
            .or_insert_with(|| secret_key(tenant_id, name))
            .clone()
    }
}

/// The secret cache key of a tenant's secret.
pub fn secret_key(tenant_id: &str, name: &str) -> Arc<str> {
    Arc::from(format!("{tenant_id}/{name}"))
}

/// The rules of one runtime, indexed by host.
#[derive(Debug, Default)]
pub struct RuntimeRules {
    rules: Vec<CompiledRule>,
    exact: HashMap<String, Vec<usize>>,
    /// Keyed by the suffix after `*.` (`example.com` for `*.example.com`).
    wildcard: HashMap<String, Vec<usize>>,
}

impl RuntimeRules {
    fn push(&mut self, rule: CompiledRule) {
        let index = self.rules.len();
        match &rule.host.name {
            HostName::Exact(name) => self.exact.entry(name.clone()).or_default().push(index),
            HostName::Wildcard(suffix) => {
                self.wildcard.entry(suffix.clone()).or_default().push(index)
            }
        }
        self.rules.push(rule);
    }

    /// Whether a rule of this runtime is for `host` (lowercase, no trailing dot) on `port`
    /// (`None`: any port will do, as for a TLS server name): a tunnel there is intercepted.
    pub fn covers(&self, host: &str, port: Option<u16>) -> bool {
        let port_ok = |indexes: &Vec<usize>| {
            indexes
                .iter()
                .any(|&i| match (self.rules[i].host.port, port) {
                    (Some(want), Some(port)) => want == port,
                    _ => true,
                })
        };
        if self.exact.get(host).is_some_and(port_ok) {
            return true;
        }
        suffixes(host).any(|suffix| self.wildcard.get(suffix).is_some_and(port_ok))
    }

    /// Every rule of this runtime matching the destination, best first per target; one rule
    /// per target (the most specific).
    pub fn matching<'s>(&'s self, dest: &Destination<'_>, out: &mut Vec<&'s CompiledRule>) {
        let host: &str = &dest.host;
        let mut consider = |indexes: &Vec<usize>| {
            for &i in indexes {
                let rule = &self.rules[i];
                if !rule.matches_port_and_path(dest) {
                    continue;
                }
                match out.iter_mut().find(|r| r.target == rule.target) {
                    Some(best) if best.specificity >= rule.specificity => {}
                    Some(best) => *best = rule,
                    None => out.push(rule),
                }
            }
        };
        if let Some(indexes) = self.exact.get(host) {
            consider(indexes);
        }
        if !self.wildcard.is_empty() {
            for suffix in suffixes(host) {
                if let Some(indexes) = self.wildcard.get(suffix) {
                    consider(indexes);
                }
            }
        }
    }
}

/// Every proper suffix of a host after a dot: a.b.example.com → b.example.com, example.com,
/// com (the keys a wildcard rule covering the host is indexed under).
fn suffixes(host: &str) -> impl Iterator<Item = &str> {
    let mut rest = host;
    std::iter::from_fn(move || {
        let dot = rest.find('.')?;
        rest = &rest[dot + 1..];
        Some(rest)
    })
}

/// The host names of every rule of every tenant, each with the number of rules naming it: which
/// TLS server names the shared gateway may be given a leaf certificate for.
#[derive(Debug, Default, Clone)]
struct HostNames {
    exact: HashMap<String, u32>,
    wildcard: HashMap<String, u32>,
}

impl HostNames {
    fn covers(&self, name: &str) -> bool {
        self.exact.contains_key(name) || suffixes(name).any(|s| self.wildcard.contains_key(s))
    }

    fn side<'h>(&mut self, host: &'h HostName) -> (&mut HashMap<String, u32>, &'h str) {
        match host {
            HostName::Exact(name) => (&mut self.exact, name),
            HostName::Wildcard(suffix) => (&mut self.wildcard, suffix),
        }
    }

    fn add(&mut self, host: &HostName) {
        let (map, key) = self.side(host);
        match map.get_mut(key) {
            Some(count) => *count += 1,
            None => {
                map.insert(key.to_owned(), 1);
            }
        }
    }

    fn remove(&mut self, host: &HostName) {
        let (map, key) = self.side(host);
        if let Some(count) = map.get_mut(key) {
            *count -= 1;
            if *count == 0 {
                map.remove(key);
            }
        }
    }
}

/// A runtime's host names in a canonical order, to compare two versions of its rules.
fn host_list(rules: Option<&RuntimeRules>) -> Vec<(bool, &str)> {
    let mut hosts: Vec<(bool, &str)> = rules
        .map(|r| {
            r.rules
                .iter()
                .map(|c| match &c.host.name {
                    HostName::Exact(name) => (true, name.as_str()),
                    HostName::Wildcard(suffix) => (false, suffix.as_str()),
                })
                .collect()
        })
        .unwrap_or_default();
    hosts.sort_unstable();
    hosts
}

/// What a runtime token identifies.
#[derive(Debug, Clone)]
pub struct TokenEntry {
    pub tenant_id: String,
    pub runtime: String,
    pub revoked: bool,
}

/// One tenant's runtimes, each runtime's rules shared between snapshots until they change.
type TenantRules = HashMap<String, Arc<RuntimeRules>>;

/// The rules of every tenant, indexed: the costly part of a snapshot. Shared whole by the
/// snapshots that differ only in identities (`Snapshot::with_identities`), and runtime by
/// runtime by those that differ in one runtime's rules (`Snapshot::with_runtime`).
#[derive(Debug)]
struct RuleIndex {
    /// tenant id → runtime → rules.
    rules: HashMap<String, Arc<TenantRules>>,
    /// Every rule's host name (leaf certificates for the shared gateway).
    host_names: Arc<HostNames>,
    rule_count: usize,
}

/// Who is who: tenants and runtime tokens.
#[derive(Debug)]
struct Identities {
    /// tenant name → tenant id (sidecars name their tenant).
    tenant_ids: HashMap<String, String>,
    /// tenant id → tenant name (for log lines).
    tenant_names: HashMap<String, String>,
    /// SHA-256 of a runtime token → what it identifies.
    tokens: HashMap<TokenHash, TokenEntry>,
}

/// Everything the hot path needs, immutable once built.
#[derive(Debug)]
pub struct Snapshot {
    index: Arc<RuleIndex>,
    identities: Arc<Identities>,
}

impl Snapshot {
    /// An empty snapshot (before the first load).
    pub fn empty() -> Self {
        Self::build(Vec::new(), &[], Vec::new())
    }

    /// Builds the index: `tenants` as (id, name), `rules` in id order (older first;
    /// precedence relies on it), `tokens` keyed by their hash.
    pub fn build(
        tenants: impl IntoIterator<Item = (String, String)>,
        rules: &[Rule],
        tokens: impl IntoIterator<Item = (TokenHash, TokenEntry)>,
    ) -> Self {
        let mut index: HashMap<String, HashMap<String, RuntimeRules>> = HashMap::default();
        let mut interner = Interner::default();
        let mut host_names = HostNames::default();
        for (ordinal, rule) in rules.iter().enumerate() {
            host_names.add(&rule.spec.host.name);
            index
                .entry(rule.tenant_id.clone())
                .or_default()
                .entry(rule.spec.runtime.clone())
                .or_default()
                .push(CompiledRule::new(rule, ordinal as u32, &mut interner));
        }
        let rules_by_tenant = index
            .into_iter()
            .map(|(tenant, runtimes)| {
                let runtimes: TenantRules = runtimes
                    .into_iter()
                    .map(|(runtime, rules)| (runtime, Arc::new(rules)))
                    .collect();
                (tenant, Arc::new(runtimes))
            })
            .collect();
        let index = Arc::new(RuleIndex {
            rules: rules_by_tenant,
            host_names: Arc::new(host_names),
            rule_count: rules.len(),
        });
        Self::with_index(index, tenants, tokens)
    }

    /// A snapshot with these tenants and tokens and this snapshot's rules, shared rather than
    /// rebuilt: a token or tenant change costs what the identities cost, whatever the number
    /// of rules.
    pub fn with_identities(
        &self,
        tenants: impl IntoIterator<Item = (String, String)>,
        tokens: impl IntoIterator<Item = (TokenHash, TokenEntry)>,
    ) -> Self {
        Self::with_index(self.index.clone(), tenants, tokens)
    }

    fn with_index(
        index: Arc<RuleIndex>,
        tenants: impl IntoIterator<Item = (String, String)>,
        tokens: impl IntoIterator<Item = (TokenHash, TokenEntry)>,
    ) -> Self {
        let mut tenant_ids = HashMap::default();
        let mut tenant_names = HashMap::default();
        for (id, name) in tenants {
            tenant_ids.insert(name.clone(), id.clone());
            tenant_names.insert(id, name);
        }
        Self {
            index,
            identities: Arc::new(Identities {
                tenant_ids,
                tenant_names,
                tokens: tokens.into_iter().collect(),
            }),
        }
    }

    /// A snapshot in which one runtime's rules are `rules` (all of that runtime's rules, in id
    /// order; empty: the runtime has none) and everything else is this snapshot's, shared: a
    /// rule change costs what its runtime's rules cost, not what every rule costs. Applied in
    /// any order, these give the same decisions as a rebuild from the same rules (rules of one
    /// runtime are only ever compared with each other, in id order).
    pub fn with_runtime(&self, tenant_id: &str, runtime: &str, rules: &[Rule]) -> Self {
        let mut interner = Interner::default();
        let mut fresh = RuntimeRules::default();
        for (ordinal, rule) in rules.iter().enumerate() {
            debug_assert!(rule.tenant_id == tenant_id && rule.spec.runtime == runtime);
            fresh.push(CompiledRule::new(rule, ordinal as u32, &mut interner));
        }
        let old = self.runtime_rules(tenant_id, runtime);
        let old_count = old.map_or(0, |r| r.rules.len());
        let host_names = if host_list(old) == host_list(Some(&fresh)) {
            self.index.host_names.clone()
        } else {
            let mut names = (*self.index.host_names).clone();
            for rule in old.map(|r| r.rules.as_slice()).unwrap_or_default() {
                names.remove(&rule.host.name);
            }
            for rule in &fresh.rules {
                names.add(&rule.host.name);
            }
            Arc::new(names)
        };
        let rule_count = self.index.rule_count - old_count + fresh.rules.len();
        let mut tenants = self.index.rules.clone();
        let mut runtimes: TenantRules = tenants
            .get(tenant_id)
            .map(|t| (**t).clone())
            .unwrap_or_default();
        if fresh.rules.is_empty() {
            runtimes.remove(runtime);
        } else {
            runtimes.insert(runtime.to_owned(), Arc::new(fresh));
        }
        if runtimes.is_empty() {
            tenants.remove(tenant_id);
        } else {
            tenants.insert(tenant_id.to_owned(), Arc::new(runtimes));
        }
        Self {
            index: Arc::new(RuleIndex {
                rules: tenants,
                host_names,
                rule_count,
            }),
            identities: self.identities.clone(),
        }
    }

    /// Whether two snapshots share one rule index (one was made from the other by
    /// `with_identities`).
    pub fn shares_rules_with(&self, other: &Snapshot) -> bool {
        Arc::ptr_eq(&self.index, &other.index)
    }

    pub fn runtime_rules(&self, tenant_id: &str, runtime: &str) -> Option<&RuntimeRules> {
        self.index
            .rules
            .get(tenant_id)?
            .get(runtime)
            .map(Arc::as_ref)
    }

    /// Whether any rule of any tenant is for this TLS server name.
    pub fn any_rule_covers(&self, name: &str) -> bool {
        self.index.host_names.covers(name)
    }

    pub fn tenant_id(&self, name: &str) -> Option<&str> {
        self.identities.tenant_ids.get(name).map(String::as_str)
    }

    pub fn tenant_name(&self, id: &str) -> Option<&str> {
        self.identities.tenant_names.get(id).map(String::as_str)
    }

    pub fn token(&self, hash: &TokenHash) -> Option<&TokenEntry> {
        self.identities.tokens.get(hash)
    }

    pub fn rule_count(&self) -> usize {
        self.index.rule_count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(p: &str) -> PathGlob {
        PathGlob::new(&PathPattern::parse(p).unwrap())
    }

    #[test]
    fn globs() {
        for (pattern, path, want) in [
            ("/v1/*", "/v1/", true),
            ("/v1/*", "/v1/chat/completions", true),
            ("/v1/*", "/v1", false),
            ("/v1/*", "/v10/x", false),
            ("/v1", "/v1", true),
            ("/v1", "/v1/", false),
            ("/*/models", "/v1/models", true),
            ("/*/models", "/v1/x/models", true),
            ("/*/models", "/v1/models/x", false),
            ("/a*b*c", "/abc", true),
            ("/a*b*c", "/a-b-c", true),
            ("/a*b*c", "/a-c-b", false),
            ("/*", "/", true),
        ] {
            assert_eq!(glob(pattern).matches(path), want, "{pattern} vs {path}");
        }
    }

    #[test]
    fn templates_render() {
        assert_eq!(
            Template::new("Bearer ${credential}")
                .render("sk")
                .as_slice(),
            b"Bearer sk"
        );
        assert_eq!(
            Template::new("${credential}").render("sk").as_slice(),
            b"sk"
        );
        assert_eq!(
            Template::new("${credential}:${credential}")
                .render("a")
                .as_slice(),
            b"a:a"
        );
    }
}
