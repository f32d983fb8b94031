//! The in-memory rule snapshot the ext_proc hot path reads: immutable, indexed, swapped whole.
//!
//! Index: tenant id → runtime → host. Within a runtime, exact hosts are a hash map and wildcard
//! suffixes another, probed once per label of the request host, so the cost of a lookup depends
//! on the rules of that runtime for that host, never on other runtimes' or tenants' rules.
//! The snapshot also holds what identity needs without the database: tenant names and the
//! hashes of runtime tokens.
//!
//! Changes: a new snapshot is made from the current one by a `SnapshotEdit`, which shares
//! everything it does not touch. The maps that grow with the deployment (tenants, runtimes,
//! host names, tokens) are persistent maps, so a change costs O(log n) there plus the changed
//! runtime's own host maps, never a copy of the whole. Rules are keyed by id and never
//! change; precedence between rules depends only on the rules (never on the order they
//! arrived in), so any order of adds and removes gives the decisions of a rebuild.

use std::sync::Arc;

use super::request::Destination;
use super::{CompiledTarget, HostName, PathPattern, Rule};
use crate::crypto::TokenHash;

/// The snapshot's maps hash with foldhash (seeded per process, so keys a tenant chooses cannot
/// be aimed at collisions): std's SipHash was a third of `decide`'s instructions in a profile.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A path glob: the pattern's text, read at its `*`s when matching. Kept as the text alone
/// (one allocation): at a million rules, a list of pieces per glob was a fifth of the memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathGlob {
    text: Box<str>,
}

impl PathGlob {
    pub fn new(pattern: &PathPattern) -> Self {
        Self {
            text: pattern.as_str().into(),
        }
    }

    /// The literal pieces between the stars: the pattern is these joined by `*`.
    pub fn pieces(&self) -> Vec<&str> {
        self.text.split('*').collect()
    }

    /// Length of the literal text before the first `*`: the specificity of a path pattern.
    pub fn literal_prefix_len(&self) -> usize {
        self.text.find('*').unwrap_or(self.text.len())
    }

    /// Whether the path matches: the piece before the first star starts it, the piece after
    /// the last ends it, and the pieces between are found in order in what is left between.
    pub fn matches(&self, path: &str) -> bool {
        let text = &*self.text;
        let (Some(first_star), Some(last_star)) = (text.find('*'), text.rfind('*')) else {
            return path == text;
        };
        let Some(mut rest) = path.strip_prefix(&text[..first_star]) else {
            return false;
        };
        if first_star < last_star {
            for piece in text[first_star + 1..last_star].split('*') {
                match rest.find(piece) {
                    Some(at) => rest = &rest[at + piece.len()..],
                    None => return false,
                }
            }
        }
        rest.ends_with(&text[last_star + 1..])
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

    /// The literal pieces; the secret goes between each two.
    pub fn pieces(&self) -> &[String] {
        &self.pieces
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

/// A rule ready for matching. Cheap to share: every field but the id is shared with the other
/// rules that have the same value (hosts with the index keys, templates, targets, paths and
/// names between rules).
#[derive(Debug)]
pub struct CompiledRule {
    pub id: RuleId,
    /// The host name (exact), or the suffix after `*.` (wildcard): the index key.
    host: Arc<str>,
    exact_host: bool,
    port: Option<u16>,
    path: Option<Arc<PathGlob>>,
    /// The secret, shared by every rule of the tenant that names it.
    pub secret: Arc<SecretRef>,
    /// Where the value goes; rules with equal targets conflict (the most specific wins).
    pub target: Arc<CompiledTarget>,
    pub template: Arc<Template>,
}

/// A tenant's secret as rules name it.
#[derive(Debug)]
pub struct SecretRef {
    pub tenant_id: Arc<str>,
    /// The secret's name (a rule's `credential`).
    pub credential: Arc<str>,
    /// `tenant_id/credential`: the secret cache's key, kept here so lookups do not allocate.
    pub key: Arc<str>,
}

/// A rule's id as the snapshot keeps it: an id runta made (`rule_` and 26 base32 characters)
/// packed into 16 bytes, any other text as it is. Compares, orders and prints as its text.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum RuleId {
    Packed(u64, u64),
    Text(Box<str>),
}

const RULE_ID_PREFIX: &str = "rule";

impl From<&str> for RuleId {
    fn from(id: &str) -> Self {
        match crate::crypto::id_value(RULE_ID_PREFIX, id) {
            Some(value) => Self::Packed((value >> 64) as u64, value as u64),
            None => Self::Text(id.into()),
        }
    }
}

impl RuleId {
    /// `rule_id_digest` of the id's text.
    fn digest(&self) -> u64 {
        match self {
            Self::Packed(..) => super::rule_id_digest(&self.to_string()),
            Self::Text(text) => super::rule_id_digest(text),
        }
    }
}

impl std::fmt::Display for RuleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Packed(high, low) => f.write_str(&crate::crypto::id_text(
                RULE_ID_PREFIX,
                (u128::from(*high) << 64) | u128::from(*low),
            )),
            Self::Text(text) => f.write_str(text),
        }
    }
}

impl std::fmt::Debug for RuleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

impl Ord for RuleId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (self, other) {
            // The encoding keeps the order: fixed width, an alphabet in ASCII order.
            (Self::Packed(a, b), Self::Packed(c, d)) => (a, b).cmp(&(c, d)),
            (Self::Text(a), Self::Text(b)) => a.cmp(b),
            _ => self.to_string().cmp(&other.to_string()),
        }
    }
}

impl PartialOrd for RuleId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The precedence of the matching rules (README, "How injection works"), as an ordered key:
/// exact host over wildcard (longer suffix first), a port over none, a longer literal path
/// prefix, then the older rule (smaller id: ids sort by creation).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Specificity<'r> {
    exact_host: bool,
    suffix_len: usize,
    has_port: bool,
    path_prefix_len: usize,
    older: std::cmp::Reverse<&'r RuleId>,
}

impl CompiledRule {
    /// Compiles a rule; `interner` shares strings and templates between rules.
    fn new(rule: &Rule, interner: &mut Interner) -> Self {
        let spec = &rule.spec;
        let (host, exact_host) = match &spec.host.name {
            HostName::Exact(name) => (name.as_str(), true),
            HostName::Wildcard(suffix) => (suffix.as_str(), false),
        };
        Self {
            id: RuleId::from(rule.id.as_str()),
            host: interner.text(host),
            exact_host,
            port: spec.host.port,
            path: spec.path.as_ref().map(|p| interner.path(p)),
            secret: interner.secret(&rule.tenant_id, &spec.credential),
            target: interner.target(&spec.target),
            template: interner.template(&spec.template),
        }
    }

    /// The host name (exact) or the suffix after `*.` (wildcard), and whether it is exact.
    pub fn host(&self) -> (&str, bool) {
        (&self.host, self.exact_host)
    }

    /// The port the rule is for; `None`: every port.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The path glob; `None`: every path.
    pub fn path(&self) -> Option<&PathGlob> {
        self.path.as_deref()
    }

    /// Orders rules of the same target: the greatest wins.
    pub fn specificity(&self) -> Specificity<'_> {
        Specificity {
            exact_host: self.exact_host,
            suffix_len: self.host.len(),
            has_port: self.port.is_some(),
            path_prefix_len: self.path.as_ref().map_or(0, |p| p.literal_prefix_len()),
            older: std::cmp::Reverse(&self.id),
        }
    }

    /// Whether the rule applies to this destination (host already matched by the index).
    fn matches_port_and_path(&self, dest: &Destination<'_>) -> bool {
        if let Some(port) = self.port
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

    fn host_key(&self) -> HostKey<'_> {
        (self.exact_host, &*self.host)
    }
}

/// Shares equal strings, paths, targets, templates and secret keys between the rules compiled
/// together (a snapshot's full build, or one change): at a million rules, per-rule copies were
/// most of the memory.
#[derive(Default)]
pub struct Interner {
    texts: std::collections::HashSet<Arc<str>, foldhash::fast::RandomState>,
    paths: HashMap<String, Arc<PathGlob>>,
    targets: HashMap<CompiledTarget, Arc<CompiledTarget>>,
    templates: HashMap<String, Arc<Template>>,
    secrets: HashMap<(Arc<str>, Arc<str>), Arc<SecretRef>>,
}

impl Interner {
    fn text(&mut self, text: &str) -> Arc<str> {
        if let Some(shared) = self.texts.get(text) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(text);
        self.texts.insert(shared.clone());
        shared
    }

    fn path(&mut self, pattern: &PathPattern) -> Arc<PathGlob> {
        if let Some(shared) = self.paths.get(pattern.as_str()) {
            return shared.clone();
        }
        let shared = Arc::new(PathGlob::new(pattern));
        self.paths
            .insert(pattern.as_str().to_owned(), shared.clone());
        shared
    }

    fn target(&mut self, target: &crate::rules::Target) -> Arc<CompiledTarget> {
        let compiled = CompiledTarget::from(target);
        self.targets
            .entry(compiled.clone())
            .or_insert_with(|| Arc::new(compiled))
            .clone()
    }

    fn template(&mut self, text: &str) -> Arc<Template> {
        if let Some(shared) = self.templates.get(text) {
            return shared.clone();
        }
        let shared = Arc::new(Template::new(text));
        self.templates.insert(text.to_owned(), shared.clone());
        shared
    }

    fn secret(&mut self, tenant_id: &str, name: &str) -> Arc<SecretRef> {
        let tenant_id = self.text(tenant_id);
        let credential = self.text(name);
        self.secrets
            .entry((tenant_id.clone(), credential.clone()))
            .or_insert_with(|| {
                Arc::new(SecretRef {
                    key: secret_key(&tenant_id, &credential),
                    tenant_id,
                    credential,
                })
            })
            .clone()
    }
}

/// The secret cache key of a tenant's secret.
pub fn secret_key(tenant_id: &str, name: &str) -> Arc<str> {
    Arc::from(format!("{tenant_id}/{name}"))
}

/// The rules of one runtime under one key of its `HostMap`: in no particular order (precedence
/// decides). Shared, so copying a runtime's maps for a change copies pointers, not rules or
/// lists. Never empty. Its rules have one host name, unless two names' hashes collide: readers
/// take the rules of the name they look for (`HostMap::rules_for`).
#[derive(Debug, Clone)]
enum Bucket {
    /// The common case, without a list of its own.
    One(Arc<CompiledRule>),
    Many(Arc<[Arc<CompiledRule>]>),
}

impl Bucket {
    fn rules(&self) -> &[Arc<CompiledRule>] {
        match self {
            Self::One(rule) => std::slice::from_ref(rule),
            Self::Many(rules) => rules,
        }
    }

    /// This bucket with one more rule.
    fn with(&self, rule: Arc<CompiledRule>) -> Self {
        Self::Many(self.rules().iter().cloned().chain([rule]).collect())
    }

    /// This bucket without its `at`-th rule (`None`: nothing left).
    fn without(&self, at: usize) -> Option<Self> {
        let mut rest = self
            .rules()
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != at)
            .map(|(_, r)| r.clone());
        match self.rules().len() {
            1 => None,
            2 => rest.next().map(Self::One),
            _ => Some(Self::Many(rest.collect())),
        }
    }
}

/// A runtime's rules by host name (or wildcard suffix), keyed by the name's keyed hash
/// (`host_hash`) in a persistent B-tree.
///
/// Why not a hash map of names: imbl's hash trie (the persistent hash map) keeps fixed-size
/// nodes of 32 slots, and at a runtime of about a thousand names (32 per second-level node, so
/// many overflow into a node of nearly empty children) it held ~110 bytes per entry; the B-tree's
/// leaves are at least half full, and an entry is the key's 8 bytes and the bucket's 16.
#[derive(Debug, Default, Clone)]
struct HostMap(Ordered<u64, Bucket>);

impl HostMap {
    /// The rules for this name (of its bucket: those whose name it is).
    fn rules_for<'s, 'h>(
        &'s self,
        host: &'h str,
    ) -> impl Iterator<Item = &'s Arc<CompiledRule>> + use<'s, 'h> {
        self.0
            .get(&host_hash(host))
            .into_iter()
            .flat_map(|bucket| bucket.rules())
            .filter(move |rule| &*rule.host == host)
    }

    fn bucket(&self, host: &str) -> Option<&Bucket> {
        self.0.get(&host_hash(host))
    }

    /// Puts the bucket for this name's key in place (`None`: removes it).
    fn put(&mut self, host: &str, bucket: Option<Bucket>) {
        match bucket {
            Some(bucket) => {
                self.0.insert(host_hash(host), bucket);
            }
            None => {
                self.0.remove(&host_hash(host));
            }
        }
    }

    fn buckets(&self) -> impl Iterator<Item = &Bucket> {
        self.0.values()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A persistent B-tree map (imbl's `OrdMap`): copied in O(1), changed in O(log n).
type Ordered<K, V> = imbl::GenericOrdMap<K, V, imbl::shared_ptr::DefaultSharedPtr>;

/// The key of the snapshot's name hashes, random per process (so names cannot be chosen to
/// collide).
static HOST_NAME_KEY: std::sync::LazyLock<foldhash::quality::RandomState> =
    std::sync::LazyLock::new(foldhash::quality::RandomState::default);

/// A host name's (or wildcard suffix's) keyed 64-bit hash.
fn host_hash(name: &str) -> u64 {
    use std::hash::BuildHasher;
    #[cfg(test)]
    if tests::COLLIDE.get() {
        return 7;
    }
    HOST_NAME_KEY.hash_one(name)
}

/// The rules of one runtime, indexed by host. Its maps are persistent too: a runtime with
/// thousands of hosts is copied in O(1) and changed in O(log n), so adding a rule (or a batch
/// spread over every runtime) never copies what the runtime already has.
#[derive(Debug, Default, Clone)]
pub struct RuntimeRules {
    exact: HostMap,
    /// Keyed by the suffix after `*.` (`example.com` for `*.example.com`).
    wildcard: HostMap,
    count: usize,
    /// The wrapping sum of the rules' `rule_id_digest`s, kept as rules come and go: the safety
    /// net compares it with the store's without hashing every id of every runtime each run.
    digest: u64,
}

impl RuntimeRules {
    /// Adds a rule; false if a rule with its id is already here (nothing changes).
    fn insert(&mut self, rule: Arc<CompiledRule>) -> bool {
        let map = if rule.exact_host {
            &mut self.exact
        } else {
            &mut self.wildcard
        };
        let bucket = match map.bucket(&rule.host) {
            Some(bucket) if bucket.rules().iter().any(|r| r.id == rule.id) => return false,
            Some(bucket) => bucket.with(rule.clone()),
            None => Bucket::One(rule.clone()),
        };
        map.put(&rule.host, Some(bucket));
        self.count += 1;
        self.digest = self.digest.wrapping_add(rule.id.digest());
        true
    }

    /// Removes the rule with this id, answering it.
    fn remove(&mut self, id: &RuleId) -> Option<Arc<CompiledRule>> {
        for map in [&mut self.exact, &mut self.wildcard] {
            let found = map.buckets().find_map(|bucket| {
                let at = bucket.rules().iter().position(|r| r.id == *id)?;
                Some((bucket.clone(), at))
            });
            if let Some((bucket, at)) = found {
                let rule = bucket.rules()[at].clone();
                map.put(&rule.host, bucket.without(at));
                self.count -= 1;
                self.digest = self.digest.wrapping_sub(rule.id.digest());
                return Some(rule);
            }
        }
        None
    }

    /// Every rule of this runtime, in no particular order.
    pub fn rules(&self) -> impl Iterator<Item = &Arc<CompiledRule>> {
        self.exact
            .buckets()
            .chain(self.wildcard.buckets())
            .flat_map(|bucket| bucket.rules().iter())
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The wrapping sum of this runtime's rule ids' `rule_id_digest`s.
    fn digest(&self) -> u64 {
        self.digest
    }

    /// Whether a rule of this runtime is for `host` (lowercase, no trailing dot) on `port`
    /// (`None`: any port will do, as for a TLS server name): a tunnel there is intercepted.
    pub fn covers(&self, host: &str, port: Option<u16>) -> bool {
        let port_ok = |rule: &Arc<CompiledRule>| match (rule.port, port) {
            (Some(want), Some(port)) => want == port,
            _ => true,
        };
        if self.exact.rules_for(host).any(port_ok) {
            return true;
        }
        suffixes(host).any(|suffix| self.wildcard.rules_for(suffix).any(port_ok))
    }

    /// Every rule of this runtime matching the destination, best first per target; one rule
    /// per target (the most specific).
    pub fn matching<'s>(&'s self, dest: &Destination<'_>, out: &mut Vec<&'s CompiledRule>) {
        let host: &str = &dest.host;
        keep_matching(self.exact.rules_for(host), dest, out);
        if !self.wildcard.is_empty() {
            for suffix in suffixes(host) {
                keep_matching(self.wildcard.rules_for(suffix), dest, out);
            }
        }
    }
}

impl RuntimeRules {
    /// The rules that apply when exactly these rules match a request: one per target, the
    /// most specific (what `matching` answers; the xDS rule compiler uses it for each set of
    /// rules that can match together).
    pub fn winners<'s>(
        matched: impl IntoIterator<Item = &'s CompiledRule>,
    ) -> Vec<&'s CompiledRule> {
        let mut out = Vec::new();
        for rule in matched {
            keep_best(&mut out, rule);
        }
        out
    }
}

/// Keeps those of `rules` (host already matched) that match the destination's port and path.
fn keep_matching<'s>(
    rules: impl Iterator<Item = &'s Arc<CompiledRule>>,
    dest: &Destination<'_>,
    out: &mut Vec<&'s CompiledRule>,
) {
    for rule in rules {
        if rule.matches_port_and_path(dest) {
            keep_best(out, rule);
        }
    }
}

/// Keeps `rule` in `out` unless a rule for its target is at least as specific.
fn keep_best<'s>(out: &mut Vec<&'s CompiledRule>, rule: &'s CompiledRule) {
    match out.iter_mut().find(|r| r.target == rule.target) {
        Some(best) if best.specificity() >= rule.specificity() => {}
        Some(best) => *best = rule,
        None => out.push(rule),
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

/// A persistent (structurally shared) map: a copy is O(1), a change O(log n) and shares the
/// rest. The snapshot's big maps are these, so a change never copies them whole.
type Shared<K, V> =
    imbl::GenericHashMap<K, V, foldhash::fast::RandomState, imbl::shared_ptr::DefaultSharedPtr>;

/// (exact, name or wildcard suffix).
type HostKey<'a> = (bool, &'a str);

/// The host names of every rule of every tenant, each with the number of rules naming it: which
/// TLS server names the shared gateway may be given a leaf certificate for.
///
/// Kept as keyed 64-bit hashes of (exact, name), not the names, in a persistent B-tree (see
/// `HostMap`): an entry is 16 bytes and copies without touching a reference count. Two names
/// whose hashes collide (about one chance in 2^64 per pair; the key is random per process, so
/// names cannot be chosen to collide) would make one look covered when only the other is:
/// the gateway would then hold a leaf certificate for a name no rule names, and every request
/// in such a tunnel is still decided against the rules.
#[derive(Debug, Default, Clone)]
struct HostNames(Ordered<u64, u32>);

impl HostNames {
    fn key((exact, name): HostKey<'_>) -> u64 {
        use std::hash::BuildHasher;
        HOST_NAME_KEY.hash_one((exact, name))
    }

    fn covers(&self, name: &str) -> bool {
        self.0.contains_key(&Self::key((true, name)))
            || suffixes(name).any(|s| self.0.contains_key(&Self::key((false, s))))
    }

    fn add(&mut self, host: HostKey<'_>) {
        let key = Self::key(host);
        match self.0.get_mut(&key) {
            Some(count) => *count += 1,
            None => {
                self.0.insert(key, 1);
            }
        }
    }

    fn remove(&mut self, host: HostKey<'_>) {
        let key = Self::key(host);
        if let Some(count) = self.0.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.0.remove(&key);
            }
        }
    }
}

/// What a runtime token identifies.
#[derive(Debug, Clone)]
pub struct TokenEntry {
    pub tenant_id: String,
    pub runtime: String,
    pub revoked: bool,
}

/// One tenant's runtimes.
type TenantRules = Shared<Arc<str>, Arc<RuntimeRules>>;

/// The rules of every tenant, indexed: the costly part of a snapshot. Shared whole by the
/// snapshots that differ only in identities, and map node by map node by those that differ in
/// some runtimes' rules.
#[derive(Debug, Clone, Default)]
struct RuleIndex {
    /// tenant id → runtime → rules.
    tenants: Shared<Arc<str>, TenantRules>,
    /// Every rule's host name (leaf certificates for the shared gateway).
    host_names: HostNames,
    rule_count: usize,
}

impl RuleIndex {
    fn runtime(&self, tenant_id: &str, runtime: &str) -> Option<&Arc<RuntimeRules>> {
        self.tenants.get(tenant_id)?.get(runtime)
    }

    /// Puts a runtime's new rules in place (none: the runtime has no rules left). The tenant's
    /// map is changed where it is (copied on its first change in an edit, then changed in
    /// place), not copied out and put back for every runtime.
    fn put_runtime(&mut self, tenant_id: &Arc<str>, runtime: &Arc<str>, rules: RuntimeRules) {
        if rules.is_empty() {
            let Some(runtimes) = self.tenants.get_mut(tenant_id.as_ref()) else {
                return;
            };
            runtimes.remove(runtime.as_ref());
            if runtimes.is_empty() {
                self.tenants.remove(tenant_id.as_ref());
            }
            return;
        }
        let rules = Arc::new(rules);
        match self.tenants.get_mut(tenant_id.as_ref()) {
            Some(runtimes) => {
                runtimes.insert(runtime.clone(), rules);
            }
            None => {
                let mut runtimes = TenantRules::default();
                runtimes.insert(runtime.clone(), rules);
                self.tenants.insert(tenant_id.clone(), runtimes);
            }
        }
    }
}

/// Who is who: tenants and runtime tokens.
#[derive(Debug, Clone, Default)]
struct Identities {
    /// tenant name → tenant id (sidecars name their tenant).
    tenant_ids: HashMap<String, String>,
    /// tenant id → tenant name (for log lines).
    tenant_names: HashMap<String, String>,
    /// SHA-256 of a runtime token → what it identifies.
    tokens: Shared<TokenHash, TokenEntry>,
}

impl Identities {
    fn set_tenants(&mut self, tenants: impl IntoIterator<Item = (String, String)>) {
        self.tenant_ids.clear();
        self.tenant_names.clear();
        for (id, name) in tenants {
            self.tenant_ids.insert(name.clone(), id.clone());
            self.tenant_names.insert(id, name);
        }
    }
}

/// Everything the hot path needs, immutable once built.
#[derive(Debug, Clone)]
pub struct Snapshot {
    index: Arc<RuleIndex>,
    identities: Arc<Identities>,
}

impl Snapshot {
    /// An empty snapshot (before the first load).
    pub fn empty() -> Self {
        Self {
            index: Arc::default(),
            identities: Arc::default(),
        }
    }

    /// Builds the index from every rule: `tenants` as (id, name), `tokens` keyed by their
    /// hash. The same as `SnapshotBuilder` fed with these rules at once.
    pub fn build(
        tenants: impl IntoIterator<Item = (String, String)>,
        rules: &[Rule],
        tokens: impl IntoIterator<Item = (TokenHash, TokenEntry)>,
    ) -> Self {
        let mut builder = SnapshotBuilder::default();
        builder.add(rules);
        builder.finish(tenants, tokens)
    }

    /// A change to this snapshot, made on a copy that shares everything it does not touch.
    pub fn edit(&self) -> SnapshotEdit {
        SnapshotEdit {
            base: self.clone(),
            index: None,
            identities: None,
            interner: Interner::default(),
        }
    }

    /// Whether two snapshots share one rule index (one was made from the other by changing
    /// identities only).
    pub fn shares_rules_with(&self, other: &Snapshot) -> bool {
        Arc::ptr_eq(&self.index, &other.index)
    }

    pub fn runtime_rules(&self, tenant_id: &str, runtime: &str) -> Option<&RuntimeRules> {
        self.index.runtime(tenant_id, runtime).map(Arc::as_ref)
    }

    /// The same, shared: an edit that does not touch this runtime keeps the very same `Arc`,
    /// so `Arc::ptr_eq` tells a consumer (the xDS stream of its sidecar) that nothing changed.
    pub fn runtime_rules_shared(
        &self,
        tenant_id: &str,
        runtime: &str,
    ) -> Option<Arc<RuntimeRules>> {
        self.index.runtime(tenant_id, runtime).cloned()
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

/// Builds a snapshot from every rule, fed in pieces (a full reload reads the store page by
/// page, so the rows of a million rules are never all in memory at once).
#[derive(Default)]
pub struct SnapshotBuilder {
    runtimes:
        std::collections::HashMap<(Arc<str>, Arc<str>), RuntimeRules, foldhash::fast::RandomState>,
    host_names: HostNames,
    interner: Interner,
    rule_count: usize,
}

impl SnapshotBuilder {
    /// Adds rules (a rule already added is not added twice).
    pub fn add(&mut self, rules: &[Rule]) {
        for rule in rules {
            let compiled = Arc::new(CompiledRule::new(rule, &mut self.interner));
            let runtime = self.interner.text(&rule.spec.runtime);
            let key = (compiled.secret.tenant_id.clone(), runtime);
            if self
                .runtimes
                .entry(key)
                .or_default()
                .insert(compiled.clone())
            {
                self.host_names.add(compiled.host_key());
                self.rule_count += 1;
            }
        }
    }

    pub fn finish(
        self,
        tenants: impl IntoIterator<Item = (String, String)>,
        tokens: impl IntoIterator<Item = (TokenHash, TokenEntry)>,
    ) -> Snapshot {
        let mut index = RuleIndex {
            rule_count: self.rule_count,
            host_names: self.host_names,
            ..RuleIndex::default()
        };
        let mut by_tenant: std::collections::HashMap<
            Arc<str>,
            TenantRules,
            foldhash::fast::RandomState,
        > = Default::default();
        for ((tenant, runtime), rules) in self.runtimes {
            by_tenant
                .entry(tenant)
                .or_default()
                .insert(runtime, Arc::new(rules));
        }
        index.tenants = by_tenant.into_iter().collect();
        let mut identities = Identities::default();
        identities.set_tenants(tenants);
        identities.tokens = tokens.into_iter().collect();
        Snapshot {
            index: Arc::new(index),
            identities: Arc::new(identities),
        }
    }
}

/// One runtime's rules as the store has them, summarised: how many, and the wrapping sum of
/// their ids' `rule_id_digest`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeDigest {
    pub tenant_id: String,
    pub runtime: String,
    pub rules: u64,
    pub digest: u64,
}

impl RuntimeDigest {
    /// The digests of these rules, per runtime (what the store's aggregate answers for them).
    pub fn of<'r>(rules: impl IntoIterator<Item = &'r Rule>) -> Vec<Self> {
        let mut runtimes: std::collections::BTreeMap<(&str, &str), (u64, u64)> = Default::default();
        for rule in rules {
            let entry = runtimes
                .entry((&rule.tenant_id, &rule.spec.runtime))
                .or_default();
            entry.0 += 1;
            entry.1 = entry.1.wrapping_add(super::rule_id_digest(&rule.id));
        }
        runtimes
            .into_iter()
            .map(|((tenant_id, runtime), (rules, digest))| Self {
                tenant_id: tenant_id.to_owned(),
                runtime: runtime.to_owned(),
                rules,
                digest,
            })
            .collect()
    }
}

impl Snapshot {
    /// The runtimes whose rules differ from the store's, given the store's digest of every
    /// runtime that has rules there: a runtime whose count or digest differs, one the store
    /// has and this snapshot does not, one this snapshot has and the store does not. The
    /// safety net repairs these by their ids (a change in flight while the digests were read
    /// shows here too; comparing its runtime is then harmless).
    pub fn runtimes_differing(&self, store: &[RuntimeDigest]) -> Vec<(String, String)> {
        let mut differing = Vec::new();
        // The snapshot's runtimes the store has rules for, by the address of their rules.
        let mut seen: std::collections::HashSet<usize, foldhash::fast::RandomState> =
            Default::default();
        for summary in store {
            match self.index.runtime(&summary.tenant_id, &summary.runtime) {
                Some(rules) => {
                    seen.insert(Arc::as_ptr(rules) as usize);
                    if rules.len() as u64 != summary.rules || rules.digest() != summary.digest {
                        differing.push((summary.tenant_id.clone(), summary.runtime.clone()));
                    }
                }
                None => differing.push((summary.tenant_id.clone(), summary.runtime.clone())),
            }
        }
        for (tenant_id, runtimes) in self.index.tenants.iter() {
            for (runtime, rules) in runtimes.iter() {
                if !rules.is_empty() && !seen.contains(&(Arc::as_ptr(rules) as usize)) {
                    differing.push((tenant_id.to_string(), runtime.to_string()));
                }
            }
        }
        differing
    }

    /// How a runtime's rules differ from these ids (the store's): the ids it lacks, and the
    /// ids it holds that are not among them.
    pub fn runtime_difference(
        &self,
        tenant_id: &str,
        runtime: &str,
        ids: &[String],
    ) -> (Vec<String>, Vec<String>) {
        let Some(held) = self.index.runtime(tenant_id, runtime) else {
            return (ids.to_vec(), Vec::new());
        };
        let mut extra: std::collections::HashSet<&RuleId> = held.rules().map(|r| &r.id).collect();
        let lacking = ids
            .iter()
            .filter(|id| !extra.remove(&RuleId::from(id.as_str())))
            .cloned()
            .collect();
        (lacking, extra.into_iter().map(RuleId::to_string).collect())
    }
}

/// A change in the making: rules added, removed or replaced per runtime, tenants and tokens
/// set. Applied in any order, rule changes give the decisions a rebuild from the same rules
/// gives (rules are keyed by id; precedence never depends on the order they arrived in).
pub struct SnapshotEdit {
    base: Snapshot,
    /// The rule index, once this edit changed it.
    index: Option<RuleIndex>,
    identities: Option<Identities>,
    interner: Interner,
}

impl SnapshotEdit {
    /// The rule index as this edit has it so far.
    fn current(&self) -> &RuleIndex {
        self.index.as_ref().unwrap_or(&self.base.index)
    }

    /// The rule index, to change (copied from the base on first use: O(1), its maps are
    /// persistent).
    fn index(&mut self) -> &mut RuleIndex {
        self.index.get_or_insert_with(|| (*self.base.index).clone())
    }

    fn identities(&mut self) -> &mut Identities {
        self.identities
            .get_or_insert_with(|| (*self.base.identities).clone())
    }

    /// The current rules of a runtime, copied for a change (its maps, not its rules).
    fn take_runtime(
        &mut self,
        tenant_id: &str,
        runtime: &str,
    ) -> (Arc<str>, Arc<str>, RuntimeRules) {
        let tenant_key = self.interner.text(tenant_id);
        let runtime_key = self.interner.text(runtime);
        let current = self
            .current()
            .runtime(tenant_id, runtime)
            .map(|r| (**r).clone())
            .unwrap_or_default();
        (tenant_key, runtime_key, current)
    }

    /// Adds rules; a rule whose id is already there is left as it is (rules never change).
    pub fn add_rules(&mut self, rules: &[Rule]) {
        let mut by_runtime: std::collections::BTreeMap<(&str, &str), Vec<&Rule>> =
            Default::default();
        for rule in rules {
            by_runtime
                .entry((rule.tenant_id.as_str(), rule.spec.runtime.as_str()))
                .or_default()
                .push(rule);
        }
        for ((tenant_id, runtime), rules) in by_runtime {
            let (tenant_key, runtime_key, mut current) = self.take_runtime(tenant_id, runtime);
            let mut added = 0;
            for rule in rules {
                let compiled = Arc::new(CompiledRule::new(rule, &mut self.interner));
                let index = self.index();
                if current.insert(compiled.clone()) {
                    index.host_names.add(compiled.host_key());
                    added += 1;
                }
            }
            let index = self.index();
            index.rule_count += added;
            index.put_runtime(&tenant_key, &runtime_key, current);
        }
    }

    /// Removes rules of one runtime by id (ids not there are ignored).
    pub fn remove_rules(&mut self, tenant_id: &str, runtime: &str, ids: &[impl AsRef<str>]) {
        self.remove_ids(
            tenant_id,
            runtime,
            ids.iter().map(|id| RuleId::from(id.as_ref())),
        );
    }

    fn remove_ids(&mut self, tenant_id: &str, runtime: &str, ids: impl Iterator<Item = RuleId>) {
        if self.current().runtime(tenant_id, runtime).is_none() {
            return;
        }
        let (tenant_key, runtime_key, mut current) = self.take_runtime(tenant_id, runtime);
        let before = current.len();
        let index = self.index();
        for id in ids {
            if let Some(rule) = current.remove(&id) {
                index.host_names.remove(rule.host_key());
            }
        }
        index.rule_count -= before - current.len();
        index.put_runtime(&tenant_key, &runtime_key, current);
    }

    /// Replaces all of one runtime's rules (as re-read from the store).
    pub fn replace_runtime(&mut self, tenant_id: &str, runtime: &str, rules: &[Rule]) {
        let kept: std::collections::HashSet<RuleId> =
            rules.iter().map(|r| RuleId::from(r.id.as_str())).collect();
        let stale: Vec<RuleId> = self
            .current()
            .runtime(tenant_id, runtime)
            .iter()
            .flat_map(|r| r.rules())
            .filter(|old| !kept.contains(&old.id))
            .map(|old| old.id.clone())
            .collect();
        self.remove_ids(tenant_id, runtime, stale.into_iter());
        self.add_rules(rules);
    }

    /// Sets every tenant, as (id, name).
    pub fn set_tenants(&mut self, tenants: impl IntoIterator<Item = (String, String)>) {
        self.identities().set_tenants(tenants);
    }

    /// Sets every runtime token.
    pub fn set_tokens(&mut self, tokens: impl IntoIterator<Item = (TokenHash, TokenEntry)>) {
        self.identities().tokens = tokens.into_iter().collect();
    }

    /// Adds or updates runtime tokens. A revoked token stays revoked, whatever order a
    /// token's creation and revocation are applied in.
    pub fn upsert_tokens(&mut self, tokens: impl IntoIterator<Item = (TokenHash, TokenEntry)>) {
        let identities = self.identities();
        for (hash, mut entry) in tokens {
            if identities.tokens.get(&hash).is_some_and(|old| old.revoked) {
                entry.revoked = true;
            }
            identities.tokens.insert(hash, entry);
        }
    }

    /// The new snapshot (the base itself, shared, where nothing changed).
    pub fn finish(self) -> Snapshot {
        Snapshot {
            index: self.index.map_or(self.base.index, Arc::new),
            identities: self.identities.map_or(self.base.identities, Arc::new),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Every name hashes alike (`host_hash`) on this thread while set.
        pub(super) static COLLIDE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// Names whose hashes collide share a bucket; every reader still takes only the rules of
    /// the name it asks for: the same decisions, adds and removes as without collisions.
    #[test]
    fn colliding_host_hashes_keep_names_apart() {
        let rules = crate::test_support::rules(300);
        // Exact names with rules (i % 3 == 1, 2), names under wildcard rules, names without.
        let hosts: Vec<String> = (0..300)
            .flat_map(|i| {
                [
                    format!("api{i}.example.com"),
                    format!("x.svc{i}.example.com"),
                ]
            })
            .collect();
        let decide = |snapshot: &Snapshot| -> Vec<Vec<String>> {
            let runtimes: std::collections::BTreeSet<&str> =
                rules.iter().map(|r| r.spec.runtime.as_str()).collect();
            let mut out = Vec::new();
            for runtime in runtimes {
                let Some(rt) = snapshot.runtime_rules(crate::test_support::TENANT_ID, runtime)
                else {
                    out.push(vec![]);
                    continue;
                };
                for host in &hosts {
                    for path in ["/v1/x", "/p2/y", "/"] {
                        let dest = Destination::parse(host, "http", path);
                        let mut found = Vec::new();
                        rt.matching(&dest, &mut found);
                        let mut ids: Vec<String> = found.iter().map(|r| r.id.to_string()).collect();
                        ids.sort();
                        out.push(ids);
                    }
                    out.push(vec![rt.covers(host, Some(80)).to_string()]);
                }
            }
            out
        };
        let same = |got: &[Vec<String>], want: &[Vec<String>], when: &str| {
            let differ = got.iter().zip(want).filter(|(g, w)| g != w).count();
            assert!(
                got.len() == want.len() && differ == 0,
                "{when}: {differ} of {} decisions differ",
                want.len()
            );
        };
        let build = |rules: &[Rule]| {
            Snapshot::build(crate::test_support::tenant_names(), rules, Vec::new())
        };
        let apart = decide(&build(&rules));
        let matched = apart
            .iter()
            .filter(|ids| ids.iter().any(|id| id.starts_with("rule_")))
            .count();
        assert!(
            matched > 100,
            "the decisions compared must match rules ({matched} did)"
        );
        COLLIDE.set(true);
        let together = build(&rules);
        same(&decide(&together), &apart, "built with colliding names");
        // Removing and adding back rules one runtime at a time goes through the same buckets.
        let mut edit = together.edit();
        for rule in rules.iter().step_by(7) {
            edit.remove_rules(&rule.tenant_id, &rule.spec.runtime, &[rule.id.as_str()]);
        }
        let removed = edit.finish();
        let expected: Vec<Rule> = rules
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 7 != 0)
            .map(|(_, r)| r.clone())
            .collect();
        COLLIDE.set(false);
        let expected = decide(&build(&expected));
        COLLIDE.set(true);
        same(&decide(&removed), &expected, "rules removed");
        let mut edit = removed.edit();
        edit.add_rules(&rules);
        same(&decide(&edit.finish()), &apart, "rules added back");
        COLLIDE.set(false);
    }

    #[test]
    fn a_runtimes_kept_digest_is_the_sum_over_its_rules() {
        let rules = crate::test_support::rules(300);
        let summed = |snapshot: &Snapshot| {
            let mut kept = Vec::new();
            let mut summed = Vec::new();
            for (_, runtimes) in snapshot.index.tenants.iter() {
                for (_, rt) in runtimes.iter() {
                    kept.push(rt.digest());
                    summed.push(rt.rules().fold(0u64, |sum, r| {
                        sum.wrapping_add(crate::rules::rule_id_digest(&r.id.to_string()))
                    }));
                }
            }
            assert!(kept.len() > 1, "the rules must spread over runtimes");
            assert_eq!(kept, summed);
        };
        let built = Snapshot::build(crate::test_support::tenant_names(), &rules, Vec::new());
        summed(&built);
        let mut edit = built.edit();
        for rule in rules.iter().step_by(3) {
            edit.remove_rules(&rule.tenant_id, &rule.spec.runtime, &[rule.id.as_str()]);
        }
        // Adding rules that are there already changes nothing.
        let present: Vec<Rule> = rules[..50]
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 != 0)
            .map(|(_, r)| r.clone())
            .collect();
        edit.add_rules(&present);
        let edited = edit.finish();
        summed(&edited);
        let kept = Snapshot::build(
            crate::test_support::tenant_names(),
            &rules
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 3 != 0)
                .map(|(_, r)| r.clone())
                .collect::<Vec<_>>(),
            Vec::new(),
        );
        let digests = |s: &Snapshot| {
            let mut all: Vec<(String, u64)> = s
                .index
                .tenants
                .iter()
                .flat_map(|(_, rts)| rts.iter().map(|(k, rt)| (k.to_string(), rt.digest())))
                .collect();
            all.sort();
            all
        };
        assert_eq!(digests(&edited), digests(&kept), "edited as built");
    }

    fn glob(p: &str) -> PathGlob {
        PathGlob::new(&PathPattern::parse(p).unwrap())
    }

    #[test]
    fn rule_ids_pack_without_changing_text_or_order() {
        let made: Vec<String> = (0..50).map(|_| crate::crypto::new_id("rule")).collect();
        let mut texts = made.clone();
        texts.extend(
            [
                "r01",
                "rule_short",
                "rule_8zzzzzzzzzzzzzzzzzzzzzzzzz",
                "rule_00000000000000000000000000",
            ]
            .map(String::from),
        );
        for text in &texts {
            let id = RuleId::from(text.as_str());
            assert_eq!(id.to_string(), *text);
        }
        assert!(matches!(RuleId::from(made[0].as_str()), RuleId::Packed(..)));
        // Not what new_id makes (the first character would overflow 128 bits): kept as text.
        assert!(matches!(
            RuleId::from("rule_8zzzzzzzzzzzzzzzzzzzzzzzzz"),
            RuleId::Text(_)
        ));
        for a in &texts {
            for b in &texts {
                assert_eq!(
                    RuleId::from(a.as_str()).cmp(&RuleId::from(b.as_str())),
                    a.cmp(b),
                    "{a} vs {b}"
                );
            }
        }
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
